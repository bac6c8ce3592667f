"""rlsd verifiers as verl's custom reward function.

verl's reward managers call, per sample (naive, dapo, the reward loop's managers; sometimes
from several threads at once):

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...,
                  **custom_reward_function.reward_kwargs) -> float | {"score": float, ...}

and the `batch` manager calls `compute_score(data_sources=, solution_strs=, ground_truths=,
extra_infos=, **reward_kwargs) -> list`. Here:

    data_source -> a route (a mapping from data source to verifier: data, not an if/elif chain;
                   exact names first, then glob patterns such as "aime*", then "*")
                -> the route's VerifierRuntime (built once per process, reused by every call)
    ground_truth -> the row's `answer` column (or the route's `ground_truth_column`); the
                   sample's extra_info fills the other columns
    Verdict -> a float, or with return_dict=True verl's dict form: score, acc, pred, verdict,
               infra (the same keys for every sample, as verl's reward_extra_info needs)

verl has no "no reward" value, so an infrastructure fault (a crashed verifier, a sandbox that
could not start, a bad gold) scores `infra_score` (default 0.0) and is flagged `infra: 1.0` in
the dict form and counted in a log warning. Point verl at it with
`custom_reward_function.path=pkg://rlsd_core.integrations.verl` and `name=compute_score`
(docs/integrations.md). Importing this module does not import verl.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..plugins import PluginManager
from ..rewards import VerifierRuntime
from ..verdict import Category, Verdict
from .scoring import registry

logger = logging.getLogger(__name__)

# verl's own data sources (verl/utils/reward_score) whose answers rlsd's `math` verifier checks;
# anything else needs a route of its own (or a "*" route).
DEFAULT_ROUTES: dict[str, Any] = {
    "openai/gsm8k": "math",
    "lighteval/MATH": "math",
    "DigitalLearningGmbH/MATH-lighteval": "math",
    "HuggingFaceH4/MATH-500": "math",
    "math": "math",
    "math_dapo": "math",
    "math_dapo_reasoning": "math",
    "aime*": "math",
}

# Keywords verl's managers may add that concern other reward paths; accepted and ignored.
VERL_EXTRA_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer",
                               "sandbox_fusion_url", "concurrent_semaphore", "memory_limit_mb"})


@dataclass(frozen=True, eq=False)  # hashed by identity: the router groups samples by route
class Route:
    """Where one data source's samples go: a verifier, its options, the column of the gold."""

    verifier: str
    options: Mapping[str, Any] = field(default_factory=dict)
    ground_truth_column: str = "answer"

    @classmethod
    def parse(cls, source: str, spec: Any) -> "Route":
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, Mapping) and isinstance(spec.get("verifier"), str):
            unknown = set(spec) - {"verifier", "options", "ground_truth_column"}
            if not unknown:
                return cls(spec["verifier"], dict(spec.get("options") or {}),
                           spec.get("ground_truth_column", "answer"))
        raise ValueError(f"route {source!r}: expected a verifier name or a mapping with keys "
                         f"verifier, options, ground_truth_column; got {spec!r}")


class Router:
    """data_source -> Route -> VerifierRuntime; one runtime per (verifier, options), built on
    first use and kept (thread-safe: verl's reward loop calls from executor threads)."""

    def __init__(self, routes: Mapping[str, Any] | None = None, *,
                 runtime: Mapping[str, Any] | None = None, plugins: PluginManager | None = None) -> None:
        self.routes = {str(k): Route.parse(str(k), v) for k, v in (routes or DEFAULT_ROUTES).items()}
        self.runtime_options = dict(runtime or {})
        self._plugins = plugins
        reg = registry(plugins)
        for route in self.routes.values():  # an unknown verifier fails here, not mid-training
            reg.verifier(route.verifier)
        self._runtimes: dict[str, VerifierRuntime] = {}
        self._lock = threading.Lock()
        self.infra_faults = 0

    def route(self, data_source: str) -> Route:
        found = self.routes.get(data_source)
        if found is None:
            found = next((r for pattern, r in self.routes.items()
                          if pattern != "*" and fnmatch.fnmatchcase(data_source, pattern)),
                         self.routes.get("*"))
        if found is None:
            raise KeyError(f"rlsd: no route for data_source {data_source!r} (routes: "
                           f"{sorted(self.routes)}). Add one in custom_reward_function.reward_kwargs."
                           f"routes, e.g. {{{data_source!r}: 'math'}}, or a '*' route")
        return found

    def runtime(self, route: Route) -> VerifierRuntime:
        key = json.dumps([route.verifier, route.options], sort_keys=True, default=repr)
        with self._lock:
            rt = self._runtimes.get(key)
            if rt is None:
                rt = VerifierRuntime(registry(self._plugins).verifier(route.verifier), route.options,
                                     **self.runtime_options)
                self._runtimes[key] = rt
            return rt

    def score(self, data_sources: Sequence[str], solution_strs: Sequence[Any],
              ground_truths: Sequence[Any], extra_infos: Sequence[Any]) -> list[Verdict]:
        """One Verdict per sample; the samples of each route are scored in one batch (the
        reward cache and the worker pool see them together)."""
        n = len(solution_strs)
        if not len(data_sources) == len(ground_truths) == len(extra_infos) == n:
            raise ValueError(f"rlsd: {len(data_sources)} data sources, {n} solutions, "
                             f"{len(ground_truths)} ground truths, {len(extra_infos)} extra_infos")
        by_route: dict[Route, list[int]] = {}
        for i, source in enumerate(data_sources):
            by_route.setdefault(self.route(str(source)), []).append(i)
        out: list[Verdict | None] = [None] * n
        for route, idx in by_route.items():
            rows = [_row(route, ground_truths[i], extra_infos[i]) for i in idx]
            for i, v in zip(idx, self.runtime(route).score([solution_strs[i] for i in idx], rows)):
                out[i] = v
        self._count(v for v in out if v is not None and v.is_infra)
        return out  # type: ignore[return-value]

    def _count(self, faults) -> None:
        new = sum(1 for _ in faults)
        if not new:
            return
        with self._lock:
            before, self.infra_faults = self.infra_faults, self.infra_faults + new
        # 1, 10, 100, ... faults: visible without flooding a log verl fills per sample.
        if len(str(self.infra_faults)) > len(str(before)) or before == 0:
            logger.warning("rlsd: %d infrastructure faults so far (verifier crash, sandbox or gold "
                           "error); verl has no 'no reward', so they score infra_score",
                           self.infra_faults)

    def close(self) -> None:
        with self._lock:
            for rt in self._runtimes.values():
                rt.close()
            self._runtimes.clear()


