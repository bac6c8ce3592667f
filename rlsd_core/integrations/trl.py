"""rlsd inside TRL: verifiers as GRPO reward functions, and RLSD's token reweighting in GRPO.

Where this sits in TRL's step (trl 1.16, `GRPOTrainer._generate_and_score_completions`):

    rows -> generate (transformers, vLLM colocate or server) -> reward functions
         [reward_function(name): rlsd_core.rewards.VerifierRuntime -> float, or None for an
          infrastructure fault, which TRL leaves out of the group baseline]
         -> group advantages A [B] (TRL's own: scale_rewards, multi-objective aggregation)
         [RLSDTrainer, after TRL's method returns: teacher prompt from an rlsd injector ->
          log P_T of the same completion tokens (no grad) -> A_hat [B, T] =
          rlsd_core.algo.rlsd_token_advantages(A, log P_T, log P_S, lambda, eps_w)]
         -> TRL's loss (clipped surrogate, KL, vLLM importance sampling, loss_type), which takes
            a per-token advantage [B, T] where it would take [B]

RLSDTrainer overrides one method and replaces nothing else: generation, reward functions,
accelerate / DeepSpeed / FSDP wrapping, vLLM, the loss and logging stay TRL's. Both forwards
it adds (the student's rollout-time log-probs, when TRL did not compute them, and the teacher's)
run through TRL's own scoring forward (`_get_per_token_logps_and_entropies`: the same fused LM
head, temperature, autocast and sharded-parameter handling as TRL's loss), so delta compares
like with like: with the `none` injector it is exactly 0.

`trl` is an optional extra: pip install 'rlsd[trl]'.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import torch

from .. import algo
from ..loop import Teacher
from ..loop.teacher import MODES as TEACHER_MODES
from ..plugins import PluginManager
from ..records import InjectorContext, Magnitude
from ..rewards import VerifierRuntime
from .scoring import column_error, completion_text, missing_columns, registry

try:
    import trl
    from accelerate.utils import is_peft_model
    from transformers import TrainerCallback
    from trl import GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import add_fused_lm_head, pad
except ImportError as exc:  # pragma: no cover - the tests skip without trl
    raise ImportError("rlsd_core.integrations.trl needs TRL: pip install 'rlsd[trl]' "
                      f"(TRL {'>=1.16,<2'}); the import failed with: {exc}") from exc

logger = logging.getLogger(__name__)

TESTED_TRL = "1.16"
# What TRL passes a reward function besides dataset columns (they are not columns).
TRL_REWARD_KWARGS = frozenset({"trainer_state", "log_extra", "log_metric", "environments",
                               "completion_ids"})
# The GRPOTrainer internals RLSDTrainer relies on; checked at construction so a TRL release
# that renames one fails loudly instead of training plain GRPO.
TRL_HOOKS = ("_generate_and_score_completions", "_get_per_token_logps_and_entropies",
             "_tokenize_prompts")


# ---------------------------------------------------------------------------------------------
# reward functions
# ---------------------------------------------------------------------------------------------

def dataset_columns(dataset: Any) -> list[str] | None:
    """Column names of a datasets.Dataset / IterableDataset, a dict of columns, a list of rows
    or a list of names; None when they cannot be known (an IterableDataset without features)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    if isinstance(dataset, Mapping):
        return list(dataset)
    if isinstance(dataset, Sequence) and dataset and isinstance(dataset[0], Mapping):
        return list(dataset[0])
    if isinstance(dataset, Sequence) and all(isinstance(c, str) for c in dataset):
        return list(dataset)
    return None


