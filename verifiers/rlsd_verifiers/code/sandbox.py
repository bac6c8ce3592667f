"""Run untrusted Python in a bubblewrap sandbox and bring back what the judge saw.

One call of `run_sandboxed` = one sample: one `bwrap` process whose PID 1 is the judge
(harness.py) and whose other processes run the candidate. This module is the host side: it
builds the bubblewrap command line, places the sandbox in its cgroups, feeds the job, enforces
the wall-clock deadline and the output cap, and checks the result's nonce.

What the sandbox covers (bwrap mode, the default):
- Namespaces: user, mount, PID, network, IPC, UTS, cgroup all unshared (`--unshare-all`); no
  network at all (no loopback shared with the host), a PID namespace whose PID 1 is the judge:
  when the judge ends, the kernel kills every process left (double-forked setsid daemons
  included). `--die-with-parent` ties the sandbox to the host process, `--new-session` cuts the
  controlling terminal.
- Files: an empty root made read-only, with read-only binds of only the interpreter, its
  standard library and the shared libraries they need (found with `ldd`); `--dev` (null, zero,
  urandom, ...), read-only; a size-limited tmpfs as the work dir (also $HOME and $TMPDIR). No
  /proc, /sys, /etc, /home, /root, /tmp of the host, no project checkout.
- Identity: uid/gid 65534 inside; when the host runs as root, bwrap itself runs as host uid
  65534 too, so a kernel escape lands as `nobody`. No capabilities. The judge is non-dumpable.
- Environment: cleared (`--clearenv`); only HOME, TMPDIR, PATH and LANG are set.
- Limits: rlimits on every candidate process (address space, CPU seconds, file size, open
  files, processes, no core dumps); a per-sandbox cgroup (pids.max and a memory limit) nested
  under this process's own cgroup where the kernel lets us create one; RLIMIT_NPROC holds
  anyway because the sandbox never runs as host root (the kernel exempts only root from it).
  The host kills the sandbox at the wall-clock deadline and when its output passes the cap.

What it does not cover:
- Kernel exploits (the sandbox shares the host kernel; there is no seccomp filter).
- CPU time stolen from other work while a sample runs within its budget, and memory within its
  limits (tmpfs pages included).
- Side channels (timing, cache) and anything readable in the bound interpreter files.
- Third-party packages: the candidate gets the interpreter's standard library only.

Degraded mode (`mode="degraded"`, explicit opt-in only) runs the same judge as a plain
subprocess with the same rlimits, a cleared environment and a fresh temp dir, as uid 65534 when
the host is root. It has no namespaces: the candidate can read the host's files, reach its
network and leave daemons behind. tests/test_code_verifier.py lists the battery cases it fails.
"""

from __future__ import annotations

import atexit
import base64
import errno
import json
import logging
import math
import os
import secrets
import selectors
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("rlsd.code")

NOBODY = 65534
HARNESS_SOURCE = (Path(__file__).with_name("harness.py")).read_text(encoding="utf-8")
SANDBOX_WORKDIR = "/work"

INSTALL_HELP = (
    "The code verifier runs untrusted code only inside a bubblewrap sandbox. Install bubblewrap "
    "(Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`; Arch: "
    "`pacman -S bubblewrap`) and make sure unprivileged user namespaces are enabled "
    "(`sysctl user.max_user_namespaces` > 0; on older Debian/Ubuntu also "
    "`sysctl -w kernel.unprivileged_userns_clone=1`; in Docker, a seccomp/AppArmor profile may "
    "block them). To run WITHOUT isolation, which is unsafe for untrusted code, pass the "
    "verifier option sandbox='degraded'.")


class SandboxUnavailable(RuntimeError):
    """bubblewrap, user namespaces or a suitable interpreter are missing."""


