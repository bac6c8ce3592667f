"""The verifier runtime: the only way rlsd calls a verifier, built-in or third-party.

Data flow: rollouts (completions) + dataset rows -> VerifierRuntime.score -> one Verdict per
completion, in order. The runtime owns everything that must not be left to each plugin: input
type checks, declared-column checks, catching BaseException at the plugin boundary, and
validating what comes back (a finite reward in [0, 1], one result per sample; anything else is
verifier_error, never broadcast, never NaN).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .records import VerifierRecord
from .verdict import Category, Verdict


def coerce_result(value: Any) -> Verdict:
    """Turn what a plugin returned for one sample into a Verdict, or a verifier_error verdict."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and 0.0 <= value <= 1.0:
            return Verdict(float(value), Category.OK if value == 1.0 else Category.WRONG_ANSWER)
        return Verdict.fail(Category.VERIFIER_ERROR, f"verifier returned reward {value!r}, outside [0, 1]")
    return Verdict.fail(Category.VERIFIER_ERROR,
                        f"verifier returned {type(value).__name__}, expected a Verdict or a float")


def missing_columns(record: VerifierRecord, row: Any) -> Verdict | None:
    if not isinstance(row, Mapping):
        return Verdict.fail(Category.INVALID_INPUT, f"row must be a mapping, got {type(row).__name__}")
    missing = [c for c in record.columns if c not in row]
    if missing:
        return Verdict.fail(Category.INVALID_INPUT,
                            f"row is missing column(s) {missing} that verifier {record.name!r} needs")
    return None


def call_verifier(record: VerifierRecord, completions: Sequence[Any], rows: Sequence[Mapping],
                  options: Mapping[str, Any]) -> list[Verdict]:
    """Call a verifier on a batch in this process, guarding the plugin boundary."""
    try:
        produced = record.fn(list(completions), list(rows), **options)
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a plugin too
        msg = f"verifier {record.name!r} raised {type(exc).__name__}: {exc}"
        return [Verdict.fail(Category.VERIFIER_ERROR, msg)] * len(completions)
    try:
        produced = list(produced)
    except BaseException as exc:  # noqa: BLE001
        return [Verdict.fail(Category.VERIFIER_ERROR,
                             f"verifier {record.name!r} returned a non-iterable: {exc}")] * len(completions)
    if len(produced) != len(completions):
        msg = (f"verifier {record.name!r} returned {len(produced)} results for "
               f"{len(completions)} completions")
        return [Verdict.fail(Category.VERIFIER_ERROR, msg)] * len(completions)
    return [coerce_result(v) for v in produced]


class VerifierRuntime:
    """Scores batches with one verifier record and its options."""

    def __init__(self, record: VerifierRecord, options: Mapping[str, Any] | None = None, *,
                 workers: int = 1, timeout: float | None = None) -> None:
        self.record = record
        self.options = dict(options or {})
        self.workers = workers
        self.timeout = timeout if timeout is not None else record.time_budget_s

    def score(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        out: list[Verdict | None] = [None] * len(completions)
        todo = []
        for i, (c, r) in enumerate(zip(completions, rows)):
            bad = missing_columns(self.record, r)
            if bad is None and not isinstance(c, str):
                bad = Verdict.fail(Category.INVALID_INPUT, f"completion must be a str, got {type(c).__name__}")
            if bad is not None:
                out[i] = bad
            else:
                todo.append(i)
        # One sample per call so that one bad sample cannot take its neighbours down.
        for i in todo:
            out[i] = call_verifier(self.record, [completions[i]], [rows[i]], self.options)[0]
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass

    def __enter__(self) -> "VerifierRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
