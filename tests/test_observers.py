"""The built-in observers, driven through the real event hooks of a plugin manager."""

from __future__ import annotations

import json

import pytest

from rlsd_core import RunInfo
from rlsd_plugins.observers import build_observers, plot
from rlsd_plugins.observers.console import results_table
from rlsd_plugins.observers.tensorboard import TensorBoardObserver, tensorboard_available


def _run(tmp_path, **log):
    config = {"log": {"console": False, "jsonl": True, "plot": True, "tensorboard": "false",
                      "samples_every": 1, **log},
              "rollout": {"group_size": 2}, "algo": {"loss": "rlsd"}, "model": {"name_or_path": "tiny"}}
    return RunInfo(config=config, run_dir=tmp_path, total_steps=2)


def _metrics(step):
    return {"step": step, "reward/add": 0.1 * step, "eval/add": 0.5, "lambda": 0.5 - 0.1 * step,
            "clip_low_frac": 0.02, "clip_high_frac": None, "entropy": float("nan"),
            "response_length": 7.0}


def test_observers_are_registered_through_the_entry_point(pm):
    assert pm.pm.has_plugin("observers")


def test_events_write_metrics_samples_and_plot(pm, tmp_path):
    run = _run(tmp_path)
    pm.hook.rlsd_before_run(run=run)
    pm.hook.rlsd_after_rollout(run=run, step=1, samples=[
        {"task": "add", "prompt": "p", "response": "r", "reward": 1.0, "category": "ok", "message": ""},
        {"task": "add", "prompt": "p", "response": "s", "reward": 0.0, "category": "wrong_answer",
         "message": "expected 1"}])
    for step in (0, 1, 2):
        pm.hook.rlsd_after_step(run=run, step=step, metrics=_metrics(step))
    pm.hook.rlsd_after_run(run=run, summary={"run_dir": str(tmp_path), "steps": 2, "seconds": 1.0,
                                             "tasks": {}})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    assert lines[1]["entropy"] is None, "NaN must become null, not invalid JSON"
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 1 and samples[0]["response"] == "r"  # one per group
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_on_error_keeps_what_was_logged(pm, tmp_path):
    run = _run(tmp_path, jsonl=False, samples_every=0)
    pm.hook.rlsd_before_run(run=run)
    pm.hook.rlsd_after_step(run=run, step=1, metrics=_metrics(1))
    pm.hook.rlsd_on_error(run=run, step=2, error=RuntimeError("x"))
    assert (tmp_path / "plot.png").is_file()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_plot_series_skip_missing_and_non_finite():
    series = plot._series([_metrics(1), _metrics(2), {"step": 3}], "entropy", exact=True)
    assert series == {}
    series = plot._series([_metrics(1), _metrics(2)], "reward/", exact=False)
    assert series == {"reward/add": ([1, 2], [0.1, 0.2])}


def test_log_section_selects_observers():
    names = lambda log: sorted(type(o).__name__ for o in build_observers(log))  # noqa: E731
    assert names({"console": False, "jsonl": False, "plot": False, "tensorboard": "false"}) == []
    assert "ConsoleObserver" in names({"console": True, "tensorboard": "false"})
    assert ("TensorBoardObserver" in names({"tensorboard": "auto"})) == tensorboard_available()


def test_tensorboard_forced_without_the_package_says_how_to_fix(tmp_path):
    if tensorboard_available():
        obs = TensorBoardObserver()
        obs.before_run(_run(tmp_path))
        obs.after_step(None, 1, {"loss": 1.0, "note": None})
        obs.close()
        assert any((tmp_path / "tensorboard").iterdir())
        return
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        TensorBoardObserver().before_run(_run(tmp_path))


def test_results_table_shows_before_and_after():
    from rich.console import Console

    summary = {"steps": 3, "seconds": 12.0, "loss": "rlsd", "reward_window": 1,
               "tasks": {"add": {"verifier": "math", "reward_first": 0.25, "reward_last": 0.5,
                                 "heldout_before": 0.3, "heldout_after": 0.45, "eval_size": 100}}}
    console = Console(width=200, record=True)
    console.print(results_table(summary))
    text = console.export_text()
    assert "held-out before" in text and "held-out after" in text
    assert "30.0% of 100" in text and "45.0%" in text and "25.0%" in text


def test_a_failing_builtin_observer_is_dropped_and_the_others_go_on(pm, tmp_path, monkeypatch, caplog):
    """Inside the built-in `observers` plugin, one observer that raises (here the plot) is
    dropped and logged; the metrics file is still written. With on_observer_error=stop the
    error propagates, for the loop to stop the run naming the plugin."""
    def broken(self, run, step, metrics):
        raise OSError("disk full")

    monkeypatch.setattr(plot.PlotObserver, "after_step", broken)
    run = _run(tmp_path, samples_every=0)
    pm.hook.rlsd_before_run(run=run)
    with caplog.at_level("ERROR", logger="rlsd"):
        for step in (0, 1, 2):
            pm.hook.rlsd_after_step(run=run, step=step, metrics=_metrics(step))
    pm.hook.rlsd_after_run(run=run, summary={"steps": 2, "seconds": 1.0, "tasks": {}})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert [r.getMessage() for r in caplog.records if "PlotObserver" in r.getMessage()] == [
        "rlsd: the built-in PlotObserver raised OSError in after_step: disk full; it is disabled "
        "for the rest of the run"]

    stop = RunInfo(config={**_run(tmp_path / "b").config,
                           "log": {"console": False, "jsonl": False, "plot": True,
                                   "tensorboard": "false", "on_observer_error": "stop"}},
                   run_dir=tmp_path / "b", total_steps=2)
    (tmp_path / "b").mkdir()
    pm.hook.rlsd_before_run(run=stop)
    with pytest.raises(RuntimeError, match="PlotObserver.after_step: OSError: disk full"):
        pm.hook.rlsd_after_step(run=stop, step=1, metrics=_metrics(1))
    pm.hook.rlsd_on_error(run=stop, step=1, error=RuntimeError("x"))
