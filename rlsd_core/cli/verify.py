"""`rlsd verify`: score a JSONL file of completions with any installed verifier.

Data flow: INPUT.jsonl rows (each `completion` plus the columns the verifier declares) ->
VerifierRuntime (the same runtime the trainer uses) -> OUTPUT.jsonl: every input row plus
`reward`, `category`, `message` and `infra` (True where training would mask the sample), in
input order. Everything that can be checked is checked before anything is scored: the file
(each malformed line named), the verifier and its options, `--workers`, and that OUTPUT can be
written and is not INPUT. OUTPUT is written atomically (rlsd_core.data.files): interrupted
(Ctrl-C, SIGTERM) or out of disk space, the previous OUTPUT stays as it was. Whatever the
verifier prints goes to stderr, never into the JSONL on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..data import JsonlError, json_safe, read_jsonl
from ..data.files import atomic_output
from ..plugins import get_plugin_manager
from ..records import check_options
from ..rewards import VerifierRuntime
from .errors import Interrupted, UsageError

CHUNK = 64  # rows per runtime call: small enough for a live progress bar


class InputFileError(JsonlError):
    pass


def read_rows(path: Path) -> list[dict]:
    rows = read_jsonl(path)
    if not rows:
        raise InputFileError(f"{path}: no rows to score (the file is empty); each line must be a "
                             f"JSON object with a 'completion' field")
    for i, row in enumerate(rows, 1):
        if "completion" not in row:
            raise InputFileError(f"{path}: row {i} has no 'completion' field (the model output to score)")
    return rows


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_workers(workers: int) -> int:
    if workers < 1:
        raise UsageError(f"--workers {workers}: give at least 1 worker process")
    cpus = cpu_count()
    if workers > cpus:
        print(f"rlsd verify: --workers {workers} capped at {cpus}, the number of CPUs this "
              f"process may use", file=sys.stderr)
        return cpus
    return workers


def parse_options(text: str | None, record) -> dict:
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--options is not valid JSON ({exc.msg} at column {exc.colno}); "
                         f"e.g. --options '{{\"ignore_case\": false}}'") from None
    if not isinstance(options, dict):
        raise UsageError("--options must be a JSON object, e.g. '{\"ignore_case\": false}'")
    return check_options(record, options, "--options")


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def stdout_to_stderr():
    """While verifiers run, whatever is written to stdout (print, or raw writes to fd 1 from an
    in-process verifier's native code) goes to stderr: stdout carries only the JSONL."""
    saved = None
    try:
        if sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2:
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(2, 1)
    except (AttributeError, OSError, ValueError):  # stdout is not a real file (a test's capture)
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def score_rows(runtime: VerifierRuntime, rows: list[dict], err: Console) -> list:
    verdicts = []
    with Progress(TextColumn(f"verifying with {runtime.record.name}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("verify", total=len(rows))
        for lo in range(0, len(rows), CHUNK):
            chunk = rows[lo: lo + CHUNK]
            verdicts.extend(runtime.score([r["completion"] for r in chunk], chunk))
            progress.advance(task, len(chunk))
    return verdicts


def write_rows(out, rows: list[dict], verdicts: list) -> None:
    for row, v in zip(rows, verdicts):
        out.write(json.dumps(json_safe({**row, **v.to_dict()}), ensure_ascii=False,
                             allow_nan=False) + "\n")


def summary_table(record_name: str, verdicts: list, elapsed: float) -> Table:
    counts = Counter(v.category.value for v in verdicts)
    table = Table(title=f"{record_name}: {len(verdicts)} rows")
    table.add_column("category")
    table.add_column("count", justify="right")
    for cat, n in counts.most_common():
        table.add_row(cat, str(n))
    return table


def summary_line(verdicts: list, elapsed: float) -> str:
    mean = sum(v.reward for v in verdicts) / len(verdicts)
    infra = sum(v.is_infra for v in verdicts)
    return (f"mean reward {mean:.3f}; infrastructure faults (infra: true, masked in training): "
            f"{infra}; {len(verdicts) / max(elapsed, 1e-9):.1f} rows/s, {elapsed:.2f} s")


def run_verify(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    record = get_plugin_manager().registry.verifier(args.verifier)
    source = Path(args.input)
    rows = read_rows(source)
    options = parse_options(args.options, record)
    workers = check_workers(args.workers)
    target = Path(args.output) if args.output else None
    if target is not None and same_file(source, target):
        raise UsageError(f"-o {args.output!r} is the input file; write the scored rows to another "
                         f"file (they hold every input row plus reward, category and message)")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout {args.timeout}: give a finite number of seconds > 0")
    try:
        runtime = VerifierRuntime(record, options, workers=workers, timeout=args.timeout)
    except Exception as exc:  # noqa: BLE001 - a plugin's start-up check says what to install
        raise UsageError(f"verifier {record.name!r} cannot start: {exc}") from None
    kept = (f"{args.output!r} is unchanged" if target is not None
            else "standard output holds none or part of the rows")
    # The output file is created (hidden) before scoring: a directory that is missing or
    # read-only fails now, not after an hour of scoring.
    sink = atomic_output(target) if target is not None else contextlib.nullcontext(sys.stdout)
    try:
        with runtime, sink as out:
            start = time.perf_counter()
            with stdout_to_stderr():  # in-process verifiers that print
                verdicts = score_rows(runtime, rows, err)
            elapsed = time.perf_counter() - start
            write_rows(out, rows, verdicts)
            out.flush()
    except KeyboardInterrupt:
        raise Interrupted(f"scoring stopped; {kept}") from None
    err.print(summary_table(record.name, verdicts, elapsed))
    print(summary_line(verdicts, elapsed), file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("verify", help="score a JSONL file of completions with a verifier",
                       description="Score every row of INPUT (JSON lines: `completion` plus the "
                                   "columns the verifier needs) and write the rows back with "
                                   "reward, category and message.")
    p.add_argument("input", metavar="INPUT.jsonl")
    p.add_argument("--verifier", required=True, help="a verifier name (see `rlsd plugins`)")
    p.add_argument("-o", "--output", metavar="OUTPUT.jsonl", help="default: standard output")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes (default 2; at most the number of CPUs)")
    p.add_argument("--timeout", type=float, default=None,
                   help="hard deadline per completion in seconds (default: the verifier's budget)")
    p.add_argument("--options", default=None, help='verifier options as JSON, e.g. \'{"ignore_case": false}\'')
    p.set_defaults(func=run_verify)
