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
- ObjectiveRecord.credit(CreditInputs) -> token advantages [B, T];
  ObjectiveRecord.loss(LossInputs) -> (loss scalar, stats dict)
  A training objective (rlsd, grpo, opsd, grpo+opsd are built in): how each token's advantage
  is computed and what the update minimises. Tensors are torch tensors; this module does not
  import torch so that verifier workers stay light.

`RunInfo` is what the event hooks receive about a run. `Example` is a known case a plugin ships
on its record (`examples=`), so that the conformance battery (`rlsd plugins check`,
`rlsd_core.testing`) can test an installed plugin on rows it understands.

These records and the hooks of `rlsd_core.hookspecs` are one contract, versioned by
`API_VERSION` (docs/plugin-api.md); fields are only ever added with a default.

Options: a verifier or injector may declare the options it accepts as `options_schema`, a
pydantic model class (optional; records without one keep working). rlsd then checks a task's
`verifier_options` / `injector_options` (and `rlsd verify --options`) with `check_options`
before any row is scored or any model loaded: an unknown or invalid option is an error naming
the option, never a run whose every sample is `verifier_error`. Without a schema, a verifier's
options are checked against the keyword parameters of its `fn` when it takes no `**options`.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

from .hookspecs import API_VERSION  # noqa: F401 - re-exported: the records share its version
from .verdict import Verdict

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.+\-]*$")


class RecordError(ValueError):
    """A record handed over by a plugin is malformed."""


class TaskError(ValueError):
    """A task cannot be built from its config: a bad option, a missing file, unusable rows.
    Task sources raise it; the message names what is wrong and how to fix it."""


class OptionsError(ValueError):
    """Options given to a plugin do not fit what it declares; the message names each option."""


def _schema_problems(schema: Any, options: Mapping[str, Any]) -> tuple[list[str], dict]:
    fields = getattr(schema, "model_fields", None)
    config = getattr(schema, "model_config", None) or {}
    problems = []
    if isinstance(fields, Mapping) and config.get("extra") != "allow":
        for key in options:
            if key not in fields:
                problems.append(f"unknown option {key!r} (valid: {', '.join(fields) or 'none'})")
    if problems:
        return problems, {}
    try:
        model = schema.model_validate(dict(options))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        for err in (errors() if callable(errors) else []):
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            where = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"option {where!r}: {msg} (got {err.get('input')!r})" if where else msg)
        return problems or [str(exc)], {}
    return [], {key: getattr(model, key, options[key]) for key in options}


