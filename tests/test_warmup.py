"""The supervised warm-up: how tasks share it, which examples are privileged, and the readiness
check that stops it.

Built from the real built-in tasks, the real tiny tokenizer and model and the real injector and
verifier (one stop-rule test scripts its accuracies); the whole warm-up is exercised end to end
by test_train_e2e.py.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from rlsd_core.config import TaskConfig, WarmupConfig
from rlsd_core.data import TeacherPrompts, load_task
from rlsd_core.loop import WarmupWarning, build_examples, train_supervised
from rlsd_core.loop.evaluation import GreedyPair
from rlsd_core.loop.warmup import ReadinessCheck, probe_rows, task_rows, warn_if_not_ready
from rlsd_core.models import load_tiny
from rlsd_core.rewards import build_scorer


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


def test_options_at_their_old_behaviour_keep_the_old_cache_key():
    from rlsd_core.config import WarmupConfig
    from rlsd_core.loop.warmup import CHECK_FIELDS, key_settings

    # A warm-up cached before `mix` and the readiness check existed was keyed on these fields only.
    old = {"enabled", "steps", "batch_size", "lr", "privileged_fraction"}
    assert set(key_settings(WarmupConfig(check_every=0, ready_gain=0.9))) == old
    assert key_settings(WarmupConfig(mix="weight", check_every=0))["mix"] == "weight"
    assert set(key_settings(WarmupConfig())) == old | set(CHECK_FIELDS)


def test_probe_rows_are_a_seeded_sample_of_training_rows(tasks):
    rows = probe_rows(tasks, 32, seed=0)
    for task in tasks:
        ids = [r["id"] for r in rows[task.name]]
        assert len(set(ids)) == 32 and set(ids) <= {r["id"] for r in task.train}
    assert probe_rows(tasks, 32, seed=0) == rows and probe_rows(tasks, 32, seed=1) != rows
    small = dataclasses.replace(tasks[0], train=tasks[0].train[:5])
    assert probe_rows([small], 32, seed=0) == {"addition": small.train}


class _Scripted:
    """greedy_pair's stand-in: each call returns the next scripted (student, teacher) accuracy."""

    def __init__(self, script):
        self.script = iter(script)

    def __call__(self, engine, tokenizer, prompts, name, rows, scorer, max_new_tokens, vision=None):
        s, t = next(self.script)
        n = len(rows)
        return GreedyPair(student_ok=[i < s * n for i in range(n)], teacher_ok=[i < t * n for i in range(n)],
                          teacher_texts=[""] * n, hints=[""] * n)


class _Engine:
    def close(self):
        pass


def test_readiness_needs_the_gain_at_consecutive_checks(monkeypatch):
    """Plumbing of the stop rule, with scripted accuracies (the real check is below)."""
    import rlsd_core.loop.warmup as W

    monkeypatch.setattr(W, "make_engine", lambda *a, **k: _Engine())
    # A gain of 0.5 at step 10, a dip at 15, then 0.5 and 0.75: ready at the second of those.
    monkeypatch.setattr(W, "greedy_pair", _Scripted([(0, 0), (0, 0.5), (0.25, 0.5), (0, 0.5), (0.25, 1.0)]))
    cfg = WarmupConfig(check_every=5, ready_gain=0.5, ready_checks=2)
    model = torch.nn.Linear(2, 2)
    seen = []
    check = W.ReadinessCheck(model, None, SimpleNamespace(vision=None), {"t": None},
                             {"t": [{}] * 4}, cfg, 8, on_check=seen.append)
    stopped = next(step for step in range(1, 40) if check(step))
    assert stopped == 25 and check.ready_at == 25
    assert [r.step for r in seen] == [5, 10, 15, 20, 25]
    assert [r.gain for r in seen] == [0.0, 0.5, 0.25, 0.5, 0.75]
    assert model.training  # handed back in train mode


def test_readiness_check_only_observes(pm, tmp_path, monkeypatch):
    """The real check (tiny model, real greedy decoding and verifiers) leaves the warm-up's
    trajectory bit for bit as it was: same losses and weights with and without it."""
    monkeypatch.setenv("RLSD_CACHE", str(tmp_path))
    model, tok = load_tiny()
    task = load_task(TaskConfig(name="reverse", source="reverse", train_size=200, eval_size=20),
                     pm.registry, seed=0)
    prompts = TeacherPrompts([task], {"reference_answer": pm.registry.injector("reference_answer")}, tok)
    examples = build_examples([task], tok, prompts.messages, privileged_fraction=0.5, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    for checking in (False, True):
        model.load_state_dict(start)
        check = ReadinessCheck(model, tok, prompts, {"reverse": build_scorer(task, pm.registry)},
                               {"reverse": task.train[:8]}, WarmupConfig(check_every=2, ready_gain=1.0),
                               8) if checking else None
        losses = train_supervised(model, examples, steps=6, batch_size=8, lr=2e-3, seed=0,
                                  pad_id=tok.pad_token_id, stop=check)
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
        if checking:
            assert [r.step for r in check.history] == [2, 4, 6] and check.ready_at is None
    (l0, w0), (l1, w1) = runs
    assert l0 == l1 and len(l0) == 6
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_warmup_that_never_passes_warns_with_its_numbers(tmp_path):
    record = {"steps_run": 400, "ready_at": None,
              "settings": {"warmup": {"ready_gain": 0.5, "ready_checks": 2}},
              "checks": [{"step": 25, "accuracy": {"reverse": [0.0, 0.0]}},
                         {"step": 50, "accuracy": {"reverse": [0.03, 0.31]}}]}
    with pytest.warns(WarmupWarning, match=r"400 steps .*step 50: .*reverse 3% -> 31%.*gain of 0.5 at 2"):
        warn_if_not_ready(record, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_not_ready({**record, "ready_at": 50}, tmp_path)   # passed: silent
        warn_if_not_ready({**record, "checks": []}, tmp_path)    # no check ran: silent


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
