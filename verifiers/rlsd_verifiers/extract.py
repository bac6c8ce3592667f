"""Final-answer extraction shared by the built-in verifiers.

Completions end with their answer wrapped one of a few ways: `\\boxed{...}` / `\\fbox{...}` (with
nested braces), `<answer>...</answer>` tags, or a phrase such as "the final answer is 42".
These helpers find the *last* such answer in linear time, never recursing, so that hostile
nesting cannot blow the stack.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# `[^\n]*` then strip(), not `(.+?)\s*(?:$|\n)`: the lazy form backtracks over long runs of
# spaces (quadratic time on hostile input); this one is linear and finds the same answers.
_FINAL_RE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)


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
    """(start, end) of the contents of every outermost balanced \\boxed{} / \\fbox{}, in order."""
    if "box" not in text:
        return []
    pairs = _closing_braces(text)
    spans: list[tuple[int, int]] = []
    for m in _BOX_RE.finditer(text):
        close = pairs.get(m.end() - 1)
        if close is None or (spans and m.start() < spans[-1][1]):
            continue  # unbalanced, or nested inside the previous box
        spans.append((m.end(), close))
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


def last_answer_tag(text: str) -> str | None:
    found = None
    for m in _ANSWER_TAG_RE.finditer(text):
        found = m.group(1)
    return found


def final_answer_phrase(text: str) -> str | None:
    found = None
    for m in _FINAL_RE.finditer(text):
        found = m.group(1)
    if found is not None:
        found = found.strip().rstrip(".").strip()
    return found or None


def extract_answer(text: str) -> tuple[str | None, str]:
    """The last wrapped answer and how it was found: ('42', 'boxed'), or (None, 'none')."""
    for how, fn in (("boxed", last_boxed), ("answer_tag", last_answer_tag),
                     ("final_answer", final_answer_phrase)):
        found = fn(text)
        if found is not None:
            return found, how
    return None, "none"
