"""The HF rollout engine and token_logprobs on the real tiny model: shapes, stopping, padding,
seeding, weight loading, and agreement between the engine's log-probs and the trainer forward."""

from __future__ import annotations

import copy

import pytest
import torch

from rlsd_core.engines import Engine, Generation, SamplingParams, WeightSyncError, make_engine
from rlsd_core.engines.hf import HFEngine
from rlsd_core.models import token_logprobs
from rlsd_core.models import load_tiny

TEXTS = ["What is 12 + 35?", "Hi", "Solve it in your own way: 7 * 8 =", "The final answer is",
         "Repeat the word yes"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_tiny()
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    return [tok.encode(t) for t in TEXTS]


def _flat(gens):
    return [g for per_prompt in gens for g in per_prompt]


def test_shapes_and_finish_reasons(tiny, prompts):
    model, tok = tiny
    engine = make_engine("hf", model, tok)
    assert isinstance(engine, Engine)
    gens = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=0))
    assert len(gens) == len(prompts) and all(len(g) == 4 for g in gens)
    for g in _flat(gens):
        assert isinstance(g, Generation)
        assert 1 <= len(g.token_ids) <= 12 and len(g.logprobs) == len(g.token_ids)
        assert all(lp <= 0.0 for lp in g.logprobs)
        if g.finish_reason == "stop":
            assert g.token_ids[-1] in engine.eos_token_ids
            assert not any(t in engine.eos_token_ids for t in g.token_ids[:-1])
        else:
            assert len(g.token_ids) == 12


