"""GRPO vs OPSD vs GRPO+OPSD vs RLSD at small scale: the paper's comparison on the tiny model.

Data flow:
  chain-sum task source (registered inline, below) -> one supervised warm-up (rlsd_core.loop.warmup's
  functions, stopped by dev accuracy), shared by every method and seed (the "same warm-started
  checkpoint") -> a teacher check on that checkpoint (is the self-teacher informative at all?)
  -> `rlsd_core.loop.train` once per (method, seed), GRPO also for twice the steps -> a
  held-out greedy pass over each final checkpoint for the leakage count -> an interleaved
  step-time benchmark (GRPO and RLSD steps alternated, so that load from other processes hits
  both alike) -> a reproducibility rerun -> results.json, table.md and PNG plots in --out.

The task: "What is 7 + 5 + 8?" -> "7+5=12, 12+8=\\boxed{20}", only the boxed final number
scored (exact_match). The teacher sees the gold final answer (the release's reference_answer
prompt). The final answer constrains the intermediate tokens (12 = 20 - 8), so the privileged
answer carries per-token information for credit assignment, which is what RLSD needs; the
teacher check measures whether the tiny model actually uses it.

Problems come from two disjoint pools: the warm-up trains on one, RL trains and evaluates on
the other, so a held-out problem was never seen in the warm-up whatever the RL seed.

    python bench/compare_methods.py --quick --out runs/compare-quick     # CI: a few minutes
    python bench/compare_methods.py --out runs/compare                   # full: see docs/results.md
    python bench/compare_methods.py --out runs/compare --aggregate-only  # table + plots again

The full mode's settings, run time and results are in docs/results.md.

Nothing here re-implements the loop: training is `train(cfg, pm)`, evaluation is the trainer's
`evaluate`, step timing reads the trainer's own `time/step_s` metric, leakage is
`rlsd_core.leakage`, log-probs are `rlsd_core.models.token_logprobs`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlsd_core import TaskSourceRecord, get_plugin_manager, hookimpl, leakage
from rlsd_core.config import TaskConfig, TrainConfig
from rlsd_core.data import TeacherPrompts, load_task, render_prompt, student_messages
from rlsd_core.engines import SamplingParams, make_engine
from rlsd_core.loop import (build_examples, evaluate_task, setup, train, train_step,
                            train_supervised)
from rlsd_core.models import load_model, load_tokenizer, tiny_model_dir, token_logprobs
from rlsd_core.rewards import VerifierRuntime

TASK_SOURCE = "chain_sum3"
WARMUP_SEED = 0  # one warm-up for every method and seed: they all start from the same weights
METHODS = ("grpo", "opsd", "grpo+opsd", "rlsd")


# =================================================================================================
# the task: three-term sums with a scratchpad, from two disjoint pools
# =================================================================================================

@functools.lru_cache(maxsize=2)
def _problem_order(total: int) -> tuple[int, ...]:
    order = list(range(total))
    random.Random(20261127).shuffle(order)  # fixed seed: the pools must not move with the run's seed
    return tuple(order)


RL_POOL = 400  # problems reserved for RL training and held-out evaluation; the other 600 warm up


def chain_rows(pool: str = "rl", size: int = RL_POOL) -> list[dict]:
    """Distinct a + b + c problems with one-digit a, b, c (1,000 in all). Pool 'rl' and pool
    'warmup' never share a problem: both are cut from one fixed shuffle of the problem space,
    the RL pool first."""
    if pool not in ("rl", "warmup"):
        raise ValueError(f"{TASK_SOURCE}: pool must be 'rl' or 'warmup', got {pool!r}")
    order = _problem_order(1000)
    limit = RL_POOL if pool == "rl" else len(order) - RL_POOL
    if not 1 <= size <= limit:
        raise ValueError(f"{TASK_SOURCE}: pool {pool!r} holds {limit} problems, asked for {size}")
    chosen = order[:size] if pool == "rl" else order[RL_POOL:RL_POOL + size]
    rows = []
    for k in chosen:
        a, rest = divmod(k, 100)
        b, c = divmod(rest, 10)
        s1, s2 = a + b, a + b + c
        rows.append({"id": f"chain-{a}+{b}+{c}", "prompt": f"What is {a} + {b} + {c}?",
                     "answer": str(s2), "target": f"{a}+{b}={s1}, {s1}+{c}=\\boxed{{{s2}}}"})
    return rows


class ChainSumPlugin:
    """Registered inline (`pm.register`) so that the task needs no change to rlsd_core."""

    @hookimpl
    def rlsd_task_sources(self):
        return [TaskSourceRecord(
            name=TASK_SOURCE, fn=chain_rows, columns=("prompt", "answer"), version="1",
            description="a + b + c with a scratchpad; only the boxed final sum is scored",
            verifier="exact_match", injector="reference_answer")]


def plugin_manager():
    pm = get_plugin_manager()
    pm.register(ChainSumPlugin(), name="compare_methods_tasks")
    return pm


def task_config(pool: str, size: int, eval_size: int) -> TaskConfig:
    # extract=wrapped: an answer without \boxed{} is wrong, so the scratchpad format matters.
    return TaskConfig(name="chain", source=TASK_SOURCE, options={"pool": pool, "size": size},
                      verifier_options={"extract": "wrapped"}, eval_size=eval_size)


# =================================================================================================
# the shared warm-start
# =================================================================================================

def warm_start(pm, settings: dict, out: Path, log) -> tuple[Path, list]:
    """The warmed-up model directory, shared by every method and seed, trained on the warm-up
    pool only. Cached in `out/warm_start` (reused when its settings match).

    Built from rlsd_core.loop.warmup's own pieces (`build_examples`, with 25% privileged prompts, and
    `train_supervised`, one call, one cosine schedule), with a greedy dev evaluation every
    `warmup_chunk` steps that stops it once dev accuracy reaches `warmup_target` (or after
    `warmup_seconds`): the environment notes say warm-up accuracy jumps, so a fixed step count
    cannot be trusted to land in the 20-70% band, and `warmed_up_dir` runs a fixed count.
    (Calling train_supervised in chunks instead restarts AdamW each time, whose first steps
    move every weight by ~lr: measured here, it undid the progress of each chunk.)"""
    keys = ("warmup_steps", "warmup_chunk", "warmup_batch", "warmup_lr", "warmup_target", "warmup_pool",
            "warmup_seconds")
    wanted = {k: settings[k] for k in keys}
    target_dir = out / "warm_start"
    meta_path = target_dir / "warm_start.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["settings"] == wanted:
            log(f"warm start: reusing {target_dir} (dev accuracy {meta['curve'][-1]})")
            return target_dir, meta["curve"]
    registry = pm.registry
    task = load_task(task_config("warmup", settings["warmup_pool"], 100), registry, seed=WARMUP_SEED)
    base = tiny_model_dir()
    tok = load_tokenizer(str(base))
    prompts = TeacherPrompts([task], {task.injector: registry.injector(task.injector)}, tok)
    examples = build_examples([task], tok, prompts.messages, privileged_fraction=0.25, seed=WARMUP_SEED)
    model = load_model(str(base), "float32")
    # The trainer's own held-out evaluation (rlsd_core.loop.evaluate_task).
    engine = make_engine("hf", model, tok)
    verifier = VerifierRuntime(registry.verifier(task.verifier), task.verifier_options)
    t0, curve = time.perf_counter(), []

    class _Reached(Exception):
        pass

    def on_step(i: int, n: int, loss: float) -> None:
        if i % settings["warmup_chunk"] and i != n:
            return
        acc = evaluate_task(engine, tok, task, verifier,
                            max_new_tokens=settings["max_new_tokens"])["accuracy"]
        model.train()
        curve.append([i, acc])
        log(f"  warm-up {i}/{n} steps, loss {loss:.3f}, dev greedy accuracy {acc:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
        if acc >= settings["warmup_target"] or time.perf_counter() - t0 > settings["warmup_seconds"]:
            raise _Reached

    try:
        train_supervised(model, examples, steps=settings["warmup_steps"], batch_size=settings["warmup_batch"],
                         lr=settings["warmup_lr"], seed=WARMUP_SEED, pad_id=tok.pad_token_id, on_step=on_step)
    except _Reached:  # train_supervised updates `model` in place: it holds the weights reached
        pass
    model.eval()
    done = curve[-1][0]
    engine.close()
    verifier.close()
    tmp = target_dir.with_name(target_dir.name + ".tmp")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "warm_start.json").write_text(json.dumps({"settings": wanted, "curve": curve,
                                                     "seconds": time.perf_counter() - t0}))
    shutil.rmtree(target_dir, ignore_errors=True)
    tmp.replace(target_dir)
    log(f"warm start: {target_dir} after {done} steps ({time.perf_counter() - t0:.0f} s)")
    return target_dir, curve


# =================================================================================================
# the teacher check: is the self-teacher informative before any RL?
# =================================================================================================

def teacher_check(pm, model_dir: Path, settings: dict, log) -> dict:
    """Greedy held-out accuracy with and without the privileged prompt; on sampled responses,
    delta = log P_T - log P_S per token, for right and for wrong responses, on all response
    tokens and on the tokens after the first '=' (the computed numbers)."""
    registry = pm.registry
    task = load_task(task_config("rl", settings["rl_pool"], settings["eval_size"]), registry, seed=0)
    tok = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), "float32")
    model.eval()
    engine = make_engine("hf", model, tok)
    verifier = VerifierRuntime(registry.verifier(task.verifier), task.verifier_options)
    build = TeacherPrompts([task], {task.injector: registry.injector(task.injector)}, tok).messages
    rows = task.eval
    student = [render_prompt(tok, student_messages(r)) for r in rows]
    teacher = [render_prompt(tok, build(task.name, r)) for r in rows]

    def greedy_acc(prompts):
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=settings["max_new_tokens"],
                                stop_token_ids=(tok.eos_token_id,))
        gens = engine.generate(prompts, params)
        texts = [tok.decode(g[0].token_ids, skip_special_tokens=True) for g in gens]
        return sum(v.category.value == "ok" for v in verifier.score(texts, rows)) / len(rows)

    acc_student, acc_teacher = greedy_acc(student), greedy_acc(teacher)

    # Sampled responses at the rollout temperature, scored by both prompts.
    n_rows, G = min(64, len(rows)), 8
    params = SamplingParams(n=G, temperature=1.0, max_new_tokens=settings["max_new_tokens"],
                            stop_token_ids=(tok.eos_token_id,), seed=12345)
    gens = engine.generate(student[:n_rows], params)
    resp, s_ids, t_ids, row_of = [], [], [], []
    for i, group in enumerate(gens):
        for g in group:
            resp.append(list(g.token_ids))
            s_ids.append(student[i])
            t_ids.append(teacher[i])
            row_of.append(rows[i])
    texts = [tok.decode(r, skip_special_tokens=True) for r in resp]
    right = [v.category.value == "ok" for v in verifier.score(texts, row_of)]
    with torch.no_grad():
        lp_s = token_logprobs(model, s_ids, resp, temperature=1.0, micro_batch=128, pad_id=tok.pad_token_id)
        lp_t = token_logprobs(model, t_ids, resp, temperature=1.0, micro_batch=128, pad_id=tok.pad_token_id)
    delta = (lp_t.logprobs - lp_s.logprobs) * lp_s.mask
    eq_id = tok.encode("=", add_special_tokens=False)
    # Tokens after the first '=' are the model's own numbers (s1, s2); before it, the copy of
    # the question's operands.
    after_eq = torch.zeros_like(lp_s.mask)
    for i, r in enumerate(resp):
        if len(eq_id) == 1 and eq_id[0] in r:
            after_eq[i, r.index(eq_id[0]) + 1:len(r)] = True
    after_eq &= lp_s.mask

    def mean_delta(sel_rows, sel_tokens):
        m = sel_tokens & torch.tensor(sel_rows)[:, None]
        return float(delta[m].mean()) if m.any() else None

    wrong = [not x for x in right]
    out = {
        "eval_size": len(rows), "greedy_acc_student_prompt": acc_student,
        "greedy_acc_teacher_prompt": acc_teacher, "sampled_responses": len(resp),
        "sampled_acc": sum(right) / len(right),
        "delta_right_all": mean_delta(right, lp_s.mask), "delta_wrong_all": mean_delta(wrong, lp_s.mask),
        "delta_right_numbers": mean_delta(right, after_eq), "delta_wrong_numbers": mean_delta(wrong, after_eq),
        "frac_tokens_w_clipped": float(((delta.abs() > math.log(1.2)) & lp_s.mask).sum() / lp_s.mask.sum()),
    }
    engine.close()
    verifier.close()
    log("teacher check: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return out


# =================================================================================================
# the runs: train() once per (method, seed)
# =================================================================================================

class Collector:
    """An event-hook observer: keeps every step's metrics and prints a progress line now and then."""

    def __init__(self, log, every: int = 10) -> None:
        self.log, self.every = log, every
        self.history: dict[str, list[dict]] = {}

    @hookimpl
    def rlsd_after_step(self, run, step, metrics):
        self.history.setdefault(str(run.run_dir), []).append(dict(metrics))
        ev = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if step % self.every == 0 or ev:
            self.log(f"    {Path(run.run_dir).name} step {step}/{run.total_steps} "
                     f"reward {metrics.get('reward_mean')} {ev or ''} "
                     f"t {metrics.get('time/step_s') and round(metrics['time/step_s'], 2)}")


