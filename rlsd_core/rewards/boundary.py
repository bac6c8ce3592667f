"""The plugin boundary: calling a verifier's `fn` so that nothing it does escapes as an exception,
and turning whatever it returned into exactly one valid `Verdict` per completion.

Used in both places a verifier runs: directly in the caller's process (records with
`in_process=True`) and inside the pool's worker processes (`rlsd_core.rewards.pool`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from ..records import VerifierRecord
from ..verdict import Category, Verdict


def coerce_result(value: Any) -> Verdict:
    """Turn what a plugin returned for one sample into a Verdict, or a verifier_error verdict."""
    if isinstance(value, Verdict):
        # harness_fault is the runtime's to set (the verifier produced no verdict), not a plugin's
        return dataclasses.replace(value, harness_fault=False) if value.harness_fault else value
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
    except MemoryError:
        # the documented category; the runtime's limit, not the answer, decided it: masked
        return [Verdict.harness(Category.MEMORY_LIMIT,
                                f"verifier {record.name!r} ran out of memory")] * len(completions)
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a plugin too
        msg = f"verifier {record.name!r} raised {type(exc).__name__}: {_safe_str(exc)}"
        return [Verdict.fail(Category.VERIFIER_ERROR, msg)] * len(completions)
    try:
        produced = list(produced)
    except BaseException as exc:  # noqa: BLE001
        return [Verdict.fail(Category.VERIFIER_ERROR,
                             f"verifier {record.name!r} returned a non-iterable: {_safe_str(exc)}")] * len(completions)
    if len(produced) != len(completions):
        msg = (f"verifier {record.name!r} returned {len(produced)} results for "
               f"{len(completions)} completions")
        return [Verdict.fail(Category.VERIFIER_ERROR, msg)] * len(completions)
    return [coerce_result(v) for v in produced]


def _safe_str(exc: BaseException, limit: int = 200) -> str:
    """str() of an exception raised by plugin code, which may itself raise or be huge."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001
        return "<unprintable>"
    if type(text) is not str:
        return "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


