"""Memory switches of a run: gradient checkpointing (`model.gradient_checkpointing`) and the rule
that decides whether a run keeps a teacher copy at all (`loop.run.needs_teacher`).

The teacher rule: an objective whose teacher runs only while lambda > 0 (rlsd) gets no teacher
copy when every scheduler declares, through `max_lam()`, that lambda is 0 at every step. A
scheduler that declares nothing gets one (built at step 0, so a snapshot teacher is always the
initial policy), and one that returns more than it declared stops the run instead of running a
step without the teacher it needs.
"""

from __future__ import annotations

import pytest
import torch

from rlsd_core import Magnitude, PluginError, SchedulerRecord, hookimpl
from rlsd_core import loop as T
from rlsd_core.config import build_config
from rlsd_core.engines import SamplingParams
from rlsd_core.loop import checkpoint
from rlsd_core.models import is_checkpointing, saved_activations, token_logprobs


def _cfg(tmp_path, **over):
    base = {"steps": 2, "threads": 1, "output_dir": str(tmp_path / "run"),
            "warmup.enabled": "false",
            "tasks": [{"name": "rev", "source": "reverse", "eval_size": 2, "train_size": 16}],
            "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
            "log.console": False, "log.plot": False}
    base.update(over)
    return build_config(overrides=list(base.items()))


def _no_max(lam0=0.5, eps_w=0.2):
    return lambda step, diagnostics: Magnitude(0.0 if step < 3 else lam0, eps_w)


class _Liar:
    def __call__(self, step, diagnostics):
        return Magnitude(0.0 if step < 2 else 0.3, 0.2)

    def max_lam(self):
        return 0.0


class _Schedulers:
    @hookimpl
    def rlsd_schedulers(self):
        return [SchedulerRecord(name="late_start", fn=_no_max),
                SchedulerRecord(name="liar", fn=lambda: _Liar())]


@pytest.mark.parametrize("over, has_teacher", [
    ({"scheduler.name": "grpo"}, False),
    ({"scheduler.name": "constant", "scheduler.options": {"lam": 0.0}}, False),
    ({"scheduler.name": "warmup_decay", "scheduler.options": {"lam0": 0.0}}, False),
    ({"scheduler.name": "release"}, True),
    ({"scheduler.name": "adaptive"}, True),
    # a task with its own scheduler that can be > 0 needs one even if the run's is 0
    ({"scheduler.name": "grpo", "tasks": [{"name": "rev", "source": "reverse", "eval_size": 2,
                                           "scheduler": {"name": "paper"}}]}, True),
    # OPSD distils toward the teacher whatever lambda is; GRPO never scores with one
    ({"scheduler.name": "grpo", "algo.loss": "opsd"}, True),
    ({"scheduler.name": "release", "algo.loss": "grpo"}, False),
    # a scheduler that declares no bound (its lambda starts at 0 and rises at step 3)
    ({"scheduler.name": "late_start"}, True),
])
def test_a_teacher_copy_exists_only_when_some_step_can_use_it(tmp_path, pm, over, has_teacher):
    pm.register(_Schedulers(), name="memory-test-schedulers")
    run = T.setup(_cfg(tmp_path, **over), pm)
    try:
        assert (run.parts.teacher is not None) == has_teacher
    finally:
        run.parts.close()


def test_a_run_without_teacher_trains_checkpoints_and_resumes(tmp_path, pm):
    run = T.setup(_cfg(tmp_path, **{"scheduler.name": "grpo"}), pm)
    try:
        m = T.train_step(run, 1)
        assert m["teacher_skipped"] == 1 and m["teacher_synced"] == 0
        saved = checkpoint.save(run, 1)
        assert checkpoint.restore(run, saved) == 1
    finally:
        run.parts.close()


def test_a_scheduler_that_breaks_its_declared_bound_stops_the_run(tmp_path, pm):
    pm.register(_Schedulers(), name="memory-test-schedulers")
    run = T.setup(_cfg(tmp_path, **{"scheduler.name": "liar"}), pm)
    try:
        assert run.parts.teacher is None
        T.train_step(run, 1)
        with pytest.raises(PluginError, match=r"returned lam 0.3 at step 2 but declares max_lam"):
            T.train_step(run, 2)
    finally:
        run.parts.close()


def _saved_activation_bytes(model, prompts, responses) -> tuple[int, torch.Tensor]:
    """Bytes of the activations autograd keeps for the backward pass (distinct storages, the
    weights excluded), and the gradient of a log-prob loss, for one training forward."""
    model.zero_grad(set_to_none=True)
    with saved_activations(model) as seen:
        loss = -token_logprobs(model, prompts, responses).logprobs.sum()
    loss.backward()
    return sum(seen.values()), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_gradient_checkpointing_keeps_fewer_activations_for_the_same_gradient(tmp_path, pm):
    prompts = [[5, 6, 7, 8, 9] * 6] * 4
    responses = [[10, 11, 12, 13] * 4] * 4
    plain = T.setup(_cfg(tmp_path / "a"), pm)
    ckpt = T.setup(_cfg(tmp_path / "b", **{"model.gradient_checkpointing": True}), pm)
    try:
        assert not is_checkpointing(plain.parts.model)
        assert is_checkpointing(ckpt.parts.model) and ckpt.parts.model.training
        kept_plain, grad_plain = _saved_activation_bytes(plain.parts.model, prompts, responses)
        kept_ckpt, grad_ckpt = _saved_activation_bytes(ckpt.parts.model, prompts, responses)
        torch.testing.assert_close(grad_ckpt, grad_plain, rtol=1e-5, atol=1e-6)
        assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)
        # The HF engine samples from the same model in eval mode: checkpointing is off there.
        gens = ckpt.parts.engine.generate([prompts[0]], SamplingParams(max_new_tokens=3))
        assert len(gens[0][0].token_ids) >= 1 and ckpt.parts.model.training
    finally:
        plain.parts.close()
        ckpt.parts.close()
