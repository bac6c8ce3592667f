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

When to stop: the tiny model learns to copy the reference out of its privileged prompt (and so to
reverse words) in a sudden jump, whose step moves with float-level details of the run (the
default's: about step 250; a loss computed to the same 5e-7 another way, or 32 rows per task
left out of the examples, put it past step 400). Steps after the jump cost time, and a warm-up
that ends before it leaves a teacher that reads nothing. So every `check_every` steps the
warm-up reads a few training rows per task (`probe_rows`) greedily with and without the
privileged prompt (`evaluation.greedy_pair`, as the teacher check does) and stops once some
task's accuracy with the hint exceeds its accuracy without by `ready_gain` at `ready_checks`
checks in a row: the self-teacher reads the hint, which is what RLSD needs of it. `steps` is
then a cap; a warm-up that reaches it without passing warns (`WarmupWarning`). The check only
observes (eval mode, no gradients, the torch RNG state restored), so it never changes the
trajectory it watches.

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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..data import TeacherPrompts, encode_prompt, student_messages
from ..engines import make_engine
from ..models import cache_root, forward_kwargs, load_model, load_vision
from .evaluation import greedy_pair

WARMUP_VERSION = 1
CHECK_FIELDS = ("check_every", "check_rows", "ready_gain", "ready_checks")


class WarmupWarning(UserWarning):
    """The warm-up reached its step cap and no task's self-teacher read its hint."""


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
    and the readiness check's settings when it is off (`check_every` 0: all `steps` run, as
    before the check existed) stay out, so that warm-ups cached before those options existed are still found."""
    exclude = ({"mix"} if cfg.mix == "rows" else set()) | (set(CHECK_FIELDS) if not cfg.check_every else set())
    return cfg.model_dump(exclude=exclude or None)


# ---------------------------------------------------------------------------------------------
# the readiness check
# ---------------------------------------------------------------------------------------------

def probe_rows(tasks, n: int, seed: int) -> dict[str, list[dict]]:
    """{task name: the readiness check's rows}: `n` training rows per task (all of a smaller
    task's), a seeded sample. They stay in the warm-up's examples: holding them back changes the
    examples and so the trajectory (measured: the default's warm-up with 32 rows per task held
    back never learnt to reverse in 400 steps), and what the check detects, the model copying
    the reference out of its prompt, is not something a row can be memorised into."""
    rng = random.Random(f"warmup-check-{seed}")
    return {task.name: [task.train[i] for i in sorted(rng.sample(range(len(task.train)), min(n, len(task.train))))]
            for task in tasks if task.train}


@dataclass
class Readiness:
    """One readiness check: each probed task's greedy accuracy (without, with) the privileged prompt."""

    step: int
    accuracy: dict[str, tuple[float, float]]

    @property
    def gain(self) -> float:
        return max((t - s for s, t in self.accuracy.values()), default=0.0)

    def to_dict(self) -> dict:
        return {"step": self.step, "accuracy": {k: list(v) for k, v in self.accuracy.items()}}


@dataclass
class ReadinessCheck:
    """The warm-up's stop rule (see the module doc), called after every step with its number."""

    model: Any
    tokenizer: Any
    prompts: TeacherPrompts
    scorers: Mapping[str, Any]
    rows: dict[str, list[dict]]
    cfg: Any  # WarmupConfig
    max_new_tokens: int
    on_check: Callable[[Readiness], None] | None = None
    history: list[Readiness] = field(default_factory=list)
    ready_at: int | None = None

    def __call__(self, step: int) -> bool:
        if not self.rows or step % self.cfg.check_every:
            return False
        engine = make_engine("hf", self.model, self.tokenizer)
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                pairs = {name: greedy_pair(engine, self.tokenizer, self.prompts, name, rows,
                                           self.scorers[name], self.max_new_tokens, self.prompts.vision)
                         for name, rows in self.rows.items()}
        finally:
            engine.close()
            self.model.train()
        self.history.append(Readiness(step, {n: (p.acc_student, p.acc_teacher) for n, p in pairs.items()}))
        if self.on_check is not None:
            self.on_check(self.history[-1])
        recent = self.history[-self.cfg.ready_checks:]
        if len(recent) == self.cfg.ready_checks and all(r.gain >= self.cfg.ready_gain for r in recent):
            self.ready_at = step
        return self.ready_at is not None


def warn_if_not_ready(record: dict, path: Path) -> None:
    """The `WarmupWarning` of a warm-up that ran its checks and never passed (`warmup.json`)."""
    checks = record.get("checks") or []
    if not checks or record.get("ready_at") is not None:
        return
    best = max((Readiness(c["step"], c["accuracy"]) for c in checks), key=lambda r: r.gain)
    numbers = ", ".join(f"{name} {100 * s:.0f}% -> {100 * t:.0f}%" for name, (s, t) in best.accuracy.items())
    wanted = record.get("settings", {}).get("warmup", {})
    warnings.warn(
        f"warm-up ({path}): {record.get('steps_run')} steps and no task's self-teacher read its "
        f"hint (best check, step {best.step}: greedy without -> with the privileged prompt: "
        f"{numbers}; ready needs a gain of {wanted.get('ready_gain')} at "
        f"{wanted.get('ready_checks')} checks in a row). RL on this warm start may learn nothing; "
        f"raise warmup.steps, or look at the task's injector with `rlsd check-teacher`.",
        WarmupWarning, stacklevel=2)


def warmup_record(path: str | Path) -> dict:
    """What a cached warm-up's `warmup.json` says (steps run, the checks, where it stopped);
    {} for a directory that is not a warm-up."""
    try:
        return json.loads((Path(path) / "warmup.json").read_text())
    except (OSError, ValueError):
        return {}


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
                     pad_id: int, on_step: Callable[[int, int, float], None] | None = None,
                     stop: Callable[[int], bool] | None = None) -> list[float]:
    """Teacher-forced cross-entropy on target tokens; AdamW, linear warm-up then cosine decay
    over `steps`. Runs on the model's device (fp32). `stop(step)`, asked after every step,
    ends the run early when it returns True (the schedule still spans `steps`)."""
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
        if stop is not None and stop(step + 1):
            break
    model.eval()
    return losses


