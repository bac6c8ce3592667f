"""The judge that runs inside the sandbox (the host only reads its source; tests import it to
check the codec).

The host compiles it once with the sandbox's own interpreter and starts it, marshalled, as
`python3 -I -S -B -X utf8 -c <bootstrap> <code> <config json>` inside bubblewrap,
where it is PID 1 of the sandbox's PID namespace (`bwrap --as-pid-1`). Standard library only.

Two processes, so that candidate code never shares an address space with the judge:

- J, the judge (this process, PID 1). It makes itself non-dumpable (no ptrace, no
  /proc/<pid>/mem; the sandbox has no /proc anyway) and, being PID 1 with no signal handler
  (SIGINT is ignored), cannot be signalled from inside the namespace: `kill(getppid())` and
  `kill(-1)` from the candidate do not reach it.
- C, a candidate process forked from J, which lowers its rlimits and then runs the candidate.
  C talks to J over two pipes with length-prefixed JSON messages; J decodes them strictly.

File descriptors given to J by the host, named in the config's "fds" (C closes all of them
before any candidate code runs):
  job     the job (JSON: program, test code or stdin inputs), read once and closed
  result  the result channel to the host, written once at the end
  nonce   the per-run nonce; J reads it only after the last candidate process was forked, so no
     candidate process ever holds it in memory.

Function style (HumanEval): C is forked before J reads the job, so C's memory holds neither the
test code nor its expected values. C loads the program and serves calls: J runs the test's
`check(candidate)` on a proxy that sends the arguments to C and turns C's reply back into plain
built-in values (only exact None/bool/int/float/complex/str/bytes/list/tuple/dict/set/frozenset
are accepted), so every comparison is made by J on data, never through an object the candidate
made.

Stdin/stdout style: J forks one C per test with the input as stdin and captures stdout (capped);
the host compares the outputs (the expected outputs never enter the sandbox).
"""

# Only modules that are built in or tiny: each import here is paid once per sample (`json`,
# `socket`, `signal` and `traceback` would add ~40 ms through `re` and `enum`).
import _json
import _signal
import errno
import os
import select
import sys
import time
from _struct import Struct

# Set from the config in main(): the host passes its own fd numbers through.
JOB_FD = RESULT_FD = NONCE_FD = -1
_HDR = Struct("!I")


