"""The supervised warm-up's examples: how tasks share it, which examples are privileged.

Built from the real built-in tasks, the real tiny tokenizer and the real injector; no training
(the warm-up's training is exercised end to end by test_train_e2e.py).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rlsd_core.config import TaskConfig
from rlsd_core.data import TeacherPrompts, load_task
from rlsd_core.loop import build_examples
from rlsd_core.loop.warmup import task_rows
from rlsd_core.models import load_tiny


@pytest.fixture
def tasks(pm):
    cfgs = [TaskConfig(name="addition", source="addition", eval_size=300),           # 600 train rows
            TaskConfig(name="reverse", source="reverse", eval_size=500, weight=2.0)]  # 3,500
    return [load_task(c, pm.registry, seed=0) for c in cfgs]


def test_mix_rows_takes_every_row_once(tasks):
    got = Counter(t.name for t, _ in task_rows(tasks, "rows", random.Random(0)))
    assert got == {"addition": 600, "reverse": 3500}


def test_mix_weight_gives_each_task_its_weight_share(tasks):
    pairs = task_rows(tasks, "weight", random.Random(0))
    got = Counter(t.name for t, _ in pairs)
    # reverse (weight 2 of 3) keeps its 3,500 rows once; addition gets half as many: 1,750 =
    # two whole passes over its 600 rows and 550 more drawn without replacement.
    assert got == {"addition": 1750, "reverse": 3500}
    adds = Counter(r["id"] for t, r in pairs if t.name == "addition")
    assert set(adds.values()) <= {2, 3} and sum(v == 3 for v in adds.values()) == 550
    held = {r["id"] for r in tasks[0].eval}
    assert not held & set(adds), "the warm-up must never see a held-out row"


def test_mix_rejects_unknown(tasks):
    with pytest.raises(ValueError, match="warmup.mix"):
        task_rows(tasks, "tokens", random.Random(0))


def test_privileged_fraction_and_prompts(pm, tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("RLSD_CACHE", str(tmp_path))
    _, tok = load_tiny()
    prompts = TeacherPrompts(tasks, {"reference_answer": pm.registry.injector("reference_answer")}, tok)
    examples = build_examples(tasks, tok, prompts.messages, privileged_fraction=0.5, seed=0, mix="weight")
    assert len(examples) == 5250
    hinted = [p for p, _, _ in examples if "reference solution" in tok.decode(p)]  # (prompt, target, pixels)
    assert 0.47 < len(hinted) / len(examples) < 0.53
    # Deterministic in the seed.
    again = build_examples(tasks, tok, prompts.messages, privileged_fraction=0.5, seed=0, mix="weight")
    assert again == examples


def test_mix_rows_keeps_the_old_cache_key():
    from rlsd_core.config import WarmupConfig
    from rlsd_core.loop.warmup import key_settings

    # A warm-up cached before `mix` existed was keyed on these fields only.
    assert set(key_settings(WarmupConfig())) == {"enabled", "steps", "batch_size", "lr",
                                                 "privileged_fraction"}
    assert key_settings(WarmupConfig(mix="weight"))["mix"] == "weight"
