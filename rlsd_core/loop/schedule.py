"""The magnitude schedule: every row's lambda and eps_w for a step, on one code path.

A run has one scheduler (`scheduler:` in the config) and each task may bring its own
(`tasks[i].scheduler`). Each is a `ScheduleSlot`: the scheduler plugin's object plus the
diagnostics it reads next step. Before the rollout, `magnitudes(step)` asks every slot once; the
rows stage then fills per-row lambda and eps_w tensors from each row's task's slot
(`per_row`), which is all the objective sees. After the step, `observe` hands each slot its
diagnostics: the run's scheduler the whole step's (diagnostics and metrics), a task's own
scheduler its task's.

Whether the run needs a teacher copy at all (`max_lam`): a scheduler may declare the largest lam
it will ever return (`scheduler.max_lam()`, e.g. 0 for the `grpo` scheduler). When every slot
declares 0, an objective whose teacher runs only while lambda > 0 never scores with a teacher, so
setup builds none (a 7 B policy's snapshot is 28 GB in fp32). A scheduler that declares nothing
is assumed to need one, so a snapshot teacher is always the policy as it was at step 0 whenever
it can be used; and a slot that returns more than it declared raises instead of running a step
without the teacher it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..plugins import PluginError
from ..records import Magnitude


@dataclass
class ScheduleSlot:
    """One scheduler and what it will read next step."""

    name: str
    scheduler: Any  # rlsd_core.records.Scheduler: (step, diagnostics) -> Magnitude
    diagnostics: dict | None = None

    def __call__(self, step: int) -> Magnitude:
        """The scheduler's magnitude for `step`, checked: a NaN lambda would make every
        advantage NaN, so anything but finite 0 <= lam <= 1 and eps_w >= 0 stops the run with
        an error naming the scheduler."""
        mag = self.scheduler(step, self.diagnostics)
        try:
            lam, eps_w = float(mag.lam), float(mag.eps_w)
        except (AttributeError, TypeError, ValueError):
            raise PluginError(f"scheduler {self.name!r} returned {mag!r} at step {step}; a "
                              f"scheduler returns rlsd_core.Magnitude(lam, eps_w)") from None
        if not (math.isfinite(lam) and math.isfinite(eps_w) and 0.0 <= lam <= 1.0 and eps_w >= 0):
            raise PluginError(f"scheduler {self.name!r} returned lam={lam!r}, eps_w={eps_w!r} at "
                              f"step {step}; lam must be in [0, 1] and eps_w >= 0, both finite")
        bound = self.max_lam()
        if bound is not None and lam > bound:
            raise PluginError(f"scheduler {self.name!r} returned lam {lam} at step {step} but "
                              f"declares max_lam() = {bound}; the run was set up for that bound "
                              "(no teacher copy when it is 0): fix the scheduler's max_lam")
        return Magnitude(lam, eps_w)

    def max_lam(self) -> float | None:
        """The scheduler's declared upper bound on lam over all steps, or None if it declares none."""
        declared = getattr(self.scheduler, "max_lam", None)
        return None if declared is None else float(declared())

    def state_dict(self) -> dict:
        # A scheduler with state offers state_dict/load_state_dict (the hook's documented
        # protocol); one that is a pure function of the step (e.g. a lambda) has nothing to save.
        save = getattr(self.scheduler, "state_dict", None)
        return {"name": self.name, "scheduler": save() if save is not None else None,
                "diagnostics": self.diagnostics}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load = getattr(self.scheduler, "load_state_dict", None)
        if state.get("scheduler") is not None and load is not None:
            load(state["scheduler"])
        self.diagnostics = state.get("diagnostics")


@dataclass
class Schedule:
    """The run's slot and the slots of tasks with their own scheduler."""

    run: ScheduleSlot
    tasks: dict[str, ScheduleSlot] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg, registry) -> "Schedule":
        def slot(section) -> ScheduleSlot:
            return ScheduleSlot(section.name, registry.scheduler(section.name).fn(**section.options))

        return cls(run=slot(cfg.scheduler),
                   tasks={t.name: slot(t.scheduler) for t in cfg.tasks if t.scheduler is not None})

    def max_lam(self) -> float | None:
        """The largest lam any slot declares it can return (None: some slot declares nothing)."""
        bounds = [s.max_lam() for s in (self.run, *self.tasks.values())]
        return None if any(b is None for b in bounds) else max(bounds)

    def magnitudes(self, step: int, task_names: Sequence[str]) -> tuple[Magnitude, dict[str, Magnitude]]:
        """(the run's magnitude, each task's: its own slot's, else the run's). Every slot is
        asked exactly once per step."""
        run = self.run(step)
        own = {name: s(step) for name, s in self.tasks.items()}
        return run, {name: own.get(name, run) for name in task_names}

    @staticmethod
    def per_row(row_tasks: Sequence[str], by_task: Mapping[str, Magnitude]) -> tuple[torch.Tensor, torch.Tensor]:
        """lambda [R] and eps_w [R] (float64) for rows whose tasks are `row_tasks`."""
        lam = torch.tensor([by_task[t].lam for t in row_tasks], dtype=torch.float64)
        eps_w = torch.tensor([by_task[t].eps_w for t in row_tasks], dtype=torch.float64)
        return lam, eps_w

    def observe(self, run_diagnostics: dict, task_diagnostics: Mapping[str, dict]) -> None:
        self.run.diagnostics = run_diagnostics
        for name, s in self.tasks.items():
            s.diagnostics = task_diagnostics.get(name)

    def state_dict(self) -> dict:
        return {"run": self.run.state_dict(),
                "tasks": {name: s.state_dict() for name, s in self.tasks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("tasks", {})
        if set(saved) != set(self.tasks):
            raise ValueError(f"the checkpoint has task schedulers for {sorted(saved)}, this config "
                             f"for {sorted(self.tasks)}")
        self.run.load_state_dict(state["run"])
        for name, s in self.tasks.items():
            s.load_state_dict(saved[name])