class _Fail(BaseException):
    """A test failed because of the candidate (BaseException: test code's `except Exception`
    must not swallow it)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------
# Plain-data codec. The encoder runs in C (untrusted), the decoder in J (trusted) and in C for
# arguments. JSON objects are always tags, so a dict from the candidate cannot pose as one.

class CodecError(ValueError):
    pass


_SAFE_INT = 1 << 53
MAX_DEPTH = 200


def encode(value, depth=0):
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -_SAFE_INT < value < _SAFE_INT else {"I": format(value, "x")}
    if t is float:
        return {"F": value.hex()}
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is set:
        return {"s": [encode(v, depth + 1) for v in value]}
    if t is frozenset:
        return {"f": [encode(v, depth + 1) for v in value]}
    if t is bytes:
        return {"b": value.hex()}
    if t is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    raise CodecError("a value of type %s is not plain data (None, bool, int, float, complex, "
                     "str, bytes, list, tuple, dict, set, frozenset)" % _typename(t))


def _typename(t):
    try:
        return str(type.__getattribute__(t, "__qualname__"))[:80]
    except Exception:
        return "?"


def decode(x, depth=0):
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is list:
        return [decode(v, depth + 1) for v in x]
    if t is dict and len(x) == 1:
        ((tag, v),) = x.items()
        tv = type(v)
        if tag == "I" and tv is str:
            return int(v, 16)
        if tag == "F" and tv is str:
            return float.fromhex(v)
        if tag == "b" and tv is str:
            return bytes.fromhex(v)
        if tv is list:
            if tag == "t":
                return tuple(decode(i, depth + 1) for i in v)
            if tag == "s":
                return set(decode(i, depth + 1) for i in v)
            if tag == "f":
                return frozenset(decode(i, depth + 1) for i in v)
            if tag == "d":
                out = {}
                for pair in v:
                    if type(pair) is not list or len(pair) != 2:
                        raise CodecError("malformed dict entry")
                    out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
                return out
            if tag == "c" and len(v) == 2 and type(v[0]) is str and type(v[1]) is str:
                return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    raise CodecError("malformed value")


# ---------------------------------------------------------------------------------------------
# JSON through the C accelerator directly (the `json` package imports `re`). NaN/Infinity are
# refused; floats travel as hex strings inside the codec above.

class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name):
        raise ValueError("non-finite number " + name)


_scan = _json.make_scanner(_ScanContext())


def _no_default(obj):
    raise TypeError("not JSON data")


_encode_json = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None, ":", ",",
                                  False, False, False)


def json_dumps(obj):
    return "".join(_encode_json(obj, 0))


def json_loads(data):
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("malformed JSON") from None
    if end != len(text):
        raise ValueError("trailing data after JSON")
    return obj


# ---------------------------------------------------------------------------------------------
# Framed messages over a pair of pipes: (read fd, write fd) on each side.

def send_msg(chan, obj):
    data = json_dumps(obj).encode()
    view = memoryview(_HDR.pack(len(data)) + data)
    while view:
        view = view[os.write(chan[1], view):]


def _recv_exact(fd, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv_msg(chan, deadline=None, limit=1 << 26):
    (n,) = _HDR.unpack(_recv_exact(chan[0], _HDR.size, deadline))
    if n > limit:
        raise OverflowError(n)
    return json_loads(_recv_exact(chan[0], n, deadline))


# ---------------------------------------------------------------------------------------------
# The candidate process.

def _limit_self(cfg):
    import resource
    for name, value in cfg["rlimits"].items():
        res = getattr(resource, name)
        # soft == hard: the candidate cannot raise them again.
        resource.setrlimit(res, (value, value))


def _describe_exc(exc):
    err = getattr(exc, "errno", None)
    return {"type": type(exc).__name__, "errno": err if type(err) is int else None,
            "msg": _short(exc), "tb": _short_tb(exc)}


def _short(exc, n=300):
    try:
        s = "%s: %s" % (type(exc).__name__, exc)
    except BaseException:
        s = type(exc).__name__
    return s[:n]


def _short_tb(exc, n=1200):
    # Without the traceback module (an import that costs ~15 ms).
    try:
        parts = []
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            parts.append("%s:%d in %s" % (code.co_filename, tb.tb_lineno, code.co_name))
            tb = tb.tb_next
        return ("; ".join(parts[-6:]) + " | " + _short(exc))[-n:]
    except BaseException:
        return ""


def _child_setup(cfg, keep):
    """First thing in C: drop every inherited fd except `keep`, then lower the rlimits."""
    os.setpgid(0, 0)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # J ignores it; C behaves normally
    keep = sorted(set(keep) | {0, 1, 2})
    lo = 0
    for fd in keep:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 16)
    _limit_self(cfg)


def _load(program, name):
    try:
        code = compile(program, "<candidate>", "exec", dont_inherit=True)
    except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), MemoryError, RecursionError
        return None, {"compile_error": _describe_exc(exc)}
    ns = {"__name__": name, "__builtins__": __builtins__}
    try:
        exec(code, ns)
    except SystemExit as exc:
        return None, {"exit_code": _exit_code(exc)}
    except BaseException as exc:
        return None, {"raise": _describe_exc(exc)}
    return ns, None


def _exit_code(exc):
    code = exc.code
    if code is None:
        return 0
    return code if type(code) is int else 1


def candidate_function_server(sock, cfg):
    """C in function style: load the program, then answer calls until J hangs up."""
    req = recv_msg(sock)
    ns, err = _load(req["program"], "__candidate__")
    if err is not None:
        send_msg(sock, err)
        return
    fn = ns.get(req["entry"])
    if not callable(fn):
        send_msg(sock, {"missing": req["entry"]})
        return
    send_msg(sock, {"loaded": True})
    while True:
        try:
            call = recv_msg(sock)
        except EOFError:
            return
        args = decode(call["args"])
        kwargs = decode(call["kwargs"])
        try:
            result = fn(*args, **kwargs)
        except SystemExit as exc:
            reply = {"exit_code": _exit_code(exc)}
        except BaseException as exc:
            reply = {"raise": _describe_exc(exc)}
        else:
            try:
                reply = {"value": encode(result)}
            except CodecError as exc:
                reply = {"bad_value": str(exc)}
            except RecursionError:
                reply = {"bad_value": "value nested too deeply"}
        sys.stdout.flush()
        send_msg(sock, reply)


def candidate_script(sock, cfg, program):
    """C in stdin/stdout style: run the program as __main__, report how it ended."""
    try:
        code = compile(program, "<candidate>", "exec", dont_inherit=True)
    except BaseException as exc:
        send_msg(sock, {"compile_error": _describe_exc(exc)})
        return 0
    send_msg(sock, {"compiled": True})
    status = 0
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        reply = {"done": True}
    except SystemExit as exc:
        status = _exit_code(exc)
        reply = {"exit_code": status}
    except BaseException as exc:
        reply = {"raise": _describe_exc(exc)}
        status = 1
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    send_msg(sock, reply)
    return status


# ---------------------------------------------------------------------------------------------
# J: classification of how a candidate process ended.

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EFBIG, errno.ENOSPC,
                    errno.EDQUOT, errno.ENOMEM}
_SIGNAL_NAMES = {getattr(_signal, n): n for n in (
    "SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE", "SIGSYS", "SIGTRAP", "SIGKILL", "SIGTERM",
    "SIGXCPU", "SIGXFSZ", "SIGPIPE", "SIGINT", "SIGHUP", "SIGALRM", "SIGUSR1", "SIGUSR2")}
_CRASH_SIGNALS = {_signal.SIGSEGV, _signal.SIGBUS, _signal.SIGABRT, _signal.SIGILL, _signal.SIGFPE,
                  _signal.SIGSYS, _signal.SIGTRAP}


def classify_exception(info):
    if type(info) is not dict:
        return "runtime_error", "the candidate raised an exception"
    # Everything here may have been forged by the candidate (it can patch the harness code in
    # its own process): only exact types are trusted, and nothing may raise.
    typ = info.get("type")
    typ = typ[:80] if type(typ) is str else "?"
    msg = info.get("msg")
    msg = msg[:300] if type(msg) is str else typ
    err = info.get("errno")
    if typ == "MemoryError":
        return "memory_limit", msg
    if typ == "RecursionError":
        return "runtime_error", msg
    if (type(err) is int and err in _RESOURCE_ERRNOS) or "can't start new thread" in msg:
        return "resource_limit", msg
    return "runtime_error", msg


def classify_wait(status, killed_for_timeout):
    """Map a waitpid status to (category, message)."""
    if status is None:
        return "timeout", "the candidate process did not end"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = _SIGNAL_NAMES.get(sig, "signal %d" % sig)
        if killed_for_timeout or sig == _signal.SIGXCPU:
            return "timeout", "killed: time limit"
        if sig == _signal.SIGXFSZ:
            return "resource_limit", "killed by SIGXFSZ: file size limit"
        if sig in _CRASH_SIGNALS:
            return "crash", "crashed with %s" % name
        return "crash", "killed by %s" % name
    code = os.WEXITSTATUS(status)
    return "runtime_error", "the candidate process exited with status %d" % code


class Judge:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sample_deadline = None  # set when the job arrives: the host may start us early
        self.pid1 = os.getpid() == 1

    # -- process handling ----------------------------------------------------------------

    def fork_candidate(self, keep_fds, setup=None):
        j2c = os.pipe()
        c2j = os.pipe()
        pid = os.fork()
        if pid == 0:  # C
            code = 70
            try:
                if setup is not None:
                    setup()
                _child_setup(self.cfg, list(keep_fds) + [j2c[0], c2j[1]])
                code = self._child_main((j2c[0], c2j[1]))
            except BaseException:
                pass
            finally:
                os._exit(code)
        os.close(j2c[0])
        os.close(c2j[1])
        return pid, (c2j[0], j2c[1])

    def kill_all(self, pid):
        """Remove every candidate process. As PID 1 of the namespace, kill(-1) reaches all of
        them (daemons included) and never the judge; outside a namespace (degraded mode) only
        the candidate's process group can be signalled."""
        try:
            if self.pid1:
                os.kill(-1, _signal.SIGKILL)
            else:
                os.killpg(pid, _signal.SIGKILL)
        except OSError:
            pass

    def reap(self, pid, deadline):
        """Wait for `pid` until deadline; returns its wait status or None."""
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if got == pid:
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.0005)

    def reap_orphans(self):
        """After kill(-1, SIGKILL) as PID 1: every process left is dying and is (or becomes)
        our child, so a blocking wait ends as soon as the last one is gone."""
        if not self.pid1:
            return
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
            except InterruptedError:
                continue

    def finish_candidate(self, pid, status=None, killed=False):
        """Kill everything the candidate left, collect C's status if still unknown."""
        if status is None and not killed:
            status = self.reap(pid, time.monotonic() + 0.05)
        self.kill_all(pid)
        if status is None:
            status = self.reap(pid, time.monotonic() + 2.0)
        self.reap_orphans()
        return status


