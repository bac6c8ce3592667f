"""The update stage: PPO epochs x mini-batches x gradient-accumulation micro-batches of the
objective's loss, one optimizer step per mini-batch.

The loss of a mini-batch is one token-mean (or seq-mean) over all of it, however it is split
into micro-batches: each micro-batch's loss divides by the mini-batch's count (`denominator`),
so the accumulated gradient equals the one big batch's. Full-vocabulary OPSD asks the teacher
for its logits here, one micro-batch at a time (the teacher's weights do not move within a
step, except a "live" teacher, which is the policy as of that micro-batch). Summed losses (loss, pg_loss, opsd_loss)
are reported per mini-batch; ratios and fractions are averaged over micro-batches; everything
is then averaged over the step's optimizer steps.
"""

from __future__ import annotations

import math

import torch

from ..models import token_logprobs
from ..records import LossInputs
from .batch import Credit, Rollout
from .run import Parts
from .stages import autocast, scoring_forward

SUMMED = ("loss", "pg_loss", "opsd_loss")


def chunks(items: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(items) / parts)
    return [items[i:i + size] for i in range(0, len(items), size)] if items else []


def denominator(mask: torch.Tensor, agg: str) -> float:
    """What the mini-batch's aggregate divides by: its tokens, or its non-empty sequences."""
    count = float(mask.sum()) if agg == "token-mean" else float((mask.sum(1) > 0).sum())
    return max(count, 1.0)


def micro_loss(parts: Parts, out: Rollout, credit: Credit, micro: list[int], denom: float):
    """The objective's loss on one micro-batch (forward with gradient), and its stats. Full-
    vocabulary teacher logits (OPSD) are computed here, for this micro-batch only: the batch's
    [N, T, V] never exists."""
    cfg = parts.cfg
    responses = [out.response_ids[i] for i in micro]
    wants_logits = (credit.teacher_logprobs is not None
                    and parts.objective.needs_logits(cfg.algo.model_dump()))
    teacher_logits = None
    if wants_logits:
        teacher_logits = scoring_forward(parts, parts.teacher.score,
                                         [credit.teacher_ids[i] for i in micro], responses,
                                         return_logits=True).logits
    with autocast(parts):
        cur = token_logprobs(parts.model, [out.prompt_ids[i] for i in micro], responses,
                             temperature=cfg.rollout.temperature, micro_batch=len(micro),
                             pad_id=parts.tokenizer.pad_token_id, return_logits=wants_logits)
    T = cur.logprobs.shape[1]  # the micro-batch's longest response

    def cut(t):
        return None if t is None else t[micro][:, :T]

    return parts.objective.loss(LossInputs(
        logprobs=cur.logprobs, logits=cur.logits, old_logprobs=cut(credit.old_logprobs),
        token_advantages=cut(credit.token_advantages), mask=cut(credit.mask),
        teacher_logprobs=cut(credit.teacher_logprobs), teacher_logits=teacher_logits,
        options=cfg.algo.model_dump(), denominator=denom))


def update(parts: Parts, out: Rollout, credit: Credit, step: int) -> dict[str, float]:
    """Train on the rollout; returns the averaged loss statistics, grad_norm, optimizer_steps."""
    cfg = parts.cfg
    n = len(out.response_ids)
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    sums: dict[str, float] = {}
    updates = 0
    for _epoch in range(cfg.optim.ppo_epochs):
        order = torch.randperm(n, generator=gen).tolist() if cfg.optim.mini_batches > 1 else list(range(n))
        for mb in chunks(order, cfg.optim.mini_batches):
            denom = denominator(credit.mask[mb], cfg.algo.agg)
            stats_mb: dict[str, float] = {}
            micros = [m for m in chunks(mb, cfg.optim.grad_accum) if m]
            for micro in micros:
                loss, part = micro_loss(parts, out, credit, micro, denom)
                if loss.requires_grad:  # False only when every response is empty
                    loss.backward()
                for k, v in {**part, "loss": float(loss.detach())}.items():
                    stats_mb[k] = stats_mb.get(k, 0.0) + v
            for k, v in stats_mb.items():
                sums[k] = sums.get(k, 0.0) + (v if k in SUMMED else v / len(micros))
            grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.optim.grad_clip)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: v / updates for k, v in sums.items()} | {"optimizer_steps": updates}
