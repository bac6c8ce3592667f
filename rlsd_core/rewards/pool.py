"""The process pool behind `VerifierRuntime`: worker interpreters with hard wall-clock deadlines.

Each worker is a fresh interpreter (spawn semantics, started with subprocess) that imports the
verifier once and then scores one sample per message. One dispatcher thread in the parent keeps
every deadline: on expiry the worker's whole process group is SIGKILLed and replaced and the
sample gets `timeout`; a worker that dies gets `crash`. The parent never installs a signal
handler or an alarm. Only primitive values cross the process boundary.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait as _wait_conns
from typing import Any, Mapping

from ..records import VerifierRecord
from ..verdict import Category, Verdict
from .boundary import _safe_str, call_verifier

# How long a worker may take to import the verifier before its start counts as failed.
START_TIMEOUT_S = 120.0
# Consecutive failed starts after which queued samples get verifier_error instead of waiting.
MAX_START_FAILURES = 3
# Samples in flight per worker: the running one plus one waiting in its pipe.
PIPELINE_DEPTH = 2
# The dispatcher never sleeps longer than this, whatever it waits for: a state it failed to
# foresee (a worker lost between two checks) costs at most this long, never a hang.
MAX_WAIT_S = 1.0


# ------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------

def _verdict_to_wire(v: Verdict) -> tuple:
    """Only primitives cross the process boundary (never objects built from untrusted input)."""
    msg = v.message if type(v.message) is str else ""
    ans = v.answer if type(v.answer) is str else None
    if ans is not None and len(ans) > 1000:
        ans = ans[:1000]
    return (float(v.reward), str(v.category.value), msg, ans, v.harness_fault is True)


def _wire_to_verdict(payload: Any) -> Verdict:
    try:
        if len(payload) == 5 and payload[4] is True:  # made by the worker's boundary, not the plugin
            return Verdict.harness(Category(payload[1]), str(payload[2]))
        reward, category, message, answer = payload[:4]
        if type(reward) is not float or type(category) is not str or type(message) is not str:
            raise TypeError("bad field types")
        if answer is not None and type(answer) is not str:
            raise TypeError("bad answer type")
        return Verdict(reward, Category(category), message, answer)
    except Exception as exc:  # noqa: BLE001
        return Verdict.fail(Category.VERIFIER_ERROR, f"worker sent an invalid verdict: {_safe_str(exc)}")


# The worker is a fresh interpreter (spawn semantics) started with subprocess rather than
# multiprocessing: multiprocessing's spawn re-imports the caller's __main__ in every child, which
# re-runs an unguarded training script and fails under `python -` or a notebook. This bootstrap
# uses the standard library only, takes sys.path and the record from the parent, then imports.
# fd 1 is pointed at stderr first: whatever a verifier prints must never reach the parent's
# stdout, which may be the JSONL stream of `rlsd verify`.
_BOOTSTRAP = (
    "import os, sys\n"
    "os.dup2(2, 1)\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "try:\n"
    "    path, blob, options, mem = conn.recv()\n"
    "except (EOFError, OSError):\n"
    "    sys.exit(0)\n"
    "sys.path[:] = path\n"
    "from rlsd_core.rewards.pool import _worker_main\n"
    "_worker_main(conn, blob, options, mem)\n"
)


def _worker_main(conn, record_blob: bytes, options: dict, memory_limit_mb: int | None) -> None:
    """Body of a worker process: SIGINT ignored, own session (set by the parent), one sample per task."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C aimed at the trainer is its business
    if memory_limit_mb:
        try:
            import resource
            limit = int(memory_limit_mb) * 1024 * 1024
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass
    try:
        record = pickle.loads(record_blob)
    except BaseException as exc:  # noqa: BLE001 - report and stop; the parent counts the failure
        try:
            conn.send(("init_error", f"{type(exc).__name__}: {_safe_str(exc)}"))
        except BaseException:  # noqa: BLE001
            pass
        return
    try:
        conn.send(("ready", os.getpid()))
    except OSError:  # the parent closed the pool while this worker started
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        task_id, completion, row = msg
        recycle = False
        try:
            verdict = call_verifier(record, [completion], [row], options)[0]
            payload = _verdict_to_wire(verdict)
            # a fresh interpreter after running out of memory: the heap may be fragmented
            recycle = verdict.category is Category.MEMORY_LIMIT and verdict.harness_fault
        except MemoryError:
            payload = (0.0, Category.MEMORY_LIMIT.value,
                       f"verifier {record.name!r} ran out of memory", None, True)
            recycle = True
        except BaseException as exc:  # noqa: BLE001 - e.g. a Verdict subclass that lies
            payload = (0.0, Category.VERIFIER_ERROR.value,
                       f"verifier {record.name!r} result could not be sent: {_safe_str(exc)}", None)
        try:
            conn.send(("result", task_id, payload))
        except MemoryError:
            return
        except BaseException:  # noqa: BLE001
            return
        if recycle:
            return


