"""The `rlsd` command line: the user's entry point to every stage.

Subcommands are small modules of this package that each expose `register(subparsers)`; this file
only wires them together, so a command never grows into the others.
  rlsd --version
  rlsd plugins [--json]            every registered record (cli/plugins.py)
  rlsd plugins check [NAME...]     the conformance batteries on installed plugins
  rlsd new-plugin KIND NAME        a plugin package to start from (cli/new_plugin.py)
  rlsd verify --verifier NAME FILE score JSONL rows with a verifier (cli/verify.py)
  rlsd train ...                   the training loop (cli/train.py)
  rlsd eval CHECKPOINT --suite S   held-out accuracy and pass@k (cli/eval.py)
`python -m rlsd_core.cli ...` is the same command (cli/__main__.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..plugins import PluginError

# Each module exposes register(subparsers); listed in the order `rlsd --help` shows them.
COMMAND_MODULES = ("rlsd_core.cli.plugins", "rlsd_core.cli.new_plugin", "rlsd_core.cli.verify",
                   "rlsd_core.cli.train", "rlsd_core.cli.eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsd", description="RL with verifiable rewards + self-distillation, with reward plugins.")
    parser.add_argument("--version", action="version", version=f"rlsd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
