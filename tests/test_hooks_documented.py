"""Meta-tests: every hook is documented with its exact signature, has a test, and is called by
one (recorded through hook-call monitoring over the whole session, tests/conftest.py)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from rlsd_core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("rlsd_") and callable(f))


def test_there_are_hooks():
    assert {"rlsd_verifiers", "rlsd_injectors", "rlsd_schedulers", "rlsd_task_sources"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_exact_signature(hook):
    doc = (ROOT / "docs" / "plugin-hooks.md").read_text()
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert f"`{signature}`" in doc, f"docs/plugin-hooks.md must show `{signature}`"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring_with_an_example(hook):
    assert "Example::" in (getattr(hookspecs, hook).__doc__ or "")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    here = Path(__file__).name
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != here)
    assert re.search(rf"\b{hook}\b", tests), f"no test mentions {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_called_by_a_test(hook, hook_calls, request):
    """Runs after every other test (tests/conftest.py), which recorded every hook call made
    through a plugin manager: a hook that no test calls has no test, whatever mentions it."""
    if not getattr(request.config, "_rlsd_whole_suite", False):
        pytest.skip("checked only when the whole suite runs (no -k, no -m, every tests/test_*.py)")
    assert hook_calls[hook] > 0, (f"no test called {hook} through a plugin manager with an "
                                  f"implementation registered")
