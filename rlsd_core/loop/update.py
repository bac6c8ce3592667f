"""The update stage: PPO epochs x mini-batches x gradient-accumulation micro-batches of the
objective's loss, one optimizer step per mini-batch.

The loss of a mini-batch is one token-mean (or seq-mean) over all of it, however it is split
into micro-batches: each micro-batch's loss divides by the mini-batch's count (`denominator`),
so the accumulated gradient equals the one big batch's. Full-vocabulary OPSD asks the teacher
for its logits here, one micro-batch at a time (the teacher's weights do not move within a
step, except a "live" teacher, which is the policy as of that micro-batch). Summed losses (loss, pg_loss, opsd_loss)
are reported per mini-batch; ratios and fractions are averaged over micro-batches; everything
is then averaged over the step's optimizer steps.

Under torchrun (rlsd_core.loop.distributed) the mini-batches are drawn over the step's global
responses exactly as one process draws them; each rank trains on its own responses of each,
its loss divided by the whole mini-batch's count (summed over ranks), and FSDP sums the
gradients: the update is the single-process one. Statistics are summed (losses), maxed
(`*_max`) or token-weighted (the rest) over every rank's micro-batches.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..models import token_logprobs
from ..records import LossInputs
from . import distributed
from .batch import Credit, Rollout
from .optim import lr_at, set_lr, stepped_params
from .run import Parts
from .stages import autocast, scoring_forward

SUMMED = ("loss", "pg_loss", "opsd_loss")


def chunks(items: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(items) / parts)
    return [items[i:i + size] for i in range(0, len(items), size)] if items else []


def count(mask: torch.Tensor, agg: str) -> float:
    """What an aggregate counts: tokens, or non-empty sequences."""
    return float(mask.sum()) if agg == "token-mean" else float((mask.sum(1) > 0).sum())


def denominator(mask: torch.Tensor, agg: str) -> float:
    """What the mini-batch's aggregate divides by: its tokens, or its non-empty sequences."""
    return max(count(mask, agg), 1.0)


def micro_loss(parts: Parts, out: Rollout, credit: Credit, micro: list[int], denom: float):
    """The objective's loss on one micro-batch (forward with gradient), and its stats. Full-
    vocabulary teacher logits (OPSD) are computed here, for this micro-batch only: the batch's
    [N, T, V] never exists."""
    cfg = parts.cfg
    responses = [out.response_ids[i] for i in micro]
    wants_logits = (credit.teacher_logprobs is not None
                    and parts.objective.needs_logits(cfg.algo.model_dump()))
    vision = None if out.vision is None else [out.vision[i] for i in micro]  # the rows' pixels
    teacher_logits = None
    if wants_logits:  # gathered (torchrun): ranks may split it in different numbers of chunks
        with distributed.unsharded(parts.world, parts.teacher.model):
            teacher_logits = scoring_forward(parts, parts.teacher.score,
                                             [credit.teacher_ids[i] for i in micro], responses,
                                             return_logits=True, vision=vision).logits
    with autocast(parts):
        cur = token_logprobs(parts.model, [out.prompt_ids[i] for i in micro], responses,
                             temperature=cfg.rollout.temperature, micro_batch=len(micro),
                             pad_id=parts.tokenizer.pad_token_id, return_logits=wants_logits,
                             vision=vision)
    T = cur.logprobs.shape[1]  # the micro-batch's longest response

    def cut(t):
        return None if t is None else t[micro][:, :T]

    return parts.objective.loss(LossInputs(
        logprobs=cur.logprobs, logits=cur.logits, old_logprobs=cut(credit.old_logprobs),
        token_advantages=cut(credit.token_advantages), mask=cut(credit.mask),
        teacher_logprobs=cut(credit.teacher_logprobs), teacher_logits=teacher_logits,
        options=cfg.algo.model_dump(), denominator=denom))


def mini_batch(parts: Parts, out: Rollout, credit: Credit, mb: list[int]) -> dict[str, float]:
    """Forward and backward over mini-batch `mb` in gradient-accumulation micro-batches; its
    loss statistics (summed losses, the rest averaged over micro-batches)."""
    cfg = parts.cfg
    denom = denominator(credit.mask[mb], cfg.algo.agg)
    stats_mb: dict[str, float] = {}
    micros = [m for m in chunks(mb, cfg.optim.grad_accum) if m]
    for micro in micros:
        loss, part = micro_loss(parts, out, credit, micro, denom)
        if loss.requires_grad:  # False only when every response is empty
            loss.backward()
        for k, v in {**part, "loss": float(loss.detach())}.items():
            stats_mb[k] = stats_mb.get(k, 0.0) + v
    return {k: (v if k in SUMMED else v / len(micros)) for k, v in stats_mb.items()}


