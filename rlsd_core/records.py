"""Typed records that plugins hand to rlsd through the provider hooks.

A plugin never subclasses anything: its provider hook returns a list of these records, and the
plugin manager collects them once, at start-up, into name -> record registries. The hot loop
then calls `record.fn` directly (plain function calls, no hook dispatch per sample).

Contracts of the callables:

- VerifierRecord.fn(completions, rows, **options) -> list[Verdict | float]
  A batch in, one result per completion out, in order. `rows[i]` holds the dataset columns the
  record declares in `columns`. A float is read as a reward in [0, 1] (category ok if 1.0 else
  wrong_answer). The runtime may call it with any batch size, including 1.
- InjectorRecord.fn(row, student_messages, ctx) -> list[message dict]
  Builds the teacher's chat messages from the dataset row and the student's messages (which it
  must not modify). `ctx` is an `InjectorContext`.
- SchedulerRecord.fn(**options) -> Scheduler
  A factory; the scheduler object is called as `scheduler(step, diagnostics)` and returns a
  `Magnitude(lam, eps_w)`. Steps count from 1; `diagnostics` is the previous step's
  diagnostics dict (None at step 1).
- TaskSourceRecord.fn(**options) -> list[dict]
  The rows of a task; `verifier` and `injector` name the records that score and teach them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

from .verdict import Verdict

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class RecordError(ValueError):
    """A record handed over by a plugin is malformed."""


def _check_common(rec: Any) -> None:
    kind = type(rec).__name__
    if not isinstance(rec.name, str) or not _NAME_RE.match(rec.name):
        raise RecordError(
            f"{kind}.name must be a non-empty identifier-like string (letters, digits, '_', '-', '.'),"
            f" got {rec.name!r}")
    if not callable(rec.fn):
        raise RecordError(f"{kind} {rec.name!r}: fn must be callable, got {type(rec.fn).__name__}")
    if isinstance(rec.columns, str) or not all(isinstance(c, str) for c in rec.columns):
        raise RecordError(f"{kind} {rec.name!r}: columns must be a sequence of column names")
    if not isinstance(rec.version, str) or not rec.version:
        raise RecordError(f"{kind} {rec.name!r}: version must be a non-empty string")
    if not isinstance(rec.description, str):
        raise RecordError(f"{kind} {rec.name!r}: description must be a string")


@dataclass(frozen=True)
class VerifierRecord:
    """A reward verifier.

    needs_sandbox: the verifier runs untrusted code (the runtime checks the sandbox at start-up).
    time_budget_s: the default hard wall-clock deadline per completion.
    in_process: safe and cheap (no parsing of untrusted structure that can hang): the runtime may
      call it directly instead of in a worker process.
    cacheable: deterministic in (gold, extracted answer): results may be cached.
    cache_key: optional fn(completion, row, **options) -> str | None giving the normalised
      extracted answer plus whatever else decides the verdict; None disables caching for it.
    startup_check: optional fn(**options) -> None, called once when a runtime for this verifier
      starts; it raises (with install instructions) when the verifier cannot work on this
      machine, e.g. the code verifier without bubblewrap.
    """

    name: str
    fn: Callable[..., Sequence[Verdict | float]]
    columns: tuple[str, ...] = ("answer",)
    version: str = "1"
    description: str = ""
    needs_sandbox: bool = False
    time_budget_s: float = 5.0
    in_process: bool = False
    cacheable: bool = True
    cache_key: Callable[..., str | None] | None = None
    startup_check: Callable[..., None] | None = None

    kind = "verifier"

    def validate(self) -> None:
        _check_common(self)
        if not isinstance(self.time_budget_s, (int, float)) or not self.time_budget_s > 0:
            raise RecordError(f"verifier {self.name!r}: time_budget_s must be > 0, got {self.time_budget_s!r}")


@dataclass
class InjectorContext:
    """What an injector may look at besides the row: the rest of the response's group.

    index: which response of the group the teacher prompt is for.
    responses / verdicts: the group's decoded responses and their verdicts (same order).
    options: the injector's options from the config (templates, budgets).
    count_tokens: counts tokens with the policy's tokenizer (for hint budgets); None if unknown.
    truncate_tokens: cuts a text to at most N tokens with the same tokenizer; None if unknown.
    """

    index: int = 0
    responses: Sequence[str] = ()
    verdicts: Sequence[Verdict] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    count_tokens: Callable[[str], int] | None = None
    truncate_tokens: Callable[[str, int], str] | None = None


@dataclass(frozen=True)
class InjectorRecord:
    """A privileged-context injector: builds what the self-teacher sees."""

    name: str
    fn: Callable[[Mapping[str, Any], list[dict], InjectorContext], list[dict]]
    columns: tuple[str, ...] = ()
    version: str = "1"
    description: str = ""
    # True when the teacher prompt depends on the other responses of the group (per-response
    # teacher prompts); False lets the loop build one teacher prompt per row.
    needs_group: bool = False

    kind = "injector"

    def validate(self) -> None:
        _check_common(self)


class Magnitude(NamedTuple):
    """How strongly the teacher's evidence scales token credit this step."""

    lam: float
    eps_w: float


class Scheduler(Protocol):
    def __call__(self, step: int, diagnostics: Mapping[str, float] | None) -> Magnitude: ...


@dataclass(frozen=True)
class SchedulerRecord:
    """A magnitude scheduler factory: fn(**options) -> Scheduler."""

    name: str
    fn: Callable[..., Scheduler]
    columns: tuple[str, ...] = ()
    version: str = "1"
    description: str = ""

    kind = "scheduler"

    def validate(self) -> None:
        _check_common(self)


@dataclass(frozen=True)
class TaskSourceRecord:
    """A task shipped by a plugin: fn(**options) -> rows, scored by `verifier`, taught by `injector`."""

    name: str
    fn: Callable[..., Sequence[Mapping[str, Any]]]
    columns: tuple[str, ...] = ("prompt", "answer")
    version: str = "1"
    description: str = ""
    verifier: str = "exact_match"
    injector: str = "reference_answer"

    kind = "task_source"

    def validate(self) -> None:
        _check_common(self)
        for attr in ("verifier", "injector"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise RecordError(f"task source {self.name!r}: {attr} must name a record")


RECORD_TYPES = {
    "verifier": VerifierRecord,
    "injector": InjectorRecord,
    "scheduler": SchedulerRecord,
    "task_source": TaskSourceRecord,
}
