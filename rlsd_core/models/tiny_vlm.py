"""The embedded vision-language model: a tiny Qwen2-VL built locally, never downloaded.

`rlsd train --suite shapes` needs a policy that reads images on a fresh machine with no hub
access. Like models/tiny.py this builds one in about a second and saves it as an ordinary Hugging
Face model directory, cached under `~/.cache/rlsd/tiny-vlm-<spec hash>` (or $RLSD_CACHE):

  tokenizer   rlsd's tiny byte-level BPE (models/tiny.py) plus the Qwen-VL special tokens
              <|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>, with a ChatML
              template that writes <|vision_start|><|image_pad|><|vision_end|> for an image part
              (string content renders exactly as the text model's template)
  image processor  Qwen2-VL's (14-pixel patches, 2 x 2 merged into one token), sized so that an
              84 x 84 image is 9 tokens and no image is more than 64
  model       Qwen2VLForConditionalGeneration, random init: the text model of models/tiny.py
              (hidden 256, 4 layers, M-RoPE sections 8/12/12 of the 32 rotary pairs) and a
              2-block vision tower of width 128 whose merger projects to 256

The directory holds what `AutoProcessor` reads (preprocessor_config.json, processor_config.json,
tokenizer files), so it loads like a real Qwen2-VL (rlsd_core.models.vision.load_processor).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .cache import cache_root
from .tiny import TINY_SPEC, build_tokenizer, corpus_fingerprint

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# ChatML with image parts, as Qwen2-VL's template writes them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Everything that decides the built artefact; a change here gives a new cache directory.
TINY_VLM_SPEC = {
    "text": {k: TINY_SPEC[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads",
                                       "max_position_embeddings")},
    "mrope_section": [8, 12, 12],   # sums to head_dim / 2 = 32
    "rope_theta": 10000.0,
    "vision": {"depth": 2, "embed_dim": 128, "num_heads": 4, "mlp_ratio": 2, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2},
    "min_pixels": 28 * 28,          # one token
    "max_pixels": 28 * 28 * 64,     # 64 tokens (224 x 224)
    "tokenizer_seed": TINY_SPEC["seed"],
    # The text model's corpus moved to version 2 (the teacher prompts' words); the VLM's runs
    # (docs/multimodal.md) were measured on version 1, which it keeps until they are redone.
    "tokenizer_corpus": 1,
    "seed": 0,
    "version": 1,
}


def build_processor():
    """The tokenizer (tiny BPE + vision tokens) and Qwen2-VL image processor, unsaved."""
    from transformers import AutoImageProcessor  # noqa: F401 - registers the image processors
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    tokenizer = build_tokenizer(TINY_VLM_SPEC["tokenizer_seed"],
                                corpus_version=TINY_VLM_SPEC["tokenizer_corpus"])
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|endoftext|>", "<|im_start|>", *VISION_TOKENS]})
    tokenizer.chat_template = CHAT_TEMPLATE
    vision = TINY_VLM_SPEC["vision"]
    image_processor = pil.Qwen2VLImageProcessorPil(
        min_pixels=TINY_VLM_SPEC["min_pixels"], max_pixels=TINY_VLM_SPEC["max_pixels"],
        patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"],
        temporal_patch_size=vision["temporal_patch_size"])
    return tokenizer, image_processor


def build_model(tokenizer):
    """A randomly initialised Qwen2-VL sized by TINY_VLM_SPEC."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec, ids = TINY_VLM_SPEC, tokenizer.convert_tokens_to_ids
    text = dict(spec["text"], vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"],
                                 "mrope_section": spec["mrope_section"]})
    vision = dict(spec["vision"], hidden_size=spec["text"]["hidden_size"])
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                           image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                           vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(spec["seed"])
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def spec_hash() -> str:
    key = {**TINY_VLM_SPEC, "corpus": corpus_fingerprint(TINY_VLM_SPEC["tokenizer_corpus"])}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def tiny_vlm_dir(root: Path | None = None) -> Path:
    """Build (once) and return the directory of the untrained tiny VLM, tokenizer and processor."""
    out = (root or cache_root()) / f"tiny-vlm-{spec_hash()}"
    if (out / "config.json").exists() and (out / "preprocessor_config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tokenizer, image_processor = build_processor()
    model = build_model(tokenizer)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    image_processor.save_pretrained(tmp)
    # What AutoProcessor reads to pick the processor class (tokenizer + image processor; the
    # video processor is Qwen2-VL's default, built only where torchvision is installed).
    (tmp / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    try:
        tmp.replace(out)  # atomic: readers never see a half-written directory
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out