def sharded_mini_batch(parts: Parts, out: Rollout, credit: Credit, mb: list[int]) -> dict[str, float]:
    """`mini_batch` over ranks: `mb` holds global response indices; this rank trains on its own,
    with the denominator counted over every rank. Every rank runs as many micro-batches (FSDP's
    collectives need every rank in every forward and backward): one with fewer responses runs
    masked-out ones, whose loss and gradient are exactly 0."""
    cfg, world = parts.cfg, parts.world
    G, accum = cfg.rollout.group_size, cfg.optim.grad_accum
    mine = world.local_responses(mb, G)
    denom = max(distributed.total(world, count(credit.mask[mine], cfg.algo.agg)), 1.0)
    micros = [m for m in chunks(mine, accum) if m]
    rounds = max(len([m for m in chunks(list(range(mb_size)), accum) if m])
                 for mb_size in rank_sizes(world, mb, G))
    blank = dataclasses.replace(credit, mask=torch.zeros_like(credit.mask))
    entries = []
    for r in range(rounds):
        real = r < len(micros)
        loss, part = micro_loss(parts, out, credit if real else blank, micros[r] if real else [0], denom)
        if not loss.requires_grad:
            raise RuntimeError("the objective's loss has no gradient (every response empty?): under "
                               "torchrun every rank must run the same backward passes")
        loss.backward()
        tokens = float(credit.mask[micros[r]].sum()) if real else 0.0
        entries.append(({**part, "loss": float(loss.detach())}, tokens))
    return reduce_stats(distributed.all_gather(world, entries))


def rank_sizes(world, mb: list[int], group: int) -> list[int]:
    """How many of the global responses `mb` each rank holds (known to every rank)."""
    sizes = [0] * world.size
    for i in mb:
        sizes[world.owner(i, group)] += 1
    return sizes


def reduce_stats(per_rank: list[list[tuple[dict, float]]]) -> dict[str, float]:
    """One mini-batch's statistics from every rank's (stats, tokens) micro-batches: SUMMED keys
    added, `*_max` keys maxed, the rest weighted by tokens (a masked mean over the whole
    mini-batch, as one process computes it when it takes the mini-batch in one micro-batch)."""
    entries = [e for rank in per_rank for e in rank]
    real = [e for e in entries if e[1] > 0] or entries
    tokens = sum(t for _, t in real)
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for stats, _ in entries for k in stats):
        if key in SUMMED:
            out[key] = sum(stats.get(key, 0.0) for stats, _ in entries)
            continue
        values = [(stats[key], t) for stats, t in real if key in stats]
        if key.endswith("_max"):
            out[key] = max(v for v, _ in values)
        elif tokens > 0:
            out[key] = sum(v * t for v, t in values) / tokens
        else:
            out[key] = sum(v for v, _ in values) / len(values)
    return out


def update(parts: Parts, out: Rollout, credit: Credit, step: int) -> dict[str, float]:
    """Train on the rollout; returns the averaged loss statistics, grad_norm, optimizer_steps."""
    cfg, world = parts.cfg, parts.world
    n = int(distributed.total(world, len(out.response_ids)))  # the step's responses, all ranks
    train = mini_batch if world.size == 1 else sharded_mini_batch
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    set_lr(parts.optimizer, lr_at(cfg.optim, step))
    sums: dict[str, float] = {}
    updates = 0
    for _epoch in range(cfg.optim.ppo_epochs):
        order = torch.randperm(n, generator=gen).tolist() if cfg.optim.mini_batches > 1 else list(range(n))
        for mb in chunks(order, cfg.optim.mini_batches):
            for k, v in train(parts, out, credit, mb).items():
                sums[k] = sums.get(k, 0.0) + v
            # The tensors the optimizer steps: the parameters, or their fp32 masters (bf16 weights).
            grad_norm = torch.nn.utils.clip_grad_norm_(stepped_params(parts.optimizer), cfg.optim.grad_clip)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: v / updates for k, v in sums.items()} | {"optimizer_steps": updates}
