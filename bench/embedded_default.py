"""Wall time of the README's main job: `rlsd train` with no arguments, against its budget.

Runs the embedded default twice in fresh subprocesses: cold (empty cache: tokenizer, tiny model
and supervised warm-up are built) and warm (cache reused, so only RL and evaluation run). The
budget (issue: <= 5 minutes on a 2-core machine including the first-run warm-up) applies to the
cold run. Prints a table; exits 0 whatever the numbers are (this measures, it does not gate).

    python bench/embedded_default.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 300.0


def one_run(cache: Path, out: Path) -> tuple[float, dict]:
    env = {**os.environ, "RLSD_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlsd_core.cli", "train", "--output_dir", str(out)],
                   env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="cold/warm pairs (medians are printed)")
    args = parser.parse_args()
    cold, warm, summary = [], [], {}
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            seconds, summary = one_run(tmp / "cache", tmp / "cold")
            cold.append(seconds)
            warm.append(one_run(tmp / "cache", tmp / "warm")[0])
    print(f"{'run':<22}{'median s':>10}{'runs':>6}{'budget s':>10}{'ratio':>8}")
    for name, values in (("cold (first run)", cold), ("warm (cached warm-up)", warm)):
        med = statistics.median(values)
        print(f"{name:<22}{med:>10.1f}{len(values):>6}{BUDGET_S:>10.0f}{med / BUDGET_S:>8.2f}")
    print("\nheld-out greedy accuracy (last cold run): task  before -> after")
    for task, v in summary.get("tasks", {}).items():
        print(f"  {task:<12}{v['heldout_before']:.3f} -> {v['heldout_after']:.3f}")
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
