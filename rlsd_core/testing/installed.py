"""Run the batteries on installed plugins: what `rlsd plugins check [NAME...]` does.

A NAME selects records by record name, by plugin (entry-point) name or by distribution name;
no NAME selects every verifier, injector, scheduler and objective. Task sources are not
checked (building their rows can mean reading data files; `rlsd train --check` builds them).
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..plugins import PluginManager, Registered
from .injectors import check_injector
from .objectives import check_objective
from .results import CheckResult
from .schedulers import check_scheduler
from .verifiers import check_verifier

CHECKED_KINDS = ("verifier", "injector", "scheduler", "objective")


class NoSuchPluginError(LookupError):
    """A NAME matches no installed record, plugin or distribution."""


def battery_for(kind: str) -> Callable[..., list[CheckResult]]:
    """The battery function for records of `kind`."""
    batteries = {"verifier": check_verifier, "injector": check_injector,
                 "scheduler": check_scheduler, "objective": check_objective}
    if kind not in batteries:
        raise ValueError(f"no battery for records of kind {kind!r}")
    return batteries[kind]


def select(pm: PluginManager, names: Iterable[str] = ()) -> list[tuple[str, Registered]]:
    """(kind, registered record) pairs for NAMEs (record, plugin or distribution names)."""
    table = pm.registry.by_kind
    every = [(kind, reg) for kind in CHECKED_KINDS for _name, reg in sorted(table[kind].items())]
    names = list(names)
    if not names:
        return every
    out: list[tuple[str, Registered]] = []
    for name in names:
        hits = [(k, r) for k, r in every if name in (r.record.name, r.origin.plugin,
                                                     r.origin.distribution)]
        if not hits:
            known = sorted({r.record.name for _k, r in every})
            raise NoSuchPluginError(
                f"nothing named {name!r} to check: no verifier, injector, scheduler or objective, "
                f"no plugin and no distribution has that name. Checkable records: "
                f"{', '.join(known)}. (Task sources are not checked.)")
        out += [h for h in hits if h not in out]
    return out


def check_installed(pm: PluginManager, names: Iterable[str] = (), *,
                    on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Every selected record's battery, in order; `on_result` sees each result as it comes."""
    results: list[CheckResult] = []
    for kind, reg in select(pm, names):
        for result in battery_for(kind)(reg.record):
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
