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
  rlsd check-teacher ...           is the self-teacher informative? (cli/check_teacher.py)
`python -m rlsd_core.cli ...` is the same command (cli/__main__.py).

Errors: `main` runs every command inside one handler (cli/errors.py): a user's mistake is one or
two lines and exit 2, Ctrl-C or SIGTERM a clean stop and exit 130, a bug a traceback with a
request to report it; `rlsd --debug ...` shows tracebacks for everything.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import signal
import sys
import threading
import warnings

from .. import __version__
from .errors import handled

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each module exposes register(subparsers); listed in the order `rlsd --help` shows them.
COMMAND_MODULES = ("rlsd_core.cli.plugins", "rlsd_core.cli.new_plugin", "rlsd_core.cli.verify",
                   "rlsd_core.cli.train", "rlsd_core.cli.eval", "rlsd_core.cli.check_teacher")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsd", description="RL with verifiable rewards + self-distillation, with reward plugins.")
    parser.add_argument("--version", action="version", version=f"rlsd {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of every error (also RLSD_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the command exists but one of its imports is missing
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():  # `rlsd verify --debug ...` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the Python traceback of every error")
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C: temp files go, workers too


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed (rlsd train --nproc)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    result = [0]
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    if not faulthandler.is_enabled():
        try:  # a segfault in native code (a verifier's C extension) still names where it was
            faulthandler.enable()
        except (ValueError, OSError, AttributeError):
            pass
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        # rlsd's own warnings (a verifier moved to worker processes, ...) in the error style
        if filename.startswith(_PACKAGE_DIR):
            print(f"rlsd {args.command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        with handled(args.command, args.debug, result):
            result[0] = int(args.func(args) or 0)
    finally:
        warnings.showwarning = show
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return result[0]


if __name__ == "__main__":
    sys.exit(main())
