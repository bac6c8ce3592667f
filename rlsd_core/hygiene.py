"""Input hygiene: what every completion goes through before any verifier parses it.

Part of the public contract (exported from `rlsd_core`): the runtime applies it before calling
any verifier, and a plugin author may call the same functions on text that reaches a verifier by
another way (e.g. scored in process, or a gold column). One documented policy
(docs/verifiers.md):
1. Non-str input is `invalid_input` (never an exception).
2. Length is capped keeping the *tail*: final answers sit at the end of a completion, so a 1 MB
   preamble must not hide them, and no parser ever sees more than the cap.
3. Unicode NFKC normalisation (full-width digits become ASCII digits, ligatures split), then
   zero-width characters and bidirectional controls are removed, and the Unicode minus sign
   U+2212 becomes '-'. Nothing else is changed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from .verdict import Category, Verdict

# Zero-width characters and bidi controls: invisible, yet they break token matching and can
# reorder what a human reads versus what a parser sees.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")
_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})

DEFAULT_MAX_CHARS = 20_000


def normalize_text(text: str) -> str:
    """NFKC, strip invisible/bidi characters, map minus-like dashes to '-'."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    return text.translate(_MINUS)


def keep_tail(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[-max_chars:]


def clean_completion(value: object, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, Verdict | None]:
    """Return (clean text, None) or (None, verdict) when the input cannot be scored at all."""
    if not isinstance(value, str):
        return None, Verdict.fail(Category.INVALID_INPUT,
                                  f"completion must be a str, got {type(value).__name__}")
    # Cap before normalising so that hostile sizes never reach unicodedata either; keep a little
    # slack because NFKC can change the length.
    text = normalize_text(keep_tail(value, max_chars + 64))
    return keep_tail(text, max_chars), None


def clean_tail(value: Any, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, Verdict | None]:
    """Input hygiene for answer-bearing text (the documented policy, docs/verifiers.md).

    Non-str -> invalid_input. Longer than `max_chars` -> keep the tail only (final answers sit
    at the end) and drop the partial token the cut went through (up to the first whitespace,
    backslash, '$' or '<'); a tail with no such boundary at all (1 MB of digits) cannot hold an
    answer that the cut did not damage -> input_too_large. Then
    `normalize_text`: NFKC, zero-width and bidi controls removed, minus-like
    dashes become '-'. Costs O(max_chars), whatever the input size.
    """
    if not isinstance(value, str):
        return None, Verdict.fail(Category.INVALID_INPUT,
                                  f"completion must be a str, got {type(value).__name__}")
    if len(value) <= max_chars:
        text = normalize_text(value)
        return keep_tail(text, max_chars), None
    tail = value[-max_chars:]
    cut = _first_boundary(tail)
    if cut < 0:
        return None, Verdict.fail(
            Category.INPUT_TOO_LARGE,
            f"completion is {len(value)} characters and its last {max_chars} hold no complete token")
    text = normalize_text(tail[cut:])
    return keep_tail(text, max_chars), None


def _first_boundary(text: str) -> int:
    """Where the first whole token of a cut text starts: just past the first whitespace, or at
    the first backslash, '$' or '<' (a LaTeX command, formula or tag begins there); -1 if none.
    C-speed scans, no allocation."""
    best = -1
    for ch in (" ", "\n", "\t", "\r"):
        i = text.find(ch)
        if i >= 0 and (best < 0 or i + 1 < best):
            best = i + 1
    for ch in ("\\", "$", "<"):
        i = text.find(ch, 1)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best
