"""Data parallelism across processes: every torch.distributed call of the loop lives here.

`torchrun --nproc-per-node N -m rlsd_core.cli train ...` starts N copies of the same run; each
is one rank. In the data flow:

    setup:      start (the process group: nccl on CUDA, gloo on the CPU; LOCAL_RANK picks the
                GPU) -> rank 0 builds the model first (main_first) -> shard (FSDP2: each decoder
                layer, then the root; the teacher's copy too) -> the engine wrapped
                (ShardedEngine) -> rank 0's run directory for everyone (from_main)
    each step:  the rows stage draws the step's global batch on every rank; local_rows keeps
                this rank's rows -> rollout, verify, teacher prompts, advantages, scoring on the
                rank's own rows (a group never straddles ranks) -> update (denominators and loss
                statistics summed over ranks; FSDP sums the gradients) -> gather_responses (every
                rank's records, in the global order, for the metrics and the samples)
    checkpoint: full state dicts gathered (full_state, FullOptimizerState, FullTeacherState),
                written by rank 0 in the single-process layout, so a checkpoint resumes with any
                number of ranks

Which rank holds what: row g of the step's draw (`batch.draw_rows`) lives on rank g % W as its
local row g // W, and response k of row g is local response (g // W) * G + k (G = group size).
Striding rather than blocks spreads every task over every rank.

At world size 1 (no torchrun, or one process) nothing here runs a collective or touches a number:
every helper returns its input, so the single-process loop stays exactly what it was.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch

from .batch import StepBatch


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the run's processes (size 1: the process is the run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device_type: str = "cpu"       # where reductions run: "cuda" with nccl, "cpu" with gloo
    owns_group: bool = False       # the process group was started here (and is ended here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owner(self, response: int, group: int) -> int:
        """The rank that holds global response `response`."""
        return (response // group) % self.size

    def local_responses(self, responses: list[int], group: int) -> list[int]:
        """This rank's responses among the global `responses`, as local indices, in their order."""
        out = []
        for i in responses:
            row, k = divmod(i, group)
            if row % self.size == self.rank:
                out.append((row // self.size) * group + k)
        return out


# --- the process group ---------------------------------------------------------------------------

def start(device: torch.device, timeout_s: float) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR):
    (this process's World, the device it trains on: cuda:LOCAL_RANK on GPUs). Without torchrun,
    or with one process, nothing is started: (World(), device).

    timeout_s bounds every collective: a rank that stops answering (hung, not crashed: torchrun
    itself stops the others when a rank exits) makes the others raise after that long."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} "
                               "visible GPUs; start at most one process per GPU "
                               "(torchrun --nproc-per-node <= number of GPUs)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local,
                  device_type=device.type, owns_group=owns)
    if world.size != size:
        raise RuntimeError(f"WORLD_SIZE is {size} but the process group has {world.size} ranks")
    return world, device


def stop(world: World) -> None:
    """End the process group this run started (after a successful run only: on an error the
    process exits and torchrun stops the other ranks, which may be waiting in a collective)."""
    if world.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def check_rows(world: World, prompts_per_step: int) -> None:
    from ..config import ConfigError

    if prompts_per_step < world.size:
        raise ConfigError(f"rollout.prompts_per_step is {prompts_per_step} but the run has "
                         f"{world.size} ranks: every rank needs at least one prompt per step; "
                         f"use --rollout.prompts_per_step {world.size} or more (a multiple of "
                         f"{world.size} keeps the ranks evenly loaded), or fewer processes")


# --- collectives -------------------------------------------------------------------------------

def all_gather(world: World, obj: Any) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if world.size == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def total(world: World, value: float) -> float:
    """The sum of `value` over ranks (float64: exact for counts)."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=world.device_type)
    dist.all_reduce(t)
    return float(t.item())


def from_main(world: World, make: Callable[[], Any]) -> Any:
    """`make()` evaluated on rank 0 only, its result given to every rank."""
    if world.size == 1:
        return make()
    import torch.distributed as dist

    box = [make() if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (building and caching the model, the warm-up), the others
    after it, when they find the cache filled instead of racing to fill it."""
    if world.size == 1:
        yield
        return
    import torch.distributed as dist

    if not world.is_main:
        dist.barrier()
    yield
    if world.is_main:
        dist.barrier()


class _NoEvents:
    def __getattr__(self, name: str) -> Callable[..., list]:
        return lambda **kwargs: []


class MutedEvents:
    """A plugin manager whose event hooks (observers: console, metrics files, plots, trackers)
    do nothing: what ranks other than 0 get, so that a run reports once."""

    def __init__(self, pm) -> None:
        self._pm = pm

    @property
    def hook(self) -> _NoEvents:
        return _NoEvents()

    def implementers(self, hook: str) -> list[str]:
        """No observer implements anything here (what loop.events.Events asks before a call)."""
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pm, name)


def observers(world: World, pm):
    """The plugin manager whose events this rank sends: the real one on rank 0 only."""
    return pm if world.is_main else MutedEvents(pm)