def run_config(method: str, seed: int, steps: int, settings: dict, warm_dir: Path, run_dir: Path,
               **algo_overrides) -> TrainConfig:
    """One arm of the comparison. Everything but the objective (and RLSD's schedule) is shared."""
    loss = "grpo" if method.startswith("grpo") and method != "grpo+opsd" else method
    # RLSD's lambda: the paper's linear decay from 0.5, compressed to the first half of the run
    # (the paper: 0.5 -> 0 over 50 steps) so that the run also measures the lambda = 0 phase.
    scheduler = {"name": "paper", "options": {"decay": settings["lambda_decay"]}}
    return TrainConfig.model_validate({
        "seed": seed, "steps": steps, "output_dir": str(run_dir), "threads": settings["threads"],
        "model": {"name_or_path": str(warm_dir)},
        "warmup": {"enabled": "false"},
        "tasks": [task_config("rl", settings["rl_pool"], settings["eval_size"]).model_dump()],
        "rollout": {"prompts_per_step": settings["prompts"], "group_size": settings["group"],
                    "temperature": 1.0, "max_new_tokens": settings["max_new_tokens"]},
        "algo": {"loss": loss, **algo_overrides},
        "scheduler": scheduler,
        "teacher": {"mode": "snapshot", "sync_every": 10},
        "optim": {"lr": settings["lr"]},
        "eval": {"every": settings["eval_every"], "max_new_tokens": settings["max_new_tokens"]},
        "log": {"console": False, "jsonl": True, "plot": False, "tensorboard": "false",
                "samples_every": 0},
    })


