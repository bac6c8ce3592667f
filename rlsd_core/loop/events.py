"""The event hooks as the loop calls them: one observer plugin at a time, so that one that fails
cannot stop the run or silence the others.

    trainer / train_step -> Events.before_run / after_rollout / after_step / after_run / on_error
        -> for each plugin implementing the hook: PluginManager.call_one (through pluggy, so
           RLSD_TRACE_PLUGINS sees every call)

An observer that raises is logged with its name, its distribution, the hook and the step, and
then either disabled for the rest of the run (`log.on_observer_error: disable`, the default: a
metrics logger must not cost a day of training) or the run stops with an `ObserverError`
naming it (`stop`). A failure inside `rlsd_on_error` is only logged: the run is already
stopping, and the error that stopped it must be the one that propagates. The summary lists
the observers that were disabled, and why.
"""

from __future__ import annotations

import logging
from typing import Any

from ..plugins import PluginError, PluginManager
from ..records import RunInfo

log = logging.getLogger("rlsd")

ON_ERROR = ("disable", "stop")


class ObserverError(PluginError):
    """An observer raised and the config says to stop the run (`log.on_observer_error: stop`)."""


class Events:
    """The run's event hooks, guarded per plugin."""

    def __init__(self, pm: PluginManager, info: RunInfo, on_error: str = "disable") -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.pm, self.info, self.policy = pm, info, on_error
        self.disabled: dict[str, str] = {}  # plugin name -> what it raised

    def before_run(self) -> None:
        self._emit("rlsd_before_run", run=self.info)

    def after_rollout(self, step: int, samples: list[dict]) -> None:
        self._emit("rlsd_after_rollout", run=self.info, step=step, samples=samples)

    def after_step(self, step: int, metrics: dict) -> None:
        self._emit("rlsd_after_step", run=self.info, step=step, metrics=metrics)

    def after_run(self, summary: dict) -> None:
        self._emit("rlsd_after_run", run=self.info, summary=summary)

    def on_error(self, step: int, error: BaseException) -> None:
        self._emit("rlsd_on_error", run=self.info, step=step, error=error)

    def _emit(self, hook: str, **kwargs: Any) -> None:
        for name in self.pm.implementers(hook):
            if name in self.disabled:
                continue
            try:
                self.pm.call_one(hook, name, **kwargs)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - KeyboardInterrupt still stops
                self._failed(name, hook, kwargs.get("step"), exc)

    def _failed(self, name: str, hook: str, step: int | None, exc: BaseException) -> None:
        at = f" at step {step}" if step is not None else ""
        what = (f"observer {name!r} ({self.pm.origin(name)}) raised {type(exc).__name__} in "
                f"{hook}{at}: {exc}")
        if self.policy == "stop" and hook != "rlsd_on_error":
            raise ObserverError(f"{what}. The run stops because log.on_observer_error is 'stop' "
                                f"(set it to 'disable' to train on without this observer).") from exc
        self.disabled[name] = f"{type(exc).__name__} in {hook}{at}: {exc}"
        log.error("rlsd: %s. It is disabled for the rest of the run (log.on_observer_error=stop "
                  "stops the run instead).", what)
        log.debug("the traceback of observer %r", name, exc_info=exc)  # for the plugin's author
