"""Leakage detector: does a student response show knowledge of context only the teacher saw?

Data flow: after the verifiers score a rollout, the loop counts the responses that leak
(`leakage_count`) and logs the count each step (the spec's "leakage count"). OPSD's known failure
is a student that starts citing a "reference solution" it never saw; RLSD should keep this near 0.

A response leaks when either
  - it mentions the privileged context: one of `LEAK_PHRASES` ("reference solution", "the hint
    says", ...), case-insensitive, that the prompt itself does not contain; or
  - it copies a word n-gram (default n = 8) of the privileged text that does not occur in the
    prompt. Short privileged texts (a gold answer "12") have no such n-gram: producing the right
    answer is not leakage.
Words are lower-cased runs of letters and digits, so spacing and punctuation do not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

# Specific phrases only: broad ones ("the reference", "the hint") would flag a physics answer
# about "the reference frame" or a prompt-given hint.
LEAK_PHRASES = (
    "reference solution", "reference answer", "provided solution", "given solution",
    "the hint says", "according to the hint", "the solution provided", "the solution says",
    "as the solution states", "privileged information", "the answer key", "i was given the answer",
    "the provided answer",
)
DEFAULT_N = 8

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Leak:
    """The verdict of `leakage`: truthy when the response leaks, with what gave it away."""

    leaked: bool
    phrase: Optional[str] = None   # the mention that matched, if any
    ngram: Optional[str] = None    # the copied n-gram of the privileged text, if any

    def __bool__(self) -> bool:
        return self.leaked


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.casefold())


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def leakage(response: str, privileged_text: str, prompt: str = "", *, n: int = DEFAULT_N,
            phrases: Iterable[str] = LEAK_PHRASES) -> Leak:
    """Whether `response` mentions or copies `privileged_text` beyond what `prompt` shows.

    response: the student's decoded response. privileged_text: what only the teacher saw (the
    hint, e.g. the gold answer or a worked solution). prompt: the student's prompt text.
    n: n-gram length in words (>= 1). phrases: the mentions to look for.
    """
    for name, value in (("response", response), ("privileged_text", privileged_text), ("prompt", prompt)):
        if not isinstance(value, str):
            raise TypeError(f"leakage: {name} must be a str, got {type(value).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"leakage: n must be a positive int, got {n!r}")
    resp_words = _words(response)
    resp_joined = " " + " ".join(resp_words) + " "
    prompt_joined = " " + " ".join(_words(prompt)) + " "
    for phrase in phrases:
        key = " " + " ".join(_words(phrase)) + " "
        if key.strip() and key in resp_joined and key not in prompt_joined:
            return Leak(True, phrase=phrase)
    priv = _ngrams(_words(privileged_text), n)
    if priv:
        copied = (_ngrams(resp_words, n) & priv) - _ngrams(_words(prompt), n)
        if copied:
            return Leak(True, ngram=" ".join(min(copied)))  # min: deterministic report
    return Leak(False)


def leakage_count(responses: Sequence[str], privileged_texts: Sequence[str], prompts: Sequence[str], *,
                  n: int = DEFAULT_N, phrases: Iterable[str] = LEAK_PHRASES) -> int:
    """How many responses leak (`leakage` applied pairwise; the three sequences align)."""
    if not len(responses) == len(privileged_texts) == len(prompts):
        raise ValueError(f"leakage_count: got {len(responses)} responses, {len(privileged_texts)} "
                         f"privileged texts and {len(prompts)} prompts; they must align")
    phrases = tuple(phrases)
    return sum(bool(leakage(r, p, q, n=n, phrases=phrases))
               for r, p, q in zip(responses, privileged_texts, prompts))
