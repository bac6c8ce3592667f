"""The verdict: what every verifier returns for one completion.

Verifiers sit between rollouts and advantages. Whatever happens inside them (a right answer,
a parse failure, a sandbox that could not start), the trainer receives one `Verdict` per
completion: a reward in [0, 1], one category from the shared enum below, and a short message a
human (or a feedback injector) can read. Infrastructure categories are faults of the harness,
not of the model: the trainer masks those samples instead of training on a false 0.

A verdict the runtime had to make up because the verifier itself produced none (its worker
process died, it overran its hard deadline, it ran out of memory) keeps the category that says
what happened (`crash`, `timeout`, `memory_limit`) and carries `harness_fault=True`: it is an
infrastructure fault too (`is_infra`), masked in training and flagged by `rlsd verify`. Such an
outcome depends on the machine's load and state, so a correct answer can get it: scoring it 0
would train on a false 0. The same categories returned *by* a verifier (the code verifier's
sandboxed program timed out or crashed) are the model's outcome and are trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Category(str, Enum):
    """One enum shared by every verifier (see shared/spec/bad-inputs.md)."""

    OK = "ok"
    WRONG_ANSWER = "wrong_answer"
    NO_ANSWER = "no_answer"
    INVALID_INPUT = "invalid_input"
    INPUT_TOO_LARGE = "input_too_large"
    PARSE_ERROR = "parse_error"
    GOLD_ERROR = "gold_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    RESOURCE_LIMIT = "resource_limit"
    OUTPUT_LIMIT = "output_limit"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    CRASH = "crash"
    SANDBOX_ERROR = "sandbox_error"
    VERIFIER_ERROR = "verifier_error"

    @property
    def is_infra(self) -> bool:
        """True for faults of the harness (masked in training), False for model outcomes."""
        return self in INFRA_CATEGORIES


INFRA_CATEGORIES = frozenset({Category.GOLD_ERROR, Category.SANDBOX_ERROR, Category.VERIFIER_ERROR})

# Messages travel to logs, JSONL files and teacher prompts: keep them short.
MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Verdict:
    """The score of one completion.

    `reward` is a finite float in [0, 1]; `category` says why; `message` is short, plain text
    (e.g. "expected 12, got 13"); `answer` is the normalised extracted answer when the verifier
    has one (used for reward caching and leakage checks), else None.
    """

    reward: float
    category: Category
    message: str = ""
    answer: str | None = None
    # Set by the runtime, never by a verifier: the verifier produced no verdict (see the module
    # docstring). It does not cross the worker boundary.
    harness_fault: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.reward, bool) or not isinstance(self.reward, (int, float)):
            raise TypeError(f"Verdict.reward must be a float, got {type(self.reward).__name__}")
        if not math.isfinite(self.reward) or not 0.0 <= self.reward <= 1.0:
            raise ValueError(f"Verdict.reward must be a finite number in [0, 1], got {self.reward!r}")
        if not isinstance(self.category, Category):
            object.__setattr__(self, "category", Category(self.category))
        object.__setattr__(self, "reward", float(self.reward))
        if not isinstance(self.message, str):
            raise TypeError(f"Verdict.message must be a str, got {type(self.message).__name__}")
        if len(self.message) > MAX_MESSAGE_CHARS:
            object.__setattr__(self, "message", self.message[: MAX_MESSAGE_CHARS - 3] + "...")

    @property
    def is_infra(self) -> bool:
        """An infrastructure fault: masked in training, counted apart (`infra_masked`)."""
        return self.harness_fault or self.category.is_infra

    @classmethod
    def ok(cls, message: str = "", answer: str | None = None, reward: float = 1.0) -> "Verdict":
        return cls(reward, Category.OK, message, answer)

    @classmethod
    def fail(cls, category: Category | str, message: str = "", answer: str | None = None,
             reward: float = 0.0) -> "Verdict":
        return cls(reward, Category(category), message, answer)

    @classmethod
    def harness(cls, category: Category | str, message: str) -> "Verdict":
        """A verdict the runtime makes when the verifier produced none (reward 0, masked)."""
        return cls(0.0, Category(category), message, None, harness_fault=True)

    def to_dict(self) -> dict:
        """reward, category, message and `infra` (True when training masks this sample)."""
        return {"reward": self.reward, "category": self.category.value, "message": self.message,
                "infra": self.is_infra}
