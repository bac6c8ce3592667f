"""The transformers rollout engine: the default on CPU and in CI.

It samples with its own short decoding loop over the model's KV cache instead of
`model.generate`, for three reasons that matter to RL: the reported log-probs are exactly
log_softmax(logits / T) over the full vocabulary (what `rlsd_core.models.token_logprobs`
computes for the trainer), sampling draws its noise from private torch.Generators (a seed never
touches the global RNG the trainer relies on), one per prompt when the call gives per-prompt
seeds, and samples each row by inverse CDF from its own noise, so a prompt's samples do not
depend on the batch it is decoded in; and the left-padding / position-id convention is the one
`token_logprobs` uses, so engine and trainer agree to float rounding.

Images: `generate(prompts, params, vision=...)` takes one rlsd_core.models.vision.VisionInputs
(or None) per prompt; the pixel inputs go into the prefill only, and the decoding positions
continue the prompt's (3-D for M-RoPE models) positions. A VLM never samples its image
placeholder tokens (a response holding one could not be scored).

Colocated use: pass the training model itself; the engine then samples from the live weights and
`load_weights(model.state_dict())` only checks that the tensors are the ones it already holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (Generation, SamplingParams, WeightSyncError, check_prompts,
                                    resolve_eos_ids)
from ..algo import token_entropy
from ..models.forward import accepts_kwarg
from ..models.vision import forward_kwargs, placeholder_token_ids


def sample_next(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None,
                banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the next token of each row from float32 logits [B, V]; return (ids [B], logprobs [B],
    entropy [B]).

    noise: [B] uniforms in [0, 1), one per row, or None when greedy. Sampling is by inverse CDF:
    row b takes the first token whose cumulative probability exceeds noise[b], so a row's token
    depends on its own logits and noise only, never on the other rows of the batch (per-prompt
    seeds rely on it). Log-probs are log_softmax(logits / T) at the chosen ids, before top-p
    truncation (T = 1 when greedy), as SamplingParams documents; the entropy is that
    distribution's (nats), computed from the same tensor, so a trainer that takes pi_old from
    the rollout keeps its entropy metric without a forward of its own.

    banned: token ids never picked (a VLM's image placeholders), like a truncation: the
    log-probs and entropy stay those of the full distribution, which the scoring forward computes.
    """
    logp = F.log_softmax(logits / params.logprob_temperature, dim=-1)
    entropy = token_entropy(logp)
    if params.greedy:
        ids = (logits if banned is None else logits.index_fill(-1, banned, float("-inf"))).argmax(-1)
    else:
        probs = logp.exp()
        if banned is not None:
            probs = probs.index_fill(-1, banned, 0.0)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            # Keep a token while the mass BEFORE it is below top_p: the top token always stays.
            drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        cdf = probs.cumsum(-1)
        target = (noise.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        ids = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
        # u * total can round up to the total: never return a token of probability 0.
        picked = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        ids = torch.where(picked > 0, ids, probs.argmax(-1))
    return ids, logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), entropy


def sampling_noise(prompts: int, params: SamplingParams, device: torch.device) -> torch.Tensor | None:
    """[prompts * n, max_new_tokens] uniforms, row-major like the decoded rows (None if greedy).

    With per-prompt `seeds` each prompt's n rows come from a generator of their own; with `seed`
    one generator draws them all; unseeded, the global RNG does. The engine's generators are
    private: a seed never touches the global RNG the trainer relies on."""
    if params.greedy:
        return None
    shape = (params.n, params.max_new_tokens)
    seeds = params.prompt_seeds(prompts)
    if seeds is not None:
        return torch.cat([torch.rand(shape, generator=torch.Generator(device=device).manual_seed(s),
                                     device=device) for s in seeds]) if seeds else None
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    return torch.rand((prompts * params.n, params.max_new_tokens), generator=generator, device=device)


