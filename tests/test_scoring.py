"""The scoring forwards (pi_old, teacher) on the real tiny model and through the real trainer:
chunked log-probs and entropy, shared prompt prefixes against the plain forward, pi_old from the
rollout against the recomputed one, one precision for teacher and student (delta 0 when the
teacher sees the student's prompt), and full-vocabulary OPSD teacher logits per micro-batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from rlsd_core import algo
from rlsd_core import loop as T
from rlsd_core.config import ConfigError, build_config
from rlsd_core.loop import scoring, stages
from rlsd_core.models import load_tiny, token_logprobs
from rlsd_core.models import forward
from rlsd_core.models.forward import PrefixSharingUnsupported
from verifier_plugins import EvenLengthPlugin


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_tiny()
    model.eval()
    return model, tok


def _groups(tok, g=4):
    """Three prompts of different lengths, G responses each (lengths 0..6), row-major."""
    prompts = [tok.encode(t) for t in ("What is 12 + 35?", "Hi",
                                       "Here is a reference solution: 7 * 8 = 56. Solve 7 * 8")]
    gen = torch.Generator().manual_seed(0)
    rows, responses = [], []
    for p in prompts:
        for k in range(g):
            n = [3, 1, 6, 0, 2, 5][(len(rows) + k) % 6]
            rows.append(p)
            responses.append(torch.randint(5, len(tok), (n,), generator=gen).tolist())
    return rows, responses


# --- chunked scoring ---------------------------------------------------------------------------

def test_blocked_scoring_is_bitwise_the_whole_tensor_log_softmax(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 50, generator=gen) * 4
    targets = torch.randint(0, 50, (3, 7), generator=gen)
    logp = F.log_softmax(logits / 0.7, -1)
    want_lp = logp.gather(-1, targets[..., None])[..., 0]
    want_ent = algo.token_entropy(logp)
    # blocks of 3 positions (inside a sequence) and of 2 whole sequences (16 // 50 = 0 -> 1, ...)
    for elements in (150, 700, 1 << 24, 1):
        monkeypatch.setattr(forward, "SCORE_BLOCK_ELEMENTS", elements)
        lp, ent = forward._score(logits, targets, 0.7, True)
        assert torch.equal(lp, want_lp) and torch.equal(ent, want_ent), elements


def test_no_grad_scoring_never_builds_more_than_one_block(tiny, monkeypatch):
    # The float32 temporaries (log-softmax, entropy) are bounded by SCORE_BLOCK_ELEMENTS, not by
    # the chunk: with blocks of 3 positions, no log-softmax sees more than 3 x V logits.
    model, tok = tiny
    rows, responses = _groups(tok)
    v = model.config.vocab_size
    monkeypatch.setattr(forward, "SCORE_BLOCK_ELEMENTS", 3 * v)
    sizes, real = [], F.log_softmax
    monkeypatch.setattr(forward.F, "log_softmax", lambda x, **k: sizes.append(x.numel()) or real(x, **k))
    with torch.no_grad():
        blocked = token_logprobs(model, rows, responses, micro_batch=12, return_entropy=True)
    assert sizes and max(sizes) <= 3 * v
    monkeypatch.setattr(forward, "SCORE_BLOCK_ELEMENTS", 1 << 24)
    with torch.no_grad():
        whole = token_logprobs(model, rows, responses, micro_batch=12, return_entropy=True)
    assert torch.equal(blocked.logprobs, whole.logprobs) and torch.equal(blocked.entropy, whole.entropy)


def test_chunks_bound_the_forward_batch_and_agree(tiny):
    model, tok = tiny
    rows, responses = _groups(tok)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            small = token_logprobs(model, rows, responses, micro_batch=5, return_entropy=True)
    finally:
        handle.remove()
    assert seen == [5, 5, 2]
    with torch.no_grad():
        whole = token_logprobs(model, rows, responses, micro_batch=len(rows), return_entropy=True)
    assert torch.equal(small.mask, whole.mask)
    assert torch.allclose(small.logprobs, whole.logprobs, atol=1e-5)
    assert torch.allclose(small.entropy, whole.entropy, atol=1e-5)


# --- shared prefixes ---------------------------------------------------------------------------

@pytest.mark.parametrize("micro_batch", [12, 3, 5])  # whole groups, a group split, a mix
def test_shared_prefix_equals_the_plain_forward(tiny, micro_batch):
    model, tok = tiny
    rows, responses = _groups(tok)
    with torch.no_grad():
        plain = token_logprobs(model, rows, responses, temperature=0.8, micro_batch=micro_batch,
                               return_entropy=True, return_logits=True)
        shared = token_logprobs(model, rows, responses, temperature=0.8, micro_batch=micro_batch,
                                return_entropy=True, return_logits=True, share_prefix=True)
    assert torch.equal(plain.mask, shared.mask)
    m = plain.mask
    assert (plain.logprobs - shared.logprobs).abs().max() <= 1e-5
    assert (plain.entropy - shared.entropy).abs().max() <= 1e-5
    assert (plain.logits[m] - shared.logits[m]).abs().max() <= 1e-5
    assert (shared.logprobs[~m] == 0).all() and (shared.entropy[~m] == 0).all()


def test_shared_prefix_with_distinct_prompts_in_a_group(tiny):
    # Group injectors give every response its own teacher prompt: nothing to share, same numbers.
    model, tok = tiny
    rows, responses = _groups(tok)
    rows = [r + [7] * (i % 3) for i, r in enumerate(rows)]
    with torch.no_grad():
        plain = token_logprobs(model, rows, responses, micro_batch=6)
        shared = token_logprobs(model, rows, responses, micro_batch=6, share_prefix=True)
    assert (plain.logprobs - shared.logprobs).abs().max() <= 1e-5


def test_shared_prefix_carries_gradient(tiny):
    model, tok = tiny
    rows, responses = _groups(tok)
    plain = token_logprobs(model, rows[:4], responses[:4])
    shared = token_logprobs(model, rows[:4], responses[:4], share_prefix=True)
    g_plain = torch.autograd.grad(plain.logprobs.sum(), model.model.embed_tokens.weight)[0]
    g_shared = torch.autograd.grad(shared.logprobs.sum(), model.model.embed_tokens.weight)[0]
    assert torch.allclose(g_plain, g_shared, atol=1e-5)


def _sliding_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True,
                      sliding_window=3, layer_types=["sliding_attention"] * 2)
    return Qwen2ForCausalLM(cfg).eval()


def test_a_cache_that_cannot_be_shared_falls_back_or_raises():
    model = _sliding_model()
    rows = [[1, 2, 3, 4, 5]] * 2 + [[6, 7]] * 2
    responses = [[8, 9, 10], [11], [12, 13], [14, 15, 16]]
    with torch.no_grad():
        with pytest.raises(PrefixSharingUnsupported, match="share_prefix: false"):
            token_logprobs(model, rows, responses, share_prefix=True)
        plain = token_logprobs(model, rows, responses)
        auto = token_logprobs(model, rows, responses, share_prefix="auto")
    assert torch.equal(plain.logprobs, auto.logprobs)


# --- through the trainer -----------------------------------------------------------------------

@pytest.fixture
def tpm(pm):
    pm.register(EvenLengthPlugin(), name="scoring-test-plugin")
    return pm


def _cfg(tmp_path, **over):
    base = {
        "steps": 2, "threads": 1, "output_dir": str(tmp_path / "run"), "warmup.enabled": "false",
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 4,
                   "train_size": 64}],
        "rollout.prompts_per_step": 3, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
        "eval.max_new_tokens": 6, "log.console": False, "log.plot": False,
        "scheduler.name": "constant", "optim.lr": 1e-3, "scoring.micro_batch": 5,
    }
    base.update(over)
    return build_config(overrides=list(base.items()))


def _until_pi_old(run, step=1):
    parts = run.parts
    batch = stages.rows(parts, run.schedule, step)
    out = stages.rollout(parts, batch)
    verified = stages.verify(parts, batch, out)
    ids = stages.teacher_prompts(parts, batch, out, verified)
    return batch, out, verified, ids, stages.advantages(parts, batch, verified)


def test_pi_old_from_the_rollout_equals_the_recomputed_one(tpm, tmp_path):
    run = T.setup(_cfg(tmp_path), tpm)
    parts = run.parts
    batch, out, verified, ids, adv = _until_pi_old(run)
    taken = stages.pi_old(parts, out, verified, ids, adv)
    parts.cfg.scoring.pi_old = "recompute"
    again = stages.pi_old(parts, out, verified, ids, adv)
    assert (taken.pi_old_source, again.pi_old_source) == ("rollout", "recompute")
    assert torch.equal(taken.response_mask, again.response_mask)
    assert torch.equal(taken.mask, again.mask)
    assert (taken.old_logprobs - again.old_logprobs).abs().max() <= 1e-5
    assert (taken.entropy - again.entropy).abs().max() <= 1e-5
    assert taken.response_mask.any()


@pytest.mark.parametrize("over, why", [
    ({"optim.precision": "bf16"}, "autocast"),
    ({"optim.ppo_epochs": 2}, "ppo_epochs"),
    ({"scoring.pi_old": "recompute"}, "recompute"),
])
def test_pi_old_is_recomputed_unless_provably_the_trainers(tpm, tmp_path, over, why):
    run = T.setup(_cfg(tmp_path, **over), tpm)
    p = run.parts
    assert why in scoring.rollout_pi_old_refusal(p.cfg, p.model, p.engine, p.autocast)
    batch, out, verified, ids, adv = _until_pi_old(run)
    assert stages.pi_old(p, out, verified, ids, adv).pi_old_source == "recompute"


def test_dropout_and_a_foreign_engine_refuse_rollout_pi_old(tpm, tmp_path):
    run = T.setup(_cfg(tmp_path), tpm)
    p = run.parts
    assert scoring.rollout_pi_old_refusal(p.cfg, p.model, p.engine, p.autocast) is None
    other = copy.deepcopy(p.model)
    assert "does not sample" in scoring.rollout_pi_old_refusal(p.cfg, other, p.engine, False)
    other.config.attention_dropout = 0.1
    p.engine.model = other
    assert "dropout" in scoring.rollout_pi_old_refusal(p.cfg, other, p.engine, False)


def test_forcing_rollout_pi_old_that_cannot_hold_fails_at_setup(tpm, tmp_path):
    with pytest.raises(ConfigError, match="scoring.pi_old.*autocast"):
        T.setup(_cfg(tmp_path, **{"scoring.pi_old": "rollout", "optim.precision": "bf16"}), tpm)
    # More PPO epochs are the conservative "auto" refusal only: "rollout" takes them.
    run = T.setup(_cfg(tmp_path, **{"scoring.pi_old": "rollout", "optim.ppo_epochs": 2,
                                    "output_dir": str(tmp_path / "e2")}), tpm)
    batch, out, verified, ids, adv = _until_pi_old(run)
    assert stages.pi_old(run.parts, out, verified, ids, adv).pi_old_source == "rollout"


@pytest.mark.parametrize("precision, pi_old, bound", [
    ("fp32", "recompute", 0.0),   # the same forward on the same tokens: the same bits
    ("fp32", "auto", 1e-5),       # pi_old from the engine's KV-cache decode: float rounding
    ("bf16", "auto", 0.0),        # teacher and student under the same autocast (was 0.0016)
])
def test_delta_is_zero_when_the_teacher_sees_the_students_prompt(tpm, tmp_path, precision, pi_old, bound):
    run = T.setup(_cfg(tmp_path, **{"tasks.0.injector": "none", "optim.precision": precision,
                                    "scoring.pi_old": pi_old, "teacher.mode": "snapshot"}), tpm)
    m = T.train_step(run, 1)  # the snapshot teacher is the policy until its first sync
    assert m["teacher_skipped"] == 0 and m["delta_abs_mean"] is not None
    assert m["delta_abs_mean"] <= bound, m["delta_abs_mean"]
    assert m["time/pi_old_s"] >= 0 and m["time/teacher_s"] > 0
    assert m["pi_old_from_rollout"] == int(precision == "fp32" and pi_old == "auto")


def test_the_loop_scores_in_chunks_of_scoring_micro_batch(tpm, tmp_path):
    run = T.setup(_cfg(tmp_path, **{"scoring.pi_old": "recompute", "scoring.share_prefix": False}),
                  tpm)
    batch, out, verified, ids, adv = _until_pi_old(run)
    sizes = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: sizes.append(kw["input_ids"].shape[0]),
                                         with_kwargs=True)
             for m in (run.parts.model, run.parts.teacher.model)]
    try:
        credit = stages.pi_old(run.parts, out, verified, ids, adv)
        credit = stages.teacher(run.parts, batch, out, credit)
    finally:
        for h in hooks:
            h.remove()
    # 12 responses in chunks of 5, for pi_old and then for the teacher
    assert credit.teacher_logprobs is not None
    assert sizes == [5, 5, 2, 5, 5, 2]


def test_opsd_teacher_logits_come_per_micro_batch_and_match_the_whole_batch(tpm, tmp_path):
    grads, calls = [], []
    for accum in (1, 3):
        run = T.setup(_cfg(tmp_path, **{"algo.loss": "opsd", "optim.grad_accum": accum,
                                        "output_dir": str(tmp_path / f"a{accum}")}), tpm)
        real_score, real_step = run.parts.teacher.score, run.parts.optimizer.step

        def score(*a, _real=real_score, **k):
            if k.get("return_logits"):
                calls.append((accum, len(a[0])))
            return _real(*a, **k)

        def step(*a, _real=real_step, _run=run, **k):
            grads.append({n: p.grad.clone() for n, p in _run.parts.model.named_parameters()
                          if p.grad is not None})
            return _real(*a, **k)

        run.parts.teacher.score, run.parts.optimizer.step = score, step
        m = T.train_step(run, 1)
        assert m["opsd_loss"] is not None
    assert calls == [(1, 12), (3, 4), (3, 4), (3, 4)]
    one, three = grads
    for k in one:
        assert torch.allclose(one[k], three[k], atol=1e-7, rtol=1e-4), k


def test_engine_entropy_matches_the_trainer_forward(tiny):
    from rlsd_core.engines import SamplingParams, make_engine

    model, tok = tiny
    prompts = [tok.encode("What is 12 + 35?"), tok.encode("Hi")]
    gens = make_engine("hf", model, tok).generate(prompts, SamplingParams(
        n=3, temperature=0.8, max_new_tokens=8, seed=1))
    flat = [g for group in gens for g in group]
    with torch.no_grad():
        s = token_logprobs(model, [p for p in prompts for _ in range(3)],
                           [g.token_ids for g in flat], temperature=0.8, return_entropy=True)
    for i, g in enumerate(flat):
        assert g.entropy is not None and len(g.entropy) == len(g.token_ids)
        assert s.entropy[i, :len(g.entropy)].tolist() == pytest.approx(g.entropy, abs=1e-4)
