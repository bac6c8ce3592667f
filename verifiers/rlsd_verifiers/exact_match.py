"""The `exact_match` verifier: a completion's final answer equals one of the gold strings
after a configurable normalisation.

Data flow: the runtime hands over clean text (see rlsd_core.hygiene); this module extracts the
final answer (last \\boxed{}, <answer> tag or "final answer is" phrase; the whole completion if
there is none and `extract="auto"`), normalises both sides and compares. It parses no
structure that can blow up, so it declares itself safe to run in-process.

Options (all keyword arguments, all on by default):
  ignore_case          compare case-insensitively
  strip_punctuation    drop surrounding whitespace and punctuation ("42." == "42")
  collapse_whitespace  runs of internal whitespace count as one space
  unwrap_latex         remove $...$, \\text{}, \\textbf{}, \\mathrm{}, \\boxed{} wrappers
  normalize_numbers    "1,000" == "1000", "+5" == "5", "2.50" == "2.5", "3.0" == "3"
  extract              "auto" (wrapped answer, else whole text) | "wrapped" (wrapped answer
                       only; none found is no_answer) | "none" (whole completion)
  max_answer_chars     longer extracted answers are input_too_large (default 10,000)
The gold column `answer` may be one string (or number) or a list of accepted answers.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from rlsd_core import (Category, Example, Verdict, VerifierRecord, clean_completion, hookimpl,
                       normalize_text)

from .extract import extract_answer

NAME = "exact_match"
VERSION = "1.0"

_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|boxed|fbox|mbox)\s*\{([^{}]*)\}")
_PUNCT = " \t\r\n.,;:!?\"'`()[]"
_NUMBER_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")


def _unwrap(text: str) -> str:
    # Innermost wrappers first, repeatedly: \boxed{\text{5}} -> \boxed{5} -> 5. Bounded by the
    # number of wrappers, each pass removes at least one.
    for _ in range(32):
        new = _WRAPPER_RE.sub(r"\1", text)
        if new == text:
            break
        text = new
    text = text.strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$")
    return text.replace("\\!", "").replace("\\,", "").replace("\\ ", " ")


def _number(text: str) -> str:
    if not _NUMBER_RE.match(text):
        return text
    sign = "-" if text.startswith("-") else ""
    body = text.lstrip("+-").replace(",", "")
    if "." in body:
        body = body.rstrip("0").rstrip(".")
    body = body.lstrip("0") or "0"
    if body.startswith("."):
        body = "0" + body
    return body if body == "0" else sign + body


def normalize(text: str, *, ignore_case: bool = True, strip_punctuation: bool = True,
              collapse_whitespace: bool = True, unwrap_latex: bool = True,
              normalize_numbers: bool = True) -> str:
    """Normalise one answer string according to the options (see the module docstring)."""
    text = normalize_text(text)
    if unwrap_latex:
        text = _unwrap(text)
    if collapse_whitespace:
        text = " ".join(text.split())
    if strip_punctuation:
        text = text.strip(_PUNCT)
    if normalize_numbers:
        text = _number(text)
    if ignore_case:
        text = text.casefold()
    return text


_NORM_KEYS = ("ignore_case", "strip_punctuation", "collapse_whitespace", "unwrap_latex", "normalize_numbers")


def _golds(raw: Any) -> list[str] | None:
    if isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        items = [raw]
    out = []
    for item in items:
        if isinstance(item, bool) or item is None:
            return None
        if isinstance(item, (int, float)):
            item = repr(item) if isinstance(item, float) else str(item)
        if not isinstance(item, str):
            return None
        out.append(item)
    return out or None


def _extract(text: str, extract: str) -> str | None:
    if extract == "none":
        return text
    found, _how = extract_answer(text)
    if found is None and extract == "auto":
        return text
    return found


class ExactMatchOptions(BaseModel):
    """The options (see the module docstring), checked by `rlsd_core.check_options` before any
    row is scored; None: the default."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ignore_case: bool | None = None
    strip_punctuation: bool | None = None
    collapse_whitespace: bool | None = None
    unwrap_latex: bool | None = None
    normalize_numbers: bool | None = None
    extract: Literal["auto", "wrapped", "none"] | None = None
    max_answer_chars: int | None = Field(None, ge=1)


def score_one(completion: Any, row: Mapping[str, Any], *, extract: str = "auto",
              max_answer_chars: int = 10_000, **norm: bool) -> Verdict:
    if extract not in ("auto", "wrapped", "none"):
        raise ValueError(f"exact_match: extract must be 'auto', 'wrapped' or 'none', got {extract!r}")
    unknown = set(norm) - set(_NORM_KEYS)
    if unknown:
        raise TypeError(f"exact_match: unknown option(s) {sorted(unknown)}; valid: "
                        f"{sorted(_NORM_KEYS + ('extract', 'max_answer_chars'))}")
    golds = _golds(row.get("answer"))
    if golds is None:
        return Verdict.fail(Category.GOLD_ERROR, f"gold answer must be a string or a list of strings, "
                                                 f"got {type(row.get('answer')).__name__}")
    text, bad = clean_completion(completion)
    if bad is not None:
        return bad
    answer = _extract(text, extract)
    if answer is None or not answer.strip():
        return Verdict.fail(Category.NO_ANSWER, "no final answer found")
    if len(answer) > max_answer_chars:
        return Verdict.fail(Category.INPUT_TOO_LARGE,
                            f"answer is {len(answer)} characters (limit {max_answer_chars})")
    got = normalize(answer, **norm)
    if not got:
        return Verdict.fail(Category.NO_ANSWER, "the answer is empty after normalisation")
    wanted = [normalize(g, **norm) for g in golds]
    if got in wanted:
        return Verdict.ok(answer=got)
    shown = answer.strip()
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Verdict.fail(Category.WRONG_ANSWER, f"expected {golds[0]!r}, got {shown!r}", answer=got)


def score(completions: Sequence[Any], rows: Sequence[Mapping[str, Any]], **options) -> list[Verdict]:
    return [score_one(c, r, **options) for c, r in zip(completions, rows)]


RECORD = VerifierRecord(
    name=NAME,
    fn=score,
    columns=("answer",),
    version=VERSION,
    description="Final answer equals a gold string after configurable normalisation.",
    needs_sandbox=False,
    time_budget_s=2.0,
    in_process=True,
    cacheable=False,  # cheaper to recompute than to key
    examples=(
        Example(row={"answer": "Paris"}, completion="The capital is \\boxed{paris}.", reward=1.0),
        Example(row={"answer": ["1,000", "one thousand"]}, completion="1000", reward=1.0),
        Example(row={"answer": "42"}, completion="The final answer is 41.", reward=0.0),
        Example(row={"answer": "42"}, completion="", reward=0.0),
    ),
    options_schema=ExactMatchOptions,
)


@hookimpl
def rlsd_verifiers() -> list[VerifierRecord]:
    return [RECORD]

