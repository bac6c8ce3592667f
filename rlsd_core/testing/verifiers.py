"""The verifier battery: the properties every verifier record must have, checked on its own
examples (`VerifierRecord.examples`, or the `good` / `bad` cases a test passes) and on hostile
completions (`rlsd_core.testing.hostile`).

    record              the record validates
    examples            its examples score the declared rewards (good ones 1, bad ones < 1)
                        through `VerifierRuntime`, the path training uses
    columns             it reads only the columns it declares, `columns` and
                        `optional_columns` (same verdicts on rows cut down to them)
    one_per_completion  one result per completion, in order, for any batch size (a batch gives
                        what scoring each completion alone gives)
    rewards             each result is a Verdict or a float, finite, in [0, 1]
    categories          categories from the enum, consistent with the reward (1.0 is `ok`);
                        no infrastructure fault on a well-formed example
    picklable           the record and its options reach a fresh worker interpreter
    deterministic       the same inputs give the same verdicts (unless cacheable=False)
    hostile             huge, binary, deeply nested, invisible-character completions give a
                        verdict, never an exception, a crash or an out-of-memory
    time_budget         every example and hostile completion finishes within time_budget_s

Calls that go straight to `fn` run in a daemon thread with a deadline, so a plugin that hangs
fails its property instead of hanging the check; hostile completions go through a worker pool
with the record's hard deadline.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..hygiene import clean_tail
from ..records import Example, VerifierRecord
from ..rewards import VerifierRuntime
from ..verdict import Category, Verdict
from .hostile import hostile_completions
from .results import Battery, CheckResult, fail, short, skip

VERIFIER_PROPERTIES = ("record", "examples", "columns", "one_per_completion", "rewards",
                       "categories", "picklable", "deterministic", "hostile", "time_budget")
# Outcomes that mean the plugin itself broke on an input (the runtime turned it into a verdict).
_BROKE = (Category.VERIFIER_ERROR, Category.CRASH)


@dataclass(frozen=True)
class Case:
    """A completion and its row; `expect` is a reward, "bad" (any reward < 1) or None."""

    completion: str
    row: Mapping[str, Any]
    expect: float | str | None = None
    label: str = ""


def cases_for(record: VerifierRecord, good: Sequence = (), bad: Sequence = ()) -> list[Case]:
    """The record's examples plus a test's good (reward 1) and bad (reward < 1) cases; a
    synthetic case (every declared column "42") when there are none."""
    out = [Case(ex.completion, ex.row, ex.reward, f"examples[{i}]")
           for i, ex in enumerate(record.examples)]
    for label, items, expect in (("good", good, 1.0), ("bad", bad, "bad")):
        for i, item in enumerate(items):
            completion, row = (item.completion, item.row) if isinstance(item, Example) else item
            out.append(Case(completion, row, expect, f"{label}[{i}]"))
    if not out:
        out.append(Case("The answer is 42.", {c: "42" for c in record.columns}, None, "synthetic"))
    return out


def call_with_deadline(fn, args: tuple, kwargs: dict, seconds: float):
    """fn(*args, **kwargs) in a daemon thread: (result, None), or (None, exception); a call that
    does not return in time fails the property (the thread is abandoned)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported, never re-raised here
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="rlsd-check-call")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fail(f"a direct call did not return within {seconds:g} s (it hangs, or is far slower "
             f"than its time_budget_s)")
    return box.get("result"), box.get("error")


def _outcome(value: Any) -> tuple:
    """What must agree between two calls: reward, category and extracted answer (a NaN equals
    a NaN here: `rewards` reports it, the other properties compare like with like)."""
    if isinstance(value, Verdict):
        return (value.reward, getattr(value.category, "value", value.category), value.answer)
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (value,)


