"""Misbehaving verifiers for the runtime tests (G01-G04).

They live at module level in their own module because the runtime sends a record's `fn` to
its worker processes by reference (module + name), as it does for every real plugin.
"""

from __future__ import annotations

import os
import time

from rlsd_core import Verdict, VerifierRecord, hookimpl


class CustomBase(BaseException):
    """A BaseException subclass that is neither Exception, SystemExit nor KeyboardInterrupt."""


def behave(completions, rows, **options):
    """One verifier whose behaviour is chosen by the completion text (one sample per call)."""
    out = []
    for c, row in zip(completions, rows):
        if c == "raise ValueError":
            raise ValueError("bad plugin")
        if c == "raise KeyboardInterrupt":
            raise KeyboardInterrupt
        if c == "raise SystemExit":
            raise SystemExit(3)
        if c == "raise CustomBase":
            raise CustomBase("custom")
        if c == "return None":
            return [None]
        if c == "return nan":
            return [float("nan")]
        if c == "return inf":
            return [float("inf")]
        if c == "return -0.5":
            return [-0.5]
        if c == "return 1.5":
            return [1.5]
        if c == "return str":
            return ["1.0"]
        if c == "return two":
            return [1.0, 1.0]
        if c == "return zero":
            return []
        if c == "return generator-that-raises":
            def gen():
                raise RuntimeError("lazy failure")
                yield 1.0  # pragma: no cover
            return gen()
        if c.startswith("sleep "):
            time.sleep(float(c.split()[1]))
        if c == "exit":
            os._exit(0)
        if c == "abort":
            os.abort()
        if c == "fork-sleeper":
            # leaves a grandchild behind: the runtime must kill the worker's process group
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            time.sleep(60)
        out.append(Verdict.ok() if c == str(row["answer"]) else Verdict.fail("wrong_answer", "no"))
    return out


def key(completion, row, **options):
    return completion


BEHAVE = VerifierRecord(name="behave", fn=behave, columns=("answer",), time_budget_s=1.0,
                        cache_key=key)
BEHAVE_NOCACHE = VerifierRecord(name="behave_nocache", fn=behave, columns=("answer",),
                                time_budget_s=1.0, cacheable=False)
BEHAVE_IN_PROCESS = VerifierRecord(name="behave_inproc", fn=behave, columns=("answer",),
                                   in_process=True, cacheable=False)


def even_length(completions, rows, **_):
    """Reward 1 for a completion of even length: a verifier the untrained tiny model scores on
    about half its samples, so loop tests get groups with signal."""
    return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


class EvenLengthPlugin:
    """Registers `even_length` (in process) with a plugin manager: `pm.register(EvenLengthPlugin())`."""

    @hookimpl
    def rlsd_verifiers(self):
        return [VerifierRecord(name="even_length", fn=even_length, columns=(), in_process=True)]
