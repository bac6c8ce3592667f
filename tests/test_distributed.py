"""Data-parallel training under torchrun (rlsd_core.loop.distributed), on the CPU with gloo.

The process tests run the real tiny model with real sampling, real FSDP2 sharding over two
processes and real backward passes; the reward is the `even_length` test verifier (mixed groups,
real gradients: tests/plugin_dist.py). What they hold the two-process run to:
  (a) the loss and the gradient of one update with 2 ranks equal those of the single-process
      loop on the same global batch: every gradient tensor within 1e-5 of its largest entry,
      the loss within 1e-5 relative (float sums in a different order: each rank sums its own
      responses, then the ranks are summed);
  (b) a 3-step `torchrun --standalone --nproc-per-node 2 -m rlsd_core.cli train` run logs the
      metrics and samples of the 1-process run with the same config and seed: samples exactly
      (per-prompt rollout seeds), numbers to relative 1e-4 (float reduction order, compounded
      over 3 steps of training);
  (c) its step-2 checkpoint resumes to step 3 with 2 ranks (`rlsd train --nproc 2 --resume`),
      exactly as the uninterrupted run, and with 1 rank, to float rounding;
  (d) a rank that raises mid-step makes torchrun exit non-zero with that rank's traceback,
      well within a bound, while the other rank waits in a collective;
  (e) the infrastructure-fault guard judges the whole step's verdicts on every rank, so every
      rank stops together with the same error.
Each torchrun test starts two processes on the 2-core CI machine: they are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from plugin_dist import install, install_crashing
from rlsd_core.loop import distributed
from rlsd_core.loop.batch import StepBatch
from rlsd_core.loop.update import SUMMED, reduce_stats

HERE = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
TASKS = [{"name": "rev", "source": "reverse", "verifier": "even_length", "eval_size": 4,
          "train_size": 64},
         {"name": "add", "source": "addition", "verifier": "even_length", "eval_size": 4,
          "train_size": 64, "weight": 2}]
CONFIG = {
    "seed": 3, "steps": 3, "threads": 1, "checkpoint_every": 2, "warmup": {"enabled": "false"},
    "tasks": TASKS, "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 6},
    "eval": {"every": 2, "max_new_tokens": 6},
    "log": {"console": False, "plot": False, "tensorboard": "false", "samples_every": 1},
    "scheduler": {"name": "adaptive", "options": {"horizon": 12}},
    "teacher": {"mode": "snapshot", "sync_every": 2}, "optim": {"lr": 1e-3},
}


# --- the plumbing, in one process ----------------------------------------------------------------

def test_rows_and_responses_are_strided_over_ranks():
    """Row g of a step lives on rank g % W as local row g // W; a group never straddles ranks."""
    w = distributed.World(rank=1, size=3)
    G = 2  # 7 rows: rank 1 holds rows 1 and 4, i.e. global responses 2, 3 and 8, 9
    assert w.local_responses(list(range(14)), G) == [0, 1, 2, 3]
    assert w.local_responses([9, 0, 2, 13], G) == [3, 0]
    assert [w.owner(i, G) for i in (0, 1, 2, 5, 8, 13)] == [0, 0, 1, 2, 1, 0]
    batch = StepBatch(step=1, tasks=list("abcdefg"), rows=[{"i": i} for i in range(7)],
                      prompt_ids=[[i] for i in range(7)], lam=torch.arange(7.0, dtype=torch.float64),
                      eps_w=torch.zeros(7, dtype=torch.float64), run_magnitude=None,
                      task_magnitudes={}, group_size=G, use_teacher=True, seeds=tuple(range(7)))
    mine = distributed.local_rows(w, batch)
    assert mine.tasks == ["b", "e"] and mine.prompt_ids == [[1], [4]] and mine.seeds == (1, 4)
    assert mine.lam.tolist() == [1.0, 4.0] and mine.use_teacher
    assert distributed.local_rows(distributed.World(), batch) is batch


