"""Per-token log-probs of response tokens: the one forward pass that scores sampled responses.

Used in four places of the data flow, so that they agree to the last bit of logic:
- the trainer's student forward (called with gradient enabled: pi_theta for the PPO ratio);
- pi_old, when the loop recomputes it instead of taking the rollout engine's numbers
  (rlsd_core.loop.stages.pi_old, under no_grad);
- teacher scoring (`rlsd_core.loop.teacher.Teacher.score`, under no_grad, on the teacher prompt);
- the tests and the vLLM probe that check the rollout engines report the same log-probs.

Layout. Row i is `prompt_ids[i] + response_ids[i]`. Prompts are LEFT-padded to the longest prompt
P of the micro-batch and responses RIGHT-padded to the longest response T of the whole call, so
every response starts in column P and the logits that predict response token t sit in column
P - 1 + t for every row. Position ids count real tokens only (padding never shifts positions), the
same convention as left-padded generation, so a row scores the same whatever it is batched with.

Images. `vision` (one rlsd_core.models.vision.VisionInputs or None per row) adds each
micro-batch's pixel inputs and the 3-D positions of its image tokens (`vision.forward_kwargs`);
the student, pi_old and teacher forwards all pass the same pixel inputs, only the ids differ.
Without it, or for a micro-batch without images, the text path runs unchanged.

Temperature. Log-probs are log_softmax(logits / temperature) over the full vocabulary, gathered
at the response tokens: the sampling distribution of the rollout before any top-p truncation
(see docs/engines.md for why top-p is not folded in).

Memory (docs/performance.md). The call is split into chunks of `micro_batch` rows; only one
chunk's logits [b, T, V] (in the model's output dtype) are alive at a time. Without gradient the
log-softmax, the gather and the entropy then run over blocks of at most SCORE_BLOCK_ELEMENTS
logits, so the float32 temporaries are a fixed 64 MiB each, whatever b, T and V are. Only
`return_logits` (full-vocabulary OPSD) returns a [B, T, V] tensor: call it per micro-batch.

Shared prefixes (`share_prefix=True`). The G samples of a group share their prompt (and, for
injectors that read only the row, their teacher prompt). Each distinct prompt of a chunk is then
run once, its keys/values (a transformers DynamicCache) are gathered over the rows that use it,
and the responses run against that cache: the same maths as the plain forward (exact to float
rounding: the prompt's attention is computed in a different batch shape), with the prompt's
compute paid once per group instead of G times. It needs a plain DynamicCache of full-attention
layers (no sliding window, no linear-attention state); anything else raises
`PrefixSharingUnsupported` (share_prefix=True) or quietly uses the plain forward ("auto").
A chunk with images always uses the plain forward, whatever share_prefix says: sharing would
need the response's 3-D M-RoPE positions continued from the cached prompt's (not done yet), and
the block-wise scoring above applies to it unchanged.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..algo import token_entropy
from .vision import forward_kwargs

# Logits per float32 temporary of the no-grad scoring (16 M = 64 MiB): bounds the log-softmax and
# entropy memory independently of the chunk (a 151,936-token vocabulary gives 110 positions a block).
SCORE_BLOCK_ELEMENTS = 1 << 24


class PrefixSharingUnsupported(ValueError):
    """The model's cache cannot be shared over a group (sliding window, linear attention, ...)."""


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
                   return_logits: bool = False, return_entropy: bool = False,
                   share_prefix: bool | str = False, vision=None) -> TokenScores:
    """Log-probs of `response_ids[i]` given `prompt_ids[i]` under `model` at `temperature`.

    Gradient flows through the result when called outside `torch.no_grad()` (the trainer's
    student forward); the model's train/eval mode is left as the caller set it. `pad_id` only
    fills padded slots, which the attention mask hides, so it never changes a result; None takes
    the model config's pad_token_id (or 0). Rows with an empty response get an all-False mask.
    `micro_batch` rows run per forward (the memory knob); `share_prefix` (True, False or "auto")
    runs each distinct prompt of a chunk once (module docstring). Returns a TokenScores on the
    model's device; see its docstring for shapes.
    """
    _check_batch(prompt_ids, response_ids)
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}; a greedy "
                         "rollout (temperature 0) is scored at temperature 1.0")
    if micro_batch < 1:
        raise ValueError(f"token_logprobs: micro_batch must be >= 1, got {micro_batch}")
    if share_prefix not in (True, False, "auto"):
        raise ValueError(f"token_logprobs: share_prefix must be True, False or 'auto', got "
                         f"{share_prefix!r}")
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
        targets, mask = _pad_responses(responses, t_max, pad_id)
        targets, mask = targets.to(device), mask.to(device)
        if t_max == 0:
            out_lp.append(torch.zeros((len(prompts), 0), device=device))
            out_mask.append(mask)
            continue
        pieces = None
        images = vision[start:start + micro_batch] if vision is not None else None
        if images is not None and all(v is None for v in images):
            images = None  # a chunk without images: the text path, prefix sharing included
        if share_prefix and images is None and _sharing_possible(model, share_prefix):
            pieces = _shared_forward(model, prompts, targets, mask, pad_id, keep_arg,
                                     strict=share_prefix is True)
        if pieces is None:
            pieces = _plain_forward(model, prompts, targets, mask, pad_id, keep_arg, images)
        scale = temperature
        if return_logits:  # scaled once: the returned logits are the ones scored (one graph node)
            pieces, scale = [(logits.float() / temperature, cols) for logits, cols in pieces], 1.0
            out_logits.append(torch.cat([logits for logits, _ in pieces], 1))
        scored = [_score(logits, targets[:, cols], scale, return_entropy) for logits, cols in pieces]
        out_lp.append(torch.cat([lp for lp, _ in scored], 1).masked_fill(~mask, 0.0))
        out_mask.append(mask)
        if return_entropy:
            out_ent.append(torch.cat([e for _, e in scored], 1).masked_fill(~mask, 0.0))
        del pieces, scored  # this chunk's logits go before the next chunk's forward

    scores = TokenScores(logprobs=torch.cat(out_lp), mask=torch.cat(out_mask))
    if return_logits:
        scores.logits = torch.cat(out_logits) if out_logits else None
    if return_entropy:
        scores.entropy = torch.cat(out_ent) if out_ent else torch.zeros((n, 0), device=device)
    return scores


