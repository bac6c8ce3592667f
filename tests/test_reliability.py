"""The reliability battery: `rlsd verify`, `train`, `eval` and `--resume` under bad input and
faults, as careless and hostile users would drive them (issue 21; the style of
shared/spec/bad-inputs.md). Each case names its class and what is expected:

  D  nothing lost: outputs and checkpoints are the previous complete ones or the new complete
     ones, under SIGINT, SIGTERM, SIGKILL and a full disk
  H  nothing hangs: a dead worker, a sleeping in_process verifier
  F  faults are not scored as answers: crash/timeout/memory of the verifier itself are
     infrastructure faults (masked in training), the same in `rlsd verify`
  K  nothing dies without a word: os._exit in an in_process verifier
  O  output stays valid: a verifier's prints never reach the JSONL on stdout; no NaN in JSON
  T  no traceback for a user's mistake: one or two lines, what / where / fix, exit 2
  A  nothing wrong is accepted silently: checked before any row is scored or model loaded
  L  a leak the metric could not see: an injector that writes into the row

Full disks are simulated without privileges: RLIMIT_FSIZE in a subprocess (a real write that
fails, EFBIG), or OSError(ENOSPC) raised in-process from the one call that writes. Every
subprocess is waited for; worker processes are checked gone. Cases that need a real model use
the tiny model (no warm-up) and one shared 2-step run.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

import reliability_plugins
from plugin_dist import install as install_even
from rlsd_core import Category, OptionsError, Verdict, check_options
from rlsd_core.cli import main as rlsd_main
from rlsd_core.config import build_config
from rlsd_core.data import json_safe
from rlsd_core.data import files as files_mod
from rlsd_core.loop import checkpoint
from rlsd_core.plugins import get_plugin_manager
from rlsd_core.rewards import VerifierRuntime
from rlsd_core.rewards.inline import install_exit_guard

ROOT = Path(__file__).resolve().parents[1]
ANSWER = {"answer": "ok"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = reliability_plugins.install(tmp_path_factory.mktemp("rsite"))
    install_even(site)  # even_length + the stall hook (tests/plugin_dist.py)
    return site


@pytest.fixture
def plugins(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    return get_plugin_manager()


def _env(site: Path, **extra) -> dict:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = rlsd_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def sub(site, *args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlsd_core.cli", *map(str, args)], cwd=ROOT,
                          env=env or _env(site), capture_output=True, text=True, timeout=240, **kw)


def one_error(err: str, *words: str, only_rlsd: bool = False) -> None:
    """The error style: no traceback, one or two lines, naming what it is about. only_rlsd:
    count rlsd's own lines only (a subprocess that trained also shows transformers' warnings)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()
             and (not only_rlsd or line.startswith("rlsd"))]
    assert 1 <= len(lines) <= 2, err
    for word in words:
        assert word in err, (word, err)


def rows_file(path: Path, completions, answer="ok") -> Path:
    path.write_text("".join(json.dumps({"completion": c, "answer": answer}) + "\n" for c in completions))
    return path


