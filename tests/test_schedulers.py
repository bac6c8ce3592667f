"""Magnitude schedulers: values against the formulas at chosen steps, resume, adaptive behaviour,
and registration through the `rlsd` entry points."""

from __future__ import annotations

import math

import pytest

from rlsd_core import Magnitude
from rlsd_plugins import schedulers as S

STEPS = (1, 25, 50, 60, 61)


def lams(sched, steps=STEPS):
    return [sched(k, None).lam for k in steps]


def test_release_formula():
    # lambda0 0.5, W 0, D 60, step from 1: lam = 0.5 * max(1 - step/60, 0)
    # 1: 0.5 * 59/60 = 0.4916667; 25: 0.5 * 35/60 = 0.2916667; 50: 0.5 * 10/60 = 0.0833333; 60, 61: 0
    assert lams(S.release()) == pytest.approx([0.5 * 59 / 60, 0.5 * 35 / 60, 0.5 * 10 / 60, 0.0, 0.0])
    assert S.release()(60, None).lam == 0.0  # exactly 0: the loop skips the teacher


def test_release_with_warmup():
    # W 10, D 60: step < 10 -> 0.5 * step/10; else 0.5 * max(1 - (step - 10)/60, 0)
    # 1: 0.05; 25: 0.5 * 45/60 = 0.375; 50: 0.5 * 20/60; 60: 0.5 * 10/60; 61: 0.5 * 9/60
    got = lams(S.release(warmup=10))
    assert got == pytest.approx([0.05, 0.5 * 45 / 60, 0.5 * 20 / 60, 0.5 * 10 / 60, 0.5 * 9 / 60])


def test_paper_schedule():
    # 0.5 at step 1, linearly to 0 at step 51: lam = 0.5 * max(1 - (step - 1)/50, 0)
    # 1: 0.5; 25: 0.5 * 26/50 = 0.26; 50: 0.5 * 1/50 = 0.01; 51, 60, 61: 0
    assert lams(S.paper(), (1, 25, 50, 51, 60, 61)) == pytest.approx([0.5, 0.26, 0.01, 0, 0, 0])
    assert S.paper()(51, None) == Magnitude(0.0, 0.2)


def test_constant_and_grpo():
    assert lams(S.constant(lam=0.3)) == [0.3] * 5
    assert lams(S.grpo()) == [0.0] * 5
    assert S.grpo()(1, None).eps_w == 0.2


def test_warmup_decay_cosine():
    # W 10, D 40, lam0 0.5, lam_min 0.1, origin 0:
    # step 1 (< W): 0.5 * 1/10 = 0.05
    # step 25: p = 15/40 = 0.375, lam = 0.1 + 0.4 * (1 + cos(0.375 pi)) / 2
    # step 50: p = 1 -> 0.1; 60, 61: 0.1
    sched = S.warmup_decay(lam0=0.5, warmup=10, decay=40, lam_min=0.1, shape="cosine")
    want = [0.05, 0.1 + 0.4 * (1 + math.cos(0.375 * math.pi)) / 2, 0.1, 0.1, 0.1]
    assert lams(sched) == pytest.approx(want)
    # linear, same options: step 25 -> 0.1 + 0.4 * (1 - 0.375) = 0.35
    assert S.warmup_decay(lam0=0.5, warmup=10, decay=40, lam_min=0.1)(25, None).lam == pytest.approx(0.35)


@pytest.mark.parametrize("factory,kwargs,match", [
    (S.release, dict(decay=0), "decay"),
    (S.constant, dict(lam=1.5), "lam"),
    (S.constant, dict(eps_w=1.0), "eps_w"),
    (S.warmup_decay, dict(shape="step"), "shape"),
    (S.warmup_decay, dict(lam_min=0.9), "lam_min"),
    (S.adaptive, dict(clip_band=(0.1,)), "clip_band"),
])
def test_bad_options(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize("step", [0, -1, 1.0, True])
def test_bad_step(step):
    with pytest.raises(ValueError, match="step"):
        S.release()(step, None)


def test_stateless_resume_checks_options():
    a = S.release()
    b = S.release()
    b.load_state_dict(a.state_dict())  # same schedule: fine
    with pytest.raises(ValueError, match="cannot resume"):
        S.paper().load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="cannot resume"):
        S.release(decay=30).load_state_dict(a.state_dict())


