"""Vision-language models: the processor that turns images into tokens and pixel inputs, and the
extra forward arguments that carry those pixels through every forward of the loop.

Data flow:
  chat messages with image parts + decoded images (rlsd_core.data.prompts.encode_prompt)
    -> VisionPrompter.encode: the chat template places one image placeholder per image, the
       processor expands each into its tokens (Qwen2-VL: (h/14 x w/14) / 4 tokens) and computes
       the pixel inputs -> (prompt ids, VisionInputs) per prompt
    -> rollout (engines/hf.py), pi_old / student / teacher forwards (models/forward.py), the
       warm-up: `forward_kwargs(model, ids, attention_mask, [VisionInputs | None per row])`
       concatenates the rows' pixel inputs in row order and computes the position ids.

Batching: a Qwen-VL processor returns an image's patches flattened, `pixel_values` [patches,
channels x temporal x patch x patch], with `image_grid_thw` [images, 3] saying how they split
into images; the model fills the image tokens of the batch, in order, from the concatenation.
So a batch needs no pixel padding: rows are concatenated along dim 0 in batch order, and a row
without images contributes nothing. Position ids: Qwen-VL models use 3-D rotary positions
(M-RoPE) for image tokens; `forward_kwargs` computes them with the model's own `get_rope_index`
on the left-padded batch, so a row scores the same whatever it is batched with. The text
tokens after the images keep equal positions on all three axes, which is why a decoding loop
continues them with `positions[..., -1:] + 1`.

Text-only batches of a VLM, and every batch of a text model, take the unchanged text path.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class VisionInputs:
    """One prompt's images: decoded (for engines that process images themselves, vLLM) and as
    the processor prepared them (CPU tensors: pixel_values, image_grid_thw, ...)."""

    images: tuple
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def is_vision_config(config) -> bool:
    """Whether a model config describes a vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL
    and others with a `vision_config`)."""
    return getattr(config, "vision_config", None) is not None


def is_vision_dir(path: str | Path) -> bool:
    """Whether a local model directory (or hub id) holds a vision-language model."""
    config = Path(path) / "config.json"
    if config.is_file():
        return "vision_config" in json.loads(config.read_text(encoding="utf-8"))
    from transformers import AutoConfig

    return is_vision_config(AutoConfig.from_pretrained(path))


def _without_video(cls):
    """`cls` (a Qwen-VL processor class) with its video processor left out. transformers 5
    cannot build a Qwen-VL video processor without torchvision; images do not need it, so
    where torchvision is missing the processor is built from the parts that load."""
    attributes = [a for a in cls.get_attributes() if a != "video_processor"]
    return type(cls.__name__, (cls,), {"get_attributes": classmethod(lambda c: attributes)})


def load_processor(path: str | Path):
    """The model's processor (AutoProcessor). Where AutoProcessor cannot build it (transformers
    5 needs torchvision for a Qwen-VL video processor, and the CPU machines of this project have
    none), the same processor class is built from the tokenizer and the image processor alone."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin

    try:
        processor = AutoProcessor.from_pretrained(path)
        if isinstance(processor, ProcessorMixin) and hasattr(processor, "image_processor"):
            return processor
        missing = "processor_config.json"
    except (ImportError, OSError, ValueError) as exc:  # e.g. its video part needs torchvision
        missing = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = AutoConfig.from_pretrained(path).model_type
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name is None:
        raise ValueError(f"{path}: no processor for model type {model_type!r} ({missing}); "
                         f"rlsd needs the model's processor to read images")
    import transformers

    cls = _without_video(getattr(transformers, name))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return cls(image_processor=AutoImageProcessor.from_pretrained(path), tokenizer=tokenizer,
               chat_template=tokenizer.chat_template)


def bare_image_parts(messages: Sequence[dict]) -> list[dict]:
    """Copies of `messages` whose image parts are {"type": "image"} without their payload (a
    path or bytes): all a chat template needs to place the image placeholder."""
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), list):
            m["content"] = [{"type": "image"} if isinstance(p, dict) and p.get("type") == "image"
                            else p for p in m["content"]]
        out.append(m)
    return out