def _signature_problems(fn: Callable, options: Mapping[str, Any], skip: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []  # fn(**options): nothing declared to check against
    names = [p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return [f"unknown option {key!r} (valid: {', '.join(names) or 'none'})"
            for key in options if key not in names]


def check_options(record: Any, options: Mapping[str, Any] | None, where: str = "") -> dict:
    """Check `options` for a verifier or injector record before any work; return the options to
    use (values coerced by the record's `options_schema`, if it has one). Raises OptionsError
    naming the record, `where` the options came from, and every offending option."""
    options = dict(options or {})
    schema = getattr(record, "options_schema", None)
    if schema is not None:
        problems, options = _schema_problems(schema, options)
    elif getattr(record, "kind", "") == "verifier":
        problems = _signature_problems(record.fn, options, skip=2)
    else:
        problems = []
    if problems:
        at = f"{where}: " if where else ""
        raise OptionsError(f"{at}{record.kind} {record.name!r} rejects its options: "
                           + "; ".join(problems))
    return options


def _check_common(rec: Any, callables: tuple[str, ...] = ("fn",)) -> None:
    kind = type(rec).__name__
    if not isinstance(rec.name, str) or not _NAME_RE.match(rec.name):
        raise RecordError(
            f"{kind}.name must be a non-empty identifier-like string (letters, digits, '_', '-', "
            f"'.', '+'), got {rec.name!r}")
    for attr in callables:
        if not callable(getattr(rec, attr)):
            raise RecordError(f"{kind} {rec.name!r}: {attr} must be callable, got "
                              f"{type(getattr(rec, attr)).__name__}")
    if isinstance(rec.columns, str) or not all(isinstance(c, str) for c in rec.columns):
        raise RecordError(f"{kind} {rec.name!r}: columns must be a sequence of column names")
    if not isinstance(rec.version, str) or not rec.version:
        raise RecordError(f"{kind} {rec.name!r}: version must be a non-empty string")
    if not isinstance(rec.description, str):
        raise RecordError(f"{kind} {rec.name!r}: description must be a string")


@dataclass(frozen=True)
class Example:
    """A known case shipped with a verifier or injector record (API 1.0).

    row: a dataset row holding (at least) the columns the record declares.
    completion: for a verifier, the completion to score.
    reward: for a verifier, the reward it must give; None when only the contract is checked.
    """

    row: Mapping[str, Any]
    completion: str = ""
    reward: float | None = None


def _check_examples(rec: Any) -> None:
    kind = type(rec).__name__
    if isinstance(rec.examples, (str, bytes, Mapping)) or not isinstance(rec.examples, Sequence):
        raise RecordError(f"{kind} {rec.name!r}: examples must be a tuple of rlsd_core.Example")
    for i, ex in enumerate(rec.examples):
        where = f"{kind} {rec.name!r}: examples[{i}]"
        if not isinstance(ex, Example):
            raise RecordError(f"{where} must be an rlsd_core.Example, got {type(ex).__name__}")
        if not isinstance(ex.row, Mapping):
            raise RecordError(f"{where}.row must be a mapping, got {type(ex.row).__name__}")
        missing = [c for c in rec.columns if c not in ex.row]
        if missing:
            raise RecordError(f"{where}.row lacks the declared column(s) {missing}")
        if not isinstance(ex.completion, str):
            raise RecordError(f"{where}.completion must be a str")
        r = ex.reward
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))
                              or not math.isfinite(r) or not 0.0 <= r <= 1.0):
            raise RecordError(f"{where}.reward must be None or a number in [0, 1], got {r!r}")


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
    examples: `Example`s (row, completion, expected reward) that `rlsd plugins check` scores.
    optional_columns: columns it reads when a row has them (e.g. one of two row styles); the
      conformance battery checks that it reads nothing beyond these and `columns`.
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
    examples: tuple[Example, ...] = ()
    optional_columns: tuple[str, ...] = ()
    # Optional: a pydantic model class of the accepted options (see the module docstring).
    options_schema: Any = None

    kind = "verifier"

    def validate(self) -> None:
        _check_common(self)
        _check_examples(self)
        oc = self.optional_columns
        if isinstance(oc, str) or not all(isinstance(c, str) for c in oc):
            raise RecordError(f"verifier {self.name!r}: optional_columns must be a sequence of "
                              f"column names")
        if not isinstance(self.time_budget_s, (int, float)) or not self.time_budget_s > 0:
            raise RecordError(f"verifier {self.name!r}: time_budget_s must be > 0, got {self.time_budget_s!r}")