class _Verifier:
    """The record under test, called the ways the battery needs."""

    def __init__(self, record: VerifierRecord, options: Mapping[str, Any], cases: list[Case]) -> None:
        self.record, self.options, self.cases = record, dict(options), cases
        self.deadline = max(10.0, 4 * record.time_budget_s * max(1, len(cases)))
        self.texts = [self.prepare(c.completion) for c in cases]
        self._singles: list | None = None
        self._pool: VerifierRuntime | None = None

    def pool(self) -> VerifierRuntime:
        """One worker-pool runtime (forced out of process, the record's hard deadline), shared
        by the properties that need it and closed by `close`."""
        if self._pool is None:
            self._pool = _runtime(self, pool=True)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def prepare(self, completion: str) -> str:
        """What the runtime hands the plugin: the cleaned tail (sandboxed code is left as is)."""
        if self.record.needs_sandbox:
            return completion
        text, bad = clean_tail(completion)
        return completion if text is None else text

    def call(self, texts: list[str], rows: list[Mapping], what: str) -> list:
        result, error = call_with_deadline(self.record.fn, (list(texts), list(rows)),
                                           self.options, self.deadline)
        if error is not None:
            fail(f"{what}: fn raised {type(error).__name__}: {short(str(error), 160)}")
        try:
            result = list(result)
        except TypeError:
            fail(f"{what}: fn returned {type(result).__name__}, not a list of results")
        if len(result) != len(texts):
            fail(f"{what}: fn returned {len(result)} results for {len(texts)} completions; return "
                 f"exactly one per completion, in order")
        return result

    def singles(self) -> list:
        """Each case scored alone (computed once)."""
        if self._singles is None:
            self._singles = [self.call([t], [c.row], f"case {c.label}")[0]
                             for t, c in zip(self.texts, self.cases)]
        return self._singles


def check_verifier(record: VerifierRecord, *, options: Mapping[str, Any] | None = None,
                   good: Sequence = (), bad: Sequence = (), hostile: Sequence | None = None,
                   slack_s: float = 1.0) -> list[CheckResult]:
    """Run the verifier battery on `record`; one CheckResult per property, in order.

    good / bad: (completion, row) pairs (or `Example`s) that must score 1 / below 1, on top of
    the record's own examples. hostile: (label, completion) pairs (default: the shipped list).
    slack_s: what a measured time may exceed time_budget_s by (process and pipe overhead)."""
    battery = Battery("verifier", record.name)
    cases = cases_for(record, good, bad)
    v = _Verifier(record, options or {}, cases)
    battery.check("record", lambda: _record(record))
    if battery.results[-1].status == "fail":
        for prop in VERIFIER_PROPERTIES[1:]:
            battery.check(prop, lambda: skip("the record itself is invalid"))
        return battery.results
    timings: list[tuple[str, float, Verdict]] = []
    inputs = list(hostile_completions() if hostile is None else hostile)
    try:
        battery.check("examples", lambda: _examples(v, timings))
        battery.check("columns", lambda: _columns(v))
        battery.check("one_per_completion", lambda: _one_per_completion(v))
        battery.check("rewards", lambda: _rewards(v))
        battery.check("categories", lambda: _categories(v))
        battery.check("picklable", lambda: _picklable(v))
        battery.check("deterministic", lambda: _deterministic(v))
        battery.check("hostile", lambda: _hostile(v, inputs, timings))
        battery.check("time_budget", lambda: _time_budget(v, timings, slack_s))
    finally:
        v.close()
    return battery.results


# --- the properties ---------------------------------------------------------------------------

def _record(record: VerifierRecord) -> str:
    record.validate()
    return f"{len(record.examples)} example(s); time_budget_s={record.time_budget_s:g}"


def _runtime(v: _Verifier, *, pool: bool) -> VerifierRuntime:
    """A runtime as training builds it (in_process honoured), or forced into a worker pool."""
    record = v.record if not pool or not v.record.in_process else dataclasses.replace(
        v.record, in_process=False)
    try:
        return VerifierRuntime(record, v.options, workers=1, cache=0)
    except Exception as exc:  # noqa: BLE001 - startup_check refusals, unpicklable records
        if "cannot be sent to a worker" in str(exc) or "cannot be pickled" in str(exc):
            fail(str(exc))
        skip(f"the runtime cannot start on this machine: {type(exc).__name__}: {short(str(exc), 200)}")
        raise AssertionError("unreachable")


def _timed_scores(runtime: VerifierRuntime, items: list[tuple[str, str, Mapping]],
                  timings: list) -> list[Verdict]:
    out = []
    for label, text, row in items:
        started = time.perf_counter()
        verdict = runtime.score([text], [row])[0]
        timings.append((label, time.perf_counter() - started, verdict))
        out.append(verdict)
    return out