class VisionPrompter:
    """Encodes chat messages with images for one model (see the module doc).

    processor: the model's processor (`load_processor`); config: the model's config (for the
    image token id). `encode(messages, images)` -> (prompt ids, VisionInputs).
    """

    def __init__(self, processor, config) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = int(config.image_token_id)

    def encode(self, messages: list[dict], images: Sequence) -> tuple[list[int], VisionInputs]:
        text = self.tokenizer.apply_chat_template(bare_image_parts(messages), tokenize=False,
                                                  add_generation_prompt=True)
        # add_special_tokens=False: the chat template already wrote every special token, as in
        # the text path (apply_chat_template(tokenize=True)).
        out = self.processor(text=[text], images=list(images), return_tensors="pt",
                             add_special_tokens=False)
        ids = [int(i) for i in out["input_ids"][0]]
        tensors = {k: v for k, v in out.items()
                   if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        n_tokens = sum(i == self.image_token_id for i in ids)
        if not n_tokens:
            raise ValueError("the chat template placed no image token for the images of the "
                             "prompt; use the model's own chat template")
        return ids, VisionInputs(images=tuple(images), tensors=tensors)

    def save(self, out: str | Path) -> None:
        """Write the processor files beside a checkpoint's weights (so the checkpoint loads as a
        vision-language model: `rlsd eval`, resume)."""
        self.processor.save_pretrained(out)


def batch_tensors(vision: Sequence[VisionInputs | None], device) -> dict[str, torch.Tensor]:
    """The pixel inputs of a batch: each key concatenated along dim 0 in row order."""
    present = [v for v in vision if v is not None]
    keys = present[0].tensors.keys()
    return {k: torch.cat([v.tensors[k] for v in present]).to(device) for k in keys}


PLACEHOLDER_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id",
                      "vision_end_token_id")


def placeholder_token_ids(config) -> list[int]:
    """The ids of a VLM's image/video placeholder tokens (Qwen-VL: <|image_pad|>, <|video_pad|>,
    <|vision_start|>, <|vision_end|>); [] for a text model. They belong in prompts only: the
    forward fills each placeholder with a vision feature and gives it an M-RoPE position from the
    image grid, so a response holding one cannot be scored (one feature short; transformers'
    get_rope_index fails on the positions). Rollout engines never sample them."""
    if not is_vision_config(config):
        return []
    return sorted({int(i) for i in (getattr(config, f, None) for f in PLACEHOLDER_FIELDS)
                   if i is not None})


def _rope_index(model):
    for module in (model, getattr(model, "model", None)):
        fn = getattr(module, "get_rope_index", None)
        if fn is not None:
            return fn
    return None


def forward_kwargs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   vision: Sequence[VisionInputs | None] | None) -> dict[str, Any]:
    """The forward arguments a batch's images add: {} when no row has images (the text path);
    else the pixel inputs (`batch_tensors`) and, for M-RoPE models, the 3-D `position_ids`
    [3, B, L] of the (left- or right-padded) batch."""
    if not vision or all(v is None for v in vision):
        return {}
    device = input_ids.device
    kwargs: dict[str, Any] = batch_tensors(vision, device)
    rope_index = _rope_index(model)
    if rope_index is not None:
        config = model.config
        types = (input_ids == config.image_token_id).long()
        video = getattr(config, "video_token_id", None)
        if video is not None:
            types = types + 2 * (input_ids == video).long()
        args = {"input_ids": input_ids, "image_grid_thw": kwargs.get("image_grid_thw"),
                "attention_mask": attention_mask}
        if "mm_token_type_ids" in inspect.signature(rope_index).parameters:
            args["mm_token_type_ids"] = types
        positions, _ = rope_index(**args)
        kwargs["position_ids"] = positions
    return kwargs
