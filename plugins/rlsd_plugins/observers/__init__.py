"""The built-in observers: console progress and final table, metrics JSONL, samples, PNG plot and
TensorBoard, registered through the `rlsd` entry-point group like any third-party plugin.

Data flow: the trainer calls the event hooks (`rlsd_before_run`, `rlsd_after_rollout`,
`rlsd_after_step`, `rlsd_after_run`, `rlsd_on_error`); this module keeps one set of observer
objects per run (keyed by the run directory) and forwards each event to those that the run's
`log:` config section enables. Disable all of them with RLSD_DISABLE_PLUGINS=observers.

Step 0 carries the held-out evaluation before training; every later step one optimizer step's
metrics (see docs/training.md for the keys).
"""

from __future__ import annotations

import logging
from typing import Any

from rlsd_core import hookimpl

from .console import ConsoleObserver
from .files import JsonlObserver, SamplesObserver
from .plot import PlotObserver
from .tensorboard import TensorBoardObserver, tensorboard_available

_active: dict[str, list[Any]] = {}
log = logging.getLogger("rlsd")


def _key(run) -> str:
    return str(run.run_dir)


def build_observers(log: dict) -> list[Any]:
    observers: list[Any] = []
    if log.get("console", True):
        observers.append(ConsoleObserver())
    if log.get("jsonl", True):
        observers.append(JsonlObserver())
    if log.get("samples_every", 0):
        observers.append(SamplesObserver(every=int(log["samples_every"])))
    if log.get("plot", True):
        observers.append(PlotObserver())
    tb = log.get("tensorboard", "auto")
    if tb == "true" or (tb == "auto" and tensorboard_available()):
        observers.append(TensorBoardObserver())
    return observers


def _each(run, method: str, *args) -> None:
    """Forward an event to each observer. One that raises is dropped (and logged) so that the
    others go on, as the loop does for whole plugins; with log.on_observer_error=stop the error
    propagates and the loop stops the run, naming this plugin and the observer."""
    stop = dict(run.config.get("log", {})).get("on_observer_error") == "stop"
    observers = _active.get(_key(run), [])
    for obs in list(observers):
        fn = getattr(obs, method, None)
        if fn is None:
            continue
        try:
            fn(run, *args)
        except Exception as exc:
            if stop and method != "on_error":
                raise RuntimeError(f"{type(obs).__name__}.{method}: {type(exc).__name__}: {exc}") from exc
            observers.remove(obs)
            log.error("rlsd: the built-in %s raised %s in %s: %s; it is disabled for the rest of "
                      "the run", type(obs).__name__, type(exc).__name__, method, exc)
            log.debug("the traceback of %s", type(obs).__name__, exc_info=exc)


@hookimpl
def rlsd_before_run(run):
    _active[_key(run)] = build_observers(dict(run.config.get("log", {})))
    _each(run, "before_run")


@hookimpl
def rlsd_after_rollout(run, step, samples):
    _each(run, "after_rollout", step, samples)


@hookimpl
def rlsd_after_step(run, step, metrics):
    _each(run, "after_step", step, metrics)


@hookimpl
def rlsd_after_run(run, summary):
    try:
        _each(run, "after_run", summary)
    finally:
        _close(run)


@hookimpl
def rlsd_on_error(run, step, error):
    try:
        _each(run, "on_error", step, error)
    finally:
        _close(run)


def _close(run) -> None:
    for obs in _active.pop(_key(run), []):
        close = getattr(obs, "close", None)
        if close is not None:
            close()
