"""Teacher modes on the real tiny model: snapshot refresh every N steps, live, EMA values,
scores equal to a direct token_logprobs computation, memory accounting, and resume."""

from __future__ import annotations

import copy

import pytest
import torch

from rlsd_core.models import token_logprobs
from rlsd_core.loop import Teacher
from rlsd_core.models import load_tiny


@pytest.fixture(scope="module")
def base():
    model, tok = load_tiny()
    prompts = [tok.encode("Here is a reference solution: 12+35=47. What is 12+35?"),
               tok.encode("Hint: 9. What is 4+5?")]
    responses = [tok.encode("47<|im_end|>"), tok.encode("The answer is 9")]
    return model, prompts, responses


def _step(model, seed):
    """Stand-in for an optimizer step: move every weight a little, deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _direct(model, prompts, responses, temperature=0.7):
    with torch.no_grad():
        return token_logprobs(model, prompts, responses, temperature=temperature).logprobs


def test_snapshot_refreshes_every_n_steps(base):
    model, prompts, responses = base
    policy = copy.deepcopy(model)
    teacher = Teacher(policy, mode="snapshot", sync_every=3)
    initial = _direct(policy, prompts, responses)
    assert torch.equal(teacher.score(prompts, responses, temperature=0.7).logprobs, initial)
    flags = []
    for step in range(1, 7):
        _step(policy, step)
        flags.append(teacher.update(step))
        got = teacher.score(prompts, responses, temperature=0.7).logprobs
        if step < 3:  # still the initial policy, although the policy moved
            assert torch.equal(got, initial)
            assert not torch.allclose(got, _direct(policy, prompts, responses))
        if step in (3, 6):  # refreshed: now exactly the current policy
            assert torch.equal(got, _direct(policy, prompts, responses))
    assert flags == [False, False, True, False, False, True]
    assert teacher.last_sync_step == 6
    # The copy is separate storage: moving the policy after a refresh leaves it alone.
    snap = _direct(teacher.model, prompts, responses)
    _step(policy, 99)
    assert torch.equal(teacher.score(prompts, responses, temperature=0.7).logprobs, snap)


def test_live_scores_the_policy_without_gradient(base):
    model, prompts, responses = base
    policy = copy.deepcopy(model)
    policy.train()
    teacher = Teacher(policy, mode="live")
    assert teacher.model is policy and teacher.memory_bytes() == 0
    _step(policy, 1)
    assert teacher.update(1) is False
    scores = teacher.score(prompts, responses, temperature=0.7, micro_batch=1)
    assert not scores.logprobs.requires_grad
    # micro_batch=1 pads differently from the direct call: equal up to float rounding.
    assert torch.allclose(scores.logprobs, _direct(policy, prompts, responses), atol=1e-5)
    assert policy.training  # scoring does not leave the policy in eval mode


def test_ema_values_and_tied_weights(base):
    model, prompts, responses = base
    policy = copy.deepcopy(model)
    teacher = Teacher(policy, mode="ema", ema_decay=0.9)
    old = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    _step(policy, 1)
    assert teacher.update(1) is True
    new = teacher.model.state_dict()
    for k, v in policy.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(new[k], 0.9 * old[k] + 0.1 * v, atol=1e-7), k
    # Tied embeddings are one tensor: updated once, not twice, and still tied.
    assert new["lm_head.weight"].data_ptr() == new["model.embed_tokens.weight"].data_ptr()
    scores = teacher.score(prompts, responses, temperature=0.7).logprobs
    assert torch.equal(scores, _direct(teacher.model, prompts, responses))
    assert not torch.allclose(scores, _direct(policy, prompts, responses))


def test_memory_and_gradients_untouched(base):
    model, _, _ = base
    policy = copy.deepcopy(model)
    for p in policy.parameters():
        p.grad = torch.ones_like(p)
    teacher = Teacher(policy)
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in policy.parameters()}
    assert teacher.memory_bytes() == sum(unique.values())  # one copy; tied weights counted once
    assert all(p.grad is None for p in teacher.model.parameters())
    # requires_grad stays the policy's (torch's matmul path depends on it; see Teacher._copy)
    assert [p.requires_grad for p in teacher.model.parameters()] == [
        p.requires_grad for p in policy.parameters()]
    assert all(p.grad is not None for p in policy.parameters())  # the trainer's grads survive
    assert not set(unique) & {p.data_ptr() for p in teacher.model.parameters()}


def test_resume_restores_teacher_weights_and_schedule(base):
    model, prompts, responses = base
    policy = copy.deepcopy(model)
    teacher = Teacher(policy, mode="snapshot", sync_every=2)
    _step(policy, 1)
    teacher.update(1)
    _step(policy, 2)
    teacher.update(2)  # the snapshot now holds the weights after step 2
    state = teacher.state_dict()
    _step(policy, 3)
    resumed = Teacher(copy.deepcopy(policy), mode="snapshot", sync_every=5)
    resumed.load_state_dict(state)
    assert resumed.sync_every == 2 and resumed.last_sync_step == 2
    assert torch.equal(resumed.score(prompts, responses, temperature=1.0).logprobs,
                       teacher.score(prompts, responses, temperature=1.0).logprobs)
    with pytest.raises(ValueError, match="mode"):
        Teacher(policy, mode="live").load_state_dict(state)


def test_bad_arguments(base):
    model, _, _ = base
    with pytest.raises(ValueError, match="unknown mode"):
        Teacher(model, mode="frozen")
    with pytest.raises(ValueError, match="sync_every"):
        Teacher(model, mode="snapshot", sync_every=0)
    with pytest.raises(ValueError, match="ema_decay"):
        Teacher(model, mode="ema", ema_decay=1.0)
    with pytest.raises(ValueError, match="from 1"):
        Teacher(model, mode="live").update(0)
