"""The algorithm's tensor maths: advantages, RLSD magnitude weights, policy and OPSD losses.

Data flow (shared/spec/algorithm.md, steps 1-7): verifier rewards -> `group_advantages` (one A
per response) -> teacher and student log-probs of the sampled tokens -> `rlsd_token_advantages`
(A_hat per token, sign from the verifier, magnitude from the teacher) -> `policy_loss` (clipped
surrogate). The baselines live here too: GRPO is `rlsd_token_advantages` with lam = 0 (or plain
A broadcast), OPSD is `opsd_loss` (full-vocabulary divergence) or `opsd_sampled_token_advantages`
fed to `policy_loss`, and GRPO+OPSD is `grpo_plus_opsd`.

Every function is pure torch: no model, no I/O, no global state. Shapes: B responses, T response
tokens (right-padded; `mask` is 1 on real response tokens), V vocabulary entries. Log-probs and
logits may come in any float dtype; the maths runs in float32 (float64 if given float64) so bf16
inputs do not lose the small differences delta is made of. Wrong shapes or options out of range
raise ValueError naming the argument.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

AGGREGATIONS = ("token-mean", "seq-mean-token-mean")
DIVERGENCES = ("jsd", "reverse_kl", "forward_kl")

# delta is clamped before exp so that w (and the diagnostics' mean w) never overflows, even for
# masked garbage or a teacher that gives a token probability 0 (log-prob -inf).
DELTA_CLAMP = 20.0
# Same reason for the policy ratio: exp(log pi - log pi_old) of a stale or broken log-prob.
LOG_RATIO_CLAMP = 20.0


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------

def _work_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_2d(name: str, t: Tensor, shape: Optional[torch.Size] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, T], got shape {tuple(t.shape)}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} (the shape of mask)")


def _as_mask(name: str, mask: Tensor, shape: Optional[torch.Size] = None) -> Tensor:
    _check_2d(name, mask, shape)
    if mask.dtype == torch.bool:
        return mask
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{name} must hold only 0 and 1 (or be a bool tensor)")
    return mask.bool()


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return float(value)


def _check_agg(agg: str) -> None:
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")


def _per_row(name: str, value, rows: int, lo: float, hi: float, *, hi_open: bool = False) -> Tensor:
    """A scalar or a [B] tensor as a float64 [B] tensor, every entry checked to lie in range.

    Float64 so that 1 - lam and 1 +- eps_w round to the working dtype exactly as the same Python
    float would: a per-row schedule then gives bit-identical results to a scalar one."""
    if isinstance(value, Tensor):
        if value.dim() != 1 or value.shape[0] != rows:
            raise ValueError(f"{name} must be a number or a 1-D tensor [B] with B={rows}, got shape "
                             f"{tuple(value.shape)}")
        v = value.detach().to(torch.float64).cpu()
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} must be finite")
        bad = (v < lo) | ((v >= hi) if hi_open else (v > hi))
        if bad.any():
            rb = ")" if hi_open else "]"
            raise ValueError(f"{name} must be in [{lo}, {hi}{rb}, got {float(v[bad][0])!r}")
        return v
    return torch.full((rows,), _check_range(name, value, lo, hi, hi_open=hi_open), dtype=torch.float64)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` [B, T] over positions where `mask` [B, T] is on; 0 for an empty mask."""
    mask = mask.bool()
    # where, not multiply: a masked-off inf or NaN must not leak into the mean (inf * 0 = NaN).
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / mask.sum().clamp(min=1).to(values.dtype)


