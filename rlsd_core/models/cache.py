"""Where rlsd caches what it builds locally: the tiny model, dequantised GGUF models, warm-ups."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$RLSD_CACHE, else ~/.cache/rlsd."""
    return Path(os.environ.get("RLSD_CACHE", Path.home() / ".cache" / "rlsd"))
