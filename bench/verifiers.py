"""Benchmark: rlsd's math verifier vs Math-Verify 0.9.0, both under the same hard deadline.

    python bench/verifiers.py [--workers 2] [--timeout 5] [--repeats 3] [--show-errors]

Every labeled source is scored separately: rlsd's own defect-class rows (tests/math_cases.py),
the reasoning-gym set (tests/math_labeled.py), and each peer suite (tests/peer_suites.py: rows
from other graders' tests). All three engines run through rlsd_core.rewards.VerifierRuntime
(the way a trainer must run them to be safe): the same worker count, the same per-sample
wall-clock deadline, the cache off:
  - rlsd math: rlsd's extraction and its own comparison;
  - Math-Verify 0.9.0 as its docs advise (parse the completion, verify against the gold);
  - rlsd extraction + Math-Verify: rlsd's hygiene, extraction and hedge rules, then
    Math-Verify's parser and comparison (the engine alternative considered in issue 17).
It prints accuracy per source (false positives and negatives apart), then throughput on all
rows: items per second under the deadline and the CPU the workers spent per item in the same
runs (the steadier number on a shared machine), medians of the interleaved rounds, peak worker
RSS; then rlsd's reward-cache hit rate on grouped samples.

Every round starts fresh worker processes and warms them on other rows (WARM_UP and a
reasoning-gym build with another seed) before the clock starts, so that imports are done but
no measured row has been seen: a row's parse is never a cache hit (sympy's and antlr's caches
would otherwise flatter whichever engine ran a row before). Math-Verify runs as its docs
advise, `parse` then `verify` with their default SIGALRM timeouts (they work: each worker calls
them on its main thread), under the runtime's same hard deadline.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

import psutil  # noqa: E402

import math_cases  # noqa: E402
import math_labeled  # noqa: E402
import peer_suites  # noqa: E402
from _mathverify import HYBRID_RECORD  # noqa: E402
from _mathverify import RECORD as MV_RECORD  # noqa: E402
from rlsd_core.rewards import VerifierRuntime  # noqa: E402
from rlsd_verifiers.math import RECORD as RLSD_RECORD  # noqa: E402


class PeakRSS:
    """Samples the RSS of the runtime's worker processes every 20 ms."""

    def __init__(self, runtime: VerifierRuntime) -> None:
        self.runtime = runtime
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.runtime.worker_pids():
                try:
                    self.peak = max(self.peak, psutil.Process(pid).memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run(record, cases, *, workers, timeout, cache):
    rows = [{"answer": c["gold"]} for c in cases]
    completions = [c["completion"] for c in cases]
    with VerifierRuntime(record, workers=workers, timeout=timeout, cache=cache) as rt:
        rt.wait_ready(120)
        # other items than the measured ones, so that every worker has imported what each code
        # path needs (the parser, sympy's solvers, matrices, sums) before the clock starts
        warm = math_labeled.build(items_per_task=1, seed=1) + WARM_UP
        rt.score([c["completion"] for c in warm], [{"answer": c["gold"]} for c in warm])
        rt.clear_cache()
        base = rt.stats
        cpu0 = worker_cpu(rt)
        with PeakRSS(rt) as rss:
            t0 = time.perf_counter()
            out = rt.score(completions, rows)
            elapsed = time.perf_counter() - t0
        cpu1 = worker_cpu(rt)
        stats = rt.stats
        rt.clear_cache()
    infra = {k: stats[k] - base[k] for k in ("timeouts", "crashes", "verifier_errors")}
    return {
        "out": out, "items_s": len(cases) / elapsed, "rss_mb": rss.peak / 2**20,
        "cpu_ms": 1000 * sum(t - cpu0.get(pid, 0.0) for pid, t in cpu1.items()) / len(cases),
        "hit_rate": (stats["cache_hits"] - base["cache_hits"]) / max(
            1, stats["cache_lookups"] - base["cache_lookups"]), **infra,
        **accuracy(cases, out),
    }


def worker_cpu(rt: VerifierRuntime) -> dict[int, float]:
    """User + system CPU seconds of each live worker (a replaced worker's time is lost; the
    table's timeouts and crashes columns say whether any was)."""
    out = {}
    for pid in rt.worker_pids():
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


WARM_UP = [{"completion": c, "gold": g} for c, g in (
    ("$-y > -7$", "y < 7"), ("\\boxed{y \\in [3, 8)}", "3 \\le y < 8"),
    ("$\\begin{pmatrix}2 & 0 \\\\ 0 & 2\\end{pmatrix} + \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$",
     "\\begin{pmatrix}3 & 0 \\\\ 0 & 3\\end{pmatrix}"),
    ("$S = \\sum_{j=1}^{m} j$", "S = \\frac{m(m+1)}{2}"), ("\\boxed{\\pm 7}", "-7, 7"),
    ("\\boxed{\\{2, 9\\}}", "(9, 2)"), ("The time is $7:45$.", "7:45"),
    ("\\boxed{\\cos^2 t + \\sin^2 t}", "1"), ("Final Answer: The final answer is 8.5. I hope", "8.5"))]


def accuracy(cases, out) -> dict:
    fp = sum(1 for c, v in zip(cases, out) if v.reward == 1.0 and not c["expected"])
    fn = sum(1 for c, v in zip(cases, out) if v.reward != 1.0 and c["expected"])
    return {"accuracy": 1 - (fp + fn) / len(cases), "fp": fp, "fn": fn,
            "wrong": [(c.get("source", ""), c.get("origin", c.get("tag", "")), c["completion"][-60:],
                       str(c["gold"])[:40]) for c, v in zip(cases, out)
                      if (v.reward == 1.0) != c["expected"]]}


def sources() -> dict[str, list[dict]]:
    """Every labeled source, by name; rows carry their source."""
    gym = [{**c, "source": "reasoning-gym"} for c in math_labeled.load()]
    out = {"rlsd-classes": math_cases.load(), "reasoning-gym": gym}
    for peer in sorted(peer_suites.PEERS):
        out[peer] = peer_suites.load(peer)
    return out


def median_round(rs: list[dict]) -> dict:
    """The round with the median items/s (its accuracy equals every round's: verdicts are
    deterministic unless a deadline fired, which the timeouts column shows)."""
    return sorted(rs, key=lambda r: r["items_s"])[len(rs) // 2]


def grouped(cases, group_size=8, seed=0):
    """8 samples per prompt: each prompt's samples are drawn from its labeled completions."""
    rng = random.Random(seed)
    by_gold: dict = {}
    for c in cases:
        by_gold.setdefault((c["task"], c["gold"]), []).append(c)
    out = []
    for key in sorted(by_gold, key=str):
        pool = by_gold[key]
        # a policy repeats itself: a few distinct answers, most samples agreeing
        common = rng.sample(pool, k=min(3, len(pool)))
        out += [rng.choice(common[:1] * 5 + common) for _ in range(group_size)]
    return out


ENGINES = (("rlsd math", RLSD_RECORD), ("Math-Verify 0.9.0", MV_RECORD),
           ("rlsd extract + MV", HYBRID_RECORD))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per engine (median kept)")
    ap.add_argument("--show-errors", action="store_true")
    args = ap.parse_args(argv)

    by_source = sources()
    cases = [c for rows in by_source.values() for c in rows]
    gym = by_source["reasoning-gym"]
    groups = grouped(gym)
    print(f"labeled rows: {len(cases)} ({sum(c['expected'] for c in cases)} equivalent) from "
          f"{len(by_source)} sources; {args.workers} workers, {args.timeout:g} s hard deadline per "
          f"sample, {os.cpu_count()} cores, medians of {args.repeats} interleaved rounds; load "
          f"average {os.getloadavg()[0]:.1f}", flush=True)
    rounds: dict = {name: [] for name, _ in ENGINES}
    # Interleave the engines round by round and report medians: on a shared machine the load
    # drifts, and each engine then sees the same drift.
    for _round in range(args.repeats):
        for name, rec in ENGINES:
            rounds[name].append(run(rec, cases, workers=args.workers, timeout=args.timeout,
                                    cache=0))
    results = {name: median_round(rs) for name, rs in rounds.items()}
    g_mv = run(MV_RECORD, groups, workers=args.workers, timeout=args.timeout, cache=0)
    g_rlsd = run(RLSD_RECORD, groups, workers=args.workers, timeout=args.timeout, cache=100_000)

    names = [n for n, _ in ENGINES]
    head = f"{'source':<18}{'rows':>6}" + "".join(f"{n:>22}" for n in names)
    print("\naccuracy per source (FP/FN)")
    print(head)
    print("-" * len(head))
    pos = 0
    for source, rows in list(by_source.items()) + [("all", cases)]:
        sl = slice(pos, pos + len(rows)) if source != "all" else slice(0, len(cases))
        line = f"{source:<18}{len(rows):>6}"
        for n in names:
            a = accuracy(rows, results[n]["out"][sl])
            line += f"{a['accuracy']:>12.1%} ({a['fp']:>2}/{a['fn']:>3})"
        print(line)
        fixed = peer_suites.with_errata(rows) if source != "all" else rows
        if fixed != rows:
            line = f"{source + ' *':<18}{len(rows):>6}"
            for n in names:
                a = accuracy(fixed, results[n]["out"][sl])
                line += f"{a['accuracy']:>12.1%} ({a['fp']:>2}/{a['fn']:>3})"
            print(line)
        if source != "all":
            pos += len(rows)
    print("* the same rows with the labels in tests/peer_suites.py ERRATA corrected: "
          + "; ".join(f"{o}: {why}" for o, why in peer_suites.ERRATA.items()))
    head = (f"{'engine':<20}{'items/s':>10}{'(range)':>12}{'CPU ms/item':>13}{'peak RSS':>11}"
            f"{'timeouts':>10}{'crashes':>9}")
    print("\nthroughput on all rows")
    print(head)
    print("-" * len(head))
    for n in names:
        r = results[n]
        lo, hi = (min(x["items_s"] for x in rounds[n]), max(x["items_s"] for x in rounds[n]))
        print(f"{n:<20}{r['items_s']:>10.0f}{f'({lo:.0f}-{hi:.0f})':>12}{r['cpu_ms']:>13.2f}"
              f"{r['rss_mb']:>8.0f} MB{r['timeouts']:>10}{r['crashes']:>9}")
    mv, me = results["Math-Verify 0.9.0"], results["rlsd math"]
    ratios = sorted(a["items_s"] / b["items_s"] for a, b in
                    zip(rounds["rlsd math"], rounds["Math-Verify 0.9.0"]))
    print(f"\nthroughput rlsd / Math-Verify: {me['items_s'] / mv['items_s']:.2f}x items/s under the "
          f"deadline (median rounds; per round {', '.join(f'{x:.2f}' for x in ratios)}); "
          f"{mv['cpu_ms'] / me['cpu_ms']:.2f}x in worker CPU per item")
    print("(items/s: wall clock through the runtime, sensitive to other load on the machine; CPU "
          "ms/item: user + system time of the worker processes in the same runs)")
    print(f"\ngrouped samples ({len(groups)} = {len(groups) // 8} reasoning-gym prompts x 8):")
    print(f"  Math-Verify (no cache)      {g_mv['items_s']:>8.0f} items/s   accuracy {g_mv['accuracy']:.1%}")
    print(f"  rlsd math with reward cache {g_rlsd['items_s']:>8.0f} items/s   accuracy "
          f"{g_rlsd['accuracy']:.1%}   cache hit rate {g_rlsd['hit_rate']:.1%}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.show_errors:
        for name, r in results.items():
            for w in r["wrong"]:
                print(f"  {name}: {w}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
