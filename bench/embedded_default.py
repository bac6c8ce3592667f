"""The README's main job, `rlsd train` with no arguments: its cost against the budget, and
whether it learns.

Runs the embedded default in fresh subprocesses: cold (empty cache: tokenizer, tiny model and
supervised warm-up are built) and warm (cache reused, so only the teacher check, RL and
evaluation run). The budget (5 minutes on a 2-core machine, first-run warm-up included) applies
to the cold run.

On a shared machine wall time measures the other processes as much as this one, so the table
also gives the CPU seconds of the run's process tree (user + system, from the kernel's child
accounting), the load average before and after, and an idle-machine estimate: CPU seconds /
2 cores x the parallel efficiency measured on an idle machine (`--efficiency`, default 0.97:
468 CPU-s in 240 s wall on 2 cores). Then, per task, held-out greedy accuracy before and after
RL with the standard error of the change (paired over the same problems, as the run's own table
prints it) and whether the change exceeds 2 standard errors, and the step-0 teacher check's
verdict.

    python bench/embedded_default.py [--runs N] [--no-warm] [--json FILE]

Exits 0 whatever the numbers are (this measures, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlsd_core.loop import warmup_record

BUDGET_S = 300.0


def one_run(cache: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "RLSD_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "train", "--output_dir", str(out), *extra],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"rlsd train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    warm = [warmup_record(p) for p in sorted(cache.glob("warmup-*"))]
    return {"wall_s": wall, "cpu_s": cpu, "load_before": load0, "load_after": os.getloadavg()[0],
            "summary": json.loads((out / "summary.json").read_text()), "stderr": proc.stderr,
            "warmup": [{k: w.get(k) for k in ("steps_run", "ready_at", "seconds", "checks")} for w in warm]}


def change(task: dict) -> dict:
    """The change the run's own table prints: its standard error is paired over the same
    held-out problems (`heldout_change_se` in summary.json); a summary without it falls back to
    two independent evaluations, sqrt(b(1-b)/n + a(1-a)/n), which overstates it."""
    n, b, a = task["eval_size"], task["heldout_before"], task["heldout_after"]
    se = task.get("heldout_change_se")
    if se is None:
        se = math.sqrt(b * (1 - b) / n + a * (1 - a) / n)
    return {"before": b, "after": a, "n": n, "change": a - b, "se": se,
            "above_2se": a - b > 2 * se}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="cold/warm pairs (medians are printed)")
    parser.add_argument("--no-warm", action="store_true", help="cold runs only")
    parser.add_argument("--efficiency", type=float, default=0.97,
                        help="parallel efficiency of the run on an idle 2-core machine")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    parser.add_argument("extra", nargs="*", help="extra `rlsd train` flags (after --)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            runs["cold"].append(one_run(tmp / "cache", tmp / "cold", args.extra))
            if not args.no_warm:
                runs["warm"].append(one_run(tmp / "cache", tmp / "warm", args.extra))
    print(f"{'run':<22}{'wall s':>8}{'CPU s':>8}{'idle est s':>11}{'load':>11}{'budget':>8}{'est/budget':>11}")
    for name, rs in runs.items():
        if not rs:
            continue
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        idle = cpu / (2 * args.efficiency)
        load = f"{rs[-1]['load_before']:.1f}-{rs[-1]['load_after']:.1f}"
        print(f"{name:<22}{wall:>8.1f}{cpu:>8.1f}{idle:>11.1f}{load:>11}{BUDGET_S:>8.0f}{idle / BUDGET_S:>11.2f}")
    for i, r in enumerate(runs["cold"]):
        for w in r["warmup"]:
            stop = (f"stopped at step {w['ready_at']} (readiness check passed)" if w["ready_at"]
                    else f"ran {w['steps_run']} steps without passing the readiness check")
            print(f"cold run {i + 1}: warm-up {stop}, {w['seconds']:.0f} s")
    last = runs["cold"][-1]["summary"]
    print("\nheld-out greedy accuracy (last cold run): task  before -> after  (change, 2 SE)")
    changes = {}
    for task, v in last.get("tasks", {}).items():
        c = changes[task] = change(v)
        print(f"  {task:<12}{c['before']:.3f} -> {c['after']:.3f}  ({100 * c['change']:+.1f} pts, "
              f"2 SE {200 * c['se']:.1f}{', above 2 SE' if c['above_2se'] else ''}; n = {c['n']})")
    check = last.get("teacher_check")
    if check:
        print(f"\nteacher check at step 0: {check['verdict']} {check['tasks']} ({check['seconds']:.1f} s)")
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": {k: [{x: r[x] for x in r if x != "stderr"} for r in v]
                                                        for k, v in runs.items()},
                                               "changes": changes, "efficiency": args.efficiency}, indent=1))


if __name__ == "__main__":
    main()