@dataclass
class InjectorContext:
    """What an injector may look at besides the row: the rest of the response's group.

    index: which response of the group the teacher prompt is for.
    responses / verdicts: the group's decoded responses and their verdicts (same order).
    options: the injector's options from the config (templates, budgets). `max_hint_tokens` is
      the budget every injector honours: the privileged text it adds is at most that many
      tokens (the conformance battery checks it).
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
    # Rows (`Example.row`) that `rlsd plugins check` builds teacher prompts from.
    examples: tuple[Example, ...] = ()
    # Optional: a pydantic model class of the accepted ctx.options (see the module docstring).
    options_schema: Any = None

    kind = "injector"

    def validate(self) -> None:
        _check_common(self)
        _check_examples(self)


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
    """A task shipped by a plugin: fn(**options) -> rows, scored by `verifier`, taught by `injector`.

    generated: fn is a generator that takes `seed` (the run's seed unless the task's options set
      one) and returns its rows already shuffled by it; rlsd then takes the held-out split from
      the head without shuffling again. Otherwise rlsd shuffles the rows with the run's seed.
    """

    name: str
    fn: Callable[..., Sequence[Mapping[str, Any]]]
    columns: tuple[str, ...] = ("prompt", "answer")
    version: str = "1"
    description: str = ""
    verifier: str = "exact_match"
    injector: str = "reference_answer"
    generated: bool = False

    kind = "task_source"

    def validate(self) -> None:
        _check_common(self)
        for attr in ("verifier", "injector"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise RecordError(f"task source {self.name!r}: {attr} must name a record")


@dataclass(frozen=True)
class CreditInputs:
    """What an objective's `credit` sees: one rollout batch. B responses, T response tokens.

    advantages: [B] group advantages A (0 for masked samples).
    old_logprobs: [B, T] the student's log-probs at rollout time (pi_old, log P_S).
    mask: [B, T] bool, True on response tokens that train (infra-fault samples are off).
    lam, eps_w: [B] float64, each row's lambda and eps_w from its task's scheduler.
    teacher_logprobs: [B, T] log P_T of the same tokens under the teacher prompt, or None when
      the teacher forward did not run (see ObjectiveRecord.teacher).
    options: the run's `algo` config section (a dict).
    token_mask: [B, T] bool or None: the tokens the teacher may reweight (`algo.thought_only`:
      those inside the reasoning span); None means every response token (API 1.0).
    """

    advantages: Any
    old_logprobs: Any
    mask: Any
    lam: Any
    eps_w: Any
    teacher_logprobs: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    token_mask: Any = None


@dataclass(frozen=True)
class LossInputs:
    """What an objective's `loss` sees: one micro-batch (b rows, T its longest response).

    logprobs: [b, T] the current policy's log-probs of the sampled tokens (carries the gradient).
    logits: [b, T, V] the current policy's temperature-scaled logits, when the objective asked
      for teacher logits (ObjectiveRecord.needs_logits), else None.
    old_logprobs, token_advantages, mask: [b, T] (token_advantages from `credit`).
    teacher_logprobs: [b, T] or None; teacher_logits: [b, T, V] or None.
    options: the run's `algo` config section (a dict).
    denominator: what a token-mean (or seq-mean) loss divides by: the count over the whole
      mini-batch, so that gradient accumulation over micro-batches sums to the mini-batch loss.
    """

    logprobs: Any
    old_logprobs: Any
    token_advantages: Any
    mask: Any
    logits: Any = None
    teacher_logprobs: Any = None
    teacher_logits: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    denominator: float | None = None


def _never(options: Mapping[str, Any]) -> bool:
    return False


TEACHER_WHEN = ("never", "lambda", "always")


@dataclass(frozen=True)
class ObjectiveRecord:
    """A training objective, selected by `algo.loss`.

    credit: fn(CreditInputs) -> token advantages [B, T], detached, 0 where mask is off.
    loss: fn(LossInputs) -> (loss scalar tensor, stats dict of floats).
    teacher: when the loop runs the teacher forward: "never" (grpo), "lambda" (only when some
      row's lambda > 0: rlsd), "always" (opsd).
    needs_logits: fn(options) -> bool; True when the loss needs full-vocabulary logits of the
      teacher and of the policy (e.g. OPSD's divergences), which cost B x T x V memory.
    """

    name: str
    credit: Callable[[CreditInputs], Any]
    loss: Callable[[LossInputs], tuple[Any, dict]]
    teacher: str = "never"
    needs_logits: Callable[[Mapping[str, Any]], bool] = _never
    version: str = "1"
    description: str = ""
    columns: tuple[str, ...] = ()

    kind = "objective"

    def validate(self) -> None:
        _check_common(self, callables=("credit", "loss", "needs_logits"))
        if self.teacher not in TEACHER_WHEN:
            raise RecordError(f"objective {self.name!r}: teacher must be one of {TEACHER_WHEN}, "
                              f"got {self.teacher!r}")


@dataclass
class RunInfo:
    """A training run as the event hooks see it."""

    config: Mapping[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    total_steps: int = 0
    start_step: int = 1


RECORD_TYPES = {
    "verifier": VerifierRecord,
    "injector": InjectorRecord,
    "scheduler": SchedulerRecord,
    "task_source": TaskSourceRecord,
    "objective": ObjectiveRecord,
}
