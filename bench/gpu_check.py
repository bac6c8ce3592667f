"""The GPU check: a few RLSD steps on CUDA through `rlsd train`, then `--resume`, with the numbers
that say whether the GPU path works (scripts/gpu_check.sh sets the machine up and calls this).

    python bench/gpu_check.py                    # on a GPU machine: about 3-5 minutes on one H200
    python bench/gpu_check.py --device cpu --small   # the same flow at toy sizes, on the CPU

Runs, each `rlsd train` in its own process (so each has its own peak-memory counter):
  tiny-cuda      the embedded tiny model (built and warmed up in place), RLSD in bf16 autocast
  tiny-resume    the same run continued with --resume for two more steps
  tiny-cpu       the same config on the CPU, for the CUDA/CPU step-time ratio
  qwen05-cuda    a Qwen2 with Qwen2.5-0.5B's shape (494 M parameters, 151,936-token vocabulary)
                 and random weights, built from its config, RLSD in bf16 autocast
  qwen05-resume  continued with --resume for one more step
Checked (exit code 1 if any fails): every run finishes; every loss is finite; the tiny model's
weights moved; the 0.5B's moved unless no step had a reward signal (random weights rarely
earn a reward; then RLSD's gradient is exactly 0, which is checked instead); each resumed run
continues at the checkpoint's next step. Reported against the targets (not failing the check):
rollout tokens/s, step time by stage, peak GPU memory by stage against bench/gpu_memory.py's
arithmetic (target: within 20%), and the tiny model's CUDA/CPU step-time ratio (target: >= 10).
Results: <out>/gpu_check.md (the markdown summary, also on stdout), gpu_check.json, one log and
metrics file per run; models and checkpoints stay in --work (large). `--report-only` redoes the
report from a finished check's files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_memory  # noqa: E402

TASKS = [{"name": "reverse", "source": "reverse", "eval_size": 16},
         {"name": "addition", "source": "addition", "eval_size": 16}]
# A Qwen2.5-0.5B-shaped model: what docs/training.md's arithmetic is about.
QWEN05 = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
          "num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 64,
          "vocab_size": 151936, "max_position_embeddings": 4096, "tie_word_embeddings": True}
SCORING_MICRO_BATCH = 32  # rlsd's scoring.micro_batch default (the runs leave it)
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "vocab_size": 4096, "max_position_embeddings": 512, "tie_word_embeddings": True}


def build_random_qwen2(out: Path, shape: dict, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A Qwen2 causal LM with `shape` and random weights, with the tiny model's tokenizer, saved
    as a model directory (built on the CPU in fp32: what a real checkpoint would hold)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_args(model: str, out: Path, device: str, *, steps: int, prompts: int, group: int,
             new_tokens: int, warmup_steps: int, lr: float, tasks=TASKS, extra=()) -> list[str]:
    """`rlsd train` arguments of one run: the built-in tasks, a checkpoint every 2 steps, bf16
    autocast on CUDA (fp32 on the CPU), no weight decay (so weights move only with a gradient)."""
    precision = "bf16" if device == "cuda" else "fp32"
    return ["--model.name_or_path", model, "--model.device", device,
            "--optim.precision", precision, "--output_dir", str(out), "--steps", str(steps),
            "--checkpoint_every", "2", "--seed", "1", "--optim.lr", str(lr),
            "--optim.weight_decay", "0", "--set", f"tasks={json.dumps(tasks)}",
            "--rollout.prompts_per_step", str(prompts), "--rollout.group_size", str(group),
            "--rollout.max_new_tokens", str(new_tokens), "--eval.max_new_tokens", str(new_tokens),
            "--eval.every", "0", "--warmup.enabled", "true" if warmup_steps else "false",
            "--warmup.steps", str(max(warmup_steps, 1)), "--log.console", "false",
            "--log.plot", "false", "--log.tensorboard", "false", *extra]


def child(info_file: Path, args: list[str]) -> int:
    """`rlsd train ARGS` in this process; then the process-wide CUDA peaks, to `info_file`."""
    import torch

    from rlsd_core.cli import main as rlsd

    t0 = time.perf_counter()
    code = rlsd(["train", *args])
    info = {"exit": code, "wall_s": time.perf_counter() - t0}
    if torch.cuda.is_available():
        info.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                    peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                    device_name=torch.cuda.get_device_name(),
                    total_gib=torch.cuda.mem_get_info()[1] / 2**30)
    info_file.write_text(json.dumps(info))
    return code


def launch(name: str, run_dir: Path, args: list[str], env: dict, out: Path) -> dict:
    """One `rlsd train` in its own process (its own CUDA peak counter); its log and peaks go to
    `out`, its run directory (checkpoints: large) stays where it is."""
    log, info = out / f"{name}.log", out / f"{name}.child.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(info), "--", *args]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    print(f"  {name}: exit {proc.returncode} in {wall:.0f} s ({log.name})", flush=True)
    return {"name": name, "exit": proc.returncode, "wall_s": wall, "run_dir": str(run_dir),
            "log": str(log), "info": str(info)}


def collect(runs: list[dict], split: dict[str, int], n_responses: dict[str, int]) -> None:
    """Attach each run's child info and its steps' metrics. A run and its resumption share a
    run directory (one metrics.jsonl): `split[name]` is the last step of the first run."""
    for r in runs:
        info = Path(r["info"])
        r["child"] = json.loads(info.read_text()) if info.exists() else {}
        path = Path(r["run_dir"]) / "metrics.jsonl"
        metrics = [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []
        steps = [m for m in metrics if m.get("step", 0) > 0]
        base = r["name"].split("-")[0]
        if r["name"].endswith("-resume"):
            steps = [m for m in steps if m["step"] > split[base]]
        elif base in split:
            steps = [m for m in steps if m["step"] <= split[base]]
        for m in steps:
            m["n_responses"] = n_responses[base]
        r["steps"] = steps
        r["summary"] = summarize(r)


def summarize(run: dict) -> dict:
    """Mean stage times (after the first step, which pays for CUDA start-up), rollout tokens/s,
    the largest per-stage memory peaks, and whether every loss is finite."""
    steps = run["steps"]
    timed = steps[1:] or steps
    mean = lambda key: (sum(m.get(key) or 0.0 for m in timed) / len(timed)) if timed else None  # noqa: E731
    out = {f"{k}_s": mean(f"time/{k}_s") for k in
           ("rollout", "verify", "pi_old", "teacher", "train", "sync", "step")}
    # "score": the two no-grad scoring stages together (bench/gpu_memory.py's score phase).
    out["score_s"] = None if out["pi_old_s"] is None else out["pi_old_s"] + out["teacher_s"]
    tokens = [m["response_length"] * m["n_responses"] for m in timed if "n_responses" in m]
    if tokens and out["rollout_s"]:
        out["rollout_tok_s"] = sum(tokens) / len(tokens) / out["rollout_s"]
    for stage, keys in (("rollout", ("rollout",)), ("score", ("pi_old", "teacher")),
                        ("train", ("train",)), ("sync", ("sync",))):
        peaks = [m[f"memory/{k}_gib"] for m in steps for k in keys if f"memory/{k}_gib" in m]
        if peaks:
            out[f"mem_{stage}_gib"] = max(peaks)
    out["losses_finite"] = bool(steps) and all(
        m.get("loss") is not None and math.isfinite(m["loss"]) for m in steps)
    out["signal"] = any((m.get("grad_norm") or 0) > 0 for m in steps)
    out["steps"] = [m["step"] for m in steps]
    return out


def weights_moved(before_dir: Path, run_dir: Path) -> tuple[int, int]:
    """(tensors that changed, tensors) between a model directory and a run's final checkpoint."""
    from safetensors.torch import load_file

    from rlsd_core.loop.checkpoint import latest

    after = load_file(str(latest(run_dir) / "model.safetensors"))
    before = load_file(str(before_dir / "model.safetensors"))
    moved = sum(1 for k in after if k in before and not bool((after[k] == before[k]).all()))
    return moved, len(after)


