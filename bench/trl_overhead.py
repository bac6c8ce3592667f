"""RLSDTrainer's per-step cost over TRL's GRPOTrainer, on rlsd's tiny model (CPU).

Three arms on the same model weights, data and TRL settings:
  grpo       trl.GRPOTrainer with an rlsd verifier as reward (reward_function("math"))
  rlsd       RLSDTrainer, reference_answer injector, lambda 0.5 (constant scheduler): the
             student's rollout-time log-probs and the teacher forward run every step
  rlsd-lam0  RLSDTrainer with the grpo scheduler (lambda 0): the teacher forward is skipped
The arms are stepped in turn, `--steps` steps each per round, so load from other processes falls
on all of them alike; round 0 is a warm-up and is dropped. A step is TRL's own `step_time`
metric (generation, rewards, advantages, RLSD's forwards, loss, backward). Wall-clock and
process CPU time are both reported (CPU time is steadier on a shared machine).

    python bench/trl_overhead.py                      # 8 prompts x 4 completions x 32 tokens
    python bench/trl_overhead.py --rounds 6 --json out.json

Needs the trl extra: pip install -e '.[trl]'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch


def build(arm: str, args, out_dir: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlsd_core.integrations.trl import RLSDTrainer, reward_function
    from rlsd_core.models import tiny_model_dir

    path = tiny_model_dir()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b} + {c}?"}],
             "answer": str(a + b + c)} for a in range(4) for b in range(4) for c in range(4)]
    ds = Dataset.from_list(rows)
    config = GRPOConfig(output_dir=os.path.join(out_dir, arm), use_cpu=True, bf16=False,
                        gradient_checkpointing=False, num_generations=args.gens,
                        per_device_train_batch_size=args.prompts * args.gens,
                        max_completion_length=args.max_new, max_steps=args.steps, logging_steps=1,
                        report_to=[], save_strategy="no", seed=0, disable_tqdm=True)
    common = dict(model=model, processing_class=tok, reward_funcs=[reward_function("math", dataset=ds)],
                  args=config, train_dataset=ds)
    if arm == "grpo":
        trainer = GRPOTrainer(**common)
    else:
        scheduler = ("grpo", {}) if arm == "rlsd-lam0" else ("constant", {"lam": 0.5})
        trainer = RLSDTrainer(**common, injector="reference_answer", scheduler=scheduler[0],
                              scheduler_options=scheduler[1], teacher="snapshot")
    trainer.remove_callback(PrinterCallback)  # the logs stay in state.log_history
    return trainer


def run_round(trainer) -> tuple[list[float], float]:
    """(TRL's step_time of each step, process CPU seconds per step) of one train() call."""
    cpu0 = time.process_time()
    trainer.train()
    cpu = (time.process_time() - cpu0) / trainer.state.global_step
    steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    return steps, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="measured rounds (plus one warm-up)")
    ap.add_argument("--steps", type=int, default=2, help="steps per arm per round")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--gens", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arms = ("grpo", "rlsd", "rlsd-lam0")
    with tempfile.TemporaryDirectory() as out:
        trainers = {arm: build(arm, args, out) for arm in arms}
        wall = {arm: [] for arm in arms}
        cpu = {arm: [] for arm in arms}
        for r in range(args.rounds + 1):
            for arm in arms:
                steps, c = run_round(trainers[arm])
                if r:  # round 0 warms caches and allocators
                    wall[arm] += steps
                    cpu[arm].append(c)
    load = os.getloadavg()
    med = {arm: statistics.median(wall[arm]) for arm in arms}
    cpu_med = {arm: statistics.median(cpu[arm]) for arm in arms}
    print(f"tiny model, {args.prompts} prompts x {args.gens} completions x <= {args.max_new} tokens, "
          f"{args.threads} thread(s), {args.rounds} rounds x {args.steps} steps per arm; "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("| arm | median step (wall) s | ratio to GRPO | CPU s per step | CPU ratio |")
    print("|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {med[arm]:.2f} | {med[arm] / med['grpo']:.2f} | {cpu_med[arm]:.2f} | "
              f"{cpu_med[arm] / cpu_med['grpo']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall": wall, "cpu": cpu, "load": load, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
