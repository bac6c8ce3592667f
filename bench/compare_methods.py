"""GRPO, GRPO 2x steps, OPSD, GRPO+OPSD and RLSD on the embedded default, with a negative control
(RLSD whose teacher sees no privileged context): the paper's comparison at small scale.

Data flow:
  the embedded default's config (`TrainConfig()`: tiny model, its tasks, its RL settings) with
  the tasks' rows pinned (source seed 0, so the held-out set does not move with the RL seed) and
  --eval-size held-out problems per task
  -> its supervised warm-up (`rlsd_core.loop.warmed_up_dir`, exactly the cached model `rlsd
     train` starts from when the sizes match), shared by every arm and seed: one warm start
  -> the teacher check on that model (`rlsd_core.loop.check_config`, the code of `rlsd
     check-teacher`): does the self-teacher pass before any RL is spent on it?
  -> `train(cfg, pm)` once per (arm, seed); GRPO also for twice the steps
  -> a held-out greedy pass over each final checkpoint for the leakage count
  -> an interleaved step-time benchmark (GRPO and RLSD steps alternated, so that load from other
     processes hits both alike) -> a same-seed rerun (reproducibility)
  -> results.json, table.md (means with 95% confidence intervals over seeds, paired differences
     vs GRPO of the same seed) and PNG plots in --out.

Arms differ only in the objective (`algo.loss`), the step count (grpo-2x) and, for the negative
control `rlsd-none`, the injector (`none`: the teacher sees the student's prompt, so delta = 0
and RLSD must reduce to GRPO up to float noise: a check of the pipeline, not of the method).

Unattended and resumable: every (arm, seed) writes its record when done and is skipped when its
record exists, so a killed invocation continues where it stopped; arms and seeds can run in
separate processes on the same --out (`--arms`, `--first-seed`, `--seeds`); `--aggregate-only`
rebuilds the table and plots. Run it at low priority on a shared machine:

    nice -n 10 python bench/compare_methods.py --out runs/compare --threads 1
    python bench/compare_methods.py --quick --out runs/compare-quick     # CI: checks that it runs
    python bench/compare_methods.py --out runs/compare --aggregate-only

Nothing here re-implements the loop: training is `train(cfg, pm)`, the warm start is the
trainer's warm-up, the teacher check is `check_config`, step timing reads the trainer's own
`time/step_s` metric, leakage is `rlsd_core.leakage`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from rlsd_core import get_plugin_manager, hookimpl, leakage
from rlsd_core.config import TrainConfig
from rlsd_core.data import TeacherPrompts, load_task, render_prompt, student_messages
from rlsd_core.engines import SamplingParams, make_engine
from rlsd_core.loop import check_config, setup, train, train_step, warmed_up_dir
from rlsd_core.models import load_model, load_tokenizer, load_vision, resolve_model
from rlsd_core.rewards import build_scorer

ARMS = ("grpo", "grpo-2x", "opsd", "grpo+opsd", "rlsd", "rlsd-none")
LOSS = {"grpo": "grpo", "grpo-2x": "grpo", "opsd": "opsd", "grpo+opsd": "grpo+opsd", "rlsd": "rlsd",
        "rlsd-none": "rlsd"}
# Two-sided 95% Student t quantiles by degrees of freedom (n seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 11: 2.201, 12: 2.179, 14: 2.145, 19: 2.093, 29: 2.045}


def t95(df: int) -> float:
    """The quantile for df degrees of freedom (the nearest tabulated df below, conservatively)."""
    return T95[max(k for k in T95 if k <= df)]


# =================================================================================================
# the configuration of one arm
# =================================================================================================

def task_entries(settings: dict, injector: str | None = None) -> list[dict]:
    """The embedded default's tasks with their rows pinned: source seed 0 (the held-out set is
    the same problems for every RL seed, and disjoint from what the warm-up trained on, which is
    the same tasks' training rows) and settings['eval_size'] held-out problems each (None: the
    default's sizes, so that the warm start is the default's cached warm-up)."""
    out = []
    for task in TrainConfig().tasks:
        entry = task.model_dump(exclude_defaults=True)
        entry["options"] = {**task.options, "seed": 0}
        if settings["eval_size"] is not None:
            entry["eval_size"] = settings["eval_size"]
        if injector is not None:
            entry["injector"] = injector
        out.append(entry)
    return out


def base_config(settings: dict, seed: int, run_dir: Path) -> TrainConfig:
    """The default config with the comparison's sizes."""
    tree = {
        "seed": seed, "steps": settings["steps"], "output_dir": str(run_dir), "threads": settings["threads"],
        "tasks": task_entries(settings),
        "eval": {"every": settings["eval_every"]},
        "teacher": {"check": "false"},  # checked once, on the shared warm start
        "log": {"console": False, "jsonl": True, "plot": False, "tensorboard": "false", "samples_every": 0},
    }
    if settings.get("warmup_steps") is not None:
        tree["warmup"] = {"steps": settings["warmup_steps"]}
    if settings.get("prompts") is not None:
        tree["rollout"] = {"prompts_per_step": settings["prompts"], "group_size": settings["group"]}
    return TrainConfig.model_validate(tree)


