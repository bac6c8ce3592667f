"""The training loop.

    run.py        setup: the parts of a run (model, engine, teacher, optimizer, scorers, ...)
    batch.py      the typed records a step passes between stages; which rows a step draws
    stages.py     the stages of a step: rows, rollout, verify, teacher prompts, advantages,
                  scoring forwards, magnitude, sync
    update.py     the update stage: PPO epochs x mini-batches x micro-batches of the loss
    schedule.py   every row's lambda and eps_w (the run's scheduler and tasks' own)
    step.py       train_step: the stages in order, then the metrics (metrics.py)
    trainer.py    train: evaluation, steps, observers, checkpoints, summary
    teacher.py    the teacher weights (snapshot, live, EMA) and teacher scoring
    checkpoint.py atomic checkpoints and resume
    evaluation.py held-out greedy accuracy and pass@k (also `rlsd eval`); greedy accuracy with
                  and without the privileged prompt (teacher check, warm-up readiness)
    warmup.py     the cached supervised warm-up of the embedded default, stopped when the
                  self-teacher reads the hint (its readiness check)
    distributed.py data parallel under torchrun: process group, FSDP2, the ranks' rows and sums
    teacher_check.py  is the self-teacher informative? (`rlsd check-teacher`, the step-0 check)
"""

from .batch import Credit, Rollout, StepBatch, Verified, draw_rows, task_counts
from .checkpoint import CheckpointError
from .evaluation import evaluate_task, pass_at_k
from .run import Parts, Progress, Run, load_policy, setup
from .schedule import Schedule, ScheduleSlot
from .step import train_step
from .teacher import Teacher
from .teacher_check import (TaskCheck, TeacherCheckReport, TeacherCheckWarning, check_config,
                            check_tasks, run_check)
from .trainer import evaluate, summarize, train
from .warmup import WarmupWarning, build_examples, train_supervised, warmed_up_dir, warmup_record

__all__ = ["CheckpointError", "Credit", "Parts", "Progress", "Rollout", "Run", "Schedule",
           "ScheduleSlot", "StepBatch", "TaskCheck", "Teacher", "TeacherCheckReport",
           "TeacherCheckWarning", "Verified", "WarmupWarning", "build_examples", "check_config", "check_tasks", "draw_rows",
           "evaluate", "evaluate_task", "load_policy", "pass_at_k", "run_check", "setup", "summarize",
           "task_counts", "train", "train_step", "train_supervised", "warmed_up_dir",
           "warmup_record"]
