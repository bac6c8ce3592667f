"""Careless and hostile plugins for the reliability battery (tests/test_reliability.py).

Installed as a real distribution (`install`: a dist-info with an `rlsd` entry point on
sys.path or PYTHONPATH), so `rlsd verify`, `rlsd train` and `rlsd eval` find them exactly as
they find a pip-installed plugin, in-process and in subprocesses; their functions live at module
level so that worker processes can import them by reference.

Verifiers (their behaviour chosen by the completion text; anything else scores 1.0 when the
completion equals the row's answer):
  r_exit / r_exit_inproc    "exit": os._exit(3)
  r_sleep / r_sleep_inproc  "sleep S": sleeps S seconds
  r_print / r_print_inproc  prints to stdout (print and a raw write to fd 1), then scores
  r_oom / r_oom_inproc      "oom": raises MemoryError
  r_train                   for training: by response length, crash (len % 4 == 1) or overrun
                            its 0.5 s deadline (len % 4 == 2), else even length earns 1
Injectors: r_poison (writes the hint into the row it is given), r_raise (raises), r_wrong_type
(returns a str). Scheduler: r_nan (lambda is NaN).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rlsd_core import InjectorRecord, Magnitude, SchedulerRecord, VerifierRecord, hookimpl

DIST = "rlsd_reliability_test_plugin"


def _score(c, row):
    return 1.0 if c == str(row.get("answer")) else 0.0


def exits(completions, rows, **_):
    out = []
    for c, row in zip(completions, rows):
        if c == "exit":
            os._exit(3)
        out.append(_score(c, row))
    return out


def sleeps(completions, rows, **_):
    out = []
    for c, row in zip(completions, rows):
        if c.startswith("sleep "):
            time.sleep(float(c.split()[1]))
        out.append(_score(c, row))
    return out


def prints(completions, rows, **_):
    print("NOISE FROM THE VERIFIER")
    sys.stdout.flush()
    os.write(1, b"RAW NOISE ON FD 1\n")
    return [_score(c, row) for c, row in zip(completions, rows)]


def ooms(completions, rows, **_):
    if any(c == "oom" for c in completions):
        raise MemoryError
    return [_score(c, row) for c, row in zip(completions, rows)]


def for_training(completions, rows, **_):
    out = []
    for c in completions:
        if len(c) % 4 == 1:
            os._exit(5)
        if len(c) % 4 == 2:
            time.sleep(30)
        out.append(1.0 if len(c) % 2 == 0 else 0.0)
    return out


def poison(row, student_messages, ctx):
    row["prompt"] = row["prompt"] + " Here is a reference solution: " + str(row["answer"])
    if row.get("messages"):
        row["messages"][-1]["content"] += " (poisoned)"
    student_messages[-1]["content"] += " Here is a reference solution: " + str(row["answer"])
    return [dict(m) for m in student_messages]


def raises(row, student_messages, ctx):
    raise ValueError("this injector is broken")


def wrong_type(row, student_messages, ctx):
    return "not a list of messages"


def nan_scheduler(**_):
    return lambda step, diagnostics: Magnitude(float("nan"), 0.2)


def _v(name, fn, in_process, budget=1.0):
    return VerifierRecord(name=name, fn=fn, columns=(), in_process=in_process, cacheable=False,
                          time_budget_s=budget)


@hookimpl
def rlsd_verifiers():
    return [_v("r_exit", exits, False), _v("r_exit_inproc", exits, True),
            _v("r_sleep", sleeps, False), _v("r_sleep_inproc", sleeps, True),
            _v("r_print", prints, False), _v("r_print_inproc", prints, True),
            _v("r_oom", ooms, False), _v("r_oom_inproc", ooms, True),
            _v("r_train", for_training, False, budget=0.5)]


@hookimpl
def rlsd_injectors():
    return [InjectorRecord(name="r_poison", fn=poison, columns=("answer",)),
            InjectorRecord(name="r_raise", fn=raises), InjectorRecord(name="r_wrong_type", fn=wrong_type)]


@hookimpl
def rlsd_schedulers():
    return [SchedulerRecord(name="r_nan", fn=nan_scheduler)]


def install(site: Path) -> Path:
    """This module and a dist-info with its entry point, in `site`; returns `site`."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{DIST}.py").write_text(Path(__file__).read_text())
    dist = site / f"{DIST}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlsd-reliability-test-plugin\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[rlsd]\nreliability_test = {DIST}\n")
    return site
