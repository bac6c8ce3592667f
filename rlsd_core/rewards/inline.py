"""In-process verifier calls with a deadline: how `VerifierRuntime` calls `in_process` records.

`in_process=True` is the plugin's own claim ("cheap and safe"), so it is trusted for speed but
not for liveness. Each batch runs on one helper thread while the caller waits for each sample
with the runtime's deadline:

- a sample that overruns gets `timeout` (a harness fault, masked in training) and the helper
  thread is abandoned: a thread cannot be killed, so it is left to finish or hang on its own
  (a daemon, it never blocks the interpreter's exit). The runtime then moves the record to the
  worker pool, where deadlines are hard (`VerifierRuntime._demote`);
- a plugin that calls `os._exit` while it runs is stopped with `VerifierExit` (caught at the
  plugin boundary: `verifier_error` naming the verifier) instead of ending the process without
  a word. `os._exit` is wrapped once per process; outside a verifier call, or in a child forked
  from one, it is the original. `posix._exit` and crashes in native code cannot be contained
  in-process: declare such a verifier `in_process=False`;
- every call gets its own deep copy of the row, so a verifier cannot change what the caller
  (the trainer, the JSONL output of `rlsd verify`) sees.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from typing import Any, Mapping, Sequence

from ..records import VerifierRecord
from ..verdict import Category, Verdict
from .boundary import _safe_str, call_verifier


class VerifierExit(BaseException):
    """Raised instead of `os._exit` when an in-process verifier calls it (see the module doc)."""


_local = threading.local()  # .verifier: (name, pid) while a verifier runs on this thread
_real_exit = os._exit
_install_lock = threading.Lock()


def _guarded_exit(status: int) -> None:
    running = getattr(_local, "verifier", None)
    if running is not None and running[1] == os.getpid():
        raise VerifierExit(f"called os._exit({status}) inside the calling process; rlsd stopped "
                           f"the call (declare the verifier in_process=False to run it isolated)")
    _real_exit(status)


def install_exit_guard() -> None:
    """Wrap os._exit once (idempotent; see the module docstring)."""
    with _install_lock:
        if os._exit is not _guarded_exit:
            os._exit = _guarded_exit  # type: ignore[assignment]


def call_once(record: VerifierRecord, text: str, row: Mapping, options: Mapping[str, Any]) -> Verdict:
    """One sample, in this thread, guarded: a copy of the row, os._exit stopped."""
    try:
        row = copy.deepcopy(row)
    except Exception as exc:  # noqa: BLE001 - an object in the row that cannot be copied
        return Verdict.fail(Category.INVALID_INPUT, f"row cannot be copied for the verifier: "
                                                    f"{_safe_str(exc)}")
    _local.verifier = (record.name, os.getpid())
    try:
        return call_verifier(record, [text], [row], options)[0]
    finally:
        _local.verifier = None


class _Job:
    __slots__ = ("items", "results", "cancelled")

    def __init__(self, items: Sequence[tuple[str, Mapping]]) -> None:
        self.items = items
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False


class InlineCaller:
    """Calls an in-process record one sample at a time on a helper thread (one per batch, so
    that concurrent callers never queue behind each other), with a deadline per sample."""

    def __init__(self, record: VerifierRecord, options: Mapping[str, Any], timeout: float) -> None:
        self.record = record
        self.options = options
        self.timeout = timeout
        install_exit_guard()

    def _serve(self, job: _Job) -> None:
        for text, row in job.items:
            if job.cancelled:
                return
            job.results.put(call_once(self.record, text, row, self.options))

    def run(self, items: Sequence[tuple[str, Mapping]]) -> tuple[list[Verdict], int]:
        """Verdicts of the leading items that finished in time, and the index of the first
        that overran (len(items) when none did). The overrun item's verdict is included
        (`timeout`, a harness fault); the items after it were not run."""
        if not items:
            return [], 0
        job = _Job(items)
        threading.Thread(target=self._serve, args=(job,), daemon=True,
                         name=f"rlsd-inline-{self.record.name}").start()
        out: list[Verdict] = []
        for _ in items:
            try:
                out.append(job.results.get(timeout=self.timeout))
            except queue.Empty:
                job.cancelled = True  # the thread is stuck in the plugin: it is abandoned
                out.append(Verdict.harness(
                    Category.TIMEOUT, f"verifier {self.record.name!r} (in_process) exceeded its "
                                      f"{self.timeout:g} s deadline"))
                return out, len(out) - 1
        return out, len(items)
