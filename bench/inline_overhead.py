"""What the in_process deadline costs: `exact_match` scored through VerifierRuntime as it is now
(a helper thread per batch with a deadline per sample, a deep copy of each row), against the
same runtime with the plugin called in the caller's thread (no deadline), with and without the
row copy (the latter is what an in_process record cost before it had a deadline). All three
interleaved in the same run, per batch size.

    .venv/bin/python bench/inline_overhead.py [--samples 20000] [--repeats 5]

Prints microseconds per sample (median of the repeats) and the ratio to the old way.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rlsd_core.rewards import VerifierRuntime, call_verifier
from rlsd_core.rewards.inline import call_once
from rlsd_verifiers.exact_match import RECORD


def in_caller(copy_rows: bool):
    """A stand-in for InlineCaller.run that calls the plugin in the caller's thread."""
    def run(items):
        if copy_rows:
            out = [call_once(RECORD, text, row, {}) for text, row in items]
        else:
            out = [call_verifier(RECORD, [text], [row], {})[0] for text, row in items]
        return out, len(items)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = [{"answer": str(i % 97), "prompt": f"what is {i} mod 97?", "id": i}
            for i in range(args.samples)]
    completions = [f"The answer is \\boxed{{{(i * 7) % 97}}}" for i in range(args.samples)]
    ways = {"old (no deadline, no copy)": in_caller(False), "no deadline, copy": in_caller(True)}
    print(f"exact_match, {args.samples} samples, median of {args.repeats}, microseconds per sample")
    print(f"{'batch':>6} " + " ".join(f"{w:>27}" for w in [*ways, "now (deadline, copy)"]) + "   now/old")
    with VerifierRuntime(RECORD) as rt:
        now = rt._inline.run
        ways["now (deadline, copy)"] = now
        for batch in (8, 64, 512):
            times = {w: [] for w in ways}
            for _ in range(args.repeats):
                for name, run in ways.items():
                    rt._inline.run = run
                    t0 = time.perf_counter()
                    for lo in range(0, args.samples, batch):
                        rt.score(completions[lo:lo + batch], rows[lo:lo + batch])
                    times[name].append((time.perf_counter() - t0) / args.samples * 1e6)
            med = {w: statistics.median(t) for w, t in times.items()}
            old = med["old (no deadline, no copy)"]
            print(f"{batch:>6} " + " ".join(f"{med[w]:>27.1f}" for w in ways)
                  + f"   {med['now (deadline, copy)'] / old:>7.2f}")
        rt._inline.run = now


if __name__ == "__main__":
    main()
