"""The supervised warm-up: teaches an untrained model the task format before RL, cached on disk.

Data flow: the built-in task rows (prompt, target) -> chat-templated prompts (with their pixel
inputs for rows with images, the tiny VLM), a fraction of them
the teacher's privileged prompts built by each task's own injector -> teacher-forced
cross-entropy on the target tokens only -> an ordinary Hugging Face model directory under
`~/.cache/rlsd/warmup-<hash>` (or $RLSD_CACHE), which the trainer then loads as its policy.

Why the privileged prompts: the self-teacher is the same network reading a prompt it has never
seen. A warm-up that only ever saw student prompts makes that prompt out of distribution and the
teacher harmful (measured on this model family: greedy accuracy with the hint fell from 46% to
0.5%, and ~50% of evidence weights were clipped by the sign of A alone). Mixing ~25% privileged
prompts into the warm-up keeps the teacher in distribution, so delta = log P_T - log P_S carries
per-token information (see shared/spec/environment.md, "reference experiment").

The cache key is a content hash of everything that decides the result: the base model's files,
the warm-up settings, the task settings and the exact text of a sample of rendered student and
teacher prompts (so an edited template or injector gives a new cache entry, never a stale one).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data import encode_prompt, student_messages
from ..models import cache_root, forward_kwargs, load_model, load_vision

WARMUP_VERSION = 1


def task_rows(tasks, mix: str, rng: random.Random) -> list[tuple[Any, dict]]:
    """(task, row) pairs of one warm-up epoch. mix "rows": every training row once, so a task's
    share is its row count's; "weight": each task's rows repeated (whole passes, then a seeded
    sample) until its share of the epoch is its `weight`'s share, as in RL, so that a task with
    few rows (800 additions beside 3,900 reversals) is not starved."""
    if mix == "rows":
        return [(task, row) for task in tasks for row in task.train]
    if mix != "weight":
        raise ValueError(f"warmup.mix must be 'rows' or 'weight', got {mix!r}")
    total = sum(t.weight for t in tasks)
    epoch = max(len(t.train) * total / t.weight for t in tasks)  # every row of the largest share once
    out = []
    for task in tasks:
        want = round(epoch * task.weight / total)
        full, rest = divmod(want, len(task.train))
        out += [(task, row) for row in task.train * full + rng.sample(task.train, rest)]
    return out


def build_examples(tasks, tokenizer, teacher_messages: Callable[[str, dict], list[dict]], *,
                   privileged_fraction: float, seed: int, mix: str = "rows",
                   vision=None) -> list[tuple]:
    """(prompt ids, target ids + eos, pixel inputs or None) for the training rows of every task
    (`task_rows`), each shown with the teacher's privileged prompt with probability
    `privileged_fraction`. The response taught is the row's `target`; under the privileged
    prompt, its `privileged_target` when it has one (a task whose student target is a decoy).

    `teacher_messages(task_name, row)` builds the teacher prompt with that task's injector;
    `vision` is the model's vision prompter (rows with images).
    """
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    examples = []
    rendered: dict[tuple[int, bool], tuple] = {}  # a repeated row renders once
    for task, row in task_rows(tasks, mix, rng):
        if "target" not in row:
            raise ValueError(
                f"warm-up: task {task.name!r} rows have no 'target' column (the response to "
                f"imitate). Warm-up only works on tasks that provide one (the built-ins do); "
                f"set warmup.enabled=false for this suite.")
        privileged = rng.random() < privileged_fraction
        key = (id(row), privileged)
        if key not in rendered:
            messages = teacher_messages(task.name, row) if privileged else student_messages(row)
            prompt, pixels = encode_prompt(tokenizer, messages, vision)
            target = row.get("privileged_target", row["target"]) if privileged else row["target"]
            rendered[key] = (prompt, tokenizer.encode(target, add_special_tokens=False) + [eos], pixels)
        examples.append(rendered[key])
    rng.shuffle(examples)
    return examples


def key_settings(cfg) -> dict:
    """The warm-up config as it enters the cache key. `mix` at its original behaviour ("rows")
    stays out, so that warm-ups cached before the option existed are still found."""
    return cfg.model_dump(exclude={"mix"} if cfg.mix == "rows" else None)


def cache_key(base_dir: Path, settings: dict, samples: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(f"warmup-v{WARMUP_VERSION}".encode())
    for name in sorted(os.listdir(base_dir)):
        path = base_dir / name
        if path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for text in samples:
        h.update(text.encode())
    return h.hexdigest()[:16]


def _batch(examples, pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 outside the target)."""
    length = max(len(p) + len(t) for p, t, _ in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    attn = torch.zeros((len(examples), length), dtype=torch.long)
    for i, (p, t, _) in enumerate(examples):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(t)
    return ids, attn, labels


def _bucketed_batches(examples, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of similar length (privileged prompts are about twice as long as
    student prompts; mixing them would pad every batch to the long ones), in random order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    pool = 16 * batch_size
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda j: len(examples[j][0]) + len(examples[j][1]))
        batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
    batches = [b for b in batches if len(b) == batch_size] or batches
    rng.shuffle(batches)
    return batches


def train_supervised(model, examples, *, steps: int, batch_size: int, lr: float, seed: int,
                     pad_id: int, on_step: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Teacher-forced cross-entropy on target tokens; AdamW, linear warm-up then cosine decay.
    Runs on the model's device (fp32)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    ramp = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        progress = (step - ramp) / max(1, steps - ramp)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    batches: list[list[int]] = []
    for step in range(steps):
        if not batches:
            batches = _bucketed_batches(examples, batch_size, rng)
        picked = [examples[j] for j in batches.pop()]
        device = next(model.parameters()).device
        ids, attn, labels = (t.to(device) for t in _batch(picked, pad_id))
        pixels = forward_kwargs(model, ids, attn, [e[2] for e in picked])  # {} for text
        out = model(input_ids=ids, attention_mask=attn, labels=labels, **pixels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    model.eval()
    return losses


def warmed_up_dir(base_dir: Path, tasks, teacher_messages, cfg, *, seed: int,
                  on_step=None, on_cached: Callable[[Path], None] | None = None,
                  device: str | torch.device = "cpu") -> Path:
    """Return the directory of the warmed-up model, training it first (on `device`) if it is
    not cached. The device is not part of the cache key: a warm-up made on a GPU serves a CPU
    run and the other way round (they differ in the last bits, not in what they learned).

    `cfg` is `rlsd_core.config.WarmupConfig`; `teacher_messages(task_name, row)` is
    `rlsd_core.data.TeacherPrompts.messages`. Writes atomically (temporary directory + rename)
    so an interrupted warm-up never leaves a half-written cache entry.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    vision = load_vision(str(base_dir))
    examples = build_examples(tasks, tokenizer, teacher_messages,
                              privileged_fraction=cfg.privileged_fraction, seed=seed, mix=cfg.mix,
                              vision=vision)
    settings = {"warmup": key_settings(cfg), "seed": seed,
                "tasks": [(t.name, len(t.train), t.train[:3], t.eval[:3]) for t in tasks]}
    samples = [tokenizer.decode(p + t) for p, t, _ in examples[:16]]
    out = cache_root() / f"warmup-{cache_key(base_dir, settings, samples)}"
    if (out / "config.json").exists():
        if on_cached is not None:
            on_cached(out)
        return out
    model = load_model(str(base_dir), "float32").to(device)
    started = time.perf_counter()
    losses = train_supervised(model, examples, steps=cfg.steps, batch_size=cfg.batch_size,
                              lr=cfg.lr, seed=seed, pad_id=tokenizer.pad_token_id, on_step=on_step)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if vision is not None:
        vision.save(tmp)
    (tmp / "warmup.json").write_text(json.dumps({
        "settings": settings, "final_loss": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - started, 1), "examples": len(examples)},
        indent=1, default=str))
    try:
        tmp.replace(out)
    except OSError:  # a concurrent run finished the same warm-up first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out
