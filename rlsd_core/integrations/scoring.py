"""What the TRL and verl adapters share: the plugin registry and the text a verifier scores.

    a framework's completion (TRL: str or chat messages; verl: str) -> completion_text -> str
    verifier name -> registry() -> VerifierRecord -> rlsd_core.rewards.VerifierRuntime

The registry is read from the installed entry points once per process (a framework may call a
reward function thousands of times per step); pass your own `PluginManager` to the adapters
to use inline plugins (tests do) or an allow-list (RLSD_LOAD_PLUGINS).
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

from ..plugins import PluginManager, get_plugin_manager

_LOCK = threading.Lock()
_MANAGER: PluginManager | None = None


def plugin_manager() -> PluginManager:
    """The process-wide plugin manager (entry points loaded on first use, then kept)."""
    global _MANAGER
    with _LOCK:
        if _MANAGER is None:
            _MANAGER = get_plugin_manager()
        return _MANAGER


def registry(plugins: PluginManager | None = None):
    """The name -> record registry of `plugins`, or of the process-wide manager."""
    return (plugins or plugin_manager()).registry


def completion_text(completion: Any) -> Any:
    """The text to verify. TRL hands a str (standard datasets) or the generated chat messages
    (conversational: [{"role": "assistant", "content": ...}], after tool calls several
    messages): the last assistant message's content is the answer; a content given as parts
    keeps its text parts. Anything else is returned unchanged, so that the runtime's input
    hygiene scores it `invalid_input` (a model outcome, reward 0) rather than crash the step."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return _content_text(message.get("content"))
    return completion


def _content_text(content: Any) -> Any:
    if isinstance(content, (list, tuple)):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, Mapping) and p.get("type") == "text")
    return "" if content is None else content


def missing_columns(required: Iterable[str], available: Iterable[str]) -> list[str]:
    have = set(available)
    return [c for c in required if c not in have]


def column_error(who: str, missing: list[str], available: Iterable[str], fix: str) -> str:
    return (f"{who} needs dataset column(s) {missing}, which the dataset does not have (its columns: "
            f"{sorted(available)}). {fix}")
