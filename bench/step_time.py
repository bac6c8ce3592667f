"""Step time of RLSD against GRPO split by stage, and the peak memory of a step against the
rollout batch (issue 13: the scoring forwards).

    python bench/step_time.py                         # tiny model, the embedded default's shape
    python bench/step_time.py --model smollm2-135m-instruct --prompts 4 --group 4 --max-new-tokens 24
    python bench/step_time.py --memory                # peak RSS of one step at 32, 128, 512 sequences
    python bench/step_time.py --memory-scoring        # the scoring forward alone at V = 151,936

Step time. One run (one model, engine, teacher and optimizer) and three arms that differ only
in the objective and lambda: grpo; rlsd with lambda 0.5 (the teacher forward runs); rlsd with
lambda 0 (the teacher forward is skipped: RLSD after its schedule has decayed). Before every
timed step the weights and the optimizer are reset to the same starting point and the reward
cache is cleared, so all arms sample the very same responses from the same rows ("same batch")
and pay the same verification. The arms are interleaved step by step, in a rotating order, so
that the machine's load falls on all of them alike; medians of wall and CPU time are printed
with the load average. Target (issue 13): RLSD/GRPO <= 1.15 with lambda > 0, <= 1.02 at 0.

Memory. Each batch size runs one RLSD step (lambda 0.5) in a fresh subprocess, with the
scoring chunk (scoring.micro_batch), the update's micro-batch (optim.grad_accum = B / chunk) and
the engine's decode batch fixed, and reports the step's peak RSS (VmHWM, reset after setup).
Target: at most 1.3x from 32 to 512 sequences. The tiny model's vocabulary (455 tokens) hides
what [B, T, V] costs, so `--memory-scoring` also measures the no-grad scoring forward alone with
a random one-layer model of a real vocabulary (151,936). `--code DIR` runs either measurement on
another checkout (e.g. the code before this issue). Exits 0 whatever the numbers are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("rollout", "verify", "pi_old", "teacher", "score", "train", "sync", "step")
ARMS = (("grpo", "grpo", 0.0), ("rlsd lam=0.5", "rlsd", 0.5), ("rlsd lam=0", "rlsd", 0.0))
GPU_VOCAB = 151_936  # Qwen2.5 / Qwen3


def base_overrides(args, out_dir: str) -> dict:
    over = {"threads": args.threads, "output_dir": out_dir, "log.console": False,
            "log.jsonl": False, "log.plot": False, "log.tensorboard": "false",
            "log.samples_every": 0, "model.name_or_path": args.model,
            "rollout.prompts_per_step": args.prompts, "rollout.group_size": args.group,
            "rollout.max_new_tokens": args.max_new_tokens, "teacher.sync_every": 100_000}
    if args.no_warmup:
        over["warmup.enabled"] = "false"
    return over


def with_scoring(over: dict, args) -> dict:
    """scoring.* settings, only where the checked-out code has that section (--code)."""
    from rlsd_core.config import TrainConfig

    if "scoring" in TrainConfig.model_fields:
        over = dict(over)
        if args.chunk:
            over["scoring.micro_batch"] = args.chunk
        for key in ("share_prefix", "pi_old"):
            if getattr(args, key):
                over[f"scoring.{key}"] = getattr(args, key)
    return over


def build_arms(args, tmp: str):
    """{arm name: Run} sharing one set of parts (model, engine, teacher, optimizer)."""
    from rlsd_core import loop as T
    from rlsd_core.config import build_config

    over = with_scoring(base_overrides(args, tmp), args)
    cfg = build_config(overrides=list({**over, "algo.loss": "rlsd", "scheduler.name": "constant",
                                       "scheduler.options": {"lam": 0.5}}.items()))
    run = T.setup(cfg)
    registry = run.parts.pm.registry
    arms = {}
    for name, loss, lam in ARMS:
        arm_cfg = build_config(overrides=list({**over, "algo.loss": loss, "scheduler.name": "constant",
                                               "scheduler.options": {"lam": lam}}.items()))
        parts = dataclasses.replace(run.parts, cfg=arm_cfg, objective=registry.objective(loss))
        arms[name] = T.Run(parts=parts, schedule=T.Schedule.from_config(arm_cfg, registry))
    return run, arms


def reset(run, start: dict) -> None:
    """The same weights, optimizer and verification cost before every timed step."""
    parts = run.parts
    parts.model.load_state_dict(start)
    parts.optimizer.state.clear()
    for scorer in parts.scorers.values():
        for runtime in getattr(scorer, "parts", None) or [(1.0, scorer)]:
            clear = getattr(runtime[1], "clear_cache", None)
            if clear is not None:
                clear()


def step_time(args) -> None:
    import torch

    from rlsd_core import loop as T

    with tempfile.TemporaryDirectory() as tmp:
        run, arms = build_arms(args, tmp)
        start = {k: v.detach().clone() for k, v in run.parts.model.state_dict().items()}
        times: dict[str, list[dict]] = {name: [] for name in arms}
        lengths: dict[str, list[float]] = {name: [] for name in arms}
        loads = [os.getloadavg()[0]]
        names = list(arms)
        for i in range(args.steps + 1):  # step 1 warms every arm up and is not counted
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                reset(run, start)
                cpu = time.process_time()
                m = T.train_step(arms[name], 1 + i)
                cpu = time.process_time() - cpu
                if i:
                    times[name].append({**{s: m.get(f"time/{s}_s") for s in STAGES}, "cpu": cpu})
                    lengths[name].append(m["response_length"])
            loads.append(os.getloadavg()[0])
        run.parts.close()
    report_times(args, times, lengths, loads, torch.get_num_threads())


def median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def report_times(args, times, lengths, loads, threads) -> None:
    shown = [s for s in STAGES if any(median(rows, s) is not None for rows in times.values())]
    shape = f"{args.prompts} prompts x {args.group} samples x <= {args.max_new_tokens} tokens"
    print(f"\nstep time by stage, model {args.model}, {shape}, {args.steps} steps per arm "
          f"(medians, seconds; {threads} torch threads)")
    print(f"{'arm':<14}" + "".join(f"{s:>9}" for s in shown) + f"{'cpu':>9}{'len':>6}")
    for name, rows in times.items():
        cells = "".join(f"{median(rows, s):>9.3f}" if median(rows, s) is not None else f"{'-':>9}"
                        for s in shown)
        print(f"{name:<14}{cells}{median(rows, 'cpu'):>9.3f}{statistics.mean(lengths[name]):>6.1f}")
    base = times["grpo"]
    print("\nratio to grpo (median of per-step ratios; same rollouts in every arm)")
    for name, rows in times.items():
        if name == "grpo":
            continue
        wall = statistics.median(r["step"] / b["step"] for r, b in zip(rows, base))
        cpu = statistics.median(r["cpu"] / b["cpu"] for r, b in zip(rows, base))
        target = 1.15 if "0.5" in name else 1.02
        print(f"  {name:<14} wall {wall:.3f}   cpu {cpu:.3f}   (target <= {target})")
    print(f"\nload average (1 min) during the run: min {min(loads):.1f}, median "
          f"{statistics.median(loads):.1f}, max {max(loads):.1f} on {os.cpu_count()} CPUs")


# --- memory ------------------------------------------------------------------------------------

def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_one(args) -> None:
    """Child: one RLSD step at --prompts x --group sequences; prints a JSON line."""
    import torch

    from rlsd_core import loop as T
    from rlsd_core.config import build_config

    n = args.prompts * args.group
    with tempfile.TemporaryDirectory() as tmp:
        over = with_scoring(base_overrides(args, tmp), args)
        over.update({"algo.loss": "rlsd", "scheduler.name": "constant",
                     "scheduler.options": {"lam": 0.5},
                     "optim.grad_accum": max(1, n // args.chunk),
                     "rollout.engine_options": {"batch_size": args.chunk}})
        cfg = build_config(overrides=list(over.items()))
        run = T.setup(cfg)
        # A small step first: libraries, kernels and the optimizer's moments are paid before the
        # peak is reset, so that the table shows what the batch size costs.
        small = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"prompts_per_step": 1})})
        T.train_step(T.Run(parts=dataclasses.replace(run.parts, cfg=small), schedule=run.schedule), 1)
        torch.manual_seed(0)
        before = rss_kib("VmRSS")
        try:  # reset the peak to now (Linux >= 4.0), so the step's own peak is measured
            Path("/proc/self/clear_refs").write_text("5")
            reset_ok = True
        except OSError:
            reset_ok = False
        m = T.train_step(run, 2)
        peak = rss_kib("VmHWM")
        run.parts.close()
    print(json.dumps({"sequences": n, "before_mib": before / 1024, "peak_mib": peak / 1024,
                      "peak_reset": reset_ok, "tokens": m["response_length"],
                      "vocab": run.parts.model.config.vocab_size, "step_s": m["time/step_s"]}))


def scoring_one(args) -> None:
    """Child: one no-grad scoring forward (pi_old's: log-probs and entropy) of --prompts x --group
    responses under a random one-layer model with a 151,936-token vocabulary; prints a JSON line.
    The checked-out code decides how it chunks: this code passes --chunk, code from before issue
    13 (--code) gets micro_batch = all sequences, which is what its loop passed."""
    import inspect

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlsd_core.models import token_logprobs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=GPU_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)).eval()
    n = args.prompts * args.group
    prompts = [torch.randint(0, GPU_VOCAB, (19,)).tolist() for _ in range(args.prompts)]
    rows = [p for p in prompts for _ in range(args.group)]
    responses = [torch.randint(0, GPU_VOCAB, (args.max_new_tokens,)).tolist() for _ in range(n)]
    new_code = "share_prefix" in inspect.signature(token_logprobs).parameters
    kwargs = {"micro_batch": args.chunk, "share_prefix": "auto"} if new_code else {"micro_batch": n}
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.process_time()
    with torch.no_grad():
        token_logprobs(model, rows, responses, return_entropy=True, **kwargs)
    print(json.dumps({"sequences": n, "before_mib": before / 1024, "peak_mib": rss_kib("VmHWM") / 1024,
                      "micro_batch": kwargs["micro_batch"], "cpu_s": time.process_time() - start}))


def scoring_memory(args) -> None:
    rows = [json.loads(child(args, "--scoring-one", n).strip().splitlines()[-1]) for n in args.sizes]
    print(f"\npeak RSS of one no-grad scoring forward (log-probs + entropy), random 1-layer model, "
          f"V = {GPU_VOCAB:,}, {args.group} samples per prompt, T = {args.max_new_tokens}"
          f"{', code ' + args.code if args.code else ''}")
    print(f"{'sequences':>10}{'micro_batch':>12}{'peak MiB':>10}{'forward MiB':>12}{'x':>6}{'cpu s':>7}"
          f"   one fp32 [B, T, V]")
    first = rows[0]["peak_mib"] - rows[0]["before_mib"]
    for r in rows:
        used = r["peak_mib"] - r["before_mib"]
        full = r["sequences"] * args.max_new_tokens * GPU_VOCAB * 4 / 2**20
        print(f"{r['sequences']:>10}{r['micro_batch']:>12}{r['peak_mib']:>10.0f}{used:>12.0f}"
              f"{used / first:>6.2f}{r['cpu_s']:>7.1f}   {full:,.0f} MiB")


def child(args, mode: str, n: int) -> str:
    """Run this script in `mode` for n sequences in a fresh process (another checkout's rlsd
    with --code); its stdout."""
    env, cwd = dict(os.environ), None
    if args.code:
        root = Path(args.code).resolve()
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins"), str(root / "verifiers"),
                                            env.get("PYTHONPATH", "")])
        cwd = args.code
    cmd = [sys.executable, str(Path(__file__).resolve()), mode,
           "--prompts", str(n // args.group), "--group", str(args.group),
           "--max-new-tokens", str(args.max_new_tokens), "--chunk", str(args.chunk),
           "--threads", str(args.threads), "--model", args.model]
    if args.no_warmup:
        cmd.append("--no-warmup")
    for key in ("share_prefix", "pi_old"):
        if getattr(args, key):
            cmd += [f"--{key.replace('_', '-')}", getattr(args, key)]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{mode} at {n} sequences failed")
    return done.stdout


def memory(args) -> None:
    rows = [json.loads(child(args, "--memory-one", n).strip().splitlines()[-1]) for n in args.sizes]
    report_memory(args, rows)


def report_memory(args, rows) -> None:
    print(f"\npeak RSS of one RLSD step (lambda 0.5), model {args.model}, chunk {args.chunk} "
          f"sequences (scoring.micro_batch, update micro-batch, engine batch), responses "
          f"<= {args.max_new_tokens} tokens{', code ' + args.code if args.code else ''}")
    print(f"{'sequences':>10}{'before MiB':>12}{'peak MiB':>10}{'x peak':>8}{'step MiB':>10}"
          f"{'x step':>8}{'tokens':>8}{'step s':>8}   [B, T, V] fp32 at V={GPU_VOCAB:,}")
    first = rows[0]
    for r in rows:
        t = args.max_new_tokens
        full = r["sequences"] * t * GPU_VOCAB * 4 / 2**30
        step, step0 = r["peak_mib"] - r["before_mib"], first["peak_mib"] - first["before_mib"]
        print(f"{r['sequences']:>10}{r['before_mib']:>12.0f}{r['peak_mib']:>10.0f}"
              f"{r['peak_mib'] / first['peak_mib']:>8.2f}{step:>10.0f}{step / step0:>8.2f}"
              f"{r['tokens']:>8.1f}{r['step_s']:>8.1f}   {full:,.1f} GiB per copy (T={t})")
    print("(peak: the process's peak RSS during the step; step: peak minus RSS before it)")
    chunk = args.chunk * args.max_new_tokens * GPU_VOCAB
    print(f"\nwith scoring.micro_batch {args.chunk}: one chunk's logits are {args.chunk} x "
          f"{args.max_new_tokens} x {GPU_VOCAB:,} = {chunk / 1e6:,.0f} M values "
          f"({chunk * 2 / 2**30:.2f} GiB bf16), plus 3 float32 blocks of 64 MiB; the tiny "
          f"model's vocabulary is {rows[0]['vocab']}.")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (default: "
                        "the embedded default's 16)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="response cap (default: 16, the embedded default's; --memory: 32)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=0, help="scoring.micro_batch (0: default)")
    parser.add_argument("--share-prefix", dest="share_prefix", default=None)
    parser.add_argument("--pi-old", dest="pi_old", default=None)
    parser.add_argument("--no-warmup", action="store_true", help="skip the tiny model's warm-up")
    parser.add_argument("--memory", action="store_true", help="the memory table instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--code", default=None, help="(--memory) a checkout whose rlsd to measure")
    parser.add_argument("--memory-scoring", action="store_true", help="the memory of the scoring "
                        "forward alone, at a 151,936-token vocabulary")
    parser.add_argument("--memory-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scoring-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    memory_mode = args.memory or args.memory_scoring
    if args.max_new_tokens is None:
        args.max_new_tokens = 32 if memory_mode else 16
    if memory_mode and not args.chunk:
        args.chunk = 32
    if args.memory_one:
        memory_one(args)
    elif args.scoring_one:
        scoring_one(args)
    elif args.memory:
        memory(args)
    elif args.memory_scoring:
        scoring_memory(args)
    else:
        step_time(args)


if __name__ == "__main__":
    main()