def _gone(pids, within=10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------
# D: nothing lost
# ---------------------------------------------------------------------------------------------

def test_d01_verify_output_equal_to_input_is_refused(tmp_path, capsys, plugins):
    src = rows_file(tmp_path / "in.jsonl", ["ok", "no"])
    before = src.read_bytes()
    rc, out, err = cli(capsys, "verify", "--verifier", "exact_match", src, "-o", src)
    assert rc == 2 and out == ""
    one_error(err, "is the input file")
    assert src.read_bytes() == before


def test_d02_verify_full_disk_keeps_previous_output(tmp_path, capsys, plugins, monkeypatch):
    src = rows_file(tmp_path / "in.jsonl", ["ok"] * 50)
    dst = tmp_path / "out.jsonl"
    dst.write_text("previous complete output\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_mod.os, "fsync", full)  # the write's last step fails
    rc, _out, err = cli(capsys, "verify", "--verifier", "exact_match", src, "-o", dst)
    monkeypatch.undo()
    assert rc == 1
    one_error(err, "disk is full", "out.jsonl")
    assert dst.read_text() == "previous complete output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"], "no temp file"


def test_d03_verify_real_write_failure_under_rlimit_fsize(tmp_path, site):
    """A real failing write (RLIMIT_FSIZE: the kernel refuses bytes past 4 KiB with EFBIG,
    Python ignores SIGXFSZ) in a subprocess: the previous output survives whole."""
    src = rows_file(tmp_path / "in.jsonl", [f"answer number {i}" for i in range(400)])
    dst = tmp_path / "out.jsonl"
    dst.write_text("previous complete output\n")
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # noqa: E731
    proc = sub(site, "verify", "--verifier", "exact_match", src, "-o", dst, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    one_error(proc.stderr, "disk is full")
    assert dst.read_text() == "previous complete output\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_d04_verify_stopped_mid_scoring_keeps_previous_output(tmp_path, site, sig):
    src = rows_file(tmp_path / "in.jsonl", ["ok"] + ["sleep 0.5"] * 40)
    dst = tmp_path / "out.jsonl"
    dst.write_text("previous complete output\n")
    proc = subprocess.Popen([sys.executable, "-m", "rlsd_core.cli", "verify", "--verifier",
                             "r_sleep", str(src), "-o", str(dst), "--workers", "1", "--timeout", "5"],
                            cwd=ROOT, env=_env(site), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    time.sleep(1.0)  # the worker has started scoring
    workers = [c.pid for c in me.children(recursive=True)]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert dst.read_text() == "previous complete output\n"
    assert _gone(workers), "worker processes left behind"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL  # its hidden temp file may stay; never read
        return
    assert proc.returncode == 130
    one_error(err, "interrupted", "unchanged")
    assert out == ""
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, site):
    """One real 2-step run of the tiny model with a checkpoint after each step."""
    base = tmp_path_factory.mktemp("trained")
    sys.path.insert(0, str(site))
    try:
        cfg = build_config(overrides=[
            ("tasks", [{"name": "rev", "source": "reverse", "verifier": "even_length",
                        "eval_size": 3, "train_size": 16}]),
            ("steps", 2), ("threads", 1), ("checkpoint_every", 1), ("warmup.enabled", "false"),
            ("output_dir", str(base / "run")), ("rollout.prompts_per_step", 2),
            ("rollout.group_size", 2), ("rollout.max_new_tokens", 4), ("eval.every", 0),
            ("eval.max_new_tokens", 4), ("log.console", False), ("log.plot", False),
            ("log.tensorboard", "false")])
        from rlsd_core.loop import train
        train(cfg, get_plugin_manager())
    finally:
        sys.path.remove(str(site))
    return base / "run"


def _copy_run(run: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(run, dst)
    return dst


def test_d05_checkpoint_full_disk_cleans_up_and_keeps_the_previous(tmp_path, trained, plugins,
                                                                   monkeypatch):
    from rlsd_core import loop as T

    run_dir = _copy_run(trained, tmp_path / "run")
    cfg = build_config(run_dir / "config.yaml", [("output_dir", str(run_dir))])
    run = T.setup(cfg, plugins, run_dir=run_dir)
    try:
        def half_then_full(obj, path, *a, **k):
            Path(path).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint.torch, "save", half_then_full)
        with pytest.raises(OSError):
            checkpoint.save(run, 3, keep=2)
    finally:
        run.parts.close()
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002"]
    assert checkpoint.latest(run_dir).name == "step-000002"


def test_d06_kill_during_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, trained, monkeypatch):
    run_dir = _copy_run(trained, tmp_path / "run")
    real = checkpoint.shutil.rmtree

    def killed_half_way(path, *a, **k):
        victim = Path(path)
        (victim / "model.safetensors").unlink()  # the kill lands after the first file went
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.prune(run_dir, keep=1)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real)
    visible = [s for s, _ in checkpoint.complete(run_dir)]
    assert visible == [2], "a half-deleted step-000001 must not look complete"
    checkpoint.drop_temporaries(run_dir)  # what --resume does first
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]