def estimate(shape: dict, prompts: int, group: int, prompt_len: int, new_tokens: int) -> dict:
    """bench/gpu_memory.py's phases for this run's shape (HF engine, fp32 weights + autocast,
    one micro-batch = the whole rollout, scoring in chunks of scoring.micro_batch's default, no
    checkpointing)."""
    layers, h = shape["num_hidden_layers"], shape["hidden_size"]
    params = (shape["vocab_size"] * h + h
              + layers * (2 * h + h * h * 2 + 2 * h * shape["num_key_value_heads"] * shape["head_dim"]
                          + h + 2 * shape["num_key_value_heads"] * shape["head_dim"]
                          + 3 * h * shape["intermediate_size"]))
    s = gpu_memory.Shape(params, h, shape["intermediate_size"], layers,
                         shape["num_attention_heads"], shape["num_key_value_heads"],
                         shape["head_dim"], shape["vocab_size"])
    n = prompts * group
    step = gpu_memory.Step(seqs=n, prompt=prompt_len, response=new_tokens, micro=n,
                           chunk=min(n, SCORING_MICRO_BATCH), decode=n, checkpointing=False)
    return {k: v / 2**30 for k, v in gpu_memory.phases(s, step).items()} | {"params": params}


def prompt_length(model_dir: Path, tasks=TASKS) -> int:
    """The longest student prompt of the check's tasks, in tokens (what the forwards pad to)."""
    from rlsd_core.data import render_prompt, student_messages
    from rlsd_core.models import load_tokenizer
    from rlsd_core.plugins import get_plugin_manager
    from rlsd_core.config import TaskConfig
    from rlsd_core.data import load_task

    tok = load_tokenizer(str(model_dir))
    registry = get_plugin_manager().registry
    longest = 0
    for t in tasks:
        task = load_task(TaskConfig(**t), registry, seed=1)
        for row in task.train[:200]:
            longest = max(longest, len(render_prompt(tok, student_messages(row))))
    return longest


