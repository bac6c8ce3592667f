"""rlsd's pytest plugin (entry point `pytest11: rlsd`): fixtures for testing rlsd plugins.

    rlsd_plugin_manager       factory: a fresh manager with only the given plugins (objects or
                              installed entry-point / distribution names)
    rlsd_verifier_runtime     factory: a VerifierRuntime for a record or a verifier name, in
                              process (as declared) or forced into the worker pool (pool=True);
                              closed after the test
    rlsd_hostile_completions  (label, completion) pairs every verifier must survive

Loaded in every pytest session of an environment where rlsd is installed, so it imports
nothing heavy at collection (the runtime is imported when the fixture is used).
"""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture
def rlsd_plugin_manager():
    """make(*plugins) -> PluginManager holding only those plugins."""
    from rlsd_core.testing import manager_with

    return manager_with


@pytest.fixture
def rlsd_verifier_runtime():
    """make(record_or_name, options=None, *, pool=False, plugin=None, **runtime_kwargs)."""
    from rlsd_core.rewards import VerifierRuntime
    from rlsd_core.testing import find_record

    made: list = []

    def make(record, options=None, *, pool: bool = False, plugin=None, **kwargs):
        record = find_record("verifier", record, plugin)
        if pool and record.in_process:
            record = dataclasses.replace(record, in_process=False)
        runtime = VerifierRuntime(record, options, **kwargs)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture
def rlsd_hostile_completions():
    from rlsd_core.testing.hostile import hostile_completions

    return hostile_completions()