def heldout_leakage(pm, cfg: TrainConfig, checkpoint: Path) -> dict:
    """Greedy generations of a checkpoint on the held-out prompts (student prompt only, no
    privileged context), run through the leakage detector against what the teacher would see.

    Needed because the trainer's `evaluate` returns accuracies only, not the generations."""
    registry = pm.registry
    task = load_task(cfg.tasks[0], registry, seed=cfg.seed)
    tok = load_tokenizer(str(checkpoint))
    model = load_model(str(checkpoint), "float32")
    engine = make_engine("hf", model, tok)
    teacher = TeacherPrompts([task], {task.injector: registry.injector(task.injector)}, tok)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens,
                            stop_token_ids=(tok.eos_token_id,))
    prompts = [render_prompt(tok, student_messages(r)) for r in task.eval]
    gens = engine.generate(prompts, params)
    engine.close()
    leaks, examples = 0, []
    for row, g in zip(task.eval, gens):
        text = tok.decode(g[0].token_ids, skip_special_tokens=True)
        hit = leakage(text, teacher.prompt(task.name, row)[1], row["prompt"])
        if hit:
            leaks += 1
            if len(examples) < 3:
                examples.append({"prompt": row["prompt"], "response": text,
                                 "phrase": hit.phrase, "ngram": hit.ngram})
    return {"heldout_leakage": leaks, "heldout_n": len(task.eval), "examples": examples}