def run_config(arm: str, seed: int, settings: dict, warm_dir: Path, run_dir: Path) -> TrainConfig:
    """One arm: the warm start as the model (no second warm-up), the arm's objective and steps."""
    cfg = base_config(settings, seed, run_dir)
    cfg.model.name_or_path = str(warm_dir)
    cfg.warmup.enabled = "false"
    cfg.algo.loss = LOSS[arm]
    if arm == "grpo-2x":
        cfg.steps = 2 * settings["steps"]
    if arm == "rlsd-none":
        cfg.tasks = TrainConfig.model_validate({"tasks": task_entries(settings, "none")}).tasks
    return cfg


# =================================================================================================
# the shared warm start and the teacher check
# =================================================================================================

def warm_start(pm, settings: dict, log) -> Path:
    """The embedded default's warm-up on the comparison's rows (cached by content hash, so a
    rerun or the README's `rlsd train` with the same sizes reuses it)."""
    cfg = base_config(settings, 0, Path("unused"))
    registry = pm.registry
    tasks = [load_task(t, registry, seed=0) for t in cfg.tasks]
    injectors = {t.injector: registry.injector(t.injector) for t in tasks}
    base = Path(resolve_model("tiny"))
    prompts = TeacherPrompts(tasks, injectors, load_tokenizer(str(base)), load_vision(str(base)))
    scorers = {t.name: build_scorer(t, registry) for t in tasks}
    t0 = time.perf_counter()
    last = [0.0]

    def on_step(i: int, n: int, loss: float) -> None:
        if time.perf_counter() - last[0] > 30 or i == n:
            last[0] = time.perf_counter()
            log(f"  warm-up {i}/{n}, loss {loss:.3f} ({last[0] - t0:.0f} s)")

    try:
        path = warmed_up_dir(base, tasks, prompts, cfg.warmup, seed=0, scorers=scorers,
                             max_new_tokens=cfg.eval.max_new_tokens, on_step=on_step,
                             on_cached=lambda p: log(f"warm start: cached at {p}"))
    finally:
        for scorer in scorers.values():
            scorer.close()
    log(f"warm start: {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def teacher_check(pm, settings: dict, warm_dir: Path, log) -> dict:
    cfg = run_config("rlsd", 0, settings, warm_dir, Path("unused"))
    rows = max(t.eval_size for t in cfg.tasks)  # every held-out problem (fewer when a task has fewer)
    report = check_config(cfg, pm, rows=rows, sample_rows=settings["check_sample_rows"])
    data = report.to_dict()
    log(f"teacher check: {data['verdict']} ({data['seconds']:.0f} s): {data['reason']}")
    return data


# =================================================================================================
# the runs: train() once per (arm, seed)
# =================================================================================================

class Collector:
    """An event-hook observer: keeps every step's metrics and prints a progress line now and then."""

    def __init__(self, log, every: int = 10) -> None:
        self.log, self.every = log, every
        self.history: dict[str, list[dict]] = {}

    @hookimpl
    def rlsd_after_step(self, run, step, metrics):
        self.history.setdefault(str(run.run_dir), []).append(dict(metrics))
        ev = {k: round(v, 3) for k, v in metrics.items() if k.startswith("eval/") and v is not None}
        if step % self.every == 0 or ev:
            self.log(f"    {Path(run.run_dir).name} step {step}/{run.total_steps} "
                     f"reward {metrics.get('reward_mean') and round(metrics['reward_mean'], 3)} {ev or ''} "
                     f"t {metrics.get('time/step_s') and round(metrics['time/step_s'], 2)}")


def heldout_leakage(pm, cfg: TrainConfig, checkpoint: Path) -> dict:
    """Greedy generations of a checkpoint on the held-out prompts (student prompt only), through
    the leakage detector against what the teacher would see. (The trainer's evaluation returns
    accuracies, not texts, hence this second pass.)"""
    registry = pm.registry
    tok = load_tokenizer(str(checkpoint))
    engine = make_engine("hf", load_model(str(checkpoint), "float32"), tok)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens,
                            stop_token_ids=(tok.eos_token_id,))
    leaks, n, examples = 0, 0, []
    # Leakage is judged against the reference_answer prompt whatever the arm's injector: the
    # question is whether the policy learnt to write what that teacher saw.
    for task_cfg in cfg.tasks:
        task = load_task(task_cfg.model_copy(update={"injector": "reference_answer"}), registry, seed=cfg.seed)
        teacher = TeacherPrompts([task], {task.injector: registry.injector(task.injector)}, tok)
        prompts = [render_prompt(tok, student_messages(r)) for r in task.eval]
        for row, g in zip(task.eval, engine.generate(prompts, params)):
            text = tok.decode(g[0].token_ids, skip_special_tokens=True)
            hit = leakage(text, teacher.prompt(task.name, row)[1], row["prompt"])
            n += 1
            if hit:
                leaks += 1
                if len(examples) < 3:
                    examples.append({"prompt": row["prompt"], "response": text, "phrase": hit.phrase,
                                     "ngram": hit.ngram})
    engine.close()
    return {"heldout_leakage": leaks, "heldout_n": n, "examples": examples}


