"""Teacher scoring: log-probs of the student's sampled tokens under the teacher prompt.

In the data flow: the rollout engine samples responses to the STUDENT prompt; the injector builds
the TEACHER prompt (question + privileged context); `Teacher.score(teacher_prompt_ids,
response_ids, temperature=<rollout temperature>)` gives log P_T of the same sampled tokens, which
the RLSD weights compare with the student's log P_S. Scoring runs under no_grad, in
micro-batches, through `rlsd_core.models.token_logprobs`, the same forward the trainer uses, in
the caller's precision (the loop: the training forward's autocast).

Which weights score (algorithm.md, point 8):
- "snapshot" (default): a frozen copy of the policy taken at construction (the initial policy),
  overwritten with the current policy every `sync_every` optimizer steps.
- "live": the policy itself (no copy, no memory cost; the teacher moves every step).
- "ema": a copy updated after every step: ema <- decay * ema + (1 - decay) * policy.

Where the copy lives and what it costs: "snapshot" and "ema" hold one deep copy of the policy
module (parameters and buffers) on the policy's device and in its dtype, with no gradients and no
optimizer state (requires_grad as the policy's, see `_copy`): one extra copy of the weights, i.e. parameter count x bytes
per element (3.2 M x 4 B = 13 MB for the tiny fp32 model; 135 M x 4 B = 540 MB for SmolLM2-135M
in fp32, 270 MB in bf16). "live" costs nothing. `memory_bytes()` reports the figure. Under
torchrun the copy is sharded like the policy (rlsd_core.loop.distributed.shard): 1/W per rank,
and a refresh copies shard to shard with no communication.
"""

from __future__ import annotations

import copy

import torch

from ..models import TokenScores, token_logprobs
from .distributed import local_bytes, local_ptr

MODES = ("snapshot", "live", "ema")