def test_d07_failed_resume_leaves_config_yaml_alone(tmp_path, trained, capsys, plugins):
    run_dir = _copy_run(trained, tmp_path / "run")
    before = (run_dir / "config.yaml").read_bytes()
    rc, _out, err = cli(capsys, "train", "--resume", run_dir, "--set",
                        "tasks=[{name: other, source: addition}]")
    assert rc == 2
    one_error(err, "cannot resume", "other")
    assert (run_dir / "config.yaml").read_bytes() == before
    rc, _out, err = cli(capsys, "train", "--resume", run_dir, "--check")
    assert rc == 0, err  # a plain --resume still works


@pytest.mark.parametrize("damage", ["truncate-weights", "zero-state"])
def test_d08_damaged_newest_checkpoint_falls_back_in_resume_and_eval(tmp_path, trained, capsys,
                                                                   plugins, damage):
    run_dir = _copy_run(trained, tmp_path / "run")
    newest = run_dir / "checkpoints" / "step-000002"
    if damage == "truncate-weights":
        f = newest / "model.safetensors"
        os.truncate(f, f.stat().st_size // 2)
    else:
        (newest / checkpoint.STATE_FILE).write_bytes(b"")
    assert checkpoint.intact(newest) is not None
    assert checkpoint.latest(run_dir).name == "step-000001"

    rc, _out, err = cli(capsys, "train", "--resume", run_dir, "--check")
    assert rc == 0 and "skipping damaged checkpoint step-000002" in err and "Traceback" not in err

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "tasks": [
        {"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 2}]}))
    out_json = tmp_path / "eval.json"
    rc, _out, err = cli(capsys, "eval", newest, "--suite", suite, "--threads", 1,
                        "--max-new-tokens", 4, "--json", out_json)
    assert rc == 0, err
    assert "damaged" in err and "evaluating step-000001" in err and "Traceback" not in err
    assert json.loads(out_json.read_text())["resolved"].endswith("step-000001")


def test_d08_every_checkpoint_damaged_is_one_line(tmp_path, trained, capsys, plugins):
    run_dir = _copy_run(trained, tmp_path / "run")
    for ckpt in (run_dir / "checkpoints").iterdir():
        (ckpt / checkpoint.STATE_FILE).write_bytes(b"")
    rc, _out, err = cli(capsys, "train", "--resume", run_dir, "--check")
    assert rc == 2
    one_error(err, "damaged", "start the run again")


@pytest.mark.slow  # two real training processes (~30 s unloaded): the claim is end to end
def test_d09_sigint_during_training_stops_cleanly_and_resume_works(tmp_path, site):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "seed": 1, "steps": 3, "threads": 1, "checkpoint_every": 1, "warmup": {"enabled": "false"},
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 2,
                   "train_size": 16}],
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"every": 0, "max_new_tokens": 4},
        "log": {"console": False, "plot": False, "tensorboard": "false"}}))
    run_dir = tmp_path / "run"
    env = _env(site, RLSD_CACHE=str(tmp_path / "cache"), RESUME_TEST_STALL_AT="2")
    proc = subprocess.Popen([sys.executable, "-m", "rlsd_core.cli", "train", "-c", str(cfg),
                             "--output_dir", str(run_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 200
    while not (run_dir / "stalled").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # mid-step 2: after its rollout, before its update
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    one_error(err, "training stopped", "step-000001", f"rlsd train --resume {run_dir}",
              only_rlsd=True)
    assert [s for s, _ in checkpoint.complete(run_dir)] == [1]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    env.pop("RESUME_TEST_STALL_AT")
    resumed = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "train", "--resume",
                              str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3], "each step logged exactly once"


# ---------------------------------------------------------------------------------------------
# H: nothing hangs
# ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(120)  # a regression hangs: fail it instead
def test_h01_worker_lost_while_a_sample_is_sent_to_it_is_replaced(plugins):
    """The deadlock: the dispatcher sent a sample to a worker whose pipe had just broken,
    dropped the worker, and then waited with no deadline while the sample sat in the queue
    (workers were replaced only at the top of its loop, which nothing woke it up to reach).
    Deterministic here: the worker's pipe is broken from the parent's side and one sample is
    sent (one wake-up); the old code hung on it in 2 of 2 runs."""
    record = plugins.registry.verifier("r_sleep")
    with VerifierRuntime(record, workers=1, timeout=5) as rt:
        assert rt.wait_ready(120)
        (worker,) = rt._pool._workers
        real = worker.conn

        class Broken:  # the pipe of a worker that died before the dispatcher noticed
            def send(self, _msg):
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")

            def __getattr__(self, name):
                return getattr(real, name)

        worker.conn = Broken()
        t0 = time.monotonic()
        out = rt.score(["ok"], [ANSWER])
        assert time.monotonic() - t0 < 60
        assert [v.category for v in out] == [Category.OK]
        assert worker.proc.poll() is not None, "the broken worker was replaced"


@pytest.mark.timeout(240)
def test_h02_every_sample_killing_its_worker_never_hangs(plugins):
    record = get_plugin_manager().registry.verifier("r_exit")
    with VerifierRuntime(record, workers=1, timeout=5) as rt:
        t0 = time.monotonic()
        out = rt.score(["exit"] * 8 + ["ok"], [ANSWER] * 9)
        elapsed = time.monotonic() - t0
    assert [v.category for v in out] == [Category.CRASH] * 8 + [Category.OK]
    assert all(v.is_infra and "r_exit" in v.message for v in out[:8])
    assert elapsed < 8 * 10, elapsed


def test_h03_in_process_verifier_that_sleeps_gets_a_deadline(plugins):
    record = get_plugin_manager().registry.verifier("r_sleep_inproc")
    assert record.in_process
    with VerifierRuntime(record, timeout=1.0) as rt:
        t0 = time.monotonic()
        with pytest.warns(RuntimeWarning, match="worker processes from now on"):
            out = rt.score(["ok", "sleep 4", "ok", "no"], [ANSWER] * 4)
        assert time.monotonic() - t0 < 1.0 + 1.0 + 60  # deadline + 1 s, plus a pool start
        assert [v.category for v in out] == [Category.OK, Category.TIMEOUT, Category.OK,
                                             Category.WRONG_ANSWER]
        assert out[1].is_infra and "in_process" in out[1].message
        # from now on in the pool, where the deadline is hard
        t0 = time.monotonic()
        assert rt.score(["sleep 30"], [ANSWER])[0].category is Category.TIMEOUT
        assert time.monotonic() - t0 < 1.0 + 1.0 + 5
        assert rt.wait_ready(60) and rt.worker_pids()


def test_h04_rlsd_verify_with_a_sleeping_in_process_verifier_finishes(tmp_path, capsys, plugins):
    src = rows_file(tmp_path / "in.jsonl", ["ok", "sleep 3", "ok"])
    rc, out, err = cli(capsys, "verify", "--verifier", "r_sleep_inproc", src, "--timeout", "0.5")
    assert rc == 0, err
    cats = [json.loads(x)["category"] for x in out.splitlines()]
    assert cats == ["ok", "timeout", "ok"]


# ---------------------------------------------------------------------------------------------
# F: faults of the verifier are not scored as the model's answers
# ---------------------------------------------------------------------------------------------

def test_f01_crash_timeout_memory_are_infra_faults_and_verify_says_so(tmp_path, capsys, plugins):
    reg = get_plugin_manager().registry
    with VerifierRuntime(reg.verifier("r_exit"), timeout=5) as rt:
        crash = rt.score(["exit"], [ANSWER])[0]
    with VerifierRuntime(reg.verifier("r_sleep"), timeout=0.5) as rt:
        timeout = rt.score(["sleep 10"], [ANSWER])[0]
    for name in ("r_oom", "r_oom_inproc"):
        with VerifierRuntime(reg.verifier(name), timeout=5) as rt:
            (oom,) = rt.score(["oom"], [ANSWER])
        assert oom.category is Category.MEMORY_LIMIT and oom.is_infra and name in oom.message
    assert crash.category is Category.CRASH and crash.is_infra
    assert timeout.category is Category.TIMEOUT and timeout.is_infra
    # The same categories returned BY a verifier (a sandboxed program that timed out) are the
    # model's outcome, trained on; and a plugin cannot mark its own verdicts as harness faults.
    assert not Verdict.fail(Category.TIMEOUT, "the program ran too long").is_infra
    from rlsd_core.rewards import coerce_result
    assert not coerce_result(Verdict.harness(Category.CRASH, "claimed")).is_infra

    src = rows_file(tmp_path / "in.jsonl", ["exit", "ok"])
    rc, out, err = cli(capsys, "verify", "--verifier", "r_exit", src, "--workers", 1)
    assert rc == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert [(r["category"], r["infra"]) for r in rows] == [("crash", True), ("ok", False)]
    assert "infrastructure faults (infra: true, masked in training): 1" in err


def test_f02_training_masks_samples_whose_verifier_crashed_or_timed_out(tmp_path, plugins):
    from rlsd_core import algo
    from rlsd_core import loop as T

    cfg = build_config(overrides=list({
        "steps": 1, "threads": 1, "output_dir": str(tmp_path / "run"), "warmup.enabled": "false",
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "r_train", "eval_size": 2,
                   "train_size": 32}],
        "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
        "log.console": False, "log.plot": False, "scheduler.name": "constant"}.items()))
    from rlsd_core.loop import stages

    run = T.setup(cfg, plugins)
    seen, got = [], {}
    orig_loss, orig_verify = algo.policy_loss, stages.verify

    def spy_loss(logprobs, old, adv, mask, **kw):
        seen.append(mask.clone())
        return orig_loss(logprobs, old, adv, mask, **kw)

    def spy_verify(parts, batch, out):
        got["texts"], got["verified"] = out.texts, orig_verify(parts, batch, out)
        return got["verified"]

    algo.policy_loss, stages.verify = spy_loss, spy_verify
    try:
        m = T.train_step(run, 1)
    finally:
        algo.policy_loss, stages.verify = orig_loss, orig_verify
        run.parts.close()
    verified = got["verified"]
    faults = [i for i, t in enumerate(got["texts"]) if len(t) % 4 in (1, 2)]
    assert [i for i, v in enumerate(verified.verdicts) if v.is_infra] == faults
    assert m["infra_masked"] == len(faults)
    assert m.get("infra/crash", 0) + m.get("infra/timeout", 0) == len(faults)
    if faults:
        assert not seen[0][faults].any(), "a crashed or timed-out sample must not train"


