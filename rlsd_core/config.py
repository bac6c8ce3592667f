"""The typed run config: one YAML file plus command-line overrides, validated before any model loads.

Data flow: defaults (the embedded default run) <- YAML file (`--config`) <- overrides
(`--set optim.lr=1e-4` or `--optim.lr 1e-4`) -> `TrainConfig` (pydantic v2) -> plugin-name
checks against the installed registries -> the trainer. The resolved config is written to the
run directory as `config.yaml`, so `rlsd train --config runs/<dir>/config.yaml` repeats a run.

Every field has a default and a description; `rlsd train --help` is generated from them
(`iter_fields`), so the help can never drift from the code. Errors name the field:
  unknown key      -> "optim.lrr: unknown key; did you mean 'optim.lr'?"
  bad value        -> "optim.lr: Input should be greater than 0 (got -1)"
  unknown plugin   -> "tasks[0].verifier: no verifier named 'maths' ... Installed verifiers: ..."
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .plugins import UnknownNameError
from .records import OptionsError, check_options


def _bool_word(value: Any) -> Any:
    # YAML (files and command-line values alike) reads `false` as a bool; these fields spell it.
    return str(value).lower() if isinstance(value, bool) else value


# "auto" or an explicit yes/no.
AutoBool = Annotated[Literal["auto", "true", "false"], BeforeValidator(_bool_word)]


class ConfigError(ValueError):
    """The config is invalid; the message names every offending field and how to fix it."""


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error (with a suggestion), never silently ignored.
    # allow_inf_nan=False: no field of a run makes sense at inf or NaN (`lr: .inf`, `temperature:
    # .nan` pass `gt=0` checks otherwise and surface later as NaN losses).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name_or_path: str = Field(
        "tiny", description="Hugging Face model directory or hub id; 'tiny' builds the embedded "
                            "3.2 M-parameter model and tokenizer locally (cached).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Weights dtype of the trained policy: auto = float32 (optim.precision "
                            "decides bf16 compute); bfloat16 = bf16 weights with fp32 master "
                            "weights and moments in the optimizer. Optimizer state is fp32 either way.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the policy trains: auto = cuda when available, else cpu.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of "
                           "keeping them: less memory for the training forward, ~30% more compute.")


class WarmupConfig(_Section):
    enabled: AutoBool = Field(
        "auto", description="Supervised warm-up before RL (cached): auto = only for model 'tiny'.")
    steps: int = Field(400, ge=0, description="Warm-up optimizer steps at most (the learning-rate "
                                              "schedule spans them); the readiness check may stop "
                                              "it sooner.")
    batch_size: int = Field(64, ge=1, description="Warm-up examples per step.")
    lr: float = Field(2e-3, gt=0, description="Warm-up peak learning rate (AdamW, cosine decay).")
    privileged_fraction: float = Field(
        0.25, ge=0, le=1, description="Fraction of warm-up examples shown with the teacher's "
                                      "privileged prompt, so that the self-teacher learns to read it.")
    mix: Literal["rows", "weight"] = Field(
        "rows", description="How tasks share the warm-up: weight = in proportion to their "
                              "`weight` (as in RL; a task with few rows is repeated), rows = every "
                              "training row once per epoch.")
    check_every: int = Field(
        25, ge=0, description="Readiness check period in steps: greedy accuracy with and without "
                              "the privileged prompt on `check_rows` training rows per task; 0 = "
                              "no check, run all `steps`.")
    check_rows: int = Field(32, ge=1, description="Training rows per task the readiness check reads.")
    ready_gain: float = Field(
        0.5, gt=0, le=1, description="The warm-up stops once some task's greedy accuracy with the "
                                     "privileged prompt exceeds its accuracy without by this much "
                                     "(the self-teacher reads the hint) ...")
    ready_checks: int = Field(2, ge=1, description="... at this many checks in a row.")


class WeightedVerifier(_Section):
    name: str = Field(description="Verifier name.")
    weight: float = Field(1.0, gt=0, description="Weight of its reward in the task's reward.")
    options: dict[str, Any] = Field(default_factory=dict, description="Verifier options.")


class TaskConfig(_Section):
    name: str = Field(description="Task name, used in metrics and the final table.")
    source: str = Field("", description="Task source (built in: addition, reverse, shapes, files, "
                                        "reasoning_gym, humaneval; or an installed plugin's); "
                                        "ignored when `path` is set.")
    path: str | None = Field(None, description="JSONL file of rows (prompt, answer, ...) instead "
                                               "of a source.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the task source.")
    verifier: str = Field("", description="Verifier that scores this task (default: the source's).")
    verifier_options: dict[str, Any] = Field(default_factory=dict, description="Verifier options.")
    injector: str = Field("", description="Injector that builds this task's teacher prompt "
                                          "(default: the source's, else reference_answer).")
    injector_options: dict[str, Any] = Field(default_factory=dict, description="Injector options.")
    weight: float = Field(1.0, gt=0, description="Relative share of this task's prompts per step.")
    train_size: int | None = Field(None, ge=1, description="Cap on training rows (None: all).")
    eval_size: int = Field(100, ge=1, description="Held-out rows for greedy accuracy.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Column mapping {rlsd column: source column}, e.g. "
                                          "{prompt: question, answer: final} (rlsd_core.data.suites).")
    template: list[dict[str, str]] | None = Field(
        None, description="Student chat messages with {field} placeholders filled from each row, "
                          "e.g. [{role: user, content: 'Solve: {question}'}] ({{ }} for braces).")
    image_dir: str | None = Field(
        None, description="Where relative image paths of the rows start (default: the folder of "
                          "the task's data file, else the current directory).")
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Largest image (width x height) a row may carry; a larger "
                                      "one is an error before training starts.")
    verifiers: list[WeightedVerifier] = Field(
        default_factory=list, description="Several verifiers whose rewards are averaged with "
                                          "weights (instead of `verifier`).")
    scheduler: "SchedulerConfig | None" = Field(
        None, description="This task's own magnitude scheduler (default: the run's `scheduler`).")

    @model_validator(mode="after")
    def _has_rows(self):
        if not self.source and not self.path:
            raise ValueError(f"task {self.name!r} needs a `source` or a `path`")
        if self.verifiers and self.verifier and self.verifier != self.verifiers[0].name:
            raise ValueError(f"task {self.name!r}: set either `verifier` or `verifiers`, not both")
        if self.verifiers and not self.verifier:
            # The first verifier is the primary one: its columns are checked, its name reported.
            object.__setattr__(self, "verifier", self.verifiers[0].name)
        return self


def _default_tasks() -> list[TaskConfig]:
    # The embedded default (README). `reverse` with decoys: the warm-up teaches the reversal and
    # a wrong behaviour (copying the letters forward) more often, so that RL has something to
    # select from the reward alone; `addition` keeps a quarter of reverse's share of RL prompts,
    # since the warm-up leaves it at ~0% (the format, not the arithmetic) and its groups carry no
    # signal (docs/results.md, issue 18).
    return [TaskConfig(name="addition", source="addition", weight=0.25),
            TaskConfig(name="reverse", source="reverse", options={"decoy_fraction": 0.6})]


class RolloutConfig(_Section):
    engine: Literal["hf", "vllm"] = Field("hf", description="Rollout engine.")
    engine_options: dict[str, Any] = Field(default_factory=dict,
                                           description="Extra keyword arguments for the engine "
                                                       "(docs/engines.md); checked against it.")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per rollout batch.")
    group_size: int = Field(8, ge=2, description="Responses per prompt (G).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also divides the "
                                                      "logits of every log-prob).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(16, ge=1, description="Response length cap.")

    @model_validator(mode="after")
    def _engine_options(self):
        # Checked here, before any model loads: a misspelt option or a setting the engine
        # refuses (vLLM tensor parallel) costs a second, not a warm-up and a model load.
        from .engines import check_engine_options

        problems = check_engine_options(self.engine, self.engine_options)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AlgoConfig(_Section):
    loss: str = Field(
        "rlsd", description="Objective (an installed objective plugin): rlsd (teacher scales token "
                            "credit), grpo, opsd (distill toward the privileged teacher), grpo+opsd "
                            "(weighted sum).")
    normalize_std: bool = Field(True, description="Divide group advantages by the group std "
                                                  "(false: Dr.GRPO style).")
    eps_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio clip below 1.")
    eps_high: float = Field(0.28, ge=0, description="PPO ratio clip above 1.")
    dual_clip: float = Field(3.0, gt=1, description="Dual-clip constant C for negative advantages.")
    agg: Literal["token-mean", "seq-mean-token-mean"] = Field(
        "token-mean", description="Loss aggregation: token-mean (release) or seq-mean-token-mean "
                                  "(the paper's equation).")
    negative_only: bool = Field(False, description="Reweight only responses with A < 0.")
    opsd_divergence: Literal["jsd", "reverse_kl", "forward_kl", "sampled"] = Field(
        "jsd", description="OPSD divergence over the vocabulary, or 'sampled' (per-token "
                           "advantage log P_T - log P_S on the sampled token).")
    # Open interval, as algo.token_divergence requires: beta 0 or 1 makes the mixture M equal
    # one side and the divergence degenerate (use forward_kl / reverse_kl for those limits).
    opsd_beta: float = Field(0.5, gt=0, lt=1, description="Generalized JSD beta, in (0, 1); "
                                                           "forward_kl / reverse_kl are the limits.")
    opsd_weight: float = Field(1.0, ge=0, description="Weight of the OPSD term in grpo+opsd.")
    thought_only: bool = Field(False, description="The teacher reweights only tokens inside the "
                                                  "reasoning span (thought_start..thought_end); "
                                                  "other tokens keep plain A (the release's option).")
    thought_start: str = Field("<think>", min_length=1, description="Text that opens the reasoning "
                                                                    "span (thought_only).")
    thought_end: str = Field("</think>", min_length=1, description="Text that closes it (a response "
                                                                  "cut before it: to the end).")


class SchedulerConfig(_Section):
    name: str = Field("release", description="Magnitude scheduler (lambda, eps_w by step).")
    options: dict[str, Any] = Field(default_factory=dict, description="Scheduler options.")


TaskConfig.model_rebuild()  # its `scheduler` field names SchedulerConfig, defined above


class TeacherConfig(_Section):
    mode: Literal["snapshot", "live", "ema"] = Field(
        "snapshot", description="Teacher weights: a periodically refreshed snapshot, the live "
                                "policy, or an EMA copy.")
    sync_every: int = Field(10, ge=1, description="Snapshot refresh period in steps.")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="EMA decay (mode ema).")
    check: AutoBool = Field(
        "auto", description="Before step 1, run a small teacher check (`rlsd check-teacher`) and "
                            "warn when the teacher is not informative: auto = when the objective "
                            "uses the teacher (rlsd, opsd, grpo+opsd); the result goes to "
                            "teacher_check.json.")
    check_rows: int = Field(32, ge=1, description="Held-out rows per task of that check (greedy "
                                                  "with and without the hint; G sampled each).")


class ScoringConfig(_Section):
    micro_batch: int = Field(
        32, ge=1, description="Sequences per no-grad scoring forward (pi_old, teacher, OPSD teacher "
                              "logits): a chunk holds micro_batch x T x V logits, so this, not the "
                              "rollout batch, sets their memory (docs/performance.md).")
    share_prefix: AutoBool = Field(
        "auto", description="Score each distinct prompt of a chunk once and its G responses "
                            "against its cached keys/values (teacher and pi_old forwards): auto = "
                            "when the model's cache allows it (full attention), else the plain "
                            "forward.")
    pi_old: Literal["auto", "rollout", "recompute"] = Field(
        "auto", description="pi_old from the rollout engine's log-probs when they are provably the "
                            "trainer's (HF engine on the training model, no autocast, no dropout, "
                            "one PPO epoch; 'rollout' insists), else a no-grad student forward "
                            "('recompute' always).")


class OptimConfig(_Section):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    lr_warmup_steps: int = Field(
        4, ge=0, description="Linear learning-rate ramp over the first N RL steps (lr x step/N), "
                             "then constant: AdamW's first steps move every weight by the full lr "
                             "whatever the gradient's noise (0: no ramp).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per epoch (the batch is split "
                                                   "into this many mini-batches).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Autocast for the policy forward: auto = bf16 on a GPU that supports "
                            "it, fp32 on CPU.")


class EvalConfig(_Section):
    every: int = Field(8, ge=0, description="Held-out greedy evaluation period in steps "
                                             "(0: only before and after).")
    max_new_tokens: int = Field(16, ge=1, description="Response length cap for evaluation.")


class LogConfig(_Section):
    console: bool = Field(True, description="Progress bar and the final table.")
    jsonl: bool = Field(True, description="metrics.jsonl in the run directory.")
    plot: bool = Field(True, description="plot.png in the run directory.")
    tensorboard: AutoBool = Field(
        "auto", description="TensorBoard event files (auto: when the package is installed).")
    samples_every: int = Field(10, ge=0, description="Write a few decoded samples every N steps "
                                                     "to samples.jsonl (0: never).")
    on_observer_error: Literal["disable", "stop"] = Field(
        "disable", description="An observer (event-hook plugin) that raises is logged with its name "
                               "and disabled for the rest of the run (disable), or stops the run "
                               "(stop).")


class FaultsConfig(_Section):
    max_infra_fraction: float = Field(
        0.5, ge=0, le=1, description="Stop the run when more than this share of a task's samples "
                                     "are infrastructure faults (verifier_error, sandbox_error, "
                                     "gold_error) for `steps` steps in a row (1.0: never stop).")
    steps: int = Field(3, ge=1, description="Consecutive steps over max_infra_fraction before the "
                                            "run stops.")


class DistributedConfig(_Section):
    timeout_s: float = Field(
        1800.0, ge=10, description="Under torchrun: seconds a collective waits for the other ranks "
                                   "before it raises (bounds a hang; a crashed rank stops the run "
                                   "at once). Cover rank 0's model build and warm-up.")


class TrainConfig(_Section):
    seed: int = Field(0, description="Seed for torch, task generation and sampling.")
    # 24 steps: the embedded default's cold run (model, warm-up stopped by its readiness check at
    # step 275, check, RL) took 3:52 on a 2-core CPU on 2026-11-30 (budget 5:00); each RL step ~2 s.
    steps: int = Field(24, ge=1, description="RL steps (rollout batches).")
    output_dir: str = Field("runs/{timestamp}",
                            description="Run directory; {timestamp} is replaced.")
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint period in steps (0: only "
                                                       "the final one).")
    checkpoint_keep: int = Field(3, ge=1, description="Checkpoints kept in <run_dir>/checkpoints "
                                                      "(the newest; older ones are deleted).")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: leave torch's choice).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="Supervised warm-up.")
    tasks: list[TaskConfig] = Field(default_factory=_default_tasks, min_length=1,
                                    description="The task suite.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    algo: AlgoConfig = Field(default_factory=AlgoConfig, description="Objective.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig,
                                       description="Magnitude schedule.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Self-teacher.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig,
                                   description="The no-grad scoring forwards (pi_old, teacher).")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation.")
    log: LogConfig = Field(default_factory=LogConfig, description="Observers.")
    faults: FaultsConfig = Field(default_factory=FaultsConfig,
                                 description="When infrastructure faults stop a run.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="Data-parallel runs (torchrun).")

    @model_validator(mode="after")
    def _consistent(self):
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {dupes}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- help: every field with its default, generated from the models -----------------------------

class _Required:
    def __repr__(self) -> str:
        return "required"

    __str__ = __repr__


REQUIRED = _Required()  # the "default" iter_fields reports for a field without one


def _section_type(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def iter_fields(model: type[BaseModel] = TrainConfig, prefix: str = "") -> Iterator[tuple[str, Any, str, Any]]:
    """(dotted name, annotation, description, default) of every leaf field, in declaration order."""
    for name, info in model.model_fields.items():
        dotted = prefix + name
        section = _section_type(info.annotation)
        if section is not None:
            yield from iter_fields(section, dotted + ".")
            continue
        if info.is_required():
            yield dotted, info.annotation, info.description or "", REQUIRED
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list) and default and isinstance(default[0], BaseModel):
            default = [d.model_dump(exclude_defaults=True) for d in default]
        yield dotted, info.annotation, info.description or "", default


def type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


# --- building: defaults <- YAML <- overrides ----------------------------------------------------

def parse_value(text: str) -> Any:
    """A command-line value, read as YAML so 1e-4, true, [1, 2] and {a: 1} get their types."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; a learning rate is written that way.
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = _list_index(node, part, parts[:i + 1])
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, where: list[str]) -> int:
    if not part.isdigit():
        raise ConfigError(f"{'.'.join(where)}: expected a list index (0..{len(node) - 1}) after "
                          f"{'.'.join(where[:-1])!r}, got {part!r}")
    idx = int(part)
    if idx >= len(node):
        if idx == len(node):  # appending one entry at a time is allowed
            node.append({})
        else:
            raise ConfigError(f"{'.'.join(where)}: index {idx} is past the end of a list of "
                              f"{len(node)}")
    return idx


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently:
    `lr: 1e-4` ... `lr: 1e-2` would train at 1e-2 without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {first} and "
                                f"{key_node.start_mark.line + 1}); keep one", None)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where (PyYAML's own text spans several)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def read_yaml_text(text: str) -> Any:
    """YAML with duplicate keys refused (config files, suite manifests)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_text_file(p: Path, what: str) -> str:
    """A text file as UTF-8, with an error naming the file and the byte for anything else."""
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(p)!r}: {exc.strerror}") from None


def load_yaml(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = read_yaml_text(read_text_file(p, "config file"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level, "
                          f"got {type(data).__name__}")
    return data


def build_config(yaml_path: str | Path | None = None,
                 overrides: list[tuple[str, Any]] | None = None) -> TrainConfig:
    """Defaults <- YAML <- overrides (dotted keys, values already parsed), then validate."""
    tree = TrainConfig().model_dump(mode="python")
    if yaml_path is not None:
        loaded = load_yaml(yaml_path)
        _merge(tree, loaded)
    for dotted, value in overrides or []:
        _set_dotted(tree, dotted, value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def _merge(base: dict, new: dict) -> None:
    """Deep-merge mappings; lists (the task suite) replace the default wholesale."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in (
                "options", "engine_options", "verifier_options", "injector_options"):
            _merge(base[key], value)
        else:
            base[key] = value


