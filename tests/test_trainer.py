"""The training loop's plumbing, on the real tiny model with real HF sampling and real backward.

The untrained tiny model never answers a built-in task right, so its groups would all score 0
and carry no gradient. These tests score it with small inline verifiers instead (a response of
even length earns 1), which gives mixed groups from the first step: every stage of the loop
then does real work.
"""

from __future__ import annotations

import json

import pytest
import torch

from rlsd_core import Category, ObjectiveRecord, Verdict, VerifierRecord, hookimpl
from rlsd_core import algo
from rlsd_core import loop as T
from rlsd_core.loop import trainer as loop_trainer
from rlsd_core.config import build_config


def _even(completions, rows, **_):
    return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


_calls = [0]


def _flaky(completions, rows, **_):
    # Every third completion scored hits an "infrastructure fault" (counted across calls: the
    # runtime may score one completion per call); the rest are scored like _even.
    out = []
    for c in completions:
        out.append(Verdict.fail(Category.VERIFIER_ERROR, "judge crashed") if _calls[0] % 3 == 0
                   else (1.0 if len(c) % 2 == 0 else 0.0))
        _calls[0] += 1
    return out


class _Plugin:
    @hookimpl
    def rlsd_verifiers(self):
        return [VerifierRecord(name="even_length", fn=_even, columns=(), in_process=True),
                VerifierRecord(name="flaky", fn=_flaky, columns=(), in_process=True)]


@pytest.fixture
def tpm(pm):
    pm.register(_Plugin(), name="trainer-test-plugin")
    return pm


def _cfg(tmp_path, **over):
    base = {
        "steps": 2, "threads": 1, "output_dir": str(tmp_path / "run"),
        "warmup.enabled": "false",
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 4,
                   "train_size": 64}],
        "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
        "eval.max_new_tokens": 6, "log.console": False, "log.plot": False,
        "scheduler.name": "constant", "optim.lr": 1e-3,
    }
    base.update(over)
    return build_config(overrides=list(base.items()))


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_rlsd_step_trains_and_logs_every_diagnostic(tpm, tmp_path):
    run = T.setup(_cfg(tmp_path), tpm)
    before = _params(run.parts.model)
    m = T.train_step(run, 1)
    after = run.parts.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    for key in ("delta_mean", "w_mean", "clip_low_frac", "clip_high_frac", "adv_hat_mean",
                "adv_hat_abs_mean", "lambda", "entropy", "response_length", "reward/rev",
                "zero_var_frac", "teacher_synced", "leakage_count", "infra_masked", "pg_clipfrac",
                "grad_norm", "loss"):
        assert key in m and m[key] is not None, key
    assert m["lambda"] == 0.5 and m["teacher_skipped"] == 0
    assert m["grad_norm"] > 0
    assert 0 < m["response_length"] <= 6
    # The snapshot teacher is frozen until its first sync: after one step it differs from the policy.
    assert m["teacher_synced"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(run.parts.teacher.model.parameters(), run.parts.model.parameters()))


def test_teacher_forward_is_skipped_when_lambda_is_zero(tpm, tmp_path):
    # A schedule that can use the teacher later (so the run has one) but is 0 at step 1.
    run = T.setup(_cfg(tmp_path, **{"scheduler.name": "warmup_decay",
                                    "scheduler.options": {"warmup": 5, "origin": 1}}), tpm)
    calls = []
    real = run.parts.teacher.score
    run.parts.teacher.score = lambda *a, **k: calls.append(1) or real(*a, **k)
    m = T.train_step(run, 1)
    assert calls == []
    assert m["teacher_skipped"] == 1 and m["lambda"] == 0.0
    assert m["delta_mean"] is None and m["adv_hat_abs_mean"] is not None

    run2 = T.setup(_cfg(tmp_path, **{"output_dir": str(tmp_path / "r2")}), tpm)
    real2 = run2.parts.teacher.score
    run2.parts.teacher.score = lambda *a, **k: calls.append(1) or real2(*a, **k)
    T.train_step(run2, 1)
    assert calls == [1]


def test_infra_faults_are_masked_counted_and_logged(tpm, tmp_path):
    run = T.setup(_cfg(tmp_path, **{"tasks.0.verifier": "flaky"}), tpm)
    seen = []
    orig = algo.policy_loss

    def spy(logprobs, old, adv, mask, **kw):
        seen.append(mask.clone())
        return orig(logprobs, old, adv, mask, **kw)

    algo.policy_loss = spy
    _calls[0] = 0
    try:
        m = T.train_step(run, 1)
    finally:
        algo.policy_loss = orig
    n = 2 * 4
    faulty = [i for i in range(n) if i % 3 == 0]
    assert m["infra_masked"] == len(faulty)
    assert m["infra/verifier_error"] == len(faulty)
    mask = seen[0]
    assert not mask[faulty].any(), "infra-fault samples must not train"
    assert mask[[i for i in range(n) if i not in faulty]].any()


@pytest.mark.parametrize("loss, extra", [
    ("grpo", {}),
    ("opsd", {}),
    ("opsd", {"algo.opsd_divergence": "sampled"}),
    ("grpo+opsd", {"algo.opsd_weight": 0.5}),
    ("rlsd", {"algo.agg": "seq-mean-token-mean", "algo.negative_only": True}),
])
def test_every_objective_takes_a_finite_step(tpm, tmp_path, loss, extra):
    run = T.setup(_cfg(tmp_path, **{"algo.loss": loss, **extra}), tpm)
    m = T.train_step(run, 1)
    assert m["loss"] is not None and torch.isfinite(torch.tensor(m["loss"]))
    if loss in ("opsd", "grpo+opsd") and "algo.opsd_divergence" not in extra:
        assert "opsd_loss" in m and "opsd_top1_agree" in m
    if loss == "grpo":
        assert run.parts.teacher is None and m["teacher_skipped"] == 1


