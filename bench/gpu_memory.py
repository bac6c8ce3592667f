"""GPU memory of one RLSD step on one card: computed from the model's shape and the step's shape.

    python bench/gpu_memory.py            # the table of docs/training.md (GPU recipe)
    python bench/gpu_memory.py --measure  # re-measure the activation constants on this machine

Used by bench/gpu_check.py to put a computed figure next to each measured peak. Everything here
is arithmetic, stated so that a measurement can prove it wrong:

Per parameter (N parameters), what the trainer keeps for the whole run (fp32 layout, the
default: fp32 weights, bf16 autocast):
    weights 4 + AdamW moments 8 + teacher copy 4 (snapshot / ema; 0 when live or not needed)
and bf16 layout (model.dtype bfloat16): weights 2 + fp32 masters 4 + moments 8 + teacher 2.
Both are 16 bytes per parameter with a snapshot teacher. During the update, on top:
    gradients 4 (fp32, or the masters' fp32 gradients), and in the fp32 layout the bf16 copies
    of the weights that autocast makes and autograd keeps for the backward pass: 2.
Activations kept for the backward pass, per token and layer, under bf16 autocast (Qwen2 /
Llama block, fp32 residual stream): ACT_H x hidden + ACT_I x intermediate bytes; with gradient
checkpointing CKPT_H x hidden (the layer inputs) plus one layer's full set during its recompute.
The constants were measured with autograd's saved-tensor hooks on the CPU (`--measure`: slope
over two sequence lengths, so the autocast weight copies are not counted as activations):
34.0 x hidden + 8.2 x intermediate; 8 x hidden with checkpointing.
Logits, per response token and per vocabulary entry, read off `token_logprobs`: the training
forward holds the bf16 lm_head output, its fp32 copy and the scaled copy (2 + 4 + 4), its
backward the saved log-softmax and two gradients of that size (12 bytes, the larger); a no-grad
scoring forward (pi_old, teacher) holds one chunk of `scoring.micro_batch` sequences' logits in
the autocast dtype (2 bytes, bf16) and works on them in blocks of at most 16 M float32 logits
(three 64 MiB temporaries: docs/performance.md).
The HF engine's KV cache: 2 x layers x kv_heads x head_dim x 4 bytes (fp32 weights) per token of
the batch being decoded.
vLLM (bf16): its weights 2 bytes per parameter + its KV cache + ~2 GiB of its own; with sleep
mode (level 2) it holds almost nothing outside the rollout.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9
ACT_H, ACT_I, CKPT_H = 34.0, 8.2, 8.0
LOGIT_TRAIN_BYTES, LOGIT_SCORE_BYTES = 12, 2
SCORE_BLOCKS = 3 * 64 * 2**20  # token_logprobs' float32 block temporaries (no grad)
VLLM_OVERHEAD = 2 * 2**30


@dataclass(frozen=True)
class Shape:
    params: float
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


# Qwen2.5 shapes (config.json of the released models); parameters with tied embeddings counted once.
SHAPES = {
    "0.5B": Shape(494e6, 896, 4864, 24, 14, 2, 64, 151936),
    "1.5B": Shape(1.54e9, 1536, 8960, 28, 12, 2, 128, 151936),
    "7B": Shape(7.62e9, 3584, 18944, 28, 28, 4, 128, 152064),
}


@dataclass(frozen=True)
class Step:
    """The step's shape: `micro` sequences per training micro-batch, `chunk` sequences scored
    at once by the no-grad forwards, `decode` sequences the HF engine decodes together."""

    seqs: int = 512
    prompt: int = 256
    response: int = 1024
    micro: int = 8
    chunk: int = 8
    decode: int = 256
    checkpointing: bool = True


def persistent(s: Shape, *, layout: str = "fp32", teacher: bool = True) -> float:
    """Bytes the trainer holds for the whole run: weights, moments, masters, teacher copy."""
    n = s.params
    if layout == "fp32":
        return n * (4 + 8 + (4 if teacher else 0))
    return n * (2 + 4 + 8 + (2 if teacher else 0))


def activations(s: Shape, tokens: float, checkpointing: bool) -> float:
    if checkpointing:
        return tokens * s.layers * CKPT_H * s.hidden + tokens * (ACT_H * s.hidden + ACT_I * s.inter)
    return tokens * s.layers * (ACT_H * s.hidden + ACT_I * s.inter)


def kv_per_token(s: Shape, bytes_per: int) -> float:
    return 2 * s.layers * s.kv_heads * s.head_dim * bytes_per


def phases(s: Shape, step: Step, *, layout: str = "fp32", teacher: bool = True,
           engine: str = "hf", sleep: bool = True, vllm_bytes: float = 0.0) -> dict[str, float]:
    """Peak bytes of each stage of a step: rollout, score, train."""
    base = persistent(s, layout=layout, teacher=teacher)
    n = s.params
    update_extra = n * 4 + (n * 2 if layout == "fp32" else 0)
    micro_tokens = step.micro * (step.prompt + step.response)
    train = (base + update_extra + activations(s, micro_tokens, step.checkpointing)
             + LOGIT_TRAIN_BYTES * s.vocab * step.micro * step.response)
    score = base + LOGIT_SCORE_BYTES * s.vocab * step.chunk * step.response + SCORE_BLOCKS
    if engine == "hf":
        rollout = base + kv_per_token(s, 4) * step.decode * (step.prompt + step.response)
        return {"rollout": rollout, "score": score, "train": train}
    rollout = base + vllm_bytes
    held = 0.0 if sleep else vllm_bytes
    return {"rollout": rollout, "score": score + held, "train": train + held}


def vllm_need(s: Shape, max_model_len: int) -> float:
    """vLLM's smallest share: bf16 weights, one max_model_len sequence of KV cache, overhead."""
    return s.params * 2 + kv_per_token(s, 2) * max_model_len + VLLM_OVERHEAD


