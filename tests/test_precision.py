"""Mixed precision that learns (rlsd_core.loop.optim), through real training steps on the tiny
model at a learning rate large models use (1e-6).

Every run here trains the same steps from the same weights and seed; a response of even length
earns 1 (an inline verifier), so every step has mixed groups and a real gradient. What is
compared: which weights moved and in which direction.
- fp32 weights, fp32 compute: the reference.
- fp32 weights under bf16 autocast (CPU autocast): must move like the reference.
- bf16 weights with fp32 masters (model.dtype bfloat16): the masters move like the reference;
  the bf16 weights are the masters rounded.
- AdamW straight on bf16 weights: the failure the optimizer refuses to build, shown moving almost
  nothing (the check fails if it ever starts learning, which would make the refusal obsolete).
"""

from __future__ import annotations

import pytest
import torch

from rlsd_core import loop as T
from rlsd_core.config import build_config
from rlsd_core.loop.optim import (MasterWeightsAdamW, PrecisionError, build_optimizer, check_learns,
                                  stepped_params)
from verifier_plugins import EvenLengthPlugin

LR = 1e-6
STEPS = 2


@pytest.fixture(scope="module")
def tpm():
    from rlsd_core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(EvenLengthPlugin(), name="precision-test-plugin")
    return pm


def _cfg(tmp_path, **over):
    base = {
        "steps": STEPS, "threads": 1, "output_dir": str(tmp_path / "run"), "seed": 3,
        "warmup.enabled": "false",
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 4,
                   "train_size": 64}],
        "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
        "log.console": False, "log.plot": False, "scheduler.name": "constant",
        "optim.lr": LR, "optim.weight_decay": 0.0,
        "optim.lr_warmup_steps": 0,  # both steps at LR: the precision question is about LR itself
    }
    base.update(over)
    return build_config(overrides=list(base.items()))


def _train(tmp_path, tpm, optimizer=None, **over):
    """(run, fp32 weights before, fp32 weights after STEPS steps), by parameter name."""
    run = T.setup(_cfg(tmp_path, **over), tpm)
    if optimizer is not None:
        run.parts.optimizer.remove_hooks()
        run.parts.optimizer = optimizer(run.parts.model)
    before = {n: p.detach().float().clone() for n, p in run.parts.model.named_parameters()}
    try:
        for step in range(1, STEPS + 1):
            metrics = T.train_step(run, step)
            assert metrics["grad_norm"] > 0 and metrics["zero_var_frac"] < 1
    finally:
        run.parts.close()
    return run, before


def _moved(before: dict, after: dict) -> float:
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    return changed / sum(t.numel() for t in before.values())


def _delta(before: dict, after: dict) -> torch.Tensor:
    return torch.cat([(after[n] - before[n]).flatten() for n in before])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tpm):
    run, before = _train(tmp_path_factory.mktemp("fp32"), tpm, **{"optim.precision": "fp32"})
    after = {n: p.detach().float() for n, p in run.parts.model.named_parameters()}
    assert isinstance(run.parts.optimizer, torch.optim.AdamW)
    assert not isinstance(run.parts.optimizer, MasterWeightsAdamW)
    return before, after


def test_fp32_reference_moves_every_weight(reference):
    before, after = reference
    assert _moved(before, after) > 0.999


def test_bf16_autocast_moves_weights_like_fp32(tmp_path, tpm, reference):
    ref_before, ref_after = reference
    run, before = _train(tmp_path, tpm, **{"optim.precision": "bf16"})
    assert run.parts.autocast and next(run.parts.model.parameters()).dtype == torch.float32
    for n in before:
        assert torch.equal(before[n], ref_before[n])  # same start
    after = {n: p.detach().float() for n, p in run.parts.model.named_parameters()}
    assert _moved(before, after) > 0.999
    d, ref = _delta(before, after), _delta(ref_before, ref_after)
    cos = torch.nn.functional.cosine_similarity(d, ref, dim=0).item()
    sign_agree = (d.sign() == ref.sign()).float().mean().item()
    assert cos > 0.9 and sign_agree > 0.9, (cos, sign_agree)
    assert d.abs().mean().item() == pytest.approx(ref.abs().mean().item(), rel=0.1)


