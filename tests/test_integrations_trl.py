"""rlsd inside TRL (rlsd_core.integrations.trl), against the real TRL on the CPU with the tiny model.

- reward_function: a registered verifier through rlsd's runtime with TRL's reward contract
  (columns as keyword lists, conversational completions, None for infrastructure faults,
  column checks), and a real GRPOTrainer run scoring with it;
- RLSDTrainer: a real 2-step run with the reference_answer injector; on one fixed batch the
  advantages it hands TRL's loss are `rlsd_token_advantages` of the log-probs it scored, and
  those log-probs agree with rlsd's own forward (`token_logprobs`, a second implementation);
  with lambda 0, or with a teacher that sees exactly the student's prompt, its loss and gradient
  are GRPOTrainer's on the same batch; with lambda > 0 the loss is the hand-computed one.

Skipped, with the reason shown, when TRL is not installed (pip install -e '.[dev,trl]').
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional extra: pip install -e '.[dev,trl]'")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rlsd_core import Category, Magnitude, Verdict, VerifierRecord, hookimpl  # noqa: E402
from rlsd_core.algo import masked_mean, rlsd_token_advantages  # noqa: E402
from rlsd_core.data import render_prompt  # noqa: E402
from rlsd_core.integrations.trl import RLSDTrainer, reward_function  # noqa: E402
from rlsd_core.models import tiny_model_dir, token_logprobs  # noqa: E402
from rlsd_core.plugins import UnknownNameError  # noqa: E402

G = 4  # completions per prompt


def _length_reward(completions, rows, **options):
    # A reward that varies inside every group of an untrained model's samples, so advantages
    # are not all 0 (plumbing only: the real verifiers are exercised by the other tests).
    return [min(1.0, len(c) / 60.0) for c in completions]


def _flaky(completions, rows, **options):
    return [Verdict.fail(Category.GOLD_ERROR, "bad gold") if r["answer"] == "bad" else 1.0
            for c, r in zip(completions, rows)]


class _TestVerifiers:
    @hookimpl
    def rlsd_verifiers(self):
        return [VerifierRecord(name="length", fn=_length_reward, columns=(), in_process=True),
                VerifierRecord(name="flaky", fn=_flaky, in_process=True)]


@pytest.fixture
def plugins(pm):
    pm.register(_TestVerifiers(), name="trl-test-verifiers")
    yield pm
    pm.unregister("trl-test-verifiers")


@pytest.fixture(scope="module")
def model_dir():
    return tiny_model_dir()


def _model(model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir)


def _tokenizer(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    return tok


def _dataset(n: int = 8) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {a} + {a + 3}?"}],
                               "answer": str(2 * a + 3)} for a in range(n)])


def _args(tmp_path, **kw) -> GRPOConfig:
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                per_device_train_batch_size=8, num_generations=G, max_completion_length=12,
                max_steps=2, logging_steps=1, report_to=[], save_strategy="no", seed=0,
                learning_rate=1e-3)
    base.update(kw)
    return GRPOConfig(**base)


# ---------------------------------------------------------------------------------------------
# reward_function
# ---------------------------------------------------------------------------------------------

def test_reward_function_has_trls_contract_and_scores_through_the_runtime():
    fn = reward_function("math", dataset=_dataset())
    assert fn.__name__ == "rlsd_math"  # what TRL logs it as: rewards/rlsd_math/mean
    prompts = [[{"role": "user", "content": "What is 2 + 5?"}]] * 4
    completions = [
        [{"role": "assistant", "content": "2 + 5 = \\boxed{7}"}],      # conversational, right
        [{"role": "assistant", "content": [{"type": "text", "text": "It is 8"}]}],  # parts, wrong
        "The answer is \\boxed{7}.",                                      # standard, right
        [{"role": "assistant", "content": "7"}, {"role": "tool", "content": "ok"},
         {"role": "assistant", "content": "no, \\boxed{9}"}],             # last assistant turn
    ]
    out = fn(prompts=prompts, completions=completions, completion_ids=None, answer=["7"] * 4,
             trainer_state=None)
    assert out == [1.0, 0.0, 1.0, 0.0]
    stats = fn.stats
    assert stats["samples"] == 4 and stats["infra_faults"] == 0
    # two completions answer 7 for the same gold: the runtime's cache scores that key once
    assert stats["cache_hits"] >= 1
    fn.close()


def test_reward_function_checks_columns_at_construction_and_per_call():
    with pytest.raises(ValueError, match=r"'answer'.*columns: \['gold', 'prompt'\]"):
        reward_function("math", dataset=Dataset.from_list([{"prompt": "q", "gold": "1"}]))
    fn = reward_function("exact_match", dataset=["prompt", "answer"])
    with pytest.raises(ValueError, match="'answer'"):
        fn(prompts=["q"], completions=["1"], gold=["1"])
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 1 completions"):
        fn(prompts=["q"], completions=["1"], answer=["1", "2"])
    fn.close()


def test_unknown_verifier_names_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'exact_match'"):
        reward_function("exact_mach")


def test_infrastructure_faults_are_none_and_counted(plugins, caplog):
    fn = reward_function("flaky", plugins=plugins)
    logged = {}
    with caplog.at_level(logging.WARNING, logger="rlsd_core.integrations.trl"):
        out = fn(prompts=["q"] * 3, completions=["a", "b", "c"], answer=["1", "bad", "2"],
                 log_metric=lambda k, v: logged.__setitem__(k, v),
                 log_extra=lambda k, v: logged.__setitem__(k, v))
    assert out == [1.0, None, 1.0]  # None: TRL's "no reward", not a false 0
    assert logged["rlsd_flaky/infra_faults"] == 1.0
    assert logged["rlsd_flaky/verdict"] == ["ok", "gold_error", "ok"]
    assert fn.stats["infra_faults"] == 1
    assert "1 of 3 completions hit an infrastructure fault (gold_error: 1)" in caplog.text


def test_reward_function_pickles_and_rebuilds_its_runtime():
    fn = reward_function("exact_match", ignore_case=False)
    clone = pickle.loads(pickle.dumps(fn))
    assert clone(prompts=["q"], completions=["ABC"], answer=["abc"]) == [0.0]
    assert clone(prompts=["q"], completions=["abc"], answer=["abc"]) == [1.0]
    fn.close()
    clone.close()


def test_grpo_trainer_trains_two_steps_with_an_rlsd_verifier(tmp_path, model_dir):
    ds = _dataset()
    fn = reward_function("math", dataset=ds)
    trainer = GRPOTrainer(model=_model(model_dir), processing_class=_tokenizer(model_dir),
                          reward_funcs=[fn], args=_args(tmp_path), train_dataset=ds)
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rewards/rlsd_math/mean" in h]
    assert len(logs) == 2
    assert all(0.0 <= h["rewards/rlsd_math/mean"] <= 1.0 for h in logs)
    assert fn.stats["samples"] == 2 * 8  # every completion went through rlsd's runtime
    fn.close()


# ---------------------------------------------------------------------------------------------
# RLSDTrainer
# ---------------------------------------------------------------------------------------------

def test_rlsd_trainer_trains_two_steps_with_reference_answer(tmp_path, model_dir, plugins):
    ds = _dataset()
    fn = reward_function("length", plugins=plugins)
    trainer = RLSDTrainer(model=_model(model_dir), processing_class=_tokenizer(model_dir),
                          reward_funcs=[fn], args=_args(tmp_path), train_dataset=ds,
                          injector="reference_answer", scheduler="constant",
                          scheduler_options={"lam": 0.5, "eps_w": 0.2}, teacher="snapshot",
                          teacher_sync_every=1, plugins=plugins)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rlsd/lambda" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["rlsd/lambda"] == 0.5 and h["rlsd/eps_w"] == 0.2 and h["rlsd/teacher_skipped"] == 0
        assert 0.0 <= h["rlsd/clip_low_frac"] <= 1.0 and 0.0 <= h["rlsd/clip_high_frac"] <= 1.0
        assert h["rlsd/delta_abs_mean"] > 0  # the reference answer changes the teacher's view
        assert h["rlsd/adv_hat_abs_mean"] > 0  # the length reward gives non-zero advantages
        assert h["rlsd/teacher_synced"] == 1.0  # snapshot refreshed after every optimizer step
    moved = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert moved
    # the snapshot followed the policy (sync_every=1): same weights after the last step
    teacher = trainer.rlsd_teacher.model.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in trainer.model.state_dict().items())


def _fixed_batch(trainer, tok, advantages):
    """A generation batch as TRL's _generate_and_score_completions hands it on: 2 prompts x G
    completions, right-padded completions of different lengths."""
    rows = [dict(r) for r in _dataset(2) for _ in range(G)]
    prompt_ids = [render_prompt(tok, r["prompt"]) for r in rows]
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 3, 5, 4, 2, 5, 1, 4]
    completions = [torch.randint(10, 200, (n,), generator=gen).tolist() for n in lengths]
    p_len, c_len = max(map(len, prompt_ids)), max(lengths)
    pad = tok.pad_token_id
    output = {
        "prompt_ids": torch.tensor([[pad] * (p_len - len(p)) + p for p in prompt_ids]),
        "prompt_mask": torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) for p in prompt_ids]),
        "completion_ids": torch.tensor([c + [pad] * (c_len - len(c)) for c in completions]),
        "completion_mask": torch.tensor([[1] * len(c) + [0] * (c_len - len(c)) for c in completions]),
        "advantages": torch.tensor(advantages, dtype=torch.float32),
        "num_items_in_batch": torch.tensor(sum(lengths)),
    }
    return rows, prompt_ids, completions, output


ADV = [1.2, -0.4, 0.0, -0.8, -1.0, 0.5, 0.5, 0.0]


def _trainer(cls, tmp_path, model_dir, **kw):
    ds = _dataset()
    trainer = cls(model=_model(model_dir), processing_class=_tokenizer(model_dir),
                  reward_funcs=[reward_function("exact_match")], train_dataset=ds,
                  args=_args(tmp_path, loss_type="bnpo"), **kw)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def test_advantages_are_rlsd_token_advantages_of_the_scored_logprobs(tmp_path, model_dir):
    trainer = _trainer(RLSDTrainer, tmp_path, model_dir, teacher="live")
    tok = trainer.processing_class
    rows, prompt_ids, completions, output = _fixed_batch(trainer, tok, ADV)
    student, teacher = trainer.rlsd_logprobs(rows, output)
    out, diag = trainer.rlsd_reweight(rows, output, Magnitude(0.5, 0.2))
    mask = output["completion_mask"].bool()
    expected = rlsd_token_advantages(output["advantages"], teacher, student, mask, lam=0.5, eps_w=0.2)
    assert out["advantages"].shape == mask.shape
    assert torch.equal(out["advantages"], expected)
    assert torch.equal(out["old_per_token_logps"], student)
    assert diag["lambda"] == 0.5 and diag["teacher_skipped"] == 0.0
    assert diag["adv_hat_mean"] == pytest.approx(float(masked_mean(expected, mask)), abs=1e-6)

    # The same numbers from rlsd's own forward: teacher prompt = the injector's messages through
    # the chat template (rlsd_core.data.render_prompt), scored by rlsd_core.models.token_logprobs.
    injector = trainer.rlsd_injector
    teacher_ids = [render_prompt(tok, injector.fn(r, list(r["prompt"]), _ctx())) for r in rows]
    assert "Here is a reference solution:\n3" in tok.decode(teacher_ids[0])
    with torch.no_grad():
        ref_t = token_logprobs(trainer.model, teacher_ids, completions, temperature=trainer.temperature)
        ref_s = token_logprobs(trainer.model, prompt_ids, completions, temperature=trainer.temperature)
    assert torch.allclose(teacher[mask], ref_t.logprobs[mask], atol=1e-4)
    assert torch.allclose(student[mask], ref_s.logprobs[mask], atol=1e-4)
    independent = rlsd_token_advantages(output["advantages"], ref_t.logprobs, ref_s.logprobs, mask,
                                        lam=0.5, eps_w=0.2)
    assert torch.allclose(out["advantages"], independent, atol=1e-4)
    assert not torch.equal(out["advantages"], output["advantages"][:, None].expand_as(mask) * mask)


def _ctx():
    from rlsd_core import InjectorContext
    return InjectorContext()


def _loss_and_grad(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return loss.detach(), grad


def test_lambda_zero_is_grpo_and_skips_the_teacher(tmp_path, model_dir, monkeypatch):
    grpo = _trainer(GRPOTrainer, tmp_path / "g", model_dir)
    rlsd = _trainer(RLSDTrainer, tmp_path / "r", model_dir, scheduler="grpo")
    rows, _, _, output = _fixed_batch(rlsd, rlsd.processing_class, ADV)
    forwards = []
    monkeypatch.setattr(rlsd, "_get_per_token_logps_and_entropies",
                        lambda *a, **k: forwards.append(1) or pytest.fail("a forward ran"))
    out, diag = rlsd.rlsd_reweight(rows, dict(output), Magnitude(0.0, 0.2))
    assert diag == {"lambda": 0.0, "eps_w": 0.2, "teacher_skipped": 1.0} and not forwards
    monkeypatch.undo()
    loss_g, grad_g = _loss_and_grad(grpo, dict(output))
    loss_r, grad_r = _loss_and_grad(rlsd, out)
    assert torch.equal(loss_g, loss_r) and torch.equal(grad_g, grad_r)
    assert loss_g != 0  # the batch has non-zero advantages: the comparison is not 0 == 0


def test_a_teacher_that_sees_the_students_prompt_changes_nothing(tmp_path, model_dir):
    """The `none` injector with the live policy as teacher: delta is exactly 0, so A_hat is A at
    every token; the per-token [B, T] path through TRL's loss then gives GRPO's loss and
    gradient. This checks that the teacher prompt is tokenized exactly like TRL's own prompt."""
    grpo = _trainer(GRPOTrainer, tmp_path / "g", model_dir)
    rlsd = _trainer(RLSDTrainer, tmp_path / "r", model_dir, injector="none", teacher="live")
    rows, _, _, output = _fixed_batch(rlsd, rlsd.processing_class, ADV)
    out, diag = rlsd.rlsd_reweight(rows, dict(output), Magnitude(0.5, 0.2))
    assert diag["delta_abs_mean"] == 0.0 and diag["clip_frac"] == 0.0
    mask = output["completion_mask"].bool()
    assert torch.equal(out["advantages"], torch.where(mask, output["advantages"][:, None], 0.0))
    loss_g, grad_g = _loss_and_grad(grpo, dict(output))
    loss_r, grad_r = _loss_and_grad(rlsd, out)
    assert torch.allclose(loss_g, loss_r, rtol=0, atol=1e-7)
    assert torch.allclose(grad_g, grad_r, rtol=1e-5, atol=1e-8)


