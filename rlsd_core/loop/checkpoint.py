"""Checkpoints of a training run, and resuming one as if it had never stopped.

Data flow: after step k the trainer calls `save(run, k, keep=cfg.checkpoint_keep)`, which writes
<run_dir>/checkpoints/step-<k> holding
  model.safetensors, config.json, tokenizer files   the policy (`from_pretrained` loads it, so a
                                                    checkpoint is also a model for `rlsd eval`)
  trainer_state.pt                                  the state of every part in `STATEFUL` (the
                                                    optimizer's moments, the teacher's weights
                                                    and sync step, the schedule (schedulers and
                                                    the diagnostics they read), the metric
                                                    history and held-out evals, the RNG states),
                                                    the step and the config
`rlsd train --resume RUN_DIR` rebuilds the run from RUN_DIR/config.yaml (`loop.run.setup`), then
`restore(run, latest(run_dir))` loads all of that back, trims metrics.jsonl / samples.jsonl to the
checkpointed step, and the loop continues at step k+1.

Atomicity: everything is written into a hidden `.step-<k>.tmp-<pid>` directory, fsynced, and
renamed to `step-<k>` in one `os.replace`. A killed run therefore leaves either a complete
checkpoint or a hidden temporary directory that `latest()` never picks and the next save or
resume deletes. Only the newest `keep` checkpoints are kept.

Why the resumed metrics equal the uninterrupted run's: the rows of step k, the rollout seed and
the mini-batch shuffle are functions of (seed, k) only (the data position is the step), and
every other piece of state is restored bit for bit. Not restored: the verifiers' reward caches (they change speed, never a reward; the
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
FORMAT = 2
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


class RngStates:
    """The global RNG streams (torch CPU, python, numpy, and every CUDA device's) as a stateful
    part. Saved states are CPU tensors and are restored as such, whatever device the run uses
    (torch.set_rng_state accepts only a CPU ByteTensor)."""

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        try:
            import numpy as np
            state["numpy"] = np.random.get_state()
        except ImportError:  # numpy is optional for rlsd itself
            state["numpy"] = None
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"].cpu())
        random.setstate(state["python"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        if state.get("numpy") is not None:
            import numpy as np
            np.random.set_state(state["numpy"])


def stateful_parts(run) -> dict:
    """The declared list of what a checkpoint saves besides the weights: name -> an object with
    state_dict() / load_state_dict(), or None when the run has no such part (no teacher)."""
    return {"optimizer": run.parts.optimizer, "teacher": run.parts.teacher,
            "schedule": run.schedule, "progress": run.progress, "rng": RngStates()}


def trainer_state(run, step: int) -> dict:
    """Everything besides the weights that step `step + 1` depends on."""
    parts = {name: (obj.state_dict() if obj is not None else None)
             for name, obj in stateful_parts(run).items()}
    return {"format": FORMAT, "step": step, "config": run.parts.cfg.model_dump(mode="json"),
            "parts": parts}


def save(run, step: int, *, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`."""
    run_dir, model, tokenizer = run.parts.run_dir, run.parts.model, run.parts.tokenizer
    final = checkpoint_path(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(trainer_state(run, step), tmp / STATE_FILE)
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (a resumed run that saves the same step again)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    prune(run_dir, keep)
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


def upgrade_v1(state: dict) -> dict:
    """A format-1 trainer state (rlsd 0.1: one key per part) in format 2's layout."""
    cfg = state["config"]
    task_diag = state.get("task_diagnostics") or {}

    def slot(name, scheduler, diagnostics):
        return {"name": name, "scheduler": scheduler, "diagnostics": diagnostics}

    tasks = {t["name"]: slot(t["scheduler"]["name"], state["task_schedulers"].get(t["name"]),
                             task_diag.get(t["name"]))
             for t in cfg.get("tasks", []) if t.get("scheduler")}
    return {"format": 2, "step": state["step"], "config": cfg, "parts": {
        "optimizer": state["optimizer"], "teacher": state["teacher"],
        "schedule": {"run": slot(cfg["scheduler"]["name"], state["scheduler"],
                                 state["last_diagnostics"]), "tasks": tasks},
        "progress": {"history": state["history"], "eval_history": state["eval_history"]},
        "rng": state["rng"]}}


def restore(run, path: Path) -> int:
    """Load checkpoint `path` into a freshly set-up run; return its step (the next is step + 1)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    # Everything to the CPU first: the RNG states must stay there, and the optimizer and teacher
    # copy their tensors onto the parameters' device when they load.
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    if state.get("format") == 1:
        state = upgrade_v1(state)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, this rlsd reads "
                              f"format {FORMAT} (written by rlsd >= 0.2); resume it with the rlsd "
                              "version that wrote it")
    parts = run.parts
    saved_tasks = [t["name"] for t in state["config"].get("tasks", [])]
    if saved_tasks != [t.name for t in parts.tasks]:
        raise CheckpointError(f"{path}: the checkpoint trained tasks {saved_tasks}, the config names "
                              f"{[t.name for t in parts.tasks]}; resume with the run's own config.yaml")
    step = int(state["step"])

    # Weights: loaded through from_pretrained (tied and sharded weights handled there), copied
    # into the run's model so the engine and the teacher keep their references to it.
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=next(parts.model.parameters()).dtype)
    with torch.no_grad():
        parts.model.load_state_dict(loaded.state_dict())
    del loaded
    parts.engine.load_weights(parts.model.state_dict())
    for name, obj in stateful_parts(run).items():
        saved = state["parts"].get(name)
        if (obj is None) != (saved is None):
            raise CheckpointError(f"{path}: the checkpoint {'has' if saved is not None else 'lacks'} "
                                  f"a {name} but this run {'has none' if obj is None else 'needs one'}"
                                  f" (algo.loss {state['config'].get('algo', {}).get('loss')!r} then, "
                                  f"{parts.cfg.algo.loss!r} now)")
        if obj is not None:
            try:
                obj.load_state_dict(saved)
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{path}: cannot restore the {name}: {exc}") from exc
    for name in ("metrics.jsonl", "samples.jsonl"):
        _trim_jsonl(parts.run_dir / name, step)
    drop_temporaries(parts.run_dir)
    parts.info.start_step = step + 1
    return step