_seen_credit: list = []


def _positive_credit(b):
    # GRPO credit on responses that beat their group only (the hookspec's example objective)
    return algo.rlsd_token_advantages(b.advantages.clamp(min=0), None, b.old_logprobs, b.mask,
                                      lam=0.0, eps_w=0.2)


def _positive_loss(b):
    _seen_credit.append(b.token_advantages.detach().clone())
    return algo.policy_loss(b.logprobs, b.old_logprobs, b.token_advantages, b.mask,
                            denominator=b.denominator)


class _ObjectivePlugin:
    @hookimpl
    def rlsd_objectives(self):
        return [ObjectiveRecord(name="positive_only", credit=_positive_credit, loss=_positive_loss)]


def test_a_plugin_objective_is_selected_by_name(tpm, tmp_path):
    tpm.register(_ObjectivePlugin(), name="objective-plugin")
    run = T.setup(_cfg(tmp_path, **{"algo.loss": "positive_only"}), tpm)
    assert run.parts.teacher is None, "teacher='never': no teacher copy is built"
    _seen_credit.clear()
    m = T.train_step(run, 1)
    assert _seen_credit, "the plugin's loss trained the step"
    assert all((c >= 0).all() for c in _seen_credit) and any((c > 0).any() for c in _seen_credit)
    assert m["adv_hat_mean"] > 0 and m["teacher_skipped"] == 1 and m["lambda"] == 0.0


def test_ppo_epochs_and_mini_batches_count_optimizer_steps(tpm, tmp_path):
    run = T.setup(_cfg(tmp_path, **{"optim.ppo_epochs": 2, "optim.mini_batches": 2}), tpm)
    m = T.train_step(run, 1)
    assert m["optimizer_steps"] == 4
    assert m["ratio_mean"] != 1.0, "later mini-batches must see a moved policy"


def test_gradient_accumulation_matches_one_big_batch(tpm, tmp_path):
    grads = []
    for accum in (1, 4):
        run = T.setup(_cfg(tmp_path, **{"optim.grad_accum": accum,
                                        "output_dir": str(tmp_path / f"a{accum}")}), tpm)
        real_step = run.parts.optimizer.step

        def capture(*a, _real=real_step, _run=run, **k):
            grads.append({n: p.grad.clone() for n, p in _run.parts.model.named_parameters()
                          if p.grad is not None})
            return _real(*a, **k)

        run.parts.optimizer.step = capture
        T.train_step(run, 1)
    one, four = grads
    assert one.keys() == four.keys() and one
    for k in one:
        assert torch.allclose(one[k], four[k], atol=1e-7, rtol=1e-4), k


def test_same_seed_same_metrics(tpm, tmp_path):
    def run_once(where):
        run = T.setup(_cfg(tmp_path, **{"output_dir": str(tmp_path / where)}), tpm)
        return [{k: v for k, v in T.train_step(run, s).items() if not k.startswith("time/")}
                for s in (1, 2)]

    assert run_once("x") == run_once("y")


def test_rows_depend_only_on_seed_and_step(tpm, tmp_path):
    cfg = _cfg(tmp_path, **{"tasks": [{"name": "a", "source": "addition", "weight": 3, "eval_size": 5},
                                      {"name": "r", "source": "reverse", "eval_size": 5}],
                            "rollout.prompts_per_step": 4})
    from rlsd_core.data import load_task
    tasks = [load_task(t, tpm.registry, seed=0) for t in cfg.tasks]
    first = T.draw_rows(tasks, 4, 0, 5)
    assert [t.name for t, _ in first] == ["a", "a", "a", "r"]
    assert first == T.draw_rows(tasks, 4, 0, 5)
    assert first != T.draw_rows(tasks, 4, 0, 6)
    held = {r["id"] for t in tasks for r in t.eval}
    assert not held & {r["id"] for s in range(1, 50) for _, r in T.draw_rows(tasks, 4, 0, s)}


def test_full_run_writes_run_directory_and_atomic_checkpoint(tpm, tmp_path):
    cfg = _cfg(tmp_path, **{"steps": 3, "eval.every": 2, "log.plot": True, "log.samples_every": 1})
    summary = T.train(cfg, tpm)
    run_dir = tmp_path / "run"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3]
    assert "eval/rev" in lines[0] and "eval/rev" in lines[2] and "eval/rev" in lines[3]
    assert (run_dir / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "samples.jsonl").stat().st_size > 0
    assert build_config(run_dir / "config.yaml") == cfg
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-000003"], "only the final checkpoint, and no .tmp left behind"
    state = torch.load(run_dir / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3 and "config" in state
    assert {"optimizer", "teacher", "schedule", "progress", "rng"} <= set(state["parts"])
    assert state["parts"]["optimizer"]["state"], "optimizer moments must be saved"
    assert state["parts"]["teacher"]["weights"] is not None
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["tasks"]["rev"]["heldout_after"] == summary["tasks"]["rev"]["heldout_after"]
    assert 0 <= summary["tasks"]["rev"]["heldout_before"] <= 1


def test_an_error_reaches_the_on_error_hook(tpm, tmp_path):
    seen = []

    class Watcher:
        @hookimpl
        def rlsd_on_error(self, run, step, error):
            seen.append((step, str(error)))

    tpm.register(Watcher(), name="watcher")
    run_fail = loop_trainer.train_step

    def boom(run, step):
        raise RuntimeError("boom")

    loop_trainer.train_step = boom
    try:
        with pytest.raises(RuntimeError, match="boom"):
            T.train(_cfg(tmp_path), tpm)
    finally:
        loop_trainer.train_step = run_fail
    assert seen == [(1, "boom")]
