"""Event hooks reach every registered observer with the documented keyword arguments
(the trainer's own tests check that it fires them at the right moments)."""

from __future__ import annotations

from rlsd_core import hookimpl
from rlsd_core import RunInfo


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def rlsd_before_run(self, run):
        self.calls.append(("rlsd_before_run", run.total_steps))

    @hookimpl
    def rlsd_after_rollout(self, run, step, samples):
        self.calls.append(("rlsd_after_rollout", step, len(samples)))

    @hookimpl
    def rlsd_after_step(self, run, step, metrics):
        self.calls.append(("rlsd_after_step", step, metrics["loss"]))

    @hookimpl
    def rlsd_after_run(self, run, summary):
        self.calls.append(("rlsd_after_run", summary["steps"]))

    @hookimpl
    def rlsd_on_error(self, run, step, error):
        self.calls.append(("rlsd_on_error", step, type(error).__name__))


def test_each_event_hook_reaches_observers(empty_pm):
    pm = empty_pm  # the built-in observers would write files; only dispatch is under test here
    rec = Recorder()
    run = RunInfo(config={}, total_steps=2)
    pm.register(rec, "recorder")
    try:
        pm.hook.rlsd_before_run(run=run)
        pm.hook.rlsd_after_rollout(run=run, step=1, samples=[{"reward": 1.0}] * 3)
        pm.hook.rlsd_after_step(run=run, step=1, metrics={"loss": 0.25})
        pm.hook.rlsd_on_error(run=run, step=2, error=RuntimeError("x"))
        pm.hook.rlsd_after_run(run=run, summary={"steps": 2})
    finally:
        pm.unregister("recorder")
    assert rec.calls == [("rlsd_before_run", 2), ("rlsd_after_rollout", 1, 3),
                         ("rlsd_after_step", 1, 0.25), ("rlsd_on_error", 2, "RuntimeError"),
                         ("rlsd_after_run", 2)]
    # unregistered afterwards: no further calls
    pm.hook.rlsd_before_run(run=run)
    assert len(rec.calls) == 5
