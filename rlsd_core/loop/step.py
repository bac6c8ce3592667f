"""One training step: the stages in data-flow order (rlsd_core.loop.stages), then the metrics.

Where it departs from a textbook GRPO step:
1. The magnitudes are read before the rollout, so that whenever every lambda is 0 (plain GRPO,
   or the paper's schedule after its decay) the teacher forward is skipped entirely.
2. Samples whose verdict is an infrastructure fault (verifier crash, sandbox failure, bad gold)
   are not scored as 0: they are masked out of the loss and out of their group's statistics
   (algo.masked_group_advantages), counted per category and logged; when they exceed
   `faults.max_infra_fraction` of a task's samples for `faults.steps` steps in a row the run
   stops (rlsd_core.loop.faults).
3. The old log-probs (pi_old, and log P_S in RLSD's delta) are the training model's: taken from
   the rollout when the engine provably computed them with the trainer's weights, dtype and
   temperature (the colocated HF engine in fp32), else recomputed by a no-grad forward, as in
   the release (engines such as vLLM differ in numerics). See rlsd_core.loop.scoring.
4. The no-grad forwards (pi_old, teacher) run in chunks of scoring.micro_batch sequences, in the
   training forward's precision, each group's shared prompt computed once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from . import distributed, stages
from .metrics import step_metrics
from .run import Run
from .update import update


class StageTimer:
    """Wall-clock seconds per stage (`time/<stage>_s` metrics) and, on a GPU, the peak memory
    allocated by torch during each stage (`memory/<stage>_gib`)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.times: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.device = device if device is not None and device.type == "cuda" else None
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        if self.device is not None:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t0
            if self.device is not None:
                peak = torch.cuda.max_memory_allocated(self.device) / 2**30
                self.peaks[stage] = max(self.peaks.get(stage, 0.0), peak)

    def total(self) -> dict[str, float]:
        return {**self.times, "step": time.perf_counter() - self._start}


def train_step(run: Run, step: int) -> dict:
    """Run step `step` (counted from 1) and return its metrics. Under torchrun each rank runs it
    on its own rows of the step (rlsd_core.loop.distributed); the metrics read every rank's."""
    parts, timer = run.parts, StageTimer(run.parts.device)
    whole = stages.rows(parts, run.schedule, step)
    batch = distributed.local_rows(parts.world, whole)
    with timer("rollout"):
        out = stages.rollout(parts, batch)
    with timer("verify"):
        verified = stages.verify(parts, batch, out)
    samples = [{"task": batch.tasks[batch.of_response(i)].name,
                "prompt": batch.rows[batch.of_response(i)]["prompt"], "response": text,
                "reward": v.reward, "category": v.category.value, "message": v.message}
               for i, (text, v) in enumerate(zip(out.texts, verified.verdicts))]
    # Every rank's samples and verdicts in the step's global order: the observers see the whole
    # step, and every rank's fault guard the same verdicts, so that all ranks stop together.
    samples, everyone = distributed.gather_responses(parts.world, len(whole.rows),
                                                     whole.group_size, samples, verified)
    parts.events.after_rollout(step, samples)
    run.faults.observe(parts, whole, everyone)  # stops a run whose verifier keeps failing
    teacher_side = stages.teacher_prompts(parts, batch, out, verified)
    adv = stages.advantages(parts, batch, verified)
    with timer("pi_old"):
        credit = stages.pi_old(parts, out, verified, teacher_side, adv)
    with timer("teacher"):
        credit = stages.teacher(parts, batch, out, credit)
    credit = stages.magnitude(parts, batch, out, credit)
    with timer("train"):
        train_stats = update(parts, out, credit, step)
    with timer("sync"):
        synced = stages.sync(parts, step)
    # The metrics of the whole step: every rank's records in the global order.
    out, credit = distributed.gather_responses(parts.world, len(whole.rows), whole.group_size,
                                               out, credit)
    metrics, diagnostics = step_metrics(parts, whole, out, everyone, credit, train_stats, synced,
                                        timer.total(), timer.peaks)
    run.schedule.observe(diagnostics["run"], diagnostics["tasks"])
    return metrics
