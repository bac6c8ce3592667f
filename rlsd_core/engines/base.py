"""The rollout-engine interface: token ids in, sampled token ids + log-probs + finish reasons out.

In the data flow the engine sits between the prompts (the student prompt goes to the engine) and
the verifiers (which read the decoded responses). After each optimizer step the loop pushes the
new policy weights with `load_weights`. Two engines implement it: `hf` (transformers, the default
on CPU and in CI) and `vllm` (every vLLM call lives in rlsd_core/engines/vllm.py); `make_engine`
(rlsd_core.engines) builds one by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

FINISH_REASONS = ("stop", "length")


@dataclass
class SamplingParams:
    """How to sample. Same meaning in every engine.

    n: samples per prompt (the GRPO group size G).
    temperature: logits are divided by it before sampling; 0 means greedy (argmax), whose
        reported log-probs are then taken at temperature 1.0.
    top_p: nucleus sampling; the smallest set of tokens whose probability (at `temperature`)
        reaches top_p is sampled from. Reported log-probs are NOT renormalised over that set:
        they are log_softmax(logits / temperature) over the full vocabulary, the same quantity
        the trainer computes (rlsd_core.models.token_logprobs); see docs/engines.md.
    max_new_tokens: response length cap; a response that reaches it has finish_reason "length".
    stop_token_ids: extra ids that end a response, on top of the engine's eos ids. The stop
        token is part of the response (its token id and log-prob are reported).
    seed: makes sampling reproducible for the same engine, weights and batch; None = not seeded.
    seeds: one seed per prompt (overrides `seed`): a prompt's samples then depend on its own
        seed, the weights and the prompt only, not on the other prompts of the call, so a batch
        split across data-parallel ranks samples what one process would (up to float rounding
        of the logits). The training loop seeds every prompt of a step this way.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an int >= 1, got {self.n!r}")
        if not self.temperature >= 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got "
                             f"{self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 1, got "
                             f"{self.max_new_tokens!r}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if self.seeds is not None:
            self.seeds = tuple(int(s) for s in self.seeds)

    def prompt_seeds(self, prompts: int) -> tuple[int, ...] | None:
        """The per-prompt seeds for a call with `prompts` prompts (None when not given)."""
        if self.seeds is not None and len(self.seeds) != prompts:
            raise ValueError(f"SamplingParams.seeds has {len(self.seeds)} seeds for {prompts} "
                             "prompts; give one seed per prompt")
        return self.seeds

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature at which reported log-probs are computed (1.0 for greedy)."""
        return 1.0 if self.greedy else float(self.temperature)


@dataclass
class Generation:
    """One sampled response: token ids (stop token included when finish_reason is "stop"), the
    log-prob of each under the sampling distribution (see SamplingParams), and why it ended.
    `entropy`, when the engine reports it (HF does; vLLM does not), is the entropy (nats) of that
    distribution at each token: what the trainer logs when it takes pi_old from the rollout."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    entropy: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"Generation: {len(self.token_ids)} token ids but "
                             f"{len(self.logprobs)} log-probs")
        if self.entropy is not None and len(self.entropy) != len(self.token_ids):
            raise ValueError(f"Generation: {len(self.token_ids)} token ids but "
                             f"{len(self.entropy)} entropies")
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation.finish_reason must be one of {FINISH_REASONS}, got "
                             f"{self.finish_reason!r}")


@runtime_checkable
class Engine(Protocol):
    """What the trainer needs from a rollout engine."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Generation]]:
        """Sample params.n responses per prompt; outer list per prompt, inner list per sample.
        An engine that takes images (the HF engine) also accepts `vision=`: one
        rlsd_core.models.VisionInputs or None per prompt; the loop passes it only when a prompt
        has images (docs/multimodal.md)."""
        ...

    def load_weights(self, state_dict) -> None:
        """Make the engine sample from these policy weights (the FULL state dict, tied weights
        included); raise if they cannot all be applied. Wakes an engine that sleeps."""
        ...

    def sleep(self) -> None:
        """Give the memory the engine holds for sampling (its own weights, KV cache) back until
        the next `load_weights`: the loop calls it after the rollout, so that the scoring and
        update stages can use that memory. A no-op for an engine that samples from the trainer's
        own model (HF)."""
        ...

    def close(self) -> None:
        """Release the engine's memory; the engine cannot be used afterwards."""
        ...


class WeightSyncError(RuntimeError):
    """A weight sync did not take: missing or unexpected tensors, wrong shapes, a timeout, or a
    check after the sync that failed. The engine must not be trusted until a sync succeeds."""


def check_prompts(prompts) -> None:
    """Shared input validation: a list of non-empty lists of ints."""
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"generate: prompts must be a list of token-id lists, got "
                        f"{type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            raise TypeError(f"generate: prompt {i} is a string; engines take token ids "
                            "(tokenize with the policy's tokenizer first)")
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty; give it at least one token")


def resolve_eos_ids(engine: str, explicit, *sources) -> tuple[int, ...]:
    """The token ids that end a response: `explicit` (an int or ids) if given, else the union of
    the `eos_token_id` of each source (tokenizer, generation config, model config), in order."""
    if explicit is not None:
        ids = [explicit] if isinstance(explicit, int) else list(explicit)
    else:
        ids = []
        for source in sources:
            value = getattr(source, "eos_token_id", None)
            if value is not None:
                ids.extend([value] if isinstance(value, int) else value)
    if not ids:
        raise ValueError(f"{engine}: no eos token id in the tokenizer or the model's config; "
                         f"pass eos_token_ids=[...]")
    return tuple(dict.fromkeys(int(i) for i in ids))
