"""Shared fixtures: a fresh plugin manager per test (no global state), and inline plugins."""

from __future__ import annotations

import contextlib

import pytest

from rlsd_core.plugins import PluginManager, get_plugin_manager


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