def _pad_responses(responses, t_max: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [b, T] right-padded with pad_id, mask [b, T] bool)."""
    ids = torch.full((len(responses), t_max), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), t_max), dtype=torch.bool)
    for i, r in enumerate(responses):
        if r:
            ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, :len(r)] = True
    return ids, mask


def _left_pad(prompts, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [b, P] left-padded, attention mask [b, P] long) on `device`."""
    p_max = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), p_max), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), p_max), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, p_max - len(p):] = torch.as_tensor(p, dtype=torch.long)
        attn[i, p_max - len(p):] = 1
    return ids.to(device), attn.to(device)


def _plain_forward(model, prompts, targets, mask, pad_id, keep_arg, vision=None):
    """One forward over prompt + response per row. [(logits [b, T, V] predicting every response
    token, columns slice(None))]. `vision`: the rows' pixel inputs (VisionInputs or None each)."""
    t_max = targets.shape[1]
    p_ids, p_attn = _left_pad(prompts, pad_id, targets.device)
    ids = torch.cat([p_ids, targets], 1)
    attn = torch.cat([p_attn, mask.long()], 1)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"input_ids": ids, "attention_mask": attn, "position_ids": positions, "use_cache": False}
    if vision is not None:  # pixel inputs and 3-D positions of this chunk's images
        kwargs.update(forward_kwargs(model, ids, attn, vision))
    if keep_arg:
        # Only the last t_max + 1 columns predict response tokens: skip the lm_head (and its
        # [width, V] activation) on the prompt.
        kwargs["logits_to_keep"] = t_max + 1
    logits = model(**kwargs).logits
    return [(logits[:, -(t_max + 1):-1, :], slice(None))]


# Models whose cache turned out not to be shareable ("auto" then uses the plain forward at once).
_UNSHAREABLE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _sharing_possible(model, mode) -> bool:
    return mode is True or model not in _UNSHAREABLE


