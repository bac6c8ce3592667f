"""The verifier runtime: harness battery G01-G04 and the runtime's contracts.

Every battery test asserts the reward, the category, the time budget (the verifier's deadline
+ 1 s) and the host state afterwards (child processes, zombies, open fds, temp entries).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import psutil
import pytest

from hoststate import assert_restored, private_tmp, snapshot  # noqa: F401 - autouse fixture
from rlsd_core import Category, Verdict, VerifierRecord
from rlsd_core import clean_tail
from rlsd_core.rewards import VerifierRuntime
from rlsd_verifiers.exact_match import RECORD as EXACT
from verifier_plugins import BEHAVE, BEHAVE_IN_PROCESS, BEHAVE_NOCACHE

ROW = {"answer": "ok"}


@pytest.fixture(scope="module")
def rt():
    with VerifierRuntime(BEHAVE_NOCACHE, workers=2, timeout=1.0) as runtime:
        assert runtime.wait_ready(60)
        yield runtime


def _score(runtime, completions, budget):
    before = snapshot()
    t0 = time.monotonic()
    out = runtime.score(completions, [ROW] * len(completions))
    elapsed = time.monotonic() - t0
    assert elapsed < budget, f"took {elapsed:.2f} s (budget {budget} s)"
    assert_restored(before)
    return out


# -- G01 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ValueError", "KeyboardInterrupt", "SystemExit", "CustomBase"])
def test_g01_plugin_raises_is_verifier_error_and_batch_goes_on(rt, kind):
    out = _score(rt, ["ok", f"raise {kind}", "nope", "ok"], budget=rt.timeout + 1)
    assert [v.category for v in out] == [Category.OK, Category.VERIFIER_ERROR,
                                         Category.WRONG_ANSWER, Category.OK]
    assert [v.reward for v in out] == [1.0, 0.0, 0.0, 1.0]
    assert kind in out[1].message
    assert out[1].is_infra


def test_g01_in_process_mode_catches_base_exceptions_too():
    with VerifierRuntime(BEHAVE_IN_PROCESS) as runtime:
        out = runtime.score(["raise SystemExit", "raise KeyboardInterrupt", "ok"], [ROW] * 3)
    assert [v.category for v in out] == [Category.VERIFIER_ERROR, Category.VERIFIER_ERROR, Category.OK]


# -- G02 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["None", "nan", "inf", "-0.5", "1.5", "str", "two", "zero",
                                  "generator-that-raises"])
def test_g02_garbage_results_are_rejected(rt, kind):
    out = _score(rt, ["ok", f"return {kind}", "ok"], budget=rt.timeout + 1)
    assert out[0].category is Category.OK and out[2].category is Category.OK
    bad = out[1]
    assert bad.category is Category.VERIFIER_ERROR
    assert bad.reward == 0.0  # never NaN, never broadcast to the neighbours


# -- G03 --------------------------------------------------------------------------------------
def test_g03_worker_sigkilled_mid_call_is_crash_and_pool_recovers(rt):
    before = snapshot()
    pids = rt.worker_pids()
    killer = threading.Timer(0.3, lambda: [os.kill(p, signal.SIGKILL) for p in pids])
    killer.start()
    t0 = time.monotonic()
    out = rt.score(["sleep 0.8", "sleep 0.8"], [ROW] * 2)
    assert time.monotonic() - t0 < rt.timeout + 1
    killer.join()
    assert [v.category for v in out] == [Category.CRASH, Category.CRASH]
    assert "signal 9" in out[0].message
    assert [v.category for v in rt.score(["ok", "ok"], [ROW] * 2)] == [Category.OK, Category.OK]
    assert_restored(before)
    assert set(rt.worker_pids()).isdisjoint(pids)


@pytest.mark.parametrize("kind", ["exit", "abort"])
def test_worker_that_dies_is_crash(rt, kind):
    out = _score(rt, [kind, "ok"], budget=rt.timeout + 1)
    assert out[0].category is Category.CRASH and out[0].reward == 0.0
    assert out[1].category is Category.OK


def test_hard_deadline_kills_and_replaces_the_worker(rt):
    out = _score(rt, ["sleep 30", "ok"], budget=rt.timeout + 1)
    assert out[0].category is Category.TIMEOUT
    assert out[1].category is Category.OK
    assert rt.score(["ok"], [ROW])[0].category is Category.OK


def test_timeout_kills_what_the_verifier_spawned(rt):
    before = snapshot()
    out = rt.score(["fork-sleeper"], [ROW])
    assert out[0].category is Category.TIMEOUT
    assert_restored(before)  # the grandchild went with the worker's process group


# -- inputs -------------------------------------------------------------------------------------
def test_invalid_inputs_never_reach_the_verifier(rt):
    out = rt.score([None, b"ok", 5, {"a": 1}, "ok"], [ROW] * 5)
    assert [v.category for v in out[:4]] == [Category.INVALID_INPUT] * 4
    assert out[4].category is Category.OK
    out = rt.score(["ok", "ok"], [{}, "not a mapping"])
    assert [v.category for v in out] == [Category.INVALID_INPUT] * 2
    with pytest.raises(ValueError):
        rt.score(["ok"], [ROW, ROW])


def test_clean_tail_policy():
    assert clean_tail(None)[1].category is Category.INVALID_INPUT
    text, bad = clean_tail("\uff11\uff12\u200b3 \u2212 x\u202e")
    assert bad is None and text == "123 - x"
    t0 = time.perf_counter()
    text, bad = clean_tail("9" * 1_000_000)
    assert time.perf_counter() - t0 < 0.05
    assert bad.category is Category.INPUT_TOO_LARGE
    text, bad = clean_tail("x" * 1_000_000 + " so the answer is \\boxed{3}", max_chars=100)
    assert bad is None and text.endswith("\\boxed{3}") and not text.startswith("x")
    text, bad = clean_tail("\\boxed{1}" * 10_000, max_chars=100)
    assert bad is None and text.startswith("\\boxed{1}")


def test_unpicklable_verifier_fails_loudly():
    rec = VerifierRecord(name="local", fn=lambda c, r: [1.0] * len(c))
    with pytest.raises(ValueError, match="module level"):
        VerifierRuntime(rec)


# -- in-process mode ------------------------------------------------------------------------
def test_in_process_records_start_no_processes():
    before = psutil.Process().children(recursive=True)
    with VerifierRuntime(EXACT, workers=4) as runtime:
        assert runtime.worker_pids() == []
        out = runtime.score(["the answer is \\boxed{42}", "41", None], [{"answer": "42"}] * 3)
        assert psutil.Process().children(recursive=True) == before
    assert [v.category for v in out] == [Category.OK, Category.WRONG_ANSWER, Category.INVALID_INPUT]


# -- the reward cache -----------------------------------------------------------------------
def test_cache_verifies_each_distinct_answer_of_a_group_once():
    with VerifierRuntime(BEHAVE, workers=2) as runtime:
        group = ["ok"] * 5 + ["nope"] * 3  # 8 samples, 2 distinct answers
        out = runtime.score(group, [ROW] * 8)
        assert [v.category for v in out] == [Category.OK] * 5 + [Category.WRONG_ANSWER] * 3
        s = runtime.stats
        assert s["verifier_calls"] == 2 and s["cache_hits"] == 6 and s["cache_hit_rate"] == 0.75
        runtime.score(group, [ROW] * 8)
        assert runtime.stats["verifier_calls"] == 2  # all 8 served from the cache
        runtime.score(["ok"], [{"answer": "other gold"}])
        assert runtime.stats["verifier_calls"] == 3  # the gold is part of the key


def test_cache_skips_timeouts_and_infra_faults():
    with VerifierRuntime(BEHAVE, workers=1, timeout=0.5) as runtime:
        runtime.score(["sleep 5", "raise ValueError"], [ROW] * 2)
        runtime.score(["sleep 5", "raise ValueError"], [ROW] * 2)
        assert runtime.stats["verifier_calls"] == 4 and runtime.stats["cache_hits"] == 0


def test_opted_out_verifier_is_never_cached(rt):
    calls = rt.stats["verifier_calls"]
    rt.score(["ok"] * 4, [ROW] * 4)
    assert rt.stats["verifier_calls"] == calls + 4


# -- threads, asyncio, signals --------------------------------------------------------------
def test_usable_from_many_threads(rt):
    results: dict[int, list[Verdict]] = {}

    def work(i):
        results[i] = rt.score(["ok", "nope"] * 5, [ROW] * 10)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    for out in results.values():
        assert [v.category for v in out] == [Category.OK, Category.WRONG_ANSWER] * 5


def test_usable_from_asyncio(rt):
    async def main():
        tick = 0

        async def ticker():
            nonlocal tick
            while True:
                await asyncio.sleep(0.01)
                tick += 1

        task = asyncio.create_task(ticker())
        out = await rt.ascore(["sleep 0.3", "ok"], [ROW] * 2)
        task.cancel()
        return out, tick

    out, tick = asyncio.run(main())
    assert [v.category for v in out] == [Category.WRONG_ANSWER, Category.OK]
    assert tick >= 10  # the event loop kept running while the workers scored


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs main thread")
def test_callers_alarm_is_untouched_by_a_timeout(rt):
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(time.monotonic()))
    try:
        t0 = time.monotonic()
        signal.alarm(2)
        out = rt.score(["sleep 30"], [ROW])  # a timeout, kept without any signal in this process
        assert out[0].category is Category.TIMEOUT
        while not fired and time.monotonic() - t0 < 4:
            time.sleep(0.05)
        assert fired and 1.9 < fired[0] - t0 < 3.0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_close_leaves_nothing_behind():
    before = snapshot()
    runtime = VerifierRuntime(BEHAVE_NOCACHE, workers=2)
    assert runtime.wait_ready(60)
    assert len(runtime.worker_pids()) == 2
    runtime.score(["ok"], [ROW])
    runtime.close()
    assert_restored(before)
    assert not runtime._pool._thread.is_alive()
    with pytest.raises(RuntimeError):
        runtime.score(["ok"], [ROW])
