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
resume deletes; a save that fails (a full disk, Ctrl-C) deletes its own. Only the newest `keep`
checkpoints are kept, pruned only after the new one is complete: each is first renamed to a
hidden `.step-<k>.del-<pid>` (atomic) and then deleted, so a kill during pruning never leaves a
half-deleted `step-<k>` that looks complete.

Damage: `intact(path)` checks a checkpoint without loading it (its files exist, the state file's
zip directory and each safetensors header are readable and the files are as long as their
headers say). `latest()` and `--resume` skip damaged checkpoints and fall back to the newest
intact one (a truncated file from a disk that filled up, a copy that was cut short).

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
import zipfile
from pathlib import Path

import torch

from rlsd_core.data.files import fsync_dir

from . import distributed

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
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
    fsync_dir(path)



class RngStates:
    """The global RNG streams (torch CPU, python, numpy, and every CUDA device's) as a stateful
    part. Saved states are CPU tensors and are restored as such, whatever device the run uses
    and whatever `map_location` the trainer state was loaded with (torch.set_rng_state and
    torch.cuda.set_rng_state accept only a CPU ByteTensor)."""

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
        torch.set_rng_state(rng_bytes(state["torch"]))
        random.setstate(state["python"])
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            # A run saved on more GPUs than this machine has: the devices it has get theirs.
            for i, s in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(rng_bytes(s), i)
        if state.get("numpy") is not None:
            import numpy as np
            np.random.set_state(state["numpy"])


def rng_bytes(t: torch.Tensor) -> torch.Tensor:
    """A saved RNG state as the CPU ByteTensor torch wants, from wherever it was loaded to."""
    if t.device.type == "meta":
        raise CheckpointError("an RNG state in the checkpoint was loaded to the meta device, which "
                              "keeps no data; load trainer_state.pt with map_location='cpu'")
    return t.detach().to("cpu", torch.uint8)


def stateful_parts(run) -> dict:
    """The declared list of what a checkpoint saves besides the weights: name -> an object with
    state_dict() / load_state_dict(), or None when the run has no such part (no teacher). In a
    sharded run the optimizer and the teacher save and load full tensors in the single-process
    layout (rlsd_core.loop.distributed), so any number of ranks resumes any checkpoint."""
    return distributed.checkpoint_parts(run.parts.world, run.parts.model, {
        "optimizer": run.parts.optimizer, "teacher": run.parts.teacher,
        "schedule": run.schedule, "progress": run.progress, "rng": RngStates()})


def trainer_state(run, step: int) -> dict:
    """Everything besides the weights that step `step + 1` depends on."""
    parts = {name: (obj.state_dict() if obj is not None else None)
             for name, obj in stateful_parts(run).items()}
    return {"format": FORMAT, "step": step, "config": run.parts.cfg.model_dump(mode="json"),
            "parts": parts}


