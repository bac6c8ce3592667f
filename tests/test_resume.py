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
import torch
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


class _RecordingEngine:
    """Stands in for the rollout engine: records the devices of the weights it is handed."""

    def __init__(self):
        self.devices: set[str] = set()

    def load_weights(self, state):
        self.devices |= {t.device.type for t in state.values()}

    def sleep(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_restore_puts_every_part_on_the_model_device_and_the_rng_on_the_cpu(tmp_path, dtype):
    """`--resume` on a GPU, with the meta device standing in for it (this machine has none): the
    trainer state is read to the CPU; the weights, the optimizer's moments (and fp32 masters), the
    teacher copy and the engine's weights end up on the model's device; the RNG states are set
    from CPU tensors, so the random streams continue exactly as after the save."""
    from rlsd_core import loop as T
    from rlsd_core.config import build_config
    from rlsd_core.loop.optim import MasterWeightsAdamW, build_optimizer

    cfg = build_config(overrides=[("warmup.enabled", "false"), ("threads", 1),
                                  ("output_dir", str(tmp_path / "run")), ("model.dtype", dtype),
                                  ("tasks", [{"name": "rev", "source": "reverse", "eval_size": 2}]),
                                  ("scheduler.name", "constant"), ("log.console", False)])
    run = T.setup(cfg)
    parts = run.parts
    assert parts.teacher is not None
    ids = torch.tensor([[5, 6, 7, 8]])
    parts.model(input_ids=ids).logits.float().sum().backward()  # moments exist after a step
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    saved = checkpoint.save(run, 1, keep=2)
    expected = torch.rand(4)  # what the saved stream gives next
    torch.manual_seed(0)

    parts.engine.close()
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # built there, so the tied embeddings stay one parameter
        parts.model = AutoModelForCausalLM.from_config(parts.model.config).to(parts.model.dtype)
    parts.teacher = T.Teacher(parts.model, mode="snapshot", sync_every=10)
    parts.optimizer = build_optimizer(parts.model, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    parts.engine = _RecordingEngine()
    assert checkpoint.restore(run, saved) == 1
    assert torch.equal(torch.rand(4), expected)
    moments = [t for s in parts.optimizer.state.values() for k, t in s.items() if k != "step"]
    assert moments and {t.device.type for t in moments} == {"meta"}
    if dtype == "bfloat16":
        assert isinstance(parts.optimizer, MasterWeightsAdamW)
        assert {m.device.type for m in parts.optimizer.masters} == {"meta"}
    assert {t.device.type for t in parts.teacher.model.state_dict().values()} == {"meta"}
    assert parts.engine.devices == {"meta"}


def test_rng_states_loaded_to_a_device_without_data_are_refused_by_name(tmp_path):
    state = checkpoint.RngStates().state_dict()
    torch.save(state, tmp_path / "rng.pt")
    on_meta = torch.load(tmp_path / "rng.pt", map_location="meta", weights_only=False)
    assert on_meta["torch"].device.type == "meta"
    with pytest.raises(checkpoint.CheckpointError, match="map_location='cpu'"):
        checkpoint.RngStates().load_state_dict(on_meta)


def test_cuda_rng_states_are_set_from_cpu_bytes_on_the_devices_present(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append((s, i)))
    saved = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    checkpoint.RngStates().load_state_dict({
        "torch": torch.get_rng_state(), "python": __import__("random").getstate(),
        "cuda": saved, "numpy": None})
    # Saved on two GPUs, resumed on one: device 0 gets its own stream, as a CPU ByteTensor.
    assert len(calls) == 1 and calls[0][1] == 0
    assert calls[0][0].device.type == "cpu" and torch.equal(calls[0][0], saved[0])
