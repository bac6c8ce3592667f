"""rlsd_core.algo on hand-sized tensors (values worked out by hand in the comments), property
tests of the RLSD weights, and a comparison with an independent element-by-element
implementation of the spec's formulas."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlsd_core import algo
from rlsd_core.algo import (masked_group_advantages, token_entropy, group_advantages, zero_variance_fraction, grpo_plus_opsd, opsd_loss,
                            opsd_sampled_token_advantages, policy_loss, rlsd_diagnostics,
                            rlsd_token_advantages, token_divergence)

LN = math.log


def close(t, expected, tol=1e-6):
    exp = torch.as_tensor(expected, dtype=torch.float64)
    assert t.shape == exp.shape, (t.shape, exp.shape)
    assert torch.allclose(t.double(), exp, atol=tol, rtol=0), (t, exp)


# ---------------------------------------------------------------------------------------------
# group advantages
# ---------------------------------------------------------------------------------------------

def test_group_advantages_by_hand():
    # group 0: rewards 1, 0, 0 -> mean 1/3, deviations 2/3, -1/3, -1/3;
    #   unbiased var = (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3, std = sqrt(1/3) = 0.5773503
    #   A = (2/3) / (0.5773503 + 1e-6), (-1/3) / (0.5773503 + 1e-6)
    # group 1: rewards all 1 -> zero variance -> exactly 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    s = math.sqrt(1 / 3) + 1e-6
    a = group_advantages(r, 3)
    close(a, [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0, 0, 0])
    assert torch.equal(a[3:], torch.zeros(3))


def test_group_advantages_no_std_and_float_rounding():
    # Dr.GRPO: only centring. 0.9, 0.1 -> mean 0.5 -> +0.4, -0.4
    close(group_advantages(torch.tensor([0.9, 0.1], dtype=torch.float64), 2, normalize_std=False), [0.4, -0.4])
    # 0.1 * 3 / 3 is not exactly 0.1 in floats: a constant group must still give exactly 0
    a = group_advantages(torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64), 3)
    assert torch.equal(a, torch.zeros(3, dtype=torch.float64))


def test_group_advantages_group_of_one_is_zero():
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), 1), torch.zeros(2))


def test_zero_variance_fraction():
    # groups (1, 0), (1, 1), (0, 0), (0.5, 1): two of four are constant
    assert zero_variance_fraction(torch.tensor([1.0, 0, 1, 1, 0, 0, 0.5, 1]), 2) == 0.5
    with pytest.raises(ValueError, match="multiple"):
        zero_variance_fraction(torch.ones(3), 2)


def test_masked_group_advantages_fill_with_the_group_mean():
    # group 0: rewards 1, 0, [masked], 1 -> the masked sample takes mean(1, 0, 1) = 2/3, so the
    #   group is 1, 0, 2/3, 1: mean 2/3, deviations 1/3, -2/3, 0, 1/3; unbiased var =
    #   (1/9 + 4/9 + 0 + 1/9) / 3 = 2/9, std = 0.4714045; the masked advantage is then zeroed.
    # group 1: every sample masked -> filled with 0 -> constant -> all 0.
    r = torch.tensor([1.0, 0.0, 0.3, 1.0, 0.5, 0.5, 0.5, 0.5])
    masked = torch.tensor([False, False, True, False, True, True, True, True])
    adv, filled = masked_group_advantages(r, masked, 4)
    s = math.sqrt(2 / 9) + 1e-6
    close(adv, [(1 / 3) / s, (-2 / 3) / s, 0.0, (1 / 3) / s, 0, 0, 0, 0])
    close(filled, [1.0, 0.0, 2 / 3, 1.0, 0, 0, 0, 0])
    # the unmasked samples' advantages are what they would be with the masked one at the mean
    assert zero_variance_fraction(filled, 4) == 0.5
    with pytest.raises(ValueError, match="masked"):
        masked_group_advantages(r, masked[:4], 4)


@pytest.mark.parametrize("rewards,g,match", [
    (torch.ones(5), 2, "multiple of group_size"),
    (torch.ones(4), 0, "group_size"),
    (torch.ones(2, 2), 2, "1-D"),
    (torch.tensor([1.0, float("nan")]), 2, "finite"),
])
def test_group_advantages_bad_input(rewards, g, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g)


# ---------------------------------------------------------------------------------------------
# RLSD token advantages
# ---------------------------------------------------------------------------------------------

STUDENT = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.25, -3.0]], dtype=torch.float64)
# delta = teacher - student: row 0: 0, ln 1.5, ln 0.9; row 1: ln 2, ln 1.1, -25 (clamped to -20)
DELTA = torch.tensor([[0.0, LN(1.5), LN(0.9)], [LN(2.0), LN(1.1), -25.0]], dtype=torch.float64)
TEACHER = STUDENT + DELTA
ADV = torch.tensor([1.0, -0.5], dtype=torch.float64)
MASK = torch.ones(2, 3)


def test_rlsd_token_advantages_by_hand():
    # lam 0.5, eps_w 0.2 -> w clipped to [0.8, 1.2]; A_hat = A * (0.5 + 0.5 w)
    # row 0 (A = +1): w = exp(+delta) = 1, 1.5 -> 1.2, 0.9
    #   A_hat = 0.5 + 0.5*1 = 1.0, 0.5 + 0.6 = 1.1, 0.5 + 0.45 = 0.95
    # row 1 (A = -0.5): w = exp(-delta) = 0.5 -> 0.8, 1/1.1 = 0.9090909, e^20 -> 1.2
    #   A_hat = -0.5*(0.5+0.4) = -0.45, -0.5*(0.5+0.4545455) = -0.4772727, -0.5*(0.5+0.6) = -0.55
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=0.5, eps_w=0.2)
    close(out, [[1.0, 1.1, 0.95], [-0.45, -0.5 * (0.5 + 0.5 / 1.1), -0.55]])


def test_rlsd_options_by_hand():
    # negative_only: row 0 (A > 0) keeps plain A = 1; row 1 as above
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=0.5, eps_w=0.2, negative_only=True)
    close(out, [[1.0, 1.0, 1.0], [-0.45, -0.5 * (0.5 + 0.5 / 1.1), -0.55]])
    # thought_only: token_mask 0 -> plain A at (0, 1) and (1, 0)
    tm = torch.tensor([[1, 0, 1], [0, 1, 1]])
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=0.5, eps_w=0.2, token_mask=tm)
    close(out, [[1.0, 1.0, 0.95], [-0.5, -0.5 * (0.5 + 0.5 / 1.1), -0.55]])
    # lam = 1: A_hat = A * w. Row 0: 1, 1.2, 0.9; row 1: -0.4, -0.5/1.1, -0.6
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=1.0, eps_w=0.2)
    close(out, [[1.0, 1.2, 0.9], [-0.4, -0.5 / 1.1, -0.6]])


def test_rlsd_masked_positions_are_zero_even_with_garbage():
    teacher = TEACHER.clone()
    student = STUDENT.clone()
    teacher[1, 2] = float("-inf")
    student[1, 2] = float("nan")  # padding garbage where mask is 0
    teacher[0, 0] = float("-inf")  # a real token the teacher finds impossible: delta clamps to -20
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = rlsd_token_advantages(ADV, teacher, student, mask, lam=0.5, eps_w=0.2)
    assert torch.isfinite(out).all()
    # (0, 0): w = exp(-20) -> 0.8, A_hat = 0.5 + 0.4 = 0.9 ; (1, 2) masked -> 0
    close(out, [[0.9, 1.1, 0.95], [-0.45, -0.5 * (0.5 + 0.5 / 1.1), 0.0]])


def test_rlsd_per_row_lambda_and_eps_w():
    # Row 0 with lam 0.5, eps_w 0.2 (as in test_rlsd_token_advantages_by_hand); row 1 with lam 0
    # (plain A) -> the same as two separate calls, bit for bit.
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=torch.tensor([0.5, 0.0]),
                                eps_w=torch.tensor([0.2, 0.1]))
    close(out, [[1.0, 1.1, 0.95], [-0.5, -0.5, -0.5]])
    # row 1 with eps_w 0.1 and lam 1: w = exp(-delta) = 0.5 -> 0.9, 1/1.1 -> 0.9090909, e^20 -> 1.1
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=torch.tensor([0.5, 1.0]),
                                eps_w=torch.tensor([0.2, 0.1]))
    close(out, [[1.0, 1.1, 0.95], [-0.45, -0.5 / 1.1, -0.55]])
    uniform = rlsd_token_advantages(ADV.float(), TEACHER.float(), STUDENT.float(), MASK,
                                    lam=torch.full((2,), 0.4916666, dtype=torch.float64),
                                    eps_w=torch.full((2,), 0.2, dtype=torch.float64))
    scalar = rlsd_token_advantages(ADV.float(), TEACHER.float(), STUDENT.float(), MASK,
                                   lam=0.4916666, eps_w=0.2)
    assert torch.equal(uniform, scalar), "a per-row schedule must equal the scalar one exactly"
    d = rlsd_diagnostics(ADV, TEACHER, STUDENT, MASK, out, eps_w=torch.tensor([0.2, 0.6]))
    # w before clip: row 0: 1, 1.5, 0.9 (eps 0.2: one high); row 1: 0.5, 0.909, e^20 (eps 0.6:
    # one high, none low) -> low 0/6, high 2/6
    assert d["clip_low_frac"] == 0.0 and d["clip_high_frac"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="lam must be in"):
        rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=torch.tensor([0.5, 1.5]), eps_w=0.2)
    with pytest.raises(ValueError, match="shape"):
        rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=torch.tensor([0.5]), eps_w=0.2)


def test_rlsd_lam_zero_skips_teacher():
    out = rlsd_token_advantages(ADV, None, STUDENT, torch.tensor([[1, 1, 0], [1, 1, 1]]), lam=0.0, eps_w=0.2)
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 0.0], [-0.5, -0.5, -0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="teacher_logprobs is None"):
        rlsd_token_advantages(ADV, None, STUDENT, MASK, lam=0.1, eps_w=0.2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lam=1.5, eps_w=0.2), "lam"),
    (dict(lam=-0.1, eps_w=0.2), "lam"),
    (dict(lam=0.5, eps_w=1.0), "eps_w"),
    (dict(lam=0.5, eps_w=float("nan")), "eps_w"),
])
def test_rlsd_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, **kwargs)


def test_rlsd_bad_shapes():
    with pytest.raises(ValueError, match="teacher_logprobs has shape"):
        rlsd_token_advantages(ADV, TEACHER[:, :2], STUDENT, MASK, lam=0.5, eps_w=0.2)
    with pytest.raises(ValueError, match="advantages has 3 entries"):
        rlsd_token_advantages(torch.ones(3), TEACHER, STUDENT, MASK, lam=0.5, eps_w=0.2)
    with pytest.raises(ValueError, match="1-D"):
        rlsd_token_advantages(torch.ones(2, 3), TEACHER, STUDENT, MASK, lam=0.5, eps_w=0.2)
    with pytest.raises(ValueError, match="only 0 and 1"):
        rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK * 2, lam=0.5, eps_w=0.2)
    with pytest.raises(ValueError, match="NaN"):
        rlsd_token_advantages(ADV, TEACHER, torch.full_like(STUDENT, float("nan")), MASK, lam=0.5, eps_w=0.2)


def test_rlsd_diagnostics_by_hand():
    out = rlsd_token_advantages(ADV, TEACHER, STUDENT, MASK, lam=0.5, eps_w=0.2)
    d = rlsd_diagnostics(ADV, TEACHER, STUDENT, MASK, out, eps_w=0.2)
    # clamped deltas: 0, ln1.5, ln0.9, ln2, ln1.1, -20 (6 tokens)
    deltas = [0.0, LN(1.5), LN(0.9), LN(2.0), LN(1.1), -20.0]
    assert d["delta_mean"] == pytest.approx(sum(deltas) / 6, abs=1e-6)
    assert d["delta_abs_mean"] == pytest.approx(sum(abs(x) for x in deltas) / 6, abs=1e-6)
    # w before clip: 1, 1.5, 0.9, 0.5, 1/1.1, e^20
    assert d["w_mean"] == pytest.approx((1 + 1.5 + 0.9 + 0.5 + 1 / 1.1 + math.exp(20)) / 6, rel=1e-6)
    # below 0.8: 0.5 -> 1 token; above 1.2: 1.5 and e^20 -> 2 tokens
    assert d["clip_low_frac"] == pytest.approx(1 / 6)
    assert d["clip_high_frac"] == pytest.approx(2 / 6)
    assert d["clip_frac"] == pytest.approx(3 / 6)
    # A_hat: 1.0, 1.1, 0.95, -0.45, -0.4772727, -0.55
    a = [1.0, 1.1, 0.95, -0.45, -0.5 * (0.5 + 0.5 / 1.1), -0.55]
    assert d["adv_hat_mean"] == pytest.approx(sum(a) / 6, abs=1e-6)
    assert d["adv_hat_abs_mean"] == pytest.approx(sum(map(abs, a)) / 6, abs=1e-6)
    # without the teacher (lam was 0) only the A_hat statistics are reported
    assert set(rlsd_diagnostics(ADV, None, STUDENT, MASK, out, eps_w=0.2)) == {"adv_hat_mean", "adv_hat_abs_mean"}


# ---------------------------------------------------------------------------------------------
# properties (hypothesis)
# ---------------------------------------------------------------------------------------------

@st.composite
def rlsd_case(draw):
    b = draw(st.integers(1, 5))
    t = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(b, generator=g, dtype=torch.float64) * 2
    adv[torch.rand(b, generator=g) < 0.2] = 0.0  # zero-variance groups happen
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 50.0]))  # 50: beyond the +-20 clamp
    teacher = -torch.rand(b, t, generator=g, dtype=torch.float64) * scale
    student = -torch.rand(b, t, generator=g, dtype=torch.float64) * scale
    mask = (torch.rand(b, t, generator=g) < 0.8).long()
    lam = draw(st.floats(0.0, 1.0))
    eps_w = draw(st.floats(0.0, 0.99))
    return adv, teacher, student, mask, lam, eps_w


@settings(max_examples=150, deadline=None)
@given(rlsd_case(), st.booleans())
def test_property_sign_and_magnitude(case, negative_only):
    adv, teacher, student, mask, lam, eps_w = case
    out = rlsd_token_advantages(adv, teacher, student, mask, lam=lam, eps_w=eps_w, negative_only=negative_only)
    on = mask.bool()
    a = adv[:, None].expand_as(out)
    assert torch.equal(out[~on], torch.zeros_like(out[~on]))
    assert torch.equal(torch.sign(out[on]), torch.sign(a[on]))
    nz = on & (a != 0)
    ratio = out[nz] / a[nz]
    assert (ratio >= 1 - lam * eps_w - 1e-12).all() and (ratio <= 1 + lam * eps_w + 1e-12).all()


@settings(max_examples=60, deadline=None)
@given(rlsd_case())
def test_property_lam_zero_is_exactly_grpo(case):
    adv, teacher, student, mask, _lam, eps_w = case
    out = rlsd_token_advantages(adv, teacher, student, mask, lam=0.0, eps_w=eps_w)
    assert torch.equal(out, torch.where(mask.bool(), adv[:, None].expand_as(out), torch.zeros(())).double())


@settings(max_examples=40, deadline=None)
@given(rlsd_case())
def test_property_no_gradient_into_a_hat(case):
    adv, teacher, student, mask, lam, eps_w = case
    teacher = teacher.clone().requires_grad_(True)
    student = student.clone().requires_grad_(True)
    adv = adv.clone().requires_grad_(True)
    out = rlsd_token_advantages(adv, teacher, student, mask, lam=lam, eps_w=eps_w)
    assert not out.requires_grad and out.grad_fn is None


# ---------------------------------------------------------------------------------------------
# independent reference: the spec's formulas element by element in plain Python
# ---------------------------------------------------------------------------------------------

def reference_a_hat(adv, teacher, student, mask, lam, eps_w, negative_only=False, token_mask=None):
    out = []
    for i, a in enumerate(adv):
        row = []
        for t in range(len(mask[i])):
            if not mask[i][t]:
                row.append(0.0)
                continue
            reweight = (not negative_only or a < 0) and (token_mask is None or token_mask[i][t])
            if not reweight:
                row.append(a)
                continue
            delta = min(max(teacher[i][t] - student[i][t], -20.0), 20.0)
            sgn = (a > 0) - (a < 0)
            w = math.exp(sgn * delta)
            w = min(max(w, 1 - eps_w), 1 + eps_w)
            row.append(a * ((1 - lam) + lam * w))
        out.append(row)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_matches_independent_reference(seed):
    rnd = random.Random(seed)
    b, t = rnd.randint(1, 6), rnd.randint(1, 9)
    adv = [rnd.choice([0.0, rnd.gauss(0, 1.5)]) for _ in range(b)]
    teacher = [[-rnd.expovariate(0.5) for _ in range(t)] for _ in range(b)]
    student = [[-rnd.expovariate(0.5) for _ in range(t)] for _ in range(b)]
    mask = [[rnd.random() < 0.8 for _ in range(t)] for _ in range(b)]
    token_mask = [[rnd.random() < 0.5 for _ in range(t)] for _ in range(b)] if seed % 2 else None
    lam, eps_w = rnd.random(), rnd.uniform(0, 0.5)
    negative_only = seed % 3 == 0
    got = rlsd_token_advantages(
        torch.tensor(adv), torch.tensor(teacher), torch.tensor(student), torch.tensor(mask),
        lam=lam, eps_w=eps_w, negative_only=negative_only,
        token_mask=None if token_mask is None else torch.tensor(token_mask))
    assert got.dtype == torch.float32
    want = reference_a_hat(adv, teacher, student, mask, lam, eps_w, negative_only, token_mask)
    close(got, want, tol=1e-6)


def test_bf16_inputs_computed_in_float32():
    out = rlsd_token_advantages(ADV.float(), TEACHER.bfloat16(), STUDENT.bfloat16(), MASK, lam=0.5, eps_w=0.2)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# policy loss
# ---------------------------------------------------------------------------------------------

RHO = torch.tensor([[1.0, 1.5, 0.5], [1.0, 0.5, 4.0]], dtype=torch.float64)
A_TOK = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)


def _logprobs():
    old = torch.tensor([[-1.0, -2.0, -0.7], [-0.3, -1.2, -2.5]], dtype=torch.float64)
    new = (old + RHO.log()).clone().requires_grad_(True)
    return new, old


def test_policy_loss_by_hand_token_mean():
    # eps_low 0.2, eps_high 0.28 -> clip(rho) in [0.8, 1.28]; C = 3
    # row 0 (A=+1): l = max(-rho, -clip(rho)): rho 1 -> -1; 1.5 -> max(-1.5, -1.28) = -1.28;
    #               0.5 -> max(-0.5, -0.8) = -0.5
    # row 1 (A=-1): l = max(rho, clip(rho)): 1 -> 1; 0.5 -> max(0.5, 0.8) = 0.8;
    #               4 -> max(4, 1.28) = 4, dual clip min(4, 3) = 3
    # token-mean: (-1 - 1.28 - 0.5 + 1 + 0.8 + 3) / 6 = 2.02 / 6
    new, old = _logprobs()
    loss, stats = policy_loss(new, old, A_TOK, MASK)
    assert loss.item() == pytest.approx(2.02 / 6, abs=1e-9)
    loss.backward()
    # d l / d logprob = -A * rho where the unclipped branch is active, else 0:
    # row 0: -1, 0 (clipped), -0.5 ; row 1: +1, 0 (clipped), 0 (dual clip); all / 6 tokens
    close(new.grad, [[-1 / 6, 0, -0.5 / 6], [1 / 6, 0, 0]], tol=1e-9)
    # the clipped branch wins at (0, 1) and (1, 1); the dual clip at (1, 2)
    assert stats["pg_clipfrac"] == pytest.approx(2 / 6)
    assert stats["pg_clipfrac_dual"] == pytest.approx(1 / 6)
    assert stats["ratio_low_frac"] == pytest.approx(2 / 6)   # 0.5, 0.5 < 0.8
    assert stats["ratio_high_frac"] == pytest.approx(2 / 6)  # 1.5, 4 > 1.28
    assert stats["ratio_max"] == pytest.approx(4.0)
    # k3: rho - 1 - ln rho: 0, 0.5 - ln1.5, -0.5 + ln2, 0, -0.5 + ln2, 3 - ln4
    k3 = (0.5 - LN(1.5)) + 2 * (-0.5 + LN(2)) + (3 - LN(4))
    assert stats["approx_kl"] == pytest.approx(k3 / 6, abs=1e-9)


def test_policy_loss_aggregations_by_hand():
    # mask off (1, 2): row 0 losses -1, -1.28, -0.5 (sum -2.78); row 1: 1, 0.8 (sum 1.8)
    # token-mean: (-2.78 + 1.8) / 5 = -0.196
    # seq-mean-token-mean: (-2.78 / 3 + 1.8 / 2) / 2 = (-0.9266667 + 0.9) / 2 = -0.0133333
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    new, old = _logprobs()
    assert policy_loss(new, old, A_TOK, mask)[0].item() == pytest.approx(-0.196, abs=1e-9)
    got = policy_loss(new, old, A_TOK, mask, agg="seq-mean-token-mean")[0].item()
    assert got == pytest.approx((-2.78 / 3 + 1.8 / 2) / 2, abs=1e-9)
    # micro-batching: row 0 alone with the full batch's 5 tokens as denominator, plus row 1 alone
    part0 = policy_loss(new[:1], old[:1], A_TOK[:1], mask[:1], denominator=5)[0]
    part1 = policy_loss(new[1:], old[1:], A_TOK[1:], mask[1:], denominator=5)[0]
    assert (part0 + part1).item() == pytest.approx(-0.196, abs=1e-9)


def test_policy_loss_without_dual_clip_and_garbage_padding():
    # dual_clip=None: (1, 2) keeps 4 -> (-1 - 1.28 - 0.5 + 1 + 0.8 + 4) / 6 = 3.02 / 6
    new, old = _logprobs()
    assert policy_loss(new, old, A_TOK, MASK, dual_clip=None)[0].item() == pytest.approx(3.02 / 6, abs=1e-9)
    old2 = old.clone()
    old2[1, 2] = float("-inf")  # padding: masked, must not turn the loss into NaN
    loss, _ = policy_loss(new, old2, A_TOK, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert loss.item() == pytest.approx(-0.196, abs=1e-9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(agg="sum"), "agg"), (dict(dual_clip=1.0), "dual_clip"), (dict(eps_low=1.0), "eps_low"),
])
def test_policy_loss_bad_options(kwargs, match):
    new, old = _logprobs()
    with pytest.raises(ValueError, match=match):
        policy_loss(new, old, A_TOK, MASK, **kwargs)


def test_policy_loss_bad_shapes():
    new, old = _logprobs()
    with pytest.raises(ValueError, match="token_advantages has shape"):
        policy_loss(new, old, A_TOK[:, :2], MASK)


def test_empty_mask_gives_zero_loss():
    new, old = _logprobs()
    loss, _ = policy_loss(new, old, A_TOK, torch.zeros(2, 3))
    assert loss.item() == 0.0


# ---------------------------------------------------------------------------------------------
# OPSD
# ---------------------------------------------------------------------------------------------

# V = 2. Student logits (0, 0) -> S = (0.5, 0.5); teacher logits (ln 3, 0) -> P_T = (0.75, 0.25).
REV_KL = 0.5 * LN(0.5 / 0.75) + 0.5 * LN(0.5 / 0.25)        # = 0.5 ln(4/3) = 0.1438410
FWD_KL = 0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)      # = 0.1308120
# M = 0.5 P_T + 0.5 S = (0.625, 0.375)
KL_T_M = 0.75 * LN(0.75 / 0.625) + 0.25 * LN(0.25 / 0.375)  # = 0.0353748
KL_S_M = 0.5 * LN(0.5 / 0.625) + 0.5 * LN(0.5 / 0.375)      # = 0.5 ln(16/15) = 0.0322693
JSD = 0.5 * KL_T_M + 0.5 * KL_S_M                           # = 0.0338221


def _opsd_tensors():
    s = torch.zeros(2, 3, 2, dtype=torch.float64)
    t = torch.zeros(2, 3, 2, dtype=torch.float64)
    t[0, 0, 0] = LN(3.0)  # token (0, 0) differs; every other token has identical distributions
    t[1, 1, 0] = LN(3.0)  # token (1, 1) differs too
    return s.requires_grad_(True), t.requires_grad_(True)


@pytest.mark.parametrize("divergence,value", [("reverse_kl", REV_KL), ("forward_kl", FWD_KL), ("jsd", JSD)])
def test_opsd_loss_by_hand(divergence, value):
    s, t = _opsd_tensors()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = opsd_loss(s, t, mask, divergence=divergence)
    # two differing tokens out of 5 masked tokens
    assert loss.item() == pytest.approx(2 * value / 5, abs=1e-9)
    # seq-mean-token-mean: (value / 3 + value / 2) / 2
    loss2, _ = opsd_loss(s, t, mask, divergence=divergence, agg="seq-mean-token-mean")
    assert loss2.item() == pytest.approx((value / 3 + value / 2) / 2, abs=1e-9)
    loss.backward()
    assert t.grad is None, "gradient must not reach the teacher"
    assert s.grad is not None and s.grad[0, 0].abs().sum() > 0
    # argmax of (0, 0) is 0 and of (ln3, 0) is 0 too: every token agrees
    assert stats["opsd_top1_agree"] == pytest.approx(1.0)


def test_opsd_temperature_and_beta():
    s = torch.zeros(1, 1, 2, dtype=torch.float64)
    t = torch.tensor([[[2 * LN(3.0), 0.0]]], dtype=torch.float64)
    # temperature 2 halves the teacher logits -> (ln 3, 0), the hand case above
    assert token_divergence(s, t, divergence="reverse_kl", temperature=2.0).item() == pytest.approx(REV_KL)
    # beta 0.25: M = 0.25 P_T + 0.75 S = (0.5625, 0.4375)
    m = (0.5625, 0.4375)
    kl_t = 0.75 * LN(0.75 / m[0]) + 0.25 * LN(0.25 / m[1])
    kl_s = 0.5 * LN(0.5 / m[0]) + 0.5 * LN(0.5 / m[1])
    got = token_divergence(s, t, divergence="jsd", beta=0.25, temperature=2.0).item()
    assert got == pytest.approx(0.25 * kl_t + 0.75 * kl_s, abs=1e-9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(divergence="tvd"), "divergence"), (dict(beta=0.0), "beta"), (dict(beta=1.0), "beta"),
    (dict(temperature=0.0), "temperature"),
])
def test_opsd_bad_options(kwargs, match):
    s, t = _opsd_tensors()
    with pytest.raises(ValueError, match=match):
        opsd_loss(s, t, torch.ones(2, 3), **kwargs)


def test_opsd_bad_shapes():
    s, t = _opsd_tensors()
    with pytest.raises(ValueError, match="teacher_logits"):
        opsd_loss(s, t[:, :, :1], torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask has shape"):
        opsd_loss(s, t, torch.ones(2, 2))


def test_opsd_sampled_token_advantages_by_hand():
    # delta = teacher - student, clamped to +-20, 0 where masked, detached
    t = torch.tensor([[-1.0, -0.5, -30.0], [-2.0, 0.0, -1.0]], requires_grad=True)
    s = torch.tensor([[-2.0, -0.5, -1.0], [-1.0, -9.0, -1.0]], requires_grad=True)
    out = opsd_sampled_token_advantages(t, s, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    close(out, [[1.0, 0.0, -20.0], [-1.0, 9.0, 0.0]])
    assert not out.requires_grad


def test_grpo_plus_opsd_weighted_sum():
    assert grpo_plus_opsd(torch.tensor(0.5), torch.tensor(2.0), opsd_coef=0.25).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="opsd_coef"):
        grpo_plus_opsd(torch.tensor(0.5), torch.tensor(2.0), opsd_coef=-1.0)


def test_entropy_by_hand():
    # (0, 0) -> ln 2 = 0.6931472; (ln 3, 0) -> -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351;
    # a position with a zero-probability entry: (0, -inf) -> 0, not NaN
    logits = torch.zeros(1, 3, 2, dtype=torch.float64)
    logits[0, 1, 0] = LN(3.0)
    logits[0, 2, 1] = -math.inf
    h = token_entropy(torch.log_softmax(logits, -1))
    assert h.shape == (1, 3)
    assert h[0, 0].item() == pytest.approx(LN(2), abs=1e-12)
    assert h[0, 1].item() == pytest.approx(-(0.75 * LN(0.75) + 0.25 * LN(0.25)), abs=1e-12)
    assert h[0, 2].item() == 0.0