@dataclass(frozen=True)
class Limits:
    """Budgets of one sample. Times in seconds; sizes as named."""

    test_timeout: float = 3.0
    sample_timeout: float = 10.0
    memory_mb: int = 512          # RLIMIT_AS of each candidate process
    max_processes: int = 32       # processes + threads in the sandbox (cgroup pids.max, RLIMIT_NPROC)
    max_open_files: int = 64
    max_file_mb: int = 16         # RLIMIT_FSIZE
    tmpfs_mb: int = 64            # size of the work dir
    max_output_bytes: int = 1 << 20   # host-side cap on what the sandbox may print
    max_value_bytes: int = 16 << 20   # one serialised return value (function style)

    def validate(self) -> None:
        for name in ("test_timeout", "sample_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 3600):
                raise ValueError(f"code verifier: {name} must be a number of seconds in (0, 3600], got {v!r}")
        for name in ("memory_mb", "max_processes", "max_open_files", "max_file_mb", "tmpfs_mb",
                     "max_output_bytes", "max_value_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"code verifier: {name} must be a positive integer, got {v!r}")
        if self.memory_mb < 64:
            raise ValueError(f"code verifier: memory_mb must be at least 64 (the interpreter needs it), got {self.memory_mb}")
        if self.max_open_files < 16:
            raise ValueError(f"code verifier: max_open_files must be at least 16, got {self.max_open_files}")
        if self.max_processes < 4:
            raise ValueError(f"code verifier: max_processes must be at least 4, got {self.max_processes}")

    def rlimits(self) -> dict[str, int]:
        mib = 1 << 20
        return {
            "RLIMIT_AS": self.memory_mb * mib,
            # Per process; the wall clock is the real budget, this stops a spinning orphan too.
            "RLIMIT_CPU": int(math.ceil(self.sample_timeout)) + 1,
            "RLIMIT_FSIZE": self.max_file_mb * mib,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_NPROC": self.max_processes,
            "RLIMIT_CORE": 0,
        }


@dataclass
class SandboxResult:
    """What came back from one sample.

    tests: the judge's per-test records (see harness.py), or None when the run failed as a whole;
    then `failure` is (category value, message). `log` is the tail of what the sandbox printed.
    """

    tests: list[dict] | None
    failure: tuple[str, str] | None
    log: str
    elapsed: float


# ---------------------------------------------------------------------------------------------
# Interpreter and the files it needs.

@dataclass(frozen=True)
class _Interp:
    path: str                      # real path of the executable
    judge: str                     # harness.py compiled by this interpreter, marshalled, base64
    binds: tuple[str, ...]         # files and dirs bound read-only at the same path
    symlinks: tuple[tuple[str, str], ...]   # (target, link) for /lib -> usr/lib etc.


_INTERP_CACHE: dict[str, _Interp] = {}
_CHECKED: dict[tuple, str] = {}
_LOCK = threading.Lock()


def _readable_by_nobody(path: str) -> bool:
    """Other-readable file whose every parent dir is other-searchable (uid 65534 is 'other')."""
    p = Path(path)
    try:
        if not p.stat().st_mode & stat.S_IROTH:
            return False
        return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)
    except OSError:
        return False


def _canonical(path: str) -> str:
    """The path with its directories resolved but the file name kept (sonames are links)."""
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail)


