"""Task suites: shipped manifests, the task sources (local files through `datasets`,
reasoning-gym, HumanEval), column mapping and chat templates, weighted verifiers, per-task
schedulers and metrics in a real (short) mixed run, and one clear error per kind of bad input,
raised before any model loads."""

from __future__ import annotations

import json

import pytest
import yaml

from rlsd_core import loop as T
from rlsd_core.config import build_config
from rlsd_core.data import SuiteError, shipped_suites, suite_tasks
from rlsd_core import TaskError
from rlsd_core.data import load_task, student_messages
from verifier_plugins import EvenLengthPlugin


@pytest.fixture
def tpm(pm):
    pm.register(EvenLengthPlugin(), name="suites-test-plugin")
    return pm


def _task(entry: dict, registry, seed=0):
    cfg = build_config(overrides=[("tasks", [entry])])
    return load_task(cfg.tasks[0], registry, seed=seed)


def test_shipped_suites_load_with_their_own_plugins(pm):
    assert {"arithmetic", "humaneval", "mixed"} <= set(shipped_suites())
    registry = pm.registry
    mixed = suite_tasks("mixed", registry)
    assert [t["name"] for t in mixed] == ["arithmetic", "chain_sum", "humaneval"]
    cfg = build_config(overrides=[("tasks", mixed)])
    by_name = {t.name: t for t in cfg.tasks}
    assert by_name["humaneval"].verifier == "code"
    assert [v.name for v in by_name["chain_sum"].verifiers] == ["math", "exact_match"]
    assert by_name["chain_sum"].scheduler.name == "constant"

    arith = load_task(by_name["arithmetic"], registry, seed=0)
    row = arith.train[0]
    msgs = student_messages(row)
    assert msgs[-1]["role"] == "user" and msgs[-1]["content"].startswith(row["question"])
    assert "final number only" in msgs[-1]["content"] and row["answer"].lstrip("-").isdigit()
    chain = load_task(by_name["chain_sum"], registry, seed=0)
    assert [m["role"] for m in student_messages(chain.train[0])] == ["system", "user"]

    he = load_task(by_name["humaneval"], registry, seed=0)
    assert len(he.train) + len(he.eval) == 164
    r = he.eval[0]
    # The code verifier reads the stub from `prompt`; the student sees it inside the template.
    assert r["prompt"].lstrip().startswith(("def ", "from ", "import ")) and r["entry_point"] in r["prompt"]
    assert "```python" in student_messages(r)[-1]["content"] and r["prompt"] in student_messages(r)[-1]["content"]


def test_reasoning_gym_rows_are_deterministic_and_scored_by_their_own_scorer(pm):
    entry = {"name": "eq", "source": "reasoning_gym", "eval_size": 5,
             "options": {"dataset": "simple_equations", "size": 30, "seed": 4}}
    a, b = _task(entry, pm.registry), _task(entry, pm.registry)
    assert a.train == b.train and a.verifier == "reasoning_gym"
    from rlsd_core.rewards import VerifierRuntime
    rt = VerifierRuntime(pm.registry.verifier("reasoning_gym"))
    rows = a.eval
    verdicts = rt.score([f"The answer is {r['answer']}" for r in rows] + ["no idea"], rows + rows[:1])
    assert [v.reward for v in verdicts] == [1.0] * len(rows) + [0.0]
    rt.close()


def test_local_files_in_three_formats_with_column_mapping_and_template(tmp_path, pm):
    import datasets

    data = [{"q": f"What is {i} + {i}?", "sol": str(2 * i), "extra": i} for i in range(20)]
    ds = datasets.Dataset.from_list(data)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "arrow"))
    arrow = next((tmp_path / "arrow").glob("*.arrow"))
    manifest = {"name": "files", "tasks": [
        {"name": f"t_{fmt}", "source": "files", "options": {"path": path}, "eval_size": 4,
         "columns": {"question": "q", "answer": "sol"},
         "template": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "{question} (in \\boxed{{}})"}]}
        for fmt, path in (("jsonl", "d.jsonl"), ("parquet", "d.parquet"), ("arrow", str(arrow)))]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(manifest))
    entries = suite_tasks(str(tmp_path / "suite.yaml"), pm.registry)  # relative paths resolved
    rows = []
    for entry in entries:
        task = _task(entry, pm.registry)
        rows.append(sorted(r["answer"] for r in task.train + task.eval))
        r = task.train[0]
        assert student_messages(r) == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": f"{r['q']} (in \\boxed{{}})"}]
        assert r["prompt"] == student_messages(r)[-1]["content"]
    assert rows[0] == rows[1] == rows[2] == sorted(str(2 * i) for i in range(20))


# --- bad input: one clear error naming the task and the field, before any model loads ---------

def _no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")
    monkeypatch.setattr(T, "load_policy", refuse)


def _suite_file(tmp_path, task: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "tasks": [task]}))
    return str(path)


GOOD = {"name": "sums", "source": "files", "options": {"path": "d.jsonl"}, "eval_size": 2,
        "columns": {"prompt": "q", "answer": "a"}}


