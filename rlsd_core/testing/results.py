"""One property of one plugin record, checked: the unit every battery reports.

A battery runs its properties one by one through `Battery.check`; a property function returns
(optionally a note for the table) when it holds, and calls `fail(reason)` or `skip(reason)`
otherwise. Anything else a property raises is a failure too, reported with the exception's
type, so that one broken plugin never stops the battery or hides the other properties.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


class PropertyFailed(Exception):
    """Raised by `fail`: the property does not hold; the message says why and what to fix."""


class PropertySkipped(Exception):
    """Raised by `skip`: the property cannot be checked here (the reason says why)."""


def fail(reason: str) -> None:
    raise PropertyFailed(reason)


def skip(reason: str) -> None:
    raise PropertySkipped(reason)


@dataclass(frozen=True)
class CheckResult:
    """kind and name of the record, the property, its status (pass | fail | skip), why."""

    kind: str
    name: str
    prop: str
    status: str
    reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "property": self.prop,
                "status": self.status, "reason": self.reason, "seconds": round(self.seconds, 3)}


def short(value: object, limit: int = 80) -> str:
    """repr() of a value cut for a one-line reason."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a plugin's object may not even repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Battery:
    """Collects the results of one record's properties, in order."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.results: list[CheckResult] = []

    def check(self, prop: str, fn: Callable[[], str | None]) -> CheckResult:
        started = time.perf_counter()
        try:
            note = fn()
            status, reason = "pass", note or ""
        except PropertyFailed as exc:
            status, reason = "fail", str(exc)
        except PropertySkipped as exc:
            status, reason = "skip", str(exc)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin is a failure too
            status, reason = "fail", f"the check raised {type(exc).__name__}: {short(str(exc), 200)}"
        result = CheckResult(self.kind, self.name, prop, status, reason,
                             time.perf_counter() - started)
        self.results.append(result)
        return result