class FunctionJudge(Judge):
    """HumanEval style: one C per sample; the test's check() runs here on a proxy."""

    def _child_main(self, sock):
        candidate_function_server(sock, self.cfg)
        return 0

    def run(self):
        pid, sock = self.fork_candidate(keep_fds=[])
        job = read_job()
        self.sample_deadline = time.monotonic() + self.cfg["sample_timeout"]
        self._test_source = job["test"]
        deadline = min(time.monotonic() + job["test_timeout"], self.sample_deadline)
        result = {"status": "pass", "message": ""}
        last = {"call": None, "got": None}
        try:
            try:
                send_msg(sock, {"program": job["program"], "entry": job["entry"]})
                reply = recv_msg(sock, deadline, self.cfg["max_value_bytes"])
            except TimeoutError:
                raise _Fail("timeout", "loading the program exceeded the time limit") from None
            except (EOFError, OSError):
                raise _Fail("*died", "the candidate process ended while loading the program") from None
            except (ValueError, OverflowError, RecursionError):
                raise _Fail("runtime_error", "malformed message from the candidate process (did it "
                            "write into its channel to the judge?)") from None
            self._check_loaded(reply, job["entry"])
            ns = {"__name__": "__test__"}
            try:
                if job.get("prompt"):
                    # Helpers the test calls (e.g. HumanEval/32's poly) come from the prompt,
                    # never from the candidate's program.
                    exec(compile(job["prompt"], "<prompt>", "exec", dont_inherit=True), ns)
                exec(compile(job["test"], "<test>", "exec", dont_inherit=True), ns)
                check = ns["check"]
            except BaseException as exc:
                raise _Fail("gold_error", "the test code failed to load: " + _short(exc)) from None
            proxy = self._proxy(sock, deadline, last)
            # Some tests call the function by name (HumanEval/33); that name is the candidate.
            ns[job["entry"]] = proxy
            try:
                check(proxy)
            except _Fail:
                raise
            except AssertionError as exc:
                raise _Fail("wrong_answer", self._failure_message(exc, last)) from None
            except BaseException as exc:
                if last["got"] is None and last["call"] is None:
                    raise _Fail("gold_error", "the test raised before calling the candidate: "
                                + _short(exc)) from None
                raise _Fail("wrong_answer", self._failure_message(exc, last)) from None
        except _Fail as fail:
            if fail.status == "timeout":
                self.kill_all(pid)
            if fail.status == "*died":
                status = self.reap(pid, time.monotonic() + 1.0)
                cat, msg = classify_wait(status, False)
                result = {"status": cat, "message": msg}
            else:
                result = {"status": fail.status, "message": fail.message}
        finally:
            _close_chan(sock)
        # Whatever C (or anything it started) still does cannot change the result any more; the
        # kernel removes it all when the judge, PID 1, exits right after reporting.
        self.kill_all(pid)
        return [result]

    def _check_loaded(self, reply, entry):
        if type(reply) is not dict:
            raise _Fail("runtime_error", "malformed reply from the candidate process")
        if reply.get("loaded") is True:
            return
        if "compile_error" in reply:
            raise _Fail("compile_error", classify_exception(reply["compile_error"])[1])
        if "missing" in reply:
            raise _Fail("no_answer", "the program defines no function named %r" % entry)
        if "exit_code" in reply:
            raise _Fail("runtime_error", "the program called exit(%s) while loading"
                        % _trunc(str(reply["exit_code"]), 40))
        if "raise" in reply:
            cat, msg = classify_exception(reply["raise"])
            raise _Fail(cat, "loading the program raised " + msg)
        raise _Fail("runtime_error", "malformed reply from the candidate process")

    def _proxy(self, sock, deadline, last):
        limit = self.cfg["max_value_bytes"]

        def candidate(*args, **kwargs):
            shown = ", ".join([_trunc(repr(a), 80) for a in args]
                              + ["%s=%s" % (k, _trunc(repr(v), 80)) for k, v in kwargs.items()])
            last["call"], last["got"] = shown, None
            try:
                msg = {"args": encode(list(args)), "kwargs": encode(dict(kwargs))}
            except CodecError as exc:
                raise _Fail("gold_error", "the test passed an argument that is not plain data: %s" % exc)
            try:
                send_msg(sock, msg)
                reply = recv_msg(sock, deadline, limit)
            except TimeoutError:
                raise _Fail("timeout", "candidate(%s) exceeded the time limit" % _trunc(shown, 200)) from None
            except OverflowError:
                raise _Fail("output_limit", "candidate(%s) returned a value over %d bytes"
                            % (_trunc(shown, 200), limit)) from None
            except (EOFError, OSError):
                raise _Fail("*died", "") from None
            except (ValueError, RecursionError):
                raise _Fail("runtime_error", "malformed message from the candidate process") from None
            if type(reply) is not dict:
                raise _Fail("runtime_error", "malformed reply from the candidate process")
            if "value" in reply:
                try:
                    value = decode(reply["value"])
                except (CodecError, ValueError, TypeError, RecursionError, OverflowError) as exc:
                    raise _Fail("wrong_answer", "candidate(%s) returned malformed data: %s"
                                % (_trunc(shown, 200), _short(exc))) from None
                last["got"] = _trunc(repr(value), 200)
                return value
            if "bad_value" in reply:
                raise _Fail("wrong_answer", "candidate(%s) returned a value that is not plain data: %s"
                            % (_trunc(shown, 200), str(reply["bad_value"])[:200]))
            if "exit_code" in reply:
                raise _Fail("runtime_error", "candidate(%s) called exit(%s)"
                            % (_trunc(shown, 200), _trunc(str(reply["exit_code"]), 40)))
            if "raise" in reply:
                cat, m = classify_exception(reply["raise"])
                raise _Fail(cat, "candidate(%s) raised %s" % (_trunc(shown, 200), m))
            raise _Fail("runtime_error", "malformed reply from the candidate process")

        return candidate

    def _failure_message(self, exc, last):
        line = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<test>":
                line = _source_line(self._test_source, tb.tb_lineno)
            tb = tb.tb_next
        kind = "assertion failed" if isinstance(exc, AssertionError) else "test raised " + _short(exc, 150)
        parts = [kind + (": " + line if line else "")]
        if last["call"] is not None:
            parts.append("candidate(%s) returned %s" % (_trunc(last["call"], 150), last["got"]))
        return "; ".join(parts)


