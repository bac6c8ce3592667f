"""Final-answer extraction shared by the built-in verifiers.

Completions end with their answer written one of a few ways: `\\boxed{...}` / `\\fbox{...}`
(nested braces, or `\\boxed 7` with no braces), `<answer>...</answer>` tags, an answer phrase
("the final answer is 42", "Answer: 42", GSM8K's "#### 42"), or a formula (`$...$`, `$$...$$`,
`\\(...\\)`, `\\[...\\]`). These helpers find the *last* such answer in linear time, never
recursing, so that hostile nesting cannot blow the stack; they run in the trainer's process too
(the reward cache keys on them), so every pattern here is free of nested quantifiers.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# An answer phrase: only the marker is matched, so that a phrase nested in another's sentence
# ("Final Answer: The final answer is 7.78", Minerva's format) is found as the later match.
_PHRASE_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|\banswer)\s*\**\s*(?:is|:|=)\s*:?|####\s*:?", re.IGNORECASE)
# Minerva's sign-off, and anything after it, is not part of the answer.
_SIGN_OFF_RE = re.compile(r"\s*I hope it is correct", re.IGNORECASE)


def _closing_braces(text: str) -> dict[int, int]:
    """Map the index of every balanced '{' to the index of its '}' in one linear pass."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every outermost \\boxed{} / \\fbox{}, in order.

    `\\boxed 7` (no braces, as LaTeX allows) spans the following run of non-space characters up
    to a `$` or `}`; a `\\boxed{` that is never closed is left out (see `unclosed_box`)."""
    if "box" not in text:
        return []
    pairs: dict[int, int] | None = None
    spans: list[tuple[int, int]] = []
    for m in _BOX_RE.finditer(text):
        if spans and m.start() < spans[-1][1]:
            continue  # nested inside the previous box
        at = m.end()
        if at < len(text) and text[at] == "{":
            if pairs is None:
                pairs = _closing_braces(text)
            close = pairs.get(at)
            if close is not None:
                spans.append((at + 1, close))
        elif m.end() > m.start() + 6 and at < len(text):  # "\boxed 7": a space, then a token
            end = at
            while end < len(text) and not text[end].isspace() and text[end] not in "${}\\":
                end += 1
            if end > at:
                spans.append((at, end))
    return spans


def all_boxed(text: str) -> list[str]:
    return [text[a:b] for a, b in boxed_spans(text)]


def last_boxed(text: str) -> str | None:
    """Contents of the last outermost balanced \\boxed{}/\\fbox{}, or None."""
    spans = boxed_spans(text)
    if not spans:
        return None
    a, b = spans[-1]
    return text[a:b]


def unclosed_box(text: str, spans: list[tuple[int, int]]) -> int:
    """Index of a last `\\boxed{` that is never closed (after every complete box), else -1."""
    last = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if last < 0 or (spans and last < spans[-1][1]):
        return -1
    return last if not spans or last > spans[-1][0] else -1


def last_answer_tag(text: str) -> str | None:
    found = None
    for m in _ANSWER_TAG_RE.finditer(text):
        found = m.group(1)
    return found


def phrase_region(text: str) -> str | None:
    """What follows the last answer phrase, to the end of its line, without Minerva's sign-off
    ("I hope it is correct."): 'The final answer is $7.78$. I hope it is correct.' -> '$7.78$.'"""
    found = last_phrase(text)
    return found[1] if found else None


def last_phrase(text: str) -> tuple[int, str] | None:
    """(where the last answer phrase starts, its region) or None; see phrase_region."""
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is None:
        return None
    end = text.find("\n", last.end())
    region = text[last.end(): end if end >= 0 else len(text)]
    m = _SIGN_OFF_RE.search(region)
    if m:
        region = region[: m.start()]
    # markdown emphasis and quotes around the answer are not part of it: **42**, "42", \"42\"
    region = region.strip().strip("*").strip().replace('\\"', '"').strip('"').strip()
    return (last.start(), region) if region else None


def final_answer_phrase(text: str) -> str | None:
    """The answer after the last answer phrase: its first formula when it starts with one, else
    the rest of the sentence ('The answer is 42. Next...' -> '42')."""
    region = phrase_region(text)
    if region is None:
        return None
    spans = formula_spans(region)
    if spans and spans[0][0] == 0:
        a, b, inner_a, inner_b = spans[0]
        return region[a:b]
    cut = first_sentence_end(region)
    return region[:cut].rstrip(".").strip() or None


def first_sentence_end(s: str) -> int:
    """Index where the first sentence of `s` ends: a '.', '!' or '?' followed by whitespace or the
    end, outside any formula; a '.' between digits (3.5) does not end a sentence."""
    formulas = formula_spans(s)
    k = 0
    for i, ch in enumerate(s):
        while k < len(formulas) and formulas[k][1] <= i:
            k += 1
        if k < len(formulas) and formulas[k][0] <= i < formulas[k][1]:
            continue
        if ch in ".!?" and (i + 1 == len(s) or s[i + 1].isspace()):
            return i
    return len(s)


# --------------------------------------------------------------------------------- formulas
def formula_spans(text: str) -> list[tuple[int, int, int, int]]:
    """(start, end, inner start, inner end) of every formula, in order, in one left-to-right
    pass: `$$...$$`, `\\[...\\]`, `\\(...\\)` and `$...$`. Currency is told apart from inline
    math the way pandoc does it: a closing `$` is never followed by a digit, and when the opening
    `$` is followed by a digit the closing one must not follow a space, so "costs $10 and $20"
    holds no formula while "$ \\frac{1}{2} $" and "$10$" are formulas."""
    if "$" not in text and "\\(" not in text and "\\[" not in text:
        return []
    out = []
    i, n = 0, len(text)
    unclosed: set[str] = set()  # closers known to be absent from here on: keeps this linear
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "([":
            close = "\\)" if text[i + 1] == "(" else "\\]"
            j = -1 if close in unclosed else text.find(close, i + 2)
            if j < 0:
                unclosed.add(close)
                i += 2
                continue
            out.append((i, j + 2, i + 2, j))
            i = j + 2
        elif ch == "$" and (i == 0 or text[i - 1] != "\\"):
            if text.startswith("$$", i):
                j = -1 if "$$" in unclosed else text.find("$$", i + 2)
                if j < 0:
                    unclosed.add("$$")
                    i += 2
                    continue
                out.append((i, j + 2, i + 2, j))
                i = j + 2
                continue
            if i + 1 >= n:
                break
            money = text[i + 1].isdigit()
            j = i + 1
            found = -1
            while True:
                j = text.find("$", j)
                if j < 0 or text[j - 1] == "\\":
                    if j < 0:
                        break
                    j += 1
                    continue
                if not (money and text[j - 1].isspace()) and not (j + 1 < n and text[j + 1].isdigit()):
                    found = j
                break
            if found < 0:
                i += 1  # a currency sign, not a formula
                continue
            out.append((i, found + 1, i + 1, found))
            i = found + 1
        else:
            i += 1
    return out


def extract_answer(text: str) -> tuple[str | None, str]:
    """The last wrapped answer and how it was found: ('42', 'boxed'), or (None, 'none')."""
    for how, fn in (("boxed", last_boxed), ("answer_tag", last_answer_tag),
                    ("final_answer", final_answer_phrase)):
        found = fn(text)
        if found is not None:
            return found, how
    return None, "none"
