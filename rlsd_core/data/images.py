"""Images in rows: what a row may carry, how it is checked before training, where it is placed in
the chat messages, and how it is decoded when a prompt is built.

Data flow:
  task source row (`images`: one reference or a list; after the suite's `columns` mapping)
    -> `attach_images` (rlsd_core.data.tasks.load_task, before any model loads): every image
       normalised to a reference (an absolute path or the encoded bytes) and fully decoded once
       to check it; a bad one is a TaskError naming the task, the row and the fix
    -> the row's `messages`: each image becomes a part {"type": "image", "image": <reference>}
       of the last user message, where the text says `<image>`, else before the text
    -> injectors copy the parts (the teacher sees the same images plus the privileged text)
    -> `rlsd_core.data.prompts.encode_prompt` decodes the references (`load_image`) and hands
       messages + images to the model's vision prompter (rlsd_core.models.vision), which
       expands each image into its tokens and gives the pixel inputs.

A reference is kept, not the decoded picture: rows travel to verifier workers and into the
warm-up's cache key, and a path or a few KB of PNG bytes is cheap to copy where a decoded image
is not. Accepted on input: a path (str or os.PathLike; relative ones against the task's
`image_dir`), bytes, a `datasets` Image value ({"bytes": ..., "path": ...}) or a PIL image
(kept as it is: a task source that builds images in memory).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records import TaskError

IMAGE_COLUMN = "images"
PLACEHOLDER = "<image>"
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # ~7000 x 7000: far above what a VLM processor keeps


def is_image_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "image"


def image_refs(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The image references of chat messages, in the order the model reads them."""
    refs = []
    for m in messages:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, list):
            refs += [p.get("image") for p in content if is_image_part(p)]
    return refs


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow comes with matplotlib, a dependency
        raise TaskError("rows with images need Pillow: pip install pillow") from exc
    return Image


def normalise_ref(ref: Any, base: Path) -> Any:
    """A reference as rlsd keeps it: an absolute path (str), bytes, or a PIL image."""
    Image = _pil()
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, Mapping):  # a `datasets` Image value read with decode=False
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if isinstance(ref, (str, os.PathLike)) and str(ref):
        path = Path(ref).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())
    raise ValueError(f"is a {type(ref).__name__}, not an image path, bytes or a datasets Image "
                     f"value")


def load_image(ref: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """Decode a normalised reference into an RGB PIL image. Raises ValueError saying what is
    wrong (missing file, not an image, too large, truncated)."""
    Image = _pil()
    if isinstance(ref, Image.Image):
        image = ref
    else:
        if isinstance(ref, str) and not Path(ref).is_file():
            raise ValueError(f"file {ref!r} does not exist")
        try:
            image = Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
        except Image.UnidentifiedImageError:
            what = f"file {ref!r}" if isinstance(ref, str) else f"{len(ref)} bytes"
            raise ValueError(f"{what} is not an image Pillow can read") from None
        except Image.DecompressionBombError as exc:  # Pillow's own limit, above ours
            raise ValueError(f"is too large: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:  # checked on the header, before the pixels are decoded
        raise ValueError(f"is too large: {width} x {height} = {width * height:,} pixels, more "
                         f"than max_image_pixels={max_pixels:,}; downscale it or raise the "
                         f"task's max_image_pixels")
    if width < 1 or height < 1:
        raise ValueError(f"is empty ({width} x {height} pixels)")
    try:
        return image.convert("RGB")  # decodes every pixel: a truncated file fails here
    except OSError as exc:
        raise ValueError(f"cannot be decoded ({exc}); the file is damaged or truncated") from None


def place_images(messages: list[dict], refs: list[Any]) -> list[dict]:
    """The messages with the images as parts of the last user message: at each `<image>` of its
    text when it has one per image, else all before the text (the order Qwen-VL models are
    trained on)."""
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m.get("role", "user") == "user")
    text = out[last]["content"]
    if not isinstance(text, str):
        raise ValueError("the last user message already holds parts; give the images in the "
                         "row's `images` column and the text as a string")
    pieces = text.split(PLACEHOLDER)
    if len(pieces) == 1:
        parts = [{"type": "image", "image": r} for r in refs] + [{"type": "text", "text": text}]
    elif len(pieces) - 1 == len(refs):
        parts = []
        for k, piece in enumerate(pieces):
            if piece:
                parts.append({"type": "text", "text": piece})
            if k < len(refs):
                parts.append({"type": "image", "image": refs[k]})
    else:
        raise ValueError(f"its text has {len(pieces) - 1} {PLACEHOLDER} placeholders but the row "
                         f"has {len(refs)} images; write one per image, or none to put them all "
                         f"before the text")
    out[last]["content"] = parts
    return out
