"""rlsd verifiers as verl's custom reward function (rlsd_core.integrations.verl).

verl itself does not share rlsd's environment (verl 0.9 caps transformers below 5.11, and it
pulls ray), so most tests call `compute_score` exactly the way verl's reward managers do
(verl/workers/reward_manager/naive.py and batch.py, verl/trainer/ppo/reward.py at verl 0.9):
the function loaded from `pkg://rlsd_core.integrations.verl`, `reward_kwargs` merged into every
call, keyword arguments data_source / solution_str / ground_truth / extra_info (with verl's
num_turns and rollout_reward_scores added), from executor threads in the reward loop. The last
test runs verl's own NaiveRewardManager and BatchRewardManager on a DataProto when verl is
importable (skipped otherwise, with the reason shown).
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from rlsd_core import Category, Verdict, VerifierRecord, hookimpl
from rlsd_core.integrations import verl as rv


def _load(module_path: str, name: str, reward_kwargs: dict):
    """What verl's get_custom_reward_fn does: pkg:// -> import the module, getattr the function,
    and merge reward_kwargs into every call (reward_kwargs win)."""
    assert module_path.startswith("pkg://")
    fn = getattr(importlib.import_module(module_path[len("pkg://"):].replace("/", ".")), name)

    def call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
        return raw_fn(*args, **{**kwargs, **extra_kwargs})

    return partial(call_with_kwargs, fn, dict(reward_kwargs))


def _naive_call(compute_score, data_source, response, ground_truth, extra=None):
    """NaiveRewardManager.__call__'s call, with the fields it adds to extra_info."""
    extra_info = dict(extra or {})
    extra_info["num_turns"] = None
    extra_info["rollout_reward_scores"] = {}
    return compute_score(data_source=data_source, solution_str=response,
                         ground_truth=ground_truth, extra_info=extra_info)


def test_default_routes_score_verls_math_sources():
    fn = _load("pkg://rlsd_core.integrations.verl", "compute_score", {})
    assert _naive_call(fn, "openai/gsm8k", "48/2 = 24 clips.\n#### 72", "72") == 1.0
    assert _naive_call(fn, "lighteval/MATH", "so $x = \\boxed{\\frac{1}{2}}$", "0.5") == 1.0
    assert _naive_call(fn, "aime2024", "The answer is \\boxed{17}.", "18") == 0.0  # glob route
    with pytest.raises(KeyError, match=r"no route for data_source 'my_task'.*'\*' route"):
        _naive_call(fn, "my_task", "1", "1")


def test_dict_form_has_the_same_keys_for_every_sample():
    fn = _load("pkg://rlsd_core.integrations.verl", "compute_score",
               {"routes": {"qa": {"verifier": "exact_match", "options": {"ignore_case": False}},
                           "*": "math"},
                "return_dict": True})
    right = _naive_call(fn, "qa", "Paris", "Paris")
    wrong = _naive_call(fn, "qa", "paris", "Paris")  # ignore_case=False reached the verifier
    other = _naive_call(fn, "anything", "\\boxed{3}", "3")
    assert right == {"score": 1.0, "acc": 1.0, "pred": "Paris", "verdict": "ok", "infra": 0.0}
    assert wrong["score"] == 0.0 and wrong["verdict"] == "wrong_answer"
    assert other["score"] == 1.0
    assert set(right) == set(wrong) == set(other)  # verl's reward_extra_info stays rectangular


def test_runtimes_are_built_once_per_process_and_shared_across_threads():
    kwargs = {"routes": {"src": "math"}}
    fn = _load("pkg://rlsd_core.integrations.verl", "compute_score", kwargs)
    samples = [("src", f"\\boxed{{{i % 4}}}", str(i % 4)) for i in range(24)]
    with ThreadPoolExecutor(4) as pool:  # the reward loop's run_in_executor
        scores = list(pool.map(lambda s: _naive_call(fn, *s), samples))
    assert scores == [1.0] * 24
    router = rv.router(kwargs["routes"])
    assert router is rv.router({"src": "math"})  # the same Router for the same configuration
    (runtime,) = router._runtimes.values()
    stats = runtime.stats
    assert stats["workers_started"] == 1  # one worker pool for all 24 calls
    assert stats["samples"] == 24 and stats["cache_hits"] >= 1


def test_ground_truth_column_and_extra_info_fill_the_row(pm):
    seen = []

    def record_rows(completions, rows, **options):
        seen.extend(rows)
        return [1.0] * len(completions)

    class Plugin:
        @hookimpl
        def rlsd_verifiers(self):
            return [VerifierRecord(name="rows", fn=record_rows, columns=("tests",), in_process=True)]

    pm.register(Plugin(), name="verl-rows")
    try:
        router = rv.Router({"code": {"verifier": "rows", "ground_truth_column": "tests"}}, plugins=pm)
        verdicts = router.score(["code"], ["print(1)"], [["assert f() == 1"]],
                                [{"index": 7, "tests": "shadowed"}])
    finally:
        pm.unregister("verl-rows")
    assert verdicts[0].reward == 1.0
    assert seen == [{"index": 7, "tests": ["assert f() == 1"]}]  # the ground truth wins