def _interp_info(python: str) -> _Interp:
    with _LOCK:
        if python in _INTERP_CACHE:
            return _INTERP_CACHE[python]
    exe = shutil.which(python) if not os.path.isabs(python) else python
    if not exe or not os.path.exists(exe):
        raise SandboxUnavailable(f"code verifier: interpreter {python!r} not found. Install Debian's "
                                 f"python3 (`apt-get install python3`) or pass python=/path/to/python3.")
    real = os.path.realpath(exe)
    probe = ("import json, sys, sysconfig; print(json.dumps([sysconfig.get_path('stdlib'), "
             "sysconfig.get_path('platstdlib'), [p for p in sys.path if p.endswith('lib-dynload')]]))")
    try:
        out = subprocess.run([real, "-I", "-S", "-c", probe], capture_output=True, text=True,
                             timeout=30, env={}, check=True).stdout
        stdlib, platstdlib, dynload = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxUnavailable(f"code verifier: cannot query interpreter {real}: {exc}") from None
    dirs = sorted({os.path.realpath(d) for d in [stdlib, platstdlib, *dynload] if d and os.path.isdir(d)})
    # Drop dirs nested in another bound dir.
    dirs = [d for d in dirs if not any(d != o and d.startswith(o + os.sep) for o in dirs)]
    elves = [real] + [str(p) for d in dynload if os.path.isdir(d) for p in sorted(Path(d).glob("*.so"))]
    libs: set[str] = set()
    ldd = shutil.which("ldd")
    if ldd is None:
        raise SandboxUnavailable("code verifier: `ldd` (package libc-bin) is needed to find the "
                                 "interpreter's shared libraries")
    res = subprocess.run([ldd, *elves], capture_output=True, text=True, timeout=60)
    for line in res.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (")[0].strip()
        elif line.startswith("/"):
            target = line.split(" (")[0].strip()
        else:
            continue
        if target.startswith("/") and os.path.exists(target):
            libs.add(_canonical(target))
    compile_judge = ("import marshal, sys; sys.stdout.buffer.write(marshal.dumps(compile("
                     "sys.stdin.buffer.read(), '<rlsd-judge>', 'exec')))")
    try:
        judge = subprocess.run([real, "-I", "-S", "-c", compile_judge], input=HARNESS_SOURCE.encode(),
                               capture_output=True, timeout=60, env={}, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"code verifier: interpreter {real} cannot compile the judge: {exc}") from None
    symlinks = []
    for top in ("/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            symlinks.append((os.readlink(top), top))
    info = _Interp(real, base64.b64encode(judge).decode("ascii"), tuple(sorted({real, *dirs, *libs})), tuple(symlinks))
    with _LOCK:
        _INTERP_CACHE[python] = info
    return info


def _bwrap_argv(bwrap: str, interp: _Interp, limits: Limits) -> list[str]:
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1",
            "--clearenv", "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
            "--cap-drop", "ALL"]
    for target, link in interp.symlinks:
        argv += ["--symlink", target, link]
    for path in interp.binds:
        argv += ["--ro-bind", os.path.realpath(path), path]
    argv += ["--dev", "/dev",
             "--size", str(limits.tmpfs_mb << 20), "--tmpfs", SANDBOX_WORKDIR,
             "--chdir", SANDBOX_WORKDIR,
             "--setenv", "HOME", SANDBOX_WORKDIR, "--setenv", "TMPDIR", SANDBOX_WORKDIR,
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
             "--remount-ro", "/dev", "--remount-ro", "/"]
    return argv


# Compiling the 30 kB judge costs ~15 ms per sample; the marshalled code object loads in ~1 ms.
_BOOTSTRAP = "import marshal, binascii, sys; exec(marshal.loads(binascii.a2b_base64(sys.argv[1])))"


def _python_argv(interp: _Interp, cfg: dict) -> list[str]:
    return [interp.path, "-I", "-S", "-B", "-X", "utf8", "-c", _BOOTSTRAP, interp.judge, json.dumps(cfg)]


def find_bwrap(bwrap: str | None = None) -> str:
    path = shutil.which(bwrap or "bwrap")
    if path is None:
        raise SandboxUnavailable(f"code verifier: bubblewrap (`{bwrap or 'bwrap'}`) is not installed. "
                                 + INSTALL_HELP)
    return path


def check_sandbox(python: str = "/usr/bin/python3", bwrap: str | None = None) -> str:
    """Start-up check: raise SandboxUnavailable with install help unless a sandboxed interpreter
    really starts here. Returns the bwrap path. Cached per process."""
    key = (python, bwrap)
    with _LOCK:
        if key in _CHECKED:
            return _CHECKED[key]
    path = find_bwrap(bwrap)
    exe = os.path.realpath(shutil.which(python) or python)
    if os.geteuid() == 0 and os.path.exists(exe) and not _readable_by_nobody(exe):
        raise SandboxUnavailable(f"code verifier: interpreter {exe} is not readable by uid "
                                 f"{NOBODY}, which runs the sandbox (pyenv's Python under /root is not). "
                                 f"Use Debian's /usr/bin/python3 (`apt-get install python3`) or pass "
                                 f"python=/path/to/a/world-readable/python3.")
    interp = _interp_info(python)
    argv = _bwrap_argv(path, interp, Limits()) + [interp.path, "-I", "-S", "-c", "import sys"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={},
                             preexec_fn=_drop_uid_fn([]) if os.geteuid() == 0 else None)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"code verifier: bubblewrap failed to start: {exc}. " + INSTALL_HELP) from None
    if res.returncode != 0:
        raise SandboxUnavailable(f"code verifier: bubblewrap cannot create a sandbox here "
                                 f"(exit {res.returncode}: {res.stderr.strip()[:300]!r}). " + INSTALL_HELP)
    with _LOCK:
        _CHECKED[key] = path
    return path