def report(results: dict, out: Path) -> tuple[list[str], list[str]]:
    """(the failed checks, the markdown summary for docs/engines.md)."""
    lines, failures = [], []
    env = next((r["child"] for r in results["runs"] if r["child"].get("device_name")), {})
    lines.append(f"Device: {env.get('device_name', results['device'])}, "
                 f"{env.get('total_gib', 0):.0f} GiB; torch {results['torch']}, "
                 f"transformers {results['transformers']}; check took {results['wall_s']:.0f} s.")
    lines.append("")
    lines.append("| run | steps | rollout tok/s | rollout s | score s | train s | sync s | step s | "
                 "peak GiB: rollout / score / train | process peak GiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in results["runs"]:
        s = r["summary"]
        mem = " / ".join(fmt(s.get(f"mem_{k}_gib"), 1) for k in ("rollout", "score", "train"))
        lines.append(f"| {r['name']} | {s['steps']} | {fmt(s.get('rollout_tok_s'), 0)} | "
                     f"{fmt(s['rollout_s'])} | {fmt(s['score_s'])} | {fmt(s['train_s'])} | "
                     f"{fmt(s['sync_s'])} | {fmt(s['step_s'])} | {mem} | "
                     f"{fmt(r['child'].get('peak_allocated_gib'), 1)} |")
        if r["exit"] != 0:
            failures.append(f"{r['name']}: rlsd train exited {r['exit']} (see {r['log']})")
        elif not s["losses_finite"]:
            failures.append(f"{r['name']}: a loss is not finite")
    lines.append("")
    for name, (moved, total, signal) in results["moved"].items():
        lines.append(f"- {name}: {moved}/{total} weight tensors moved"
                     + ("" if signal else " (no step had a reward signal: RLSD's gradient is 0)"))
        if signal and moved == 0:
            failures.append(f"{name}: steps had a gradient but no weight moved")
        if not signal and moved:
            failures.append(f"{name}: no step had a gradient, yet {moved} tensors moved")
    w = results.get("warmup")
    if w:
        lines.append(f"- tiny warm-up: {w['steps_run']} steps in {w['seconds']} s, "
                     + (f"stopped by its readiness check at step {w['ready_at']}" if w["ready_at"]
                        else f"the readiness check never passed in {w['checks']} checks (WarmupWarning)"
                        if w["checks"] else "no readiness check ran (fewer steps than warmup.check_every)"))
    if "tiny" in results["moved"] and not results["moved"]["tiny"][2]:
        note = "tiny: no step had a reward signal (the warm-up should give mixed groups)"
        if results.get("small"):
            lines.append(f"- {note}; expected at --small's cut-down warm-up")
        else:
            failures.append(note)
    for name, (want, got) in results["resume"].items():
        lines.append(f"- {name}: resumed steps {got} (expected {want})")
        if got != want:
            failures.append(f"{name}: resumed at steps {got}, expected {want}")
    ratio = results.get("cpu_over_cuda")
    if ratio is not None:
        verdict = "meets" if ratio >= 10 else "misses"
        lines.append(f"- tiny model step time, CPU / CUDA: {ratio:.1f}x ({verdict} the 10x target)")
    est = results.get("estimate")
    if est:
        r = next(r for r in results["runs"] if r["name"] == "qwen05-cuda")["summary"]
        lines.append(f"- 0.5B-shaped model ({est['params'] / 1e6:.0f} M parameters), computed vs "
                     "measured peak GiB (bench/gpu_memory.py; target: within 20%):")
        for stage in ("rollout", "score", "train"):
            got = r.get(f"mem_{stage}_gib")
            if got:
                rel = got / est[stage] - 1
                lines.append(f"  - {stage}: computed {est[stage]:.1f}, measured {got:.1f} "
                             f"({rel:+.0%}{'' if abs(rel) <= 0.2 else ', outside 20%'})")
    failures += results.get("errors", [])
    lines.append("")
    lines.append("GPU CHECK " + ("PASSED" if not failures else "FAILED: " + "; ".join(failures)))
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return failures, lines


def plan(small: bool) -> tuple[dict, dict]:
    """The `rlsd train` settings of the tiny and the 0.5B-shaped runs."""
    # 32 x 8 samples a step after the default warm-up: mixed groups (a gradient) for certain.
    tiny = dict(steps=4, prompts=32, group=8, new_tokens=16, warmup_steps=400, lr=1e-4)
    big = dict(steps=3, prompts=8, group=8, new_tokens=64, warmup_steps=0, lr=1e-6)
    if small:
        tiny.update(steps=2, prompts=4, group=4, new_tokens=8, warmup_steps=8,
                    extra=("--warmup.batch_size", "16"))
        big.update(prompts=4, group=4, new_tokens=8)
    return tiny, big


def run_all(args, out: Path, work: Path, tiny_kw: dict, big_kw: dict) -> list[dict]:
    """Build the models, then every run; returns the launch records (also in runs.json)."""
    env = {**os.environ, "RLSD_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ["RLSD_CACHE"] = env["RLSD_CACHE"]
    from rlsd_core.models import tiny_model_dir

    t0 = time.perf_counter()
    tiny = tiny_model_dir()
    big = build_random_qwen2(work / ("qwen2-small" if args.small else "qwen2-0.5b"),
                             SMALL if args.small else QWEN05, tiny)
    print(f"gpu_check: models ready in {time.perf_counter() - t0:.0f} s", flush=True)
    dev, runs_dir = args.device, work / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    tiny_dir, big_dir = runs_dir / "tiny", runs_dir / "qwen05"
    runs = [launch(f"tiny-{dev}", tiny_dir, run_args("tiny", tiny_dir, dev, **tiny_kw), env, out),
            launch("tiny-resume", tiny_dir, ["--resume", str(tiny_dir), "--steps",
                                             str(tiny_kw["steps"] + 2)], env, out)]
    if dev == "cuda" and not args.skip_cpu:
        cpu_dir = runs_dir / "tiny-cpu"
        runs.append(launch("tinycpu", cpu_dir, run_args("tiny", cpu_dir, "cpu",
                                                         **{**tiny_kw, "steps": 2}), env, out))
    runs.append(launch(f"qwen05-{dev}", big_dir, run_args(str(big), big_dir, dev, **big_kw), env, out))
    runs.append(launch("qwen05-resume", big_dir, ["--resume", str(big_dir), "--steps",
                                                  str(big_kw["steps"] + 1)], env, out))
    (out / "runs.json").write_text(json.dumps({"runs": runs, "tiny": str(tiny), "big": str(big)}))
    return runs


def analyse(args, out: Path, work: Path, tiny_kw: dict, big_kw: dict) -> dict:
    """Everything the report says, from the runs' files (each part guarded: a failure to
    compute one figure is reported, never the end of the report)."""
    import torch
    import transformers

    from rlsd_core.loop.checkpoint import latest

    saved = json.loads((out / "runs.json").read_text())
    runs, dev = saved["runs"], args.device
    collect(runs, {"tiny": tiny_kw["steps"], "qwen05": big_kw["steps"]},
            {"tiny": tiny_kw["prompts"] * tiny_kw["group"], "tinycpu": tiny_kw["prompts"] * tiny_kw["group"],
             "qwen05": big_kw["prompts"] * big_kw["group"]})
    by_name = {r["name"]: r for r in runs}
    results = {"device": dev, "small": args.small, "torch": torch.__version__,
               "transformers": transformers.__version__, "runs": runs, "moved": {}, "resume": {},
               "errors": []}

    def guarded(what, fn):
        try:
            fn()
        except Exception as exc:  # reported, and the check fails, but the report is written
            results["errors"].append(f"{what}: {type(exc).__name__}: {exc}")

    def moved(name, before, run_dir, first):
        # The final checkpoint is the resumed run's: a gradient in either run can move weights.
        if latest(run_dir) is not None:
            signal = by_name[first]["summary"]["signal"] or by_name[f"{name}-resume"]["summary"]["signal"]
            results["moved"][name] = (*weights_moved(before, run_dir), signal)

    warm = sorted((work / "cache").glob("warmup-*"))
    if warm:  # where the warm-up's readiness check stopped it on this device (or that it never passed)
        record = json.loads((warm[0] / "warmup.json").read_text())
        results["warmup"] = {**{k: record.get(k) for k in ("steps_run", "ready_at", "seconds")},
                             "checks": len(record.get("checks") or [])}
    tiny_dir, big_dir = work / "runs" / "tiny", work / "runs" / "qwen05"
    guarded("tiny weights", lambda: moved("tiny", warm[0] if warm else Path(saved["tiny"]),
                                          tiny_dir, f"tiny-{dev}"))
    guarded("0.5B weights", lambda: moved("qwen05", Path(saved["big"]), big_dir, f"qwen05-{dev}"))
    results["resume"]["tiny-resume"] = ([tiny_kw["steps"] + 1, tiny_kw["steps"] + 2],
                                        by_name["tiny-resume"]["summary"]["steps"])
    results["resume"]["qwen05-resume"] = ([big_kw["steps"] + 1],
                                          by_name["qwen05-resume"]["summary"]["steps"])
    cpu, gpu = by_name.get("tinycpu"), by_name.get("tiny-cuda")
    if cpu and gpu and cpu["summary"]["step_s"] and gpu["summary"]["step_s"]:
        results["cpu_over_cuda"] = cpu["summary"]["step_s"] / gpu["summary"]["step_s"]

    def est():
        results["estimate"] = estimate(SMALL if args.small else QWEN05, big_kw["prompts"],
                                       big_kw["group"], prompt_length(Path(saved["big"]), big_kw["tasks"]),
                                       big_kw["new_tokens"])
    if dev == "cuda":
        guarded("memory estimate", est)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The GPU check (see the module docstring).")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true",
                        help="toy sizes (a 2-layer model instead of the 0.5B shape, fewer steps)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/rlsd-gpu-check",
                        help="logs, metrics and the report (default: $OUT, else /tmp/rlsd-gpu-check)")
    parser.add_argument("--work", default=None,
                        help="models, caches and run directories with their checkpoints (large; "
                             "default: a gpu-check-work directory beside --out's parent temp dir)")
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU run for the speed ratio")
    parser.add_argument("--tasks", type=json.loads, default=TASKS,
                        help="the runs' tasks as a JSON list of task configs (default: reverse and "
                             "addition with their built-in verifiers)")
    parser.add_argument("--report-only", action="store_true",
                        help="redo the report from a finished check's --out and --work")
    parser.add_argument("--child", metavar="INFO_FILE", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        return child(Path(args.child), [a for a in rest if a != "--"])

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no GPU; run with --device cpu --small for the CPU dry run")
        return 2
    started = time.perf_counter()
    out = Path(args.out).resolve()
    work = Path(args.work or os.path.join(os.environ.get("TMPDIR", "/tmp"), "rlsd-gpu-check-work"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["RLSD_CACHE"] = str(work / "cache")
    tiny_kw, big_kw = plan(args.small)
    tiny_kw["tasks"] = big_kw["tasks"] = args.tasks
    if not args.report_only:
        run_all(args, out, work, tiny_kw, big_kw)
    results = analyse(args, out, work, tiny_kw, big_kw)
    results["wall_s"] = time.perf_counter() - started
    failures, lines = report(results, out)
    for r in results["runs"]:  # the metrics, small, come back with the report
        src = Path(r["run_dir"]) / "metrics.jsonl"
        if src.exists():
            shutil.copy(src, out / f"{r['name'].split('-')[0]}.metrics.jsonl")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