def _row(route: Route, ground_truth: Any, extra_info: Any) -> dict:
    row = dict(_plain(extra_info)) if isinstance(extra_info, Mapping) else {}
    row[route.ground_truth_column] = _plain(ground_truth)
    return row


def _plain(value: Any) -> Any:
    """OmegaConf containers and numpy arrays (what verl hands over) as plain Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    return value


_ROUTERS: dict[str, Router] = {}
_ROUTERS_LOCK = threading.Lock()


def router(routes: Mapping[str, Any] | None = None, runtime: Mapping[str, Any] | None = None) -> Router:
    """The process's Router for this configuration (built on the first call, then reused: verl
    calls compute_score once per sample)."""
    routes, runtime = _plain(routes or DEFAULT_ROUTES), _plain(runtime or {})
    key = json.dumps([routes, runtime], sort_keys=True, default=repr)
    with _ROUTERS_LOCK:
        found = _ROUTERS.get(key)
        if found is None:
            found = _ROUTERS[key] = Router(routes, runtime=runtime)
        return found


def result(verdict: Verdict, *, return_dict: bool = False, infra_score: float = 0.0) -> float | dict:
    """A Verdict in verl's terms (see the module docstring)."""
    score = float(infra_score) if verdict.is_infra else verdict.reward
    if not return_dict:
        return score
    return {"score": score, "acc": float(verdict.category is Category.OK),
            "pred": verdict.answer or "", "verdict": verdict.category.value,
            "infra": float(verdict.is_infra)}


def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
    unknown = set(kwargs) - VERL_EXTRA_KWARGS
    if unknown:
        raise TypeError(f"rlsd compute_score: unknown keyword(s) {sorted(unknown)}; rlsd reads "
                        "routes, runtime, return_dict, infra_score from reward_kwargs")


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, *,
                  routes: Mapping[str, Any] | None = None, runtime: Mapping[str, Any] | None = None,
                  return_dict: bool = False, infra_score: float = 0.0, **kwargs: Any) -> float | dict:
    """verl's custom reward function: one sample's score from the verifier its data_source
    routes to. routes: {data_source or glob: verifier name | {verifier, options,
    ground_truth_column}} (default DEFAULT_ROUTES); runtime: VerifierRuntime settings (workers,
    timeout, ...); return_dict: verl's dict form; infra_score: the score of an infrastructure
    fault. All four come from `custom_reward_function.reward_kwargs`."""
    _check_kwargs(kwargs)
    verdict = router(routes, runtime).score([data_source], [solution_str], [ground_truth],
                                            [extra_info])[0]
    return result(verdict, return_dict=return_dict, infra_score=infra_score)


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any], extra_infos: Sequence[Any] | None = None, *,
                        routes: Mapping[str, Any] | None = None,
                        runtime: Mapping[str, Any] | None = None, return_dict: bool = False,
                        infra_score: float = 0.0,
                        **kwargs: Any) -> list[float | dict]:
    """The same for verl's `batch` reward manager (reward_manager.name=batch): every sample of
    a route scored in one runtime call, so the reward cache and the worker pool see the batch."""
    _check_kwargs(kwargs)
    extra = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    verdicts = router(routes, runtime).score(list(data_sources), list(solution_strs),
                                             list(ground_truths), extra)
    return [result(v, return_dict=return_dict, infra_score=infra_score) for v in verdicts]
