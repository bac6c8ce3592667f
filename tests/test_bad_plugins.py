"""The loop survives a bad plugin: an observer that raises is disabled (or stops the run, by
`log.on_observer_error`), and a verifier that crashes on every sample stops the run after
`faults.steps` steps with an error naming the task, the verifier and its distribution, in
process and through `rlsd train` (exit status 2, no traceback)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from rlsd_core import VerifierRecord, hookimpl
from rlsd_core import loop as T
from rlsd_core.config import build_config
from rlsd_core.loop.events import ObserverError
from rlsd_core.loop.faults import InfraFaultError


def _even(completions, rows, **_):
    return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


def _crash(completions, rows, **_):
    raise ValueError("the judge is down")


class Plugin:
    """A verifier that always crashes, a good one, and an observer that raises at step 2."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def rlsd_verifiers(self):
        return [VerifierRecord(name="always_crash", fn=_crash, columns=(), in_process=True),
                VerifierRecord(name="even_len", fn=_even, columns=(), in_process=True)]

    @hookimpl
    def rlsd_after_step(self, run, step, metrics):
        self.calls.append(step)
        if step == 2:
            raise KeyError("no such metric")


def _cfg(tmp_path, **over):
    base = {"steps": 5, "threads": 1, "output_dir": str(tmp_path / "run"), "warmup.enabled": "false",
            "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_len", "eval_size": 2,
                       "train_size": 32}],
            "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
            "eval.max_new_tokens": 4, "eval.every": 0, "log.console": False, "log.plot": False,
            "log.jsonl": False, "log.samples_every": 0, "scheduler.name": "constant"}
    base.update(over)
    return build_config(overrides=list(base.items()))


@pytest.fixture
def bad(pm):
    plugin = Plugin()
    pm.register(plugin, name="bad_plugin")
    return pm, plugin


def test_a_raising_observer_is_disabled_and_named(bad, tmp_path, caplog):
    pm, plugin = bad
    with caplog.at_level(logging.ERROR, logger="rlsd"):
        summary = T.train(_cfg(tmp_path), pm)
    assert summary["steps"] == 5
    assert plugin.calls == [0, 1, 2], "called until it raised, then never again"
    assert "bad_plugin" in summary["disabled_observers"]
    assert "KeyError in rlsd_after_step at step 2" in summary["disabled_observers"]["bad_plugin"]
    [record] = [r for r in caplog.records if "bad_plugin" in r.getMessage()]
    assert "observer 'bad_plugin'" in record.getMessage() and "disabled" in record.getMessage()


def test_a_raising_observer_stops_the_run_when_configured(bad, tmp_path):
    pm, plugin = bad
    with pytest.raises(ObserverError, match=r"observer 'bad_plugin' .* raised KeyError in "
                                            r"rlsd_after_step at step 2.*on_observer_error is 'stop'"):
        T.train(_cfg(tmp_path, **{"log.on_observer_error": "stop"}), pm)


def test_a_verifier_that_always_crashes_stops_the_run(bad, tmp_path):
    pm, plugin = bad
    with pytest.raises(InfraFaultError) as info:
        T.train(_cfg(tmp_path, **{"tasks.0.verifier": "always_crash"}), pm)
    msg = str(info.value)
    assert "task 'rev': 4 of its 4 samples at step 3 were infrastructure faults (4 verifier_error)" in msg
    assert "steps 1-3" in msg and "'always_crash'" in msg and "the judge is down" in msg
    assert "faults.max_infra_fraction" in msg
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_fault_check_can_be_turned_off(bad, tmp_path):
    pm, _ = bad
    summary = T.train(_cfg(tmp_path, **{"tasks.0.verifier": "always_crash", "steps": 3,
                                        "faults.max_infra_fraction": 1.0}), pm)
    assert summary["infra_masked"] == 3 * 4


PLUGIN_SRC = textwrap.dedent('''
    from rlsd_core import VerifierRecord, hookimpl

    def crash(completions, rows, **_):
        raise ValueError("the judge is down")

    @hookimpl
    def rlsd_verifiers():
        return [VerifierRecord(name="always_crash", fn=crash, columns=(), in_process=True)]

    @hookimpl
    def rlsd_after_step(run, step, metrics):
        if step == 1:
            raise KeyError("no such metric")
''')


def test_rlsd_train_ends_with_a_message_naming_the_plugins(tmp_path):
    """The issue's target: 5 steps, an observer that raises, a verifier that always crashes."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "rlsd_bad_cli_plugin.py").write_text(PLUGIN_SRC)
    dist = site / "rlsd_bad_cli_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlsd-bad-cli-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlsd]\nbad_cli = rlsd_bad_cli_plugin\n")
    config = {"steps": 5, "threads": 1, "output_dir": str(tmp_path / "run"),
              "warmup": {"enabled": False},
              "tasks": [{"name": "rev", "source": "reverse", "verifier": "always_crash",
                         "eval_size": 2, "train_size": 32}],
              "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
              "eval": {"max_new_tokens": 4, "every": 0},
              "log": {"console": False, "plot": False, "samples_every": 0}}
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "train", "--config",
                           str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    assert "observer 'bad_cli' (distribution 'rlsd-bad-cli-plugin 0.1'" in err
    assert "KeyError in rlsd_after_step at step 1" in err and "disabled" in err
    assert "rlsd train: task 'rev'" in err, err[-2000:]
    assert "'always_crash' from distribution 'rlsd-bad-cli-plugin 0.1'" in err
