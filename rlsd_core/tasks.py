"""The rows a run trains on: the built-in default suite, JSONL files and plugin task sources.

Data flow: config `tasks:` entries -> `load_task` -> a `TaskData` with a train split (sampled
each step) and a held-out split (greedy accuracy before/after training). A row is a dict with
at least `prompt` (what the student sees as the user message) and `answer` (the gold the
verifier checks and the default injector shows the teacher); built-in rows also carry
`target`, the response the supervised warm-up teaches.

Built-in tasks (the embedded default uses both):
  addition  "What is 47 + 5?" -> "47+5=\\boxed{52}"   scored by the `math` verifier
  reverse   "Reverse the letters: [c,a,t]" -> "t,a,c"   scored by `exact_match`
Both are sized for the embedded default: a 3.2 M-parameter model must get off the ground in a
warm-up of about a minute and a half on two CPU cores.

Generation is deterministic in (task options, seed): every distinct problem is enumerated (or
drawn without replacement), shuffled with `random.Random(seed)`, and the first `eval_size`
become the held-out split, so the two splits never share a problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import jsonl


class TaskError(ValueError):
    """A task cannot be built from its config (bad option, missing file, bad rows)."""


@dataclass
class TaskData:
    """One task's rows, split, with the plugins that score and teach it."""

    name: str
    train: list[dict]
    eval: list[dict]
    verifier: str
    injector: str
    verifier_options: dict = field(default_factory=dict)
    injector_options: dict = field(default_factory=dict)
    weight: float = 1.0


def student_messages(row: Mapping[str, Any]) -> list[dict]:
    """What the student sees: the messages a task template rendered for the row (`messages`,
    rlsd_core.suites), else the row's prompt as the one user message."""
    if row.get("messages"):
        return [dict(m) for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}]


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template messages into prompt ids with the assistant turn opened. The one copy: the
    warm-up, the rollout, the teacher and the evaluation all see byte-identical prompts."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


# --- built-in generators ------------------------------------------------------------------------

def addition_rows(*, digits: int = 2, second_digits: int = 1, seed: int = 0) -> list[dict]:
    """Every a + b with a `digits`-digit a and a `second_digits`-digit b (0 allowed), shuffled;
    answer in \\boxed{} (math verifier). The default (2-digit + 1-digit, 900 problems) is what
    the 3 M-parameter model learns in the warm-up budget; 2 + 2 digits takes it several times
    longer (a carry into the hundreds)."""
    for name, value in (("digits", digits), ("second_digits", second_digits)):
        if not isinstance(value, int) or not 1 <= value <= 3:
            raise TaskError(f"addition: {name} must be 1, 2 or 3, got {value!r}")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    pairs = list(product(range(low, 10 ** digits), range(0, 10 ** second_digits)))
    random.Random(seed).shuffle(pairs)
    # The target restates the sum before boxing its value: the digits of the answer are then
    # computed next to the operands they depend on (a short scratchpad), which a tiny model
    # learns in a few hundred steps; "\\boxed{52}" straight after the prompt takes far longer.
    return [{"id": f"add-{a}+{b}", "prompt": f"What is {a} + {b}?", "answer": str(a + b),
             "target": f"{a}+{b}=\\boxed{{{a + b}}}"} for a, b in pairs]


def reverse_rows(*, min_len: int = 3, max_len: int = 3, alphabet: str = "abcdefghijklmnop",
                 count: int = 4000, seed: int = 0) -> list[dict]:
    """Distinct random 'words' and their reversal (exact_match verifier), written as
    comma-separated letters in brackets, "[c,a,t]" -> "t,a,c": the byte-level tokenizer then
    gives one token per letter everywhere (spaced letters merge into tokens such as " a" for
    some letters and not others, which a tiny model cannot line up)."""
    if not 1 <= min_len <= max_len <= 12:
        raise TaskError(f"reverse: need 1 <= min_len <= max_len <= 12, got {min_len}, {max_len}")
    if len(set(alphabet)) < 2 or not alphabet.isalpha():
        raise TaskError(f"reverse: alphabet must be at least two letters, got {alphabet!r}")
    rng = random.Random(seed)
    space = sum(len(set(alphabet)) ** n for n in range(min_len, max_len + 1))
    count = min(count, space)
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    rows = []
    for word in words:
        backwards = ",".join(reversed(word))
        rows.append({"id": f"rev-{word}", "prompt": f"Reverse the letters: [{','.join(word)}]",
                     "answer": backwards, "target": backwards})
    return rows