def _source_line(src, lineno):
    lines = src.splitlines()
    if 1 <= lineno <= len(lines):
        return _trunc(lines[lineno - 1].strip(), 200)
    return ""


def _trunc(s, n):
    return s if len(s) <= n else s[: n - 3] + "..."


class ScriptJudge(Judge):
    """Stdin/stdout style: a fresh C per test; outputs go to the host for comparison."""

    def run(self):
        job = read_job()
        self.sample_deadline = time.monotonic() + self.cfg["sample_timeout"]
        self.program = job["program"]
        results = []
        stop = None
        for i, stdin_text in enumerate(job["inputs"]):
            if stop is None and time.monotonic() >= self.sample_deadline:
                stop = {"status": "timeout", "message": "not run: the sample's time budget was spent"}
            if stop is not None:
                results.append(dict(stop))
                continue
            res = self.run_one(stdin_text, job["test_timeout"])
            results.append(res)
            if res["status"] == "compile_error":
                stop = {"status": "compile_error", "message": res["message"]}
            elif res["status"] != "exited" and not job["partial"]:
                stop = {"status": "skipped", "message": "not run: an earlier test failed"}
        return results

    def run_one(self, stdin_text, test_timeout):
        cap = self.cfg["max_test_output"]
        data = stdin_text.encode("utf-8", "surrogateescape")
        try:
            # An anonymous file: no name in the work dir that a candidate could squat on.
            in_fd = os.memfd_create("stdin")
        except OSError as exc:
            return {"status": "sandbox_error", "message": "could not stage the test input: %s" % exc}
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(in_fd, view):]
            os.lseek(in_fd, 0, os.SEEK_SET)
        except OSError as exc:
            os.close(in_fd)
            return {"status": "sandbox_error", "message": "could not stage the test input: %s" % exc}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()

        def setup():
            os.dup2(in_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)

        start = time.monotonic()
        deadline = min(start + test_timeout, self.sample_deadline)
        pid, sock = self.fork_candidate(keep_fds=[], setup=setup)
        for fd in (in_fd, out_w, err_w):
            os.close(fd)
        out, err = bytearray(), bytearray()
        msgs = []
        open_fds = {out_r: out, err_r: err}
        sock_buf = bytearray()
        over = False
        timed_out = False
        status = None
        while True:
            watch = list(open_fds) + ([sock[0]] if sock is not None else [])
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if not watch:
                status = self.reap(pid, deadline)
                if status is None:
                    timed_out = True
                break
            ready, _, _ = select.select(watch, [], [], min(deadline - now, 0.5))
            for r in ready:
                if sock is not None and r == sock[0]:
                    chunk = os.read(r, 65536)
                    if not chunk or len(sock_buf) > 1 << 16:
                        _close_chan(sock)
                        sock = None
                    else:
                        sock_buf += chunk
                    continue
                chunk = os.read(r, 65536)
                if not chunk:
                    os.close(r)
                    del open_fds[r]
                    continue
                buf = open_fds[r]
                if r == err_r:
                    err += chunk
                    del err[:-4096]
                else:
                    buf += chunk
                    if len(buf) > cap:
                        over = True
            if over:
                break
        if sock is not None:
            _close_chan(sock)
        for fd in open_fds:
            os.close(fd)
        status = self.finish_candidate(pid, status, timed_out or over)
        # Every test starts from an empty work dir: nothing a test left behind (files filling
        # the tmpfs, FIFOs named like anything) reaches the next one.
        _wipe(".")
        elapsed = time.monotonic() - start
        msgs = _parse_frames(bytes(sock_buf))
        stderr_tail = err[-600:].decode("utf-8", "replace")
        if over:
            return {"status": "output_limit", "message": "the program wrote more than %d bytes to stdout" % cap}
        if timed_out:
            return {"status": "timeout", "message": "exceeded the time limit of %.1f s" % test_timeout}
        for m in msgs:
            if type(m) is dict and "compile_error" in m:
                return {"status": "compile_error", "message": classify_exception(m["compile_error"])[1]}
        if status is not None and os.WIFSIGNALED(status):
            cat, msg = classify_wait(status, False)
            return {"status": cat, "message": msg, "stderr": stderr_tail}
        for m in msgs:
            if type(m) is dict and "raise" in m:
                cat, msg = classify_exception(m["raise"])
                return {"status": cat, "message": msg, "stderr": stderr_tail}
        code = os.WEXITSTATUS(status) if status is not None else -1
        if code != 0:
            return {"status": "runtime_error", "message": "exited with status %d" % code, "stderr": stderr_tail}
        return {"status": "exited", "stdout": out.decode("utf-8", "replace"), "stderr": stderr_tail,
                "time": round(elapsed, 4)}

    def _child_main(self, sock):
        return candidate_script(sock, self.cfg, self.program)