def aggregate(per_token: Tensor, mask: Tensor, *, agg: str = "token-mean",
              denominator: Optional[float] = None) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    token-mean: sum over masked tokens / number of masked tokens (the release's default).
    seq-mean-token-mean: each sequence's token mean, then the mean over sequences that have at
      least one masked token (the paper's equation).
    denominator: when a batch is split into micro-batches for gradient accumulation, pass the
      whole batch's token count (token-mean) or sequence count (seq-mean-token-mean) so that the
      summed micro-batch losses equal the full-batch loss.
    Masked positions never contribute, even if they hold inf or NaN.
    """
    _check_agg(agg)
    mask = mask.bool()
    zeroed = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    m = mask.to(per_token.dtype)
    if agg == "token-mean":
        total = zeroed.sum()
        denom = m.sum().clamp(min=1.0) if denominator is None else denominator
        return total / denom
    lengths = m.sum(dim=1)  # [B]
    seq_means = zeroed.sum(dim=1) / lengths.clamp(min=1.0)  # [B]
    has_tokens = (lengths > 0).to(per_token.dtype)
    denom = has_tokens.sum().clamp(min=1.0) if denominator is None else denominator
    return (seq_means * has_tokens).sum() / denom


# ---------------------------------------------------------------------------------------------
# step 1: group advantages
# ---------------------------------------------------------------------------------------------

def group_advantages(rewards: Tensor, group_size: int, *, normalize_std: bool = True,
                     eps: float = 1e-6) -> Tensor:
    """GRPO group-relative advantages, one per response.

    rewards: [B] with B = n_groups * group_size, groups contiguous (responses 0..G-1 answer
      prompt 0, G..2G-1 prompt 1, ...).
    Returns A: [B], A(i) = (R(i) - mean_G(R)) / (std_G(R) + eps) with the unbiased std (as in the
      release); with normalize_std=False (Dr.GRPO) A(i) = R(i) - mean_G(R).
    A group whose rewards are all equal (or a group of one response) gets exactly 0: it carries
    no preference, and float rounding of the mean must not invent a tiny one.
    """
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}")
    _check_range("eps", eps, 0.0, math.inf)
    r = rewards.to(_work_dtype(rewards))
    if not torch.isfinite(r).all():
        raise ValueError("rewards must be finite (a NaN/inf reward would poison its whole group)")
    grouped = r.view(-1, group_size)  # [n_groups, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    constant = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # [n_groups, 1]
    if normalize_std and group_size > 1:
        std = grouped.std(dim=1, unbiased=True, keepdim=True)
        adv = centred / (std + eps)
    else:
        adv = centred
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(-1)


def zero_variance_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (they carry no gradient); rewards [B] as in
    `group_advantages`. A logged metric: near 1 means the tasks are too easy or too hard."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        raise ValueError("rewards must be a 1-D tensor [B]")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size or rewards.numel() == 0:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a positive multiple of group_size={group_size}")
    grouped = rewards.view(-1, group_size)
    return float((grouped == grouped[:, :1]).all(dim=1).float().mean())


def masked_group_advantages(rewards: Tensor, masked: Tensor, group_size: int, *,
                            normalize_std: bool = True) -> tuple[Tensor, Tensor]:
    """Group advantages when some samples must not count (infrastructure faults: a crashed
    verifier, a sandbox failure, a bad gold). Returns (advantages [B], filled rewards [B]).

    rewards: [B] (any value at masked positions); masked: [B] bool; groups as in
    `group_advantages`. A masked sample takes its group's mean reward over the unmasked ones (0
    when the whole group is masked): it then moves neither the group's mean nor the sign of the
    others' advantages. Its own advantage is set to 0 (and the loop also masks its tokens).
    The filled rewards are what `zero_variance_fraction` should be computed on.
    """
    if not isinstance(masked, Tensor) or masked.shape != rewards.shape:
        raise ValueError(f"masked must be a bool tensor shaped like rewards {tuple(rewards.shape)}")
    masked = masked.bool()
    grouped = rewards.reshape(-1, group_size).clone()
    bad = masked.reshape(-1, group_size)
    for g in range(grouped.shape[0]):
        if bad[g].any():
            ok = ~bad[g]
            grouped[g, bad[g]] = grouped[g, ok].mean() if ok.any() else 0.0
    filled = grouped.reshape(-1)
    adv = group_advantages(filled, group_size, normalize_std=normalize_std)
    return adv.masked_fill(masked, 0.0), filled


# ---------------------------------------------------------------------------------------------
# steps 3-6: RLSD token advantages
# ---------------------------------------------------------------------------------------------

def _delta(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """delta_t = stopgrad(log P_T - log P_S) clamped to [-20, 20]; 0 where mask is off. [B, T]"""
    with torch.no_grad():
        d = teacher_logprobs.detach().to(dtype) - student_logprobs.detach().to(dtype)
        if torch.isnan(d[mask]).any():
            raise ValueError("teacher_logprobs - student_logprobs is NaN at a position where mask is 1 "
                             "(NaN log-probs, or both -inf)")
        d = torch.where(mask, d, torch.zeros((), dtype=dtype, device=d.device))
        return d.clamp(-DELTA_CLAMP, DELTA_CLAMP)


def _check_rlsd_inputs(advantages: Tensor, teacher_logprobs: Optional[Tensor], student_logprobs: Tensor,
                       mask: Tensor) -> Tensor:
    if not isinstance(advantages, Tensor) or advantages.dim() != 1:
        raise ValueError("advantages must be a 1-D tensor [B] (one advantage per response), got "
                         f"{tuple(advantages.shape) if isinstance(advantages, Tensor) else type(advantages).__name__}")
    mask_b = _as_mask("mask", mask)
    if mask_b.shape[0] != advantages.shape[0]:
        raise ValueError(f"advantages has {advantages.shape[0]} entries but mask has {mask_b.shape[0]} rows")
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages must be finite")
    _check_2d("student_logprobs", student_logprobs, mask_b.shape)
    if teacher_logprobs is not None:
        _check_2d("teacher_logprobs", teacher_logprobs, mask_b.shape)
    return mask_b


def rlsd_token_advantages(advantages: Tensor, teacher_logprobs: Optional[Tensor], student_logprobs: Tensor,
                          mask: Tensor, *, lam: float | Tensor, eps_w: float | Tensor,
                          negative_only: bool = False, token_mask: Optional[Tensor] = None) -> Tensor:
    """RLSD per-token advantages A_hat (spec steps 3-6). Detached; zeros where mask is 0.

    advantages: [B], one A per response (from `group_advantages`).
    teacher_logprobs, student_logprobs: [B, T], log-probs of the sampled tokens under the teacher
      (privileged prompt) and under the student at rollout time (old log-probs).
      teacher_logprobs may be None only when lam == 0 (the loop skipped the teacher forward).
    mask: [B, T], 1 on response tokens.
    lam: in [0, 1]. eps_w: in [0, 1) (so the clipped weight stays > 0 and the sign never flips).
      Each a number, or a [B] tensor giving every response its own (a mixed suite whose tasks
      follow different schedulers).
    negative_only: reweight only responses with A < 0 (others keep plain A).
    token_mask: [B, T] or None; reweight only where it is 1 (e.g. the <think> span, the release's
      thought_only), plain A elsewhere.

        delta_t = clamp(stopgrad(log P_T - log P_S), -20, 20)
        w_t     = clip(exp(sign(A) * delta_t), 1 - eps_w, 1 + eps_w)
        A_hat_t = A * ((1 - lam) + lam * w_t)

    Returns A_hat: [B, T]. Where lam == 0 it is A broadcast, bit for bit.
    """
    mask_b = _check_rlsd_inputs(advantages, teacher_logprobs, student_logprobs, mask)
    rows = mask_b.shape[0]
    lam64 = _per_row("lam", lam, rows, 0.0, 1.0)  # [B]
    eps64 = _per_row("eps_w", eps_w, rows, 0.0, 1.0, hi_open=True)  # [B]
    dtype = _work_dtype(advantages, student_logprobs, teacher_logprobs)
    device = student_logprobs.device
    zero = torch.zeros((), dtype=dtype, device=device)
    adv = advantages.detach().to(dtype).to(device)[:, None].expand(mask_b.shape)  # [B, T]
    if not lam64.any():
        return torch.where(mask_b, adv, zero)
    if teacher_logprobs is None:
        raise ValueError("teacher_logprobs is None but lam > 0: the teacher forward is needed")
    col = lambda v: v.to(dtype).to(device)[:, None]  # noqa: E731 - [B] float64 -> [B, 1]
    delta = _delta(teacher_logprobs, student_logprobs, mask_b, dtype)  # [B, T]
    sign = torch.sign(adv)
    w = torch.exp(sign * delta).clamp(col(1.0 - eps64), col(1.0 + eps64))  # in [1-eps_w, 1+eps_w]
    reweight = mask_b.clone()
    if negative_only:
        reweight &= adv < 0
    if token_mask is not None:
        reweight &= _as_mask("token_mask", token_mask, mask_b.shape).to(reweight.device)
    w = torch.where(reweight, w, torch.ones((), dtype=dtype, device=w.device))
    a_hat = adv * (col(1.0 - lam64) + col(lam64) * w)
    return torch.where(mask_b, a_hat, zero).detach()


def rlsd_diagnostics(advantages: Tensor, teacher_logprobs: Optional[Tensor], student_logprobs: Tensor,
                     mask: Tensor, token_advantages: Tensor, *, eps_w: float | Tensor) -> dict[str, float]:
    """The spec's per-step RLSD statistics, all means over tokens where mask is 1.

    delta_mean        mean delta_t (clamped, as used)
    delta_abs_mean    mean |delta_t| (the teacher-student gap; drives the `adaptive` scheduler)
    w_mean            mean w_t = exp(sign(A) * delta_t) before the clip
    clip_low_frac     fraction of tokens with w_t < 1 - eps_w (each row's own eps_w when a [B]
                      tensor is given)
    clip_high_frac    fraction of tokens with w_t > 1 + eps_w
    clip_frac         their sum (the paper reports 3-6%)
    adv_hat_mean      mean A_hat_t
    adv_hat_abs_mean  mean |A_hat_t|
    With teacher_logprobs None (lam was 0, no teacher forward) only the adv_hat keys are present.
    Shapes as in `rlsd_token_advantages`; token_advantages is its output [B, T].
    """
    mask_b = _check_rlsd_inputs(advantages, teacher_logprobs, student_logprobs, mask)
    eps64 = _per_row("eps_w", eps_w, mask_b.shape[0], 0.0, 1.0, hi_open=True)
    _check_2d("token_advantages", token_advantages, mask_b.shape)
    with torch.no_grad():
        a_hat = token_advantages.detach().to(_work_dtype(token_advantages))
        out = {
            "adv_hat_mean": float(masked_mean(a_hat, mask_b)),
            "adv_hat_abs_mean": float(masked_mean(a_hat.abs(), mask_b)),
        }
        if teacher_logprobs is None:
            return out
        dtype = _work_dtype(advantages, student_logprobs, teacher_logprobs)
        delta = _delta(teacher_logprobs, student_logprobs, mask_b, dtype)
        sign = torch.sign(advantages.detach().to(dtype).to(delta.device))[:, None]
        w = torch.exp(sign * delta)  # [B, T], bounded by e^20 thanks to the clamp
        lo = (1.0 - eps64).to(dtype).to(w.device)[:, None]
        hi = (1.0 + eps64).to(dtype).to(w.device)[:, None]
        low = (w < lo).to(dtype)
        high = (w > hi).to(dtype)
        out.update({
            "delta_mean": float(masked_mean(delta, mask_b)),
            "delta_abs_mean": float(masked_mean(delta.abs(), mask_b)),
            "w_mean": float(masked_mean(w, mask_b)),
            "clip_low_frac": float(masked_mean(low, mask_b)),
            "clip_high_frac": float(masked_mean(high, mask_b)),
        })
        out["clip_frac"] = out["clip_low_frac"] + out["clip_high_frac"]
        return out


# ---------------------------------------------------------------------------------------------
# step 7: the clipped policy surrogate
# ---------------------------------------------------------------------------------------------

def policy_loss(logprobs: Tensor, old_logprobs: Tensor, token_advantages: Tensor, mask: Tensor, *,
                eps_low: float = 0.2, eps_high: float = 0.28, dual_clip: Optional[float] = 3.0,
                agg: str = "token-mean", denominator: Optional[float] = None) -> tuple[Tensor, dict[str, float]]:
    """PPO/GRPO clipped surrogate with per-token advantages (A_hat for RLSD, A for GRPO).

    logprobs: [B, T] current policy log-probs of the sampled tokens (carries the gradient).
    old_logprobs: [B, T] rollout-time log-probs (no gradient). token_advantages, mask: [B, T].

        rho_t  = exp(clamp(logprobs - old_logprobs, -20, 20))
        l_t    = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))
        l_t    = min(l_t, -C * A_t)  where A_t < 0 (dual clip; dual_clip=None disables it)
        loss   = aggregate(l_t, mask, agg)      ("token-mean" | "seq-mean-token-mean")

    Returns (loss scalar, stats) with stats (floats, means over masked tokens):
      pg_loss, pg_clipfrac (the clipped branch is active), pg_clipfrac_dual (dual clip active),
      ratio_mean, ratio_max, ratio_low_frac (rho < 1 - eps_low), ratio_high_frac
      (rho > 1 + eps_high), approx_kl (k3 estimate of KL(old || new): mean of rho - 1 - log rho).
    """
    mask_b = _as_mask("mask", mask)
    _check_2d("logprobs", logprobs, mask_b.shape)
    _check_2d("old_logprobs", old_logprobs, mask_b.shape)
    _check_2d("token_advantages", token_advantages, mask_b.shape)
    eps_low = _check_range("eps_low", eps_low, 0.0, 1.0, hi_open=True)
    eps_high = _check_range("eps_high", eps_high, 0.0, math.inf)
    if dual_clip is not None:
        dual_clip = _check_range("dual_clip", dual_clip, 1.0, math.inf, lo_open=True)
    _check_agg(agg)
    dtype = _work_dtype(logprobs, old_logprobs, token_advantages)
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    adv = torch.where(mask_b, token_advantages.detach().to(dtype), zero)
    # Masked positions are zeroed before exp so padding garbage can't make inf * 0 = NaN.
    log_ratio = torch.where(mask_b, logprobs.to(dtype) - old_logprobs.detach().to(dtype), zero)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)  # [B, T]
    dual_active = torch.zeros_like(mask_b)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (per_token > cap) & mask_b
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)
    loss = aggregate(per_token, mask_b, agg=agg, denominator=denominator)
    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "pg_loss": float(loss.detach()),
            "pg_clipfrac": float(masked_mean((clipped > unclipped).to(dtype), mask_b)),
            "pg_clipfrac_dual": float(masked_mean(dual_active.to(dtype), mask_b)),
            "ratio_mean": float(masked_mean(r, mask_b)),
            "ratio_max": float(torch.where(mask_b, r, zero).max()) if mask_b.any() else 1.0,
            "ratio_low_frac": float(masked_mean((r < 1.0 - eps_low).to(dtype), mask_b)),
            "ratio_high_frac": float(masked_mean((r > 1.0 + eps_high).to(dtype), mask_b)),
            "approx_kl": float(masked_mean(r - 1.0 - log_ratio.detach(), mask_b)),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------------
# OPSD baseline
# ---------------------------------------------------------------------------------------------

def token_divergence(student_logits: Tensor, teacher_logits: Tensor, *, divergence: str = "jsd",
                     beta: float = 0.5, temperature: float = 1.0) -> Tensor:
    """Per-token divergence between teacher and student next-token distributions. [B, T]

    student_logits, teacher_logits: [B, T, V] (or any [..., V]), aligned on the response tokens.
    The teacher is detached: gradient flows into the student only. With S = softmax(student/tau),
    P_T = softmax(teacher/tau):
      reverse_kl  KL(S || P_T) = sum_v S (log S - log P_T)
      forward_kl  KL(P_T || S) = sum_v P_T (log P_T - log S)
      jsd         beta * KL(P_T || M) + (1 - beta) * KL(S || M), M = beta * P_T + (1 - beta) * S,
                  beta in (0, 1) (generalized JSD; beta = 0.5 is the symmetric JSD of the OPSD
                  release; use forward_kl / reverse_kl for the limits).
    Useful on its own to process a long sequence in chunks (V is large).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits has shape {tuple(student_logits.shape)} but teacher_logits has "
                         f"{tuple(teacher_logits.shape)}; both must be [B, T, V] on the same vocabulary")
    temperature = _check_range("temperature", temperature, 0.0, math.inf, lo_open=True)
    dtype = _work_dtype(student_logits, teacher_logits)
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)

    def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
        # sum_v p (log p - log q); xlogy-style guard: p = 0 contributes 0 even if log q = -inf.
        p = log_p.exp()
        return torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=dtype, device=p.device)).sum(-1)

    if divergence == "reverse_kl":
        return kl(log_s, log_t)
    if divergence == "forward_kl":
        return kl(log_t, log_s)
    beta = _check_range("beta", beta, 0.0, 1.0, lo_open=True, hi_open=True)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
    return beta * kl(log_t, log_m) + (1.0 - beta) * kl(log_s, log_m)


