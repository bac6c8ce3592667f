"""Per-task pieces of a training step in a mixed suite: each task's magnitude (its own scheduler
or the run's), its RLSD token advantages, and its metrics.

In the data flow of `trainer.train_step`: `task_magnitudes` runs where the run's scheduler is read
(before the rollout, so the teacher forward is skipped only when every task's lambda is 0);
`token_advantages` replaces the single RLSD call when some task has its own scheduler (each
task's rows get its own lambda and eps_w; without per-task schedulers the trainer keeps its one
call); `metrics` runs after the step's diagnostics and adds, per task:
  accuracy/<task>           fraction of its valid samples judged `ok`
  lambda/<task>, eps_w/<task>
  clip_low_frac/<task>, clip_high_frac/<task>, clip_frac/<task>, delta_abs_mean/<task>
                            the RLSD statistics over its tokens only (absent without a teacher)
  verdict/<task>/<category> how many samples got each verifier category
  cache_hit_rate/<task>     its verifiers' reward-cache hit rate since the run (or resume) began
and returns each task's diagnostics, which its own (e.g. adaptive) scheduler reads next step.
"""

from __future__ import annotations

from typing import Any

import torch

from . import algo


def task_magnitudes(run, step: int, default: tuple[float, float]) -> dict[str, tuple[float, float]]:
    out = {}
    schedulers = getattr(run, "task_schedulers", None) or {}
    diagnostics = getattr(run, "task_diagnostics", None) or {}
    for task in run.tasks:
        sched = schedulers.get(task.name)
        if sched is None:
            out[task.name] = default
        else:
            mag = sched(step, diagnostics.get(task.name))
            out[task.name] = (float(mag.lam), float(mag.eps_w))
    return out


def _rows_of(samples, task) -> torch.Tensor:
    return torch.tensor([i for i, s in enumerate(samples) if s.task is task], dtype=torch.long)


def token_advantages(run, samples, mags, advantages, teacher_lp, old_lp, mask, *, use_teacher: bool,
                     negative_only: bool) -> torch.Tensor:
    out = torch.zeros_like(old_lp)
    for task in run.tasks:
        idx = _rows_of(samples, task)
        if len(idx) == 0:
            continue
        lam, eps_w = mags[task.name]
        out[idx] = algo.rlsd_token_advantages(
            advantages[idx], teacher_lp[idx] if teacher_lp is not None else None, old_lp[idx],
            mask[idx], lam=lam if use_teacher else 0.0, eps_w=eps_w, negative_only=negative_only)
    return out


def metrics(run, samples, mags, advantages, teacher_lp, old_lp, mask, token_adv, *,
            rlsd: bool) -> tuple[dict[str, Any], dict[str, dict]]:
    out: dict[str, Any] = {}
    diagnostics: dict[str, dict] = {}
    for task in run.tasks:
        name = task.name
        mine = [s for s in samples if s.task is task]
        valid = [s for s in mine if not s.verdict.is_infra]
        out[f"accuracy/{name}"] = (sum(s.verdict.category.value == "ok" for s in valid) / len(valid)
                                   if valid else None)
        lam, eps_w = mags[name]
        out[f"lambda/{name}"] = lam if rlsd else 0.0
        out[f"eps_w/{name}"] = eps_w
        counts: dict[str, int] = {}
        for s in mine:
            counts[s.verdict.category.value] = counts.get(s.verdict.category.value, 0) + 1
        for category, n in sorted(counts.items()):
            out[f"verdict/{name}/{category}"] = n
        stats = getattr(run.verifiers[name], "stats", None)
        if stats is not None:
            out[f"cache_hit_rate/{name}"] = float(stats["cache_hit_rate"])
        idx = _rows_of(samples, task)
        if len(idx) == 0:
            continue
        diag = algo.rlsd_diagnostics(
            advantages[idx], teacher_lp[idx] if teacher_lp is not None else None, old_lp[idx],
            mask[idx], token_adv[idx], eps_w=eps_w)
        diagnostics[name] = diag
        for key in ("clip_low_frac", "clip_high_frac", "clip_frac", "delta_abs_mean"):
            if diag.get(key) is not None:
                out[f"{key}/{name}"] = diag[key]
    return out, diagnostics