# ---------------------------------------------------------------------------------------------
# cgroups: one per sample, nested under this process's own cgroup, so the sandbox's processes
# and memory stay accounted to whoever runs rlsd.

class _Cgroups:
    def __init__(self) -> None:
        self.kind: str | None = None
        self.bases: dict[str, str] = {}
        self._n = 0
        self._pending: list[str] = []
        self._lock = threading.Lock()
        try:
            self._detect()
        except OSError:
            self.kind, self.bases = None, {}
        self._sweep_stale()

    def _sweep_stale(self) -> None:
        """Remove empty sample cgroups left by rlsd processes that died without cleaning up
        (a SIGKILLed worker, for one): their names carry the dead process's pid."""
        for base in self.bases.values():
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in names:
                parts = name.split("-")
                if len(parts) != 3 or parts[0] != "rlsd" or not parts[1].isdigit():
                    continue
                pid = int(parts[1])
                if pid == os.getpid():
                    continue
                try:
                    os.kill(pid, 0)
                    continue  # its owner is alive (or the pid was reused): not ours to remove
                except ProcessLookupError:
                    pass
                except OSError:
                    continue
                try:
                    os.rmdir(os.path.join(base, name))
                except OSError:
                    pass

    def _detect(self) -> None:
        v1: dict[str, str] = {}
        v2: str | None = None
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, ctrls, path = line.split(":", 2)
            if hid == "0" and ctrls == "":
                v2 = path
            for c in ctrls.split(","):
                if c:
                    v1[c] = path
        if "pids" in v1:
            bases = {}
            for ctrl, probe in (("pids", "pids.max"), ("memory", "memory.limit_in_bytes")):
                base = f"/sys/fs/cgroup/{ctrl}{v1.get(ctrl, '')}".rstrip("/") if ctrl in v1 else None
                if base and self._probe(base, probe):
                    bases[ctrl] = base
            if "pids" in bases:
                self.kind, self.bases = "v1", bases
                return
        if v2 is not None:
            for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                if os.path.exists(os.path.join(mount, "cgroup.controllers")):
                    base = (mount + v2).rstrip("/")
                    if self._probe(base, "pids.max"):
                        self.kind, self.bases = "v2", {"unified": base}
                    return

    def _probe(self, base: str, probe_file: str) -> bool:
        d = os.path.join(base, f"rlsd-probe-{os.getpid()}")
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        except OSError:
            return False
        try:
            return os.path.exists(os.path.join(d, probe_file))
        finally:
            try:
                os.rmdir(d)
            except OSError:
                pass

    @property
    def available(self) -> bool:
        return self.kind is not None

    def create(self, limits: Limits) -> list[str]:
        with self._lock:
            self._retry_pending()
            self._n += 1
            name = f"rlsd-{os.getpid()}-{self._n}"
        mem = (limits.memory_mb + limits.tmpfs_mb + 64) << 20
        dirs = []
        try:
            for ctrl, base in self.bases.items():
                d = os.path.join(base, name)
                os.mkdir(d)
                dirs.append(d)
                if ctrl in ("pids", "unified"):
                    _write(os.path.join(d, "pids.max"), str(limits.max_processes))
                if ctrl == "memory":
                    _write(os.path.join(d, "memory.limit_in_bytes"), str(mem))
                if ctrl == "unified" and os.path.exists(os.path.join(d, "memory.max")):
                    _write(os.path.join(d, "memory.max"), str(mem))
                    if os.path.exists(os.path.join(d, "memory.swap.max")):
                        _write(os.path.join(d, "memory.swap.max"), "0")
        except OSError:
            self.release(dirs)
            raise
        return dirs

    def oom_killed(self, dirs: list[str]) -> bool:
        for d in dirs:
            for fname in ("memory.oom_control", "memory.events"):
                try:
                    text = Path(d, fname).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    k, _, v = line.partition(" ")
                    if k == "oom_kill" and v.strip() not in ("", "0"):
                        return True
        return False

    def release(self, dirs: list[str]) -> None:
        for d in dirs:
            if not self._rmdir(d):
                with self._lock:
                    self._pending.append(d)

    def _rmdir(self, d: str) -> bool:
        # SIGKILLed processes leave the cgroup a moment after bwrap is reaped.
        for _ in range(50):
            try:
                os.rmdir(d)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return False
                time.sleep(0.002)
        return False

    def flush(self, wait_s: float = 2.0) -> None:
        """At exit: give the dying sandboxes' processes time to leave, then remove their
        cgroups."""
        end = time.monotonic() + wait_s
        while True:
            with self._lock:
                self._retry_pending()
                if not self._pending:
                    return
            if time.monotonic() > end:
                return
            time.sleep(0.01)

    def _retry_pending(self) -> None:
        pending, self._pending = self._pending, []
        for d in pending:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                self._pending.append(d)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


