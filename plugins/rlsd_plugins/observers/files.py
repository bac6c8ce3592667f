"""metrics.jsonl (one JSON object per step, every diagnostic) and samples.jsonl (a few decoded
responses every N steps), both in the run directory, flushed after each line so a crashed run
keeps everything up to its last step."""

from __future__ import annotations

import json
import math


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlObserver:
    def before_run(self, run) -> None:
        # A resumed run (start_step > 1) appends after the lines its checkpoint kept.
        mode = "a" if getattr(run, "start_step", 1) > 1 else "w"
        self.fh = open(run.run_dir / "metrics.jsonl", mode, encoding="utf-8")

    def after_step(self, run, step, metrics) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items() if k != "step"}}
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        fh = getattr(self, "fh", None)
        if fh is not None and not fh.closed:
            fh.close()


class SamplesObserver:
    """The first response of the first few groups of every `every`-th rollout."""

    def __init__(self, every: int, per_step: int = 4) -> None:
        self.every, self.per_step = every, per_step

    def before_run(self, run) -> None:
        mode = "a" if getattr(run, "start_step", 1) > 1 else "w"
        self.fh = open(run.run_dir / "samples.jsonl", mode, encoding="utf-8")

    def after_rollout(self, run, step, samples) -> None:
        if step != 1 and step % self.every:
            return
        group = max(1, run.config.get("rollout", {}).get("group_size", 1))
        for s in samples[::group][: self.per_step]:
            self.fh.write(json.dumps({"step": step, **s}) + "\n")
        self.fh.flush()

    def close(self) -> None:
        fh = getattr(self, "fh", None)
        if fh is not None and not fh.closed:
            fh.close()