def diag(gap, clip):
    return {"delta_abs_mean": gap, "clip_frac": clip}


def test_adaptive_lambda_follows_gap():
    sched = S.adaptive(lam0=0.5, smoothing=0.0)  # smoothing 0: the EMA is the last value
    assert sched(1, None) == Magnitude(0.5, 0.2)
    assert sched(2, diag(2.0, 0.05)).lam == pytest.approx(0.5)    # reference gap 2.0
    assert sched(3, diag(1.0, 0.05)).lam == pytest.approx(0.25)   # gap halved -> 0.5 * 1/2
    assert sched(4, diag(4.0, 0.05)).lam == pytest.approx(0.5)    # never above lam0
    # a repeated call for the same step does not move the state
    assert sched(4, diag(0.0, 0.05)).lam == pytest.approx(0.5)


def test_adaptive_ema_and_switch_off():
    sched = S.adaptive(lam0=0.5, smoothing=0.5, lam_off=0.1)
    sched(1, None)
    sched(2, diag(1.0, 0.05))                                 # ref 1.0, ema 1.0
    assert sched(3, diag(0.5, 0.05)).lam == pytest.approx(0.5 * 0.75)   # ema 0.5*1 + 0.5*0.5 = 0.75
    assert sched(4, diag(0.0, 0.05)).lam == pytest.approx(0.5 * 0.375)  # ema 0.375
    # ema 0.1875 -> 0.5 * 0.1875 = 0.09375 < lam_off 0.1: switched off, lam exactly 0
    assert sched(5, diag(0.0, 0.05)).lam == 0.0
    assert sched.off
    # once off, it stays off even if the gap comes back (no teacher, nothing to measure)
    assert sched(6, diag(5.0, 0.05)).lam == 0.0


def test_adaptive_eps_w_holds_clip_band():
    sched = S.adaptive(eps_w=0.2, eps_rate=2.0, eps_min=0.05, eps_max=0.5)
    sched(1, None)
    assert sched(2, diag(1.0, 0.20)).eps_w == pytest.approx(0.4)   # 20% clipped > 6% -> widen
    assert sched(3, diag(1.0, 0.20)).eps_w == pytest.approx(0.5)   # capped at eps_max
    assert sched(4, diag(1.0, 0.04)).eps_w == pytest.approx(0.5)   # inside the band: unchanged
    assert sched(5, diag(1.0, 0.00)).eps_w == pytest.approx(0.25)  # below 3% -> narrow


def test_adaptive_horizon():
    # horizon 10 caps lam by 0.5 * max(1 - step/10, 0): step 5 -> 0.25; step 10 -> 0 (off)
    sched = S.adaptive(lam0=0.5, horizon=10)
    assert sched(5, None).lam == pytest.approx(0.25)
    assert sched(10, None).lam == 0.0


def test_adaptive_missing_keys_keep_lambda():
    sched = S.adaptive(smoothing=0.0)
    sched(1, None)
    sched(2, diag(2.0, 0.05))
    assert sched(3, {"adv_hat_mean": 0.1}).lam == pytest.approx(0.5)


def test_adaptive_resume_continues_identically():
    feed = [None, diag(2.0, 0.1), diag(1.5, 0.02), diag(1.0, 0.05), diag(0.8, 0.2), diag(0.5, 0.01)]
    full = S.adaptive()
    expected = [full(k + 1, d) for k, d in enumerate(feed)]
    first = S.adaptive()
    for k, d in enumerate(feed[:3]):
        first(k + 1, d)
    resumed = S.adaptive()
    resumed.load_state_dict(first.state_dict())
    got = [resumed(k + 1, d) for k, d in list(enumerate(feed))[3:]]
    assert got == expected[3:]
    with pytest.raises(ValueError, match="cannot resume"):
        resumed.load_state_dict(S.release().state_dict())


EXPECTED = {"paper", "release", "constant", "grpo", "warmup_decay", "adaptive"}


def test_registered_from_rlsd(pm):
    rows = [r for r in pm.registry.rows() if r["kind"] == "scheduler" and r["name"] in EXPECTED]
    assert {r["name"] for r in rows} == EXPECTED
    assert all(r["distribution"] == "rlsd" for r in rows)
    sched = pm.registry.scheduler("release").fn()
    assert sched(60, None).lam == 0.0