class RewardFunction:
    """An rlsd verifier with TRL's reward-function contract; build it with `reward_function`.

    `fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]`, one entry
    per completion. Scoring goes through rlsd's VerifierRuntime (input hygiene, reward cache,
    worker processes with hard deadlines). Infrastructure faults (a crashed verifier, a sandbox
    that could not start, a bad gold) come back as None: TRL's "no reward", which it leaves out
    of the group mean instead of training on a false 0. `stats` holds the runtime's counters
    and the fault count; `close()` stops the worker processes.
    """

    def __init__(self, name: str, options: Mapping[str, Any], *, dataset: Any = None,
                 runtime: Mapping[str, Any] | None = None,
                 plugins: PluginManager | None = None) -> None:
        self.verifier = name
        self.options = dict(options)
        self.runtime_options = dict(runtime or {})
        self._plugins = plugins
        self.record = registry(plugins).verifier(name)
        # TRL names each reward function's metrics by __name__ ("rewards/rlsd_math/mean").
        self.__name__ = f"rlsd_{name}"
        # The prompt reaches a reward function as `prompts`, never as a column.
        self.needs = [c for c in self.record.columns if c != "prompt"]
        columns = None if dataset is None else dataset_columns(dataset)
        if columns is not None:
            self._check_columns(columns)
        self.infra_faults = 0
        self._runtime: VerifierRuntime | None = VerifierRuntime(self.record, self.options,
                                                                **self.runtime_options)

    def _check_columns(self, available: Iterable[str]) -> None:
        available = list(available)
        missing = missing_columns(self.needs, available)
        if missing:
            raise ValueError(column_error(
                f"verifier {self.verifier!r}", missing, available,
                "Add the column to the dataset (e.g. dataset.rename_column(<yours>, "
                f"{missing[0]!r})), or pick a verifier that reads the columns you have."))

    @property
    def runtime(self) -> VerifierRuntime:
        if self._runtime is None:  # after unpickling in another process
            self._runtime = VerifierRuntime(registry(self._plugins).verifier(self.verifier),
                                            self.options, **self.runtime_options)
        return self._runtime

    def __call__(self, prompts: Sequence[Any] | None, completions: Sequence[Any],
                 completion_ids: Any = None, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        columns = {k: v for k, v in kwargs.items() if k not in TRL_REWARD_KWARGS}
        self._check_columns(columns)
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"{self.__name__}: column {key!r} has {len(values)} values for "
                                 f"{n} completions; TRL passes one value per completion")
        rows = [{key: values[i] for key, values in columns.items()} for i in range(n)]
        if prompts is not None:
            for row, prompt in zip(rows, prompts):
                row.setdefault("prompt", prompt)
        verdicts = self.runtime.score([completion_text(c) for c in completions], rows)
        faults = Counter(v.category.value for v in verdicts if v.is_infra)
        self._report(kwargs, verdicts, faults)
        return [None if v.is_infra else v.reward for v in verdicts]

    def _report(self, kwargs: Mapping[str, Any], verdicts, faults: Counter) -> None:
        n_faults = sum(faults.values())
        self.infra_faults += n_faults
        if kwargs.get("log_metric") is not None:
            kwargs["log_metric"](f"{self.__name__}/infra_faults", float(n_faults))
        if kwargs.get("log_extra") is not None:
            kwargs["log_extra"](f"{self.__name__}/verdict", [v.category.value for v in verdicts])
        if n_faults:
            logger.warning("rlsd verifier %r: %d of %d completions hit an infrastructure fault (%s); "
                           "returned None for them, so TRL leaves them out of the group baseline "
                           "(%d so far)", self.verifier, n_faults, len(verdicts),
                           ", ".join(f"{k}: {v}" for k, v in sorted(faults.items())),
                           self.infra_faults)

    @property
    def stats(self) -> dict[str, float]:
        return {**self.runtime.stats, "infra_faults": float(self.infra_faults)}

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # A worker pool and a plugin manager do not pickle; the verifier is looked up again by name
    # in the process that unpickles (TRL documents picklable reward functions).
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_runtime"] = None
        state["_plugins"] = None
        return state

    def __repr__(self) -> str:
        return f"<rlsd reward function {self.__name__} options={self.options}>"


def reward_function(name: str, *, dataset: Any = None, runtime: Mapping[str, Any] | None = None,
                    plugins: PluginManager | None = None, **options: Any) -> RewardFunction:
    """A registered rlsd verifier (built-in or an installed plugin) as a TRL reward function.

    name: the verifier (`rlsd plugins` lists them). options: the verifier's own options.
    dataset: the training dataset (or its column names); the verifier's declared columns are
      checked against it now, with an error that names the missing column (they are checked
      again on every call).
    runtime: VerifierRuntime settings: workers, timeout, max_chars, cache, memory_limit_mb.
    plugins: a PluginManager (default: the installed entry points, loaded once per process).

        trainer = GRPOTrainer(model, reward_funcs=[reward_function("math", dataset=ds)], ...)
    """
    return RewardFunction(name, options, dataset=dataset, runtime=runtime, plugins=plugins)


# ---------------------------------------------------------------------------------------------
# RLSD in TRL's GRPO loss
# ---------------------------------------------------------------------------------------------