def _wipe(top, budget=100000):
    """Delete what is under `top`, never following symlinks; iterative and bounded (a
    candidate may have built very deep or very large trees). Failures are ignored."""
    stack = [(top, False)]
    while stack and budget > 0:
        path, visited = stack.pop()
        if visited:
            if path != top:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            continue
        stack.append((path, True))
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            budget -= 1
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _close_chan(chan):
    for fd in chan:
        try:
            os.close(fd)
        except OSError:
            pass


def _parse_frames(buf):
    out = []
    while len(buf) >= _HDR.size:
        (n,) = _HDR.unpack(buf[: _HDR.size])
        if len(buf) < _HDR.size + n:
            break
        try:
            out.append(json_loads(buf[_HDR.size:_HDR.size + n]))
        except (ValueError, RecursionError):
            break
        buf = buf[_HDR.size + n:]
    return out


def read_job():
    chunks = []
    while True:
        chunk = os.read(JOB_FD, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(JOB_FD)
    return json_loads(b"".join(chunks))


def read_nonce():
    data = os.read(NONCE_FD, 256)
    os.close(NONCE_FD)
    return data.decode("ascii", "replace").strip()


def _make_undumpable():
    # prctl(PR_SET_DUMPABLE, 0): same-uid processes may no longer ptrace this process or read
    # its memory. Through _ctypes directly: `import ctypes` costs ~8 ms per sample.
    import _ctypes
    fn = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")
    if _ctypes.call_function(fn, (4, 0, 0, 0, 0)) != 0 or _ctypes.call_function(fn, (3, 0, 0, 0, 0)) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")


def main():
    global JOB_FD, RESULT_FD, NONCE_FD
    cfg = json_loads(sys.argv[-1])
    JOB_FD, RESULT_FD, NONCE_FD = cfg["fds"]
    # PID 1 of a namespace receives from inside it only the signals it has handlers for, and
    # Python's only default handler is SIGINT's: without this, the candidate could interrupt
    # the judge (a KeyboardInterrupt mid-test).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _make_undumpable()
    os.write(RESULT_FD, b"R")  # "the judge started": lets the host tell set-up failures apart
    judge = FunctionJudge(cfg) if cfg["style"] == "function" else ScriptJudge(cfg)
    try:
        tests = judge.run()
        out = {"tests": tests}
    except BaseException as exc:
        out = {"harness_error": _short(exc, 500) + " | " + _short_tb(exc, 800)}
    out["nonce"] = read_nonce()
    data = json_dumps(out).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(RESULT_FD, view):]
    os.close(RESULT_FD)
    # No interpreter shutdown: it only costs time, and the namespace dies with us anyway.
    os._exit(0)


if __name__ == "__main__":
    main()