def save(run, step: int, *, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`. If anything
    fails on the way (a full disk, Ctrl-C) the partial save is deleted and the exception goes
    on: the checkpoints already there are untouched. Under torchrun every rank calls it (the
    full state is gathered from every rank's shards) and rank 0 writes."""
    run_dir, model, tokenizer = run.parts.run_dir, run.parts.model, run.parts.tokenizer
    final = checkpoint_path(run_dir, step)
    state = trainer_state(run, step)
    weights = distributed.full_state(run.parts.world, model)  # None: the model's own
    if not run.parts.world.is_main:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if run.parts.vision is not None:  # the processor files: the checkpoint is a VLM directory
            run.parts.vision.save(tmp)
        torch.save(state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (a resumed run that saves the same step again)
            _remove(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs back
        raise
    fsync_dir(final.parent)
    prune(run_dir, keep)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint so that no half-deleted `step-N` is ever visible: rename, then delete."""
    doomed = path.with_name(f".{path.name}.del-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _safetensors_problem(path: Path) -> str | None:
    """None if the file's header parses and the file is as long as the header says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100 << 20):
                return f"{path.name} has a damaged header"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"{path.name} cannot be read ({exc})"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if ends and 8 + n + max(ends) > size:
        return f"{path.name} is truncated ({size} of {8 + n + max(ends)} bytes)"
    return None


def intact(path: Path) -> str | None:
    """None when checkpoint directory `path` is complete and undamaged, else what is wrong.
    Reads headers only (no tensor is loaded)."""
    path = Path(path)
    state = path / STATE_FILE
    if not state.is_file() or not (path / "config.json").is_file():
        return f"{path.name} lacks {STATE_FILE} or config.json"
    try:
        with zipfile.ZipFile(state) as zf:  # torch.save writes a zip; a cut file has no directory
            if not zf.namelist():
                return f"{STATE_FILE} is empty"
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"{STATE_FILE} or config.json is damaged ({exc})"
    weights = [path / w for w in WEIGHTS if (path / w).is_file()]
    if not weights:
        return f"{path.name} has no model weights"
    if weights[0].name == "model.safetensors.index.json":
        try:
            shards = set(json.loads(weights[0].read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{weights[0].name} is damaged ({exc})"
        for shard in sorted(shards):
            problem = _safetensors_problem(path / shard)
            if problem:
                return problem
        return None
    if weights[0].suffix == ".safetensors":
        return _safetensors_problem(weights[0])
    return None


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


def newest_intact(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint of a run, and the newer ones skipped as damaged (with what
    is wrong with each)."""
    damaged = []
    for _step, path in reversed(complete(run_dir)):
        problem = intact(path)
        if problem is None:
            return path, damaged
        damaged.append((path, problem))
    return None, damaged


def latest(run_dir: Path) -> Path | None:
    """The newest intact checkpoint (damaged ones are skipped), or None."""
    return newest_intact(run_dir)[0]


def resume_point(run_dir: str | Path, on_skip=None) -> tuple[Path, Path, Path]:
    """(run directory, its config.yaml, its newest intact checkpoint) for `--resume RUN_DIR`.
    Damaged newer checkpoints are skipped; `on_skip(path, problem)` hears of each."""
    run_dir = Path(run_dir).expanduser()
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"--resume {str(run_dir)!r}: no config.yaml there; give the run "
                              f"directory that `rlsd train` printed")
    drop_temporaries(run_dir)  # stale leftovers of killed saves: before anything else writes
    ckpt, damaged = newest_intact(run_dir)
    for path, problem in damaged if ckpt is not None else ():
        if on_skip is not None:
            on_skip(path, problem)
    if ckpt is None:
        what = (f"every checkpoint there is damaged ({damaged[0][1]})" if damaged else
                "no complete checkpoint there; runs checkpoint every `checkpoint_every` steps "
                "(0 = only at the end), so this run stopped before its first")
        raise CheckpointError(f"--resume {str(run_dir)!r}: {what}; start the run again")
    return run_dir, config, ckpt


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete leftovers of interrupted saves."""
    for _step, path in complete(run_dir)[:-keep] if keep > 0 else []:
        _remove(path)
    drop_temporaries(run_dir)


def drop_temporaries(run_dir: Path) -> None:
    """Delete the hidden directories of saves that a kill interrupted (not this process's
    running save) and of prunes that a kill interrupted."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if not p.name.startswith(".step-"):
                continue
            if ".del-" in p.name or (".tmp-" in p.name and p.name.rsplit("-", 1)[-1] != str(os.getpid())):
                shutil.rmtree(p, ignore_errors=True)


def config_changes(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two config dumps (tasks compared
    as a whole)."""
    out = []
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key), new.get(key)
        dotted = prefix + key
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("options", "engine_options"):
            out += config_changes(a, b, dotted + ".")
        elif a != b:
            out.append(f"{dotted}: {a!r} -> {b!r}" if key != "tasks" else "tasks (the task list)")
    return out


def check_resume(saved_cfg, cfg, registry) -> list[str]:
    """Before any model loads: raise CheckpointError when `cfg` cannot continue a run trained
    with `saved_cfg` (restore would fail after loading everything); return the other changed
    settings (the caller warns: the run continues with the new values)."""
    problems = []
    if [t.name for t in saved_cfg.tasks] != [t.name for t in cfg.tasks]:
        problems.append(f"the run trained tasks {[t.name for t in saved_cfg.tasks]}, the flags "
                        f"give {[t.name for t in cfg.tasks]}")
    own = lambda c: sorted(t.name for t in c.tasks if t.scheduler is not None)  # noqa: E731
    if own(saved_cfg) != own(cfg):
        problems.append(f"tasks with their own scheduler: {own(saved_cfg)} then, {own(cfg)} now")
    teacher = lambda c: registry.objective(c.algo.loss).teacher != "never"  # noqa: E731
    if teacher(saved_cfg) != teacher(cfg):
        problems.append(f"algo.loss {saved_cfg.algo.loss!r} -> {cfg.algo.loss!r} adds or drops the "
                        f"teacher the checkpoint {'has' if teacher(saved_cfg) else 'lacks'}")
    if problems:
        raise CheckpointError("cannot resume with these settings: " + "; ".join(problems)
                              + ". Resume without the conflicting flags, or start a new run")
    changes = config_changes(saved_cfg.model_dump(mode="json"), cfg.model_dump(mode="json"))
    return [c for c in changes if not c.startswith(("steps:", "output_dir:"))]


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
    problem = intact(path)
    if problem is not None:
        raise CheckpointError(f"{path} is damaged: {problem}")
    # Everything to the CPU first: the RNG states must stay there, and the optimizer and teacher
    # copy their tensors onto the parameters' device when they load.
    # Under torchrun every rank reads the file: mapped, so the ranks of a node share one copy.
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False,
                           mmap=run.parts.world.size > 1)
    except Exception as exc:  # noqa: BLE001 - a damaged file that passed the header checks
        raise CheckpointError(f"{state_file} cannot be loaded ({type(exc).__name__}: {exc}); "
                              f"resume from an older checkpoint (delete this one)") from None
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
    distributed.load_full_state(parts.world, parts.model, loaded.state_dict())  # each rank its shard
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
    if parts.world.is_main:  # the run directory is rank 0's
        for name in ("metrics.jsonl", "samples.jsonl"):
            _trim_jsonl(parts.run_dir / name, step)
        drop_temporaries(parts.run_dir)
    parts.info.start_step = step + 1
    return step
