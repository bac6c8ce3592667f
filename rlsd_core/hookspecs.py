"""The hook specifications: the whole contract between rlsd and its plugins.

Provider hooks (`rlsd_verifiers`, `rlsd_injectors`, `rlsd_schedulers`, `rlsd_task_sources`,
`rlsd_objectives`) are called once at start-up; each returns a list of typed records (see `rlsd_core.records`). Event
hooks (`rlsd_before_run`, `rlsd_after_rollout`, `rlsd_after_step`, `rlsd_after_run`,
`rlsd_on_error`) let observers such as loggers and metrics sinks follow a run; they return
nothing. Every hook is documented in docs/plugin-hooks.md with its exact signature.

`API_VERSION` versions this contract (these hooks and the records of `rlsd_core.records`), apart
from rlsd's own release number: a minor bump adds (a hook, an optional record field), a major
bump removes or changes. A plugin states the range it was written for with a module-level
`RLSD_API = ">=1.0,<2"`; the plugin manager refuses a plugin whose range excludes this version.
The policy is docs/plugin-api.md.
"""

from __future__ import annotations

import pluggy

PROJECT = "rlsd"
API_VERSION = "1.0"


class RlsdDeprecationWarning(DeprecationWarning):
    """Warns a plugin author about a hook or record field that a later major API version removes
    (docs/plugin-api.md: deprecated for at least one minor version before it goes)."""


hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def rlsd_verifiers():
    """Return a list of `VerifierRecord`: reward verifiers this plugin provides.

    Example::

        from rlsd_core import hookimpl, Verdict, VerifierRecord

        def _yes(completions, rows):
            return [Verdict.ok() if c.strip().lower() == "yes" else 0.0 for c in completions]

        @hookimpl
        def rlsd_verifiers():
            return [VerifierRecord(name="says_yes", fn=_yes, columns=(), in_process=True)]
    """


@hookspec
def rlsd_injectors():
    """Return a list of `InjectorRecord`: privileged-context injectors (what the teacher sees).

    Example::

        from rlsd_core import hookimpl, InjectorRecord

        def _hint(row, student_messages, ctx):
            last = student_messages[-1]
            return student_messages[:-1] + [
                {"role": last["role"], "content": f"{last['content']}\\nHint: {row['answer']}"}]

        @hookimpl
        def rlsd_injectors():
            return [InjectorRecord(name="hint", fn=_hint, columns=("answer",))]
    """


@hookspec
def rlsd_schedulers():
    """Return a list of `SchedulerRecord`: magnitude schedulers (lambda and eps_w per step).

    Example::

        from rlsd_core import hookimpl, Magnitude, SchedulerRecord

        def _halving(lam0=0.5, eps_w=0.2):
            return lambda step, diagnostics: Magnitude(lam0 / 2 ** (step // 10), eps_w)

        @hookimpl
        def rlsd_schedulers():
            return [SchedulerRecord(name="halving", fn=_halving)]
    """


@hookspec
def rlsd_task_sources():
    """Return a list of `TaskSourceRecord`: whole tasks (rows plus the verifier and injector).

    Example::

        from rlsd_core import hookimpl, TaskSourceRecord

        def _doubling(size=100, seed=0):
            return [{"prompt": f"What is 2*{i}?", "answer": str(2 * i)} for i in range(size)]

        @hookimpl
        def rlsd_task_sources():
            return [TaskSourceRecord(name="doubling", fn=_doubling, verifier="exact_match")]
    """


@hookspec
def rlsd_objectives():
    """Return a list of `ObjectiveRecord`: training objectives (`algo.loss` names one).

    Example::

        from rlsd_core import hookimpl, ObjectiveRecord, algo

        def _credit(b):  # GRPO credit, but only on responses that beat their group
            return algo.rlsd_token_advantages(b.advantages.clamp(min=0), None, b.old_logprobs,
                                              b.mask, lam=0.0, eps_w=0.2)

        def _loss(b):
            return algo.policy_loss(b.logprobs, b.old_logprobs, b.token_advantages, b.mask,
                                    denominator=b.denominator)

        @hookimpl
        def rlsd_objectives():
            return [ObjectiveRecord(name="positive_only", credit=_credit, loss=_loss)]
    """


@hookspec
def rlsd_before_run(run):
    """Called once before the first step; `run` is a `RunInfo` (config, run directory, steps).

    Example::

        @hookimpl
        def rlsd_before_run(run):
            print("training", run.config.get("model"), "for", run.total_steps, "steps")
    """


@hookspec
def rlsd_after_rollout(run, step, samples):
    """Called after each rollout is scored; `samples` is a list of dicts, one per response
    (task, prompt, response, reward, category, message).

    Example::

        @hookimpl
        def rlsd_after_rollout(run, step, samples):
            print(step, sum(s["reward"] for s in samples) / len(samples))
    """


@hookspec
def rlsd_after_step(run, step, metrics):
    """Called after each optimizer step with that step's metrics dict (floats by name).

    Example::

        @hookimpl
        def rlsd_after_step(run, step, metrics):
            print(step, metrics["loss"])
    """


@hookspec
def rlsd_after_run(run, summary):
    """Called once when the run ends normally; `summary` is a dict of final results.

    Example::

        @hookimpl
        def rlsd_after_run(run, summary):
            print("done:", summary)
    """


@hookspec
def rlsd_on_error(run, step, error):
    """Called when a run stops on an exception (before it propagates); `error` is the exception.

    Example::

        @hookimpl
        def rlsd_on_error(run, step, error):
            print(f"step {step} failed: {error!r}")
    """
