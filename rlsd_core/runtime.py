"""The verifier runtime: the only way rlsd calls a verifier, built-in or third-party.

Data flow: rollouts (completions) + dataset rows -> VerifierRuntime.score -> one Verdict per
completion, in order. The runtime owns everything that must not be left to each plugin:

1. input hygiene in the parent, before any parser: non-str is `invalid_input`, declared columns
   must be present, the text is capped keeping its tail and normalised (rlsd_core.textnorm);
2. a reward cache keyed by (verifier name and version, options, gold columns, the record's
   normalised extracted answer), so that the samples of a group that reach the same final answer
   are verified once;
3. a pool of worker processes (fresh interpreters, i.e. spawn semantics, reused across calls)
   with a hard wall-clock deadline per sample enforced from the parent: on expiry the worker's
   whole process group is SIGKILLed and replaced and the sample gets `timeout`; a worker that
   dies gets `crash`;
4. BaseException caught at the plugin boundary (`verifier_error`) and validation of what comes
   back (a finite reward in [0, 1], one per sample; anything else is `verifier_error`, never
   broadcast, never NaN). Only primitive values cross the process boundary.

The parent never installs a signal handler or an alarm: deadlines are kept by one dispatcher
thread that waits on pipes with a timeout, so `score` works from any thread and `ascore` from
asyncio, and the caller's own alarms are left alone. Records that declare `in_process=True`
(cheap, safe verifiers such as exact_match) are called directly: no pool, no processes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait as _wait_conns
from typing import Any, Mapping, Sequence

from .records import VerifierRecord
from .textnorm import DEFAULT_MAX_CHARS, keep_tail, normalize_text
from .verdict import Category, Verdict

# Verdicts that depend only on (gold, answer) and may be cached. Timeouts, crashes and
# infrastructure faults depend on the machine's load and state: never cached.
CACHEABLE_CATEGORIES = frozenset({
    Category.OK, Category.WRONG_ANSWER, Category.NO_ANSWER, Category.PARSE_ERROR,
    Category.GOLD_ERROR, Category.INVALID_INPUT, Category.INPUT_TOO_LARGE,
})

# A sandboxed (code) verifier gets the source unchanged: NFKC or tail-cutting would change what
# the program means. It is only type-checked and rejected above this many characters.
DEFAULT_MAX_CODE_CHARS = 1_000_000
DEFAULT_CACHE_SIZE = 100_000
# How long a worker may take to import the verifier before its start counts as failed.
START_TIMEOUT_S = 120.0
# Consecutive failed starts after which queued samples get verifier_error instead of waiting.
MAX_START_FAILURES = 3
# Samples in flight per worker: the running one plus one waiting in its pipe.
PIPELINE_DEPTH = 2


# ------------------------------------------------------------------------------------------
# Per-sample checks shared by every mode
# ------------------------------------------------------------------------------------------

def coerce_result(value: Any) -> Verdict:
    """Turn what a plugin returned for one sample into a Verdict, or a verifier_error verdict."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and 0.0 <= value <= 1.0:
            return Verdict(float(value), Category.OK if value == 1.0 else Category.WRONG_ANSWER)
        return Verdict.fail(Category.VERIFIER_ERROR, f"verifier returned reward {value!r}, outside [0, 1]")
    return Verdict.fail(Category.VERIFIER_ERROR,
                        f"verifier returned {type(value).__name__}, expected a Verdict or a float")


def missing_columns(record: VerifierRecord, row: Any) -> Verdict | None:
    if not isinstance(row, Mapping):
        return Verdict.fail(Category.INVALID_INPUT, f"row must be a mapping, got {type(row).__name__}")
    missing = [c for c in record.columns if c not in row]
    if missing:
        return Verdict.fail(Category.INVALID_INPUT,
                            f"row is missing column(s) {missing} that verifier {record.name!r} needs")
    return None