def test_merge_interleaves_ranks_and_pads_tensors():
    """Every rank's per-response records back in the step's global order (what metrics read)."""
    # 3 rows, G = 1, 2 ranks: rank 0 holds rows 0 and 2, rank 1 row 1.
    order = [(0, 0), (1, 0), (0, 1)]
    texts = distributed.merge_ranks([["r0", "r2"], ["r1"]], order)
    assert texts == ["r0", "r1", "r2"]
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])     # rank 0: responses of length <= 2
    b = torch.tensor([[5.0, 6.0, 7.0]])           # rank 1: one of length 3
    merged = distributed.merge_ranks([a, b], order)
    assert merged.tolist() == [[1.0, 2.0, 0.0], [5.0, 6.0, 7.0], [3.0, 4.0, 0.0]]
    masks = distributed.merge_ranks([torch.ones(2, 2, dtype=torch.bool),
                                     torch.ones(1, 3, dtype=torch.bool)], order)
    assert masks.sum(1).tolist() == [2, 3, 2]
    assert distributed.merge_ranks([None, None], order) is None


def test_reduce_stats_sums_losses_maxes_maxima_and_weights_the_rest_by_tokens():
    # Rank 0: two micro-batches of 3 and 1 tokens; rank 1: one of 4 and a masked-out one (0).
    per_rank = [[({"loss": 0.5, "pg_loss": 0.5, "ratio_max": 1.2, "pg_clipfrac": 1 / 3}, 3.0),
                 ({"loss": -0.1, "pg_loss": -0.1, "ratio_max": 1.5, "pg_clipfrac": 0.0}, 1.0)],
                [({"loss": 0.2, "pg_loss": 0.2, "ratio_max": 1.1, "pg_clipfrac": 0.5}, 4.0),
                 ({"loss": 0.0, "pg_loss": 0.0, "ratio_max": 9.0, "pg_clipfrac": 0.9}, 0.0)]]
    out = reduce_stats(per_rank)
    assert {"loss", "pg_loss"} <= set(SUMMED)
    assert out["loss"] == pytest.approx(0.6) and out["pg_loss"] == pytest.approx(0.6)
    assert out["ratio_max"] == 1.5  # the masked-out micro-batch's 9.0 is no token's ratio
    # 1 clipped token of 3, 0 of 1, 2 of 4: 3 of 8 tokens.
    assert out["pg_clipfrac"] == pytest.approx(3 / 8)


def test_world_size_one_runs_no_collective():
    w = distributed.World()
    assert distributed.all_gather(w, {"x": 1}) == [{"x": 1}]
    assert distributed.total(w, 3.0) == 3.0
    assert distributed.from_main(w, lambda: 7) == 7
    records = (["a"], torch.ones(1))
    assert distributed.gather_responses(w, 1, 1, *records) == records
    assert distributed.full_state(w, torch.nn.Linear(2, 2)) is None
    with distributed.unsharded(w, torch.nn.Linear(2, 2)):  # no FSDP: nothing to gather
        pass
    parts = {"optimizer": object(), "teacher": None}
    assert distributed.checkpoint_parts(w, None, parts) is parts


def test_too_few_prompts_for_the_ranks_is_a_config_error():
    from rlsd_core.config import ConfigError

    with pytest.raises(ConfigError, match="prompts_per_step is 2 but the run has 4 ranks"):
        distributed.check_rows(distributed.World(rank=0, size=4), 2)


def test_rlsd_train_nproc_refuses_too_few_prompts_before_starting_anything(capsys):
    """`rlsd train --nproc 4` with 2 prompts a step: one line, exit 2, no torchrun started."""
    from rlsd_core.cli import main

    assert main(["train", "--nproc", "4", "--rollout.prompts_per_step", "2"]) == 2
    err = capsys.readouterr().err
    assert "rlsd train: rollout.prompts_per_step is 2 but the run has 4 ranks" in err
    assert "Traceback" not in err
    assert main(["train", "--nproc", "0"]) == 2
    assert "--nproc 0: give a number of processes >= 1" in capsys.readouterr().err


