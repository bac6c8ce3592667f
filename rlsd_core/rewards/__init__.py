"""Rewards: how rlsd scores completions with verifiers, built-in or third-party.

    completions + rows -> hygiene (rlsd_core.hygiene) -> reward cache -> plugin boundary
    (in process) or the worker pool (hard deadlines) -> one Verdict per completion

Modules: `runtime` (VerifierRuntime, the only way rlsd calls a verifier), `pool` (worker
processes and their deadlines), `cache` (the reward cache), `boundary` (calling a plugin's fn
and validating its results), `weighted` (several verifiers averaged by weight; `build_scorer`).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ..verdict import Verdict
from .boundary import call_verifier, coerce_result
from .cache import CACHEABLE_CATEGORIES, RewardCache
from .runtime import VerifierRuntime
from .weighted import WeightedVerifiers, build_scorer


@runtime_checkable
class Scorer(Protocol):
    """What scores a task's samples (VerifierRuntime and WeightedVerifiers both are one)."""

    def score(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]: ...

    @property
    def stats(self) -> dict[str, float]: ...

    def close(self) -> None: ...


__all__ = ["CACHEABLE_CATEGORIES", "RewardCache", "Scorer", "VerifierRuntime", "WeightedVerifiers",
           "build_scorer", "call_verifier", "coerce_result"]
