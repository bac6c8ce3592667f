"""The verifier runtime: the only way rlsd calls a verifier, built-in or third-party.

Data flow: rollouts (completions) + dataset rows -> VerifierRuntime.score -> one Verdict per
completion, in order. The runtime owns everything that must not be left to each plugin:

1. input hygiene in the parent, before any parser (`rlsd_core.hygiene`): non-str is
   `invalid_input`, declared columns must be present, the text is capped keeping its tail and
   normalised;
2. a reward cache (`rlsd_core.rewards.cache`) keyed by (verifier name and version, options, gold
   columns, the record's normalised extracted answer), so that the samples of a group that reach
   the same final answer are verified once;
3. a pool of worker processes (`rlsd_core.rewards.pool`) with a hard wall-clock deadline per
   sample enforced from the parent;
4. BaseException caught at the plugin boundary (`rlsd_core.rewards.boundary`) and validation of
   what comes back (a finite reward in [0, 1], one per sample; anything else is
   `verifier_error`, never broadcast, never NaN).

`score` works from any thread and `ascore` from asyncio; the caller's own alarms are left alone.
Records that declare `in_process=True` (cheap, safe verifiers such as exact_match) are called
in this process, on a helper thread with the same deadline (`rlsd_core.rewards.inline`): one
that overruns it gets `timeout` and the record moves to the worker pool for good.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import warnings
import weakref
from concurrent.futures import Future
from typing import Any, Mapping, Sequence

from ..hygiene import DEFAULT_MAX_CHARS, clean_tail
from ..records import VerifierRecord, check_options
from ..verdict import Category, Verdict
from .boundary import coerce_result, missing_columns
from .cache import DEFAULT_CACHE_SIZE, RewardCache
from .inline import InlineCaller
from .pool import Counters, _Pool

# A sandboxed (code) verifier gets the source unchanged: NFKC or tail-cutting would change what
# the program means. It is only type-checked and rejected above this many characters.
DEFAULT_MAX_CODE_CHARS = 1_000_000


# ------------------------------------------------------------------------------------------
# The public runtime
# ------------------------------------------------------------------------------------------

class VerifierRuntime:
    """Scores batches with one verifier record and its options.

    workers: size of the process pool (ignored for in_process records).
    timeout: hard wall-clock deadline per sample in seconds (default: record.time_budget_s).
    max_chars: input cap; answer text keeps its tail (default 20,000), a sandboxed verifier's
      source is rejected above it (default 1,000,000).
    cache: size of the reward cache (0 disables it); records with cacheable=False or no
      cache_key are never cached.
    memory_limit_mb: RLIMIT_AS of each worker (default 4096 for verifiers that parse text,
      none for sandboxed verifiers, which set their own limits on their children).
    """

    def __init__(self, record: VerifierRecord, options: Mapping[str, Any] | None = None, *,
                 workers: int = 1, timeout: float | None = None, max_chars: int | None = None,
                 cache: int = DEFAULT_CACHE_SIZE, memory_limit_mb: int | None = -1) -> None:
        self.record = record
        # The record's declared options, checked before any worker starts (OptionsError).
        self.options = check_options(record, options)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self.timeout = float(timeout if timeout is not None else record.time_budget_s)
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self.is_code = bool(record.needs_sandbox)
        self.max_chars = int(max_chars or (DEFAULT_MAX_CODE_CHARS if self.is_code else DEFAULT_MAX_CHARS))
        if memory_limit_mb == -1:
            memory_limit_mb = None if self.is_code else 4096
        self._memory_limit_mb = memory_limit_mb
        self._cache = RewardCache(record, self.options, cache)
        self._counters = Counters()
        self._pool: _Pool | None = None
        self._inline: InlineCaller | None = None
        self._demote_lock = threading.Lock()
        self._closed = False
        if record.startup_check is not None:
            # Refuse here, loudly, rather than mask every sample later (e.g. no bubblewrap).
            record.startup_check(**self.options)
        if record.in_process:
            self._inline = InlineCaller(record, self.options, self.timeout)
        else:
            self._start_pool()

    def _start_pool(self) -> None:
        self._pool = _Pool(self.record, self.options, self.workers, self.timeout,
                           self._memory_limit_mb, self._counters)
        self._finalizer = weakref.finalize(self, _Pool.close, self._pool)

    def _demote(self) -> None:
        """An in_process record overran its deadline: from now on it runs in the worker pool,
        where deadlines are hard. A record that cannot be sent to a worker stays in process
        (each overrun then abandons one more helper thread)."""
        with self._demote_lock:  # callers on several threads may overrun at once
            if self._inline is None or self._pool is not None:
                self._inline = None
                return
            try:
                self._start_pool()
            except ValueError:
                return
            self._inline = None
        warnings.warn(f"verifier {self.record.name!r} declares in_process=True but overran its "
                      f"{self.timeout:g} s deadline; rlsd runs it in worker processes from now on",
                      RuntimeWarning, stacklevel=3)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        """One Verdict per completion, in order. Blocks the calling thread only."""
        out, pending = self._prepare(completions, rows)
        for idx, fut, key, followers in pending:
            self._complete(out, idx, fut.result(), key, followers)
        return out  # type: ignore[return-value]

    async def ascore(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        """`score` for asyncio: awaits the workers without blocking the event loop."""
        out, pending = self._prepare(completions, rows)
        if pending:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for _i, f, _k, _f in pending))
            for (idx, _fut, key, followers), verdict in zip(pending, results):
                self._complete(out, idx, verdict, key, followers)
        return out  # type: ignore[return-value]

    def _prepare(self, completions, rows):
        if self._closed:
            raise RuntimeError("the verifier runtime is closed")
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        n = len(completions)
        out: list[Verdict | None] = [None] * n
        todo: list[tuple[int, str, Mapping]] = []
        for i, (c, r) in enumerate(zip(completions, rows)):
            bad = missing_columns(self.record, r)
            text = None
            if bad is None:
                text, bad = self._clean(c)
            if bad is not None:
                out[i] = bad
            else:
                todo.append((i, text, r))
        self._counters.bump("samples", n)
        # cache look-ups, and one call per distinct key within the batch
        leaders: dict[Any, tuple[int, list[int]]] = {}
        work: list[tuple[int, str, Mapping, Any, list[int]]] = []
        for i, text, r in todo:
            key = self._cache.key(text, r)
            if key is not None:
                self._counters.bump("cache_lookups")
                hit = self._cache.get(key)
                if hit is not None:
                    self._counters.bump("cache_hits")
                    out[i] = hit
                    continue
                if key in leaders:
                    self._counters.bump("cache_hits")
                    leaders[key][1].append(i)
                    continue
                followers: list[int] = []
                leaders[key] = (i, followers)
                work.append((i, text, r, key, followers))
            else:
                work.append((i, text, r, None, []))
        self._counters.bump("verifier_calls", len(work))
        pending = []
        while work and self._inline is not None:
            done, stop = self._inline.run([(text, r) for _i, text, r, _k, _f in work])
            for (i, _text, _r, key, followers), verdict in zip(work, done):
                fut: Future = Future()
                fut.set_result(verdict)
                pending.append((i, fut, key, followers))
            work = work[stop + 1:]
            if stop < len(done):  # a sample overran: the rest go to the pool (when it can)
                self._counters.bump("timeouts")
                self._demote()
        pending += [(i, self._pool.submit(text, r), key, followers)
                    for i, text, r, key, followers in work]
        return out, pending

    def _complete(self, out, idx, verdict, key, followers) -> None:
        if not isinstance(verdict, Verdict):
            verdict = coerce_result(verdict)
        out[idx] = verdict
        for j in followers:
            out[j] = verdict
        if key is not None:
            self._cache.put(key, verdict)
        if verdict.category is Category.VERIFIER_ERROR:
            self._counters.bump("verifier_errors", 1 + len(followers))

    def _clean(self, value: Any) -> tuple[str | None, Verdict | None]:
        if not self.is_code:
            return clean_tail(value, self.max_chars)
        if not isinstance(value, str):
            return None, Verdict.fail(Category.INVALID_INPUT,
                                      f"completion must be a str, got {type(value).__name__}")
        if len(value) > self.max_chars:
            return None, Verdict.fail(Category.INPUT_TOO_LARGE,
                                      f"source is {len(value)} characters (limit {self.max_chars})")
        return value, None

    @property
    def stats(self) -> dict[str, float]:
        """Counters since construction: samples, verifier_calls, cache_lookups, cache_hits,
        cache_hit_rate, timeouts, crashes, verifier_errors, workers_started."""
        s: dict[str, float] = self._counters.snapshot((
            "samples", "verifier_calls", "cache_lookups", "cache_hits", "timeouts", "crashes",
            "verifier_errors", "workers_started"))
        s["cache_hit_rate"] = s["cache_hits"] / s["cache_lookups"] if s["cache_lookups"] else 0.0
        return s

    @property
    def cache_hit_rate(self) -> float:
        return float(self.stats["cache_hit_rate"])

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- the pool ----------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until every worker has imported the verifier (True), or give up (False)."""
        return True if self._pool is None else self._pool.wait_ready(timeout)

    def worker_pids(self) -> list[int]:
        return [] if self._pool is None else self._pool.pids()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._finalizer.detach()
            self._pool.close()

    def __enter__(self) -> "VerifierRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