def _plain_cache(cache) -> str | None:
    """None when `cache` is a DynamicCache of full-attention layers, else what it is."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # transformers < 4.54 has no per-layer caches to inspect
        return "a cache of an older transformers (no cache layers)"
    if not isinstance(cache, DynamicCache):
        return type(cache).__name__
    odd = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
    return ", ".join(odd) or None


def _shared_forward(model, prompts, targets, mask, pad_id, keep_arg, *, strict: bool):
    """The distinct prompts once, their cache gathered over the rows, then the responses.
    [(logits [b, 1, V] predicting token 0, columns :1), (logits [b, T-1, V], columns 1:)], or
    None when the cache cannot be shared and not `strict`."""
    first_row: dict[tuple, int] = {}
    which = [first_row.setdefault(tuple(p), len(first_row)) for p in prompts]
    unique = [list(p) for p in first_row]
    device, t_max = targets.device, targets.shape[1]
    p_ids, p_attn = _left_pad(unique, pad_id, device)
    positions = (p_attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=p_ids, attention_mask=p_attn, position_ids=positions, use_cache=True,
                **({"logits_to_keep": 1} if keep_arg else {}))
    # transformers >= 5.2x calls the cache `cache` (and warns on `past_key_values`); older, not.
    cache_arg = "cache" if accepts_kwarg(model, "cache") else "past_key_values"
    cache = out.get(cache_arg)
    problem = _plain_cache(cache)
    if problem is not None:
        if strict:
            raise PrefixSharingUnsupported(
                f"token_logprobs: share_prefix needs a transformers DynamicCache of full-attention "
                f"layers, but {type(model).__name__} returned {problem}; score without it "
                "(share_prefix=False, config `scoring.share_prefix: false`)")
        _UNSHAREABLE[model] = True
        return None
    index = torch.tensor(which, device=device)
    pieces = [(out.logits[:, -1:, :].index_select(0, index), slice(0, 1))]
    if t_max > 1:
        # The cache is this call's own: gathering (a copy per row) and the response forward's
        # appends never touch anything a caller holds.
        cache.batch_select_indices(index)
        lengths = p_attn.sum(-1).index_select(0, index)
        r_ids, r_attn = targets[:, :-1], mask[:, :-1].long()  # the last token predicts nothing
        attn = torch.cat([p_attn.index_select(0, index), r_attn], 1)
        positions = lengths[:, None] + torch.arange(t_max - 1, device=device)[None, :]
        rest = model(input_ids=r_ids, attention_mask=attn, position_ids=positions,
                     use_cache=True, **{cache_arg: cache}).logits
        pieces.append((rest, slice(1, None)))
    return pieces


def _score(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
           entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [b, t] float32, entropy [b, t] or None) of `targets` [b, t] under
    log_softmax(logits [b, t, V] / temperature).

    With gradient: one log-softmax over the tensor (autograd keeps it for the backward anyway).
    Without: the same per-row computation over blocks of at most SCORE_BLOCK_ELEMENTS logits, so
    the float32 temporaries stay small; log-softmax is computed row by row, so the numbers are
    the same bits as one pass over the whole tensor.
    """
    if logits.requires_grad:
        logp = F.log_softmax(_scaled(logits, temperature), dim=-1)
        lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return lp, (token_entropy(logp) if entropy else None)
    b, t, v = logits.shape
    lp = torch.empty((b, t), dtype=torch.float32, device=logits.device)
    ent = torch.empty((b, t), dtype=torch.float32, device=logits.device) if entropy else None
    per_block = max(1, SCORE_BLOCK_ELEMENTS // v)  # positions
    if per_block >= t:
        seqs = per_block // t
        blocks = [(slice(i, i + seqs), slice(None)) for i in range(0, b, seqs)]
    else:
        blocks = [(slice(i, i + 1), slice(j, j + per_block)) for i in range(b)
                  for j in range(0, t, per_block)]
    for rows, cols in blocks:
        logp = F.log_softmax(_scaled(logits[rows, cols], temperature), dim=-1)
        lp[rows, cols] = logp.gather(-1, targets[rows, cols].unsqueeze(-1)).squeeze(-1)
        if entropy:
            ent[rows, cols] = token_entropy(logp)
    return lp, ent


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # x / 1.0 == x exactly, so skipping it changes no bit and saves a copy.
    z = logits.float()
    return z if temperature == 1.0 else z / temperature