def test_lambda_positive_loss_is_the_hand_computed_one(tmp_path, model_dir):
    """loss_type bnpo, first step (ratio 1): per-token loss -A_hat, token mean over the batch."""
    rlsd = _trainer(RLSDTrainer, tmp_path, model_dir, teacher="live")
    rows, _, _, output = _fixed_batch(rlsd, rlsd.processing_class, ADV)
    student, teacher = rlsd.rlsd_logprobs(rows, output)
    out, _ = rlsd.rlsd_reweight(rows, dict(output), Magnitude(0.5, 0.2))
    mask = output["completion_mask"].bool()
    # A_hat by hand: w = clip(exp(sign(A) * (T - S)), 0.8, 1.2); A_hat = A * (0.5 + 0.5 * w)
    a = output["advantages"].double()[:, None]
    w = torch.exp(torch.sign(a) * (teacher.double() - student.double())).clamp(0.8, 1.2)
    a_hat = (a * (0.5 + 0.5 * w)).masked_fill(~mask, 0.0)
    expected = -(a_hat.sum() / mask.sum())
    loss, _ = _loss_and_grad(rlsd, out)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    grpo_loss = -(a.expand_as(a_hat).masked_fill(~mask, 0.0).sum() / mask.sum())
    assert float(loss) != pytest.approx(float(grpo_loss), abs=1e-6)  # RLSD moved the loss


