"""Reading JSON-lines files of rows (task files, `rlsd verify` inputs) with errors that name
the file and line."""

from __future__ import annotations

import json
from pathlib import Path


class JsonlError(ValueError):
    """A JSONL file is missing or malformed; the message names the file and the line."""


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line of `path` as a dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise JsonlError(f"{str(p)!r} does not exist or is not a file")
    rows = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonlError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                 f"each line must be one JSON object") from exc
            if not isinstance(row, dict):
                raise JsonlError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows
