"""The scoring forwards' policy (config section `scoring`): where pi_old comes from, and how the
no-grad forwards are chunked and share their prompts.

In the data flow: after verify, the pi_old stage (stages.pi_old) and the teacher stage
(stages.teacher) score the sampled tokens without gradient, and full-vocabulary OPSD asks the
teacher for logits per micro-batch of the update (loop/update.py). All of them go through
`rlsd_core.models.token_logprobs` in chunks of `scoring.micro_batch` sequences, in the training
forward's precision (stages.autocast). This module holds the decisions, as plain functions of the
config and the run's objects, so that setup (loop/run.py) can check them before the first step.
"""

from __future__ import annotations

import torch

from ..config import ConfigError, TrainConfig
from ..engines import SamplingParams
from ..engines.hf import HFEngine

DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
                  "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob")
DROPOUT_MODULES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                   torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def dropout_active(model) -> bool:
    """Whether a forward in train mode can differ from one in eval mode (the engine samples in
    eval mode, the trainer scores in train mode)."""
    config = getattr(model, "config", None)
    rates = [getattr(config, name, 0.0) for name in DROPOUT_FIELDS]
    return (any(isinstance(r, (int, float)) and r > 0 for r in rates)
            or any(isinstance(m, DROPOUT_MODULES) and m.p > 0 for m in model.modules()))


def rollout_pi_old_refusal(cfg: TrainConfig, model, engine, autocast: bool) -> str | None:
    """Why the rollout engine's log-probs are not provably pi_old as the trainer would compute
    it (None: they are, and the pi_old forward is skipped). `engine` None: the engine that
    `make_engine` will build from the config.

    They are when every condition holds: the HF engine samples from the training model object
    itself (the very weights and dtype, before this step's update); no bf16 autocast (the
    trainer's forwards run under it, the engine's decode does not); no active dropout (train vs
    eval mode); the engine reports log_softmax(logits / rollout temperature), the trainer's
    formula; and, in "auto", one PPO epoch (the conservative setting the issue asked for: with
    more epochs "rollout" may still be forced). The two then differ only by float rounding
    (the engine's KV-cache decode against one full forward: about 1e-6 nats in fp32).
    """
    mode = cfg.scoring.pi_old
    if mode == "recompute":
        return "scoring.pi_old is 'recompute'"
    # Under torchrun the engine is wrapped (distributed.ShardedEngine: it samples from the
    # policy's gathered weights, the very ones the trainer's forward gathers).
    engine = getattr(engine, "engine", engine)
    colocated = (cfg.rollout.engine == "hf" if engine is None  # at setup: the one make_engine builds
                 else isinstance(engine, HFEngine) and engine.model is model)
    if not colocated:
        return (f"the rollout engine ({cfg.rollout.engine}) does not sample from the training "
                "model object itself")
    if autocast:
        return "bf16 autocast: the trainer's forwards run under it, the engine's decode does not"
    if dropout_active(model):
        return "the model has active dropout, so train-mode scores differ from the engine's"
    if SamplingParams(temperature=cfg.rollout.temperature).logprob_temperature != cfg.rollout.temperature:
        return "the engine reports log-probs at another temperature than the rollout's"
    if mode == "auto" and cfg.optim.ppo_epochs != 1:
        return "optim.ppo_epochs > 1 (set scoring.pi_old: rollout to take them anyway)"
    return None


def check(cfg: TrainConfig, model, autocast: bool) -> None:
    """At setup, before the engine starts: `scoring.pi_old: rollout` must be possible, else a
    ConfigError naming why."""
    if cfg.scoring.pi_old != "rollout":
        return
    why = rollout_pi_old_refusal(cfg, model, None, autocast)
    if why is not None:
        raise ConfigError(f"invalid config:\n  scoring.pi_old: 'rollout' needs the engine's "
                          f"log-probs to be the trainer's, but {why}; use 'auto' (recompute "
                          "when they are not) or 'recompute'")


def share_prefix(cfg: TrainConfig) -> bool | str:
    """token_logprobs' share_prefix for the scoring forwards: True, False or "auto"."""
    return {"true": True, "false": False}.get(cfg.scoring.share_prefix, "auto")


def padded(rows: list[list[float]], device) -> torch.Tensor:
    """Per-response lists of per-token numbers as a [N, T] float32 tensor, 0.0 past each end."""
    t_max = max((len(r) for r in rows), default=0)
    out = torch.zeros((len(rows), t_max), dtype=torch.float32)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out.to(device)