def test_snapshot_teacher_scores_with_its_own_weights(tmp_path, model_dir):
    """The snapshot is a deep copy of a model TRL patched; its forward must not reach back to
    the live policy (see _own_fused_forward)."""
    rlsd = _trainer(RLSDTrainer, tmp_path, model_dir, injector="none", teacher="snapshot")
    rows, _, _, output = _fixed_batch(rlsd, rlsd.processing_class, ADV)
    s0, t0 = rlsd.rlsd_logprobs(rows, output)
    assert torch.equal(s0, t0)  # same weights, same prompt
    with torch.no_grad():
        for p in rlsd.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s1, t1 = rlsd.rlsd_logprobs(rows, output)
    assert torch.equal(t1, t0) and not torch.equal(s1, s0)
    ids = output["prompt_ids"][:1]
    with torch.no_grad():
        assert not torch.equal(rlsd.rlsd_teacher.model(input_ids=ids).logits,
                               rlsd.model(input_ids=ids).logits)
    rlsd.rlsd_teacher.update(rlsd.rlsd_teacher.sync_every)
    assert torch.equal(rlsd.rlsd_logprobs(rows, output)[1], s1)


def test_construction_errors_name_the_problem(tmp_path, model_dir):
    kw = dict(model=str(model_dir), reward_funcs=[reward_function("exact_match")],
              args=_args(tmp_path), train_dataset=_dataset())
    with pytest.raises(ValueError, match="reads the verdicts of the other completions"):
        RLSDTrainer(injector="verifier_feedback", **kw)
    with pytest.raises(UnknownNameError, match="Did you mean 'reference_answer'"):
        RLSDTrainer(injector="reference_answr", **kw)
    with pytest.raises(UnknownNameError, match="no scheduler named 'papr'"):
        RLSDTrainer(scheduler="papr", **kw)
    with pytest.raises(ValueError, match=r"teacher must be one of \('snapshot', 'live', 'ema'\)"):
        RLSDTrainer(teacher="frozen", **kw)
    with pytest.raises(ValueError, match=r"injector 'reference_solution' needs dataset column\(s\) "
                                         r"\['solution'\]"):
        RLSDTrainer(injector="reference_solution", processing_class=_tokenizer(model_dir), **kw)


def test_the_docs_example_runs(tmp_path, monkeypatch):
    """docs/integrations.md's RLSDTrainer example, as written (its output_dir is relative)."""
    import re
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "RLSDTrainer(" in b]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/integrations.md", "exec"), scope)
    trainer = scope["trainer"]
    assert trainer.state.global_step == 2
    lams = [h["rlsd/lambda"] for h in trainer.state.log_history if "rlsd/lambda" in h]
    assert lams == [pytest.approx(0.5 * (1 - 1 / 60)), pytest.approx(0.5 * (1 - 2 / 60))]  # release
