"""bench/compare_methods.py --quick runs end to end and writes everything docs/results.md is built from.

The quick mode is far too small to say anything about the methods (a few warm-up and RL steps,
accuracy near 0): this test checks the plumbing only, not the numbers: every arm trained, every
record parses and holds its per-step metrics, the table and both plots exist, the step-time
benchmark and the same-seed rerun ran. It runs the real script in a subprocess with a private
cache, exactly as CI would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("grpo", "grpo-2x", "opsd", "grpo+opsd", "rlsd", "rlsd-none")


@pytest.mark.slow
def test_compare_methods_quick_mode(tmp_path):
    out = tmp_path / "compare"
    env = dict(os.environ, RLSD_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_methods.py"), "--quick",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["quick"] is True
    assert {"settings", "teacher_check", "aggregate", "timing", "repro"} <= set(results)
    # Same command, same seed: the rerun must log the same metrics (timers aside).
    assert results["repro"]["identical"] is True, results["repro"]
    assert results["timing"]["ratio_lambda_pos"] > 0 and results["timing"]["ratio_lambda_zero"] > 0

    steps = results["settings"]["steps"]
    for arm in ARMS:
        record = json.loads((out / "records" / f"{arm}-s0.json").read_text())
        want = 2 * steps if arm == "grpo-2x" else steps
        assert [m["step"] for m in record["history"]] == list(range(want + 1))
        final = record["history"][-1]
        for task in ("addition", "reverse"):
            assert 0.0 <= final[f"eval/{task}"] <= 1.0
        assert final["time/step_s"] > 0
        assert record["heldout_n"] == 2 * results["settings"]["eval_size"]  # both tasks
        assert (out / "runs" / f"{arm}-s0" / "metrics.jsonl").exists()
        assert arm in results["aggregate"]["arms"]
    assert results["teacher_check"]["verdict"] in ("informative", "uninformative", "harmful")
    assert set(results["teacher_check"]["tasks"]) == {"addition", "reverse"}
    # The negative control: at step 1 the snapshot teacher is the policy and sees the student's
    # prompt, so delta is 0 up to float rounding (pi_old comes from the rollout's incremental
    # decode, the teacher from one whole forward: issue 13 bounds the gap by 1e-5; 2.5e-9 seen)
    # and the step is GRPO's: its logged metrics are identical.
    control = results["negative_control"]["seed 0"]
    assert abs(control["delta_step1"]) <= 1e-6 and control["steps_identical_to_grpo"] >= 1
    # RLSD logs its teacher statistics while lambda > 0; GRPO never runs the teacher.
    rlsd = json.loads((out / "records" / "rlsd-s0.json").read_text())["history"]
    assert rlsd[1]["lambda"] > 0 and rlsd[1]["teacher_skipped"] == 0 and rlsd[1]["clip_frac"] is not None
    assert "± " in (out / "table.md").read_text() or results["settings"]["seeds"] == 1
    grpo = json.loads((out / "records" / "grpo-s0.json").read_text())["history"]
    assert all(m["teacher_skipped"] == 1 for m in grpo[1:])

    table = (out / "table.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    for name in ("accuracy.png", "dynamics.png"):
        png = (out / "plots" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
