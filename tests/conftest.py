"""Shared fixtures: a fresh plugin manager per test (no global state), and inline plugins.

Every plugin manager created during the session reports its hook calls (pluggy's hook-call
monitoring, which sees provider and event hooks alike) to one counter, `hook_calls`; the
meta-test `test_hooks_documented.py::test_hook_is_called_by_a_test` runs last and checks that
every hook of the contract was called by some test of a complete run of the suite.
"""

from __future__ import annotations

import collections
import contextlib
from pathlib import Path

import pytest

from rlsd_core.plugins import PluginManager, get_plugin_manager

HERE = Path(__file__).resolve().parent
_HOOK_CALLS: collections.Counter = collections.Counter()
CALLED_CHECK = "test_hook_is_called_by_a_test"


@pytest.fixture(scope="session", autouse=True)
def _record_hook_calls():
    """Count every hook call of every manager this session creates."""
    real_init = PluginManager.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.pm.add_hookcall_monitoring(
            lambda hook_name, hook_impls, kwargs: _HOOK_CALLS.update([hook_name]) if hook_impls else None,
            lambda outcome, hook_name, hook_impls, kwargs: None)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PluginManager, "__init__", init)
        yield


@pytest.fixture(scope="session")
def hook_calls() -> collections.Counter:
    """hook name -> how many times a test called it (with at least one implementation)."""
    return _HOOK_CALLS


def pytest_collection_modifyitems(session, config, items):
    """The called-hooks meta-test goes last; it checks only a run of the whole suite."""
    last = [i for i in items if CALLED_CHECK in i.name]
    for item in last:
        items.remove(item)
        items.append(item)
    files = {Path(str(i.fspath)).resolve() for i in items}
    every = set(HERE.glob("test_*.py"))
    config._rlsd_whole_suite = (not config.getoption("keyword") and not config.getoption("markexpr")
                                and every <= files)


@pytest.fixture
def pm() -> PluginManager:
    """A fresh manager with every installed entry point loaded."""
    return get_plugin_manager()


@pytest.fixture
def empty_pm() -> PluginManager:
    """A fresh manager with the hook specs only, no entry points."""
    return get_plugin_manager(load_entrypoints=False)


@pytest.fixture
def register_plugin(pm):
    """Register an inline plugin object for the duration of a `with` block (unregistered after)."""

    @contextlib.contextmanager
    def _register(plugin: object, name: str = "inline-test-plugin"):
        pm.register(plugin, name=name)
        try:
            yield pm
        finally:
            pm.unregister(name)

    return _register
