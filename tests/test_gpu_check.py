"""The GPU check's CPU-reachable parts: the memory arithmetic of bench/gpu_memory.py on hand
numbers, the parameter count it uses against real models of the same shape, the check's summary
and verdicts, the shell wrapper's set-up (dist-info generation, dependency detection), and the
whole flow at toy sizes on the CPU (slow).

The check itself (scripts/gpu_check.sh) needs a GPU; see its header for how a session with one
runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402
import gpu_memory  # noqa: E402


def test_persistent_state_is_sixteen_bytes_per_parameter_in_both_layouts():
    s = gpu_memory.SHAPES["7B"]
    assert gpu_memory.persistent(s, layout="fp32") == pytest.approx(16 * 7.62e9)
    assert gpu_memory.persistent(s, layout="bf16") == pytest.approx(16 * 7.62e9)
    assert gpu_memory.persistent(s, layout="fp32", teacher=False) == pytest.approx(12 * 7.62e9)


def test_phases_by_hand():
    s = gpu_memory.Shape(params=1e9, hidden=1000, inter=4000, layers=10, heads=8, kv_heads=2,
                         head_dim=125, vocab=50_000)
    step = gpu_memory.Step(seqs=16, prompt=100, response=200, micro=4, chunk=2, decode=16,
                           checkpointing=False)
    ph = gpu_memory.phases(s, step)
    base = 16e9
    tokens = 4 * 300
    act = tokens * 10 * (34.0 * 1000 + 8.2 * 4000)
    assert ph["train"] == pytest.approx(base + 6e9 + act + 12 * 50_000 * 4 * 200)
    # A chunk of 2 sequences' bf16 logits, and token_logprobs' three 64 MiB float32 blocks.
    assert ph["score"] == pytest.approx(base + 2 * 50_000 * 2 * 200 + 3 * 64 * 2**20)
    kv = 2 * 10 * 2 * 125 * 4  # fp32 KV of the HF engine, per token
    assert ph["rollout"] == pytest.approx(base + kv * 16 * 300)
    # Without sleep vLLM's share sits next to every stage; with it, only next to the rollout.
    awake = gpu_memory.phases(s, step, engine="vllm", sleep=False, vllm_bytes=5e9)
    asleep = gpu_memory.phases(s, step, engine="vllm", sleep=True, vllm_bytes=5e9)
    assert awake["train"] - asleep["train"] == pytest.approx(5e9)
    assert awake["rollout"] == asleep["rollout"] == pytest.approx(base + 5e9)


def test_the_docs_table_says_7b_does_not_fit_one_card_and_sleep_helps_small_models():
    rows = gpu_memory.fits_table()
    seven = [r for r in rows if r.startswith("| 7B")]
    assert seven and all(r.count("no (") == 4 for r in seven)
    half = next(r for r in rows if r.startswith("| 0.5B | snapshot"))
    cells = [c.strip() for c in half.strip("|").split("|")]
    sleep_80, awake_80 = float(cells[5]), float(cells[6])
    assert sleep_80 > awake_80 > 0
    doc = (ROOT / "docs" / "training.md").read_text()
    assert all(r in doc for r in rows), "docs/training.md's table is not bench/gpu_memory.py's"


@pytest.mark.parametrize("shape", ["SMALL", "QWEN05"])
def test_the_checks_parameter_count_is_the_models(shape):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = getattr(gpu_check, shape)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**spec))
    est = gpu_check.estimate(spec, prompts=2, group=2, prompt_len=10, new_tokens=5)
    assert est["params"] == model.num_parameters()
    if shape == "QWEN05":
        assert est["params"] == 494_032_768  # Qwen2.5-0.5B's published count


def test_summary_and_verdicts():
    steps = [{"step": s, "time/rollout_s": 2.0, "time/verify_s": 0.1, "time/pi_old_s": 0.25,
              "time/teacher_s": 0.75, "memory/teacher_gib": 2.5, "memory/pi_old_gib": 2.0 + s,
              "time/train_s": 3.0, "time/sync_s": 0.5, "time/step_s": 7.0 if s > 1 else 30.0,
              "response_length": 10.0, "n_responses": 20, "loss": 0.5, "grad_norm": 1.0,
              "memory/train_gib": 3.0 + s} for s in (1, 2, 3)]
    s = gpu_check.summarize({"steps": steps})
    assert s["step_s"] == 7.0  # the first step (CUDA start-up) is left out of the means
    assert s["rollout_tok_s"] == pytest.approx(10 * 20 / 2.0)
    assert s["mem_train_gib"] == 6.0 and s["losses_finite"] and s["signal"]
    assert s["score_s"] == 1.0 and s["mem_score_gib"] == 5.0  # pi_old + teacher; their larger peak
    bad = gpu_check.summarize({"steps": [dict(steps[0], loss=float("nan"))]})
    assert not bad["losses_finite"]


def test_report_fails_on_a_non_finite_loss_and_a_resume_at_the_wrong_step(tmp_path):
    ok = {"steps": [1, 2], "rollout_s": 1.0, "score_s": 1.0, "train_s": 1.0, "sync_s": 0.0,
          "step_s": 3.0, "losses_finite": True, "signal": True}
    results = {"device": "cpu", "torch": "x", "transformers": "y", "wall_s": 1.0,
               "runs": [{"name": "tiny-cpu", "exit": 0, "child": {}, "log": "l", "summary": ok},
                        {"name": "big", "exit": 0, "child": {}, "log": "l",
                         "summary": dict(ok, losses_finite=False)}],
               "moved": {"tiny": (10, 10, True), "qwen05": (0, 10, False)},
               "resume": {"tiny-resume": ([3, 4], [3, 4]), "qwen05-resume": ([4], [5])}}
    failures, lines = gpu_check.report(results, tmp_path)
    assert failures == ["big: a loss is not finite", "qwen05-resume: resumed at steps [5], expected [4]"]
    assert lines[-1].startswith("GPU CHECK FAILED") and (tmp_path / "gpu_check.md").is_file()
    results["runs"].pop()
    results["resume"]["qwen05-resume"] = ([4], [4])
    failures, lines = gpu_check.report(results, tmp_path)
    assert not failures and lines[-1] == "GPU CHECK PASSED"


def test_wrapper_sets_rlsd_up_from_the_source_tree(tmp_path):
    """scripts/gpu_check.sh with this interpreter (which has every dependency: nothing to
    install) must generate a dist-info that declares pyproject's entry points, and run the
    check's Python part from the source tree with it."""
    site = tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SITE": str(site)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--help"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--small" in proc.stdout
    (dist,) = site.glob("rlsd-*.dist-info")
    # Every entry point of pyproject, and each one loads (a quoted TOML value copied as is
    # would not parse: the GPU machine, with no installed rlsd, would fail every run).
    import tomllib
    from importlib.metadata import PathDistribution

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    want = pyproject["project"]["entry-points"]["rlsd"]
    points = PathDistribution(dist).entry_points
    assert {ep.name: ep.value for ep in points} == want
    for ep in points:
        assert ep.group == "rlsd" and ep.load().__name__ == want[ep.name]


@pytest.mark.slow
def test_the_whole_check_at_toy_sizes_on_the_cpu(tmp_path):
    """Every run of the GPU check (warm-up, RLSD steps, resume, the random 2-layer Qwen2) at toy
    sizes on the CPU: several `rlsd train` processes, minutes on a 2-core machine. The tasks are
    scored by the test's `even_length` verifier (an installed distribution, tests/plugin_dist.py):
    a model with 8 warm-up steps or random weights earns nothing from the built-in verifiers, so
    no step would have a gradient and "the weights moved" would not be tested."""
    import json

    from plugin_dist import install

    site = install(tmp_path / "site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}
    tasks = [dict(t, verifier="even_length") for t in gpu_check.TASKS]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu",
                           "--small", "--out", str(tmp_path / "out"), "--work",
                           str(tmp_path / "work"), "--tasks", json.dumps(tasks)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GPU CHECK PASSED" in proc.stdout
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    names = [r["name"] for r in results["runs"]]
    assert names == ["tiny-cpu", "tiny-resume", "qwen05-cpu", "qwen05-resume"]
    for model in ("tiny", "qwen05"):
        moved, total, signal = results["moved"][model]
        assert signal and 0 < moved <= total, (model, moved, total, signal)