def warmed_up_dir(base_dir: Path, tasks, prompts: TeacherPrompts, cfg, *, seed: int,
                  scorers: Mapping[str, Any] | None = None, max_new_tokens: int = 16,
                  on_step=None, on_check: Callable[[Readiness], None] | None = None,
                  on_cached: Callable[[Path], None] | None = None,
                  device: str | torch.device = "cpu") -> Path:
    """Return the directory of the warmed-up model, training it first (on `device`) if it is
    not cached. The device is not part of the cache key: a warm-up made on a GPU serves a CPU
    run and the other way round (they differ in the last bits, not in what they learned).

    `cfg` is `rlsd_core.config.WarmupConfig`; `prompts` builds each task's teacher prompt with
    its injector (`rlsd_core.data.TeacherPrompts` on the base model's tokenizer and vision
    prompter); `scorers` ({task name: scorer}, `rlsd_core.rewards.build_scorer`) score the
    readiness check's greedy answers of at most `max_new_tokens` tokens; without them, or with
    `cfg.check_every` 0, all `cfg.steps` run. Writes atomically
    (temporary directory + rename) so an interrupted warm-up never leaves a half-written cache
    entry; `warmup.json` in it records the checks and where the warm-up stopped.
    """
    tokenizer = prompts.tokenizer
    vision = load_vision(str(base_dir))
    checking = bool(cfg.check_every) and scorers is not None
    check_rows = probe_rows(tasks, cfg.check_rows, seed) if checking else {}
    examples = build_examples(tasks, tokenizer, prompts.messages,
                              privileged_fraction=cfg.privileged_fraction, seed=seed, mix=cfg.mix,
                              vision=vision)
    settings = {"warmup": key_settings(cfg), "seed": seed,
                "tasks": [(t.name, len(t.train), t.train[:3], t.eval[:3]) for t in tasks]}
    if checking:
        settings["check_max_new_tokens"] = max_new_tokens
    samples = [tokenizer.decode(p + t) for p, t, _ in examples[:16]]
    out = cache_root() / f"warmup-{cache_key(base_dir, settings, samples)}"
    if (out / "config.json").exists():
        if on_cached is not None:
            on_cached(out)
        warn_if_not_ready(warmup_record(out), out)
        return out
    model = load_model(str(base_dir), "float32").to(device)
    check = ReadinessCheck(model, tokenizer, prompts, scorers or {}, check_rows, cfg, max_new_tokens,
                           on_check=on_check) if checking else None
    started = time.perf_counter()
    losses = train_supervised(model, examples, steps=cfg.steps, batch_size=cfg.batch_size,
                              lr=cfg.lr, seed=seed, pad_id=tokenizer.pad_token_id, on_step=on_step,
                              stop=check)
    record = {"settings": settings, "final_loss": losses[-1] if losses else None,
              "seconds": round(time.perf_counter() - started, 1), "examples": len(examples),
              "steps_run": len(losses), "ready_at": check.ready_at if check else None,
              "checks": [r.to_dict() for r in check.history] if check else [],
              "check_rows": {name: len(rows) for name, rows in check_rows.items()}}
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if vision is not None:
        vision.save(tmp)
    (tmp / "warmup.json").write_text(json.dumps(record, indent=1, default=str))
    try:
        tmp.replace(out)
    except OSError:  # a concurrent run finished the same warm-up first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    warn_if_not_ready(record, out)
    return out
