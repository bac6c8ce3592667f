"""The conformance kit (rlsd_core.testing): `rlsd plugins check` catches a plugin broken in
each property, passes correct ones, and the pytest plugin gives authors the same battery as
one-line tests plus fixtures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rlsd_core import API_VERSION, ApiVersionError, Category, Example, Verdict, VerifierRecord
from rlsd_core.plugins import get_plugin_manager
from rlsd_core.testing import (PROPERTIES, check_injector, check_scheduler, check_verifier,
                               hostile_completions)

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Each broken record and the property it breaks (tests/broken_plugins.py); properties other
# than the named one may fail as a consequence (an unpicklable fn cannot reach the hostile
# inputs either), but the named one must.
BROKEN = {
    "broken_examples": "examples", "broken_columns": "columns",
    "broken_one_per_completion": "one_per_completion", "broken_rewards": "rewards",
    "broken_categories": "categories", "broken_picklable": "picklable",
    "broken_deterministic": "deterministic", "broken_hostile": "hostile",
    "broken_time_budget": "time_budget",
    "broken_messages": "messages", "broken_student_untouched": "student_untouched",
    "broken_injector_columns": "columns", "broken_token_budget": "token_budget",
    "broken_group": "group", "broken_injector_deterministic": "deterministic",
    "broken_constructs": "constructs", "broken_magnitude": "magnitude",
    "broken_scheduler_deterministic": "deterministic", "broken_state_dict": "state_dict",
    "broken_credit": "credit", "broken_teacher": "teacher", "broken_loss": "loss",
}


def install_broken(site: Path) -> Path:
    """tests/broken_plugins.py as a real distribution in `site` (for PYTHONPATH)."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "broken_plugins.py", site / "rlsd_broken_test_plugins.py")
    dist = site / "rlsd_broken_test_plugins-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlsd-broken-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlsd]\nbroken = rlsd_broken_test_plugins\n")
    return site


