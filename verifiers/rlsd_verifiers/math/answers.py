"""Finding the final answer in a completion, and the string-level clean-up before parsing.

Everything here is plain string work in linear time (no sympy, no backtracking regex), because
it also runs in the trainer's process: the reward cache keys on `answer_key`, computed in the
parent before any worker is involved.

Extraction order (the first that finds something wins):
1. the last `\\boxed{...}` / `\\fbox{...}` (nested braces; several *different* boxed answers are a
   hedge and score wrong_answer);
2. the last `<answer>...</answer>` tag;
3. the last "final answer is ..." / "the answer is ..." / "final answer: ..." phrase (rest of the
   line, up to the closing `$` of an inline formula or the end of the sentence);
4. with `fallback="last_number"` (the default), the last number in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..extract import boxed_spans, final_answer_phrase, last_answer_tag

_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_HEDGE_RE = re.compile(r"(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])|\\(?:lor|vee)(?![A-Za-z])")
_SPACE_CMDS = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*")
_FRAC_ALIAS = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])|\\circ(?![A-Za-z])")
_PERCENT_RE = re.compile(r"\\?%\s*$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE_RE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?[.:]?$")
_CHOICE_PREFIX_RE = re.compile(r"^(?:\\text\{)?\(?\s*([A-Ea-e])\s*(?:\)|[.:]|\}|$)")
# A number followed by words only (units, nouns): "12 cm", "5 apples", "3 square feet".
_NUM_THEN_WORDS = re.compile(
    r"^(?P<num>[-+]?\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?)\s*(?P<words>[A-Za-z][A-Za-z .^2-3/]*)$")
_WORDS_ONLY = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")
_MATH_WORDS = {"pi", "e", "i", "x", "y", "z", "n", "inf", "infty", "infinity", "sqrt", "ln", "log",
               "sin", "cos", "tan", "exp", "oo", "nan"}


@dataclass(frozen=True)
class Extracted:
    """What was found: the raw answer text, how, and whether the completion hedged."""

    text: str | None
    how: str  # boxed | answer_tag | final_answer | last_number | none
    hedge: str = ""  # why the answer is a hedge ("" when it is not)


def _squash(s: str) -> str:
    return " ".join(s.split())


def _phrase(text: str) -> str | None:
    found = final_answer_phrase(text)
    if found is None:
        return None
    if found.startswith("$"):  # "is $\frac{1}{2}$. I hope it is correct."
        end = found.find("$", 1 if not found.startswith("$$") else 2)
        if end > 0:
            return found[: end + 1]
    cut = found.find(". ")
    if cut > 0:
        found = found[:cut]
    return found.rstrip(".").strip() or None


def _last_box_token(text: str) -> int:
    return max(text.rfind("\\boxed"), text.rfind("\\fbox"))


def extract(text: str, fallback: str = "last_number") -> Extracted:
    """The final answer of a cleaned completion (see the module docstring)."""
    spans = boxed_spans(text)
    last_token = _last_box_token(text) if "box" in text else -1
    if last_token >= 0 and (not spans or last_token > spans[-1][1]):
        # the last \boxed is never closed: a malformed answer (parse_error), not a missing one
        return Extracted(text[last_token:], "boxed")
    boxes = [text[a:b] for a, b in spans]
    if boxes:
        distinct = {_squash(b) for b in boxes}
        hedge = ""
        if len(distinct) > 1:
            shown = ", ".join(sorted(distinct, key=len)[:3])
            hedge = f"several different boxed answers ({shown[:60]})"
        return Extracted(boxes[-1], "boxed", hedge)
    tag = last_answer_tag(text)
    if tag is not None:
        return Extracted(tag, "answer_tag")
    phrase = _phrase(text)
    if phrase is not None:
        return Extracted(phrase, "final_answer")
    if fallback == "last_number":
        last = None
        for m in _NUMBER_RE.finditer(text):
            last = m
        if last is not None:
            return Extracted(last.group(0), "last_number")
    return Extracted(None, "none")


@dataclass(frozen=True)
class Cleaned:
    """An answer string ready for the parser, and what the clean-up took off it."""

    text: str
    percent: bool = False
    degrees: bool = False
    words: str = ""  # trailing unit words that were dropped


def _unwrap_text(s: str) -> str:
    for _ in range(16):  # innermost first; bounded
        new = _TEXT_WRAP.sub(r" \1 ", s)
        if new == s:
            break
        s = new
    return s


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left): len(s) - len(right)].strip()
    return s


def clean_answer(raw: str) -> Cleaned:
    """String-level normalisation of an extracted answer (documented in docs/verifiers.md)."""
    s = _strip_math_delims(raw)
    s = s.replace("\\$", "").replace("{,}", "").replace("\\%", "%")
    s = _SPACE_CMDS.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _FRAC_ALIAS.sub(r"\\frac", s)
    degrees = False
    if _DEGREE_RE.search(s):
        degrees = True
        s = _DEGREE_RE.sub("", s)
    s = _unwrap_text(s)
    s = _squash(s).strip().rstrip(".").strip()
    percent = False
    if _PERCENT_RE.search(s):
        percent = True
        s = _PERCENT_RE.sub("", s).strip()
    words = ""
    m = _NUM_THEN_WORDS.match(s)
    if m and m.group("words").strip().lower() not in _MATH_WORDS and len(m.group("words").strip()) > 1:
        words = m.group("words").strip()
        s = m.group("num").replace("$", "").strip()
    if _THOUSANDS.match(s.replace(" ", "")):
        s = s.replace(",", "").replace(" ", "")
    if s.startswith("$") and not s.endswith("$"):
        s = s[1:].strip()  # currency
    return Cleaned(s, percent, degrees, words)


def hedge_words(s: str) -> bool:
    """'1 or 2', 'x = 1 and 2': alternatives offered inside one answer."""
    return _HEDGE_RE.search(s) is not None


def choice_letter(s: str) -> str | None:
    """'B', '(b)', 'C.' -> the letter; None when the string is not a bare choice."""
    m = _CHOICE_RE.match(s.strip())
    return m.group(1).upper() if m else None


def leading_choice(s: str) -> str | None:
    """The option letter an answer starts with: '(B) 12' -> 'B'."""
    m = _CHOICE_PREFIX_RE.match(s.strip())
    return m.group(1).upper() if m else None


def is_words(s: str) -> bool:
    """A plain-word answer such as 'Friday' or 'yes' (compared as text, not parsed)."""
    t = s.strip()
    return bool(_WORDS_ONLY.match(t)) and len(t) > 1 and t.lower() not in _MATH_WORDS


def answer_key(text: str, fallback: str = "last_number") -> str:
    """The normalised extracted answer plus what else decides the verdict (the cache key)."""
    ex = extract(text, fallback)
    if ex.text is None:
        return "none"
    c = clean_answer(ex.text)
    return "\x1f".join(("h" if ex.hedge else "",
                        "p" if c.percent else "", "d" if c.degrees else "", c.text))
