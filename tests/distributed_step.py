"""One training step's update, run by tests/test_distributed.py with one process (plain python:
the single-process loop) and with two (torchrun, gloo): it writes the update's statistics and
the gradient of every optimizer step, full tensors, so that the two can be compared.

    python tests/distributed_step.py CONFIG OUT              # world size 1: samples, saves rollout
    torchrun --nproc-per-node 2 tests/distributed_step.py CONFIG OUT   # reads OUT/rollout.pt

Both train on the same global batch: the step's rows come from the seed, and the responses are
the ones the single process sampled (each rank takes its rows' responses from the file), so the
comparison isolates the update from sampling.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from rlsd_core.config import build_config
from rlsd_core.loop import distributed, setup, stages
from rlsd_core.loop.update import chunks, rank_sizes, update


class Recorder:
    """In place of the run's optimizer: records the (full) gradient of each mini-batch and leaves
    the weights alone, so every mini-batch's gradient is taken at the step's weights. (After an
    AdamW step they would not compare: its first steps normalise each component, so the float
    noise of a near-zero gradient component becomes a whole learning-rate step.)"""

    def __init__(self, optimizer, model) -> None:
        self.optimizer, self.model, self.grads = optimizer, model, []
        self.param_groups = optimizer.param_groups

    def step(self) -> None:
        self.grads.append({n: distributed.full(p.grad).detach().clone()
                           for n, p in self.model.named_parameters()})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


def main(config: str, out: str) -> None:
    out_dir = Path(out)
    cfg = build_config(config, [])
    run = setup(cfg, run_dir=out_dir / "run")
    parts, world = run.parts, run.parts.world
    whole = stages.rows(parts, run.schedule, 1)
    batch = distributed.local_rows(world, whole)
    saved = out_dir / "rollout.pt"
    if world.size == 1:
        rollout = stages.rollout(parts, batch)
        torch.save(rollout, saved)
    else:  # this rank's responses of the single process's rollout
        everything = torch.load(saved, weights_only=False)
        G = whole.group_size
        mine = [g * G + k for g in range(world.rank, len(whole.rows), world.size) for k in range(G)]
        rollout = dataclasses.replace(everything, **{
            f.name: [getattr(everything, f.name)[i] for i in mine]
            for f in dataclasses.fields(everything)
            if getattr(everything, f.name) is not None})  # optional columns (vision) stay None
    verified = stages.verify(parts, batch, rollout)
    teacher_side = stages.teacher_prompts(parts, batch, rollout, verified)
    credit = stages.pi_old(parts, rollout, verified, teacher_side,
                           stages.advantages(parts, batch, verified))
    credit = stages.teacher(parts, batch, rollout, credit)
    credit = stages.magnitude(parts, batch, rollout, credit)
    parts.optimizer = Recorder(parts.optimizer, parts.model)
    stats = update(parts, rollout, credit, 1)
    if world.is_main:
        torch.save({"stats": stats, "grads": parts.optimizer.grads, "teacher": batch.use_teacher,
                    "padded": padded_mini_batches(cfg, world.size, len(whole.rows))},
                   out_dir / f"result-{world.size}.pt")
    parts.close()
    distributed.stop(world)


def padded_mini_batches(cfg, size: int, rows: int) -> int:
    """How many mini-batches make some rank run masked-out micro-batches (the update's plan)."""
    n, G = rows * cfg.rollout.group_size, cfg.rollout.group_size
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + 1)
    world = distributed.World(size=size)
    padded = 0
    for _ in range(cfg.optim.ppo_epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for mb in chunks(order, cfg.optim.mini_batches):
            counts = {len([m for m in chunks(list(range(s)), cfg.optim.grad_accum) if m])
                      for s in rank_sizes(world, mb, G)}
            padded += len(counts) > 1
    return padded


if __name__ == "__main__":
    main(*sys.argv[1:3])