# --- error messages ------------------------------------------------------------------------------

def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model that owns the last element of `loc` (None if not a section)."""
    model: Any = TrainConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        ann = info.annotation
        if typing.get_origin(ann) is list:
            ann = typing.get_args(ann)[0]
        if _section_type(ann) is None:
            return None
        model = ann
    return model


def suggest_key(loc: tuple) -> str | None:
    """The nearest valid key to an unknown one, as a dotted path, or None."""
    model = _model_at(loc)
    if model is None:
        return None
    bad = str(loc[-1])
    valid = list(model.model_fields)
    close = difflib.get_close_matches(bad, valid, n=1, cutoff=0.5)
    if close:
        return _loc(loc[:-1] + (close[0],))
    # A leaf placed at the wrong level (e.g. `lr:` at the top): look for it in every section.
    homes = [dotted for dotted, *_ in iter_fields() if dotted.rsplit(".", 1)[-1] == bad]
    return " or ".join(homes) if homes else None


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = _loc(err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            hint = suggest_key(err["loc"])
            model = _model_at(err["loc"])
            valid = ", ".join(model.model_fields) if model is not None else ""
            msg = f"{where}: unknown key"
            msg += ("; did you mean " + " or ".join(f"'{h}'" for h in hint.split(" or ")) + "?"
                    if hint else ".")
            if valid:
                msg += f" Valid keys here: {valid}."
            lines.append(msg)
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {err['msg']}{shown}")
    return invalid(lines, "see `rlsd train --help` for every field")


def invalid(problems: list[str], hint: str = "") -> str:
    """One problem: one line; several: one line each under a heading."""
    tail = f" ({hint})" if hint else ""
    if len(problems) == 1:
        return f"invalid config: {problems[0]}{tail}"
    return "invalid config:\n  " + "\n  ".join(problems) + (f"\n{hint[0].upper()}{hint[1:]}." if hint else "")


# --- plugin names --------------------------------------------------------------------------------

def check_plugins(cfg: TrainConfig, registry) -> None:
    """Every verifier, injector, scheduler, task source and objective the config names must be
    installed; scheduler options are tried by building the scheduler once. Raises ConfigError
    naming the field and listing what is installed."""
    problems = []

    def need(kind: str, name: str, where: str):
        try:
            return registry.get(kind, name)
        except UnknownNameError as exc:
            problems.append(f"{where}: {exc}")
            return None

    def try_scheduler(section, where: str) -> None:
        """The scheduler must exist and accept its options (built once, then dropped)."""
        rec = need("scheduler", section.name, f"{where}.name")
        if rec is None:
            return
        try:
            scheduler = rec.fn(**section.options)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}.options: scheduler {section.name!r} rejects "
                            f"{section.options!r}: {exc}")
            return
        try:  # a throwaway instance's first step: NaN or a wrong type fails now, not at step 1
            mag = scheduler(1, None)
            lam, eps_w = float(mag.lam), float(mag.eps_w)
        except Exception as exc:  # noqa: BLE001 - reported with the scheduler's name
            problems.append(f"{where}: scheduler {section.name!r} fails at step 1: "
                            f"{type(exc).__name__}: {exc}")
            return
        if not (math.isfinite(lam) and math.isfinite(eps_w) and 0 <= lam <= 1 and eps_w >= 0):
            problems.append(f"{where}: scheduler {section.name!r} returns lam={lam!r}, "
                            f"eps_w={eps_w!r} at step 1; lam must be in [0, 1] and eps_w >= 0")

    def try_options(record, options, where: str) -> None:
        """The plugin's declared options (rlsd_core.check_options), before any row is scored."""
        if record is not None:
            try:
                check_options(record, options)
            except OptionsError as exc:
                problems.append(f"{where}: {exc}")

    for i, task in enumerate(cfg.tasks):
        default_verifier, default_injector = "exact_match", "reference_answer"
        if task.path is None:
            rec = need("task_source", task.source, f"tasks[{i}].source")
            if rec is not None:
                default_verifier, default_injector = rec.verifier, rec.injector
        rec = need("verifier", task.verifier or default_verifier, f"tasks[{i}].verifier")
        if task.verifiers:
            for j, extra in enumerate(task.verifiers):
                rec = rec if j == 0 else need("verifier", extra.name, f"tasks[{i}].verifiers[{j}].name")
                try_options(rec, extra.options, f"tasks[{i}].verifiers[{j}].options")
        else:
            try_options(rec, task.verifier_options, f"tasks[{i}].verifier_options")
        if task.scheduler is not None:
            try_scheduler(task.scheduler, f"tasks[{i}].scheduler")
        rec = need("injector", task.injector or default_injector, f"tasks[{i}].injector")
        try_options(rec, task.injector_options, f"tasks[{i}].injector_options")
    try_scheduler(cfg.scheduler, "scheduler")
    need("objective", cfg.algo.loss, "algo.loss")
    if problems:
        raise ConfigError(invalid(problems))
