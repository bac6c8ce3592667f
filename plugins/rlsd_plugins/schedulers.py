"""Built-in magnitude schedulers: how strongly the teacher scales token credit at each step.

Data flow: before each step the loop calls `scheduler(step, diagnostics)` and gets a
`Magnitude(lam, eps_w)`; lam and eps_w go to `rlsd_core.algo.rlsd_token_advantages`. When
`lam == 0` the loop skips the teacher forward pass entirely (the step is plain GRPO). Steps count
from 1; `diagnostics` is the previous step's metrics dict (None at step 1), which adaptive
schedulers read (keys from `rlsd_core.algo.rlsd_diagnostics`). Every scheduler has
`state_dict()` / `load_state_dict()` so that a resumed run continues the same schedule, and
`max_lam()`: the largest lam it will ever return (0 for `grpo` or `constant` with lam 0), so the
loop builds no teacher copy for a run whose lambda is 0 throughout.

Registered (each a factory taking keyword options):
  paper         lam0 0.5 at step 1, linearly to 0 at step 51 (the paper: "0.5 -> 0 over the first
                50 steps, then plain GRPO").
  release       the authors' release: lambda0 0.5, warmup 0, decay 60,
                lam = lam0 * step / W while step < W, else lam0 * max(1 - (step - W) / D, 0).
  constant      a fixed lam (default 0.5).
  grpo          lam = 0 always (the GRPO baseline; no teacher forward).
  warmup_decay  linear warmup over W steps, then linear or cosine decay to lam_min over D steps.
  adaptive      lam follows the measured teacher-student gap; eps_w keeps the clip fraction in a
                target band (see `AdaptiveScheduler`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from rlsd_core import Magnitude, SchedulerRecord, hookimpl

VERSION = "1.0"


def _num(name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False,
         hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"scheduler option {name} must be a finite number, got {value!r}")
    if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
        raise ValueError(f"scheduler option {name} must be in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}, got {value!r}")
    return float(value)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1 (steps count from 1), got {step!r}")
    return step


class _Stateless:
    """Base for schedules that are a pure function of the step: nothing to save but the options,
    which are checked on load so that a resume with a different schedule fails loudly."""

    name = "?"

    def __init__(self, eps_w: float) -> None:
        self.eps_w = _num("eps_w", eps_w, 0.0, 1.0, hi_open=True)

    def lam(self, step: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, step: int, diagnostics: Optional[Mapping[str, float]] = None) -> Magnitude:
        return Magnitude(self.lam(_check_step(step)), self.eps_w)

    def options(self) -> dict:
        return {"eps_w": self.eps_w}

    def state_dict(self) -> dict:
        return {"scheduler": self.name, "options": self.options()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("scheduler") != self.name or dict(state.get("options", {})) != self.options():
            raise ValueError(f"cannot resume scheduler {self.name!r} with options {self.options()} from a "
                             f"state saved by {state.get('scheduler')!r} with {state.get('options')}")


class WarmupDecay(_Stateless):
    """lam0 ramps up over `warmup` steps, then decays to lam_min over `decay` steps.

    With t = step - origin:
      t < W:  lam = lam0 * t / W
      else:   p = min((t - W) / D, 1)
              linear: lam = lam_min + (lam0 - lam_min) * (1 - p)
              cosine: lam = lam_min + (lam0 - lam_min) * (1 + cos(pi * p)) / 2
    origin 0 is the release's convention (steps count from 1, so step 1 already decays: with
    W = 0, D = 60 this is exactly the release's formula); origin 1 starts at lam0 on step 1.
    """

    name = "warmup_decay"

    def __init__(self, lam0: float = 0.5, warmup: int = 0, decay: int = 60, *, lam_min: float = 0.0,
                 shape: str = "linear", origin: int = 0, eps_w: float = 0.2) -> None:
        super().__init__(eps_w)
        self.lam0 = _num("lam0", lam0, 0.0, 1.0)
        self.lam_min = _num("lam_min", lam_min, 0.0, self.lam0)
        self.warmup = int(_num("warmup", warmup, 0.0))
        self.decay = int(_num("decay", decay, 0.0, lo_open=True))
        if shape not in ("linear", "cosine"):
            raise ValueError(f"scheduler option shape must be 'linear' or 'cosine', got {shape!r}")
        self.shape = shape
        if origin not in (0, 1):
            raise ValueError(f"scheduler option origin must be 0 (release) or 1 (start at lam0), got {origin!r}")
        self.origin = origin

    def lam(self, step: int) -> float:
        t = step - self.origin
        if t < self.warmup:
            return self.lam0 * t / self.warmup
        p = min((t - self.warmup) / self.decay, 1.0)
        frac = 1.0 - p if self.shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
        lam = self.lam_min + (self.lam0 - self.lam_min) * frac
        # cos(pi) is -1 only up to rounding: make the end of the schedule exactly lam_min, so a
        # schedule ending at 0 really lets the loop skip the teacher.
        return self.lam_min if p >= 1.0 else max(lam, self.lam_min)

    def max_lam(self) -> float:
        return self.lam0  # the ramp rises to lam0, the decay falls from it

    def options(self) -> dict:
        return {"lam0": self.lam0, "lam_min": self.lam_min, "warmup": self.warmup, "decay": self.decay,
                "shape": self.shape, "origin": self.origin, "eps_w": self.eps_w}


class Constant(_Stateless):
    name = "constant"

    def __init__(self, lam: float = 0.5, eps_w: float = 0.2) -> None:
        super().__init__(eps_w)
        self._lam = _num("lam", lam, 0.0, 1.0)

    def lam(self, step: int) -> float:
        return self._lam

    def max_lam(self) -> float:
        return self._lam

    def options(self) -> dict:
        return {"lam": self._lam, "eps_w": self.eps_w}


def paper(lam0: float = 0.5, decay: int = 50, eps_w: float = 0.2) -> WarmupDecay:
    """The paper: lam0 at step 1, linearly down to exactly 0 at step decay + 1, then GRPO."""
    sched = WarmupDecay(lam0, 0, decay, shape="linear", origin=1, eps_w=eps_w)
    sched.name = "paper"
    return sched


def release(lam0: float = 0.5, warmup: int = 0, decay: int = 60, eps_w: float = 0.2) -> WarmupDecay:
    """The authors' release: lam = lam0*step/W while step < W, else lam0*max(1-(step-W)/D, 0)."""
    sched = WarmupDecay(lam0, warmup, decay, shape="linear", origin=0, eps_w=eps_w)
    sched.name = "release"
    return sched