def test_rlsd_train_nproc_runs_the_same_command_under_torchrun(monkeypatch):
    """`rlsd train --nproc 2 ARGS` -> `torchrun --standalone --nproc-per-node=2 -m rlsd_core.cli
    train ARGS`, every other argument kept in its order (the real launch: test (c))."""
    from rlsd_core.cli import train as cli_train

    calls = []
    monkeypatch.setattr(cli_train.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli_train.launch(2, ["train", "--steps", "2", "--nproc", "2", "--set", "a=1"]) == 0
    assert cli_train.launch(3, ["--nproc=3", "-c", "x.yaml"]) == 0
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert calls == [
        [*head, "--nproc-per-node=2", "-m", "rlsd_core.cli", "train", "--steps", "2", "--set", "a=1"],
        [*head, "--nproc-per-node=3", "-m", "rlsd_core.cli", "train", "-c", "x.yaml"]]


# --- two processes (torchrun, gloo) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install(site)
    install_crashing(site)
    path = os.pathsep.join(p for p in (str(site), str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "PYTHONPATH": path, "RLSD_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # Build the tiny model once, before two processes want it at the same time.
    subprocess.run([sys.executable, "-c", "from rlsd_core.models import resolve_model; "
                    "resolve_model('tiny')"], env=env, check=True, timeout=300)
    return env


def _run(cmd, env, timeout=600):
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def _torchrun(*args):
    return [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *args]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Wall-clock times, and reward-cache hit rates (each rank caches its own verdicts), differ.
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "cache_hit_rate/"))}
            for r in rows]


def _assert_close_metrics(got: list[dict], want: list[dict], rel: float) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        assert set(g) == set(w), (set(g) ^ set(w))
        for key, value in w.items():
            if isinstance(value, float) and isinstance(g[key], float):
                assert g[key] == pytest.approx(value, rel=rel, abs=1e-7), (w["step"], key)
            else:
                assert g[key] == value, (w["step"], key)