class Teacher:
    """The teacher weights of RLSD and their refresh policy.

    Call `update(step)` once after each optimizer step (steps counted from 1); it returns True
    when the teacher weights changed in a way worth logging as a sync: a snapshot refresh (every
    `sync_every` steps) or an EMA update (every step).
    """

    def __init__(self, policy, *, mode: str = "snapshot", sync_every: int = 10,
                 ema_decay: float = 0.99):
        if mode not in MODES:
            raise ValueError(f"Teacher: unknown mode {mode!r}; choose one of {MODES}")
        if mode == "snapshot" and (not isinstance(sync_every, int) or sync_every < 1):
            raise ValueError(f"Teacher: sync_every must be an int >= 1, got {sync_every!r}")
        if mode == "ema" and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"Teacher: ema_decay must be in [0, 1), got {ema_decay!r}")
        self.policy = policy
        self.mode = mode
        self.sync_every = sync_every
        self.ema_decay = ema_decay
        self.last_sync_step = 0
        self.model = policy if mode == "live" else self._copy(policy)
        # An EMA of 16-bit weights accumulates in fp32: (1 - decay) x (policy - ema) is mostly
        # below half a bf16 ulp, and a bf16 EMA would round it away and stop moving. Built at
        # first use (`_accumulators`), after the run has sharded the copy (under torchrun the
        # copy is upcast to fp32 there and needs none).
        self._ema32: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _copy(policy):
        # Deep copy keeps tied weights tied (deepcopy's memo) and the device/dtype; gradients
        # are dropped. The requires_grad flags stay the policy's: torch chooses its matmul path
        # by them (at::matmul folds a non-contiguous [b, t, h] input, e.g. HF's logits_to_keep
        # slice, differently when the weight requires grad), so a copy with the flag off scores
        # the same tokens in other rounding (4.8e-7 nats on the tiny model) and a teacher equal
        # to the policy would not give delta = 0. The copy still never gets a gradient: every
        # teacher forward runs under no_grad and no optimizer holds its parameters.
        grads = {name: p.grad for name, p in policy.named_parameters()}
        try:
            for p in policy.parameters():
                p.grad = None
            clone = copy.deepcopy(policy)
        finally:
            for name, p in policy.named_parameters():
                p.grad = grads[name]
        clone.eval()
        return clone

    # -- refresh ----------------------------------------------------------------------------
    def update(self, step: int) -> bool:
        """Refresh the teacher after optimizer step `step` (1-based); True if it changed."""
        if step < 1:
            raise ValueError(f"Teacher.update: steps are counted from 1, got {step}")
        if self.mode == "live":
            return False
        if self.mode == "snapshot":
            if step % self.sync_every != 0:
                return False
            self._copy_from_policy()
        else:
            self._ema_from_policy()
        self.last_sync_step = step
        return True

    @torch.no_grad()
    def _copy_from_policy(self) -> None:
        src = self.policy.state_dict()
        for name, t in self.model.state_dict().items():
            t.copy_(src[name])

    def _accumulators(self) -> dict[str, torch.Tensor] | None:
        """The fp32 accumulators of an EMA over 16-bit weights (None for fp32 weights)."""
        if self._ema32 is None and self.mode == "ema" and any(
                t.is_floating_point() and t.element_size() < 4
                for t in self.model.state_dict().values()):
            self._ema32 = {k: t.detach().float().clone() for k, t in self.model.state_dict().items()
                           if t.is_floating_point()}
        return self._ema32

    @torch.no_grad()
    def _ema_from_policy(self) -> None:
        src = self.policy.state_dict()
        acc32 = self._accumulators()
        seen = set()
        for name, t in self.model.state_dict().items():
            if local_ptr(t) in seen:  # a tied tensor appears under two names; update it once
                continue
            seen.add(local_ptr(t))
            if not t.is_floating_point():  # integer buffers (counters, ids) cannot be averaged
                t.copy_(src[name])
            elif acc32 is not None:
                acc = acc32[name]
                acc.lerp_(src[name].to(acc.dtype), 1.0 - self.ema_decay)
                t.copy_(acc)
            else:
                t.lerp_(src[name].to(t.dtype), 1.0 - self.ema_decay)

    # -- scoring ----------------------------------------------------------------------------
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]], *,
              temperature: float, micro_batch: int = 16, pad_id: int | None = None,
              return_logits: bool = False, return_entropy: bool = False,
              share_prefix: bool | str = False, vision=None) -> TokenScores:
        """Teacher log-probs of `response_ids[i]` after `prompt_ids[i]` (the teacher prompt), at
        the rollout temperature, without gradient. Shapes as in TokenScores; the arguments are
        token_logprobs' (`vision`: each row's pixel inputs, the student's images). The precision
        is the caller's: the loop calls it inside the training forward's autocast
        (rlsd_core.loop.stages.scoring_forward), so that a teacher equal to the student scores
        exactly what pi_old does."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return token_logprobs(self.model, prompt_ids, response_ids,
                                      temperature=temperature, micro_batch=micro_batch,
                                      pad_id=pad_id, return_logits=return_logits,
                                      return_entropy=return_entropy, share_prefix=share_prefix,
                                      vision=vision)
        finally:
            self.model.train(was_training)

    def memory_bytes(self) -> int:
        """Bytes held by the teacher's own copy of the weights (0 in "live" mode); in a sharded
        run, this rank's shards."""
        if self.mode == "live":
            return 0
        seen, total = set(), 0
        for t in self.model.state_dict().values():
            if local_ptr(t) not in seen:
                seen.add(local_ptr(t))
                total += local_bytes(t)
        return total + sum(local_bytes(t) for t in (self._ema32 or {}).values())

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: mode, schedule and (snapshot/ema) the teacher weights."""
        return {"mode": self.mode, "sync_every": self.sync_every, "ema_decay": self.ema_decay,
                "last_sync_step": self.last_sync_step,
                "weights": None if self.mode == "live" else
                {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "ema32": None if self._ema32 is None else
                {k: v.clone() for k, v in self._ema32.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(f"Teacher.load_state_dict: checkpoint teacher mode is "
                             f"{state.get('mode')!r} but this teacher is {self.mode!r}; build the "
                             "Teacher with the checkpoint's mode")
        self.sync_every = state["sync_every"]
        self.ema_decay = state["ema_decay"]
        self.last_sync_step = state["last_sync_step"]
        if self.mode != "live":
            self.model.load_state_dict(state["weights"], strict=True)
        acc32 = self._accumulators() if self.mode == "ema" else None
        if acc32 is not None:
            saved = state.get("ema32") or {k: v.float() for k, v in state["weights"].items()
                                            if k in acc32}
            for k, acc in acc32.items():
                acc.copy_(saved[k])