def _examples(v: _Verifier, timings: list) -> str:
    checked = [c for c in v.cases if c.expect is not None]
    if not checked:
        skip("no example declares a reward: add VerifierRecord.examples=(Example(row, completion, "
             "reward), ...) so that scores can be checked")
    own = v.record.in_process  # scored in this process, as training does; else the shared pool
    runtime = _runtime(v, pool=False) if own else v.pool()
    try:
        if not runtime.wait_ready(120):
            fail("the verifier's worker process did not start within 120 s (see `picklable`)")
        verdicts = _timed_scores(runtime, [(c.label, c.completion, c.row) for c in checked], timings)
    finally:
        if own:
            runtime.close()
    wrong = []
    for c, got in zip(checked, verdicts):
        if c.expect == "bad":
            if got.reward >= 1.0 or got.is_infra:
                wrong.append(f"{c.label} must score below 1 as a model outcome, got {got.reward:g} "
                             f"({got.category.value}: {got.message})")
        elif abs(got.reward - float(c.expect)) > 1e-6:
            wrong.append(f"{c.label}: expected reward {float(c.expect):g}, got {got.reward:g} "
                         f"({got.category.value}: {got.message})")
    if wrong:
        fail("; ".join(wrong[:3]) + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""))
    return f"{len(checked)} case(s) scored as declared"


def _columns(v: _Verifier) -> str:
    declared = tuple(v.record.columns) + tuple(v.record.optional_columns)
    full = v.singles()
    rows = [{c: case.row[c] for c in declared if c in case.row} for case in v.cases]
    try:
        reduced = [v.call([t], [r], f"case {case.label} cut to its declared columns {declared}")[0]
                   for t, r, case in zip(v.texts, rows, v.cases)]
    except Exception as exc:
        if "KeyError" in str(exc):
            fail(f"it reads a column it does not declare ({exc}); add it to columns= (or "
                 f"optional_columns= when rows may lack it)")
        raise
    for case, a, b in zip(v.cases, full, reduced):
        if _outcome(a) != _outcome(b):
            fail(f"case {case.label}: the verdict changes when the row holds only the declared "
                 f"columns {declared} ({short(a)} vs {short(b)}): it reads an undeclared column")
    return f"declared {list(declared)}"


def _one_per_completion(v: _Verifier) -> str:
    singles = [_outcome(x) for x in v.singles()]
    n = len(v.cases)
    order = list(range(n)) * (3 if n < 3 else 1)
    for name, idx in (("all cases in one batch", order), ("the batch reversed", order[::-1])):
        got = v.call([v.texts[i] for i in idx], [v.cases[i].row for i in idx], name)
        for pos, (i, value) in enumerate(zip(idx, got)):
            if _outcome(value) != singles[i]:
                fail(f"{name}: result {pos} ({short(value)}) differs from scoring case "
                     f"{v.cases[i].label} alone ({short(v.singles()[i])}): results must follow "
                     f"the completions' order, one each")
    return f"batches of 1 and {len(order)}"


def _results(v: _Verifier) -> list[tuple[Case, Any]]:
    return list(zip(v.cases, v.singles()))


def _rewards(v: _Verifier) -> str:
    for case, value in _results(v):
        reward = value.reward if isinstance(value, Verdict) else value
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            fail(f"case {case.label}: returned {short(value)}; return a Verdict or a float in [0, 1]")
        if not math.isfinite(reward) or not 0.0 <= reward <= 1.0:
            fail(f"case {case.label}: reward {reward!r} is not a finite number in [0, 1]")
    return ""


def _categories(v: _Verifier) -> str:
    for case, value in _results(v):
        if not isinstance(value, Verdict):
            continue  # a float: the runtime gives it ok (1.0) or wrong_answer
        if not isinstance(value.category, Category):
            fail(f"case {case.label}: category {value.category!r} is not an rlsd_core.Category")
        if value.reward == 1.0 and value.category is not Category.OK:
            fail(f"case {case.label}: reward 1.0 with category {value.category.value!r}; a full "
                 f"reward is `ok` (accuracy counts `ok` verdicts)")
        if value.category is Category.OK and value.reward == 0.0:
            fail(f"case {case.label}: category ok with reward 0; use a failure category")
        if value.is_infra and case.label != "synthetic":
            fail(f"case {case.label}: infrastructure fault {value.category.value!r} on a "
                 f"well-formed example ({value.message}); training would mask every such sample")
    return ""