@pytest.mark.parametrize("change, where, fragment", [
    ({"verifier": "maths"}, "suite", ["task 'sums'", "verifier", "no verifier named 'maths'",
                                      "Did you mean 'math'"]),
    ({"weight": 0}, "suite", ["task 'sums'", "weight", "greater than 0"]),
    ({"weight": -2}, "suite", ["task 'sums'", "weight", "greater than 0"]),
    ({"columns": {"prompt": "q", "answer": "solution"}}, "setup",
     ["task 'sums'", "columns.answer", "no column 'solution'"]),
    ({"template": [{"role": "user", "content": "Solve {question}"}]}, "setup",
     ["task 'sums'", "template[0].content", "{question}", "not a field"]),
    ({"options": {"path": "empty.jsonl"}}, "setup", ["task 'sums'", "options.path", "is empty"]),
])
def test_bad_manifest_gets_one_clear_error_before_any_model_loads(tmp_path, pm, monkeypatch,
                                                                   change, where, fragment):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n"
                                              for i in range(10)))
    (tmp_path / "empty.jsonl").write_text("")
    _no_model(monkeypatch)
    path = _suite_file(tmp_path, {**GOOD, **change})
    with pytest.raises(TaskError) as info:
        entries = suite_tasks(path, pm.registry)
        assert where == "setup", "the manifest check should have caught this"
        cfg = build_config(overrides=[("tasks", entries), ("warmup.enabled", "false"),
                                      ("output_dir", str(tmp_path / "run"))])
        T.setup(cfg, pm)
    message = str(info.value)
    for part in fragment:
        assert part in message, (part, message)


def test_unknown_suite_lists_what_exists(pm):
    with pytest.raises(SuiteError, match="not a shipped suite .*arithmetic.*humaneval.*mixed"):
        suite_tasks("mixd", pm.registry)


def test_plugin_task_source_is_a_suite(pm):
    assert suite_tasks("humaneval", pm.registry)[0]["source"] == "humaneval"


# --- a real mixed run: groups within a task, per-task schedulers, verifiers and metrics -------

def test_mixed_suite_trains_with_per_task_metrics(tmp_path, tpm):
    tasks = [
        {"name": "arith", "source": "reasoning_gym", "eval_size": 4, "weight": 2,
         "options": {"dataset": "basic_arithmetic", "size": 60, "seed": 1},
         "template": [{"role": "user", "content": "{question} Number only."}],
         "verifiers": [{"name": "even_length", "weight": 3}, {"name": "math", "weight": 1}]},
        {"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 4,
         "train_size": 60, "scheduler": {"name": "constant", "options": {"lam": 0.2}}},
    ]
    cfg = build_config(overrides=[
        ("tasks", tasks), ("steps", 2), ("threads", 1), ("warmup.enabled", "false"),
        ("output_dir", str(tmp_path / "run")), ("rollout.prompts_per_step", 3),
        ("rollout.group_size", 4), ("rollout.max_new_tokens", 6), ("eval.max_new_tokens", 6),
        ("log.console", False), ("log.plot", False), ("scheduler.name", "constant"),
        ("scheduler.options", {"lam": 0.5})])
    picked = T.draw_rows([load_task(t, tpm.registry, seed=cfg.seed) for t in cfg.tasks], 3, cfg.seed, 1)
    assert [t.name for t, _ in picked] == ["arith", "arith", "rev"], "2:1 by weight"
    T.train(cfg, tpm)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    m = lines[1]
    for name in ("arith", "rev"):
        for key in ("reward", "accuracy", "lambda", "eps_w", "clip_frac", "clip_low_frac",
                    "clip_high_frac", "cache_hit_rate"):
            assert f"{key}/{name}" in m, f"{key}/{name}"
        assert sum(v for k, v in m.items() if k.startswith(f"verdict/{name}/")) == \
            {"arith": 8, "rev": 4}[name], "one verdict per sample, counted per task"
    assert m["lambda/arith"] == 0.5 and m["lambda/rev"] == 0.2, "each task's own scheduler"


def test_weighted_verifiers_average_rewards_and_keep_the_primary_category(tpm):
    from rlsd_core.rewards import build_scorer

    cfg = build_config(overrides=[("tasks", [{"name": "a", "source": "addition", "verifiers": [
        {"name": "math", "weight": 1}, {"name": "even_length", "weight": 3}]}])])
    task = load_task(cfg.tasks[0], tpm.registry, seed=0)
    scorer = build_scorer(task, tpm.registry)
    row = {"prompt": "What is 2 + 2?", "answer": "4"}
    verdicts = scorer.score(["4", "04", "ab", "abc"], [row] * 4)
    assert [v.reward for v in verdicts] == [0.25, 1.0, 0.75, 0.0]
    assert [v.category.value for v in verdicts][:2] == ["ok", "ok"]
    assert verdicts[3].category.value != "ok"
    assert scorer.stats["samples"] >= 8
    scorer.close()
