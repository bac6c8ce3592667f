"""The reward cache: verdicts that depend only on (gold, extracted answer) are computed once.

The samples of a group often reach the same final answer; the runtime asks the record's
`cache_key` for the normalised extracted answer and looks the verdict up under
(verifier name and version, options, gold columns, answer). Only categories that are a function
of those inputs are stored: timeouts, crashes and infrastructure faults depend on the machine's
load and state and are never cached.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any, Mapping

from ..records import VerifierRecord
from ..verdict import Category, Verdict

CACHEABLE_CATEGORIES = frozenset({
    Category.OK, Category.WRONG_ANSWER, Category.NO_ANSWER, Category.PARSE_ERROR,
    Category.GOLD_ERROR, Category.INVALID_INPUT, Category.INPUT_TOO_LARGE,
})
DEFAULT_CACHE_SIZE = 100_000


class RewardCache:
    """A thread-safe LRU of verdicts for one verifier record and its options.

    size: entries kept (0 disables it); a record with cacheable=False or no cache_key is never
    cached, whatever the size.
    """

    def __init__(self, record: VerifierRecord, options: Mapping[str, Any], size: int = DEFAULT_CACHE_SIZE):
        self.record = record
        self.options = dict(options)
        self.size = int(size) if record.cacheable and record.cache_key is not None else 0
        self._entries: collections.OrderedDict[Any, Verdict] = collections.OrderedDict()
        self._lock = threading.Lock()
        try:
            self._options_key = json.dumps(self.options, sort_keys=True, default=repr)
        except Exception:  # noqa: BLE001
            self._options_key = repr(sorted(self.options.items(), key=lambda kv: kv[0]))

    def key(self, text: str, row: Mapping) -> Any:
        """The cache key of a cleaned completion and its row, or None (do not cache it)."""
        if not self.size:
            return None
        try:
            answer = self.record.cache_key(text, row, **self.options)  # type: ignore[misc]
            if answer is None or type(answer) is not str:
                return None
            gold = json.dumps([row[c] for c in self.record.columns], sort_keys=True, default=repr)
        except BaseException:  # noqa: BLE001 - a broken key function means "do not cache"
            return None
        return (self.record.name, self.record.version, self._options_key, gold, answer)

    def get(self, key: Any) -> Verdict | None:
        with self._lock:
            v = self._entries.get(key)
            if v is not None:
                self._entries.move_to_end(key)
            return v

    def put(self, key: Any, verdict: Verdict) -> None:
        if verdict.category not in CACHEABLE_CATEGORIES or verdict.harness_fault:
            return
        with self._lock:
            self._entries[key] = verdict
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
