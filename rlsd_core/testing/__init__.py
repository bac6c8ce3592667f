"""The conformance kit for plugin authors: batteries of properties every verifier, injector,
scheduler and objective must have, as plain functions (`check_verifier`, ...), as one-line
pytest tests (`verifier_conformance`, ...), and as `rlsd plugins check` (rlsd_core.cli.plugins).

    from rlsd_core.testing import verifier_conformance

    test_countdown = verifier_conformance(
        "countdown", good=[("<answer>2 * 3 + 4</answer>", {"numbers": [2, 3, 4], "target": 10})],
        bad=[("<answer>2 + 3</answer>", {"numbers": [2, 3, 4], "target": 10})])

collects one test per property (`test_countdown[hostile]`, ...), each failing with the reason.
The record is looked up among the installed plugins, or in `plugin=` (a module or object with
hook implementations, registered alone in a fresh manager) when it is not installed yet.
The pytest fixtures (`rlsd_plugin_manager`, `rlsd_verifier_runtime`, `rlsd_hostile_completions`)
come from `rlsd_core.testing.pytest_plugin`, which rlsd registers as a pytest plugin.

Where it sits: beside the loop, on the contract and the verifier runtime (`rlsd_core.rewards`);
nothing in training imports it. Importing this package is light (no torch, no pytest): the
objective battery imports torch, and the pytest helpers pytest, when they run.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..plugins import PluginManager, get_plugin_manager
from .hostile import hostile_completions
from .injectors import INJECTOR_PROPERTIES, check_injector
from .installed import CHECKED_KINDS, NoSuchPluginError, battery_for, check_installed
from .objectives import OBJECTIVE_PROPERTIES, check_objective
from .results import CheckResult
from .schedulers import SCHEDULER_PROPERTIES, check_scheduler
from .verifiers import VERIFIER_PROPERTIES, check_verifier

PROPERTIES = {"verifier": VERIFIER_PROPERTIES, "injector": INJECTOR_PROPERTIES,
              "scheduler": SCHEDULER_PROPERTIES, "objective": OBJECTIVE_PROPERTIES}


def manager_with(*plugins: Any) -> PluginManager:
    """A fresh plugin manager holding only `plugins`: objects or modules with hook
    implementations, or names of installed entry points / distributions (str)."""
    pm = get_plugin_manager(load_entrypoints=False)
    names = [p for p in plugins if isinstance(p, str)]
    if names:
        pm.load_entrypoints(names=names)
    for i, plugin in enumerate(p for p in plugins if not isinstance(p, str)):
        pm.register(plugin, name=getattr(plugin, "__name__", None) or f"plugin-under-test-{i}")
    return pm


def find_record(kind: str, name: Any, plugin: Any = None):
    """`name` itself when it is a record; else the `kind` record named `name` from `plugin`
    (registered alone) or from the installed plugins."""
    if not isinstance(name, str):
        return name
    pm = manager_with(plugin) if plugin is not None else get_plugin_manager()
    return pm.registry.get(kind, name)


def conformance(kind: str, name: Any, *, plugin: Any = None, **battery_kwargs) -> Callable:
    """A pytest test function parametrized over the `kind` battery's properties. The battery
    runs once (at the first of its tests) and each test reports its property."""
    import pytest

    cache: dict[str, dict[str, CheckResult]] = {}

    def results() -> dict[str, CheckResult]:
        if "results" not in cache:
            record = find_record(kind, name, plugin)
            cache["results"] = {r.prop: r for r in battery_for(kind)(record, **battery_kwargs)}
        return cache["results"]

    @pytest.mark.parametrize("prop", PROPERTIES[kind])
    def test_conformance(prop: str) -> None:
        result = results()[prop]
        if result.status == "skip":
            pytest.skip(f"{kind} {result.name!r}: {prop}: {result.reason}")
        if result.status == "fail":
            pytest.fail(f"{kind} {result.name!r} fails {prop}: {result.reason}", pytrace=False)

    test_conformance.__doc__ = f"The {kind} conformance battery on {name!r}, one property per test."
    return test_conformance


def verifier_conformance(name: Any, *, good: Sequence = (), bad: Sequence = (),
                         options: Mapping[str, Any] | None = None, plugin: Any = None) -> Callable:
    """One-line conformance tests for a verifier: `good` (completion, row) pairs must score 1,
    `bad` ones below 1, on top of the record's own `examples`."""
    return conformance("verifier", name, plugin=plugin, good=good, bad=bad, options=options)


def injector_conformance(name: Any, *, rows: Sequence = (), options: Mapping[str, Any] | None = None,
                         plugin: Any = None) -> Callable:
    """One-line conformance tests for an injector (its example rows plus `rows`)."""
    return conformance("injector", name, plugin=plugin, rows=rows, options=options)


def scheduler_conformance(name: Any, *, options: Mapping[str, Any] | None = None,
                          plugin: Any = None) -> Callable:
    """One-line conformance tests for a magnitude scheduler built with `options`."""
    return conformance("scheduler", name, plugin=plugin, options=options)


def objective_conformance(name: Any, *, options: Mapping[str, Any] | None = None,
                          plugin: Any = None) -> Callable:
    """One-line conformance tests for a training objective (`options`: the `algo` section)."""
    return conformance("objective", name, plugin=plugin, options=options)


__all__ = ["CHECKED_KINDS", "CheckResult", "NoSuchPluginError", "PROPERTIES", "check_injector",
           "check_installed", "check_objective", "check_scheduler", "check_verifier",
           "conformance", "find_record", "hostile_completions", "injector_conformance",
           "manager_with", "objective_conformance", "scheduler_conformance",
           "verifier_conformance"]
