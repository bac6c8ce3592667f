"""One error style for every `rlsd` command: what went wrong, where, and how to fix it.

`main` (cli/__init__.py) runs a command inside `handled`, which turns what escapes into one or
two lines on stderr and an exit status:

  0    done
  1    the machine failed the run (disk full, a file that cannot be written), or a bug: for a
       bug (any exception not listed below) the traceback is printed with a request to report it
  2    the user's input or configuration is wrong (config, task files, options, plugins named,
       checkpoints to resume, model specs, command-line values); nothing was done, or nothing
       was lost
  130  interrupted (Ctrl-C or SIGTERM): the command stopped cleanly; the line says what was kept
  141  the reader of stdout went away (`rlsd verify ... | head`): stop quietly

`--debug` (or RLSD_DEBUG=1) adds the traceback to every error. The user-error classes live in
modules that may be heavy (checkpoints import torch); a class is only looked up when its module
is already imported, since an error of a module never imported cannot have been raised.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from contextlib import contextmanager

# (module, class): exceptions whose message is the whole story for the user (exit 2).
USER_ERRORS = (
    ("rlsd_core.config", "ConfigError"),
    ("rlsd_core.records", "TaskError"),          # incl. data.suites.SuiteError
    ("rlsd_core.records", "OptionsError"),
    ("rlsd_core.records", "RecordError"),
    ("rlsd_core.plugins", "PluginError"),
    ("rlsd_core.plugins", "UnknownNameError"),
    ("rlsd_core.data.jsonl", "JsonlError"),
    ("rlsd_core.models.specs", "ModelSpecError"),
    ("rlsd_core.loop.checkpoint", "CheckpointError"),
    ("rlsd_core.cli.errors", "UsageError"),
)

# OSErrors that are about the user's paths or the machine, not bugs: (errno, what to suggest).
PATH_ERRNOS = {errno.ENOENT: "check the path", errno.ENOTDIR: "check the path",
               errno.EISDIR: "give a file, not a directory",
               errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
               errno.EROFS: "the file system is read-only: choose another place"}
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


class UsageError(ValueError):
    """A command-line value that cannot work (the message names the flag and the fix)."""


class Failed(RuntimeError):
    """The machine failed the command (a full disk): the message says what was kept (exit 1)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with what the command kept (a line for the user)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def user_error_types() -> tuple[type, ...]:
    out = []
    for module, name in USER_ERRORS:
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type):
            out.append(cls)
    return tuple(out)


def full_disk(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def describe_os_error(exc: OSError) -> str:
    where = f" {str(exc.filename)!r}" if exc.filename else ""
    if exc.errno in FULL_ERRNOS:
        return (f"the disk is full{' writing' + where if where else ''} ({exc.strerror}); "
                f"nothing partial was kept: free space and run the command again")
    hint = PATH_ERRNOS.get(exc.errno, "")
    return f"cannot use{where}: {exc.strerror or exc}" + (f" ({hint})" if hint else "")


def _debug() -> bool:
    return os.environ.get("RLSD_DEBUG", "") not in ("", "0")


def _quiet_stdout() -> None:
    """After EPIPE on stdout, point it at /dev/null so that the interpreter's final flush does
    not raise a second time (the Python docs' recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@contextmanager
def handled(command: str, debug: bool, result: list[int]):
    """Run a command's body; on an error print the rlsd line and put the exit status in
    `result[0]` (the body puts its own status there when it returns)."""
    prefix = f"rlsd {command}:" if command else "rlsd:"
    debug = debug or _debug()
    try:
        yield
    except Interrupted as exc:
        _say(f"{prefix} interrupted: {exc.message}", debug)
        result[0] = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say(f"{prefix} interrupted", debug)
        result[0] = EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        result[0] = EXIT_BROKEN_PIPE
    except Failed as exc:
        _say(f"{prefix} {exc}", debug)
        result[0] = EXIT_FAILED
    except user_error_types() as exc:
        _say(f"{prefix} {exc}", debug)
        result[0] = EXIT_USAGE
    except OSError as exc:
        if exc.errno in FULL_ERRNOS or exc.errno in PATH_ERRNOS:
            _say(f"{prefix} {describe_os_error(exc)}", debug)
            result[0] = EXIT_FAILED if exc.errno in FULL_ERRNOS else EXIT_USAGE
        else:
            _bug(prefix)
            result[0] = EXIT_FAILED
    except Exception:  # noqa: BLE001 - a bug: say so, with the traceback
        _bug(prefix)
        result[0] = EXIT_FAILED


def _say(line: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(line, file=sys.stderr)


def _bug(prefix: str) -> None:
    traceback.print_exc()
    exc = sys.exc_info()[1]
    print(f"{prefix} internal error ({type(exc).__name__}). This is a bug in rlsd or in a plugin "
          f"named in the traceback above: please report it with this output.", file=sys.stderr)