_CGROUPS: _Cgroups | None = None


def cgroups() -> _Cgroups:
    global _CGROUPS
    with _LOCK:
        if _CGROUPS is None:
            _CGROUPS = _Cgroups()
        return _CGROUPS


def _drop_uid_fn(procs_files: list[str]):
    """preexec_fn for the bwrap child: join the sample's cgroups, then, on a root host, become
    uid 65534. Only raw os calls: it runs between fork and exec."""
    drop = os.geteuid() == 0

    def fn() -> None:
        for p in procs_files:
            fd = os.open(p, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
        if drop:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)

    return fn


# ---------------------------------------------------------------------------------------------
# Running one sample.

_WARNED = False


def _warn_degraded() -> None:
    global _WARNED
    if _WARNED:
        return
    _WARNED = True
    msg = ("!!! rlsd code verifier in DEGRADED mode: untrusted code runs as a plain subprocess "
           "with rlimits only. It can read your files, reach your network and leave processes "
           "behind. Use it only for code you trust. " + INSTALL_HELP)
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


@dataclass
class _Sandbox:
    """One started sandbox, used for exactly one sample."""

    key: tuple
    mode: str
    proc: subprocess.Popen
    job_w: int
    res_r: int
    log_r: int
    nonce: str
    cg_dirs: list[str]
    tmpdir: str | None
    started: float
    info_r: int = -1   # bwrap --info-fd: {"child-pid": <host pid of the judge>}

    def kill(self) -> None:
        """Kill the judge (PID 1 of the sandbox: the kernel then kills everything in it), so
        that bwrap reaps it and exits; killing bwrap first would orphan the judge to the host's
        init as a zombie. Falls back to killing bwrap."""
        pid = None
        if self.info_r >= 0:
            try:
                os.set_blocking(self.info_r, False)
                info = json.loads(os.read(self.info_r, 4096) or b"{}")
                pid = info.get("child-pid") if isinstance(info, dict) else None
            except (OSError, ValueError):
                pid = None
        try:
            if isinstance(pid, int) and pid > 1 and self.proc.poll() is None:
                os.kill(pid, 9)
                return
        except OSError:
            pass
        self.proc.kill()

    def close_fds(self) -> None:
        for name in ("job_w", "res_r", "log_r", "info_r"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)


