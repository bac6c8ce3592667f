"""Held-out evaluation of a policy on tasks: greedy accuracy, and pass@k from sampled responses.

The one copy of the evaluation logic: the trainer's held-out accuracy (`loop.trainer.evaluate`, the
`eval/<task>` metrics) and `rlsd eval` both call `evaluate_task`, so evaluating a checkpoint
reproduces the number the run logged for it.

Data flow per task: held-out rows -> student chat prompt (`data.encode_prompt`, byte-identical
to training; with the pixel inputs of rows with images) -> engine.generate in chunks of `chunk` prompts (greedy; then, for pass@k, `samples`
responses per prompt at `temperature`, seeded) -> decoded text -> the task's verifier(s) ->
  accuracy   fraction of rows whose greedy response is judged `ok`
  pass@k     the unbiased estimator 1 - C(n-c, k) / C(n, k) per row (n samples, c of them ok),
             averaged over rows (Chen et al. 2021, the HumanEval paper)
Infrastructure faults (sandbox or verifier errors) are counted in `infra`, and count as not
solved: an evaluation must not silently shrink its denominator.

`greedy_pair` answers the same rows greedily from the student prompt and from the teacher's
privileged prompt: the greedy half of the teacher check (`teacher_check.py`) and the warm-up's
readiness check (`warmup.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from math import comb
from typing import Callable, Sequence

from ..data import TaskData, TeacherPrompts, encode_student_prompts
from ..engines import SamplingParams
from ..verdict import Category

CHUNK = 32  # prompts per generate call: progress granularity and bounded memory


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) is correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def judged_ok(verdicts) -> list[bool]:
    """Which verdicts are right (category `ok`): the one reading of "solved" for every count here."""
    return [v.category == Category.OK for v in verdicts]


def _generate(engine, tokenizer, rows: Sequence[dict], params: SamplingParams, chunk: int,
              on_chunk: Callable[[int], None] | None, vision=None) -> list[list[str]]:
    texts: list[list[str]] = []
    base = params
    for lo in range(0, len(rows), chunk):
        part = rows[lo:lo + chunk]
        prompt_ids, pixels = encode_student_prompts(tokenizer, part, vision)
        images = {} if pixels is None else {"vision": pixels}
        params = base
        if base.seed is not None:  # each chunk its own seed, a function of its first row
            params = dataclasses.replace(base, seed=base.seed + lo)
        for group in engine.generate(prompt_ids, params, **images):
            texts.append([tokenizer.decode(g.token_ids, skip_special_tokens=True) for g in group])
        if on_chunk is not None:
            on_chunk(len(part))
    return texts


def evaluate_task(engine, tokenizer, task: TaskData, verifier, *, max_new_tokens: int,
                  samples: int = 0, ks: Sequence[int] = (), temperature: float = 1.0,
                  seed: int = 0, chunk: int = CHUNK,
                  on_chunk: Callable[[int], None] | None = None, vision=None) -> dict:
    """{"accuracy", "n", "correct" (per held-out row, greedy), "infra", "pass@k"...} on
    task.eval (see the module doc); `vision`: the model's vision prompter when the rows have
    images."""
    rows = task.eval
    stop = (tokenizer.eos_token_id,)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=stop)
    texts = [t[0] for t in _generate(engine, tokenizer, rows, greedy, chunk, on_chunk, vision)]
    verdicts = verifier.score(texts, rows)
    correct = judged_ok(verdicts)
    out = {"accuracy": sum(correct) / len(rows), "n": len(rows), "correct": correct,
           "infra": sum(v.is_infra for v in verdicts)}
    if samples and ks:
        sampled = SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                                 stop_token_ids=stop, seed=seed)
        groups = _generate(engine, tokenizer, rows, sampled, chunk, on_chunk, vision)
        flat = verifier.score([t for g in groups for t in g], [r for r in rows for _ in range(samples)])
        correct = [sum(judged_ok(flat[i * samples:(i + 1) * samples]))
                   for i in range(len(rows))]
        out["infra"] += sum(v.is_infra for v in flat)
        for k in ks:
            out[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in correct) / len(rows)
    return out


def greedy_texts(engine, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                 vision: list | None = None, chunk: int = CHUNK) -> list[str]:
    """Greedy responses to encoded prompts (`vision`: their pixel inputs, one per prompt)."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                            stop_token_ids=(tokenizer.eos_token_id,))
    texts = []
    for lo in range(0, len(prompts), chunk):
        images = {} if vision is None else {"vision": vision[lo:lo + chunk]}
        for group in engine.generate(prompts[lo:lo + chunk], params, **images):
            texts.append(tokenizer.decode(group[0].token_ids, skip_special_tokens=True))
    return texts


@dataclass
class GreedyPair:
    """Greedy answers to the same rows from the student prompt and from the teacher prompt."""

    student_ok: list[bool]
    teacher_ok: list[bool]
    teacher_texts: list[str]
    hints: list[str]  # what only the teacher saw, per row

    @property
    def acc_student(self) -> float:
        return sum(self.student_ok) / max(1, len(self.student_ok))

    @property
    def acc_teacher(self) -> float:
        return sum(self.teacher_ok) / max(1, len(self.teacher_ok))


def greedy_pair(engine, tokenizer, prompts: TeacherPrompts, task_name: str, rows: Sequence[dict],
                scorer, max_new_tokens: int, vision=None) -> GreedyPair:
    """Greedy accuracy of `rows` with and without the privileged context: the greedy part of
    the teacher check, and the warm-up's readiness check. A group injector gets an empty group."""
    student, pixels = encode_student_prompts(tokenizer, rows, vision)
    pairs = [prompts.prompt(task_name, r) for r in rows]  # (ids, what only the teacher saw)

    s_texts = greedy_texts(engine, tokenizer, student, max_new_tokens, pixels)
    t_texts = greedy_texts(engine, tokenizer, [ids for ids, _ in pairs], max_new_tokens, pixels)
    return GreedyPair(student_ok=judged_ok(scorer.score(s_texts, rows)),
                      teacher_ok=judged_ok(scorer.score(t_texts, rows)), teacher_texts=t_texts,
                      hints=[hint for _, hint in pairs])
