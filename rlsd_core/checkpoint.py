"""Checkpoints of a training run, and resuming one as if it had never stopped.

Data flow: after step k the trainer calls `save(run, k, keep=cfg.checkpoint_keep)`, which writes
<run_dir>/checkpoints/step-<k> holding
  model.safetensors, config.json, tokenizer files   the policy (`from_pretrained` loads it, so a
                                                    checkpoint is also a model for `rlsd eval`)
  trainer_state.pt                                  optimizer moments, teacher weights and sync
                                                    step, scheduler state(s), RNG states (torch,
                                                    python, numpy, cuda), data position, the
                                                    last diagnostics (adaptive schedulers read
                                                    them), the metric history and held-out evals
`rlsd train --resume RUN_DIR` rebuilds the run from RUN_DIR/config.yaml (`trainer.setup`), then
`restore(run, latest(run_dir))` loads all of that back, trims metrics.jsonl / samples.jsonl to the
checkpointed step, and the loop continues at step k+1.

Atomicity: everything is written into a hidden `.step-<k>.tmp-<pid>` directory, fsynced, and
renamed to `step-<k>` in one `os.replace`. A killed run therefore leaves either a complete
checkpoint or a hidden temporary directory that `latest()` never picks and the next save or
resume deletes. Only the newest `keep` checkpoints are kept.

Why the resumed metrics equal the uninterrupted run's: the rows of step k and the rollout seed are
functions of (seed, k) only (the data position is the step), the mini-batch shuffle is seeded by
the number of steps done (restored with the history), and every other piece of state is restored
bit for bit. Not restored: the verifiers' reward caches (they change speed, never a reward; the
cache hit rates after a resume are therefore lower) and wall-clock times.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
FORMAT = 1
_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ValueError):
    """A run directory holds no usable checkpoint, or one that does not fit the run."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    try:
        import numpy as np
        state["numpy"] = np.random.get_state()
    except ImportError:  # numpy is optional for rlsd itself
        state["numpy"] = None
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        import numpy as np
        np.random.set_state(state["numpy"])


def _state_dict_of(obj):
    return obj.state_dict() if hasattr(obj, "state_dict") else None


def trainer_state(run, step: int) -> dict:
    """Everything besides the weights that step `step + 1` depends on."""
    task_schedulers = getattr(run, "task_schedulers", None) or {}
    return {
        "format": FORMAT,
        "step": step,
        # Rows of a step are a function of (seed, step): the step is the data position.
        "data_position": {"next_step": step + 1},
        "optimizer": run.optimizer.state_dict(),
        "teacher": run.teacher.state_dict() if run.teacher is not None else None,
        "scheduler": _state_dict_of(run.scheduler),
        "task_schedulers": {name: _state_dict_of(s) for name, s in task_schedulers.items()},
        "last_diagnostics": run.last_diagnostics,
        "task_diagnostics": getattr(run, "task_diagnostics", None),
        "history": run.history,
        "eval_history": run.eval_history,
        "rng": _rng_state(),
        "config": run.cfg.model_dump(mode="json"),
    }


def save(run, step: int, *, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`."""
    final = checkpoint_path(run.run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    run.model.save_pretrained(tmp)
    run.tokenizer.save_pretrained(tmp)
    torch.save(trainer_state(run, step), tmp / STATE_FILE)
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (a resumed run that saves the same step again)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    prune(run.run_dir, keep)
    return final


def complete(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / "config.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(run_dir: Path) -> Path | None:
    found = complete(run_dir)
    return found[-1][1] if found else None


def resume_point(run_dir: str | Path) -> tuple[Path, Path, Path]:
    """(run directory, its config.yaml, its newest complete checkpoint) for `--resume RUN_DIR`."""
    run_dir = Path(run_dir).expanduser()
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"--resume {str(run_dir)!r}: no config.yaml there; give the run "
                              f"directory that `rlsd train` printed")
    ckpt = latest(run_dir)
    if ckpt is None:
        raise CheckpointError(f"--resume {str(run_dir)!r}: no complete checkpoint in "
                              f"{run_dir / CHECKPOINTS}; runs checkpoint every `checkpoint_every` "
                              f"steps (0 = only at the end), so this run stopped before its first")
    return run_dir, config, ckpt


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete leftovers of interrupted saves."""
    for _step, path in complete(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    drop_temporaries(run_dir)


def drop_temporaries(run_dir: Path) -> None:
    """Delete the hidden directories of saves that a kill interrupted (not this process's own)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and ".tmp-" in p.name:
                pid = p.name.rsplit("-", 1)[-1]
                if pid != str(os.getpid()):
                    shutil.rmtree(p, ignore_errors=True)


def _trim_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step; drop the rest and any half-written line. Atomic."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill; its step is re-run
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    os.replace(tmp, path)


def restore(run, path: Path) -> int:
    """Load checkpoint `path` into a freshly set-up run; return its step (the next is step + 1)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    state = torch.load(state_file, map_location=run.device, weights_only=False)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, this rlsd reads "
                              f"format {FORMAT}")
    saved_tasks = [t["name"] for t in state["config"].get("tasks", [])]
    if saved_tasks != [t.name for t in run.tasks]:
        raise CheckpointError(f"{path}: the checkpoint trained tasks {saved_tasks}, the config names "
                              f"{[t.name for t in run.tasks]}; resume with the run's own config.yaml")
    step = int(state["step"])

    # Weights: loaded through from_pretrained (tied and sharded weights handled there), copied
    # into the run's model so the engine and the teacher keep their references to it.
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=next(run.model.parameters()).dtype)
    with torch.no_grad():
        run.model.load_state_dict(loaded.state_dict())
    del loaded
    run.engine.load_weights(run.model.state_dict())
    run.optimizer.load_state_dict(state["optimizer"])
    if run.teacher is not None:
        if state["teacher"] is None:
            raise CheckpointError(f"{path}: saved without a teacher, but algo.loss needs one")
        run.teacher.load_state_dict(state["teacher"])
    if state["scheduler"] is not None and hasattr(run.scheduler, "load_state_dict"):
        run.scheduler.load_state_dict(state["scheduler"])
    for name, sched in (getattr(run, "task_schedulers", None) or {}).items():
        saved = state.get("task_schedulers", {}).get(name)
        if saved is not None and hasattr(sched, "load_state_dict"):
            sched.load_state_dict(saved)
    run.last_diagnostics = state["last_diagnostics"]
    if hasattr(run, "task_diagnostics") and state.get("task_diagnostics") is not None:
        run.task_diagnostics = state["task_diagnostics"]
    run.history = list(state["history"])
    run.eval_history = {int(k): v for k, v in state["eval_history"].items()}
    _set_rng_state(state["rng"])
    for name in ("metrics.jsonl", "samples.jsonl"):
        _trim_jsonl(run.run_dir / name, step)
    drop_temporaries(run.run_dir)
    run.info.start_step = step + 1
    return step