def opsd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, divergence: str = "jsd",
              beta: float = 0.5, temperature: float = 1.0, agg: str = "token-mean",
              denominator: Optional[float] = None) -> tuple[Tensor, dict[str, float]]:
    """OPSD loss: `token_divergence` [B, T] aggregated over mask [B, T] (see `aggregate`).

    student_logits, teacher_logits: [B, T, V] at the response positions (logit t predicts
    response token t). No reward is used. Returns (loss, stats) with stats opsd_loss,
    opsd_div_mean (token mean of the divergence) and opsd_top1_agree (fraction of tokens where
    teacher and student put their maximum on the same vocabulary entry).
    """
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be 3-D [B, T, V], got shape {tuple(student_logits.shape)}")
    mask_b = _as_mask("mask", mask, student_logits.shape[:2])
    _check_agg(agg)
    div = token_divergence(student_logits, teacher_logits, divergence=divergence, beta=beta,
                           temperature=temperature)  # [B, T]
    loss = aggregate(div, mask_b, agg=agg, denominator=denominator)
    with torch.no_grad():
        agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).to(div.dtype)
        stats = {
            "opsd_loss": float(loss.detach()),
            "opsd_div_mean": float(masked_mean(div.detach(), mask_b)),
            "opsd_top1_agree": float(masked_mean(agree, mask_b)),
        }
    return loss, stats