def vllm_kv_left(s: Shape, step: Step, *, card_gb: float, teacher: bool, sleep: bool) -> float:
    """Bytes left on the card for vLLM's KV cache, next to the trainer (negative: short by that
    much). With sleep, vLLM shares the card with the trainer's persistent state during the
    rollout only, and the update must fit the card on its own; without, vLLM's share sits next
    to the trainer's largest stage."""
    total = card_gb * GB
    margin = max(2**30, 0.03 * total)
    trainer = phases(s, step, teacher=teacher, engine="vllm", sleep=True)  # vLLM not counted
    fixed = s.params * 2 + VLLM_OVERHEAD  # vLLM's weights (bf16) and its own buffers
    if sleep:
        short = total - margin - max(trainer["score"], trainer["train"])
        if short < 0:
            return short
        return total - margin - trainer["rollout"] - fixed
    return total - margin - max(trainer.values()) - fixed


def fits_table(step: Step = Step(), cards=(80, 141)) -> list[str]:
    """Markdown rows: per model and teacher, the trainer's persistent state, its update peak,
    and per card, with and without sleep mode, the GB left for vLLM's KV cache ("no" when the
    step does not fit, or not even one max-length sequence of KV does)."""
    rows = []
    for name, s in SHAPES.items():
        seq_kv = kv_per_token(s, 2) * (step.prompt + step.response)
        for teacher in (True, False):
            base = persistent(s, teacher=teacher)
            trainer = phases(s, step, teacher=teacher, engine="vllm", sleep=True)
            cells = []
            for card in cards:
                for sleep in (True, False):
                    left = vllm_kv_left(s, step, card_gb=card, teacher=teacher, sleep=sleep)
                    cells.append(f"{left / GB:.0f}" if left >= seq_kv else
                                 f"no ({left / GB:+.0f})")
            rows.append(f"| {name} | {'snapshot' if teacher else 'none / live'} | "
                        f"{base / GB:.0f} | {trainer['train'] / GB:.0f} | "
                        f"{(s.params * 2 + VLLM_OVERHEAD) / GB:.0f} | " + " | ".join(cells) + " |")
    return rows


def measure(device: str = "cpu") -> dict[str, float]:
    """Activation bytes per token per layer of a Qwen2 block under bf16 autocast, from autograd's
    saved tensors (slope over two sequence lengths); for two shapes, then solved for the hidden
    and intermediate coefficients."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlsd_core.models import enable_checkpointing, saved_activations

    def per_token(h, i, heads, kv, hd, checkpointing):
        cfg = Qwen2Config(vocab_size=512, hidden_size=h, intermediate_size=i, num_hidden_layers=2,
                          num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd)
        model = Qwen2ForCausalLM(cfg).to(device).train()
        if checkpointing:
            enable_checkpointing(model)
        totals = []
        for t in (64, 128):
            ids = torch.randint(0, 512, (2, t), device=device)
            with saved_activations(model) as seen, torch.autocast(device, dtype=torch.bfloat16):
                model.model(input_ids=ids, attention_mask=torch.ones_like(ids))
            totals.append(sum(seen.values()))
        return (totals[1] - totals[0]) / (2 * 64) / 2

    a = per_token(896, 4864, 14, 2, 64, False)
    b = per_token(1536, 8960, 12, 2, 128, False)
    # a = x*896 + y*4864, b = x*1536 + y*8960
    y = (b - a * 1536 / 896) / (8960 - 4864 * 1536 / 896)
    x = (a - y * 4864) / 896
    return {"act_h": x, "act_i": y, "ckpt_h": per_token(896, 4864, 14, 2, 64, True) / 896}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", action="store_true", help="measure the activation constants")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.measure:
        print(measure(args.device))
        return
    step = Step()
    print(f"step: {step}")
    print("| model | teacher copy | trainer state | update peak | vLLM weights + own | "
          "KV left, 80 GB, sleep | 80 GB, no sleep | 141 GB, sleep | 141 GB, no sleep |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(fits_table(step)))


if __name__ == "__main__":
    main()