# ---------------------------------------------------------------------------------------------
# K: nothing dies without a word
# ---------------------------------------------------------------------------------------------

def test_k01_os_exit_in_an_in_process_verifier_is_contained_and_named(tmp_path, site):
    src = rows_file(tmp_path / "in.jsonl", ["ok", "exit", "ok"])
    proc = sub(site, "verify", "--verifier", "r_exit_inproc", src)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["category"] for r in rows] == ["ok", "verifier_error", "ok"]
    assert "r_exit_inproc" in rows[1]["message"] and "os._exit" in rows[1]["message"]


def test_k02_the_exit_guard_only_acts_inside_a_verifier_call():
    import rlsd_core.rewards.inline as inline

    install_exit_guard()
    assert os._exit is inline._guarded_exit
    pid = os.fork()
    if pid == 0:  # a plain os._exit outside any verifier call is the real one
        os._exit(7)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


# ---------------------------------------------------------------------------------------------
# O: output stays valid
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["r_print", "r_print_inproc"])
def test_o01_verifier_prints_never_reach_the_jsonl_on_stdout(tmp_path, site, name):
    src = rows_file(tmp_path / "in.jsonl", ["ok", "no"])
    proc = sub(site, "verify", "--verifier", name, src, "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]  # every line is JSON
    assert [r["reward"] for r in rows] == [1.0, 0.0]
    assert "NOISE FROM THE VERIFIER" in proc.stderr


def test_o02_nan_is_never_read_or_written_as_json(tmp_path, capsys, plugins):
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "ok", "answer": "ok"}\n{"completion": "x", "answer": NaN}\n')
    rc, out, err = cli(capsys, "verify", "--verifier", "exact_match", src)
    assert rc == 2 and out == ""
    one_error(err, "in.jsonl:2", "NaN")
    assert json.dumps(json_safe({"a": [float("inf"), 1.0], "b": float("nan")}),
                      allow_nan=False) == '{"a": [null, 1.0], "b": null}'


