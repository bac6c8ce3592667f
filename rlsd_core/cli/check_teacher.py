"""`rlsd check-teacher [config flags / --suite ...]`: is the self-teacher informative?

Loads the policy exactly as `rlsd train` would with the same flags (the embedded tiny model after
its cached warm-up, a model directory, a checkpoint, SmolLM2, ...) and runs the teacher check of
`rlsd_core.loop.teacher_check` on each task's held-out rows: greedy accuracy with and without the
privileged context, delta = log P_T - log P_S on sampled responses (right vs wrong, AUROC,
answer tokens vs the rest), the evidence-weight clip fractions at the configured eps_w, leakage,
and a verdict per task (informative, uninformative, harmful) with its reason. Prints a table
(stderr when `--json -`), and the JSON with `--json FILE` or `--json -`.

Exit status: 0 when every task is informative, 1 when one is not, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import train as train_cli
from ..data.files import check_writable, write_text_atomic
from .errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=128, metavar="N",
                        help="held-out rows per task for the greedy accuracies (default 128)")
    parser.add_argument("--sample-rows", type=int, default=32, metavar="N",
                        help="rows per task whose rollout.group_size responses are sampled and "
                             "scored by student and teacher (default 32)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
    train_cli.add_arguments(parser)


def _f(x, fmt: str = "+.2f") -> str:
    return "-" if x is None else format(x, fmt)


def report_table(report: dict):
    """A rich table of a report (`TeacherCheckReport.to_dict()`)."""
    from rich.table import Table

    table = Table(title=f"rlsd check-teacher: {report['verdict']}")
    for col in ("task", "greedy acc\nno hint -> hint", "delta right /\nwrong (nats)",
                "AUROC (within\ngroups)", "delta answer\nright / wrong", "delta rest\nright / wrong",
                "clipped at\neps_w", "leakage", "verdict"):
        table.add_column(col, justify="left" if col in ("task", "verdict") else "right")
    for name, t in report["tasks"].items():
        table.add_row(
            f"{name}\n({t['injector']})",
            f"{100 * t['acc_student']:.1f}% -> {100 * t['acc_teacher']:.1f}%\n(+-{100 * t['acc_gain_se']:.1f}, n={t['rows']})",
            f"{_f(t['delta_right'])} / {_f(t['delta_wrong'])}\n({t['right']}/{t['samples']} right)",
            f"{_f(t['auroc'], '.2f')} +- {_f(t['auroc_se'], '.2f')}\n({_f(t['auroc_within'], '.2f')})",
            f"{_f(t['delta_answer_right'])} / {_f(t['delta_answer_wrong'])}",
            f"{_f(t['delta_rest_right'])} / {_f(t['delta_rest_wrong'])}",
            f"{100 * t['clip_frac']:.1f}%\n(eps_w {t['eps_w']:g})",
            f"{t['leakage']}/{t['rows']}", t["verdict"])
    s = report["settings"]
    table.caption = (f"{s['rows']} held-out rows per task greedy; {s['sample_rows']} x "
                     f"{s['group_size']} sampled at T={s['temperature']:g}; {report['seconds']:.1f} s")
    return table


def run_check_teacher(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..plugins import get_plugin_manager

    err = Console(file=sys.stderr, width=max(120, Console(file=sys.stderr).width))
    if getattr(args, "resume", None):
        raise UsageError("--resume does not apply; check a checkpoint with --model.name_or_path "
                         "runs/<run>/checkpoints/step-N --warmup.enabled false")
    if args.rows < 1 or args.sample_rows < 1:
        raise UsageError(f"--rows {args.rows} / --sample-rows {args.sample_rows}: give numbers >= 1")
    pm = get_plugin_manager()
    cfg = train_cli.config_from_args(args, pm)  # every plugin name checked, as for `rlsd train`
    if args.print_config or args.check:
        print(cfg.to_yaml(), end="") if args.print_config else err.print("config OK")
        return 0
    if args.json and args.json != "-":
        check_writable(args.json)  # before the model loads, not after the check
    from transformers.utils import logging as hf_logging

    from ..loop.teacher_check import check_config

    hf_logging.disable_progress_bar()
    report = check_config(cfg, pm, rows=args.rows, sample_rows=args.sample_rows,
                          reporter=train_cli.WarmupProgress(err),
                          on_task=lambda name: err.print(f"checking the teacher on {name} ..."))
    data = report.to_dict()
    out = err if args.json == "-" else Console(width=max(120, Console().width))
    out.print(report_table(data))
    for t in report.tasks:
        out.print(f"{t.task}: [bold]{t.verdict}[/bold]: {t.reason}", highlight=False)
    if args.json == "-":
        print(json.dumps(data, indent=1))
    elif args.json:
        write_text_atomic(args.json, json.dumps(data, indent=1))
    return 0 if report.verdict == "informative" else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-teacher", help="is the self-teacher informative? (accuracy with/without the hint, "
                              "delta on right vs wrong responses, clip fractions, a verdict)",
        description=__doc__, epilog=train_cli.task_fields_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_check_teacher)
