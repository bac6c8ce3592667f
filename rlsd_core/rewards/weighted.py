"""A task's scorer: one verifier runtime, or several whose rewards are averaged by weight.

Both satisfy `Scorer` (rlsd_core.rewards): `score(completions, rows) -> list[Verdict]`, `stats`,
`close()`. `build_scorer` reads a task's config (`verifier` + `verifier_options`, or
`verifiers: [{name, weight, options}]`) and builds the right one.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..verdict import Verdict
from .runtime import VerifierRuntime


class WeightedVerifiers:
    """Several verifier runtimes scored on the same samples: reward = weighted mean. An infra
    fault of any of them makes the sample's verdict that fault (masked by the trainer, never a
    false 0); otherwise the category and message are the first (primary) verifier's."""

    def __init__(self, parts: list[tuple[float, VerifierRuntime]]) -> None:
        self.parts = parts
        self.total = sum(w for w, _ in parts)

    def score(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        results = [rt.score(completions, rows) for _, rt in self.parts]
        out = []
        for per in zip(*results):
            fault = next((v for v in per if v.is_infra), None)
            if fault is not None:
                out.append(fault)
                continue
            reward = sum(w * v.reward for (w, _), v in zip(self.parts, per)) / self.total
            out.append(Verdict(min(1.0, max(0.0, reward)), per[0].category, per[0].message, per[0].answer))
        return out

    @property
    def stats(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for _, rt in self.parts:
            for k, v in rt.stats.items():
                total[k] = total.get(k, 0) + v
        total["cache_hit_rate"] = (total["cache_hits"] / total["cache_lookups"]
                                   if total.get("cache_lookups") else 0.0)
        return total

    def close(self) -> None:
        for _, rt in self.parts:
            rt.close()


def build_scorer(task, registry, **runtime_options):
    """The object that scores a task (`rlsd_core.data.TaskData`): a VerifierRuntime for its one
    verifier, or WeightedVerifiers when its config lists `verifiers` with weights.
    `runtime_options` (workers, timeout, ...) go to every runtime."""
    if not task.weighted_verifiers:
        return VerifierRuntime(registry.verifier(task.verifier), task.verifier_options,
                               **runtime_options)
    return WeightedVerifiers([(weight, VerifierRuntime(registry.verifier(name), options,
                                                       **runtime_options))
                              for name, weight, options in task.weighted_verifiers])
