"""The scheduler battery: the properties every magnitude scheduler must have.

    record         the record validates
    constructs     fn(**options) builds a scheduler (a callable)
    magnitude      for steps 1..STEPS, with the diagnostics the loop passes (None at step 1,
                   then dicts that may lack the teacher keys when the teacher was skipped), it
                   returns Magnitude(lam, eps_w) with lam in [0, 1] and eps_w in [0, 1), finite
    deterministic  two schedulers built alike give the same magnitudes
    state_dict     a run resumed at step K (a fresh scheduler, its state loaded from the saved
                   one) continues exactly as the uninterrupted run; the state survives a
                   pickle round trip (checkpoints). A scheduler without state_dict must be a
                   pure function of the step and the diagnostics.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Mapping

from ..records import SchedulerRecord
from .results import Battery, CheckResult, fail, short

SCHEDULER_PROPERTIES = ("record", "constructs", "magnitude", "deterministic", "state_dict")
STEPS = 120
RESUME_AT = 37


def diagnostics(step: int) -> dict | None:
    """What the loop passes at `step` (the previous step's): varied, deterministic values; every
    fourth step without the teacher keys (the teacher forward was skipped)."""
    if step == 1:
        return None
    x = (step * 7919) % 101 / 100.0
    out = {"adv_hat_mean": 0.01 * (x - 0.5), "adv_hat_abs_mean": 0.2 + x, "reward_mean": x,
           "zero_var_frac": 1 - x, "step": step - 1}
    if step % 4:
        out.update({"delta_mean": -0.3 * x, "delta_abs_mean": 0.05 + 2 * x, "w_mean": 1 + x,
                    "clip_low_frac": 0.02 * x, "clip_high_frac": 0.03 * x, "clip_frac": 0.05 * x})
    return out


def _magnitude(value: Any, step: int) -> tuple[float, float]:
    if not hasattr(value, "lam") or not hasattr(value, "eps_w"):
        fail(f"step {step}: returned {short(value)}; return rlsd_core.Magnitude(lam, eps_w) (the "
             f"loop reads .lam and .eps_w)")
    lam, eps_w = value.lam, value.eps_w
    for name, v in (("lam", lam), ("eps_w", eps_w)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(f"step {step}: {name} is {short(v)}, not a finite number")
    if not 0.0 <= lam <= 1.0:
        fail(f"step {step}: lam {lam!r} is outside [0, 1]")
    if not 0.0 <= eps_w < 1.0:
        fail(f"step {step}: eps_w {eps_w!r} is outside [0, 1)")
    return float(lam), float(eps_w)


class _Scheduler:
    def __init__(self, record: SchedulerRecord, options: Mapping[str, Any]) -> None:
        self.record, self.options = record, dict(options)

    def build(self):
        try:
            sched = self.record.fn(**self.options)
        except Exception as exc:  # noqa: BLE001
            fail(f"fn(**{self.options}) raised {type(exc).__name__}: {short(str(exc), 160)}")
        if not callable(sched):
            fail(f"fn(**{self.options}) returned {short(sched)}, not a callable scheduler")
        return sched

    def run(self, sched, steps: range) -> list[tuple[float, float]]:
        out = []
        for step in steps:
            try:
                value = sched(step, diagnostics(step))
            except Exception as exc:  # noqa: BLE001
                fail(f"step {step}: raised {type(exc).__name__}: {short(str(exc), 160)}")
            out.append(_magnitude(value, step))
        return out


def check_scheduler(record: SchedulerRecord, *, options: Mapping[str, Any] | None = None
                    ) -> list[CheckResult]:
    """Run the scheduler battery on `record`, built with `options` (default: its defaults)."""
    battery = Battery("scheduler", record.name)
    s = _Scheduler(record, options or {})
    battery.check("record", lambda: record.validate())
    battery.check("constructs", lambda: type(s.build()).__name__)
    battery.check("magnitude", lambda: _range(s))
    battery.check("deterministic", lambda: _deterministic(s))
    battery.check("state_dict", lambda: _state(s))
    return battery.results


def _range(s: _Scheduler) -> str:
    mags = s.run(s.build(), range(1, STEPS + 1))
    lams = [m[0] for m in mags]
    return f"lam from {lams[0]:g} to {lams[-1]:g} over {STEPS} steps"


def _deterministic(s: _Scheduler) -> str:
    a, b = s.run(s.build(), range(1, STEPS + 1)), s.run(s.build(), range(1, STEPS + 1))
    if a != b:
        step = next(i for i, (x, y) in enumerate(zip(a, b), 1) if x != y)
        fail(f"two schedulers built with the same options differ at step {step}: {a[step - 1]} "
             f"vs {b[step - 1]}")
    return ""


def _state(s: _Scheduler) -> str:
    whole = s.run(s.build(), range(1, STEPS + 1))
    first = s.build()
    s.run(first, range(1, RESUME_AT + 1))
    resumed = s.build()
    save = getattr(first, "state_dict", None)
    load = getattr(resumed, "load_state_dict", None)
    if (save is None) != (load is None):
        fail("it has only one of state_dict / load_state_dict; offer both")
    note = "no state_dict: a pure function of the step"
    if save is not None:
        try:
            state = pickle.loads(pickle.dumps(save()))
        except Exception as exc:  # noqa: BLE001
            fail(f"state_dict() cannot be saved in a checkpoint ({type(exc).__name__}: {exc})")
        try:
            load(state)
        except Exception as exc:  # noqa: BLE001
            fail(f"load_state_dict(its own state_dict()) raised {type(exc).__name__}: "
                 f"{short(str(exc), 160)}")
        note = "state_dict round trip"
    after = s.run(resumed, range(RESUME_AT + 1, STEPS + 1))
    if after != whole[RESUME_AT:]:
        step = next(i for i, (x, y) in enumerate(zip(after, whole[RESUME_AT:]), RESUME_AT + 1) if x != y)
        why = ("its state is not all in state_dict()" if save is not None else
               "it keeps state between calls but has no state_dict() / load_state_dict()")
        fail(f"resumed after step {RESUME_AT}, it gives {after[step - RESUME_AT - 1]} at step "
             f"{step} where the uninterrupted run gave {whole[step - 1]}: {why}")
    return note