@pytest.fixture(scope="module")
def varied(tiny):
    """The tiny model with its weight matrices tripled: the untrained model's greedy output
    repeats one token per row (it did with tokenizer corpus 2), which leaves no stop token to
    test with; sharper logits make each row's greedy output vary."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(3.0)
    return model, tok


def test_stops_per_sequence_and_keeps_other_rows_going(varied, prompts):
    model, tok = varied
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    free = [g[0].token_ids for g in HFEngine(model, tok).generate(prompts, greedy)]
    # Stop on a token that one row produces only after a few steps and another row never
    # produces: that row must end right there while the others run on, unchanged, to the cap.
    candidates = [(ref.index(t), t) for ref in free for t in set(ref)
                  if ref.index(t) >= 1 and any(t not in other for other in free)]
    assert candidates, f"no usable stop token in greedy outputs {free}"
    first, stop_tok = max(candidates)
    stopped = HFEngine(model, tok, eos_token_ids=[stop_tok]).generate(prompts, greedy)
    kinds = set()
    for ref, (g,) in zip(free, stopped):
        if stop_tok in ref:
            assert g.token_ids == ref[:ref.index(stop_tok) + 1] and g.finish_reason == "stop"
        else:
            assert g.token_ids == ref and g.finish_reason == "length"
        kinds.add(g.finish_reason)
    assert kinds == {"stop", "length"}
    # The same through SamplingParams.stop_token_ids on top of the default eos.
    via_params = HFEngine(model, tok).generate(
        prompts, SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=(stop_tok,)))
    assert via_params == stopped


def test_left_padding_does_not_change_outputs(tiny, prompts):
    model, tok = tiny
    params = SamplingParams(temperature=0, max_new_tokens=16)
    batched = HFEngine(model, tok, batch_size=64).generate(prompts, params)
    alone = HFEngine(model, tok, batch_size=1).generate(prompts, params)
    assert len({len(p) for p in prompts}) > 1  # the batch really mixes prompt lengths
    for (b,), (a,) in zip(batched, alone):
        assert b.token_ids == a.token_ids
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_engine_logprobs_match_trainer_forward(tiny, prompts, temperature, top_p):
    model, tok = tiny
    params = SamplingParams(n=2, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=1)
    gens = HFEngine(model, tok).generate(prompts, params)
    flat = _flat(gens)
    rows = [p for p, g in zip(prompts, gens) for _ in g]
    scores = token_logprobs(model, rows, [g.token_ids for g in flat],
                            temperature=params.logprob_temperature, micro_batch=4,
                            pad_id=tok.pad_token_id)
    assert scores.logprobs.shape == (len(flat), max(len(g.token_ids) for g in flat))
    for i, g in enumerate(flat):
        n = len(g.token_ids)
        assert scores.mask[i].sum().item() == n
        assert scores.logprobs[i, :n].tolist() == pytest.approx(g.logprobs, abs=1e-4)
        assert scores.logprobs[i, n:].abs().sum().item() == 0.0


def test_tiny_top_p_is_greedy_and_reports_untruncated_logprobs(tiny, prompts):
    model, tok = tiny
    engine = HFEngine(model, tok)
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    nucleus = engine.generate(prompts, SamplingParams(temperature=1.0, top_p=1e-6,
                                                      max_new_tokens=8, seed=3))
    for (g,), (s,) in zip(greedy, nucleus):
        assert s.token_ids == g.token_ids
        # log_softmax(logits / T) before truncation: the untrained model is far from certain,
        # so a renormalised nucleus (log 1 = 0) would show up here.
        assert s.logprobs == pytest.approx(g.logprobs, abs=1e-5)
        assert max(s.logprobs) < -0.01


def test_seed_reproducible_and_private(tiny, prompts):
    model, tok = tiny
    engine = HFEngine(model, tok)
    p = SamplingParams(n=2, max_new_tokens=10, seed=7)
    torch.manual_seed(0)
    before = torch.rand(1)
    a = engine.generate(prompts, p)
    b = engine.generate(prompts, p)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), before)  # the engine's seed left the global RNG alone
    c = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=10, seed=8))
    ids = lambda gens: [g.token_ids for g in _flat(gens)]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_load_weights_colocated_copy_and_strictness(tiny, prompts):
    model, tok = tiny
    trained = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in trained.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    want = HFEngine(trained, tok).generate(prompts, greedy)

    # Colocated: the engine samples from the trainer's model; syncing its own state is a no-op.
    colocated = HFEngine(trained, tok)
    colocated.load_weights(trained.state_dict())
    assert colocated.generate(prompts, greedy) == want

    # Separate copy: loading the trained weights makes it sample like the trained model.
    separate = HFEngine(copy.deepcopy(model), tok)
    before = separate.generate(prompts, greedy)
    assert before != want  # the perturbation is visible, so the check below means something
    separate.load_weights(trained.state_dict())
    assert separate.generate(prompts, greedy) == want

    partial = {k: v for k, v in trained.state_dict().items() if k != "lm_head.weight"}
    with pytest.raises(WeightSyncError, match="lm_head.weight"):
        separate.load_weights(partial)
    bad_shape = dict(trained.state_dict())
    bad_shape["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(WeightSyncError, match="model.norm.weight"):
        separate.load_weights(bad_shape)
    separate.close()
    with pytest.raises(RuntimeError, match="closed"):
        separate.generate(prompts, greedy)


def test_bad_inputs_fail_with_a_message(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    with pytest.raises(TypeError, match="string"):
        engine.generate(["What is 1+1?"], SamplingParams())
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[5], []], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("sglang", model, tok)
    with pytest.raises(ValueError, match="responses"):
        token_logprobs(model, [[1, 2]], [[3], [4]])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(model, [[1, 2]], [[3]], temperature=0)


def test_token_logprobs_padding_grad_logits_entropy(tiny, prompts):
    model, tok = tiny
    responses = [[10, 11, 12], [13], [], [14, 15, 16, 17, 18], [19, 20]]
    full = token_logprobs(model, prompts, responses, temperature=0.8, micro_batch=2,
                          return_logits=True, return_entropy=True)
    assert full.logprobs.shape == full.mask.shape == full.entropy.shape == (5, 5)
    assert full.logits.shape == (5, 5, model.config.vocab_size)
    assert full.mask.sum(1).tolist() == [3, 1, 0, 5, 2]
    # Each row scores the same alone as in a padded micro-batch with other lengths.
    for i in (0, 3):
        alone = token_logprobs(model, [prompts[i]], [responses[i]], temperature=0.8)
        n = len(responses[i])
        assert torch.allclose(alone.logprobs[0, :n], full.logprobs[i, :n], atol=1e-5)
    # Logits are already divided by T; log-probs and entropy follow from them.
    logp = torch.log_softmax(full.logits, -1)
    ids = torch.tensor([r + [0] * (5 - len(r)) for r in responses])
    assert torch.allclose(logp.gather(-1, ids[..., None])[..., 0][full.mask],
                          full.logprobs[full.mask], atol=1e-6)
    ent = -(logp.exp() * logp).sum(-1)
    assert torch.allclose(ent[full.mask], full.entropy[full.mask], atol=1e-5)
    assert (full.entropy[~full.mask] == 0).all()
    # Outside no_grad the result carries gradient to the parameters (the student forward).
    scores = token_logprobs(model, prompts[:2], responses[:2])
    scores.logprobs.sum().backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_per_prompt_seeds_sample_the_same_in_any_batch(tiny, prompts):
    """With one seed per prompt, a prompt's samples do not depend on the other prompts of the
    call nor on the decode chunking: what lets data-parallel ranks sample what one process does."""
    model, tok = tiny
    seeds = tuple(range(100, 100 + len(prompts)))
    params = lambda s: SamplingParams(n=3, max_new_tokens=10, seeds=s)  # noqa: E731
    ids = lambda gens: [[g.token_ids for g in group] for group in gens]  # noqa: E731
    whole = ids(HFEngine(model, tok).generate(prompts, params(seeds)))
    evens = ids(HFEngine(model, tok).generate(prompts[0::2], params(seeds[0::2])))
    odds = ids(HFEngine(model, tok, batch_size=2).generate(prompts[1::2], params(seeds[1::2])))
    assert whole[0::2] == evens and whole[1::2] == odds
    other = ids(HFEngine(model, tok).generate(prompts, params(tuple(s + 1 for s in seeds))))
    assert other != whole
    with pytest.raises(ValueError, match="one seed per prompt"):
        HFEngine(model, tok).generate(prompts, params(seeds[:1]))


def test_inverse_cdf_sampling_follows_the_distribution():
    """sample_next draws token v with probability softmax(logits / T)[v] (and never a token that
    top-p removed): 20,000 draws from a fixed 5-token distribution, within 4 sigma per token."""
    from rlsd_core.engines.hf import sample_next

    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    logits = probs.clamp(min=1e-30).log().expand(20_000, 5).contiguous()
    noise = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    ids, lp, _ = sample_next(logits, SamplingParams(temperature=1.0), noise)
    freq = torch.bincount(ids, minlength=5).float() / 20_000
    sigma = (probs * (1 - probs) / 20_000).sqrt()
    assert ((freq - probs).abs() <= 4 * sigma + 1e-9).all(), freq
    assert torch.allclose(lp, probs[ids].log())
    nucleus, _, _ = sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), noise)
    assert set(nucleus.tolist()) == {0, 1}  # 0.5 + 0.25 reaches 0.7: the rest is cut