def run_one(pm, collector: Collector, method: str, seed: int, steps: int, settings: dict,
            warm_dir: Path, out: Path, log, name: str | None = None) -> dict:
    """Train one arm (skipped when its record already exists: a killed full run resumes)."""
    name = name or f"{method}-s{seed}"
    record_path = out / "records" / f"{name}.json"
    if record_path.exists():
        log(f"  {name}: done earlier, reusing {record_path}")
        return json.loads(record_path.read_text())
    run_dir = out / "runs" / name
    if run_dir.exists():  # a half-finished run from a killed invocation: start it over
        import shutil
        shutil.rmtree(run_dir)
    cfg = run_config(method, seed, steps, settings, warm_dir, run_dir)
    log(f"  {name}: training {steps} steps")
    t0 = time.perf_counter()
    summary = train(cfg, pm, run_dir=run_dir)
    seconds = time.perf_counter() - t0
    history = collector.history.pop(str(run_dir))
    leak = heldout_leakage(pm, cfg, run_dir / "checkpoints" / f"step-{steps:06d}")
    record = {"name": name, "method": method, "seed": seed, "steps": steps, "seconds": seconds,
              "summary": summary, "history": history, **leak}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record))
    acc = [m["eval/chain"] for m in history if m.get("eval/chain") is not None]
    log(f"  {name}: {seconds:.0f} s, held-out {acc[0]:.3f} -> {acc[-1]:.3f}, "
        f"held-out leakage {leak['heldout_leakage']}/{leak['heldout_n']}")
    return record


