"""The training run: setup, held-out evaluation, `cfg.steps` training steps, checkpoints, summary.

    setup (rlsd_core.loop.run) -> [resume (checkpoint)] -> eval before -> for each step:
    train_step (rlsd_core.loop.step) -> periodic eval -> observers (event hooks) -> checkpoint
    -> eval after -> final checkpoint -> summary.json

Observers (console, metrics JSONL, plot, TensorBoard, third-party plugins) follow the run through
the event hooks (rlsd_core.loop.events: one plugin at a time; one that raises is disabled, or
stops the run, by `log.on_observer_error`); the loop itself writes only the config, the
checkpoints and the summary.

Reproducibility: the same config and seed give the same metrics on the same machine and thread
count: torch is seeded, each row of a step is sampled with a seed of (seed, step, row), the rows
of each step depend only on (seed, step), and mini-batches are shuffled by a generator seeded
with (seed, step). None of these depends on the number of ranks under torchrun
(rlsd_core.loop.distributed), so 1 and N processes log the same metrics up to float rounding. What remains: float reductions in matmuls depend on the thread count and CPU kernel
(AVX-512 vs AVX2), and GPU kernels are not bitwise deterministic, so runs on other hardware
differ in the last bits and, through sampling, diverge after a few steps.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from ..config import TrainConfig
from ..data import json_safe
from ..data.files import write_text_atomic
from ..plugins import PluginManager
from . import checkpoint, distributed
from .evaluation import evaluate_task
from .run import Reporter, Run, quiet, setup
from .step import train_step
from .teacher_check import TeacherCheckWarning, paired_se, run_check, summary_line


def evaluate(run: Run, outcomes: dict[str, list[bool]] | None = None) -> dict[str, float]:
    """Greedy accuracy per task (rlsd_core.loop.evaluation: the same code `rlsd eval` runs);
    each problem's outcome goes to `outcomes[task]` when given."""
    p = run.parts
    acc = {}
    for task in p.tasks:
        out = evaluate_task(p.engine, p.tokenizer, task, p.scorers[task.name],
                            max_new_tokens=p.cfg.eval.max_new_tokens, vision=p.vision)
        acc[task.name] = out["accuracy"]
        if outcomes is not None:
            outcomes[task.name] = out["correct"]
    return acc


def change_se(before: list[bool] | None, after: list[bool] | None, b: float, a: float, n: int) -> float:
    """Standard error of held-out accuracy after - before. Paired over the same problems when
    both outcome lists are known (`paired_se`); else as two independent n-problem evaluations,
    sqrt(b(1-b)/n + a(1-a)/n), which overstates it."""
    if before and after and len(before) == len(after) == n and n > 1:
        return paired_se(before, after)
    return math.sqrt(b * (1 - b) / n + a * (1 - a) / n)