# Per process: at most one pre-started spare (bwrap + judge booted, blocked on reading its job)
# and the sandboxes whose judge has reported but whose namespace is still being torn down.
# A spare never saw a sample: pre-starting hides start-up latency without sharing any state.
_SPARE: _Sandbox | None = None
_FINISHING: list[_Sandbox] = []
_RUN_LOCK = threading.Lock()


def _start(key: tuple, style: str, limits: Limits, mode: str, python: str, bwrap: str | None) -> _Sandbox:
    interp = _interp_info(python)
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    nonce_r, nonce_w = os.pipe()
    log_r, log_w = os.pipe()
    info_r, info_w = os.pipe()
    nonce = secrets.token_hex(16)
    cfg = {"style": style, "sample_timeout": limits.sample_timeout, "rlimits": limits.rlimits(),
           "max_value_bytes": limits.max_value_bytes, "max_test_output": limits.max_output_bytes,
           "fds": [job_r, res_w, nonce_r]}
    tmpdir = None
    cg_dirs: list[str] = []
    ok = False
    try:
        os.write(nonce_w, nonce.encode())
        os.close(nonce_w)
        nonce_w = -1
        if mode == "bwrap":
            argv = (_bwrap_argv(check_sandbox(python, bwrap), interp, limits)
                    + ["--info-fd", str(info_w)] + _python_argv(interp, cfg))
            cg = cgroups()
            if cg.available:
                try:
                    cg_dirs = cg.create(limits)
                except OSError as exc:  # cgroup fs full or gone: the rlimits still hold
                    log.debug("code verifier: no cgroup for this sample: %s", exc)
            procs = [os.path.join(d, "cgroup.procs") for d in cg_dirs]
            preexec = _drop_uid_fn(procs) if (procs or os.geteuid() == 0) else None
            env: dict[str, str] = {}
            cwd = None
        else:
            tmpdir = tempfile.mkdtemp(prefix="rlsd-code-")
            if os.geteuid() == 0:
                os.chown(tmpdir, NOBODY, NOBODY)
            argv = _python_argv(interp, cfg)
            preexec = _drop_uid_fn([]) if os.geteuid() == 0 else None
            env = {"HOME": tmpdir, "TMPDIR": tmpdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            cwd = tmpdir
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_w, stderr=log_w, env=env,
                                cwd=cwd, pass_fds=(job_r, res_w, nonce_r, info_w), start_new_session=True,
                                preexec_fn=preexec, close_fds=True)
        ok = True
    finally:
        for fd in (job_r, res_w, nonce_r, log_w, nonce_w, info_w):
            if fd >= 0:
                os.close(fd)
        if not ok:
            for fd in (job_w, res_r, log_r, info_r):
                os.close(fd)
            if cg_dirs:
                cgroups().release(cg_dirs)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
    return _Sandbox(key, mode, proc, job_w, res_r, log_r, nonce, cg_dirs, tmpdir, time.monotonic(), info_r)


def _discard(sb: _Sandbox) -> None:
    """Retire a sandbox that will never get a job: closing its job pipe makes the judge exit on
    its own, so bwrap reaps it (killing bwrap instead would orphan the judge to the host's
    init as a zombie). Call with _RUN_LOCK held."""
    if sb.job_w >= 0:
        os.close(sb.job_w)
        sb.job_w = -1
    _FINISHING.append(sb)