# =================================================================================================
# step time: GRPO and RLSD steps interleaved on the same machine, same warm start
# =================================================================================================

def step_time_benchmark(pm, settings: dict, warm_dir: Path, out: Path, steps: int, log) -> dict:
    """Median `time/step_s` (the trainer's own timer) of GRPO, RLSD with lambda 0.5 (teacher
    forward on) and RLSD with lambda 0 (teacher forward skipped), one step of each in turn, so
    that load from other processes falls on all three alike."""
    arms = {"grpo": {}, "rlsd_lambda>0": {"name": "constant", "options": {"lam": 0.5}},
            "rlsd_lambda=0": {"name": "grpo", "options": {}}}
    runs = {}
    for arm, sched in arms.items():
        method = "grpo" if arm == "grpo" else "rlsd"
        cfg = run_config(method, 0, steps, settings, warm_dir, out / "timing" / arm)
        if sched:
            cfg = cfg.model_copy(update={"scheduler": cfg.scheduler.model_copy(update=sched)})
        runs[arm] = setup(cfg, pm, run_dir=out / "timing" / arm)
    times: dict[str, list[float]] = {a: [] for a in arms}
    try:
        for step in range(1, steps + 1):
            for arm, run in runs.items():
                m = train_step(run, step)
                run.progress.history.append(m)
                times[arm].append(m["time/step_s"])
    finally:
        for run in runs.values():
            run.parts.close()
    med = {a: statistics.median(t) for a, t in times.items()}
    res = {"steps": steps, "median_step_s": med, "all_step_s": times,
           "ratio_lambda_pos": med["rlsd_lambda>0"] / med["grpo"],
           "ratio_lambda_zero": med["rlsd_lambda=0"] / med["grpo"]}
    log(f"step time (interleaved, median of {steps}): " + json.dumps({k: round(v, 3) for k, v in med.items()})
        + f" ratio lambda>0 {res['ratio_lambda_pos']:.3f}, lambda=0 {res['ratio_lambda_zero']:.3f}")
    return res


# =================================================================================================
# reproducibility: one configuration run twice with the same seed
# =================================================================================================

def compare_histories(a: list[dict], b: list[dict]) -> dict:
    """Identical metrics (timers aside)? If not, the first step and key that differ."""
    for m1, m2 in zip(a, b):
        for k in sorted(set(m1) | set(m2)):
            if k.startswith("time/"):
                continue
            if m1.get(k) != m2.get(k):
                return {"identical": False, "first_step": m1.get("step"), "key": k,
                        "values": [m1.get(k), m2.get(k)]}
    return {"identical": len(a) == len(b), "steps_compared": min(len(a), len(b))}


# =================================================================================================
# aggregation: the table and the plots
# =================================================================================================

