"""Input hygiene applied to every completion before any verifier parses it.

One documented policy (docs/verifiers.md), applied in one place:
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
