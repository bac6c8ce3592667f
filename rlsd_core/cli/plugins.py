"""`rlsd plugins`: every registered verifier, injector, scheduler, task source and objective,
with the distribution it comes from and the plugin API range it declares; `rlsd plugins check
[NAME...]`: the conformance batteries (rlsd_core.testing) on installed plugins, a table of
pass / fail / skip per property with the reason, exit status 1 when any property fails."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ..hookspecs import API_VERSION
from ..plugins import get_plugin_manager


def _console(**kwargs) -> Console:
    return Console(width=max(120, Console().width), **kwargs)


def run_plugins(args: argparse.Namespace) -> int:
    rows = get_plugin_manager().registry.rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"rlsd plugins (plugin API {API_VERSION})", show_lines=False)
    for col in ("kind", "name", "distribution", "version", "api", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["kind"], r["name"], r["distribution"],
                      f"{r['distribution_version']} (record {r['record_version']})",
                      r["api"] or "-", r["description"])
    _console().print(table)
    return 0


_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def run_check(args: argparse.Namespace) -> int:
    from ..testing import PROPERTIES, NoSuchPluginError, check_installed

    pm = get_plugin_manager()
    err = Console(file=sys.stderr)
    done: list = []

    def progress(result) -> None:
        """One line per record as its battery ends (a battery can take seconds)."""
        done.append(result)
        mine = [r for r in done if (r.kind, r.name) == (result.kind, result.name)]
        if len(mine) == len(PROPERTIES[result.kind]) and not args.json:
            failed = sum(r.status == "fail" for r in mine)
            style = "bold red" if failed else "green"
            err.print(f"  {result.kind} {result.name}: [{style}]{failed} failed[/] of {len(mine)}",
                      highlight=False)

    try:
        results = check_installed(pm, args.names, on_result=progress)
    except NoSuchPluginError as exc:
        print(f"rlsd plugins check: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.status == "fail"]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 1 if failed else 0
    table = Table(title="rlsd plugins check", show_lines=False)
    for col in ("kind", "name", "property", "result", "reason"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.kind, r.name, r.prop, f"[{_STYLE[r.status]}]{r.status}[/]", r.reason)
    out = _console()
    out.print(table)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    records = len({(r.kind, r.name) for r in results})
    out.print(f"{records} record(s), {len(results)} properties: {counts['pass']} passed, "
              f"{counts['fail']} failed, {counts['skip']} skipped", highlight=False)
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("plugins", help="list every registered verifier, injector, scheduler, "
                                              "task source and objective; `check` tests them")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_plugins)
    sub = p.add_subparsers(dest="plugins_command", metavar="{check}")
    check = sub.add_parser(
        "check", help="run the conformance batteries on installed plugins",
        description="Run the conformance batteries (docs/writing-a-plugin.md) on installed "
                    "verifiers, injectors, schedulers and objectives. NAME is a record, plugin "
                    "(entry point) or distribution name; none checks every one. Exit status: 0 "
                    "when no property fails, 1 when one does, 2 when a NAME matches nothing.")
    check.add_argument("names", nargs="*", metavar="NAME", help="what to check (default: all)")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.set_defaults(func=run_check)