def _picklable(v: _Verifier) -> str:
    if v.record.in_process:
        note = "in_process: also checked in a worker"
    else:
        note = "loaded in a fresh worker"
    try:
        pickle.dumps(dataclasses.replace(v.record, cache_key=None, startup_check=None))
    except Exception as exc:  # noqa: BLE001
        fail(f"the record cannot be pickled for a worker process ({type(exc).__name__}: {exc}); "
             f"define fn at module level (no lambda or closure)")
    try:
        pickle.dumps(v.options)
    except Exception as exc:  # noqa: BLE001
        fail(f"the options cannot be pickled: {exc}")
    runtime = v.pool()
    if not runtime.wait_ready(120):
        got = runtime.score([v.texts[0]], [v.cases[0].row])[0]
        fail(f"a worker process could not load the record: {got.message}")
    return note


def _deterministic(v: _Verifier) -> str:
    for t, c in zip(v.texts, v.cases):
        # Three calls in a row on the same input: state that flips between calls shows too.
        seen = [_outcome(v.call([t], [c.row], f"case {c.label}, call {k + 1}")[0]) for k in range(3)]
        if len(set(seen)) > 1:
            if not v.record.cacheable:
                skip(f"verdicts differ between calls (case {c.label}); allowed: the record "
                     f"declares cacheable=False")
            fail(f"case {c.label}: {seen} from three calls on the same input; a cacheable "
                 f"verifier must be deterministic (or declare cacheable=False)")
    if v.record.cache_key is not None:
        for t, c in zip(v.texts, v.cases):
            keys = {v.record.cache_key(t, c.row, **v.options) for _ in range(2)}
            if len(keys) != 1:
                fail(f"case {c.label}: cache_key differs between calls: {keys}")
            key = keys.pop()
            if key is not None and not isinstance(key, str):
                fail(f"case {c.label}: cache_key returned {type(key).__name__}, not str or None")
    return ""


def _hostile(v: _Verifier, inputs: list[tuple[str, str]], timings: list) -> str:
    row = v.cases[0].row
    runtime = v.pool()
    if not runtime.wait_ready(120):
        skip("no worker process could start (see `picklable`)")
    verdicts = _timed_scores(runtime, [(label, text, row) for label, text in inputs], timings)
    broke = list(_BROKE) + ([] if v.record.needs_sandbox else [Category.MEMORY_LIMIT])
    bad = [(label, got) for (label, _), got in zip(inputs, verdicts) if got.category in broke]
    if bad:
        label, got = bad[0]
        fail(f"on {label!r}: {got.category.value}: {got.message}" +
             (f" (and {len(bad) - 1} more hostile input(s))" if len(bad) > 1 else ""))
    return f"{len(inputs)} hostile completions survived"


def _time_budget(v: _Verifier, timings: list, slack_s: float) -> str:
    if not timings:
        skip("nothing was scored through the runtime (see `examples` and `hostile`)")
    budget = v.record.time_budget_s
    # The pool's own kill (not a timeout the verifier reports, e.g. a sandboxed program's).
    killed_by_pool = f"verifier {v.record.name!r} exceeded its"
    killed = [(label, got) for label, _s, got in timings
              if got.category is Category.TIMEOUT and got.message.startswith(killed_by_pool)]
    if killed:
        label, got = killed[0]
        fail(f"{label} was killed at its time_budget_s={budget:g} ({got.message}); make it "
             f"faster on such input or declare a larger budget")
    slow = [(label, s) for label, s, _got in timings if s > budget + slack_s]
    if slow:
        label, s = max(slow, key=lambda x: x[1])
        fail(f"{label} took {s:.2f} s, over time_budget_s={budget:g} (+{slack_s:g} s slack)")
    worst = max(timings, key=lambda x: x[1])
    return f"slowest {worst[1]:.3f} s ({worst[0]})"
