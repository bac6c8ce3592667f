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


def test_reverse_decoys_change_only_the_student_target():
    from rlsd_core import TaskError
    from rlsd_plugins.task_sources import reverse_rows

    plain, decoyed = reverse_rows(), reverse_rows(decoy_fraction=0.6)
    # The same words in the same order (so the same held-out split) and the same answers.
    assert [(r["id"], r["answer"]) for r in plain] == [(r["id"], r["answer"]) for r in decoyed]
    decoys = [r for r in decoyed if "privileged_target" in r]
    assert 0.57 < len(decoys) / len(decoyed) < 0.63  # (a palindrome's decoy is its answer)
    for r in decoys:  # the letters in their own order; the teacher's prompt still gets the reversal
        assert r["target"] == r["prompt"].split("[")[1].rstrip("]")
        assert r["privileged_target"] == r["answer"]
    assert all("privileged_target" not in r for r in plain)
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(TaskError, match="decoy_fraction"):
            reverse_rows(decoy_fraction=bad)


def test_privileged_examples_teach_the_privileged_target(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("RLSD_CACHE", str(tmp_path))
    _, tok = load_tiny()
    task = load_task(TaskConfig(name="reverse", source="reverse", options={"decoy_fraction": 0.9},
                                train_size=400), pm.registry, seed=0)
    prompts = TeacherPrompts([task], {"reference_answer": pm.registry.injector("reference_answer")}, tok)
    examples = build_examples([task], tok, prompts.messages, privileged_fraction=0.5, seed=0)
    answers = {r["prompt"].split("[")[1].rstrip("]"): r["answer"] for r in task.train}
    seen = Counter()
    for p, t, _ in examples:
        text = tok.decode(p)
        word = text.split("[")[1].split("]")[0]
        taught = tok.decode(t, skip_special_tokens=True)
        hinted = "reference solution" in text
        seen[hinted, taught == answers[word]] += 1
    assert seen[True, False] == 0  # under the hint: always the reversal
    assert seen[False, False] > 0.8 * (seen[False, False] + seen[False, True])  # the decoys
