"""The `math` verifier: is the completion's final answer mathematically the gold answer?

Data flow (one sample): clean text (rlsd_core.clean_tail: type check, tail cap,
NFKC) -> answers.extract (boxes, <answer> tag, answer phrase, bold number, else the last formula
or standalone number) -> hedge checks -> answers.clean_answer (formula delimiters, currency,
units, \\text{}, labels and chains, degrees, %) -> parsing.parse_value (exact literals without
sympy; \\pm, ratios and lists part by part; else latex2sympy2_extended) ->
equivalence.equivalent (exact, tolerant for decimals, symbolic by sampling, conditions as sets,
bounded for huge numbers) -> Verdict with a short feedback message ("expected 12, got 13").

It runs in the runtime's worker processes under a hard deadline (it parses untrusted
structure, so it is not `in_process`). Only primitive values leave it: the Verdict carries
strings taken from the input text, never a formatted sympy object.

Options:
  fallback   "last_number" (default): with no boxed, tagged or phrased answer, score a bold
             number, else the last formula or standalone number in the text;
             "none": no boxed, tagged or phrased answer is no_answer.
  rel_tol    relative tolerance for answers written as decimals (default 1e-6).
  max_chars  input cap; the tail is kept (default 20,000).
The gold column `answer` is a string or number (a list means "any of these"); a gold that
cannot be parsed is gold_error, counted apart from the model's errors.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, model_validator

from rlsd_core import (DEFAULT_MAX_CHARS, Category, Example, Verdict, VerifierRecord, clean_tail,
                       hookimpl)

from .answers import (answer_key, choice_letter, clean_answer, extract, hedge_words, is_bare,
                      leading_choice, open_box_content, unescape_commands)
from .parsing import ParseFailure, Value, parse_value

NAME = "math"
VERSION = "2.0"  # verdicts changed with issue 17 (extraction order, comparisons): new cache keys
_FALLBACKS = ("last_number", "none")


def _show(s: str, limit: int = 60) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _gold_strings(raw: Any) -> list[str] | None:
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    out = []
    for item in items:
        if isinstance(item, bool) or item is None:
            return None
        if isinstance(item, Fraction):
            item = f"{item.numerator}/{item.denominator}"
        elif isinstance(item, float):
            item = repr(item)
        elif isinstance(item, int):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            return None
        out.append(item)
    return out or None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> Value:
    """A gold is read like an answer, with two differences: several boxes are the list of
    them, not a hedge (a gold never hedges: "12 or 13" and "19, 46, and 82" are lists too), and
    a gold that is only an answer ("$(p, q) = (3, 2)$", "125 miles") is taken whole. A gold's
    last box that is never closed runs to the end of the gold (a reference cut by its exporter is
    still the reference; a completion's unclosed box stays a malformed answer)."""
    gold = unescape_commands(gold)
    ex = extract(gold, fallback="none")
    if ex.boxes:
        text = ", ".join(ex.boxes)
    elif ex.text is not None:  # boxed, tagged or phrased ("The answer is 5")
        text = ex.text if ex.how != "boxed" else (open_box_content(ex.text) or ex.text)
    elif is_bare(_strip_delims(gold)) or len(gold) <= 40:
        text = gold
    else:  # a worked solution: its last formula or number, as for a completion
        found = extract(gold)
        text = found.text if found.text is not None else gold
    if hedge_words(text):
        text = _as_list(text)
    return parse_value(text, is_gold=True)


def clear_caches() -> None:
    """Forget every parsed gold and answer (benchmarks measure the cold cost with it)."""
    from .parsing import parse_math

    _parse_gold.cache_clear()
    parse_math.cache_clear()


def _strip_delims(s: str) -> str:
    return s.replace("$", " ").replace("\\(", " ").replace("\\)", " ")


def check_options(fallback: str = "last_number", rel_tol: float = 1e-6,
                  max_chars: int = DEFAULT_MAX_CHARS) -> None:
    """Raise ValueError on an option value that cannot work (the CLI can call this early)."""
    if fallback not in _FALLBACKS:
        raise ValueError(f"math: fallback must be one of {_FALLBACKS}, got {fallback!r}")
    if isinstance(rel_tol, bool) or not isinstance(rel_tol, (int, float)) or not 0 <= rel_tol < 1:
        raise ValueError(f"math: rel_tol must be a number in [0, 1), got {rel_tol!r}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 100:
        raise ValueError(f"math: max_chars must be an int >= 100, got {max_chars!r}")


class MathOptions(BaseModel):
    """The options `rlsd_core.check_options` validates before any row is scored (the rules are
    `check_options` above; None: the verifier's default)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    fallback: str | None = None
    rel_tol: float | None = None
    max_chars: int | None = None

    @model_validator(mode="after")
    def _valid(self):
        check_options(**self.model_dump(exclude_none=True))
        return self


def score_one(completion: Any, row: Mapping[str, Any], *, fallback: str = "last_number",
              rel_tol: float = 1e-6, max_chars: int = DEFAULT_MAX_CHARS) -> Verdict:
    check_options(fallback, rel_tol, max_chars)
    golds_raw = _gold_strings(row.get("answer") if isinstance(row, Mapping) else None)
    if golds_raw is None:
        return Verdict.fail(Category.GOLD_ERROR, "gold answer must be a non-empty string, a number "
                                                 "or a list of them")
    golds: list[Value] = []
    for g in golds_raw:
        try:
            golds.append(_parse_gold(g))
        except ParseFailure as exc:
            last_gold_error = f"gold answer {_show(g)!r} cannot be parsed ({exc})"
    if not golds:
        return Verdict.fail(Category.GOLD_ERROR, last_gold_error)
    expected = _show(golds[0].display or golds_raw[0])

    text, bad = clean_tail(completion, max_chars)
    if bad is not None:
        return bad
    ex = extract(text, fallback)
    if ex.text is None:
        return Verdict.fail(Category.NO_ANSWER, "no final answer found (write it as \\boxed{...})")
    cleaned = clean_answer(ex.text)
    got = cleaned.text
    if not got:
        return Verdict.fail(Category.NO_ANSWER, "the final answer is empty")
    shown = _show(got)
    from .equivalence import equivalent, size  # sympy is imported in the worker only

    many = any(g.kind == "sym" and size(g) > 1 for g in golds)
    source = ex.text
    if ex.hedge:
        if not (many and ex.boxes):
            return Verdict.fail(Category.WRONG_ANSWER, f"expected {expected}, got a hedge: {ex.hedge}",
                                answer=got)
        source = ", ".join(ex.boxes)  # several boxes against a gold that lists several values
    hedged = hedge_words(ex.text)  # before units are stripped: "1 or 2" is not "1 (unit: or 2)"
    if hedged:
        if not many:
            return Verdict.fail(Category.WRONG_ANSWER,
                                f"expected {expected}, got a hedge: {_show(ex.text)!r} offers alternatives",
                                answer=got)
    parsed: Value | None = None
    parse_error = ""
    for gold in golds:
        if gold.kind == "choice":
            letter = choice_letter(got) or leading_choice(got)
            if letter == gold.value:
                return Verdict.ok(answer=got)
            continue
        if gold.kind == "text":
            if " ".join(got.lower().split()) == gold.value:
                return Verdict.ok(answer=got)
            continue
        if parsed is None and not parse_error:
            if many and hedged:
                source = _as_list(source)
            try:
                parsed = parse_value(source)
            except ParseFailure as exc:
                parse_error = str(exc)
                continue
        if parsed is not None and equivalent(parsed, gold, rel_tol):
            return Verdict.ok(answer=got)
    if parse_error and all(g.kind not in ("choice", "text") for g in golds):
        return Verdict.fail(Category.PARSE_ERROR, f"could not parse the answer {shown!r} ({parse_error})",
                            answer=got)
    return Verdict.fail(Category.WRONG_ANSWER, f"expected {expected}, got {shown}", answer=got)


_CONJUNCTION = re.compile(
    r"\s*,?\s*(?:\\text\{\s*)?(?:\bor\b|\band\b|\\lor\b|\\vee\b)(?:\s*\})?\s*,?\s*")


def _as_list(s: str) -> str:
    """'1 or 2', '19, 46, and 82' -> a comma list."""
    return _CONJUNCTION.sub(", ", s)


def score(completions: Sequence[Any], rows: Sequence[Mapping[str, Any]], **options) -> list[Verdict]:
    return [score_one(c, r, **options) for c, r in zip(completions, rows)]


def cache_key(completion: str, row: Mapping[str, Any], *, fallback: str = "last_number",
              rel_tol: float = 1e-6, max_chars: int = DEFAULT_MAX_CHARS) -> str | None:
    """The normalised extracted answer (linear-time string work; runs in the parent)."""
    if not isinstance(completion, str) or len(completion) > max_chars:
        return None
    return answer_key(completion, fallback if fallback in _FALLBACKS else "last_number")


RECORD = VerifierRecord(
    name=NAME,
    fn=score,
    columns=("answer",),
    version=VERSION,
    description="Final answer is mathematically equal to the gold (sympy via latex2sympy2_extended).",
    needs_sandbox=False,
    time_budget_s=5.0,
    in_process=False,
    cacheable=True,
    cache_key=cache_key,
    examples=(
        Example(row={"answer": "\\frac{1}{2}"}, completion="So x = \\boxed{0.5}", reward=1.0),
        Example(row={"answer": "52"}, completion="47+5=\\boxed{52}", reward=1.0),
        Example(row={"answer": "52"}, completion="47+5=\\boxed{53}", reward=0.0),
        Example(row={"answer": "x^2 - 1"}, completion="\\boxed{(x-1)(x+1)}", reward=1.0),
    ),
    options_schema=MathOptions,
)


@hookimpl
def rlsd_verifiers() -> list[VerifierRecord]:
    return [RECORD]