def opsd_sampled_token_advantages(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Sampled-token OPSD: per-token advantage stopgrad(log P_T - log P_S), clamped to +-20.

    All [B, T]; zeros where mask is 0; detached. Feed it to `policy_loss` in place of A_hat.
    """
    mask_b = _as_mask("mask", mask)
    _check_2d("teacher_logprobs", teacher_logprobs, mask_b.shape)
    _check_2d("student_logprobs", student_logprobs, mask_b.shape)
    return _delta(teacher_logprobs, student_logprobs, mask_b, _work_dtype(teacher_logprobs, student_logprobs))


def grpo_plus_opsd(pg_loss: Tensor, opsd: Tensor, *, opsd_coef: float = 1.0) -> Tensor:
    """GRPO+OPSD baseline: pg_loss + opsd_coef * opsd (both scalars)."""
    opsd_coef = _check_range("opsd_coef", opsd_coef, 0.0, math.inf)
    return pg_loss + opsd_coef * opsd


# ---------------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------------

def token_entropy(log_probs: Tensor) -> Tensor:
    """Entropy (nats) of each position's distribution, from its log-probs. [..., V] -> [...]

    A position whose probability underflows to 0 contributes 0 (never 0 * -inf = NaN)."""
    p = log_probs.exp()
    return -torch.where(p > 0, p * log_probs, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)