def call_verifier(record: VerifierRecord, completions: Sequence[Any], rows: Sequence[Mapping],
                  options: Mapping[str, Any]) -> list[Verdict]:
    """Call a verifier on a batch in this process, guarding the plugin boundary."""
    try:
        produced = record.fn(list(completions), list(rows), **options)
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a plugin too
        msg = f"verifier {record.name!r} raised {type(exc).__name__}: {_safe_str(exc)}"
        return [Verdict.fail(Category.VERIFIER_ERROR, msg)] * len(completions)
    try:
        produced = list(produced)
    except BaseException as exc:  # noqa: BLE001
        return [Verdict.fail(Category.VERIFIER_ERROR,
                             f"verifier {record.name!r} returned a non-iterable: {_safe_str(exc)}")] * len(completions)
    if len(produced) != len(completions):
        msg = (f"verifier {record.name!r} returned {len(produced)} results for "
               f"{len(completions)} completions")
        return [Verdict.fail(Category.VERIFIER_ERROR, msg)] * len(completions)
    return [coerce_result(v) for v in produced]


def _safe_str(exc: BaseException, limit: int = 200) -> str:
    """str() of an exception raised by plugin code, which may itself raise or be huge."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001
        return "<unprintable>"
    if type(text) is not str:
        return "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_tail(value: Any, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, Verdict | None]:
    """Input hygiene for answer-bearing text (the documented policy, docs/verifiers.md).

    Non-str -> invalid_input. Longer than `max_chars` -> keep the tail only (final answers sit
    at the end) and drop the partial token the cut went through (up to the first whitespace,
    backslash, '$' or '<'); a tail with no such boundary at all (1 MB of digits) cannot hold an
    answer that the cut did not damage -> input_too_large. Then
    rlsd_core.textnorm.normalize_text: NFKC, zero-width and bidi controls removed, minus-like
    dashes become '-'. Costs O(max_chars), whatever the input size.
    """
    if not isinstance(value, str):
        return None, Verdict.fail(Category.INVALID_INPUT,
                                  f"completion must be a str, got {type(value).__name__}")
    if len(value) <= max_chars:
        text = normalize_text(value)
        return keep_tail(text, max_chars), None
    tail = value[-max_chars:]
    cut = _first_boundary(tail)
    if cut < 0:
        return None, Verdict.fail(
            Category.INPUT_TOO_LARGE,
            f"completion is {len(value)} characters and its last {max_chars} hold no complete token")
    text = normalize_text(tail[cut:])
    return keep_tail(text, max_chars), None


def _first_boundary(text: str) -> int:
    """Where the first whole token of a cut text starts: just past the first whitespace, or at
    the first backslash, '$' or '<' (a LaTeX command, formula or tag begins there); -1 if none.
    C-speed scans, no allocation."""
    best = -1
    for ch in (" ", "\n", "\t", "\r"):
        i = text.find(ch)
        if i >= 0 and (best < 0 or i + 1 < best):
            best = i + 1
    for ch in ("\\", "$", "<"):
        i = text.find(ch, 1)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


# ------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------

def _verdict_to_wire(v: Verdict) -> tuple:
    """Only primitives cross the process boundary (never objects built from untrusted input)."""
    msg = v.message if type(v.message) is str else ""
    ans = v.answer if type(v.answer) is str else None
    if ans is not None and len(ans) > 1000:
        ans = ans[:1000]
    return (float(v.reward), str(v.category.value), msg, ans)


def _wire_to_verdict(payload: Any) -> Verdict:
    try:
        reward, category, message, answer = payload
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
_BOOTSTRAP = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "path, blob, options, mem = conn.recv()\n"
    "sys.path[:] = path\n"
    "from rlsd_core.runtime import _worker_main\n"
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
    conn.send(("ready", os.getpid()))
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
        except MemoryError:
            payload = (0.0, Category.MEMORY_LIMIT.value, "verifier ran out of memory", None)
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
                 memory_limit_mb: int | None, stats: dict, stats_lock: threading.Lock) -> None:
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
        self._stats = stats
        self._stats_lock = stats_lock
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
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + n

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
            # wait for results, deaths, wake-ups or the nearest deadline
            deadlines = [w.deadline for w in self._workers if w.tasks]
            deadlines += [w.started_at + START_TIMEOUT_S for w in self._workers if not w.ready]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            conns = {w.conn: w for w in self._workers}
            sentinels = {w.pidfd: w for w in self._workers if w.pidfd is not None}
            if len(sentinels) < len(self._workers) and (wait_s is None or wait_s > 0.2):
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
                    self._finish(task, Verdict.fail(
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
            self._finish(task, Verdict.fail(Category.CRASH,
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


# ------------------------------------------------------------------------------------------
# The public runtime
# ------------------------------------------------------------------------------------------

class VerifierRuntime:
    """Scores batches with one verifier record and its options.

    workers: size of the process pool (ignored for in_process records).
    timeout: hard wall-clock deadline per sample in seconds (default: record.time_budget_s).
    max_chars: input cap; answer text keeps its tail (default 20,000), a sandboxed verifier's
      source is rejected above it (default 1,000,000).
    cache: size of the reward cache (0 disables it); records with cacheable=False or no
      cache_key are never cached.
    memory_limit_mb: RLIMIT_AS of each worker (default 4096 for verifiers that parse text,
      none for sandboxed verifiers, which set their own limits on their children).
    """

    def __init__(self, record: VerifierRecord, options: Mapping[str, Any] | None = None, *,
                 workers: int = 1, timeout: float | None = None, max_chars: int | None = None,
                 cache: int = DEFAULT_CACHE_SIZE, memory_limit_mb: int | None = -1) -> None:
        self.record = record
        self.options = dict(options or {})
        self.workers = max(1, int(workers))
        self.timeout = float(timeout if timeout is not None else record.time_budget_s)
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.is_code = bool(record.needs_sandbox)
        self.max_chars = int(max_chars or (DEFAULT_MAX_CODE_CHARS if self.is_code else DEFAULT_MAX_CHARS))
        if memory_limit_mb == -1:
            memory_limit_mb = None if self.is_code else 4096
        self._cache_size = int(cache) if record.cacheable and record.cache_key is not None else 0
        self._cache: collections.OrderedDict[Any, Verdict] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = {}
        try:
            self._options_key = json.dumps(self.options, sort_keys=True, default=repr)
        except Exception:  # noqa: BLE001
            self._options_key = repr(sorted(self.options.items(), key=lambda kv: kv[0]))
        self._pool: _Pool | None = None
        self._closed = False
        if record.startup_check is not None:
            # Refuse here, loudly, rather than mask every sample later (e.g. no bubblewrap).
            record.startup_check(**self.options)
        if not record.in_process:
            self._pool = _Pool(record, self.options, self.workers, self.timeout, memory_limit_mb,
                               self._stats, self._stats_lock)
            self._finalizer = weakref.finalize(self, _Pool.close, self._pool)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        """One Verdict per completion, in order. Blocks the calling thread only."""
        out, pending = self._prepare(completions, rows)
        for idx, fut, key, followers in pending:
            self._complete(out, idx, fut.result(), key, followers)
        return out  # type: ignore[return-value]

    async def ascore(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        """`score` for asyncio: awaits the workers without blocking the event loop."""
        out, pending = self._prepare(completions, rows)
        if pending:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for _i, f, _k, _f in pending))
            for (idx, _fut, key, followers), verdict in zip(pending, results):
                self._complete(out, idx, verdict, key, followers)
        return out  # type: ignore[return-value]

    def _prepare(self, completions, rows):
        if self._closed:
            raise RuntimeError("the verifier runtime is closed")
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        n = len(completions)
        out: list[Verdict | None] = [None] * n
        todo: list[tuple[int, str, Mapping]] = []
        for i, (c, r) in enumerate(zip(completions, rows)):
            bad = missing_columns(self.record, r)
            text = None
            if bad is None:
                text, bad = self._clean(c)
            if bad is not None:
                out[i] = bad
            else:
                todo.append((i, text, r))
        self._bump("samples", n)
        # cache look-ups, and one call per distinct key within the batch
        leaders: dict[Any, tuple[int, list[int]]] = {}
        work: list[tuple[int, str, Mapping, Any, list[int]]] = []
        for i, text, r in todo:
            key = self._key(text, r)
            if key is not None:
                self._bump("cache_lookups")
                hit = self._cache_get(key)
                if hit is not None:
                    self._bump("cache_hits")
                    out[i] = hit
                    continue
                if key in leaders:
                    self._bump("cache_hits")
                    leaders[key][1].append(i)
                    continue
                followers: list[int] = []
                leaders[key] = (i, followers)
                work.append((i, text, r, key, followers))
            else:
                work.append((i, text, r, None, []))
        if self._pool is None:
            pending = []
            for i, text, r, key, followers in work:
                fut: Future = Future()
                fut.set_result(call_verifier(self.record, [text], [r], self.options)[0])
                pending.append((i, fut, key, followers))
        else:
            pending = [(i, self._pool.submit(text, r), key, followers)
                       for i, text, r, key, followers in work]
        self._bump("verifier_calls", len(work))
        return out, pending

    def _complete(self, out, idx, verdict, key, followers) -> None:
        if not isinstance(verdict, Verdict):
            verdict = coerce_result(verdict)
        out[idx] = verdict
        for j in followers:
            out[j] = verdict
        if key is not None and verdict.category in CACHEABLE_CATEGORIES:
            self._cache_put(key, verdict)
        if verdict.category is Category.VERIFIER_ERROR:
            self._bump("verifier_errors", 1 + len(followers))

    def _clean(self, value: Any) -> tuple[str | None, Verdict | None]:
        if not self.is_code:
            return clean_tail(value, self.max_chars)
        if not isinstance(value, str):
            return None, Verdict.fail(Category.INVALID_INPUT,
                                      f"completion must be a str, got {type(value).__name__}")
        if len(value) > self.max_chars:
            return None, Verdict.fail(Category.INPUT_TOO_LARGE,
                                      f"source is {len(value)} characters (limit {self.max_chars})")
        return value, None

    # -- the reward cache --------------------------------------------------------------------
    def _key(self, text: str, row: Mapping) -> Any:
        if not self._cache_size:
            return None
        try:
            answer = self.record.cache_key(text, row, **self.options)  # type: ignore[misc]
            if answer is None:
                return None
            if type(answer) is not str:
                return None
            gold = json.dumps([row[c] for c in self.record.columns], sort_keys=True, default=repr)
        except BaseException:  # noqa: BLE001 - a broken key function means "do not cache"
            return None
        return (self.record.name, self.record.version, self._options_key, gold, answer)

    def _cache_get(self, key: Any) -> Verdict | None:
        with self._cache_lock:
            v = self._cache.get(key)
            if v is not None:
                self._cache.move_to_end(key)
            return v

    def _cache_put(self, key: Any, verdict: Verdict) -> None:
        with self._cache_lock:
            self._cache[key] = verdict
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _bump(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + n

    @property
    def stats(self) -> dict[str, float]:
        """Counters since construction: samples, verifier_calls, cache_lookups, cache_hits,
        cache_hit_rate, timeouts, crashes, verifier_errors, workers_started."""
        with self._stats_lock:
            s: dict[str, float] = {k: self._stats.get(k, 0) for k in (
                "samples", "verifier_calls", "cache_lookups", "cache_hits", "timeouts", "crashes",
                "verifier_errors", "workers_started")}
        s["cache_hit_rate"] = s["cache_hits"] / s["cache_lookups"] if s["cache_lookups"] else 0.0
        return s

    @property
    def cache_hit_rate(self) -> float:
        return float(self.stats["cache_hit_rate"])

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    # -- the pool ----------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until every worker has imported the verifier (True), or give up (False)."""
        return True if self._pool is None else self._pool.wait_ready(timeout)

    def worker_pids(self) -> list[int]:
        return [] if self._pool is None else self._pool.pids()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._finalizer.detach()
            self._pool.close()

    def __enter__(self) -> "VerifierRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
