"""Reading JSON-lines files of rows (task files, `rlsd verify` inputs) with errors that name
the file and line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A JSONL file is missing or malformed; the message names the file and the line."""


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line of `path` as a dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise JsonlError(f"{str(p)!r} does not exist or is not a file")
    rows = []
    try:
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise JsonlError(f"{p}:{lineno}: not UTF-8 (byte {exc.start + 1} of the line is "
                                     f"{raw[exc.start:exc.start + 1]!r}); save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line, parse_constant=_no_constant)
                except json.JSONDecodeError as exc:
                    raise JsonlError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                     f"each line must be one JSON object") from None
                except ValueError as exc:
                    raise JsonlError(f"{p}:{lineno}: {exc}") from None
                if not isinstance(row, dict):
                    raise JsonlError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    except OSError as exc:
        raise JsonlError(f"cannot read {str(p)!r}: {exc.strerror}") from None
    return rows


def _no_constant(name: str):
    # Python's json reads NaN and Infinity, which are not JSON: a reward or a gold of NaN would
    # travel on and be written back out as NaN, which other JSON readers reject.
    raise ValueError(f"{name} is not valid JSON (write null or a number)")


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so json.dumps writes valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
