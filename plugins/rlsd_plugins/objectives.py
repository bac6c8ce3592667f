"""Built-in training objectives, registered through the `rlsd_objectives` hook like any plugin's.

An objective is two functions over the step's tensors (see rlsd_core.records):
`credit(CreditInputs) -> token advantages [B, T]` (the magnitude stage) and
`loss(LossInputs) -> (loss, stats)` (each micro-batch of the update). The loop looks the
objective up once by `algo.loss` and never branches on its name.

  rlsd       credit A_hat = A * ((1 - lam) + lam * clip(exp(sign(A) * delta))): the verifier sets
             the sign, the teacher scales each token (with `algo.thought_only`, only the tokens
             of the reasoning span the loop passes as `token_mask`); the PPO clipped surrogate.
             The teacher forward runs only while some row's lambda > 0.
  grpo       credit A on every token; the same surrogate; no teacher.
  opsd       on-policy self-distillation: the full-vocabulary divergence to the teacher
             (`algo.opsd_divergence` jsd | reverse_kl | forward_kl), or with `sampled` the
             surrogate with per-token advantage log P_T - log P_S. No reward is used.
  grpo+opsd  the GRPO surrogate plus `algo.opsd_weight` times the OPSD term.
"""

from __future__ import annotations

from typing import Any, Mapping

from rlsd_core import CreditInputs, LossInputs, ObjectiveRecord, algo, hookimpl

VERSION = "1.0"


def _full_vocabulary(options: Mapping[str, Any]) -> bool:
    return options["opsd_divergence"] != "sampled"


# --- credit: per-token advantages -----------------------------------------------------------

def group_credit(b: CreditInputs):
    """A on every token of its response (GRPO)."""
    return algo.rlsd_token_advantages(b.advantages, None, b.old_logprobs, b.mask, lam=0.0,
                                      eps_w=b.eps_w)


def rlsd_credit(b: CreditInputs):
    lam = b.lam if b.teacher_logprobs is not None else 0.0
    return algo.rlsd_token_advantages(b.advantages, b.teacher_logprobs, b.old_logprobs, b.mask,
                                      lam=lam, eps_w=b.eps_w,
                                      negative_only=b.options["negative_only"],
                                      token_mask=b.token_mask)  # algo.thought_only's span


def opsd_credit(b: CreditInputs):
    if _full_vocabulary(b.options):
        return group_credit(b)  # not used by the divergence loss; kept for the diagnostics
    return algo.opsd_sampled_token_advantages(b.teacher_logprobs, b.old_logprobs, b.mask)


# --- losses ------------------------------------------------------------------------------------

def surrogate(b: LossInputs, token_advantages=None, **clip):
    """The PPO/GRPO clipped surrogate with the run's clip settings (or `clip` overrides)."""
    o = b.options
    settings = {"eps_low": o["eps_low"], "eps_high": o["eps_high"], "dual_clip": o["dual_clip"]}
    settings.update(clip)
    return algo.policy_loss(b.logprobs, b.old_logprobs,
                            b.token_advantages if token_advantages is None else token_advantages,
                            b.mask, agg=o["agg"], denominator=b.denominator, **settings)


def divergence(b: LossInputs):
    o = b.options
    return algo.opsd_loss(b.logits, b.teacher_logits, b.mask, divergence=o["opsd_divergence"],
                          beta=o["opsd_beta"], agg=o["agg"], denominator=b.denominator)


def opsd_loss(b: LossInputs):
    return divergence(b) if _full_vocabulary(b.options) else surrogate(b)


def grpo_plus_opsd_loss(b: LossInputs):
    pg, stats = surrogate(b)
    if _full_vocabulary(b.options):
        od, ostats = divergence(b)
    else:
        # The sampled-token OPSD term: the surrogate with advantage log P_T - log P_S, at the
        # default PPO clip (its own term, not the GRPO half's settings).
        sampled = algo.opsd_sampled_token_advantages(b.teacher_logprobs, b.old_logprobs, b.mask)
        od, ostats = algo.policy_loss(b.logprobs, b.old_logprobs, sampled, b.mask,
                                      agg=b.options["agg"], denominator=b.denominator)
        ostats = {"opsd_loss": ostats["pg_loss"]}
    return algo.grpo_plus_opsd(pg, od, opsd_coef=b.options["opsd_weight"]), {**stats, **ostats}


RECORDS = [
    ObjectiveRecord(name="rlsd", credit=rlsd_credit, loss=surrogate, teacher="lambda",
                    version=VERSION, description="RLSD: the verifier sets each update's sign, the "
                    "self-teacher scales each token's credit (clipped evidence ratio)."),
    ObjectiveRecord(name="grpo", credit=group_credit, loss=surrogate, teacher="never",
                    version=VERSION, description="GRPO: the group advantage on every token."),
    ObjectiveRecord(name="opsd", credit=opsd_credit, loss=opsd_loss, teacher="always",
                    needs_logits=_full_vocabulary, version=VERSION,
                    description="On-policy self-distillation toward the privileged teacher."),
    ObjectiveRecord(name="grpo+opsd", credit=group_credit, loss=grpo_plus_opsd_loss,
                    teacher="always", needs_logits=_full_vocabulary, version=VERSION,
                    description="GRPO plus opsd_weight x the OPSD term."),
]


@hookimpl
def rlsd_objectives() -> list[ObjectiveRecord]:
    return list(RECORDS)
