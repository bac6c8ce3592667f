"""Plugin discovery and registries: entry points (via fake dist-info, no pip), duplicates,
import errors, allow/deny lists, malformed records, unknown hooks and tracing."""

from __future__ import annotations

import itertools
import textwrap

import pytest

from rlsd_core import (InjectorRecord, Magnitude, SchedulerRecord, TaskSourceRecord, Verdict,
                       VerifierRecord, hookimpl)
from rlsd_core.plugins import PluginError, UnknownNameError, get_plugin_manager

_counter = itertools.count()


def make_dist(root, dist: str, module_source: str, ep_name: str | None = None) -> str:
    """Write `<dist>-1.0.dist-info` with an `rlsd` entry point and its module on `root`."""
    module = f"fake_rlsd_plugin_{next(_counter)}"
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    # The folder name must use '_' (as wheels do): importlib.metadata takes the distribution's
    # identity from the text before the first '-', and would merge it with 'rlsd' otherwise.
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[rlsd]\n{ep_name or dist} = {module}\n")
    return module


VERIFIER_PLUGIN = """
from rlsd_core import VerifierRecord, hookimpl
def _always(completions, rows):
    return [1.0 for _ in completions]
@hookimpl
def rlsd_verifiers():
    return [VerifierRecord(name="{name}", fn=_always, columns=(), description="test")]
"""


def test_builtins_come_from_the_rlsd_distribution(pm):
    rows = [r for r in pm.registry.rows() if r["name"] == "exact_match"]
    assert rows and rows[0]["distribution"] == "rlsd" and rows[0]["kind"] == "verifier"


def test_entry_point_from_a_fake_distribution_is_loaded(tmp_path, monkeypatch):
    make_dist(tmp_path, "rlsd-fake-ok", VERIFIER_PLUGIN.format(name="fake_ok"))
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = get_plugin_manager()
    row = next(r for r in pm.registry.rows() if r["name"] == "fake_ok")
    assert row["distribution"] == "rlsd-fake-ok" and row["distribution_version"] == "1.0"
    assert pm.registry.verifier("fake_ok").fn(["x"], [{}]) == [1.0]


