"""Models: what the policy is, where it comes from, and the one forward that scores responses.

    model spec ('tiny', 'smollm2-135m-instruct', a GGUF file, a directory, a hub id)
        -> specs.resolve_model -> a local model directory -> loading.load_model / load_tokenizer
    forward.token_logprobs: log-probs (and entropy, logits) of response tokens after prompts;
        the student, pi_old and teacher forwards of the loop and the vLLM sync probe all use it
    tiny.py: the embedded default model and tokenizer, built locally and cached (cache.py)
    vision.py: vision-language models: the processor (images -> tokens + pixel inputs) and the
        pixel arguments every forward adds; tiny_vlm.py: the embedded tiny Qwen2-VL
"""

from .cache import cache_root
from .forward import TokenScores, accepts_kwarg, token_logprobs
from .loading import (enable_checkpointing, is_checkpointing, load_model, load_tokenizer,
                      load_vision, torch_dtype)
from .memory import saved_activations
from .specs import SMOLLM2, ModelSpecError, resolve_model, smollm2_gguf
from .tiny import load_tiny, tiny_model_dir
from .tiny_vlm import tiny_vlm_dir
from .vision import (VisionInputs, VisionPrompter, forward_kwargs, is_vision_config,
                     placeholder_token_ids)

__all__ = ["SMOLLM2", "ModelSpecError", "TokenScores", "accepts_kwarg", "cache_root",
           "enable_checkpointing", "is_checkpointing", "load_model", "load_tiny", "load_tokenizer",
           "load_vision", "resolve_model", "saved_activations", "smollm2_gguf", "tiny_model_dir",
           "tiny_vlm_dir",
           "token_logprobs", "torch_dtype", "VisionInputs", "VisionPrompter", "forward_kwargs",
           "is_vision_config", "placeholder_token_ids"]