def _ms(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _evals(history: list[dict]) -> list[tuple[int, float]]:
    return [(m["step"], m["eval/chain"]) for m in history if m.get("eval/chain") is not None]


def _median_step_time(history: list[dict], lo: int, hi: int) -> float | None:
    xs = [m["time/step_s"] for m in history if lo <= m["step"] <= hi and m.get("time/step_s")]
    return statistics.median(xs) if xs else None


def summarize_records(records: list[dict], settings: dict) -> dict:
    """Per arm, over seeds: final and best held-out accuracy, step of best, leakage, entropy,
    length, clip fractions, step-time ratios vs GRPO of the same seed."""
    arms: dict[str, list[dict]] = {}
    for r in records:
        arms.setdefault(r["method"], []).append(r)
    grpo_by_seed = {r["seed"]: r for r in arms.get("grpo", [])}
    decay = settings["lambda_decay"]
    steps = settings["steps"]
    table = {}
    for arm, recs in arms.items():
        finals, bests, best_steps, starts = [], [], [], []
        ent, length, reward, clip_lo, clip_hi, leak_roll = [], [], [], [], [], []
        ratio_on, ratio_off = [], []
        for r in recs:
            ev = _evals(r["history"])
            starts.append(ev[0][1])
            trained = [e for e in ev if e[0] > 0]
            finals.append(trained[-1][1])
            best = max(trained, key=lambda e: (e[1], -e[0]))  # earliest of equal bests
            bests.append(best[1])
            best_steps.append(best[0])
            train_steps = [m for m in r["history"] if m["step"] > 0]
            tail = train_steps[-max(1, len(train_steps) // 5):]
            ent.append(statistics.fmean(m["entropy"] for m in tail))
            length.append(statistics.fmean(m["response_length"] for m in tail))
            reward.append(statistics.fmean(m["reward_mean"] for m in tail if m.get("reward_mean") is not None))
            on = [m for m in train_steps if (m.get("lambda") or 0) > 0 and m.get("clip_low_frac") is not None]
            if arm == "rlsd" and on:
                clip_lo.append(statistics.fmean(m["clip_low_frac"] for m in on))
                clip_hi.append(statistics.fmean(m["clip_high_frac"] for m in on))
            leak_roll.append(sum(m.get("leakage_count") or 0 for m in train_steps))
            g = grpo_by_seed.get(r["seed"])
            if g is not None and arm != "grpo":
                lo_hi = [(1, decay), (decay + 1, steps)]
                for (lo, hi), acc in zip(lo_hi, (ratio_on, ratio_off)):
                    mine, base = _median_step_time(r["history"], lo, hi), _median_step_time(g["history"], lo, hi)
                    if mine and base:
                        acc.append(mine / base)
        table[arm] = {
            "seeds": [r["seed"] for r in recs], "steps": recs[0]["steps"],
            "start_acc": _ms(starts), "final_acc": _ms(finals), "best_acc": _ms(bests),
            "final_acc_all": finals, "best_acc_all": bests, "best_step_all": best_steps,
            "heldout_leakage_total": sum(r["heldout_leakage"] for r in recs),
            "heldout_n_total": sum(r["heldout_n"] for r in recs),
            "rollout_leakage_total": sum(leak_roll),
            "entropy_last": _ms(ent), "length_last": _ms(length), "reward_last": _ms(reward),
            "clip_low_frac": _ms(clip_lo), "clip_high_frac": _ms(clip_hi),
            "step_time_ratio_first_half": _ms(ratio_on), "step_time_ratio_second_half": _ms(ratio_off),
            "seconds_mean": statistics.fmean(r["seconds"] for r in recs),
        }
    # Paired differences vs GRPO (same seed, same warm start, same problems).
    paired = {}
    for arm, recs in arms.items():
        if arm == "grpo":
            continue
        d_final, d_best = [], []
        for r in recs:
            g = grpo_by_seed.get(r["seed"])
            if g is None:
                continue
            d_final.append(_evals(r["history"])[-1][1] - _evals(g["history"])[-1][1])
            d_best.append(max(e[1] for e in _evals(r["history"]) if e[0] > 0)
                          - max(e[1] for e in _evals(g["history"]) if e[0] > 0))
        paired[arm] = {"final_minus_grpo": _ms(d_final), "best_minus_grpo": _ms(d_best),
                       "final_minus_grpo_all": d_final}
    return {"arms": table, "paired_vs_grpo": paired}


def _fmt(ms, pct: bool = True, digits: int = 1) -> str:
    m, s = ms
    if m is None:
        return "-"
    k = 100 if pct else 1
    return f"{m * k:.{digits}f} ± {s * k:.{digits}f}"


ARM_ORDER = ("grpo", "grpo-2x", "opsd", "grpo+opsd", "rlsd")


def table_markdown(agg: dict) -> str:
    arms = agg["arms"]
    lines = [
        "| method | steps | held-out acc at start | final acc | best acc | step of best (per seed) "
        "| held-out leakage | rollout leakage | entropy (last 20%) | response length (last 20%) "
        "| clip low / high while lambda > 0 | step time / GRPO, steps 1-D | step time / GRPO, after D |",
        "|" + "---|" * 13,
    ]
    for arm in ARM_ORDER:
        if arm not in arms:
            continue
        a = arms[arm]
        clip = (f"{_fmt(a['clip_low_frac'])} / {_fmt(a['clip_high_frac'])} %" if a["clip_low_frac"][0] is not None else "-")
        lines.append(
            f"| {arm} | {a['steps']} | {_fmt(a['start_acc'])} % | {_fmt(a['final_acc'])} % | {_fmt(a['best_acc'])} % "
            f"| {', '.join(map(str, a['best_step_all']))} "
            f"| {a['heldout_leakage_total']} / {a['heldout_n_total']} | {a['rollout_leakage_total']} "
            f"| {_fmt(a['entropy_last'], False, 3)} | {_fmt(a['length_last'], False, 1)} | {clip} "
            f"| {_fmt(a['step_time_ratio_first_half'], False, 2)} | {_fmt(a['step_time_ratio_second_half'], False, 2)} |")
    lines += ["", "Paired differences vs GRPO of the same seed (percentage points, mean ± sd over seeds):", "",
              "| method | final - GRPO final | best - GRPO best | per seed (final) |", "|---|---|---|---|"]
    for arm in ARM_ORDER:
        p = agg["paired_vs_grpo"].get(arm)
        if p is None:
            continue
        per = ", ".join(f"{100 * d:+.1f}" for d in p["final_minus_grpo_all"])
        lines.append(f"| {arm} | {_fmt(p['final_minus_grpo'])} | {_fmt(p['best_minus_grpo'])} | {per} |")
    return "\n".join(lines) + "\n"


def plot_all(records: list[dict], out_dir: Path, settings: dict) -> list[Path]:
    """accuracy.png (held-out greedy accuracy by step, mean and min-max band over seeds) and
    dynamics.png (training reward, entropy, response length, RLSD clip fractions, leakage)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = {"grpo": "tab:blue", "grpo-2x": "tab:cyan", "opsd": "tab:red", "grpo+opsd": "tab:purple",
              "rlsd": "tab:green"}
    by_arm: dict[str, list[dict]] = {}
    for r in records:
        by_arm.setdefault(r["method"], []).append(r)

    def series(recs, key, evals=False):
        rows = {}
        for r in recs:
            for m in r["history"]:
                v = m.get(key)
                if v is None or (not evals and m["step"] == 0):
                    continue
                rows.setdefault(m["step"], []).append(v)
        xs = sorted(rows)
        return xs, [statistics.fmean(rows[x]) for x in xs], [min(rows[x]) for x in xs], [max(rows[x]) for x in xs]

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in ARM_ORDER:
        if arm not in by_arm:
            continue
        xs, mean, lo, hi = series(by_arm[arm], "eval/chain", evals=True)
        ax.plot(xs, [100 * v for v in mean], marker="o", ms=3, color=colors[arm],
                ls="--" if arm == "grpo-2x" else "-", label=f"{arm} ({len(by_arm[arm])} seeds)")
        ax.fill_between(xs, [100 * v for v in lo], [100 * v for v in hi], color=colors[arm], alpha=0.12)
    ax.axvline(settings["lambda_decay"] + 1, color="grey", lw=0.8, ls=":")
    ax.text(settings["lambda_decay"] + 1, ax.get_ylim()[0], " RLSD lambda = 0", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title(f"chain sum a+b+c, tiny 3.2M model, {settings['eval_size']} held-out problems")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    panels = [("reward_mean", "training reward"), ("entropy", "policy entropy (nats/token)"),
              ("response_length", "response length (tokens)"), ("clip_frac", "RLSD weights clipped (fraction)"),
              ("delta_mean", "mean delta = log P_T - log P_S"), ("leakage_count", "rollout leakage count")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for (key, title), ax in zip(panels, axes.flat):
        for arm in ARM_ORDER:
            if arm not in by_arm:
                continue
            xs, mean, lo, hi = series(by_arm[arm], key)
            if not xs:
                continue
            ax.plot(xs, mean, color=colors[arm], ls="--" if arm == "grpo-2x" else "-", label=arm, lw=1.2)
            ax.fill_between(xs, lo, hi, color=colors[arm], alpha=0.1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xlabel("RL step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "dynamics.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


# =================================================================================================
# main
# =================================================================================================

FULL = {"steps": 12, "seeds": 3, "eval_size": 200, "eval_every": 4, "prompts": 8, "group": 8,
        "warmup_steps": 500, "warmup_chunk": 25, "warmup_batch": 64, "warmup_target": 0.25,
        "warmup_seconds": 720, "warmup_pool": 600, "timing_steps": 4}
QUICK = {"steps": 3, "seeds": 1, "eval_size": 16, "eval_every": 2, "prompts": 4, "group": 4,
         "warmup_steps": 8, "warmup_chunk": 8, "warmup_batch": 16, "warmup_target": 1.0,
         "warmup_seconds": 600,
         "warmup_pool": 600, "timing_steps": 2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings for CI: checks that it runs")
    p.add_argument("--out", default="runs/compare", help="output directory (records, runs, plots)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (full: 3)")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run; GRPO also runs 2x (full: 12)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds are first-seed .. first-seed + seeds - 1 (to split seeds across processes)")
    p.add_argument("--eval-size", type=int, default=None, help="held-out problems (full: 200)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (full: 4)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="most supervised warm-up steps (full: 500, stopped early at the target)")
    p.add_argument("--warmup-target", type=float, default=None,
                   help="stop the warm-up once dev greedy accuracy reaches this (full: 0.25)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--lr", type=float, default=1e-4, help="RL learning rate, all methods (default 1e-4)")
    p.add_argument("--arms", default=",".join(METHODS + ("grpo-2x",)),
                   help="comma list of arms to train (default all: grpo,opsd,grpo+opsd,rlsd,grpo-2x); "
                        "arms can run in separate processes with separate --out and be merged "
                        "by copying records/ and running --aggregate-only")
    p.add_argument("--skip", default="", help="comma list of stages to skip: teacher,timing,repro,grpo2x")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild the table and plots from --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base = dict(QUICK if args.quick else FULL)
    for key in ("seeds", "steps", "eval_size", "eval_every", "warmup_steps", "warmup_target"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    settings = {**base, "threads": args.threads, "lr": args.lr, "warmup_lr": 2e-3,
                "max_new_tokens": 32, "rl_pool": RL_POOL, "lambda_decay": max(1, base["steps"] // 2),
                "quick": args.quick}
    skip = {s for s in args.skip.split(",") if s}
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(METHODS) - {"grpo-2x"}
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {sorted(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logfile = (out / "log.txt").open("a", encoding="utf-8")
    started = time.perf_counter()

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - started:7.1f}s] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = list(range(args.first_seed, args.first_seed + settings["seeds"]))
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update({"settings": settings, "command": "python bench/compare_methods.py " + " ".join(argv or sys.argv[1:]),
                    "machine": machine_description()})

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    collector = Collector(log, every=max(1, settings["steps"] // 4))
    pm = plugin_manager()
    pm.register(collector, name="compare_methods_collector")

    if not args.aggregate_only:
        log(f"settings: {json.dumps(settings)}")
        warm_dir, curve = warm_start(pm, settings, out, log)
        results["warm_start"] = {"dir": str(warm_dir), "dev_curve": curve}
        if "teacher_check" not in results and "teacher" not in skip:
            results["teacher_check"] = teacher_check(pm, warm_dir, settings, log)
            save()
        # Seed-major order, so that an interrupted run still has every method for its first
        # seeds; the step-time benchmark right after the first seed, the same-seed rerun after
        # the last, and the long GRPO-2x runs at the end.
        for seed in seeds:
            for method in [m for m in METHODS if m in arms]:
                run_one(pm, collector, method, seed, settings["steps"], settings, warm_dir, out, log)
            aggregate(out, settings, results, log)
            save()
            if "timing" not in skip and "timing" not in results:
                results["timing"] = step_time_benchmark(pm, settings, warm_dir, out, settings["timing_steps"], log)
                save()
        if "repro" not in skip and "repro" not in results and "rlsd" in arms:
            first = json.loads((out / "records" / f"rlsd-s{seeds[0]}.json").read_text())
            again = run_one(pm, collector, "rlsd", seeds[0], settings["steps"], settings, warm_dir,
                            out / "repro", log, name=f"rlsd-s{seeds[0]}-again")
            results["repro"] = {"config": f"rlsd seed {seeds[0]}", **compare_histories(first["history"], again["history"]),
                                "heldout_leakage_equal": first["heldout_leakage"] == again["heldout_leakage"]}
            log(f"reproducibility: {results['repro']}")
            save()
        if "grpo2x" not in skip and "grpo-2x" in arms:
            for seed in seeds:
                run_one(pm, collector, "grpo-2x", seed, 2 * settings["steps"], settings, warm_dir, out, log)
                aggregate(out, settings, results, log)
                save()
    aggregate(out, settings, results, log)
    results["total_seconds_this_invocation"] = time.perf_counter() - started
    save()
    log(f"done in {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


def aggregate(out: Path, settings: dict, results: dict, log) -> None:
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    if not records:
        return
    agg = summarize_records(records, settings)
    results["aggregate"] = agg
    # A free reproducibility check: GRPO for N steps and the first N steps of GRPO-2x are the
    # same configuration and seed but for the step count (run in separate processes), so their
    # logged metrics must agree step for step.
    by_name = {r["name"]: r for r in records}
    prefix = {}
    for r in records:
        twin = by_name.get(f"grpo-2x-s{r['seed']}") if r["method"] == "grpo" else None
        if twin is not None:
            prefix[f"seed {r['seed']}"] = compare_histories(r["history"], twin["history"][:len(r["history"])])
    if prefix:
        results["repro_grpo_vs_grpo2x_prefix"] = prefix
    table = table_markdown(agg)
    (out / "table.md").write_text(table)
    plot_all(records, out / "plots", settings)
    log("table:\n" + table)


def machine_description() -> str:
    import platform
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
