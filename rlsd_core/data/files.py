"""Writing output files so that nothing is ever half-written or lost.

`atomic_output(path)` hands out a hidden temporary file beside `path` (same directory, hence the
same file system); when the block ends normally the file is flushed, fsynced and renamed over
`path` in one `os.replace`, and the directory is fsynced. When the block raises anything at all
(a full disk, Ctrl-C, a bug) the temporary file is deleted and `path` is untouched: a reader
sees the previous complete file or the new complete file, never a mixture. A SIGKILL can leave
the hidden `.NAME.*.tmp` file behind; it is never read and may be deleted.

Used by `rlsd verify -o`, `rlsd eval --json`, the run's config.yaml and summary.json.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777  # keep an existing file's permissions
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _temp_beside(path: Path) -> tuple[int, str]:
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def check_writable(path: str | Path) -> None:
    """Raise OSError naming `path` unless a file can be created beside it (nothing is left)."""
    fd, tmp = _temp_beside(Path(path))
    os.close(fd)
    os.unlink(tmp)


@contextmanager
def atomic_output(path: str | Path, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text file that replaces `path` only when the block completes (see the module doc).
    Raises OSError naming `path` if its directory does not exist or cannot be written, before
    the caller has done any work in the block."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "w", encoding=encoding, newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc  # say which file
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as fh:
        fh.write(text)