class HFEngine:
    """Batched sampling from a transformers causal LM.

    batch_size: how many sequences (prompts x samples) are decoded together; larger is faster
    until memory runs out. Prompts are left-padded within a batch; each sequence stops at its own
    eos / stop token.
    """

    def __init__(self, model, tokenizer, *, eos_token_ids=None, batch_size: int = 256,
                 pad_token_id: int | None = None):
        if batch_size < 1:
            raise ValueError(f"HFEngine: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = resolve_eos_ids("HFEngine", eos_token_ids, tokenizer,
                                             getattr(model, "generation_config", None))
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        # Padded slots are hidden by the attention mask, so any valid id will do.
        self.pad_token_id = self.eos_token_ids[0] if pad_token_id is None else int(pad_token_id)
        # A VLM's image placeholders are prompt-only tokens: never sampled (placeholder_token_ids).
        self.banned_ids = placeholder_token_ids(getattr(model, "config", None))
        self._closed = False

    # -- sampling ---------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 vision=None) -> list[list[Generation]]:
        self._check_open()
        check_prompts(prompts)
        rows = [list(p) for p in prompts for _ in range(params.n)]
        noise = sampling_noise(len(prompts), params, self._device())
        pixels = [v for v in vision for _ in range(params.n)] if vision is not None else None
        stop = frozenset(self.eos_token_ids) | frozenset(params.stop_token_ids)
        flat: list[Generation] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(rows), self.batch_size):
                    end = start + self.batch_size
                    flat.extend(self._decode(rows[start:end], params, stop,
                                             None if noise is None else noise[start:end],
                                             None if pixels is None else pixels[start:end]))
        finally:
            self.model.train(was_training)
        return [flat[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _decode(self, rows, params, stop, noise, vision=None) -> list[Generation]:
        device = self._device()
        b, p_max = len(rows), max(len(r) for r in rows)
        ids = torch.full((b, p_max), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((b, p_max), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, p_max - len(r):] = torch.as_tensor(r, dtype=torch.long)
            attn[i, p_max - len(r):] = 1
        ids, attn = ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        prefill = forward_kwargs(self.model, ids, attn, vision)  # {} without images
        positions = prefill.pop("position_ids", positions)
        stop_t = torch.tensor(sorted(stop), device=device)
        banned = torch.tensor(self.banned_ids, device=device) if self.banned_ids else None

        out_ids = torch.empty((b, 0), dtype=torch.long, device=device)
        out_lp = torch.empty((b, 0), dtype=torch.float32, device=device)
        out_ent = torch.empty((b, 0), dtype=torch.float32, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        stopped = torch.zeros(b, dtype=torch.bool, device=device)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        past = None
        # transformers >= 5.2x names the cache `cache` (and warns on `past_key_values`)
        cache_arg = "cache" if accepts_kwarg(self.model, "cache") else "past_key_values"
        step_ids = ids
        # Only the last position's logits are needed: skip the lm_head on the prompt.
        keep = {"logits_to_keep": 1} if accepts_kwarg(self.model, "logits_to_keep") else {}
        for t in range(params.max_new_tokens):
            out = self.model(input_ids=step_ids, attention_mask=attn, position_ids=positions,
                             use_cache=True, **keep, **{cache_arg: past}, **prefill)
            past, prefill = out.get(cache_arg), {}  # the pixel inputs go into the prefill only
            nxt, lp, ent = sample_next(out.logits[:, -1, :].float(), params,
                                       None if noise is None else noise[:, t], banned)
            nxt = nxt.masked_fill(done, self.pad_token_id)
            out_ids = torch.cat([out_ids, nxt[:, None]], 1)
            out_lp = torch.cat([out_lp, lp[:, None]], 1)
            out_ent = torch.cat([out_ent, ent[:, None]], 1)
            lengths += (~done).long()
            hit = ~done & torch.isin(nxt, stop_t)
            stopped |= hit
            done |= hit
            if bool(done.all()):
                break
            # A finished row keeps decoding a masked pad (cheaper than reshaping the cache).
            attn = torch.cat([attn, (~done).long()[:, None]], 1)
            positions = positions[..., -1:] + 1  # [B, 1], or [3, B, 1] for M-RoPE
            step_ids = nxt[:, None]

        ids_list, lp_list, ent_list = out_ids.tolist(), out_lp.tolist(), out_ent.tolist()
        return [Generation(token_ids=ids_list[i][:n], logprobs=lp_list[i][:n], entropy=ent_list[i][:n],
                           finish_reason="stop" if bool(stopped[i]) else "length")
                for i, n in enumerate(lengths.tolist())]

    # -- weights ----------------------------------------------------------------------------
    def load_weights(self, state_dict) -> None:
        """Copy a full policy state dict into the engine's model (strict: every tensor, no
        extras, same shapes). A no-op after checking, when the tensors are the model's own."""
        self._check_open()
        own = self.model.state_dict()
        incoming = dict(state_dict)
        missing = sorted(set(own) - set(incoming))
        extra = sorted(set(incoming) - set(own))
        if missing or extra:
            raise WeightSyncError(
                f"HFEngine.load_weights: state dict does not match the model: missing "
                f"{missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected "
                f"{extra[:8]}{' ...' if len(extra) > 8 else ''} ({len(extra)}); pass the full "
                "policy state dict (model.state_dict(), tied weights included)")
        bad = [k for k, v in incoming.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise WeightSyncError(f"HFEngine.load_weights: shape mismatch for {bad[:8]}: "
                                  f"{[(tuple(incoming[k].shape), tuple(own[k].shape)) for k in bad[:8]]}")
        if all(v.data_ptr() == own[k].data_ptr() for k, v in incoming.items()):
            return  # colocated: the engine already samples from these very tensors
        with torch.no_grad():
            for k, v in incoming.items():
                own[k].copy_(v)

    def sleep(self) -> None:
        """Nothing to give back: the engine samples from the trainer's own model."""

    def close(self) -> None:
        self._closed = True
        self.model = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("HFEngine is closed; build a new engine")
