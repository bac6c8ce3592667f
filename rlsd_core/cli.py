"""The `rlsd` command line: the user's entry point to every stage.

Subcommands are small modules that each expose `register(subparsers)`; this file only wires
them together, so a command never grows into the others.
  rlsd --version
  rlsd plugins [--json]            every registered record (kind, name, distribution, version)
  rlsd verify --verifier NAME FILE score JSONL rows with a verifier (rlsd_core.verify_cmd)
  rlsd train ...                   the training loop (rlsd_core.cli_train)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from rich.console import Console
from rich.table import Table

from . import __version__
from .plugins import PluginError, get_plugin_manager

# Each module exposes register(subparsers); listed in the order `rlsd --help` shows them.
COMMAND_MODULES = ("rlsd_core.verify_cmd", "rlsd_core.cli_train", "rlsd_core.cli_eval")


def _plugins(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsd", description="RL with verifiable rewards + self-distillation, with reward plugins.")
    parser.add_argument("--version", action="version", version=f"rlsd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("plugins", help="list every registered verifier, injector, scheduler and task source")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_plugins)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the command exists but one of its imports is missing
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PluginError as exc:
        print(f"rlsd: plugin error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