# ------------------------------------------------------------------------------------------
# The parent side: a pool of workers driven by one dispatcher thread
# ------------------------------------------------------------------------------------------

class Counters:
    """Thread-safe event counters shared by a runtime and its pool (samples, timeouts, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self, keys) -> dict[str, float]:
        with self._lock:
            return {k: self._counts.get(k, 0) for k in keys}


class _Task:
    __slots__ = ("id", "completion", "row", "future", "running")

    def __init__(self, task_id: int, completion: str, row: Mapping, future: Future) -> None:
        self.id = task_id
        self.completion = completion
        self.row = row
        self.future = future
        self.running = False


class _Worker:
    __slots__ = ("proc", "conn", "pidfd", "ready", "started_at", "tasks", "deadline")

    def __init__(self, proc: subprocess.Popen, conn: Connection, pidfd: int | None) -> None:
        self.proc = proc
        self.conn = conn
        self.pidfd = pidfd  # readable when the process exits, even if a grandchild holds the socket
        self.ready = False
        self.started_at = time.monotonic()
        # Samples sent to this worker, oldest first. The head is running (its deadline is
        # `deadline`); the next one waits in the pipe so that the worker never idles waiting for
        # the parent to be scheduled. Only the head can time out or crash; the rest go back to
        # the queue.
        self.tasks: collections.deque[_Task] = collections.deque()
        self.deadline = math.inf


class _Pool:
    """N worker processes and the dispatcher thread that keeps their deadlines."""

    def __init__(self, record: VerifierRecord, options: dict, workers: int, timeout: float,
                 memory_limit_mb: int | None, counters: Counters) -> None:
        try:
            # the cache key runs in the parent only: the worker needs fn (by reference)
            self._blob = pickle.dumps(dataclasses.replace(record, cache_key=None, startup_check=None))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(
                f"verifier {record.name!r} cannot be sent to a worker process ({exc}); define its "
                f"fn at module level, or declare it in_process=True if it is cheap and safe") from exc
        try:
            pickle.dumps(options)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"options for verifier {record.name!r} cannot be pickled: {exc}") from exc
        self._name = record.name
        self._options = options
        self._n = max(1, int(workers))
        self._timeout = float(timeout)
        self._memory_limit_mb = memory_limit_mb
        self._workers: list[_Worker] = []
        self._queue: collections.deque[_Task] = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self._start_failures = 0
        self._last_start_error = ""
        self._counters = counters
        self._next_id = 0
        self._thread = threading.Thread(target=self._run, name=f"rlsd-verifier-{record.name}",
                                        daemon=True)
        self._thread.start()

    # -- called from any thread ------------------------------------------------------------
    def submit(self, completion: str, row: Mapping) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("the verifier runtime is closed")
            self._next_id += 1
            self._queue.append(_Task(self._next_id, completion, row, fut))
        self._wake()
        return fut

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self._workers) == self._n and all(w.ready for w in self._workers):
                    return True
                if self._start_failures >= MAX_START_FAILURES:
                    return False
            time.sleep(0.01)
        return False

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the dispatcher is awake anyway

    def _bump(self, key: str, n: int = 1) -> None:
        self._counters.bump(key, n)

    # -- the dispatcher thread ---------------------------------------------------------------
    def _spawn(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)  # own process group: a timeout kills all it spawned
        except BaseException:
            parent_sock.close()
            child_sock.close()
            raise
        child_sock.close()
        conn = Connection(parent_sock.detach())
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:
                pidfd = None
        w = _Worker(proc, conn, pidfd)
        with self._lock:
            self._workers.append(w)
        self._bump("workers_started")
        try:
            conn.send((list(sys.path), self._blob, self._options, self._memory_limit_mb))
        except OSError:
            pass  # it died at once: the dispatcher sees it

    def _kill(self, w: _Worker) -> None:
        """SIGKILL the worker's process group, reap it, close its pipe and pidfd."""
        pid = w.proc.pid
        if w.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGKILL)  # the worker and anything it spawned
            except OSError:
                pass
            try:
                w.proc.kill()
            except OSError:
                pass
        try:
            w.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        try:  # members of its process group left behind (a daemonised grandchild)
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        for closer in (w.conn.close, (lambda: os.close(w.pidfd)) if w.pidfd is not None else None):
            if closer is not None:
                try:
                    closer()
                except OSError:
                    pass
        w.pidfd = None
        with self._lock:
            if w in self._workers:
                self._workers.remove(w)

    def _finish(self, task: _Task, verdict: Verdict) -> None:
        if not task.future.done():
            task.future.set_result(verdict)

    def _fail_queue(self, verdict: Verdict) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for t in queued:
            self._finish(t, verdict)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        while True:
            with self._lock:
                closing = self._closing
            if closing:
                return
            # keep N workers (unless starts keep failing)
            while len(self._workers) < self._n and self._start_failures < MAX_START_FAILURES:
                try:
                    self._spawn()
                except Exception as exc:  # noqa: BLE001 - e.g. out of pids or fds
                    self._start_failures += 1
                    self._last_start_error = f"{type(exc).__name__}: {_safe_str(exc)}"
                    break
            if self._start_failures >= MAX_START_FAILURES and not any(w.ready for w in self._workers):
                self._fail_queue(Verdict.fail(
                    Category.VERIFIER_ERROR,
                    f"verifier {self._name!r} worker could not start: {self._last_start_error}"))
            # hand queued samples to ready workers: one each first, then a second in the pipe
            for depth in range(1, PIPELINE_DEPTH + 1):
                for w in list(self._workers):
                    if w.ready and len(w.tasks) < depth and w in self._workers:
                        self._dispatch(w)
            # wait for results, deaths, wake-ups or the nearest deadline; never unbounded, and
            # not at all when a worker was lost during dispatch (it is replaced at the top)
            deadlines = [w.deadline for w in self._workers if w.tasks]
            deadlines += [w.started_at + START_TIMEOUT_S for w in self._workers if not w.ready]
            wait_s = min([MAX_WAIT_S, *(max(0.0, d - time.monotonic()) for d in deadlines)])
            if len(self._workers) < self._n and self._start_failures < MAX_START_FAILURES:
                wait_s = 0.0
            conns = {w.conn: w for w in self._workers}
            sentinels = {w.pidfd: w for w in self._workers if w.pidfd is not None}
            if len(sentinels) < len(self._workers) and wait_s > 0.2:
                wait_s = 0.2  # no pidfd: poll for deaths the pipe does not show
            ready = _wait_conns([self._wake_r, *conns, *sentinels], wait_s)
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 65536)
                except BlockingIOError:
                    pass
            dead: set = set()
            for obj in ready:
                w = conns.get(obj)
                if w is None or w in dead:
                    continue
                try:
                    while w.conn.poll():
                        self._handle(w, w.conn.recv())
                except (EOFError, OSError):
                    dead.add(w)
                except Exception:  # noqa: BLE001 - garbage on the pipe
                    dead.add(w)
            for obj in ready:
                w = sentinels.get(obj)
                if w is not None:
                    # drain whatever it sent before dying, then treat it as dead
                    try:
                        while w.conn.poll():
                            self._handle(w, w.conn.recv())
                    except Exception:  # noqa: BLE001
                        pass
                    dead.add(w)
            for w in self._workers:
                if w.pidfd is None and w not in dead and w.proc.poll() is not None:
                    dead.add(w)
            for w in dead:
                self._on_death(w)
            now = time.monotonic()
            for w in list(self._workers):
                if w in dead:
                    continue
                if w.tasks and now >= w.deadline:
                    task = w.tasks.popleft()
                    self._requeue(w)
                    self._kill(w)
                    self._bump("timeouts")
                    self._finish(task, Verdict.harness(
                        Category.TIMEOUT, f"verifier {self._name!r} exceeded its {self._timeout:g} s deadline"))
                elif not w.ready and now >= w.started_at + START_TIMEOUT_S:
                    self._kill(w)
                    self._start_failures += 1
                    self._last_start_error = f"no ready signal within {START_TIMEOUT_S:g} s"

    def _dispatch(self, w: _Worker) -> None:
        with self._lock:
            task = self._queue.popleft() if self._queue else None
        if task is None:
            return
        if not task.running:
            if not task.future.set_running_or_notify_cancel():
                return
            task.running = True
        try:
            w.conn.send((task.id, task.completion, task.row))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            # pickling happens before anything is written: the worker is fine
            self._finish(task, Verdict.fail(Category.INVALID_INPUT,
                                            f"row cannot be sent to a worker: {_safe_str(exc)}"))
            return
        except Exception:  # noqa: BLE001 - the worker is gone (broken pipe)
            with self._lock:
                self._queue.appendleft(task)
            self._on_death(w)
            return
        if not w.tasks:
            w.deadline = time.monotonic() + self._timeout
        w.tasks.append(task)

    def _requeue(self, w: _Worker) -> None:
        """Samples a worker had not started go back to the front of the queue."""
        with self._lock:
            while w.tasks:
                self._queue.appendleft(w.tasks.pop())

    def _handle(self, w: _Worker, msg: Any) -> None:
        kind = msg[0] if isinstance(msg, tuple) and msg else None
        if kind == "ready":
            w.ready = True
            self._start_failures = 0
        elif kind == "init_error":
            self._start_failures += 1
            self._last_start_error = str(msg[1])[:300]
        elif kind == "result" and w.tasks and len(msg) == 3 and msg[1] == w.tasks[0].id:
            task = w.tasks.popleft()
            # the worker starts the next sample as soon as it has sent this result
            w.deadline = time.monotonic() + self._timeout if w.tasks else math.inf
            self._finish(task, _wire_to_verdict(msg[2]))

    def _on_death(self, w: _Worker) -> None:
        task = w.tasks.popleft() if w.tasks else None
        self._requeue(w)
        self._kill(w)
        code = w.proc.returncode
        if not w.ready:
            self._start_failures += 1
            self._last_start_error = self._last_start_error or f"worker exited with code {code}"
        if task is not None:
            self._bump("crashes")
            how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"exit code {code}"
            self._finish(task, Verdict.harness(Category.CRASH,
                                               f"verifier {self._name!r} worker died ({how})"))

    def _shutdown(self) -> None:
        with self._lock:
            self._closing = True
        self._fail_queue(Verdict.fail(Category.VERIFIER_ERROR, "the verifier runtime was closed"))
        for w in list(self._workers):
            while w.tasks:
                self._finish(w.tasks.popleft(),
                             Verdict.fail(Category.VERIFIER_ERROR, "the verifier runtime was closed"))
            try:
                w.conn.send(None)
            except Exception:  # noqa: BLE001
                pass
        end = time.monotonic() + 2.0
        for w in list(self._workers):
            try:
                w.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._kill(w)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


