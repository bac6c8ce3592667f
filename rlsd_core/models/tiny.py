"""The embedded default model: a tiny causal LM and tokenizer built locally, never downloaded.

`rlsd train` with no arguments needs a policy on a fresh machine with no hub access. This module
trains a byte-level BPE tokenizer (one token per digit, lossless on any text) on synthetic text in
about a second and builds a randomly initialised 3.2 M-parameter Qwen2 model, then saves both
as an ordinary Hugging Face model directory, cached under `~/.cache/rlsd/` (or $RLSD_CACHE), so
every later stage (engines, trainer, eval) loads it with `from_pretrained` exactly like a real
model. The supervised warm-up that makes it useful is a loop stage (rlsd_core.loop.warmup).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

from .cache import cache_root

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML, the format Qwen-family tokenizers use; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Everything that decides the built artefact; a change here gives a new cache directory.
TINY_SPEC = {
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "seed": 0,
    "corpus_version": 2,
}

# Words the corpus adds from version 2 on: the built-in tasks' prompts and the built-in
# injectors' teacher prompts (the release's "After understanding the reference solution, please
# solve the problem above in your own way."), which version 1 spelled nearly letter by letter: a
# teacher prompt of `reverse` took 78 tokens beside the student's 22, half the warm-up's compute.
_CORPUS_V2_WORDS = (
    "After understanding the reference solution please solve problem above in your own way "
    "Reverse letters An earlier attempt at this was checked and found wrong checker said Avoid "
    "that mistake correct How many squares are there picture")


def _corpus(n: int = 4000, seed: int = 0, version: int = TINY_SPEC["corpus_version"]) -> list[str]:
    """Synthetic text covering what the built-in tasks and injectors say: arithmetic, chat words,
    LaTeX answers, the teacher prompts' words (version 2)."""
    rng = random.Random(seed)
    words = ("What is the answer question solve compute sum product difference of and then "
             "Here is a reference solution Solve it in your own way final answer is The "
             "Let us step first next so result equals Hint think carefully yes no copy the word "
             "Repeat reverse letters user assistant system").split()
    if version >= 2:
        words += _CORPUS_V2_WORDS.split()
    lines = []
    for _ in range(n):
        a, b, c = rng.randint(0, 999), rng.randint(0, 999), rng.randint(0, 99)
        op = rng.choice("+-*")
        lines.append(f"What is {a} {op} {b}? {a}{op}{b}={c}. The final answer is \\boxed{{{c}}}.")
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))))
    return lines


def build_tokenizer(seed: int = 0, corpus_version: int = TINY_SPEC["corpus_version"]):
    """Train the byte-level BPE tokenizer (about a second) and wrap it for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits split one by one so that numbers of any length are spelled the same way, which is
    # what lets a tiny model learn column arithmetic.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SPEC["vocab_size"], special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(seed=seed, version=corpus_version), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
        bos_token=None, unk_token=None, additional_special_tokens=["<|endoftext|>", "<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, seed: int = 0):
    """A randomly initialised Qwen2 causal LM sized by TINY_SPEC (3.2 M parameters)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = TINY_SPEC
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"], num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"], max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=spec["tie_word_embeddings"], bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def corpus_fingerprint(version: int = TINY_SPEC["corpus_version"]) -> str:
    """A hash of the tokenizer's training text itself, so that an edited word list gives a new
    cache directory even if nobody bumps the version (a stale tokenizer otherwise survives)."""
    return hashlib.sha256("\n".join(_corpus(version=version)).encode()).hexdigest()[:16]


def spec_hash() -> str:
    key = {**TINY_SPEC, "corpus": corpus_fingerprint()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def tiny_model_dir(root: Path | None = None) -> Path:
    """Build (once) and return the directory of the untrained tiny model + tokenizer."""
    out = (root or cache_root()) / f"tiny-{spec_hash()}"
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tokenizer = build_tokenizer(TINY_SPEC["seed"])
    model = build_model(tokenizer, TINY_SPEC["seed"])
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(out)  # atomic: readers never see a half-written directory
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tiny(root: Path | None = None):
    """(model, tokenizer) of the untrained tiny model, from the local cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir(root)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path), tokenizer
