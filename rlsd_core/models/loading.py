"""Loading a policy and its tokenizer from a model directory, the same way everywhere (training,
evaluation, teacher checks): left padding (prompts are left-padded for generation), a pad token
(the eos token when the tokenizer has none), and the weights in the requested dtype."""

from __future__ import annotations

DTYPES = ("auto", "float32", "bfloat16")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(name: str):
    """'auto' and 'float32' -> torch.float32 (fp32 master weights); 'bfloat16' -> torch.bfloat16."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def load_model(path: str, dtype: str = "auto"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