class _TeacherRefresh(TrainerCallback):
    """Refreshes the snapshot / EMA teacher after every optimizer step (rlsd_core.loop.Teacher)."""

    def __init__(self, trainer: "RLSDTrainer") -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        synced = self.trainer.rlsd_teacher.update(state.global_step)
        self.trainer._metrics["train"]["rlsd/teacher_synced"].append(float(synced))


def _own_fused_forward(model, temperature: float, cast_lm_head_to_fp32: bool) -> None:
    """Give a deep copy of a TRL-patched model its own fused LM head. The copy's `forward` is
    TRL's wrapper rebound to the copy, but the wrapper's unfused path still calls the ORIGINAL
    model's forward (a closure deepcopy does not follow): a snapshot teacher would silently
    score with the live weights. Drop the copied wrapper and patch the copy afresh."""
    target = model.get_base_model() if is_peft_model(model) else model
    vars(target).pop("forward", None)
    add_fused_lm_head(target, temperature=temperature, cast_lm_head_to_fp32=cast_lm_head_to_fp32)


class RLSDTrainer(GRPOTrainer):
    """trl.GRPOTrainer with RLSD's per-token advantages (shared/spec/algorithm.md, steps 2-6).

    Takes every GRPOTrainer argument, plus:
      injector, injector_options: the rlsd injector that builds the teacher prompt from the
        dataset row (default `reference_answer`: the row's `answer` column as the reference
        solution). Group injectors (which read sibling verdicts) are not supported here.
      scheduler, scheduler_options: the rlsd scheduler plugin giving lambda and eps_w per step
        (default `release`: lambda 0.5 decaying to 0 over 60 steps). Once lambda is 0 the
        teacher forward is skipped and the step is TRL's GRPO, bit for bit.
      teacher: "snapshot" (default; a copy of the initial policy refreshed every
        `teacher_sync_every` optimizer steps), "live" (the policy itself, no copy) or "ema"
        (`teacher_ema_decay`). Under FSDP or DeepSpeed ZeRO-3 only "live" works (a copy of a
        sharded model is not a model).
      negative_only: reweight only completions with A < 0 (the release's option).
      plugins: a PluginManager (default: the installed entry points).

    Metrics (TRL's logs, prefix `rlsd/`): lambda, eps_w, teacher_skipped, teacher_synced and,
    when the teacher ran, delta_mean, delta_abs_mean, w_mean, clip_low_frac, clip_high_frac,
    clip_frac, adv_hat_mean, adv_hat_abs_mean (token means over all processes).
    """

    def __init__(self, *args: Any, injector: str = "reference_answer",
                 injector_options: Mapping[str, Any] | None = None, scheduler: str = "release",
                 scheduler_options: Mapping[str, Any] | None = None, teacher: str = "snapshot",
                 teacher_sync_every: int = 10, teacher_ema_decay: float = 0.99,
                 negative_only: bool = False, plugins: PluginManager | None = None,
                 **kwargs: Any) -> None:
        # Everything rlsd can check is checked before TRL loads a model.
        _check_trl()
        if teacher not in TEACHER_MODES:
            raise ValueError(f"RLSDTrainer: teacher must be one of {TEACHER_MODES}, got {teacher!r}")
        reg = registry(plugins)
        self.rlsd_injector = reg.injector(injector)
        if self.rlsd_injector.needs_group:
            raise ValueError(
                f"RLSDTrainer: injector {injector!r} reads the verdicts of the other completions of "
                "a group, which TRL's reward functions (floats, groups split across processes) do "
                "not provide; use a row injector such as 'reference_answer' or "
                "'reference_solution'")
        self.rlsd_injector_options = dict(injector_options or {})
        self.rlsd_scheduler = reg.scheduler(scheduler).fn(**dict(scheduler_options or {}))
        self.rlsd_negative_only = bool(negative_only)
        self.rlsd_diagnostics: dict[str, float] | None = None
        super().__init__(*args, **kwargs)
        if getattr(self, "environment_factories", None):
            raise NotImplementedError("RLSDTrainer: environment_factory (multi-turn environments) "
                                      "is not supported yet; use GRPOTrainer for those runs")
        self._check_injector_columns(injector)
        if teacher != "live" and (self.is_fsdp_enabled or _zero3(self)):
            raise ValueError(f"RLSDTrainer: teacher={teacher!r} copies the policy, which FSDP / "
                             "DeepSpeed ZeRO-3 shard across processes; use teacher='live'")
        self.rlsd_teacher = Teacher(self.model, mode=teacher, sync_every=teacher_sync_every,
                                    ema_decay=teacher_ema_decay)
        if teacher != "live":
            _own_fused_forward(self.rlsd_teacher.model, self.temperature, self.args.cast_lm_head_to_fp32)
            self.add_callback(_TeacherRefresh(self))

    def _check_injector_columns(self, injector: str) -> None:
        columns = dataset_columns(self.train_dataset) if self.train_dataset is not None else None
        missing = [] if columns is None else missing_columns(self.rlsd_injector.columns, columns)
        if missing:
            raise ValueError(column_error(f"injector {injector!r}", missing, columns,
                                          "The teacher prompt is built from the dataset row."))

    # -- the one overridden step of TRL's GRPO -----------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # evaluation: TRL's loss on plain A, no schedule step taken
            return output
        mag = self.rlsd_scheduler(self.state.global_step + 1, self.rlsd_diagnostics)
        mag = Magnitude(float(mag.lam), float(mag.eps_w))
        output, diag = self.rlsd_reweight(inputs, output, mag)
        metrics = self._metrics["train"]
        for key, value in diag.items():
            metrics[f"rlsd/{key}"].append(value)
        self.rlsd_diagnostics = diag
        return output

    def rlsd_reweight(self, inputs: list[Mapping[str, Any]], output: dict[str, Any],
                      mag: Magnitude) -> tuple[dict[str, Any], dict[str, float]]:
        """RLSD on one generation batch: `output` as TRL's `_generate_and_score_completions`
        returns it (prompt_ids, prompt_mask, completion_ids, completion_mask, advantages [B],
        optional old_per_token_logps, tool_mask), `inputs` the B dataset rows. Returns the output
        with per-token advantages A_hat [B, T] (and the rollout-time log-probs it compared
        against as old_per_token_logps), and the step's diagnostics for the logs and the
        scheduler. With lambda 0 the output is returned unchanged and no forward runs."""
        diag: dict[str, float] = {"lambda": mag.lam, "eps_w": mag.eps_w}
        if mag.lam == 0.0:
            return output, {**diag, "teacher_skipped": 1.0}
        if any(k in output for k in ("pixel_values", "image_grid_thw", "num_images")):
            raise NotImplementedError("RLSDTrainer: multimodal prompts are not supported yet (the "
                                      "teacher forward would need the images too)")
        student, teacher = self.rlsd_logprobs(inputs, output)
        mask = output["completion_mask"].bool()
        if "tool_mask" in output:
            mask &= output["tool_mask"].bool()
        adv = output["advantages"]
        a_hat = algo.rlsd_token_advantages(adv, teacher, student, mask, lam=mag.lam, eps_w=mag.eps_w,
                                           negative_only=self.rlsd_negative_only)
        local = algo.rlsd_diagnostics(adv, teacher, student, mask, a_hat, eps_w=mag.eps_w)
        out = {**output, "advantages": a_hat.to(adv.dtype)}
        # TRL leaves old_per_token_logps out when generation and update are aligned (the ratio is
        # then per_token_logps.detach()); these are the same rollout-time numbers, and the ratio
        # should use what delta used.
        out.setdefault("old_per_token_logps", student)
        return out, {**diag, "teacher_skipped": 0.0, **self._global_means(local, mask)}

    def rlsd_logprobs(self, inputs: list[Mapping[str, Any]],
                      output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log P_S, log P_T) [B, T] of the completion tokens: the student's at rollout time
        (TRL's old_per_token_logps when it computed them) and the teacher's under the injector's
        prompt, both through TRL's scoring forward, without gradient."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        t_ids, t_mask = self.rlsd_teacher_prompts(inputs)
        self._place_teacher()
        keep = completion_ids.size(1)
        batch_size = self.args.per_device_train_batch_size
        no_checkpointing = disable_gradient_checkpointing(self.model,
                                                          self.args.gradient_checkpointing_kwargs)
        with torch.no_grad(), no_checkpointing:
            student = output.get("old_per_token_logps")
            if student is None:
                student = self._get_per_token_logps_and_entropies(
                    self.model, torch.cat([output["prompt_ids"], completion_ids], dim=1),
                    torch.cat([output["prompt_mask"], completion_mask], dim=1), keep,
                    batch_size=batch_size)[0]
            teacher = self._get_per_token_logps_and_entropies(
                self.rlsd_teacher.model, torch.cat([t_ids, completion_ids], dim=1),
                torch.cat([t_mask, completion_mask], dim=1), keep, batch_size=batch_size)[0]
        return student, teacher

    def _place_teacher(self) -> None:
        """Keep a snapshot / EMA copy on the policy's device and in its dtype: under DeepSpeed the
        policy reaches its device (and dtype) only when training starts, after the copy."""
        if self.rlsd_teacher.mode == "live":
            return
        ref = next(self.model.parameters())
        own = next(self.rlsd_teacher.model.parameters())
        if own.device != ref.device or own.dtype != ref.dtype:
            self.rlsd_teacher.model.to(device=ref.device, dtype=ref.dtype)

    def rlsd_teacher_prompts(self, inputs: list[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher prompt ids and mask [B, P_T], left-padded like TRL's prompts, tokenized by TRL
        exactly as it tokenizes the student's (chat template, its kwargs, tools). Rows repeat
        once per generation; each distinct row is injected and tokenized once."""
        first: dict[int, int] = {}
        unique: list[Any] = []
        for i, row in enumerate(inputs):
            if i and _same_row(row, inputs[i - 1]):
                first[i] = first[i - 1]
                continue
            first[i] = len(unique)
            unique.append(self._teacher_prompt(row))
        ids = self._tokenize_prompts(unique)[0]
        rows = [torch.tensor(ids[first[i]]) for i in range(len(inputs))]
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        prompt = pad(rows, padding_value=pad_id, padding_side="left").to(device)
        mask = pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="left").to(device)
        return prompt, mask

    def _teacher_prompt(self, row: Mapping[str, Any]) -> Any:
        """The injector's teacher prompt for a dataset row, in the row's own format: chat
        messages for a conversational prompt; for a plain-text prompt (which TRL tokenizes
        without a chat template) the text of the rewritten user message."""
        prompt = row["prompt"]
        conversational = isinstance(prompt, list)
        student = [dict(m) for m in prompt] if conversational else [{"role": "user", "content": prompt}]
        tok = self._tokenizer
        ctx = InjectorContext(
            options=self.rlsd_injector_options,
            count_tokens=lambda text: len(tok.encode(text, add_special_tokens=False)),
            truncate_tokens=lambda text, n: _truncate(tok, text, n))
        messages = self.rlsd_injector.fn(dict(row), student, ctx)
        if conversational:
            return messages
        if len(messages) != 1 or not isinstance(messages[0].get("content"), str):
            raise ValueError(f"RLSDTrainer: injector {self.rlsd_injector.name!r} returned "
                             f"{len(messages)} messages for a plain-text prompt; use a "
                             "conversational dataset (prompt as chat messages) with it")
        return messages[0]["content"]

    def _global_means(self, local: Mapping[str, float], mask: torch.Tensor) -> dict[str, float]:
        """Token means over every process (each rank's means weighted by its token count), so
        that every rank's scheduler reads the same diagnostics and keeps the same lambda."""
        # Every rank must reduce the same keys in the same order (a NaN stays visible as NaN).
        keys = sorted(k for k, v in local.items() if v is not None)
        n = mask.sum().to(torch.float64)
        vec = torch.stack([torch.tensor(local[k], dtype=torch.float64, device=n.device) * n
                           for k in keys] + [n])
        total = self.accelerator.reduce(vec, reduction="sum")
        denom = float(total[-1]) or 1.0
        return {k: float(total[i]) / denom for i, k in enumerate(keys)}


def _same_row(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    try:
        return bool(a is b or a == b)
    except (TypeError, ValueError):  # columns such as arrays have no single truth value
        return False


def _truncate(tok, text: str, n: int) -> str:
    ids = tok.encode(text, add_special_tokens=False)
    return text if len(ids) <= n else tok.decode(ids[:n])


def _zero3(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def _check_trl() -> None:
    missing = [name for name in TRL_HOOKS if not hasattr(GRPOTrainer, name)]
    if missing:
        raise RuntimeError(f"RLSDTrainer was written against TRL {TESTED_TRL}; this TRL "
                           f"({trl.__version__}) has no GRPOTrainer.{', '.join(missing)}. Install "
                           f"a TRL it supports: pip install 'trl>={TESTED_TRL},<2'")
    if not trl.__version__.startswith(TESTED_TRL + "."):
        logger.warning("RLSDTrainer is tested with TRL %s.x; this is TRL %s", TESTED_TRL,
                       trl.__version__)
