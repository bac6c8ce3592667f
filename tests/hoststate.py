"""Host-state snapshots for the battery: child processes, zombies, open fds, temp entries, RSS.

Temp entries are counted in a private TMPDIR that `private_tmpdir` installs for the test
process and therefore for every worker it spawns (other programs on the machine write to the
shared /tmp too, and must not fail these tests).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import psutil
import pytest


@dataclass(frozen=True)
class HostState:
    children: int
    zombies: int
    fds: int
    tmp: frozenset
    rss: int


def snapshot() -> HostState:
    me = psutil.Process()
    kids = me.children(recursive=True)
    zombies = sum(1 for k in kids if _status(k) == psutil.STATUS_ZOMBIE)
    return HostState(children=len(kids) - zombies, zombies=zombies, fds=me.num_fds(),
                     tmp=frozenset(os.listdir(tempfile.gettempdir())), rss=me.memory_info().rss)


def private_tmpdir(base: str) -> str:
    """Point TMPDIR (this process, its future children and `tempfile`) at `base`."""
    os.environ["TMPDIR"] = base
    tempfile.tempdir = base
    return base


@pytest.fixture(scope="module", autouse=True)
def private_tmp(tmp_path_factory):
    """Module-wide private TMPDIR (import this fixture into a test module to use it)."""
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    private_tmpdir(str(tmp_path_factory.mktemp("host-tmp")))
    yield
    if old_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old_env
    tempfile.tempdir = old_tempdir


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.Error:
        return "gone"


def assert_restored(before: HostState, within: float = 3.0, tmp: bool = True) -> HostState:
    """Wait up to `within` seconds for processes and fds to come back to `before`."""
    end = time.monotonic() + within
    while True:
        now = snapshot()
        ok = (now.children == before.children and now.zombies == 0 and now.fds == before.fds
              and (not tmp or not (now.tmp - before.tmp)))
        if ok or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert now.children == before.children, f"child processes {before.children} -> {now.children}"
    assert now.zombies == 0, f"{now.zombies} zombie children"
    assert now.fds == before.fds, f"open fds {before.fds} -> {now.fds}"
    if tmp:
        assert not (now.tmp - before.tmp), f"new temp entries: {sorted(now.tmp - before.tmp)[:5]}"
    return now