# ---------------------------------------------------------------------------------------------
# T: no traceback for a user's mistake
# ---------------------------------------------------------------------------------------------

def test_t01_invalid_utf8_in_an_input_a_task_file_and_a_config(tmp_path, capsys, plugins):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"completion": "ok", "answer": "ok"}\n{"completion": "\xff\xfe"}\n')
    rc, _out, err = cli(capsys, "verify", "--verifier", "exact_match", bad)
    assert rc == 2
    one_error(err, "bad.jsonl:2", "UTF-8")
    rc, _out, err = cli(capsys, "train", "--check", "--set",
                        f"tasks=[{{name: t, path: {bad}}}]")
    assert rc == 2
    one_error(err, "bad.jsonl:2", "UTF-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"steps: 2\nseed: \xff\n")
    rc, _out, err = cli(capsys, "train", "--check", "-c", cfg)
    assert rc == 2
    one_error(err, "cfg.yaml", "UTF-8")


@pytest.mark.parametrize("where", ["missing-dir", "is-a-file", "a-directory", "not-writable"])
def test_t02_unusable_output_path_fails_before_scoring(tmp_path, capsys, plugins, monkeypatch, where):
    src = rows_file(tmp_path / "in.jsonl", ["ok"])
    target = {"missing-dir": tmp_path / "nope" / "out.jsonl", "is-a-file": src / "out.jsonl",
              "a-directory": tmp_path, "not-writable": tmp_path / "out.jsonl"}[where]
    if where == "not-writable":  # as root chmod does not stop writes: refuse the create itself
        def denied(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
        monkeypatch.setattr(files_mod.tempfile, "mkstemp", denied)
    rc, _out, err = cli(capsys, "verify", "--verifier", "exact_match", src, "-o", target)
    assert rc == 2
    one_error(err, "cannot use", str(target))


def test_t03_closed_stdout_pipe_is_quiet(tmp_path, site):
    src = rows_file(tmp_path / "in.jsonl", ["ok"] * 5000)
    proc = subprocess.Popen([sys.executable, "-m", "rlsd_core.cli", "verify", "--verifier",
                             "exact_match", str(src)], cwd=ROOT, env=_env(site),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # the reader went away (`| head`)
    err = proc.stderr.read().decode()
    proc.wait(120)
    assert proc.returncode == 141 and "Traceback" not in err, err


@pytest.mark.parametrize("flags, words", [
    (["--optim.lr", ".inf"], ["optim.lr", "finite"]),
    (["--optim.lr", "nan"], ["optim.lr"]),
    (["--rollout.temperature", ".inf"], ["rollout.temperature", "finite"]),
    (["--optim.betas", "[1.5, 0.9]"], ["optim.betas", "less than 1"]),
    (["--rollout.engine_options", "{bogus: 1}"], ["engine_options", "bogus", "batch_size"]),
    (["--set", "tasks.0.verifier_options={ignore_cas: true}"], ["tasks[0]", "ignore_cas"]),
    (["--set", "tasks.1.injector_options={template: 'no fields'}"], ["tasks[1].injector_options",
                                                                     "{question}"]),
])
def test_t04_bad_config_values_are_one_error_before_any_model_loads(capsys, plugins, flags, words):
    rc, _out, err = cli(capsys, "train", "--check", *flags)
    assert rc == 2
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


def test_t05_cuda_without_a_gpu_and_vllm_without_vllm(capsys, plugins):
    import importlib.util
    if not torch.cuda.is_available():
        rc, _out, err = cli(capsys, "train", "--check", "--model.device", "cuda")
        assert rc == 2
        one_error(err, "model.device", "cpu")
    if importlib.util.find_spec("vllm") is None:
        rc, _out, err = cli(capsys, "train", "--check", "--rollout.engine", "vllm")
        assert rc == 2
        one_error(err, "rollout.engine", "pip install")


def test_t06_hub_id_offline_is_one_error(tmp_path, site):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "tasks": [{"name": "rev", "source": "reverse",
                                                             "eval_size": 2}]}))
    proc = sub(site, "eval", "nosuchorg/nosuchmodel", "--suite", suite,
               env=_env(site, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2
    one_error(proc.stderr, "nosuchorg/nosuchmodel", "download")


@pytest.mark.parametrize("injector, words", [("r_raise", ["r_raise", "this injector is broken"]),
                                             ("r_wrong_type", ["r_wrong_type", "returned str"])])
def test_t07_broken_injector_is_named_before_any_model_loads(capsys, plugins, injector, words):
    rc, _out, err = cli(capsys, "train", "--check", "--set", f"tasks.0.injector={injector}")
    assert rc == 2
    one_error(err, *words)


def test_t08_scheduler_returning_nan_is_named(capsys, plugins):
    rc, _out, err = cli(capsys, "train", "--check", "--scheduler.name", "r_nan")
    assert rc == 2
    one_error(err, "r_nan", "nan")


def test_t09_disk_full_during_training_says_what_to_resume_from(tmp_path, capsys, plugins,
                                                             monkeypatch, trained):
    import rlsd_core.loop as loop

    def full(cfg, pm, *, reporter, run_dir, resume):
        for ckpt in (trained / "checkpoints").iterdir():
            __import__("shutil").copytree(ckpt, run_dir / "checkpoints" / ckpt.name)
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "checkpoints"))

    monkeypatch.setattr(loop, "train", full)
    rc, _out, err = cli(capsys, "train", "--output_dir", tmp_path / "run")
    assert rc == 1
    one_error(err, "disk is full", "step-000002", "--resume")