def rlsd(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rlsd_core.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def test_check_catches_a_plugin_broken_in_each_property(tmp_path):
    site = install_broken(tmp_path / "site")
    proc = rlsd("plugins", "check", "--json", *BROKEN,
                env_extra={"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 1, proc.stderr
    results = json.loads(proc.stdout)
    failed = {(r["name"], r["property"]): r["reason"] for r in results if r["status"] == "fail"}
    missed = [f"{name}: {prop}" for name, prop in BROKEN.items() if (name, prop) not in failed]
    assert not missed, f"not caught: {missed}\nfailures: {failed}"
    for (name, prop), reason in failed.items():
        assert reason.strip(), f"{name}.{prop} failed without a reason"
    # The reasons say what is wrong and what to do.
    assert "does not declare" in failed[("broken_columns", "columns")]
    assert "time_budget_s=2" in failed[("broken_time_budget", "time_budget")]
    assert "ValueError" in failed[("broken_hostile", "hostile")]
    assert "undeclared column(s) ['answer']" in failed[("broken_injector_columns", "columns")]
    assert "state_dict" in failed[("broken_state_dict", "state_dict")]


def test_check_table_and_unknown_name(capsys):
    from rlsd_core.cli import main

    assert main(["plugins", "check", "exact_match", "reference_answer"]) == 0
    out = capsys.readouterr().out
    assert "exact_match" in out and "hostile" in out and "token_budget" in out
    assert "2 record(s), 17 properties: 17 passed, 0 failed, 0 skipped" in out
    assert main(["plugins", "check", "no_such_thing"]) == 2
    err = capsys.readouterr().err
    assert "nothing named 'no_such_thing'" in err and "exact_match" in err  # what can be checked


@pytest.mark.slow  # every built-in verifier's worker pool and hostile inputs: ~1 min on 2 cores
def test_every_builtin_passes_check():
    """Every built-in, and the countdown example where it is installed (CI installs it)."""
    import importlib.util

    names = ["rlsd"] + (["rlsd-countdown"] if importlib.util.find_spec("rlsd_countdown") else [])
    proc = rlsd("plugins", "check", "--json", *names)
    results = json.loads(proc.stdout)
    failed = [r for r in results if r["status"] == "fail"]
    assert proc.returncode == 0 and not failed, json.dumps(failed, indent=1)
    kinds = {r["kind"] for r in results}
    assert kinds == {"verifier", "injector", "scheduler", "objective"}
    # Every built-in verifier ships examples, so its scores are checked (no "no examples" skip);
    # only the code verifier may skip, where bubblewrap is missing.
    skipped = [r for r in results if r["status"] == "skip" and r["name"] != "code"]
    assert not skipped, skipped


# --- the battery in process ----------------------------------------------------------------

def _score(completions, rows, **_):
    return [Verdict.ok() if c.strip() == r["answer"] else Verdict.fail(Category.WRONG_ANSWER, "no")
            for c, r in zip(completions, rows)]


GOOD = VerifierRecord(name="good", fn=_score, in_process=True, time_budget_s=2.0,
                      examples=(Example(row={"answer": "7"}, completion="7", reward=1.0),))


def test_a_correct_verifier_passes_every_property():
    results = check_verifier(GOOD, bad=[("8", {"answer": "7"})])
    assert [r.prop for r in results] == list(PROPERTIES["verifier"])
    assert all(r.status == "pass" for r in results), [r for r in results if r.status != "pass"]


def test_an_invalid_record_fails_record_and_skips_the_rest():
    bad = VerifierRecord(name="bad", fn=_score, time_budget_s=-1.0)
    results = check_verifier(bad)
    assert results[0].status == "fail" and "time_budget_s must be > 0" in results[0].reason
    assert {r.status for r in results[1:]} == {"skip"}


def test_bad_cases_that_score_one_fail_examples():
    results = {r.prop: r for r in check_verifier(GOOD, bad=[("7", {"answer": "7"})],
                                                 hostile=[("empty", "")])}
    assert results["examples"].status == "fail" and "bad[0] must score below 1" in results["examples"].reason


def test_hostile_inputs_are_what_the_battery_documents():
    labels = [label for label, _ in hostile_completions()]
    assert len(labels) == len(set(labels)) >= 20
    sizes = {label: len(text) for label, text in hostile_completions()}
    assert sizes["1 MB of digits"] == 1_000_000 and sizes["nested parentheses x 50000"] == 100_001


def test_builtin_injector_and_scheduler_batteries(pm):
    assert all(r.ok for r in check_injector(pm.registry.injector("reference_answer")))
    results = check_scheduler(pm.registry.scheduler("paper"), options={"lam0": 0.3})
    assert all(r.status == "pass" for r in results), results


# --- the plugin API version ------------------------------------------------------------------

def test_a_plugin_for_another_api_version_is_refused_naming_both_versions():
    plugin = types.ModuleType("rlsd_future_plugin")
    plugin.RLSD_API = ">=2.0,<3"
    pm = get_plugin_manager(load_entrypoints=False)
    with pytest.raises(ApiVersionError) as info:
        pm.register(plugin, name="future")
    msg = str(info.value)
    assert "future" in msg and ">=2.0" in msg and f"provides API {API_VERSION}" in msg
    assert "docs/plugin-api.md" in msg


@pytest.mark.parametrize("declared, ok", [(">=1.0,<2", True), ("1.0", True), ("~=1.0", True),
                                          ("<1.0", False), ("2", False)])
def test_declared_api_ranges(declared, ok):
    plugin = types.ModuleType("p")
    plugin.RLSD_API = declared
    pm = get_plugin_manager(load_entrypoints=False)
    if ok:
        pm.register(plugin, name="p")
        assert pm.origin("p").api
    else:
        with pytest.raises(ApiVersionError):
            pm.register(plugin, name="p")


def test_an_unreadable_api_range_is_an_error():
    plugin = types.ModuleType("p")
    plugin.RLSD_API = "version one"
    with pytest.raises(ApiVersionError, match="unreadable API range"):
        get_plugin_manager(load_entrypoints=False).register(plugin, name="p")


def test_plugins_listing_shows_the_api_range(pm):
    rows = {r["name"]: r for r in pm.registry.rows()}
    assert "api" in rows["exact_match"]


# --- the pytest plugin -----------------------------------------------------------------------

PLUGIN_TEST = '''
from rlsd_core import Category, Example, Verdict, VerifierRecord, hookimpl
from rlsd_core.testing import verifier_conformance


def score(completions, rows, **_):
    return [Verdict.ok() if c.strip() == r["answer"] else Verdict.fail(Category.WRONG_ANSWER, "no")
            for c, r in zip(completions, rows)]


def sloppy(completions, rows, **_):
    return [Verdict(1.0, Category.WRONG_ANSWER) for _ in completions]


class Plugin:
    @hookimpl
    def rlsd_verifiers(self):
        return [VerifierRecord(name="mine", fn=score, in_process=True, time_budget_s=2.0),
                VerifierRecord(name="sloppy", fn=sloppy, in_process=True, time_budget_s=2.0)]


test_mine = verifier_conformance("mine", plugin=Plugin(), good=[("7", {"answer": "7"})],
                                 bad=[("8", {"answer": "7"})])
test_sloppy = verifier_conformance("sloppy", plugin=Plugin(), good=[("7", {"answer": "7"})])


def test_fixtures(rlsd_plugin_manager, rlsd_verifier_runtime, rlsd_hostile_completions):
    pm = rlsd_plugin_manager(Plugin(), "exact_match")
    assert pm.registry.names("verifier") == ["exact_match", "mine", "sloppy"]
    rt = rlsd_verifier_runtime("mine", plugin=Plugin(), pool=True)
    assert rt.worker_pids() or rt.wait_ready(60)
    assert [v.reward for v in rt.score(["7", "8"], [{"answer": "7"}] * 2)] == [1.0, 0.0]
    assert len(rlsd_hostile_completions) >= 20
'''


def test_pytest_plugin_gives_one_line_batteries_and_fixtures(pytester):
    pytester.makepyfile(test_author=PLUGIN_TEST)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=600)
    outcomes = result.parseoutcomes()
    # mine: 10 properties pass; sloppy: categories fails (and examples: 1.0 expected, ok);
    # the fixtures test passes.
    assert outcomes.get("failed") == 1, result.stdout.str()
    assert outcomes.get("passed") == 10 + 9 + 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*verifier 'sloppy' fails categories: *reward 1.0 with category "
                                 "'wrong_answer'*"])