def run_one(pm, collector: Collector, arm: str, seed: int, settings: dict, warm_dir: Path, out: Path,
            log, name: str | None = None) -> dict:
    """Train one arm (skipped when its record already exists: a killed run resumes)."""
    name = name or f"{arm}-s{seed}"
    record_path = out / "records" / f"{name}.json"
    if record_path.exists():
        log(f"  {name}: done earlier, reusing {record_path}")
        return json.loads(record_path.read_text())
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a half-finished run of a killed invocation
    cfg = run_config(arm, seed, settings, warm_dir, run_dir)
    log(f"  {name}: training {cfg.steps} steps")
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = train(cfg, pm, run_dir=run_dir)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    history = collector.history.pop(str(run_dir))
    leak = heldout_leakage(pm, cfg, run_dir / "checkpoints" / f"step-{cfg.steps:06d}")
    record = {"name": name, "arm": arm, "seed": seed, "steps": cfg.steps, "seconds": seconds,
              "cpu_seconds": cpu, "load_end": os.getloadavg()[0], "summary": summary,
              "history": history, **leak}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # 13 MB each; the record has it all
    acc = [mean_eval(m) for m in history if mean_eval(m) is not None]
    log(f"  {name}: {seconds:.0f} s ({cpu:.0f} CPU-s), held-out {acc[0]:.3f} -> {acc[-1]:.3f}, "
        f"leakage {leak['heldout_leakage']}/{leak['heldout_n']}")
    return record


# =================================================================================================
# step time: GRPO and RLSD steps interleaved on the same machine, same warm start
# =================================================================================================

def step_time_benchmark(pm, settings: dict, warm_dir: Path, out: Path, log) -> dict:
    """Median `time/step_s` (the trainer's own timer) of GRPO, RLSD with lambda 0.5 (teacher
    forward on) and RLSD with lambda 0 (teacher forward skipped), one step of each in turn, so
    that load from other processes falls on all three alike."""
    arms = {"grpo": ("grpo", None), "rlsd_lambda>0": ("rlsd", {"name": "constant", "options": {"lam": 0.5}}),
            "rlsd_lambda=0": ("rlsd", {"name": "grpo", "options": {}})}
    runs = {}
    for name, (arm, sched) in arms.items():
        shutil.rmtree(out / "timing" / name, ignore_errors=True)
        cfg = run_config(arm, 0, settings, warm_dir, out / "timing" / name)
        if sched:
            cfg.scheduler = cfg.scheduler.model_validate(sched)
        runs[name] = setup(cfg, pm, run_dir=out / "timing" / name)
    times: dict[str, list[float]] = {a: [] for a in arms}
    try:
        for step in range(1, settings["timing_steps"] + 1):
            for name, run in runs.items():
                m = train_step(run, step)
                run.progress.history.append(m)
                times[name].append(m["time/step_s"])
    finally:
        for run in runs.values():
            run.parts.close()
    med = {a: statistics.median(t) for a, t in times.items()}
    res = {"steps": settings["timing_steps"], "median_step_s": med, "all_step_s": times,
           "ratio_lambda_pos": med["rlsd_lambda>0"] / med["grpo"],
           "ratio_lambda_zero": med["rlsd_lambda=0"] / med["grpo"]}
    log(f"step time (interleaved, median of {res['steps']}): " + json.dumps({k: round(v, 3) for k, v in med.items()})
        + f" ratio lambda>0 {res['ratio_lambda_pos']:.3f}, lambda=0 {res['ratio_lambda_zero']:.3f}")
    return res


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