def test_t10_a_real_bug_shows_a_traceback_and_asks_for_a_report(capsys, plugins, monkeypatch):
    import rlsd_core.cli.verify as verify_cli

    monkeypatch.setattr(verify_cli, "read_rows", lambda path: 1 / 0)
    rc, _out, err = cli(capsys, "verify", "--verifier", "exact_match", "x.jsonl")
    assert rc == 1 and "Traceback" in err and "ZeroDivisionError" in err and "report" in err


def test_t11_debug_flag_shows_the_traceback_of_a_user_error(tmp_path, capsys, plugins):
    rc, _out, err = cli(capsys, "--debug", "verify", "--verifier", "exact_match", tmp_path / "none")
    assert rc == 2 and "Traceback" in err and "does not exist" in err


# ---------------------------------------------------------------------------------------------
# A: nothing wrong accepted silently
# ---------------------------------------------------------------------------------------------

def test_a01_empty_input_is_an_error(tmp_path, capsys, plugins):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    rc, out, err = cli(capsys, "verify", "--verifier", "exact_match", empty)
    assert rc == 2 and out == ""
    one_error(err, "no rows")


@pytest.mark.parametrize("n", [0, -1])
def test_a02_workers_below_one_is_an_error(tmp_path, capsys, plugins, n):
    src = rows_file(tmp_path / "in.jsonl", ["ok"])
    rc, _out, err = cli(capsys, "verify", "--verifier", "math", src, f"--workers={n}")
    assert rc == 2
    one_error(err, "--workers")


def test_a03_workers_far_above_the_cpu_count_are_capped_with_a_line(tmp_path, capsys, plugins):
    src = rows_file(tmp_path / "in.jsonl", ["ok"])
    before = len(psutil.Process().children(recursive=True))
    rc, _out, err = cli(capsys, "verify", "--verifier", "math", src, "--workers", 10000)
    assert rc == 0 and "capped at" in err
    assert len(psutil.Process().children(recursive=True)) == before


@pytest.mark.parametrize("options, words", [('{"ignore_cas": true}', ["ignore_cas", "valid:"]),
                                            ('{"extract": "sometimes"}', ["extract"]),
                                            ('[1, 2]', ["JSON object"]),
                                            ('{"ignore_case": ', ["not valid JSON"])])
def test_a04_bad_options_fail_before_any_row_is_scored(tmp_path, capsys, plugins, options, words):
    src = rows_file(tmp_path / "in.jsonl", ["ok"])
    rc, out, err = cli(capsys, "verify", "--verifier", "exact_match", src, "--options", options)
    assert rc == 2 and out == ""
    one_error(err, *words)


def test_a05_options_schema_and_signature_checks():
    from rlsd_core import VerifierRecord

    def named(completions, rows, *, strict: bool = False):
        return [1.0] * len(completions)

    rec = VerifierRecord(name="named", fn=named, columns=())
    assert check_options(rec, {"strict": True}) == {"strict": True}
    with pytest.raises(OptionsError, match="'strictt'.*valid: strict"):
        check_options(rec, {"strictt": True})
    loose = VerifierRecord(name="loose", fn=lambda c, r, **kw: [1.0] * len(c), columns=())
    assert check_options(loose, {"anything": 1}) == {"anything": 1}  # fn(**options): unchecked


