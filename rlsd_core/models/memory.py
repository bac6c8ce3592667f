"""Measuring what a forward keeps for its backward pass: the activation memory that gradient
checkpointing trades for recomputation. Used by the memory test and bench/gpu_memory.py."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def saved_activations(model: torch.nn.Module) -> Iterator[dict[int, int]]:
    """Within the block, record every tensor autograd saves for the backward pass, the model's
    own weights excluded: yields {storage pointer: bytes}, so `sum(d.values())` is the bytes of
    distinct storages kept (a view saved twice counts once)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen
