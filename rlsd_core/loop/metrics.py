"""A step's metrics, collected from its records once the step is done (the only place metrics
are written). Keys (docs/training.md lists them all):

  reward_mean, reward/<task>, zero_var_frac, infra_masked, infra/<category>
  entropy, pi_old_from_rollout, response_length, truncated_frac, engine_logprob_gap
  lambda, eps_w (the run scheduler's), teacher_skipped
  delta_mean, delta_abs_mean, w_mean, clip_low_frac, clip_high_frac, clip_frac (None when the
      teacher forward was skipped), adv_hat_mean, adv_hat_abs_mean
  per task: accuracy/<task>, lambda/<task>, eps_w/<task>, verdict/<task>/<category>,
      cache_hit_rate/<task>, clip_low_frac/<task>, clip_high_frac/<task>, clip_frac/<task>,
      delta_abs_mean/<task>
  leakage_count, leakage_prompt_count
  the update's: loss, pg_loss, pg_clipfrac, ratio_*, approx_kl, grad_norm, optimizer_steps, ...
  teacher_synced, lr, time/<stage>_s (rollout, verify, pi_old, teacher, train, sync, step),
      memory/<stage>_gib (on a GPU)
"""

from __future__ import annotations

from typing import Any

import torch

from .. import algo
from ..leakage import leakage
from .batch import Credit, Rollout, StepBatch, Verified
from .run import Parts

RLSD_KEYS = ("delta_mean", "delta_abs_mean", "w_mean", "clip_low_frac", "clip_high_frac", "clip_frac")
TASK_RLSD_KEYS = ("clip_low_frac", "clip_high_frac", "clip_frac", "delta_abs_mean")


def diagnostics(credit: Credit, eps_w: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, float]:
    """The spec's RLSD statistics over all responses, or over `rows` (indices) only."""
    pick = (lambda t: t) if rows is None else (lambda t: None if t is None else t[rows])
    return algo.rlsd_diagnostics(pick(credit.advantages), pick(credit.teacher_logprobs),
                                 pick(credit.old_logprobs), pick(credit.mask),
                                 pick(credit.token_advantages), eps_w=pick(eps_w))


def rollout_metrics(parts: Parts, batch: StepBatch, out: Rollout, verified: Verified,
                    credit: Credit) -> dict[str, Any]:
    m: dict[str, Any] = {"infra_masked": int(verified.infra.sum())}
    for v in verified.verdicts:
        if v.is_infra:
            key = f"infra/{v.category.value}"
            m[key] = m.get(key, 0) + 1
    ok = ~verified.infra
    m["zero_var_frac"] = algo.zero_variance_fraction(credit.filled_rewards, batch.group_size)
    m["reward_mean"] = float(verified.rewards[ok].mean()) if ok.any() else None
    for task in parts.tasks:
        sel = torch.tensor([batch.tasks[batch.of_response(i)] is task and not v.is_infra
                            for i, v in enumerate(verified.verdicts)])
        m[f"reward/{task.name}"] = float(verified.rewards[sel].mean()) if sel.any() else None
    m["entropy"] = float(algo.masked_mean(credit.entropy, credit.mask))
    m["pi_old_from_rollout"] = int(credit.pi_old_source == "rollout")
    m["response_length"] = float(credit.response_mask.sum(1).float().mean())
    m["truncated_frac"] = sum(r == "length" for r in out.finish_reasons) / len(out.finish_reasons)
    m["engine_logprob_gap"] = engine_logprob_gap(out, credit)
    return m


def engine_logprob_gap(out: Rollout, credit: Credit) -> float | None:
    """Mean |engine log-prob - trainer's pi_old| over the sampled tokens: how far the rollout
    engine's numerics (vLLM, bf16, CUDA graphs) are from the trainer's forward on the same
    weights. Near 0 for the colocated HF engine; a gap that grows means off-policy samples.
    None when pi_old was taken from the rollout (scoring.pi_old): there is nothing to compare."""
    if credit.pi_old_source == "rollout":
        return None
    old = credit.old_logprobs.detach().float().cpu()
    mask = credit.response_mask.cpu()
    if not mask.any():
        return None
    engine = torch.zeros_like(old)
    for i, lp in enumerate(out.logprobs):
        n = min(len(lp), old.shape[1])
        engine[i, :n] = torch.tensor(lp[:n], dtype=torch.float32)
    return float(((engine - old).abs() * mask).sum() / mask.sum())


