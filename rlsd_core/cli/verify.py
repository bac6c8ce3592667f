"""`rlsd verify`: score a JSONL file of completions with any installed verifier.

Data flow: INPUT.jsonl rows (each `completion` plus the columns the verifier declares) ->
VerifierRuntime (the same runtime the trainer uses) -> OUTPUT.jsonl: every input row plus
`reward`, `category` and `message`, in input order. A malformed file stops with an error naming
the line before anything is scored; a row that lacks a column is scored `invalid_input`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..data import JsonlError, read_jsonl
from ..plugins import UnknownNameError, get_plugin_manager
from ..rewards import VerifierRuntime

CHUNK = 64  # rows per runtime call: small enough for a live progress bar


class InputFileError(ValueError):
    pass


def read_rows(path: Path) -> list[dict]:
    try:
        rows = read_jsonl(path)
    except JsonlError as exc:
        raise InputFileError(str(exc)) from exc
    for i, row in enumerate(rows, 1):
        if "completion" not in row:
            raise InputFileError(f"{path}: row {i} has no 'completion' field (the model output to score)")
    return rows


def run_verify(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        record = get_plugin_manager().registry.verifier(args.verifier)
    except UnknownNameError as exc:
        err.print(f"[red]rlsd verify:[/red] {exc}")
        return 2
    try:
        rows = read_rows(Path(args.input))
        options = json.loads(args.options) if args.options else {}
        if not isinstance(options, dict):
            raise InputFileError("--options must be a JSON object")
    except (InputFileError, json.JSONDecodeError) as exc:
        err.print(f"[red]rlsd verify:[/red] {exc}")
        return 2

    try:
        runtime = VerifierRuntime(record, options, workers=args.workers, timeout=args.timeout)
    except Exception as exc:  # noqa: BLE001 - a start-up check says what to install
        err.print(f"[red]rlsd verify:[/red] verifier {record.name!r} cannot start: {exc}")
        return 2
    verdicts = []
    start = time.perf_counter()
    with runtime, Progress(
            TextColumn(f"verifying with {record.name}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=err, disable=not err.is_terminal) as progress:
        task = progress.add_task("verify", total=len(rows))
        for lo in range(0, len(rows), CHUNK):
            chunk = rows[lo: lo + CHUNK]
            verdicts.extend(runtime.score([r["completion"] for r in chunk], chunk))
            progress.advance(task, len(chunk))
    elapsed = time.perf_counter() - start

    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for row, v in zip(rows, verdicts):
            out.write(json.dumps({**row, **v.to_dict()}, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()

    counts = Counter(v.category.value for v in verdicts)
    table = Table(title=f"{record.name}: {len(rows)} rows")
    table.add_column("category")
    table.add_column("count", justify="right")
    for cat, n in counts.most_common():
        table.add_row(cat, str(n))
    mean = sum(v.reward for v in verdicts) / len(verdicts) if verdicts else 0.0
    table.caption = (f"mean reward {mean:.3f}\n{len(rows) / max(elapsed, 1e-9):.1f} rows/s, "
                     f"{elapsed:.2f} s")
    err.print(table)
    return 0


def register(sub) -> None:
    p = sub.add_parser("verify", help="score a JSONL file of completions with a verifier",
                       description="Score every row of INPUT (JSON lines: `completion` plus the "
                                   "columns the verifier needs) and write the rows back with "
                                   "reward, category and message.")
    p.add_argument("input", metavar="INPUT.jsonl")
    p.add_argument("--verifier", required=True, help="a verifier name (see `rlsd plugins`)")
    p.add_argument("-o", "--output", metavar="OUTPUT.jsonl", help="default: standard output")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=None,
                   help="hard deadline per completion in seconds (default: the verifier's budget)")
    p.add_argument("--options", default=None, help='verifier options as JSON, e.g. \'{"ignore_case": false}\'')
    p.set_defaults(func=run_verify)
