"""`rlsd plugins`: every registered verifier, injector, scheduler, task source and objective,
with the distribution it comes from."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..plugins import get_plugin_manager


def run_plugins(args: argparse.Namespace) -> int:
    rows = get_plugin_manager().registry.rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="rlsd plugins", show_lines=False)
    for col in ("kind", "name", "distribution", "version", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["kind"], r["name"], r["distribution"],
                      f"{r['distribution_version']} (record {r['record_version']})", r["description"])
    Console(width=max(120, Console().width)).print(table)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("plugins", help="list every registered verifier, injector, scheduler, "
                                              "task source and objective")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_plugins)
