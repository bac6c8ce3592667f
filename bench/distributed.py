"""Step time of the data-parallel loop: 1 process vs torchrun with N processes, same config.

The run: the embedded default's RL loop (tiny model, the addition + reverse suite, RLSD) without
its warm-up, `--steps` steps of `--prompts` prompts x 8 samples, each process on one thread.
World size 1 is the plain `rlsd train`; N is `torchrun --standalone --nproc-per-node N -m
rlsd_core.cli train` on gloo (CUDA: nccl, one GPU per process). Per stage, the median over steps
2.. of the `time/<stage>_s` metrics (rank 0's), the best of `--repeats` interleaved runs, and
the ratio N / 1. On a 2-core CPU two
processes share the cores, so this measures overhead, not a speed-up: the collectives (FSDP's
all-gathers and reduce-scatters, the record gathering) and what runs on every rank.

    python bench/distributed.py [--nproc 2] [--steps 6] [--prompts 16] [--repeats 2]

Prints a table; exits 0 whatever the numbers are (it measures, it does not gate).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(nproc: int, args, root: Path,
            env: dict) -> tuple[tuple[float, float], dict[str, float]]:
    """((wall s, CPU s of all ranks), median seconds per stage) of one run."""
    out = root / f"run-{nproc}"
    cli = ["-m", "rlsd_core.cli", "train", "--steps", str(args.steps), "--threads", "1",
           "--warmup.enabled", "false", "--rollout.prompts_per_step", str(args.prompts),
           "--eval.every", "0", "--set", "tasks.0.eval_size=8", "--set", "tasks.1.eval_size=8",
           "--log.console", "false", "--log.plot", "false", "--output_dir", str(out)]
    cmd = ([sys.executable, *cli] if nproc == 1 else
           [str(Path(sys.executable).with_name("torchrun")), "--standalone",
            f"--nproc-per-node={nproc}", *cli])
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 2]
    # Every timed stage the loop logs (time/<stage>_s), in its order: not a fixed list, so the
    # table follows the loop when stages are split or added.
    stages = [k[len("time/"):-len("_s")] for k in steps[0] if k.startswith("time/")]
    return (wall, cpu), {s: statistics.median(r[f"time/{s}_s"] for r in steps) for s in stages}


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process: all ranks, less sensitive
    than wall time to other jobs on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; best kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlsd-bench-dist-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "RLSD_CACHE": os.environ.get("RLSD_CACHE", str(root / "cache")),
               "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", "from rlsd_core.models import resolve_model; "
                        "resolve_model('tiny')"], env=env, check=True)
        load = os.getloadavg()[0]
        # Interleaved repeats, the best of each: on a shared machine other jobs come and go.
        runs: dict[int, list] = {1: [], args.nproc: []}
        for _ in range(args.repeats):
            for n in runs:
                runs[n].append(one_run(n, args, root, env))
        results = {n: ((min(r[0][0] for r in rs), min(r[0][1] for r in rs)),
                       {s: min(r[1][s] for r in rs) for s in rs[0][1]}) for n, rs in runs.items()}
    one, many = results[1][1], results[args.nproc][1]
    print(f"tiny model, {args.prompts} prompts x 8 samples, {args.steps} steps, 1 thread per "
          f"process, {os.cpu_count()} CPUs, load average {load:.1f} at start")
    print(f"{'stage (s, median of steps 2..)':32} {'1 process':>10} {f'{args.nproc} ranks':>10} "
          f"{'ratio':>7}")
    for stage in [s for s in one if s in many]:
        ratio = many[stage] / one[stage] if one[stage] > 0 else float("nan")
        print(f"{stage:32} {one[stage]:10.3f} {many[stage]:10.3f} {ratio:7.2f}")
    for i, what in enumerate(("whole run, wall s", "whole run, CPU s (all ranks)")):
        a, b = results[1][0][i], results[args.nproc][0][i]
        print(f"{what:32} {a:10.1f} {b:10.1f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