def _cleanup(sb: _Sandbox, wait: bool) -> bool:
    """Release what a finished sandbox holds; False if it is still being torn down."""
    if sb.proc.poll() is None:
        if not wait:
            return False
        try:
            sb.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sb.kill()
            try:
                sb.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                sb.proc.kill()
                sb.proc.wait()
    sb.close_fds()
    if sb.mode == "degraded":
        # No PID namespace: kill what is left in the judge's process group at least.
        try:
            os.killpg(sb.proc.pid, 9)
        except OSError:
            pass
    if sb.cg_dirs:
        cgroups().release(sb.cg_dirs)
    if sb.tmpdir is not None:
        shutil.rmtree(sb.tmpdir, ignore_errors=True)
    return True


def _reap_finishing(wait: bool = False) -> None:
    global _FINISHING
    _FINISHING = [sb for sb in _FINISHING if not _cleanup(sb, wait)]


def drain() -> None:
    """Kill the pre-started spare and wait for every sandbox of this process to be gone."""
    global _SPARE
    with _RUN_LOCK:
        if _SPARE is not None:
            _discard(_SPARE)
            _SPARE = None
        _reap_finishing(wait=True)
    if _CGROUPS is not None:
        _CGROUPS.flush()


atexit.register(drain)


def run_sandboxed(style: str, job: dict[str, Any], limits: Limits, *, mode: str = "bwrap",
                  python: str = "/usr/bin/python3", bwrap: str | None = None,
                  prestart: bool = True) -> SandboxResult:
    """Run one sample's job in a fresh sandbox. Never raises for anything the candidate does;
    raises SandboxUnavailable when the sandbox cannot exist here.

    prestart: boot the next sample's sandbox now, in the background (bwrap mode only)."""
    global _SPARE
    # `--die-with-parent` is PR_SET_PDEATHSIG, which fires when the *thread* that started bwrap
    # exits: a spare started from a short-lived thread dies with it and the next sample got
    # sandbox_error (exit -9). Only the main thread, which lives as long as the process, keeps
    # a spare.
    prestart = prestart and threading.current_thread() is threading.main_thread()
    if mode == "bwrap":
        check_sandbox(python, bwrap)
    elif mode == "degraded":
        _warn_degraded()
        prestart = False
    else:
        raise ValueError(f"code verifier: sandbox must be 'bwrap' or 'degraded', got {mode!r}")
    key = (style, limits, mode, python, bwrap)
    with _RUN_LOCK:
        _reap_finishing()
        sb, _SPARE = _SPARE, None
        if sb is not None and (sb.key != key or sb.proc.poll() is not None):
            _discard(sb)
            sb = None
    try:
        if sb is None:
            sb = _start(key, style, limits, mode, python, bwrap)
        if prestart:
            spare = _start(key, style, limits, mode, python, bwrap)
            with _RUN_LOCK:
                if _SPARE is None:
                    _SPARE, spare = spare, None
            if spare is not None:  # another thread was faster
                with _RUN_LOCK:
                    _discard(spare)
    except OSError as exc:
        if sb is not None:
            with _RUN_LOCK:
                _discard(sb)
        return SandboxResult(None, ("sandbox_error", f"could not start the sandbox: {exc}"), "", 0.0)
    t0 = time.monotonic()
    try:
        result, log_tail, reason = _drive(sb, json.dumps(job).encode(), t0 + limits.sample_timeout + 1.0, limits)
        oom = cgroups().oom_killed(sb.cg_dirs) if sb.cg_dirs else False
    finally:
        with _RUN_LOCK:
            if not _cleanup(sb, wait=mode == "degraded"):
                _FINISHING.append(sb)
    return _interpret(result, log_tail, reason, oom, sb, limits, time.monotonic() - t0)


