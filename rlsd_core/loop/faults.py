"""The infrastructure-fault guard: a run whose verifier keeps failing stops, loudly.

    train_step: verify -> InfraGuard.observe(batch, verified) -> (the rest of the step)

Samples whose verdict is an infrastructure fault (verifier_error, sandbox_error, gold_error)
are masked out of training rather than scored 0. That is right for an occasional fault, but a
verifier that crashes on every sample would then mask every sample and the run would "train"
on nothing for as many steps as configured. The guard counts, per task, the steps in a row on
which the share of faults exceeded `faults.max_infra_fraction`; after `faults.steps` such
steps the run stops with an `InfraFaultError` naming the task, its verifier and the plugin it
comes from, the fault categories and the verifier's last message. The check runs right after
the rollout is scored, before the step's expensive forwards. `max_infra_fraction: 1.0` turns
it off. The streaks restart from 0 when a run resumes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..plugins import PluginError
from .batch import StepBatch, Verified


class InfraFaultError(PluginError):
    """Infrastructure faults exceeded the configured share of a task's samples for too long."""


@dataclass
class InfraGuard:
    max_fraction: float = 0.5
    steps: int = 3
    streaks: dict[str, int] = field(default_factory=dict)

    def observe(self, parts, batch: StepBatch, verified: Verified) -> None:
        """Update each task's streak from this step's verdicts; raise when one is too long."""
        for task in parts.tasks:
            mine = [v for i, v in enumerate(verified.verdicts)
                    if batch.tasks[batch.of_response(i)] is task]
            faults = [v for v in mine if v.is_infra]
            if not mine or len(faults) / len(mine) <= self.max_fraction:
                self.streaks[task.name] = 0
                continue
            self.streaks[task.name] = self.streaks.get(task.name, 0) + 1
            if self.streaks[task.name] >= self.steps:
                raise InfraFaultError(self._message(parts, task, batch.step, len(mine), faults))

    def _message(self, parts, task, step: int, total: int, faults: list) -> str:
        cats = Counter(v.category.value for v in faults)
        shown = ", ".join(f"{n} {c}" for c, n in cats.most_common())
        verifier = task.verifier
        table = parts.pm.registry.by_kind["verifier"]
        origin = f" from {table[verifier].origin}" if verifier in table else ""
        first = self.steps - 1
        return (f"task {task.name!r}: {len(faults)} of its {total} samples at step {step} were "
                f"infrastructure faults ({shown}), over faults.max_infra_fraction="
                f"{self.max_fraction:g} for {self.steps} steps in a row (steps {step - first}-"
                f"{step}); every such sample is masked, so the run would learn almost nothing. "
                f"Its verifier is {verifier!r}{origin}; its last message: {faults[-1].message!r}. "
                f"Fix the verifier or the task's rows (`rlsd plugins check {verifier}` tests the "
                f"verifier), or raise faults.max_infra_fraction / faults.steps "
                f"(max_infra_fraction: 1.0 turns this check off).")
