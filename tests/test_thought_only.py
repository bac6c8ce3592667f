"""`algo.thought_only`: the teacher reweights only tokens inside the reasoning span, selected
from the config and carried to the objective as CreditInputs.token_mask."""

from __future__ import annotations

import torch

from rlsd_core import loop as T
from rlsd_core.config import build_config
from rlsd_core.loop import stages
from rlsd_core.loop.spans import inside_spans, thought_mask
from rlsd_core.models import load_tokenizer, resolve_model
from verifier_plugins import EvenLengthPlugin


def test_inside_spans_marks_the_tokens_between_the_markers():
    pieces = ["a", "<th", "ink>", "x", "y", "</think>", "z"]
    assert inside_spans(pieces, "<think>", "</think>") == [False, False, False, True, True, False, False]
    assert inside_spans(["<think>", "a", "b"], "<think>", "</think>") == [False, True, True]  # cut off
    assert inside_spans(["no", " span"], "<think>", "</think>") == [False, False]
    two = ["<think>", "a", "</think>", "b", "<think>", "c", "</think>"]
    assert inside_spans(two, "<think>", "</think>") == [False, True, False, False, False, True, False]


def test_thought_mask_on_real_token_ids():
    tok = load_tokenizer(resolve_model("tiny"))
    ids = tok.encode("ok <think>12+3</think> 15", add_special_tokens=False)
    mask = thought_mask(tok, [ids, tok.encode("15", add_special_tokens=False)], len(ids) + 2,
                        "<think>", "</think>")
    inside = "".join(tok.decode([t]) for t, m in zip(ids, mask[0]) if m)
    assert inside == "12+3"
    assert not mask[1].any() and not mask[0, len(ids):].any()


def _step_credit(pm, tmp_path, **over):
    """Token advantages and token_mask of one real RLSD step (teacher on, lambda 0.5)."""
    base = {"steps": 1, "threads": 1, "output_dir": str(tmp_path), "warmup.enabled": "false",
            "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 2,
                       "train_size": 16}],
            "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
            "log.console": False, "log.plot": False, "scheduler.name": "constant"}
    base.update(over)
    run = T.setup(build_config(overrides=list(base.items())), pm)
    seen = {}
    real = stages.magnitude

    def spy(parts, batch, out, credit):
        result = real(parts, batch, out, credit)
        seen["credit"] = result
        return result

    stages.magnitude = spy
    try:
        T.train_step(run, 1)
    finally:
        stages.magnitude = real
        run.parts.close()
    return seen["credit"]


def test_thought_only_reaches_the_objective(pm, tmp_path):
    pm.register(EvenLengthPlugin(), name="thought-test")
    plain = _step_credit(pm, tmp_path / "a")
    adv = plain.advantages[:, None].expand_as(plain.mask).to(plain.token_advantages.dtype)
    assert not torch.allclose(plain.token_advantages[plain.mask], adv[plain.mask]), \
        "without thought_only the teacher reweights tokens"
    # The untrained tiny model never writes a <think> span, so with thought_only no token is
    # reweighted: every token keeps plain A.
    only = _step_credit(pm, tmp_path / "b", **{"algo.thought_only": True})
    adv = only.advantages[:, None].expand_as(only.mask).to(only.token_advantages.dtype)
    assert torch.equal(only.token_advantages[only.mask], adv[only.mask])