def constant(lam: float = 0.5, eps_w: float = 0.2) -> Constant:
    return Constant(lam, eps_w)


def grpo(eps_w: float = 0.2) -> Constant:
    """lam = 0 at every step: plain GRPO, the teacher forward is skipped."""
    sched = Constant(0.0, eps_w)
    sched.name = "grpo"
    return sched


def warmup_decay(lam0: float = 0.5, warmup: int = 0, decay: int = 60, lam_min: float = 0.0,
                 shape: str = "linear", origin: int = 0, eps_w: float = 0.2) -> WarmupDecay:
    return WarmupDecay(lam0, warmup, decay, lam_min=lam_min, shape=shape, origin=origin, eps_w=eps_w)


class AdaptiveScheduler:
    """lam follows how much the privileged context still tells the teacher; eps_w holds the clip
    fraction in a band.

    Rationale. The paper decays lambda on a fixed clock because the teacher's extra information
    stops being useful (and starts leaking) once the student has learned what the reference
    gives away. That moment depends on the task and the model, and it can be measured: the
    teacher-student gap g = mean |delta_t| (`delta_abs_mean` in the diagnostics) is large while
    the reference changes the teacher's view of the student's tokens and shrinks as the two
    agree. So lam = lam0 * min(1, g_ema / g_ref), where g_ref is the first measured gap (step 1's
    teacher) and g_ema an exponential moving average (`smoothing`) that keeps one noisy batch
    from swinging the weight. Once lam falls below `lam_off` it becomes 0 for good: the run is
    GRPO from then on and stops paying for the teacher forward (with no teacher there is no new
    gap to measure, so the switch-off is one way by design). `horizon` (optional) also caps lam
    by the release-style linear decay, for a guaranteed end.

    eps_w: the paper reports 3-6% of tokens clipped. A much larger fraction means the clip, not
    the teacher, decides most weights (the band is too narrow); a much smaller one means the
    clip never acts. Each step eps_w is multiplied by `eps_rate` when the clip fraction is above
    `clip_band[1]` and divided by it when below `clip_band[0]`, kept in [eps_min, eps_max].
    """

    name = "adaptive"

    def __init__(self, lam0: float = 0.5, *, smoothing: float = 0.7, lam_off: float = 0.02,
                 horizon: Optional[int] = None, eps_w: float = 0.2, clip_band: tuple = (0.03, 0.06),
                 eps_rate: float = 1.1, eps_min: float = 0.05, eps_max: float = 0.5) -> None:
        self.lam0 = _num("lam0", lam0, 0.0, 1.0)
        self.smoothing = _num("smoothing", smoothing, 0.0, 1.0, hi_open=True)
        self.lam_off = _num("lam_off", lam_off, 0.0, 1.0)
        self.horizon = None if horizon is None else int(_num("horizon", horizon, 0.0, lo_open=True))
        self.eps_min = _num("eps_min", eps_min, 0.0, 1.0, lo_open=True, hi_open=True)
        self.eps_max = _num("eps_max", eps_max, self.eps_min, 1.0, hi_open=True)
        self.eps_w0 = _num("eps_w", eps_w, self.eps_min, self.eps_max)
        if len(tuple(clip_band)) != 2:
            raise ValueError(f"scheduler option clip_band must be (low, high), got {clip_band!r}")
        lo, hi = (float(x) for x in clip_band)
        _num("clip_band low", lo, 0.0, 1.0)
        _num("clip_band high", hi, lo, 1.0)
        self.clip_band = (lo, hi)
        self.eps_rate = _num("eps_rate", eps_rate, 1.0, lo_open=True)
        self._fresh()

    def _fresh(self) -> None:
        self.gap_ref: Optional[float] = None
        self.gap_ema: Optional[float] = None
        self.eps_w = self.eps_w0
        self.off = False
        self.last_step = 0

    def _observe(self, diagnostics: Mapping[str, float]) -> None:
        gap = diagnostics.get("delta_abs_mean")
        if gap is not None and math.isfinite(gap) and gap >= 0:
            if self.gap_ref is None:
                self.gap_ref = self.gap_ema = float(gap)
            else:
                self.gap_ema = self.smoothing * self.gap_ema + (1.0 - self.smoothing) * float(gap)
        clip = diagnostics.get("clip_frac")
        if clip is not None and math.isfinite(clip):
            if clip > self.clip_band[1]:
                self.eps_w = min(self.eps_w * self.eps_rate, self.eps_max)
            elif clip < self.clip_band[0]:
                self.eps_w = max(self.eps_w / self.eps_rate, self.eps_min)

    def __call__(self, step: int, diagnostics: Optional[Mapping[str, float]] = None) -> Magnitude:
        step = _check_step(step)
        # Diagnostics describe the previous step; read each step's only once (a repeated call for
        # the same step, e.g. by a logger, must not move the state).
        if step > self.last_step:
            if diagnostics is not None and not self.off:
                self._observe(diagnostics)
            self.last_step = step
        if self.off:
            return Magnitude(0.0, self.eps_w)
        lam = self.lam0
        if self.gap_ref is not None and self.gap_ref > 0:
            lam *= min(1.0, self.gap_ema / self.gap_ref)
        if self.horizon is not None:
            lam *= max(1.0 - step / self.horizon, 0.0)
        if lam < self.lam_off:
            self.off = True
            lam = 0.0
        return Magnitude(lam, self.eps_w)

    def max_lam(self) -> float:
        return self.lam0  # lam = lam0 * min(1, ...) * (horizon factor <= 1)

    def state_dict(self) -> dict:
        return {"scheduler": self.name, "gap_ref": self.gap_ref, "gap_ema": self.gap_ema,
                "eps_w": self.eps_w, "off": self.off, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("scheduler") != self.name:
            raise ValueError(f"cannot resume scheduler {self.name!r} from a state saved by {state.get('scheduler')!r}")
        self.gap_ref = state["gap_ref"]
        self.gap_ema = state["gap_ema"]
        self.eps_w = float(state["eps_w"])
        self.off = bool(state["off"])
        self.last_step = int(state["last_step"])


def adaptive(lam0: float = 0.5, smoothing: float = 0.7, lam_off: float = 0.02, horizon: Optional[int] = None,
             eps_w: float = 0.2, clip_band: tuple = (0.03, 0.06), eps_rate: float = 1.1,
             eps_min: float = 0.05, eps_max: float = 0.5) -> AdaptiveScheduler:
    return AdaptiveScheduler(lam0, smoothing=smoothing, lam_off=lam_off, horizon=horizon, eps_w=eps_w,
                             clip_band=clip_band, eps_rate=eps_rate, eps_min=eps_min, eps_max=eps_max)


RECORDS = [
    SchedulerRecord(name="paper", fn=paper, version=VERSION,
                    description="The paper: lambda 0.5 at step 1, linearly to 0 at step 51, then GRPO."),
    SchedulerRecord(name="release", fn=release, version=VERSION,
                    description="The authors' release: lambda0 0.5, warmup 0, linear decay over 60 steps."),
    SchedulerRecord(name="constant", fn=constant, version=VERSION, description="A fixed lambda (default 0.5)."),
    SchedulerRecord(name="grpo", fn=grpo, version=VERSION,
                    description="lambda 0 at every step: plain GRPO, no teacher forward."),
    SchedulerRecord(name="warmup_decay", fn=warmup_decay, version=VERSION,
                    description="Linear warmup, then linear or cosine decay of lambda to a floor."),
    SchedulerRecord(name="adaptive", fn=adaptive, version=VERSION,
                    description="lambda follows the measured teacher-student gap; eps_w holds the clip "
                                "fraction at 3-6%."),
]


@hookimpl
def rlsd_schedulers() -> list[SchedulerRecord]:
    return list(RECORDS)
