"""The objective battery: what the loop relies on from `ObjectiveRecord.credit` and `.loss`,
checked on a small random batch (B=6 responses in groups of 3, T=5 tokens, V=11).

    record     the record validates
    credit     token advantages [B, T], finite, detached, exactly 0 where the mask is off
               (padding and infrastructure faults); with and without a token_mask
    teacher    it works without the teacher's log-probs when its `teacher` setting lets the
               loop skip that forward ("never"; "lambda" with every lambda 0)
    loss       a finite scalar with a gradient to the policy's log-probs (and logits, when
               needs_logits), and a stats dict of numbers

Imports torch (only when called): objectives are torch code by nature.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..records import CreditInputs, LossInputs, ObjectiveRecord
from .results import Battery, CheckResult, fail, short

OBJECTIVE_PROPERTIES = ("record", "credit", "teacher", "loss")
B, T, V, G = 6, 5, 11, 3


def default_options() -> dict:
    from ..config import AlgoConfig

    return AlgoConfig().model_dump()


class _Batch:
    """One deterministic random batch; response 4 is an infrastructure fault (mask all off)."""

    def __init__(self) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.torch = torch
        self.lengths = [5, 3, 4, 5, 2, 4]
        self.mask = torch.tensor([[t < n for t in range(T)] for n in self.lengths])
        self.mask[4] = False
        self.old = -torch.rand(B, T, generator=gen, dtype=torch.float32) * 3
        self.teacher = -torch.rand(B, T, generator=gen, dtype=torch.float32) * 3
        self.logits = torch.randn(B, T, V, generator=gen)
        self.teacher_logits = torch.randn(B, T, V, generator=gen)
        self.advantages = torch.tensor([1.0, -0.5, -0.5, 0.7, 0.0, -0.7])

    def credit_inputs(self, options, *, teacher: bool = True, lam: float = 0.5,
                      token_mask=None) -> CreditInputs:
        torch = self.torch
        return CreditInputs(advantages=self.advantages, old_logprobs=self.old, mask=self.mask,
                            lam=torch.full((B,), lam, dtype=torch.float64),
                            eps_w=torch.full((B,), 0.2, dtype=torch.float64),
                            teacher_logprobs=self.teacher if teacher else None, options=options,
                            token_mask=token_mask)


def check_objective(record: ObjectiveRecord, *, options: Mapping[str, Any] | None = None
                    ) -> list[CheckResult]:
    """Run the objective battery on `record` with `options` (default: the `algo` section's
    defaults)."""
    battery = Battery("objective", record.name)
    opts = {**default_options(), **(options or {})}
    battery.check("record", lambda: record.validate())
    box: dict[str, Any] = {}
    battery.check("credit", lambda: _credit(record, opts, box))
    battery.check("teacher", lambda: _teacher(record, opts))
    battery.check("loss", lambda: _loss(record, opts, box))
    return battery.results


def _token_advantages(record: ObjectiveRecord, inputs: CreditInputs, what: str):
    import torch

    try:
        out = record.credit(inputs)
    except Exception as exc:  # noqa: BLE001
        fail(f"credit ({what}) raised {type(exc).__name__}: {short(str(exc), 160)}")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (B, T):
        fail(f"credit ({what}) returned {short(getattr(out, 'shape', out))}; a [B, T] = [{B}, {T}] "
             f"tensor")
    if out.requires_grad:
        fail(f"credit ({what}) returned a tensor that requires grad; detach it")
    if not torch.isfinite(out).all():
        fail(f"credit ({what}) has non-finite values")
    return out


def _credit(record: ObjectiveRecord, options: dict, box: dict) -> str:
    batch = _Batch()
    out = _token_advantages(record, batch.credit_inputs(options), "teacher present")
    off = ~batch.mask
    if out[off].abs().max() > 0:
        fail("credit is non-zero where the mask is off (padding, or a masked infrastructure "
             "fault); multiply by the mask")
    thought = batch.mask.clone()
    thought[:, 0] = False
    masked = _token_advantages(record, batch.credit_inputs(options, token_mask=thought),
                               "with a token_mask")
    if masked[off].abs().max() > 0:
        fail("credit with a token_mask is non-zero where the mask is off")
    box["batch"], box["credit"] = batch, out
    return ""


def _teacher(record: ObjectiveRecord, options: dict) -> str:
    if record.teacher == "always":
        return "teacher always runs"
    batch = _Batch()
    # "lambda": the loop skips the teacher only when every lambda is 0; "never": whatever the
    # scheduler says (a GRPO run may keep the default scheduler).
    lam = 0.0 if record.teacher == "lambda" else 0.5
    _token_advantages(record, batch.credit_inputs(options, teacher=False, lam=lam),
                      f"teacher={record.teacher!r}, no teacher log-probs, lambda {lam:g}")
    return "works without the teacher forward"


def _loss(record: ObjectiveRecord, options: dict, box: dict) -> str:
    torch = __import__("torch")
    batch = box.get("batch") or _Batch()
    credit = box.get("credit")
    if credit is None:
        credit = torch.zeros(B, T)
    logits = batch.logits.clone().requires_grad_(True)
    logprobs = torch.log_softmax(logits, -1)[..., 0]
    needs = bool(record.needs_logits(options))
    inputs = LossInputs(logprobs=logprobs, old_logprobs=batch.old, token_advantages=credit,
                        mask=batch.mask, logits=logits if needs else None,
                        teacher_logprobs=batch.teacher,
                        teacher_logits=batch.teacher_logits if needs else None, options=options,
                        denominator=float(batch.mask.sum()))
    try:
        loss, stats = record.loss(inputs)
    except Exception as exc:  # noqa: BLE001
        fail(f"loss raised {type(exc).__name__}: {short(str(exc), 160)}")
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        fail(f"loss returned {short(loss)} as the loss; a scalar tensor")
    if not torch.isfinite(loss):
        fail(f"loss is {float(loss.detach())}")
    if not loss.requires_grad:
        fail("the loss has no gradient to the policy's log-probs or logits")
    loss.backward()
    if logits.grad is None or not torch.isfinite(logits.grad).all():
        fail("the loss's gradient is missing or not finite")
    if not isinstance(stats, Mapping):
        fail(f"loss returned stats {short(stats)}; a dict of numbers")
    for key, value in stats.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"stats[{key!r}] = {short(value)}; stats are numbers by name")
        if not math.isfinite(value):
            fail(f"stats[{key!r}] = {value}")
    return f"loss {float(loss.detach()):.4f}, {len(stats)} stats"
