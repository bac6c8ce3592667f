"""Checkpoint and resume: a real `rlsd train` is SIGKILLed mid-step, resumed with `--resume`, and
must log exactly the metrics an uninterrupted run logs, with nothing corrupt in its directory.

The runs use the real tiny model with real sampling and real backward passes. So that every
step has mixed groups (and therefore real gradients, moving optimizer moments, a moving adaptive
scheduler and teacher), the reward comes from a small verifier plugin installed for the test as
a real distribution (tests/plugin_dist.py): a response of even length earns 1. The same plugin
can stall one step after its rollout, which is where the test kills the process:
deterministically mid-step, after sampling and before the update.

Float determinism: the three processes run on one machine with one thread, so the comparison is
exact. On other hardware or thread counts only the last bits may differ.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from plugin_dist import install
from rlsd_core.loop import checkpoint

CONFIG = {
    "seed": 3, "steps": 6, "threads": 1, "checkpoint_every": 2, "checkpoint_keep": 2,
    "warmup": {"enabled": "false"},
    "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 4,
               "train_size": 64},
              {"name": "add", "source": "addition", "verifier": "even_length", "eval_size": 4,
               "train_size": 64, "weight": 2}],
    "rollout": {"prompts_per_step": 3, "group_size": 4, "max_new_tokens": 6},
    "eval": {"every": 3, "max_new_tokens": 6},
    "log": {"console": False, "plot": True, "tensorboard": "false", "samples_every": 1},
    "scheduler": {"name": "adaptive", "options": {"horizon": 12}},
    "teacher": {"mode": "snapshot", "sync_every": 3},
    "optim": {"lr": 1e-3},
}


@pytest.fixture
def env(tmp_path):
    site = install(tmp_path / "site")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "RLSD_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1"}


def _train(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "rlsd_core.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout=300) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Wall-clock times and reward-cache hit rates (caches are not checkpointed: they change speed,
    # never a reward) are the only values allowed to differ after a resume.
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "cache_hit_rate/"))}
            for r in rows]


def test_sigkill_mid_step_then_resume_continues_as_if_never_stopped(tmp_path, env):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    # The run to be killed starts first; the reference runs while it is stalled.
    victim = _train(["-c", str(cfg), "--output_dir", str(killed)],
                    {**env, "RESUME_TEST_STALL_AT": "4"})
    reference = _train(["-c", str(cfg), "--output_dir", str(ref)], env)
    deadline = time.monotonic() + 300
    while not (killed / "stalled").exists():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached step 4"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)  # mid-step 4: rollout done, no update yet
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    _finish(reference)

    # What the kill left: the step-2 checkpoint, complete; metrics up to step 3, all parseable.
    assert [s for s, _ in checkpoint.complete(killed)] == [2]
    assert [m["step"] for m in _metrics(killed)] == [0, 1, 2, 3]

    resumed = _train(["--resume", str(killed)], env)
    _finish(resumed)

    got, want = _metrics(killed), _metrics(ref)
    assert [m["step"] for m in got] == [0, 1, 2, 3, 4, 5, 6], "each step logged exactly once"
    # Step 3 is re-run after the resume (its line was trimmed): every logged value, including
    # rewards, losses, grad norms, the adaptive lambda and the held-out accuracy, must match.
    assert got == want
    assert any(m.get("grad_norm") for m in got[1:]), "the test must train for real"
    assert len({(m["lambda"], m["eps_w"]) for m in got[1:]}) > 1, "the scheduler must move"

    # Nothing corrupt: keep-last-2, no half-written checkpoint, every file readable.
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000006"]
    for run_dir in (killed, ref):
        for line in (run_dir / "samples.jsonl").read_text().splitlines():
            json.loads(line)
        assert (run_dir / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((killed / "summary.json").read_text())["tasks"] == \
        json.loads((ref / "summary.json").read_text())["tasks"]
    import torch
    from safetensors.torch import load_file
    a = load_file(killed / "checkpoints" / "step-000006" / "model.safetensors")
    b = load_file(ref / "checkpoints" / "step-000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "same final weights"


def test_interrupted_save_leaves_no_visible_checkpoint(tmp_path, monkeypatch):
    """A save that fails half-way (here: the state file write raises) deletes its own temporary
    directory; one that a SIGKILL cut short leaves it hidden: `latest` ignores it and the next
    save or resume deletes it."""
    from rlsd_core import loop as T
    from rlsd_core.config import build_config

    cfg = build_config(overrides=[("warmup.enabled", "false"), ("threads", 1),
                                  ("output_dir", str(tmp_path / "run")),
                                  ("tasks", [{"name": "rev", "source": "reverse", "eval_size": 2}]),
                                  ("log.console", False)])
    run = T.setup(cfg)
    try:
        first = checkpoint.save(run, 1, keep=2)

        def dies(*a, **k):
            raise KeyboardInterrupt("killed while writing")

        monkeypatch.setattr(checkpoint.torch, "save", dies)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(run, 2, keep=2)
        monkeypatch.undo()
        assert checkpoint.latest(run.parts.run_dir) == first
        root = run.parts.run_dir / "checkpoints"
        assert not [p for p in root.iterdir() if p.name.startswith(".")], "a failed save cleans up"
        # What a SIGKILL mid-save leaves: a hidden, partial copy.
        (root / f".step-000002.tmp-{__import__('os').getpid()}").mkdir()
        hidden = [p for p in root.iterdir() if p.name.startswith(".")]
        # A half-written metrics line and lines past the checkpoint are dropped on restore.
        (run.parts.run_dir / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"st')
        # Another process's leftovers are deleted; simulate by renaming to a foreign pid.
        for p in hidden:
            p.rename(p.with_name(p.name.rsplit("-", 1)[0] + "-999999999"))
        assert checkpoint.restore(run, first) == 1
        assert not [p for p in (run.parts.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
        assert (run.parts.run_dir / "metrics.jsonl").read_text() == '{"step": 0}\n{"step": 1}\n'
    finally:
        run.parts.engine.close()


def test_resume_errors_name_the_problem(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no config.yaml"):
        checkpoint.resume_point(tmp_path)
    (tmp_path / "config.yaml").write_text("steps: 2\n")
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        checkpoint.resume_point(tmp_path)