def mean_eval(metrics: dict) -> float | None:
    """Held-out accuracy of a step: the mean over tasks of eval/<task> (None: no evaluation)."""
    vals = [v for k, v in metrics.items() if k.startswith("eval/") and v is not None]
    return statistics.fmean(vals) if vals else None


def _evals(history: list[dict], key: str | None = None) -> list[tuple[int, float]]:
    pick = mean_eval if key is None else (lambda m: m.get(key))
    return [(m["step"], pick(m)) for m in history if pick(m) is not None]


def ci(xs: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, sample sd, half-width of the 95% confidence interval of the mean) over seeds."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    if len(xs) == 1:
        return xs[0], 0.0, None
    sd = statistics.stdev(xs)
    return statistics.fmean(xs), sd, t95(len(xs) - 1) * sd / math.sqrt(len(xs))


def _median_step_time(history: list[dict], lo: int, hi: int) -> float | None:
    xs = [m["time/step_s"] for m in history if lo <= m["step"] <= hi and m.get("time/step_s")]
    return statistics.median(xs) if xs else None


def _arm_numbers(recs: list[dict], grpo_by_seed: dict, tasks: list[str]) -> dict:
    """Per-seed numbers of one arm (lists, one entry per seed)."""
    n = {k: [] for k in ("start", "final", "best", "best_step", "entropy", "length", "reward",
                         "clip_lo", "clip_hi", "delta", "leak_roll", "time_ratio")}
    n.update({f"final/{t}": [] for t in tasks})
    for r in recs:
        ev = _evals(r["history"])
        trained = [e for e in ev if e[0] > 0]
        best = max(trained, key=lambda e: (e[1], -e[0]))
        n["start"].append(ev[0][1])
        n["final"].append(trained[-1][1])
        n["best"].append(best[1])
        n["best_step"].append(best[0])
        for t in tasks:
            n[f"final/{t}"].append(_evals(r["history"], f"eval/{t}")[-1][1])
        steps = [m for m in r["history"] if m["step"] > 0]
        tail = steps[-max(1, len(steps) // 5):]
        n["entropy"].append(statistics.fmean(m["entropy"] for m in tail))
        n["length"].append(statistics.fmean(m["response_length"] for m in tail))
        n["reward"].append(statistics.fmean(m["reward_mean"] for m in tail if m.get("reward_mean") is not None))
        on = [m for m in steps if m.get("clip_low_frac") is not None]
        if on:
            n["clip_lo"].append(statistics.fmean(m["clip_low_frac"] for m in on))
            n["clip_hi"].append(statistics.fmean(m["clip_high_frac"] for m in on))
            n["delta"].append(statistics.fmean(m["delta_mean"] for m in on))
        n["leak_roll"].append(sum(m.get("leakage_count") or 0 for m in steps))
        g = grpo_by_seed.get(r["seed"])
        if g is not None:
            mine = _median_step_time(r["history"], 1, len(steps))
            base = _median_step_time(g["history"], 1, len(steps))
            if mine and base:
                n["time_ratio"].append(mine / base)
    return n


def summarize_records(records: list[dict]) -> dict:
    """Per arm, over seeds: start/final/best held-out accuracy (mean over tasks) with 95% CIs,
    per-task finals, leakage, entropy, length, clip fractions, step time vs GRPO; and paired
    differences vs GRPO of the same seed with 95% CIs."""
    tasks = sorted({k[5:] for r in records for m in r["history"] for k in m if k.startswith("eval/")})
    arms: dict[str, list[dict]] = {}
    for r in records:
        arms.setdefault(r["arm"], []).append(r)
    grpo_by_seed = {r["seed"]: r for r in arms.get("grpo", [])}
    table, paired = {}, {}
    for arm, recs in arms.items():
        recs.sort(key=lambda r: r["seed"])
        n = _arm_numbers(recs, grpo_by_seed, tasks)
        table[arm] = {"seeds": [r["seed"] for r in recs], "steps": recs[0]["steps"],
                      **{k: ci(v) for k, v in n.items() if k not in ("best_step", "leak_roll")},
                      "best_step_all": n["best_step"], "final_all": n["final"],
                      "heldout_leakage_total": sum(r["heldout_leakage"] for r in recs),
                      "heldout_n_total": sum(r["heldout_n"] for r in recs),
                      "rollout_leakage_total": sum(n["leak_roll"]),
                      "seconds_mean": statistics.fmean(r["seconds"] for r in recs),
                      "cpu_seconds_mean": statistics.fmean(r.get("cpu_seconds", 0.0) for r in recs)}
        if arm == "grpo":
            continue
        diffs = {"final": [], "best": [], **{f"final/{t}": [] for t in tasks}}
        for r, fin, best, *per_task in zip(recs, n["final"], n["best"], *[n[f"final/{t}"] for t in tasks]):
            g = grpo_by_seed.get(r["seed"])
            if g is None:
                continue
            gn = _arm_numbers([g], {}, tasks)
            diffs["final"].append(fin - gn["final"][0])
            diffs["best"].append(best - gn["best"][0])
            for t, v in zip(tasks, per_task):
                diffs[f"final/{t}"].append(v - gn[f"final/{t}"][0])
        paired[arm] = {k: ci(v) for k, v in diffs.items()} | {"final_all": diffs["final"]}
    return {"tasks": tasks, "arms": table, "paired_vs_grpo": paired}


def _fmt(triple, pct: bool = True, digits: int = 1) -> str:
    m, _, half = triple
    if m is None:
        return "-"
    k = 100 if pct else 1
    return f"{m * k:.{digits}f}" + (f" ± {half * k:.{digits}f}" if half is not None else "")


def table_markdown(agg: dict) -> str:
    arms, tasks = agg["arms"], agg["tasks"]
    head = ("| arm | seeds | steps | held-out at start | final | best | step of best (per seed) | "
            + " | ".join(f"final {t}" for t in tasks)
            + " | held-out leakage | rollout leakage | entropy (last 20%) | length (last 20%) "
              "| clip low / high | mean delta | step time / GRPO |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm in ARMS:
        a = arms.get(arm)
        if a is None:
            continue
        clip = (f"{_fmt(a['clip_lo'])} / {_fmt(a['clip_hi'])} %" if a["clip_lo"][0] is not None else "-")
        lines.append(
            f"| {arm} | {len(a['seeds'])} | {a['steps']} | {_fmt(a['start'])} % | {_fmt(a['final'])} % "
            f"| {_fmt(a['best'])} % | {', '.join(map(str, a['best_step_all']))} | "
            + " | ".join(f"{_fmt(a[f'final/{t}'])} %" for t in tasks)
            + f" | {a['heldout_leakage_total']} / {a['heldout_n_total']} | {a['rollout_leakage_total']} "
              f"| {_fmt(a['entropy'], False, 3)} | {_fmt(a['length'], False, 1)} | {clip} "
              f"| {_fmt(a['delta'], False, 3)} | {_fmt(a['time_ratio'], False, 2)} |")
    lines += ["", "Paired differences vs GRPO of the same seed (percentage points; mean ± half-width "
              "of the 95% confidence interval over seeds):", "",
              "| arm | final - GRPO final | best - GRPO best | "
              + " | ".join(f"final {t} - GRPO" for t in tasks) + " | per seed (final) |",
              "|" + "---|" * (4 + len(tasks))]
    for arm in ARMS:
        p = agg["paired_vs_grpo"].get(arm)
        if p is None:
            continue
        per = ", ".join(f"{100 * d:+.1f}" for d in p["final_all"])
        lines.append(f"| {arm} | {_fmt(p['final'])} | {_fmt(p['best'])} | "
                     + " | ".join(_fmt(p[f"final/{t}"]) for t in tasks) + f" | {per} |")
    return "\n".join(lines) + "\n"


COLORS = {"grpo": "tab:blue", "grpo-2x": "tab:cyan", "opsd": "tab:red", "grpo+opsd": "tab:purple",
          "rlsd": "tab:green", "rlsd-none": "tab:olive"}


def _series(recs, pick, evals=False):
    rows: dict[int, list[float]] = {}
    for r in recs:
        for m in r["history"]:
            v = pick(m)
            if v is None or (not evals and m["step"] == 0):
                continue
            rows.setdefault(m["step"], []).append(v)
    xs = sorted(rows)
    return xs, [statistics.fmean(rows[x]) for x in xs], [min(rows[x]) for x in xs], [max(rows[x]) for x in xs]


def plot_all(records: list[dict], out_dir: Path, settings: dict) -> list[Path]:
    """accuracy.png (held-out greedy accuracy by step, mean and min-max band over seeds) and
    dynamics.png (training reward, entropy, response length, clip fraction, delta, leakage)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    by_arm: dict[str, list[dict]] = {}
    for r in records:
        by_arm.setdefault(r["arm"], []).append(r)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm in ARMS:
        if arm not in by_arm:
            continue
        xs, mean, lo, hi = _series(by_arm[arm], mean_eval, evals=True)
        ax.plot(xs, [100 * v for v in mean], marker="o", ms=3, color=COLORS[arm],
                ls="--" if arm in ("grpo-2x", "rlsd-none") else "-", label=f"{arm} ({len(by_arm[arm])} seeds)")
        ax.fill_between(xs, [100 * v for v in lo], [100 * v for v in hi], color=COLORS[arm], alpha=0.1)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy, mean over tasks (%)")
    sizes = {t.name: t.eval_size for t in TrainConfig().tasks} if settings["eval_size"] is None else settings["eval_size"]
    ax.set_title(f"embedded default (tiny 3.2M model), held-out problems: {sizes}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out_dir / "accuracy.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    panels = [("reward_mean", "training reward"), ("entropy", "policy entropy (nats/token)"),
              ("response_length", "response length (tokens)"), ("clip_frac", "evidence weights clipped (fraction)"),
              ("delta_mean", "mean delta = log P_T - log P_S"), ("leakage_count", "rollout leakage count")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for (key, title), ax in zip(panels, axes.flat):
        for arm in ARMS:
            if arm not in by_arm:
                continue
            xs, mean, lo, hi = _series(by_arm[arm], lambda m, key=key: m.get(key))
            if xs:
                ax.plot(xs, mean, color=COLORS[arm], ls="--" if arm in ("grpo-2x", "rlsd-none") else "-",
                        label=arm, lw=1.2)
                ax.fill_between(xs, lo, hi, color=COLORS[arm], alpha=0.1)
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

# None: the embedded default's own value (TrainConfig()).
FULL = {"steps": None, "seeds": 5, "eval_size": None, "eval_every": 8, "prompts": None, "group": None,
        "warmup_steps": None, "timing_steps": 6, "check_sample_rows": 64}
QUICK = {"steps": 2, "seeds": 1, "eval_size": 8, "eval_every": 1, "prompts": 4, "group": 4,
         "warmup_steps": 6, "timing_steps": 1, "check_sample_rows": 2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings for CI: checks that it runs")
    p.add_argument("--out", default="runs/compare", help="output directory (records, runs, plots)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (full: 5)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds are first-seed .. first-seed + seeds - 1 (to split seeds across processes)")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run; grpo-2x runs twice as many "
                                                           "(full: the embedded default's)")
    p.add_argument("--eval-size", type=int, default=None,
                   help="held-out problems per task (full: the default's, 100 each; a larger set "
                        "means a warm-up on the remaining rows, trained once and cached)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (full: 8)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="the warm-up's step cap (full: the default's; its readiness check may stop it sooner)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of arms (default all: {','.join(ARMS)})")
    p.add_argument("--skip", default="", help="comma list of stages to skip: teacher,timing,repro")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild the table and plots from --out")
    return p.parse_args(argv)


def stage(out: Path, name: str, compute) -> dict:
    """A stage's result, in its own file of --out (computed once; several processes can share
    one --out because no two write the same file)."""
    path = out / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("seeds", "steps", "eval_size", "eval_every", "warmup_steps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["steps"] = settings["steps"] or TrainConfig().steps
    settings.update(threads=args.threads, quick=args.quick)
    skip = {s for s in args.skip.split(",") if s}
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS):
        raise SystemExit(f"--arms: unknown arm(s) {sorted(set(arms) - set(ARMS))}; choose from {ARMS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logfile = (out / f"log-{os.getpid()}.txt").open("a", encoding="utf-8")
    started = time.perf_counter()

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} {time.perf_counter() - started:7.1f}s] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = list(range(args.first_seed, args.first_seed + settings["seeds"]))
    stage(out, "settings", lambda: {**settings, "machine": machine_description(),
                                    "command": "python bench/compare_methods.py " + " ".join(argv or sys.argv[1:])})
    collector = Collector(log, every=max(1, settings["steps"] // 4))
    pm = get_plugin_manager()
    pm.register(collector, name="compare_methods_collector")
    if not args.aggregate_only:
        log(f"settings: {json.dumps(settings)}")
        warm_dir = warm_start(pm, settings, log)
        if "teacher" not in skip:
            stage(out, "teacher_check", lambda: teacher_check(pm, settings, warm_dir, log))
        # Seed-major order: an interrupted run still has every arm for its first seeds; the
        # step-time benchmark after the first seed, the same-seed rerun after the last.
        for seed in seeds:
            for arm in [a for a in ARMS if a in arms]:
                run_one(pm, collector, arm, seed, settings, warm_dir, out, log)
            aggregate(out, settings, log)
            if "timing" not in skip:
                stage(out, "timing", lambda: step_time_benchmark(pm, settings, warm_dir, out, log))
        if "repro" not in skip and "rlsd" in arms:
            stage(out, "repro", lambda: repro(pm, collector, seeds[0], settings, warm_dir, out, log))
    aggregate(out, settings, log)
    log(f"done in {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


def repro(pm, collector, seed: int, settings: dict, warm_dir: Path, out: Path, log) -> dict:
    """RLSD of one seed trained a second time, compared metric by metric with the first."""
    first = json.loads((out / "records" / f"rlsd-s{seed}.json").read_text())
    again = run_one(pm, collector, "rlsd", seed, settings, warm_dir, out / "repro", log, name=f"rlsd-s{seed}-again")
    res = {"config": f"rlsd seed {seed}", **compare_histories(first["history"], again["history"]),
           "heldout_leakage_equal": first["heldout_leakage"] == again["heldout_leakage"]}
    log(f"reproducibility: {res}")
    return res


def aggregate(out: Path, settings: dict, log) -> None:
    """results.json (every stage's file, the aggregate, the free checks), table.md, plots."""
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    if not records:
        return
    results = {name: json.loads((out / f"{name}.json").read_text())
               for name in ("settings", "teacher_check", "timing", "repro") if (out / f"{name}.json").exists()}
    results["aggregate"] = summarize_records(records)
    # Free reproducibility checks: GRPO for N steps vs the first N steps of GRPO-2x (same config
    # and seed but the step count), and RLSD with the `none` injector vs GRPO.
    by_name = {r["name"]: r for r in records}
    prefix, control = {}, {}
    for r in records:
        if r["arm"] != "grpo":
            continue
        twin = by_name.get(f"grpo-2x-s{r['seed']}")
        if twin is not None:
            prefix[f"seed {r['seed']}"] = compare_histories(r["history"], twin["history"][:len(r["history"])])
        none = by_name.get(f"rlsd-none-s{r['seed']}")
        if none is not None:
            control[f"seed {r['seed']}"] = negative_control(r, none)
    results["repro_grpo_vs_grpo2x_prefix"] = prefix
    results["negative_control"] = control
    tmp = out / f"results.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "results.json")
    table = table_markdown(results["aggregate"])
    (out / "table.md").write_text(table)
    plot_all(records, out / "plots", settings)
    log("table:\n" + table)


def negative_control(grpo: dict, none: dict) -> dict:
    """RLSD whose teacher sees the student's prompt vs GRPO of the same seed. At step 1 the
    snapshot teacher equals the policy, so delta is 0 up to float rounding (pi_old from the
    rollout's decode vs the teacher's whole forward), every weight is 1 and the step is GRPO's; later the policy drifts from the snapshot and delta measures that drift only."""
    same = 0
    for a, b in zip(grpo["history"][1:], none["history"][1:]):
        if a.get("reward_mean") != b.get("reward_mean") or a.get("loss") != b.get("loss"):
            break
        same += 1
    return {"steps_identical_to_grpo": same, "delta_step1": none["history"][1].get("delta_mean"),
            "final_grpo": mean_eval(grpo["history"][-1]), "final_rlsd_none": mean_eval(none["history"][-1])}


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
