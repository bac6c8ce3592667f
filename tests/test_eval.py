"""`rlsd eval`: pass@k maths, and a real checkpoint evaluated through the CLI, which must report
the same greedy accuracy the training run logged for it (one copy of the evaluation code)."""

from __future__ import annotations

import json

import pytest
import yaml

from plugin_dist import install
from rlsd_core import loop as T
from rlsd_core.cli import main as rlsd_main
from rlsd_core.config import build_config
from rlsd_core.loop import pass_at_k
from rlsd_core.plugins import get_plugin_manager


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k wrong samples: any k contain a right one
    assert pass_at_k(10, 2, 5) == pytest.approx(1 - (8 * 7 * 6 * 5 * 4) / (10 * 9 * 8 * 7 * 6))
    with pytest.raises(ValueError, match="at least 4 samples"):
        pass_at_k(3, 1, 4)


TASKS = [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 12,
          "train_size": 64},
         {"name": "add", "source": "addition", "verifier": "even_length", "eval_size": 12,
          "train_size": 64}]


def test_rlsd_eval_of_a_checkpoint_matches_the_runs_heldout_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(install(tmp_path / "site")))
    monkeypatch.setenv("RLSD_CACHE", str(tmp_path / "cache"))
    cfg = build_config(overrides=[
        ("tasks", TASKS), ("steps", 2), ("threads", 1), ("seed", 5), ("warmup.enabled", "false"),
        ("output_dir", str(tmp_path / "run")), ("rollout.prompts_per_step", 2),
        ("rollout.group_size", 4), ("rollout.max_new_tokens", 6), ("eval.max_new_tokens", 6),
        ("log.console", False), ("log.plot", False), ("optim.lr", 1e-3)])
    summary = T.train(cfg, get_plugin_manager())
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "evens", "tasks": TASKS}))
    out = tmp_path / "eval.json"

    rc = rlsd_main(["eval", str(ckpt), "--suite", str(suite), "--samples", "4", "--k", "1,4",
                    "--threads", "1", "--json", str(out)])
    assert rc == 0
    shown = capsys.readouterr()
    assert "greedy accuracy" in shown.out and "pass@4" in shown.out and "rev" in shown.out
    results = json.loads(out.read_text())
    assert results["seed"] == 5 and results["max_new_tokens"] == 6, "taken from the checkpoint's run"
    for name in ("rev", "add"):
        got = results["tasks"][name]
        assert got["n"] == 12
        assert got["accuracy"] == summary["tasks"][name]["heldout_after"], name
        assert 0.0 <= got["pass@1"] <= got["pass@4"] <= 1.0
    # Even-length rewards make some, not all, responses right: the numbers are informative.
    assert 0 < sum(t["pass@1"] for t in results["tasks"].values()) < 2


def test_rlsd_eval_bad_input_fails_before_loading_a_model(tmp_path, capsys):
    assert rlsd_main(["eval", "tiny", "--suite", "no-such-suite"]) == 2
    assert "not a shipped suite" in capsys.readouterr().err
    assert rlsd_main(["eval", "tiny", "--suite", "arithmetic", "--samples", "2", "--k", "5"]) == 2
    assert "--samples >= 5" in capsys.readouterr().err
    assert rlsd_main(["eval", str(tmp_path / "nothing"), "--suite", "arithmetic"]) == 2
    assert "not 'tiny'" in capsys.readouterr().err
