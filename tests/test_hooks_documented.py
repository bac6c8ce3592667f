"""Meta-tests: every hook is documented with its exact signature and has a test."""

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