def test_bf16_weights_learn_through_fp32_masters(tmp_path, tpm):
    run, before = _train(tmp_path, tpm, **{"model.dtype": "bfloat16"})
    opt = run.parts.optimizer
    assert isinstance(opt, MasterWeightsAdamW)
    params = dict(run.parts.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    masters = dict(zip([n for n, p in params.items() if p.requires_grad], opt.masters))
    assert all(m.dtype == torch.float32 for m in masters.values())
    # The masters hold every small update; the weights the forward sees are them, rounded.
    assert _moved(before, {n: m.detach() for n, m in masters.items()}) > 0.999
    for n, m in masters.items():
        assert torch.equal(params[n].detach(), m.detach().to(torch.bfloat16))
        assert params[n].grad is None  # moved into the master's fp32 gradient, then freed
    # A bf16 weight changes only when its master crossed a rounding boundary: few, at this lr.
    assert _moved(before, {n: p.detach().float() for n, p in params.items()}) < 0.2


def test_adamw_straight_on_bf16_weights_is_refused_and_would_not_learn(tmp_path, tpm):
    def pure(model):
        return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    run, before = _train(tmp_path, tpm, optimizer=pure, **{"model.dtype": "bfloat16"})
    after = {n: p.detach().float() for n, p in run.parts.model.named_parameters()}
    assert _moved(before, after) < 0.2  # the measured failure: most updates round away
    with pytest.raises(PrecisionError, match=r"2% of bf16 weights against 99\.98%"):
        check_learns(run.parts.optimizer)


def test_build_optimizer_picks_the_layout_from_the_weights():
    fp32 = torch.nn.Linear(4, 3)
    assert type(build_optimizer(fp32, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)) is torch.optim.AdamW
    bf16 = torch.nn.Linear(4, 3).to(torch.bfloat16)
    opt = build_optimizer(bf16, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    assert isinstance(opt, MasterWeightsAdamW)
    assert all(p.dtype == torch.float32 for p in stepped_params(opt))


def test_master_gradients_accumulate_in_fp32_across_micro_batches():
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 1, bias=False)
    model = torch.nn.Linear(8, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(model.weight.float())
    opt = build_optimizer(model, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    xs = [torch.randn(4, 8) for _ in range(4)]
    for x in xs:  # four micro-batches, one optimizer step
        model(x.to(torch.bfloat16)).float().sum().backward()
        ref(x).sum().backward()
    (master,) = opt.masters
    assert master.grad.dtype == torch.float32 and model.weight.grad is None
    torch.testing.assert_close(master.grad, ref.weight.grad, atol=0.05, rtol=0.02)


def test_master_weights_survive_a_state_dict_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2).to(torch.bfloat16)
    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    for _ in range(3):
        model(torch.randn(3, 6, dtype=torch.bfloat16)).float().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = opt.state_dict()
    fresh_model = torch.nn.Linear(6, 2).to(torch.bfloat16)
    fresh = build_optimizer(fresh_model, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    fresh.load_state_dict(state)
    for a, b in zip(fresh.masters, opt.masters):
        assert torch.equal(a, b)  # the low bits the bf16 weights lack are kept
    with pytest.raises(ValueError, match="master weights"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "master_weights"})


def test_an_ema_teacher_of_bf16_weights_accumulates_in_fp32():
    """decay 0.99: each update moves the EMA by 1% of the gap to the policy, below half a bf16
    ulp for a small gap; accumulated in bf16 the teacher would never move."""
    from rlsd_core.loop import Teacher

    torch.manual_seed(0)
    policy = torch.nn.Linear(64, 64, bias=False).to(torch.bfloat16)
    teacher = Teacher(policy, mode="ema", ema_decay=0.99)
    start = teacher.model.weight.detach().clone()
    with torch.no_grad():
        policy.weight.mul_(1.01)  # a 1% gap: each EMA step moves 0.01% of a weight
    for step in range(1, 201):
        teacher.update(step)
    moved = (teacher.model.weight != start).float().mean().item()
    want = (start.float() + (policy.weight.float() - start.float()) * (1 - 0.99 ** 200))
    assert moved > 0.9
    torch.testing.assert_close(teacher.model.weight.float(), want.to(torch.bfloat16).float())
    # The fp32 accumulator is part of the state (a resume keeps its low bits) and of the cost.
    state = teacher.state_dict()
    assert state["ema32"] is not None
    assert teacher.memory_bytes() == 64 * 64 * 2 + 64 * 64 * 4
    other = Teacher(policy, mode="ema", ema_decay=0.99)
    other.load_state_dict(state)
    other.update(201)
    teacher.update(201)
    assert torch.equal(other.model.weight, teacher.model.weight)

    # The contrast: the same updates accumulated in bf16 move almost nothing.
    ema = start.clone()
    for _ in range(200):
        ema.lerp_(policy.weight.detach(), 0.01)
    assert (ema != start).float().mean().item() < 0.1


def test_lr_warmup_ramps_linearly_then_holds():
    from types import SimpleNamespace

    from rlsd_core.loop.optim import lr_at

    cfg = SimpleNamespace(lr=1e-4, lr_warmup_steps=4)
    assert [lr_at(cfg, s) for s in range(1, 7)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    assert lr_at(SimpleNamespace(lr=1e-4, lr_warmup_steps=0), 1) == 1e-4


def test_the_first_ramped_step_moves_no_weight_by_more_than_its_lr(tmp_path, tpm):
    # AdamW's first step moves every weight by the full lr (m/sqrt(v) = sign(g)): the ramp is
    # what bounds it. With lr 1e-3 and a 4-step ramp, step 1 runs at 2.5e-4.
    run = T.setup(_cfg(tmp_path, **{"optim.lr": 1e-3, "optim.lr_warmup_steps": 4}), tpm)
    before = {n: p.detach().clone() for n, p in run.parts.model.named_parameters()}
    try:
        metrics = T.train_step(run, 1)
    finally:
        run.parts.close()
    assert metrics["lr"] == pytest.approx(2.5e-4)
    step = max(float((p.detach() - before[n]).abs().max()) for n, p in run.parts.model.named_parameters())
    assert 2.0e-4 < step <= 2.5e-4 * (1 + 1e-4)