def task_metrics(parts: Parts, batch: StepBatch, verified: Verified, credit: Credit,
                 eps_w: torch.Tensor) -> tuple[dict[str, Any], dict[str, dict]]:
    """Per-task metrics, and each task's diagnostics (what a task's own scheduler reads)."""
    uses_lambda = parts.objective.teacher == "lambda"
    out: dict[str, Any] = {}
    per_task: dict[str, dict] = {}
    for task in parts.tasks:
        name = task.name
        idx = [i for i in range(len(verified.verdicts)) if batch.tasks[batch.of_response(i)] is task]
        mine = [verified.verdicts[i] for i in idx]
        valid = [v for v in mine if not v.is_infra]
        out[f"accuracy/{name}"] = (sum(v.category.value == "ok" for v in valid) / len(valid)
                                   if valid else None)
        mag = batch.task_magnitudes[name]
        out[f"lambda/{name}"] = mag.lam if uses_lambda else 0.0
        out[f"eps_w/{name}"] = mag.eps_w
        counts: dict[str, int] = {}
        for v in mine:
            counts[v.category.value] = counts.get(v.category.value, 0) + 1
        for category, n in sorted(counts.items()):
            out[f"verdict/{name}/{category}"] = n
        out[f"cache_hit_rate/{name}"] = float(parts.scorers[name].stats["cache_hit_rate"])
        if not idx:
            continue
        diag = diagnostics(credit, eps_w, torch.tensor(idx, dtype=torch.long))
        per_task[name] = diag
        for key in TASK_RLSD_KEYS:
            if diag.get(key) is not None:
                out[f"{key}/{name}"] = diag[key]
    return out, per_task


def leakage_count(batch: StepBatch, out: Rollout, credit: Credit) -> int:
    """Responses that mention or copy what only the teacher saw: the privileged text of their
    teacher prompt (rlsd_core.data.privileged_text: never the system prompt, the question or
    the chat template), counted even when the teacher forward was skipped."""
    return sum(bool(leakage(text, credit.privileged[i], batch.rows[batch.of_response(i)]["prompt"]))
               for i, text in enumerate(out.texts))


def leakage_prompt_count(parts: Parts, batch: StepBatch, credit: Credit) -> int:
    """Rows whose student prompt already holds what only the teacher should see (e.g. a task
    template that shows the hint): every response of such a row is trained on a leaked prompt.
    Injectors get a copy of the row, so they cannot cause it; this counts the other routes."""
    tok, G = parts.tokenizer, batch.group_size
    return sum(bool(credit.privileged[r * G]) and
               bool(leakage(tok.decode(prompt_ids, skip_special_tokens=True),
                            credit.privileged[r * G], row["prompt"]))
               for r, (row, prompt_ids) in enumerate(zip(batch.rows, batch.prompt_ids)))


def step_metrics(parts: Parts, batch: StepBatch, out: Rollout, verified: Verified, credit: Credit,
                 train_stats: dict, synced: bool, times: dict[str, float],
                 peaks: dict[str, float] | None = None) -> tuple[dict, dict]:
    """(the step's metrics, each task's diagnostics)."""
    eps_w = batch.eps_w.repeat_interleave(batch.group_size)
    uses_lambda = parts.objective.teacher == "lambda"
    m: dict[str, Any] = {"step": batch.step}
    m.update(rollout_metrics(parts, batch, out, verified, credit))
    m["teacher_skipped"] = 0 if batch.use_teacher else 1
    diag = diagnostics(credit, eps_w)
    m.update({"lambda": batch.run_magnitude.lam if uses_lambda else 0.0,
              "eps_w": batch.run_magnitude.eps_w})
    for key in RLSD_KEYS:
        m[key] = diag.get(key)  # None when the teacher forward was skipped
    m["adv_hat_mean"] = diag["adv_hat_mean"]
    m["adv_hat_abs_mean"] = diag["adv_hat_abs_mean"]
    per_task_metrics, per_task = task_metrics(parts, batch, verified, credit, eps_w)
    m.update(per_task_metrics)
    m["leakage_count"] = leakage_count(batch, out, credit)
    m["leakage_prompt_count"] = leakage_prompt_count(parts, batch, credit)
    m.update(train_stats)
    m["teacher_synced"] = int(synced)
    m["lr"] = parts.optimizer.param_groups[0]["lr"]
    m.update({f"time/{k}_s": v for k, v in times.items()})
    m.update({f"memory/{k}_gib": v for k, v in (peaks or {}).items()})
    return m, {"run": {**diag, **{k: v for k, v in m.items() if isinstance(v, (int, float))}},
               "tasks": per_task}