def test_entry_point_that_fails_to_import_names_distribution_and_fix(tmp_path, monkeypatch):
    make_dist(tmp_path, "rlsd-fake-broken", "import this_module_does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    msg = str(info.value)
    assert "rlsd-fake-broken 1.0" in msg and "ModuleNotFoundError" in msg
    assert "RLSD_DISABLE_PLUGINS=rlsd-fake-broken" in msg


def test_disable_list_skips_a_broken_plugin(tmp_path, monkeypatch):
    make_dist(tmp_path, "rlsd-fake-broken2", "raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RLSD_DISABLE_PLUGINS", "rlsd-fake-broken2")
    assert "exact_match" in get_plugin_manager().registry.names("verifier")


def test_allow_list_loads_only_named_plugins(tmp_path, monkeypatch):
    make_dist(tmp_path, "rlsd-fake-allowed", VERIFIER_PLUGIN.format(name="fake_allowed"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RLSD_LOAD_PLUGINS", "rlsd-fake-allowed")
    assert get_plugin_manager().registry.names("verifier") == ["fake_allowed"]
    monkeypatch.setenv("RLSD_LOAD_PLUGINS", "")
    assert get_plugin_manager().registry.names("verifier") == []


def test_duplicate_names_across_distributions_raise_naming_both(tmp_path, monkeypatch):
    make_dist(tmp_path, "rlsd-fake-dup-a", VERIFIER_PLUGIN.format(name="twin"))
    make_dist(tmp_path, "rlsd-fake-dup-b", VERIFIER_PLUGIN.format(name="twin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        get_plugin_manager().registry
    msg = str(info.value)
    assert "'twin'" in msg and "rlsd-fake-dup-a" in msg and "rlsd-fake-dup-b" in msg


def test_duplicate_of_a_builtin_is_an_error_not_a_shadow(pm, register_plugin):
    class Shadow:
        @hookimpl
        def rlsd_verifiers(self):
            return [VerifierRecord(name="exact_match", fn=lambda c, r: [0.0] * len(c), columns=())]

    with register_plugin(Shadow(), "shadow"), pytest.raises(PluginError, match="exact_match"):
        pm.registry


def test_plugin_implementing_an_unknown_hook_fails_check_pending(tmp_path, monkeypatch):
    make_dist(tmp_path, "rlsd-fake-typo", """
        from rlsd_core import hookimpl
        @hookimpl
        def rlsd_verifier():   # missing 's'
            return []
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="rlsd_verifier"):
        get_plugin_manager()


@pytest.mark.parametrize("bad, fragment", [
    (VerifierRecord(name="", fn=len, columns=()), "name"),
    (VerifierRecord(name="ok", fn="not callable", columns=()), "callable"),
    (VerifierRecord(name="ok", fn=len, columns="answer"), "columns"),
    (VerifierRecord(name="ok", fn=len, columns=(), time_budget_s=0), "time_budget_s"),
    (SchedulerRecord(name="s", fn=len), "SchedulerRecord"),
    ("a string", "str"),
])
def test_malformed_records_are_rejected(empty_pm, bad, fragment):
    class Bad:
        @hookimpl
        def rlsd_verifiers(self):
            return [bad]

    empty_pm.register(Bad(), "bad")
    with pytest.raises(PluginError, match=fragment):
        empty_pm.registry


def test_provider_hook_returning_a_non_list_is_rejected(empty_pm):
    class Bad:
        @hookimpl
        def rlsd_injectors(self):
            return InjectorRecord(name="x", fn=lambda *a: [])

    empty_pm.register(Bad(), "bad")
    with pytest.raises(PluginError, match="must return a list"):
        empty_pm.registry


def test_every_provider_hook_fills_its_registry(empty_pm):
    class All:
        @hookimpl
        def rlsd_verifiers(self):
            return [VerifierRecord(name="v", fn=lambda c, r: [Verdict.ok()] * len(c), columns=())]

        @hookimpl
        def rlsd_injectors(self):
            return [InjectorRecord(name="i", fn=lambda row, msgs, ctx: msgs)]

        @hookimpl
        def rlsd_schedulers(self):
            return [SchedulerRecord(name="s", fn=lambda: (lambda step, d: Magnitude(0.5, 0.2)))]

        @hookimpl
        def rlsd_task_sources(self):
            return [TaskSourceRecord(name="t", fn=lambda: [{"prompt": "p", "answer": "a"}])]

    empty_pm.register(All(), "all")
    reg = empty_pm.registry
    assert reg.verifier("v").fn(["a"], [{}])[0].reward == 1.0
    assert reg.injector("i").fn({}, [{"role": "user", "content": "q"}], None)[0]["content"] == "q"
    assert reg.scheduler("s").fn()(1, None) == Magnitude(0.5, 0.2)
    assert reg.task_source("t").fn()[0]["answer"] == "a"
    assert {r["distribution"] for r in reg.rows()} == {"<inline>"}


def test_unknown_name_lists_what_is_installed_and_suggests(pm):
    with pytest.raises(UnknownNameError) as info:
        pm.registry.verifier("exact_mach")
    assert "Did you mean 'exact_match'" in str(info.value) and "Installed verifiers" in str(info.value)


def test_registries_are_not_shared_between_managers(pm, register_plugin):
    class Extra:
        @hookimpl
        def rlsd_verifiers(self):
            return [VerifierRecord(name="only_here", fn=lambda c, r: [0.0] * len(c), columns=())]

    with register_plugin(Extra(), "extra"):
        assert "only_here" in pm.registry.names("verifier")
        assert "only_here" not in get_plugin_manager().registry.names("verifier")
    assert "only_here" not in pm.registry.names("verifier")


def test_tracing_reports_hook_calls(empty_pm):
    lines: list[str] = []
    empty_pm.enable_tracing(lines.append)

    class Obs:
        @hookimpl
        def rlsd_after_step(self, run, step, metrics):
            return None

    empty_pm.register(Obs(), "obs")
    empty_pm.hook.rlsd_after_step(run=None, step=3, metrics={"loss": 1.0})
    assert any("rlsd_after_step" in ln and "obs" in ln for ln in lines)


def test_trace_env_var_enables_tracing(monkeypatch, capsys):
    monkeypatch.setenv("RLSD_TRACE_PLUGINS", "1")
    monkeypatch.setenv("RLSD_LOAD_PLUGINS", "")  # no observers: only the tracing is under test
    get_plugin_manager().hook.rlsd_before_run(run=None)
    assert "[rlsd trace] call rlsd_before_run" in capsys.readouterr().err


def test_tracing_covers_provider_hooks_too(monkeypatch, capsys):
    """Provider hooks are called plugin by plugin through pluggy, so the trace shows each call
    and what it returned, like the event hooks'."""
    monkeypatch.setenv("RLSD_TRACE_PLUGINS", "1")
    monkeypatch.setenv("RLSD_LOAD_PLUGINS", "exact_match,injectors")
    get_plugin_manager().registry
    err = capsys.readouterr().err
    assert "[rlsd trace] call rlsd_verifiers() -> ['exact_match']" in err
    assert "[rlsd trace] call rlsd_injectors() -> ['injectors']" in err
    assert "[rlsd trace] done rlsd_verifiers: [[VerifierRecord(name='exact_match'" in err


def test_a_provider_hook_that_raises_is_named(empty_pm):
    class Broken:
        @hookimpl
        def rlsd_schedulers(self):
            raise RuntimeError("no schedulers today")

    empty_pm.register(Broken(), "broken-schedulers")
    with pytest.raises(PluginError, match=r"rlsd_schedulers\(\) of the plugin from .*broken-schedulers.* "
                                          r"raised RuntimeError: no schedulers today"):
        empty_pm.registry
