"""Loading a policy and its tokenizer from a model directory, the same way everywhere (training,
evaluation, teacher checks): left padding (prompts are left-padded for generation), a pad token
(the eos token when the tokenizer has none), and the weights in the requested dtype. A
vision-language model (a config with `vision_config`) loads through AutoModelForImageTextToText
and gets a vision prompter from its processor (rlsd_core.models.vision); a text model through
AutoModelForCausalLM, as before."""

from __future__ import annotations

from pathlib import Path

from .specs import ModelSpecError

DTYPES = ("auto", "float32", "bfloat16")


def _cannot_load(what: str, path: str, exc: BaseException) -> ModelSpecError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not Path(path).exists():
        fix = ("a hub id must be in the local Hugging Face cache or reachable (HF_HUB_OFFLINE=1 "
               "uses the cache only): download it first (hf download ID), or give a model directory")
    else:
        fix = ("the files are missing or damaged (cut short by a full disk or an interrupted copy?): "
               "use another checkpoint or copy the model again")
    return ModelSpecError(f"cannot load the {what} of {path!r}: {first}; {fix}")


def _is_load_error(exc: BaseException) -> bool:
    # safetensors raises its own SafetensorError (an Exception) for a truncated file
    return isinstance(exc, (OSError, ValueError)) or type(exc).__name__ == "SafetensorError"


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - filtered just below
        if not _is_load_error(exc):
            raise
        raise _cannot_load("tokenizer", path, exc) from exc
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
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from .vision import is_vision_dir

    try:  # a damaged config.json is a load error too, so the class is chosen inside
        auto = AutoModelForImageTextToText if is_vision_dir(path) else AutoModelForCausalLM
        return auto.from_pretrained(path, dtype=torch_dtype(dtype))
    except Exception as exc:  # noqa: BLE001 - filtered just below
        if not _is_load_error(exc):
            raise
        raise _cannot_load("model", path, exc) from exc


def load_vision(path: str):
    """The vision prompter of a vision-language model directory (None for a text model)."""
    from transformers import AutoConfig

    from .vision import VisionPrompter, is_vision_dir, load_processor

    if not is_vision_dir(path):
        return None
    return VisionPrompter(load_processor(path), AutoConfig.from_pretrained(path))


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant: works with
    inputs that need no grad and under autocast). transformers renamed the switch
    (`activation_checkpointing_enable` from 5.2x; `gradient_checkpointing_enable` is its
    deprecated alias there and the only name before): the new name when it exists."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(model) -> bool:
    """Whether any layer of `model` recomputes its activations (either transformers name)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