def _interpret(result: bytes, log_tail: bytes, reason: str | None, oom: bool, sb: _Sandbox,
               limits: Limits, elapsed: float) -> SandboxResult:
    log_text = log_tail.decode("utf-8", "replace")
    if reason == "timeout":
        return SandboxResult(None, ("timeout", f"killed at the sample's wall-clock deadline "
                                    f"({limits.sample_timeout:g} s)"), log_text, elapsed)
    if reason == "output_limit":
        return SandboxResult(None, ("output_limit", f"the program printed more than "
                                    f"{limits.max_output_bytes} bytes"), log_text, elapsed)
    if not result.startswith(b"R"):
        return SandboxResult(None, ("sandbox_error", "the sandbox did not start: "
                                    + log_text.strip()[-300:]), log_text, elapsed)
    try:
        out = json.loads(result[1:])
    except ValueError:
        if oom:
            return SandboxResult(None, ("memory_limit", "the sandbox ran out of memory"), log_text, elapsed)
        return SandboxResult(None, ("sandbox_error", "the judge ended without a result (exit "
                                    f"{sb.proc.returncode}): " + log_text.strip()[-300:]), log_text, elapsed)
    if not isinstance(out, dict) or out.get("nonce") != sb.nonce:
        return SandboxResult(None, ("sandbox_error", "the result failed its integrity check"), log_text, elapsed)
    if "harness_error" in out:
        return SandboxResult(None, ("sandbox_error", "judge error: " + str(out["harness_error"])[:400]),
                             log_text, elapsed)
    tests = out.get("tests")
    if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
        return SandboxResult(None, ("sandbox_error", "malformed result from the judge"), log_text, elapsed)
    if oom:
        for t in tests:
            if t.get("status") == "crash" and "SIGKILL" in str(t.get("message")):
                t["status"], t["message"] = "memory_limit", "killed: the sandbox ran out of memory"
    return SandboxResult(tests, None, log_text, elapsed)


def _drive(sb: _Sandbox, job_bytes: bytes, deadline: float, limits: Limits) -> tuple[bytes, bytes, str | None]:
    """Feed the job, collect the result and a capped log, until the result is complete or a
    limit is hit (then the sandbox is killed). Returns (result bytes, log tail, reason or None)."""
    result = bytearray()
    log_buf = bytearray()
    log_total = 0
    # Each test may bring back up to max_output_bytes of stdout; leave room for the framing.
    result_cap = limits.max_output_bytes * 64 + (8 << 20)
    reason = None
    sel = selectors.DefaultSelector()
    os.set_blocking(sb.job_w, False)
    view = memoryview(job_bytes)
    sel.register(sb.job_w, selectors.EVENT_WRITE, "job")
    sel.register(sb.res_r, selectors.EVENT_READ, "res")
    sel.register(sb.log_r, selectors.EVENT_READ, "log")
    open_reads = {"res", "log"}
    try:
        while "res" in open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(min(left, 0.5)):
                if key.data == "job":
                    try:
                        n = os.write(sb.job_w, view[:1 << 16])
                    except BlockingIOError:
                        continue
                    except OSError:  # the judge is gone; the result will say why
                        n = len(view)
                    view = view[n:]
                    if not view:
                        sel.unregister(sb.job_w)
                        os.close(sb.job_w)
                        sb.job_w = -1
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    open_reads.discard(key.data)
                    continue
                if key.data == "res":
                    result += chunk
                    if len(result) > result_cap:
                        reason = "output_limit"
                else:
                    log_total += len(chunk)
                    log_buf += chunk
                    del log_buf[:-4096]
                    if log_total > limits.max_output_bytes:
                        reason = "output_limit"
            if reason:
                break
        if reason is None and "log" in open_reads:
            # The result is complete; take what the program printed up to now, without waiting.
            os.set_blocking(sb.log_r, False)
            try:
                while len(log_buf) < 8192:
                    chunk = os.read(sb.log_r, 1 << 16)
                    if not chunk:
                        break
                    log_buf += chunk
            except BlockingIOError:
                pass
            del log_buf[:-4096]
    finally:
        sel.close()
        if reason is not None:
            sb.kill()
    return bytes(result), bytes(log_buf), reason
