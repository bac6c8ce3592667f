"""The typed records one training step passes from stage to stage, and the rows stage.

    StepBatch  rows of the step, their tasks, each row's lambda and eps_w, the student prompts
    Rollout    G sampled responses per row (token ids, text, finish reasons, engine log-probs)
    Verified   a verdict per response, rewards, the infrastructure-fault mask
    TeacherSide  the teacher prompt of each response and its privileged text
    Credit     group advantages, pi_old, the teacher's log-probs and the token advantages

Responses are laid out row-major: response i belongs to row i // G (G = group size), so a
group's responses are contiguous, which is what `rlsd_core.algo` expects.

Which rows a step trains on is a function of (seed, step) only, so a resumed run draws the same
rows: each task walks through its own seeded permutation of its training rows, epoch after
epoch, taking its share of the step's prompts (`task_counts`: by weight, largest remainder).
Each row of the step is sampled with a seed of its own, a function of (seed, step, its place in
the step's draw) (`rollout_seeds`): its responses do not depend on the other rows it is sampled
with, so a step split across data-parallel ranks (rlsd_core.loop.distributed) samples what one
process samples.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from ..data import TaskData
from ..records import Magnitude
from ..verdict import Verdict


@dataclass(frozen=True)
class StepBatch:
    """What a step trains on, decided before the rollout."""

    step: int
    tasks: list[TaskData]          # per row
    rows: list[dict]               # per row
    prompt_ids: list[list[int]]    # per row: the student prompt
    lam: torch.Tensor              # [R] float64, each row's lambda
    eps_w: torch.Tensor            # [R] float64
    run_magnitude: Magnitude       # the run scheduler's (reported as `lambda`, `eps_w`)
    task_magnitudes: dict[str, Magnitude]
    group_size: int
    use_teacher: bool              # the objective and the lambdas call for the teacher forward
    seeds: tuple[int, ...] = ()    # per row: its rollout seed (rollout_seeds)
    vision: list | None = None     # per row: its images' pixel inputs (VisionInputs or None);
                                   # None when no row has images (the text path)

    def of_response(self, i: int) -> int:
        """The row index of response i."""
        return i // self.group_size


@dataclass(frozen=True)
class Rollout:
    """The responses, one list entry per response (row-major, G per row)."""

    prompt_ids: list[list[int]]    # the row's student prompt (shared list per group)
    response_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]
    logprobs: list[list[float]]    # the engine's log-probs of each sampled token
    vision: list | None = None     # per response: its row's pixel inputs (shared per group);
                                   # the student, pi_old and teacher forwards all take them
    entropy: list[list[float]] | None = None  # the engine's entropy at each token, if it reports it


@dataclass(frozen=True)
class Verified:
    verdicts: list[Verdict]
    rewards: torch.Tensor          # [N] float32
    infra: torch.Tensor            # [N] bool: infrastructure faults, masked out of training


@dataclass(frozen=True)
class TeacherSide:
    """Per response: the teacher prompt and what only the teacher saw in it (for leakage)."""

    ids: list[list[int]]
    privileged: list[str]


@dataclass(frozen=True)
class Credit:
    """Everything the update needs besides the policy: advantages and the scoring forwards."""

    advantages: torch.Tensor       # [N] group advantages (0 for infra faults)
    filled_rewards: torch.Tensor   # [N] rewards with infra faults replaced (for zero_var_frac)
    mask: torch.Tensor             # [N, T] bool, response tokens that train
    response_mask: torch.Tensor    # [N, T] bool, every response token (lengths)
    old_logprobs: torch.Tensor     # [N, T] pi_old
    entropy: torch.Tensor          # [N, T]
    teacher_ids: list[list[int]]   # per response: the teacher prompt
    privileged: list[str]          # per response: the teacher prompt's privileged text
    pi_old_source: str = "recompute"  # "rollout" (the engine's numbers) or "recompute"
    teacher_logprobs: Any = None   # [N, T] or None (teacher forward skipped); full-vocabulary
                                   # teacher logits are never held for the batch: the update
                                   # computes them per micro-batch
    token_advantages: Any = None   # [N, T], filled by the magnitude stage


# --- the rows stage ----------------------------------------------------------------------------

def task_counts(tasks: list[TaskData], total: int) -> list[int]:
    """Split `total` prompts across tasks by weight (largest remainder; every task >= 1 if it can)."""
    weights = [t.weight for t in tasks]
    raw = [total * w / sum(weights) for w in weights]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(tasks)), key=lambda i: raw[i] - counts[i], reverse=True):
        if sum(counts) >= total:
            break
        counts[i] += 1
    return counts


@functools.lru_cache(maxsize=16)
def _epoch_order(seed: int, task_index: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}-{task_index}-{epoch}").shuffle(order)
    return tuple(order)


def draw_rows(tasks: list[TaskData], total: int, seed: int, step: int) -> list[tuple[TaskData, dict]]:
    """The (task, row) pairs of step `step`: each task walks through its own seeded permutation,
    epoch after epoch, `count` rows per step."""
    picked = []
    for t_index, (task, count) in enumerate(zip(tasks, task_counts(tasks, total))):
        n = len(task.train)
        for j in range((step - 1) * count, step * count):
            epoch, pos = divmod(j, n)
            picked.append((task, task.train[_epoch_order(seed, t_index, epoch, n)[pos]]))
    return picked


def rollout_seeds(seed: int, step: int, rows: int) -> tuple[int, ...]:
    """The rollout seed of each of a step's `rows` rows: a hash of (seed, step, row), 63 bits."""
    return tuple(int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{i}".encode(), digest_size=8)
                                .digest(), "little") >> 1 for i in range(rows))