def finite(metrics: dict) -> dict:
    """NaN/inf are not JSON: report them as None (and they are never silently averaged)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def summarize(run: Run, seconds: float) -> dict:
    history, evals = run.progress.history, run.progress.eval_history
    tail = max(1, min(5, len(history) // 2 or 1))
    tasks = {}
    for task in run.parts.tasks:
        key = f"reward/{task.name}"
        series = [m[key] for m in history if m.get(key) is not None]
        before, after, n = evals[0][task.name], evals[max(evals)][task.name], len(task.eval)
        tasks[task.name] = {
            "reward_first": sum(series[:tail]) / len(series[:tail]) if series else None,
            "reward_last": sum(series[-tail:]) / len(series[-tail:]) if series else None,
            "heldout_before": before, "heldout_after": after,
            "heldout_change_se": change_se(run.progress.eval_before.get(task.name),
                                           run.progress.eval_after.get(task.name), before, after, n),
            "eval_size": n, "verifier": task.verifier, "injector": task.injector,
        }
    return {"run_dir": str(run.parts.run_dir), "steps": len(history), "seconds": round(seconds, 1),
            "loss": run.parts.cfg.algo.loss, "reward_window": tail, "tasks": tasks,
            "infra_masked": sum(m.get("infra_masked") or 0 for m in history),
            "disabled_observers": dict(run.parts.events.disabled)}


def teacher_precheck(run: Run, reporter: Reporter) -> dict | None:
    """The small teacher check before step 1 (`teacher.check`; rlsd_core.loop.teacher_check):
    written to teacher_check.json, reported as a "teacher_check" event, and a warning naming the
    numbers for every task whose teacher is not informative. None when switched off, and under
    torchrun (the check generates and scores in one process; run `rlsd check-teacher` first)."""
    cfg, parts = run.parts.cfg, run.parts
    wanted = cfg.teacher.check == "true" or (cfg.teacher.check == "auto" and parts.teacher is not None)
    if not wanted or parts.world.size > 1:
        return None
    report = run_check(run, rows=cfg.teacher.check_rows, sample_rows=cfg.teacher.check_rows)
    data = report.to_dict()
    write_text_atomic(parts.run_dir / "teacher_check.json",
                      json.dumps(json_safe(data), indent=1, allow_nan=False))
    reporter("teacher_check", data)
    for task in report.failing():
        warnings.warn(f"teacher check: the self-teacher is {task.verdict} on task {task.task!r} "
                      f"({summary_line(task)}). {task.reason}. RLSD's token weights then carry no "
                      "per-token information; see `rlsd check-teacher` and docs/teacher-check.md.",
                      TeacherCheckWarning, stacklevel=2)
    return data


def run_steps(run: Run, start: int) -> None:
    """Steps start+1 .. cfg.steps, each followed by its evaluation, observers and checkpoint."""
    cfg, events, progress = run.parts.cfg, run.parts.events, run.progress
    if start == 0:
        progress.eval_history[0] = evaluate(run, progress.eval_before)
        events.after_step(0, {f"eval/{k}": v for k, v in progress.eval_history[0].items()} | {"step": 0})
    for step in range(start + 1, cfg.steps + 1):
        progress.step = step
        metrics = train_step(run, step)
        if step == cfg.steps or (cfg.eval.every and step % cfg.eval.every == 0):
            progress.eval_history[step] = evaluate(run, progress.eval_after)
            metrics.update({f"eval/{k}": v for k, v in progress.eval_history[step].items()})
        metrics = finite(metrics)
        progress.history.append(metrics)
        events.after_step(step, metrics)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
            checkpoint.save(run, step, keep=cfg.checkpoint_keep)


def train(cfg: TrainConfig, pm: PluginManager | None = None, *, reporter: Reporter = quiet,
          run_dir: Path | None = None, resume: Path | None = None) -> dict:
    """Run the whole training. With `resume` (a checkpoint directory of `run_dir`) the run
    continues after that checkpoint's step, as if it had never stopped (rlsd_core.loop.checkpoint).
    Returns the summary (also written to <run_dir>/summary.json)."""
    started = time.perf_counter()
    run = setup(cfg, pm, reporter=reporter, run_dir=run_dir)
    events = run.parts.events
    start = 0
    try:
        if resume is not None:
            start = checkpoint.restore(run, resume)  # trims the logs; sets info.start_step
        # Only now, and atomically: a resume that fails must leave the run's own config.yaml
        # as it was, or a plain `--resume` afterwards would fail too.
        if run.parts.world.is_main:
            write_text_atomic(run.parts.run_dir / "config.yaml", cfg.to_yaml())
        check = teacher_precheck(run, reporter) if start == 0 else None
        events.before_run()
        run_steps(run, start)
        checkpoint.save(run, cfg.steps, keep=cfg.checkpoint_keep)
        summary = summarize(run, time.perf_counter() - started)
        if check is not None:
            summary["teacher_check"] = {"verdict": check["verdict"], "seconds": check["seconds"],
                                        "tasks": {k: v["verdict"] for k, v in check["tasks"].items()}}
        if run.parts.world.is_main:
            write_text_atomic(run.parts.run_dir / "summary.json",
                              json.dumps(json_safe(summary), indent=1, allow_nan=False))
        events.after_run(summary)
        distributed.stop(run.parts.world)
        return summary
    except BaseException as exc:
        events.on_error(run.progress.step, exc)
        raise
    finally:
        run.parts.close()