@pytest.mark.slow
def test_one_update_on_two_ranks_equals_the_single_process_update(tmp_path, env):
    """(a) Same global batch (the single process's responses), same loss and gradients: 3
    mini-batches (drawn over the global batch) x up to 4 micro-batches, with uneven ranks (3
    prompts on 2 ranks), so a rank with fewer responses runs masked-out micro-batches in
    lockstep. Each mini-batch's gradient is taken at the step's weights (tests/distributed_step.py)."""
    cfg = {**CONFIG, "seed": 5, "steps": 1, "scheduler": {"name": "constant"},
           "rollout": {"prompts_per_step": 3, "group_size": 4, "max_new_tokens": 8},
           "optim": {"lr": 1e-3, "mini_batches": 3, "grad_accum": 4, "grad_clip": 1e6}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    script = str(HERE / "distributed_step.py")
    one, _ = _run([sys.executable, script, str(tmp_path / "cfg.yaml"), str(tmp_path)], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two, _ = _run(_torchrun(script, str(tmp_path / "cfg.yaml"), str(tmp_path)), env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "result-1.pt", weights_only=False)
    b = torch.load(tmp_path / "result-2.pt", weights_only=False)
    assert a["teacher"] and b["padded"] > 0  # the teacher forward ran; ranks were padded
    assert len(a["grads"]) == len(b["grads"]) == 3
    # The losses (summed over micro-batches) and the gradient norm. Ratios and fractions are
    # averaged over micro-batches, which differ between 1 and 2 ranks when grad_accum > 1 (test
    # (b) compares them with grad_accum 1).
    for key in (*SUMMED, "grad_norm", "optimizer_steps"):
        if key in a["stats"]:
            assert b["stats"][key] == pytest.approx(a["stats"][key], rel=1e-5, abs=1e-8), key
    for want, got in zip(a["grads"], b["grads"]):
        assert set(want) == set(got)
        for name, g in want.items():
            scale = float(g.abs().max())
            assert scale > 0, name
            assert float((got[name] - g).abs().max()) <= 1e-5 * scale, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    """One config trained 3 steps by 1 process and by 2 (torchrun), checkpoint at step 2."""
    root = tmp_path_factory.mktemp("runs")
    (root / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    cli = ["-m", "rlsd_core.cli", "train", "-c", str(root / "cfg.yaml")]
    one, _ = _run([sys.executable, *cli, "--output_dir", str(root / "one")], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two, seconds = _run(_torchrun(*cli, "--output_dir", str(root / "two")), env)
    assert two.returncode == 0, two.stderr[-3000:]
    return root, seconds


@pytest.mark.slow
def test_two_ranks_log_the_single_process_metrics(runs):
    """(b) `torchrun ... -m rlsd_core.cli train` = `rlsd train`, up to float reduction order."""
    root, _ = runs
    _assert_close_metrics(_metrics(root / "two"), _metrics(root / "one"), rel=1e-4)
    samples = [(root / d / "samples.jsonl").read_text() for d in ("one", "two")]
    assert samples[0] == samples[1] and samples[0]
    # One rank writes: one config, one summary, one set of checkpoints.
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir()) == [
        "step-000002", "step-000003"]
    assert json.loads((root / "two" / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_with_two_ranks_or_one(runs, env):
    """(c) Resume the 2-rank run's step-2 checkpoint to step 3: with 2 ranks (through `rlsd
    train --nproc 2`) it logs exactly the uninterrupted run's step 3; with 1 process the same
    up to float rounding (the checkpoint holds full tensors in the single-process layout)."""
    root, _ = runs
    want = _metrics(root / "two")
    for ranks in (2, 1):
        copy = root / f"resumed-{ranks}"
        shutil.copytree(root / "two", copy)
        shutil.rmtree(copy / "checkpoints" / "step-000003")
        nproc = ["--nproc", "2"] if ranks == 2 else []
        proc, _ = _run([sys.executable, "-m", "rlsd_core.cli", "train", *nproc, "--resume",
                        str(copy)], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = _metrics(copy)
        if ranks == 2:
            assert got == want
        else:
            _assert_close_metrics(got, want, rel=1e-4)


@pytest.mark.slow
def test_a_rank_that_raises_stops_the_run_with_its_traceback(tmp_path, env):
    """(d) Rank 1 raises in step 2 while rank 0 goes on into the update's collectives: torchrun
    exits non-zero, names the failing rank and shows its error, in bounded time.

    The same run loads the policy in bf16 (model.dtype bfloat16) and checkpoints step 1, which
    the crash leaves intact: its weights are the fp32 masters FSDP stepped (distributed.shard
    upcasts a 16-bit policy), whose low bits a bf16 policy stepped by AdamW would not have."""
    cfg = {**CONFIG, "algo": {"loss": "crash_on_rank"}, "checkpoint_every": 1,
           "model": {"dtype": "bfloat16"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc, seconds = _run(_torchrun("-m", "rlsd_core.cli", "train", "-c", str(tmp_path / "cfg.yaml"),
                                   "--output_dir", str(tmp_path / "run")),
                         {**env, "CRASH_TEST_RANK": "1", "CRASH_TEST_STEP": "2"}, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr
    assert "crash test: rank 1 raises in step 2" in err, err[-3000:]
    assert "rank      : 1" in err  # torchrun's failure summary names the root cause
    # Setup and a step take ~40 s here; the bound is what a hang would break (the collective
    # timeout is 30 min).
    assert seconds < 240, seconds
    metrics = _metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [0, 1]  # step 2 never completed
    assert metrics[1]["grad_norm"] > 0
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "checkpoints" / "step-000001" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    low_bits = [float((w != w.to(torch.bfloat16).float()).float().mean()) for w in weights.values()
                if w.dim() == 2]
    assert min(low_bits) > 0.5, low_bits  # bf16 weights upcast: 0; stepped fp32 masters: ~1


@pytest.mark.slow
def test_the_fault_guard_stops_every_rank_on_the_whole_steps_verdicts(tmp_path, env):
    """(e) Rank 0's verifier faults on every sample it verifies, rank 1's on none: half of the
    step's 16 samples, over max_infra_fraction 0.4. Every rank's guard reads the whole step
    (rank 0 alone would see 8 of 8, rank 1 0 of 8, and rank 1 would go on into the update), so
    every rank stops at step 1 with the error about 8 of 16."""
    task = {"name": "rev", "source": "reverse", "verifier": "faults_on_rank0", "eval_size": 2,
            "train_size": 64}
    cfg = {**CONFIG, "tasks": [task], "checkpoint_every": 0,
           "faults": {"max_infra_fraction": 0.4, "steps": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc, _ = _run(_torchrun("-m", "rlsd_core.cli", "train", "-c", str(tmp_path / "cfg.yaml"),
                             "--output_dir", str(tmp_path / "run")), env, timeout=300)
    assert proc.returncode != 0
    # Counted over the whole step. (Which ranks get to print it first is a race: torchrun stops
    # the others as soon as one exits.)
    assert "task 'rev': 8 of its 16 samples at step 1" in proc.stderr, proc.stderr[-3000:]
    assert "8 of its 8 samples" not in proc.stderr
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [0]
