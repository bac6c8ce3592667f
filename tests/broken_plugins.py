"""Plugins broken on purpose, one property each, for tests/test_conformance.py: each record's
name says which property of its battery it breaks (`rlsd plugins check` must catch every one).

Installed by the test as a real distribution (`rlsd-broken-test-plugins`, entry point
`broken`), so the CLI finds them exactly as it finds a pip-installed plugin.
"""

from __future__ import annotations

import itertools
import random
import time

from rlsd_core import (Category, Example, InjectorRecord, Magnitude, ObjectiveRecord,
                       SchedulerRecord, Verdict, VerifierRecord, hookimpl)

ROW = {"answer": "7", "secret": "s"}
EXAMPLES = (Example(row=ROW, completion="7", reward=1.0), Example(row=ROW, completion="8", reward=0.0))
CONTRACT_ONLY = tuple(Example(row=e.row, completion=e.completion) for e in EXAMPLES)
_calls = itertools.count()


def _right(c, r):
    return c.strip() == r["answer"]


def score_ok(completions, rows, **_):
    """A correct verifier; the broken ones below differ from it in one way each."""
    return [Verdict.ok() if _right(c, r) else Verdict.fail(Category.WRONG_ANSWER, "no")
            for c, r in zip(completions, rows)]


def examples_wrong(completions, rows, **_):
    return [0.5 for _ in completions]


def reads_undeclared(completions, rows, **_):
    return [1.0 if _right(c, r) and r["secret"] == "s" else 0.0 for c, r in zip(completions, rows)]


def reversed_order(completions, rows, **_):
    return list(reversed(score_ok(completions, rows)))


def nan_reward(completions, rows, **_):
    return [1.0 if _right(c, r) else float("nan") for c, r in zip(completions, rows)]


def full_reward_wrong_category(completions, rows, **_):
    return [Verdict(1.0, Category.WRONG_ANSWER) if _right(c, r) else 0.0 for c, r in zip(completions, rows)]


def alternating(completions, rows, **_):
    return [float(next(_calls) % 2) for _ in completions]


def raises_on_long(completions, rows, **_):
    if any(len(c) > 1000 for c in completions):
        raise ValueError("completion too long for me")
    return score_ok(completions, rows)


def slow_on_nesting(completions, rows, **_):
    if any("((((" in c for c in completions):
        time.sleep(30)
    return score_ok(completions, rows)


def _unpicklable():
    def fn(completions, rows, **_):
        return score_ok(completions, rows)
    return fn


def _v(name, fn, **kw):
    kw.setdefault("examples", EXAMPLES)
    kw.setdefault("in_process", True)
    return VerifierRecord(name=name, fn=fn, columns=("answer",), time_budget_s=2.0, **kw)


@hookimpl
def rlsd_verifiers():
    return [
        _v("broken_examples", examples_wrong),
        _v("broken_columns", reads_undeclared),
        _v("broken_one_per_completion", reversed_order),
        _v("broken_rewards", nan_reward, examples=CONTRACT_ONLY),
        _v("broken_categories", full_reward_wrong_category),
        _v("broken_picklable", _unpicklable()),
        _v("broken_deterministic", alternating, examples=CONTRACT_ONLY),
        _v("broken_hostile", raises_on_long),
        _v("broken_time_budget", slow_on_nesting),
    ]


# --- injectors ------------------------------------------------------------------------------

def _hinted(student, hint):
    out = [dict(m) for m in student]
    out[-1]["content"] = out[-1]["content"] + "\nHint: " + hint
    return out


def returns_text(row, student, ctx):
    return "Here is the answer: " + str(row["answer"])


def edits_student(row, student, ctx):
    student[-1]["content"] += "\nHint: " + str(row["answer"])
    return student


def leaks_answer(row, student, ctx):
    return _hinted(student, str(row["answer"]))


def ignores_budget(row, student, ctx):
    return _hinted(student, str(row["answer"]))


def reads_group(row, student, ctx):
    return _hinted(student, ctx.responses[ctx.index] if ctx.responses else "")


def changes_each_call(row, student, ctx):
    return _hinted(student, str(next(_calls)))


@hookimpl
def rlsd_injectors():
    rows = (Example(row={"prompt": "What is 3 + 4?", "answer": "7"}),)
    return [
        InjectorRecord(name="broken_messages", fn=returns_text, columns=("answer",), examples=rows),
        InjectorRecord(name="broken_student_untouched", fn=edits_student, columns=("answer",),
                       examples=rows),
        InjectorRecord(name="broken_injector_columns", fn=leaks_answer, examples=rows),
        InjectorRecord(name="broken_token_budget", fn=ignores_budget, columns=("answer",), examples=rows),
        InjectorRecord(name="broken_group", fn=reads_group, examples=rows),
        InjectorRecord(name="broken_injector_deterministic", fn=changes_each_call, examples=rows),
    ]


# --- schedulers -----------------------------------------------------------------------------

def too_strong(lam=1.5):
    return lambda step, diagnostics: Magnitude(lam, 0.2)


def needs_an_option(required):
    return lambda step, diagnostics: Magnitude(0.5, 0.2)


class _Flaky:
    def __init__(self):
        self.rng = random.Random()  # seeded from the OS: differs between schedulers

    def __call__(self, step, diagnostics):
        return Magnitude(self.rng.random() * 0.5, 0.2)


class _Counter:
    """Decays with every call, and has no state_dict: a resumed run restarts the decay."""

    def __init__(self):
        self.calls = 0

    def __call__(self, step, diagnostics):
        self.calls += 1
        return Magnitude(0.5 / self.calls, 0.2)


@hookimpl
def rlsd_schedulers():
    return [
        SchedulerRecord(name="broken_constructs", fn=needs_an_option),
        SchedulerRecord(name="broken_magnitude", fn=too_strong),
        SchedulerRecord(name="broken_scheduler_deterministic", fn=_Flaky),
        SchedulerRecord(name="broken_state_dict", fn=_Counter),
    ]


# --- objectives -----------------------------------------------------------------------------

def unmasked_credit(b):
    return b.advantages[:, None].expand_as(b.old_logprobs).clone()


def masked_credit(b):
    return (b.advantages[:, None] * b.mask).detach()


def teacher_credit(b):
    return ((b.teacher_logprobs - b.old_logprobs) * b.mask).detach()


def detached_loss(b):
    return (b.token_advantages * b.mask).sum().detach(), {}


def surrogate(b):
    return -(b.token_advantages * b.logprobs * b.mask).sum() / b.denominator, {"n": 1.0}


@hookimpl
def rlsd_objectives():
    return [
        ObjectiveRecord(name="broken_credit", credit=unmasked_credit, loss=surrogate),
        ObjectiveRecord(name="broken_teacher", credit=teacher_credit, loss=surrogate, teacher="never"),
        ObjectiveRecord(name="broken_loss", credit=masked_credit, loss=detached_loss),
    ]