def test_a06_duplicate_yaml_keys_are_an_error(tmp_path, capsys, plugins):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("optim:\n  lr: 1.0e-4\n  weight_decay: 0.0\n  lr: 1.0e-2\n")
    rc, _out, err = cli(capsys, "train", "--check", "-c", cfg)
    assert rc == 2
    one_error(err, "'lr' appears twice", "lines 2 and 4")


def test_a07_resume_with_a_changed_lr_names_it(tmp_path, trained, capsys, plugins):
    run_dir = _copy_run(trained, tmp_path / "run")
    rc, _out, err = cli(capsys, "train", "--resume", run_dir, "--check", "--optim.lr", "0.5")
    assert rc == 0
    assert "optim.lr: 0.0001 -> 0.5" in err
    rc, _out, err = cli(capsys, "train", "--resume", run_dir, "--check", "--steps", "9")
    assert rc == 0 and "changed settings" not in err  # extending a run is what --resume is for


@pytest.mark.parametrize("flags, words", [(["--k", "0", "--samples", "4"], ["positive"]),
                                          (["--k", "-2", "--samples", "4"], ["positive"]),
                                          (["--k", "2,x", "--samples", "4"], ["integers"]),
                                          (["--k", "5", "--samples", "2"], ["--samples >= 5"]),
                                          (["--k", "3"], ["--samples N"]),
                                          (["--samples", "-1"], ["--samples -1"]),
                                          (["--temperature", "nan"], ["--temperature"])])
def test_a08_eval_k_values_that_cannot_be_computed(capsys, plugins, flags, words):
    rc, _out, err = cli(capsys, "eval", "tiny", "--suite", "arithmetic", *flags)
    assert rc == 2
    one_error(err, *words)


# ---------------------------------------------------------------------------------------------
# L: the leak the metric could not see
# ---------------------------------------------------------------------------------------------

def test_l01_an_injector_cannot_change_what_the_student_sees(tmp_path, plugins):
    from rlsd_core import loop as T

    cfg = build_config(overrides=list({
        "steps": 1, "threads": 1, "output_dir": str(tmp_path / "run"), "warmup.enabled": "false",
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "exact_match",
                   "injector": "r_poison", "eval_size": 2, "train_size": 8}],
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
        "log.console": False, "log.plot": False}.items()))
    run = T.setup(cfg, plugins)
    try:
        rows = run.parts.tasks[0].train
        before = json.dumps(rows, sort_keys=True)
        m = T.train_step(run, 1)
        assert json.dumps(rows, sort_keys=True) == before, "the injector changed the task's rows"
        assert m["leakage_prompt_count"] == 0
        assert not any("reference solution" in r["prompt"] for r in rows)
    finally:
        run.parts.close()


def test_l02_a_student_prompt_holding_the_teachers_hint_is_counted(tmp_path, plugins):
    from rlsd_core import loop as T

    # A task template that shows the student what the reference_answer injector shows the
    # teacher: every student prompt leaks.
    template = [{"role": "user", "content": "{prompt}\n\nHere is a reference solution:\n{answer}"
                                            "\n\nAfter understanding the reference solution, "
                                            "please solve the problem above in your own way."}]
    cfg = build_config(overrides=list({
        "steps": 1, "threads": 1, "output_dir": str(tmp_path / "run"), "warmup.enabled": "false",
        "tasks": [{"name": "rev", "source": "reverse", "verifier": "exact_match",
                   "template": template, "eval_size": 2, "train_size": 8}],
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
        "log.console": False, "log.plot": False}.items()))
    run = T.setup(cfg, plugins)
    try:
        m = T.train_step(run, 1)
    finally:
        run.parts.close()
    assert m["leakage_prompt_count"] == 2
