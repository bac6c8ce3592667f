"""Per-token log-probs of response tokens: the one forward pass that scores sampled responses.

Used in three places of the data flow, so that they agree to the last bit of logic:
- the trainer's student forward (called with gradient enabled: pi_theta for the PPO ratio, and
  pi_old when it recomputes it instead of taking the rollout engine's numbers);
- teacher scoring (`rlsd_core.loop.teacher.Teacher.score`, under no_grad, on the teacher prompt);
- the tests that check the rollout engines report the same log-probs as this forward.

Layout. Row i is `prompt_ids[i] + response_ids[i]`. Prompts are LEFT-padded to the longest prompt
P of the micro-batch and responses RIGHT-padded to the longest response T of the whole call, so
every response starts in column P and the logits that predict response token t sit in column
P - 1 + t for every row. Position ids count real tokens only (padding never shifts positions), the
same convention as left-padded generation, so a row scores the same whatever it is batched with.

Temperature. Log-probs are log_softmax(logits / temperature) over the full vocabulary, gathered
at the response tokens: the sampling distribution of the rollout before any top-p truncation
(see docs/engines.md for why top-p is not folded in).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..algo import token_entropy


@dataclass
class TokenScores:
    """Scores of a batch of responses, all tensors padded to [B, T] (T = longest response).

    logprobs: [B, T] float32, log p(response token t | prompt, response[:t]) at the given
        temperature; 0.0 where mask is False.
    mask:     [B, T] bool, True on real response tokens.
    logits:   [B, T, V] float32 temperature-scaled logits (logits / temperature) that predict each
        response token (for full-vocabulary divergences such as OPSD), or None if not asked for.
    entropy:  [B, T] float32 entropy (nats) of the temperature-scaled distribution at each
        response position, 0.0 where mask is False, or None if not asked for.
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


def _check_batch(prompt_ids, response_ids) -> None:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(
            f"token_logprobs: {len(prompt_ids)} prompts but {len(response_ids)} responses; "
            "pass one response per prompt (repeat a prompt for each of its samples)")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"token_logprobs: prompt {i} is empty; every prompt needs at least "
                             "one token (e.g. a BOS or chat-template token) to predict the first "
                             "response token from")


def accepts_kwarg(model, name: str) -> bool:
    """Whether model.forward takes keyword `name` (e.g. logits_to_keep, not in every model)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def token_logprobs(model, prompt_ids: list[list[int]], response_ids: list[list[int]], *,
                   temperature: float = 1.0, micro_batch: int = 16, pad_id: int | None = None,
                   return_logits: bool = False, return_entropy: bool = False) -> TokenScores:
    """Log-probs of `response_ids[i]` given `prompt_ids[i]` under `model` at `temperature`.

    Gradient flows through the result when called outside `torch.no_grad()` (the trainer's
    student forward); the model's train/eval mode is left as the caller set it. `pad_id` only
    fills padded slots, which the attention mask hides, so it never changes a result; None takes
    the model config's pad_token_id (or 0). Rows with an empty response get an all-False mask.
    Returns a TokenScores on the model's device; see its docstring for shapes.
    """
    _check_batch(prompt_ids, response_ids)
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}; a greedy "
                         "rollout (temperature 0) is scored at temperature 1.0")
    if micro_batch < 1:
        raise ValueError(f"token_logprobs: micro_batch must be >= 1, got {micro_batch}")
    if pad_id is None:
        pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    device = next(model.parameters()).device
    n = len(prompt_ids)
    t_max = max((len(r) for r in response_ids), default=0)
    keep_arg = accepts_kwarg(model, "logits_to_keep")

    out_lp, out_mask, out_logits, out_ent = [], [], [], []
    for start in range(0, n, micro_batch):
        prompts = prompt_ids[start:start + micro_batch]
        responses = response_ids[start:start + micro_batch]
        b = len(prompts)
        p_max = max(len(p) for p in prompts)
        width = p_max + t_max
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        mask = torch.zeros((b, t_max), dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids[i, p_max - len(p):p_max] = torch.as_tensor(p, dtype=torch.long)
            attn[i, p_max - len(p):p_max] = 1
            if r:
                ids[i, p_max:p_max + len(r)] = torch.as_tensor(r, dtype=torch.long)
                attn[i, p_max:p_max + len(r)] = 1
                mask[i, :len(r)] = True
        if t_max == 0:
            out_lp.append(torch.zeros((b, 0), device=device))
            out_mask.append(mask.to(device))
            continue
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"input_ids": ids, "attention_mask": attn, "position_ids": positions,
                  "use_cache": False}
        if keep_arg:
            # Only the last t_max + 1 columns predict response tokens: skip the lm_head (and its
            # [width, V] activation) on the prompt.
            kwargs["logits_to_keep"] = t_max + 1
        logits = model(**kwargs).logits
        logits = logits[:, -(t_max + 1):-1, :].float() / temperature  # [b, T, V]
        logp_all = F.log_softmax(logits, dim=-1)
        lp = logp_all.gather(-1, ids[:, p_max:].unsqueeze(-1)).squeeze(-1)  # [b, T]
        out_lp.append(lp.masked_fill(~mask, 0.0))
        out_mask.append(mask)
        if return_logits:
            out_logits.append(logits)
        if return_entropy:
            ent = token_entropy(logp_all)
            out_ent.append(ent.masked_fill(~mask, 0.0))

    scores = TokenScores(logprobs=torch.cat(out_lp), mask=torch.cat(out_mask))
    if return_logits:
        scores.logits = torch.cat(out_logits) if out_logits else None
    if return_entropy:
        scores.entropy = torch.cat(out_ent) if out_ent else torch.zeros((n, 0), device=device)
    return scores