def test_infrastructure_faults_score_infra_score_and_are_flagged(pm, caplog):
    def broken(completions, rows, **options):
        return [Verdict.fail(Category.GOLD_ERROR, "unparseable gold")] * len(completions)

    class Plugin:
        @hookimpl
        def rlsd_verifiers(self):
            return [VerifierRecord(name="broken", fn=broken, in_process=True)]

    pm.register(Plugin(), name="verl-broken")
    try:
        router = rv.Router({"x": "broken"}, plugins=pm)
        (v,) = router.score(["x"], ["1"], ["?"], [None])
    finally:
        pm.unregister("verl-broken")
    assert v.is_infra and router.infra_faults == 1
    assert rv.result(v) == 0.0
    assert rv.result(v, return_dict=True, infra_score=0.5) == {
        "score": 0.5, "acc": 0.0, "pred": "", "verdict": "gold_error", "infra": 1.0}
    assert "1 infrastructure faults so far" in caplog.text


def test_batch_manager_contract_scores_each_route_in_one_call():
    fn = _load("pkg://rlsd_core.integrations.verl", "compute_score_batch",
               {"routes": {"a": "math", "b": "exact_match"}})
    out = fn(data_sources=["a", "b", "a", "b"], solution_strs=["\\boxed{2}", "yes", "3", "no"],
             ground_truths=["2", "yes", "4", "yes"],
             extra_infos=[{"rollout_reward_scores": {}}] * 4)
    assert out == [1.0, 1.0, 0.0, 0.0]


def test_bad_configuration_fails_loudly():
    with pytest.raises(ValueError, match="route 'a': expected a verifier name or a mapping"):
        rv.Router({"a": {"verifer": "math"}})
    with pytest.raises(LookupError, match="no verifier named 'maths'"):
        rv.Router({"a": "maths"})
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['route'\]"):
        rv.compute_score("openai/gsm8k", "1", "1", route={"x": "math"})
    # what verl's other reward paths add is accepted and ignored
    assert rv.compute_score("openai/gsm8k", "#### 1", "1", reward_router_address=None) == 1.0


def test_verls_own_reward_managers_call_it(tmp_path):
    pytest.importorskip("verl", reason="verl is not installed here (it needs transformers<5.11: "
                                       "pip install 'rlsd[verl]' in a separate venv)")
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.workers.reward_manager.batch import BatchRewardManager
    from verl.workers.reward_manager.naive import NaiveRewardManager

    from rlsd_core.models import load_tiny

    _, tok = load_tiny()
    prompts = ["What is 2+2?", "What is 3+3?", "Name the capital of France."]
    responses = ["2+2 = \\boxed{4}", "3+3 = \\boxed{7}", "Paris"]
    truths = ["4", "6", "Paris"]
    sources = ["openai/gsm8k", "openai/gsm8k", "geo"]
    p_ids = [tok.encode(p) for p in prompts]
    r_ids = [tok.encode(r) for r in responses]
    P, R = max(map(len, p_ids)), max(map(len, r_ids)) + 2
    pad = tok.pad_token_id
    batch = DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([[pad] * (P - len(p)) + p for p in p_ids]),
            "responses": torch.tensor([r + [pad] * (R - len(r)) for r in r_ids]),
            "attention_mask": torch.tensor([[0] * (P - len(p)) + [1] * len(p) + [1] * len(r)
                                            + [0] * (R - len(r)) for p, r in zip(p_ids, r_ids)]),
        },
        non_tensors={"data_source": np.array(sources, dtype=object),
                     "reward_model": np.array([{"ground_truth": t} for t in truths], dtype=object),
                     "extra_info": np.array([{"index": i} for i in range(3)], dtype=object)})
    reward_kwargs = {"routes": {"openai/gsm8k": "math", "geo": "exact_match"}, "return_dict": True}
    for name, manager_cls in (("compute_score", NaiveRewardManager),
                              ("compute_score_batch", BatchRewardManager)):
        section = {"path": "pkg://rlsd_core.integrations.verl", "name": name,
                   "reward_kwargs": reward_kwargs}
        # verl 0.9 reads reward.custom_reward_function; earlier releases the top-level key
        config = OmegaConf.create({"custom_reward_function": section,
                                   "reward": {"custom_reward_function": section}})
        manager = manager_cls(tokenizer=tok, num_examine=0, compute_score=get_custom_reward_fn(config))
        out = manager(batch, return_dict=True)
        last = [len(r) - 1 for r in r_ids]
        scores = [float(out["reward_tensor"][i, last[i]]) for i in range(3)]
        assert scores == [1.0, 0.0, 1.0], name
        assert float(out["reward_tensor"].sum()) == 2.0
        assert list(out["reward_extra_info"]["verdict"]) == ["ok", "wrong_answer", "ok"]


def test_the_docs_example_prints_what_it_says(capsys):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "compute_score" in b
               and "partial" in b]
    exec(compile(code, "docs/integrations.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    promised = [line[2:] for line in code.splitlines() if line.startswith("# {")]
    assert printed == promised
