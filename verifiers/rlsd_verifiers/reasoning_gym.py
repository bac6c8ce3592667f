"""The `reasoning_gym` verifier: each reasoning-gym dataset's own scorer (`score_answer`).

reasoning-gym's generators are puzzles, ciphers, graphs, games and arithmetic; each ships the
scorer that knows its answer format (a sorted list, a path on a grid, a board, an equation), so
rlsd delegates to it rather than to a generic math or string check. The `reasoning_gym` task
source uses this verifier by default.

Data flow: the runtime hands over clean text; the final answer is extracted (the last
`<answer>` tag, reasoning-gym's own convention, else the shared extraction: last \\boxed{},
"the final answer is ...", else the whole completion); the dataset's scorer is built once per
(dataset, config) in each worker process and called with the row as reasoning-gym's entry.

Rows (written by the `reasoning_gym` task source) carry `answer` (the gold, a string) and
`metadata`: the entry's metadata, whose `source_dataset` names the generator and whose
`rlsd_dataset_config` holds the generator's config (several scorers read their config, e.g.
decimal_arithmetic's precision, puzzle24's numbers).

Verdicts: reward = the scorer's score (partial credit as reasoning-gym defines it; with option
`binary: true`, 1 only for a full score); `ok` for 1.0, else `wrong_answer`. A scorer that
raises on the answer (prime_factorization's does on junk) is `parse_error`; a row without the
metadata, or a dataset reasoning-gym cannot build, is `gold_error` (not the model's fault).
Known quirks of reasoning-gym 0.1.25's scorers (measured, left as they are): several give
0.01-0.17 for any non-empty wrong answer, and game_of_life_halting scores some wrong answers 1.

reasoning-gym takes seconds to import, so this module does not import it: the record's `fn` is
a small callable whose unpickling imports it, which happens while a worker process starts
(minutes of allowance), not inside the first sample's deadline.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Mapping, Sequence

from rlsd_core import Category, Example, Verdict, VerifierRecord, hookimpl

from .extract import extract_answer, last_answer_tag

NAME = "reasoning_gym"
VERSION = "1.0"
CONFIG_KEY = "rlsd_dataset_config"
MAX_ANSWER_CHARS = 10_000


@functools.lru_cache(maxsize=64)
def _scorer(dataset: str, config_json: str):
    """The dataset's score_answer, built once per (dataset, config) in this process."""
    import reasoning_gym

    data = reasoning_gym.create_dataset(dataset, size=1, seed=0, **json.loads(config_json))
    return data.score_answer


def extract(text: str, how: str = "auto") -> str | None:
    if how == "none":
        return text.strip()
    tagged = last_answer_tag(text)
    if tagged is not None:
        return tagged.strip()
    found, _how = extract_answer(text)
    if found is None and how == "auto":
        return text.strip()
    return None if found is None else found.strip()


def score_one(completion: str, row: Mapping[str, Any], *, extract_mode: str = "auto",
              binary: bool = False) -> Verdict:
    meta = row.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("source_dataset"), str):
        return Verdict.fail(Category.GOLD_ERROR, "the row's metadata has no source_dataset: rows "
                            "must come from the reasoning_gym task source")
    dataset = meta["source_dataset"]
    try:
        config = json.dumps(dict(meta.get(CONFIG_KEY) or {}), sort_keys=True)
        scorer = _scorer(dataset, config)
    except Exception as exc:  # noqa: BLE001 - unknown dataset, bad config
        return Verdict.fail(Category.GOLD_ERROR, f"reasoning-gym cannot build {dataset!r}: "
                            f"{type(exc).__name__}: {exc}")
    answer = extract(completion, extract_mode)
    if not answer:
        return Verdict.fail(Category.NO_ANSWER, "no answer found")
    if len(answer) > MAX_ANSWER_CHARS:
        return Verdict.fail(Category.INPUT_TOO_LARGE,
                            f"answer is {len(answer)} characters (limit {MAX_ANSWER_CHARS})")
    entry = {"question": row.get("question", ""), "answer": row.get("answer"), "metadata": meta}
    try:
        score = scorer(answer, entry)
    except Exception as exc:  # noqa: BLE001 - some scorers raise on answers they cannot parse
        return Verdict.fail(Category.PARSE_ERROR, f"{dataset}'s scorer rejected the answer: "
                            f"{type(exc).__name__}: {str(exc)[:120]}", answer=answer[:200])
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return Verdict.fail(Category.VERIFIER_ERROR, f"{dataset}'s scorer returned {score!r}")
    score = min(1.0, max(0.0, float(score)))
    if score >= 1.0:
        return Verdict.ok(answer=answer[:200])
    shown = answer if len(answer) <= 60 else answer[:57] + "..."
    return Verdict.fail(Category.WRONG_ANSWER, f"{dataset}: scored {score:g} for {shown!r}",
                        answer=answer[:200], reward=0.0 if binary else score)


def score(completions: Sequence[str], rows: Sequence[Mapping[str, Any]], *,
          extract: str = "auto", binary: bool = False) -> list[Verdict]:
    if extract not in ("auto", "wrapped", "none"):
        raise ValueError(f"reasoning_gym: extract must be 'auto', 'wrapped' or 'none', got {extract!r}")
    return [score_one(c, r, extract_mode=extract, binary=binary) for c, r in zip(completions, rows)]


def _import_reasoning_gym() -> "_Score":
    import reasoning_gym  # noqa: F401 - the point: paid during the worker's start-up

    return SCORE


class _Score:
    """`score` as the record's fn. Pickled by reference to `_import_reasoning_gym`, so a worker
    that unpickles the record imports reasoning-gym while it starts."""

    def __call__(self, completions, rows, **options):
        return score(completions, rows, **options)

    def __reduce__(self):
        return (_import_reasoning_gym, ())


SCORE = _Score()

EXAMPLES = (
    Example(row={"answer": "9", "metadata": {"source_dataset": "basic_arithmetic"}},
            completion="4 + 5 = 9, so <answer>9</answer>", reward=1.0),
    Example(row={"answer": "9", "metadata": {"source_dataset": "basic_arithmetic"}},
            completion="<answer>8</answer>", reward=0.0),
    Example(row={"answer": "dlrow", "metadata": {"source_dataset": "spell_backward"}},
            completion="<answer>dlrow</answer>", reward=1.0),
)

RECORD = VerifierRecord(
    name=NAME, fn=SCORE, columns=("answer", "metadata"), optional_columns=("question",),
    version=VERSION,
    description="reasoning-gym's own scorer for the row's dataset (score_answer).",
    # The first sample of a dataset in each worker builds its scorer: up to ~6 s (arc_agi
    # loads its boards) on a loaded 2-core machine; scoring itself takes milliseconds.
    time_budget_s=20.0, examples=EXAMPLES)


@hookimpl
def rlsd_verifiers() -> list[VerifierRecord]:
    return [RECORD]