# --- the step's rows and records -----------------------------------------------------------------

def local_rows(world: World, batch: StepBatch) -> StepBatch:
    """This rank's rows of the step's batch (rows rank, rank + W, ...); the batch at world size 1."""
    if world.size == 1:
        return batch
    ids = list(range(world.rank, len(batch.rows), world.size))
    index = torch.tensor(ids, dtype=torch.long)

    def pick(items):
        return [items[i] for i in ids]

    return dataclasses.replace(batch, tasks=pick(batch.tasks), rows=pick(batch.rows),
                               prompt_ids=pick(batch.prompt_ids), lam=batch.lam[index],
                               eps_w=batch.eps_w[index], seeds=tuple(pick(batch.seeds)))


def gather_responses(world: World, rows: int, group: int, *records):
    """Every rank's per-response records (Rollout, Verified, Credit, lists), merged in the step's
    global order: what one process would hold. The records themselves at world size 1.

    Lists are interleaved; tensors [n, ...] are padded with zeros (False) to the largest trailing
    shape and interleaved; tensors travel on the CPU. Every rank gets the same result."""
    if world.size == 1:
        return records
    everyone = all_gather(world, [_to_cpu(r) for r in records])
    order = [(g % world.size, (g // world.size) * group + k) for g in range(rows) for k in range(group)]
    return tuple(merge_ranks([mine[j] for mine in everyone], order) for j in range(len(records)))


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _to_cpu(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def merge_ranks(values: list, order: list[tuple[int, int]]):
    """One record from every rank's (`values`, in rank order): entry j of the result is entry
    order[j] = (rank, local index). Dataclasses field by field; lists picked; tensors [n, ...]
    zero-padded to the largest trailing shape, then picked; None stays None."""
    first = values[0]
    if first is None:
        return None
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{
            f.name: merge_ranks([getattr(v, f.name) for v in values], order)
            for f in dataclasses.fields(first) if f.init})
    if isinstance(first, (list, tuple)):
        return type(first)(values[r][i] for r, i in order)
    if isinstance(first, torch.Tensor):
        shape = [max(v.shape[d] for v in values) for d in range(1, first.dim())]
        padded = []
        for v in values:
            pad = []
            for d in reversed(range(1, v.dim())):
                pad += [0, shape[d - 1] - v.shape[d]]
            padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
        offsets = [0]
        for v in padded[:-1]:
            offsets.append(offsets[-1] + v.shape[0])
        return torch.cat(padded)[torch.tensor([offsets[r] + i for r, i in order], dtype=torch.long)]
    return first


# --- FSDP2 ---------------------------------------------------------------------------------------

def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks: the modules transformers names in `_no_split_modules` (else the
    entries of the model's longest ModuleList)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
        layers = list(max(lists, key=len)) if lists else []
    return layers


def fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard(world: World, policy_model, *copies, bf16: bool) -> None:
    """Shard the policy's parameters (and those of the teacher's `copies`) over the ranks with
    FSDP2, in place: `fully_shard` on each decoder layer (all-gathered for its forward and
    backward, sharded again after), then on the root (embeddings, final norm, head). With bf16
    the all-gathered parameters are bf16 and gradients are reduced in fp32. The policy's sharded
    parameters are always fp32: they are the master weights AdamW steps. A policy loaded in
    16 bits (model.dtype bfloat16) is upcast before sharding and computes in its 16-bit dtype,
    which costs 4P/W bytes per rank instead of 2P/W, and is what lets small updates add up
    (AdamW stepping bf16 weights rounds them away); the teacher's copy is upcast with it (4P/W
    too; its EMA then moves in fp32). Gradients are SUMMED over ranks, not
    averaged: each rank's loss already divides by the whole batch's count."""
    if world.size == 1:
        return
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    low = [p.dtype for p in policy_model.parameters() if p.dtype in (torch.bfloat16, torch.float16)]
    if low:  # the teacher's copy too: an EMA of it then needs no fp32 accumulators of its own
        for model in (policy_model, *copies):
            model.float()
    compute = low[0] if low else torch.bfloat16 if bf16 else None
    mesh = init_device_mesh(world.device_type, (world.size,))
    policy = (MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
              if compute is not None else MixedPrecisionPolicy())
    for model in (policy_model, *copies):
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        # The root's parameters are needed again right after its forward (the head, by the
        # backward): keep them gathered between the two, as FSDP does by default.
        fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
        for m in fsdp_modules(model):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM


@contextmanager
def gathered(model) -> Iterator[None]:
    """The sharded model's full parameters on every rank for the block (one all-gather per
    layer), kept through its forwards, then sharded again. Generation runs inside: a decode
    loop then makes no collective, so ranks whose responses stop at different lengths never wait
    for each other. Costs one full copy of the (compute-dtype) parameters for the block."""
    modules = fsdp_modules(model)
    for m in modules:
        m.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)  # as `shard` left the root


@contextmanager
def unsharded(world: World, model) -> Iterator[None]:
    """`gathered` for the no-grad scoring forwards, a no-op at world size 1: with the weights
    gathered once for the stage, its forwards make no collective, so a rank may run another
    number of them than its peers (it scores only its own responses, in micro-batches of its
    own count). Costs what generation costs: one full compute-dtype copy of `model`."""
    if world.size == 1 or not fsdp_modules(model):
        yield
        return
    with gathered(model):
        yield


def full(tensor):
    """A DTensor gathered into a plain tensor on every rank (a plain tensor as it is)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_ptr(tensor) -> int:
    """The data pointer of the storage this rank holds (a DTensor's own shard): what tells tied
    weights apart. (A DTensor's own data_ptr() is 0 for every tensor.)"""
    from torch.distributed.tensor import DTensor

    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).data_ptr()


def local_bytes(tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


class ShardedEngine:
    """A rollout engine beside a sharded policy, behind the same interface.

    Colocated (the HF engine sampling from the policy itself): each `generate` runs with the
    policy's parameters gathered (`gathered`), and a weight sync has nothing to do. A separate
    engine (vLLM, one TP=1 engine per rank): a sync gathers the full state dict on every rank,
    one tensor at a time, and loads it."""

    def __init__(self, engine, model) -> None:
        self.engine = engine
        self.policy = model
        self.colocated = getattr(engine, "model", None) is model

    def generate(self, prompts, params):
        if not self.colocated:
            return self.engine.generate(prompts, params)
        with gathered(self.policy):
            return self.engine.generate(prompts, params)

    def load_weights(self, state_dict) -> None:
        if self.colocated:
            return  # the engine samples from the live (sharded) parameters
        self.engine.load_weights({k: full(v) for k, v in state_dict.items()})

    def close(self) -> None:
        self.engine.close()

    def __getattr__(self, name: str) -> Any:
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)


def engine_for(world: World, engine, model):
    return engine if world.size == 1 else ShardedEngine(engine, model)


# --- full state dicts (checkpoints) ----------------------------------------------------------------

def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state(world: World, module) -> dict | None:
    """The module's full (unsharded) state dict on rank 0, on the CPU; {} on the other ranks.
    None at world size 1 (the module's own state dict is already full)."""
    if world.size == 1:
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(cpu_offload=True))


def load_full_state(world: World, module, state: dict) -> None:
    """Load a full state dict (every rank holds it, e.g. read from a checkpoint) into the module,
    each rank keeping its own shard. Strict: every tensor, nothing extra."""
    if world.size == 1:
        with torch.no_grad():
            module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options())


class FullOptimizerState:
    """The optimizer of a sharded policy as a checkpoint part, in the layout one process saves
    (`torch.optim.Optimizer.state_dict()`: state keyed by parameter position, full tensors), so
    a checkpoint written by any number of ranks resumes with any number of ranks."""

    def __init__(self, model, optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        named = get_optimizer_state_dict(self.model, self.optimizer, options=_options(cpu_offload=True))
        if not named:  # ranks other than 0 get nothing to save
            return {}
        position: dict[str, int] = {}
        groups = [{**g, "params": [position.setdefault(name, len(position)) for name in g["params"]]}
                  for g in named["param_groups"]]
        return {"state": {position[name]: s for name, s in named["state"].items()},
                "param_groups": groups}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        name_of = {id(p): name for name, p in self.model.named_parameters()}
        names = [name_of[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
            raise ValueError(f"the checkpoint's optimizer holds "
                             f"{sum(len(g['params']) for g in state['param_groups'])} parameters, "
                             f"this model {len(names)}")
        named = {"state": {names[i]: s for i, s in state["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                  for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, named, options=_options())


class FullTeacherState:
    """The teacher of a sharded run as a checkpoint part: its weights saved full (gathered on
    rank 0), loaded back into this run's shards."""

    def __init__(self, world: World, teacher) -> None:
        self.world = world
        self.teacher = teacher

    def state_dict(self) -> dict:
        state = self.teacher.state_dict()
        if state.get("weights") is not None:
            state["weights"] = full_state(self.world, self.teacher.model)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("weights") is not None and state.get("mode") == self.teacher.mode:
            load_full_state(self.world, self.teacher.model, state["weights"])
            state = {**state, "weights": self.teacher.model.state_dict()}  # now its own shards
        self.teacher.load_state_dict(state)


def checkpoint_parts(world: World, model, parts: dict) -> dict:
    """A checkpoint's stateful parts with their sharded members (optimizer, teacher weights)
    saved and loaded full; `parts` itself at world size 1."""
    if world.size == 1:
        return parts
    out = dict(parts)
    out["optimizer"] = FullOptimizerState(model, parts["optimizer"])
    if parts.get("teacher") is not None:
        out["teacher"] = FullTeacherState(world, parts["teacher"])
    return out


def recorded(fn: Callable) -> Callable:
    """`fn` under torchrun's error recorder: a rank that raises leaves its traceback where
    torchrun's failure summary reads it (the root cause, not only "exitcode 1")."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return fn
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)