# name -> (generator, default verifier, default injector)
BUILTIN: dict[str, tuple[Callable[..., list[dict]], str, str]] = {
    "addition": (addition_rows, "math", "reference_answer"),
    "reverse": (reverse_rows, "exact_match", "reference_answer"),
}


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows from a JSONL task file; each line an object with at least `prompt` and `answer`."""
    try:
        return jsonl.read_jsonl(path)
    except jsonl.JsonlError as exc:
        raise TaskError(f"task file: {exc}") from exc


def check_rows(name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Every row must be a mapping with a string prompt and the columns its plugins read."""
    if not rows:
        raise TaskError(f"task {name!r} has no rows")
    needed = {"prompt", *columns}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TaskError(f"task {name!r}: row {i} is a {type(row).__name__}, not a mapping")
        missing = sorted(needed - set(row))
        if missing:
            raise TaskError(f"task {name!r}: row {i} lacks column(s) {missing} "
                            f"(its verifier/injector need {sorted(needed)})")
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise TaskError(f"task {name!r}: row {i} has an empty or non-string prompt")


def split(rows: list[dict], *, train_size: int | None, eval_size: int, seed: int,
          shuffle: bool) -> tuple[list[dict], list[dict]]:
    """Held-out first, train after; disjoint by construction."""
    rows = list(rows)
    if shuffle:
        random.Random(seed).shuffle(rows)
    if eval_size >= len(rows):
        raise TaskError(f"eval_size {eval_size} leaves no training rows (the task has {len(rows)})")
    held, train = rows[:eval_size], rows[eval_size:]
    if train_size is not None:
        train = train[:train_size]
    return train, held


def load_task(cfg, registry, *, seed: int) -> TaskData:
    """Build one task from its config entry (`rlsd_core.config.TaskConfig`)."""
    source = cfg.source
    if cfg.path is not None:
        rows, verifier, injector, generated = read_jsonl(cfg.path), None, None, False
    elif source in BUILTIN:
        fn, verifier, injector = BUILTIN[source]
        try:
            rows = fn(seed=seed, **cfg.options)
        except TypeError as exc:
            raise TaskError(f"task {cfg.name!r}: bad option for built-in task {source!r}: {exc}") from exc
        generated = True
    else:
        record = registry.task_source(source)
        try:
            rows = [dict(r) for r in record.fn(**cfg.options)]
        except TypeError as exc:
            raise TaskError(f"task {cfg.name!r}: bad option for task source {source!r}: {exc}") from exc
        except TaskError as exc:  # e.g. a suite source's empty or unreadable data file
            raise TaskError(f"task {cfg.name!r}: {exc}") from exc
        verifier, injector, generated = record.verifier, record.injector, False
    if getattr(cfg, "columns", None) or getattr(cfg, "template", None):
        from .suites import shape_rows  # column mapping and chat template of a suite task
        rows = shape_rows(cfg, rows)
    verifier = cfg.verifier or verifier or "exact_match"
    injector = cfg.injector or injector or "reference_answer"
    columns = list(registry.verifier(verifier).columns) + list(registry.injector(injector).columns)
    check_rows(cfg.name, rows, columns)
    # Generated rows are already shuffled by their own seed; files and plugin rows are not.
    train, held = split(rows, train_size=cfg.train_size, eval_size=cfg.eval_size,
                        seed=seed, shuffle=not generated)
    return TaskData(name=cfg.name, train=train, eval=held, verifier=verifier, injector=injector,
                    verifier_options=dict(cfg.verifier_options),
                    injector_options=dict(cfg.injector_options), weight=cfg.weight)
