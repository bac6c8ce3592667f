"""Built-in privileged-context injectors: what the self-teacher sees that the student does not.

Data flow: for each response (or each row, when `needs_group` is False) the loop calls
`fn(row, student_messages, ctx)` and gets the teacher's chat messages; the loop wraps them in
the chat template with a generation prompt and appends the student's response tokens, then
scores those tokens (the teacher log-probs of `rlsd_core.algo`). The student's messages are
never modified: every injector returns new message dicts.

How the teacher prompt is built: the last user message of the student (the question) is
rewritten with a template holding `{question}` and `{hint}`; the other messages (a system
prompt, earlier turns) are copied unchanged. Message content may be a string or a list of
parts (multimodal, e.g. [{"type": "image"}, {"type": "text", "text": ...}]): for a list, the
template's text before `{question}` becomes a leading text part and the text after it a
trailing text part, so images stay where they were.

Options (ctx.options, all optional):
  template          the template, with {question} and {hint} (defaults per injector below)
  max_hint_tokens   the hint's budget in tokens (default 1024; reference_answer 256). Counted with
                    ctx.truncate_tokens / ctx.count_tokens when the loop provides them, else with
                    a character fallback of `chars_per_token` (default 4) characters per token.
                    The head of the hint is kept.
  column            reference_solution: the row column holding the worked solution (default
                    "solution").
  fallback          "student" (default) or "reference_answer": what the teacher sees when a group
                    injector finds no qualifying sibling.

The no-sibling decision: `verifier_feedback` needs a failed sibling with a message,
`successful_sibling` a correct sibling other than the response itself. When none qualifies the
teacher gets the student's own prompt (fallback "student"), so delta is 0 for that response and
RLSD gives it plain GRPO credit: neutral, and it cannot inject anything wrong. Those cases are
common and harmless: an all-correct or all-wrong group has zero advantage anyway, and a lone
correct response has no sibling to learn from. With fallback "reference_answer" the teacher
gets the `reference_answer` prompt instead (needs the row's `answer`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlsd_core import Category, InjectorContext, InjectorRecord, Verdict, hookimpl

VERSION = "1.0"

DEFAULT_MAX_HINT_TOKENS = 1024
DEFAULT_CHARS_PER_TOKEN = 4

TEMPLATES = {
    # The release's teacher prompt: question, "Here is a reference solution:", the gold answer,
    # an instruction to solve it in its own way.
    "reference_answer": (
        "{question}\n\nHere is a reference solution:\n{hint}\n\n"
        "After understanding the reference solution, please solve the problem above in your own way."),
    "reference_solution": (
        "{question}\n\nHere is a reference solution:\n{hint}\n\n"
        "After understanding the reference solution, please solve the problem above in your own way."),
    "verifier_feedback": (
        "{question}\n\nAn earlier attempt at this problem was checked and found wrong. The checker "
        "said:\n{hint}\n\nAvoid that mistake and solve the problem above in your own way."),
    "successful_sibling": (
        "{question}\n\nHere is a correct solution to this problem:\n{hint}\n\n"
        "After understanding the solution, please solve the problem above in your own way."),
}


class InjectorError(ValueError):
    """The row or the student's messages do not fit what the injector needs."""


# ---------------------------------------------------------------------------------------------
# shared machinery
# ---------------------------------------------------------------------------------------------

def _last_user_index(messages: Sequence[Mapping[str, Any]], who: str) -> int:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InjectorError(f"{who}: student_messages must be a list of message dicts, "
                            f"got {type(messages).__name__}")
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role") == "user":
            return i
    raise InjectorError(f"{who}: student_messages has no message with role 'user' to add the hint to")


def truncate_hint(text: str, ctx: InjectorContext, default_budget: int = DEFAULT_MAX_HINT_TOKENS) -> str:
    """Cut `text` to the budget `ctx.options['max_hint_tokens']` tokens, keeping its head."""
    budget = ctx.options.get("max_hint_tokens", default_budget)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InjectorError(f"option max_hint_tokens must be a positive int, got {budget!r}")
    if ctx.truncate_tokens is not None:
        return ctx.truncate_tokens(text, budget)
    if ctx.count_tokens is not None and ctx.count_tokens(text) <= budget:
        return text
    per = ctx.options.get("chars_per_token", DEFAULT_CHARS_PER_TOKEN)
    if isinstance(per, bool) or not isinstance(per, (int, float)) or per <= 0:
        raise InjectorError(f"option chars_per_token must be a positive number, got {per!r}")
    limit = int(budget * per)
    if ctx.count_tokens is not None:
        # A tokenizer that counts but cannot cut: shrink by characters until the count fits.
        while limit > 0 and ctx.count_tokens(text[:limit]) > budget:
            limit = int(limit * 0.9)
        return text[:limit]
    return text if len(text) <= limit else text[:limit]


def build_teacher_messages(student_messages: Sequence[Mapping[str, Any]], hint: str, template: str,
                           who: str = "injector") -> list[dict]:
    """New messages: copies of the student's, the last user message rewritten with the template."""
    if not isinstance(template, str) or template.count("{question}") != 1 or "{hint}" not in template:
        raise InjectorError(f"{who}: the template must contain {{question}} once and {{hint}}, got {template!r}")
    idx = _last_user_index(student_messages, who)
    out = [copy.deepcopy(dict(m)) for m in student_messages]
    before, after = template.split("{question}")
    # Plain replace, not str.format: a hint or a question with braces ("\\frac{1}{2}") must not
    # be read as a format field.
    before = before.replace("{hint}", hint)
    after = after.replace("{hint}", hint)
    content = out[idx].get("content", "")
    if isinstance(content, str):
        out[idx]["content"] = before + content + after
    elif isinstance(content, list):
        parts = ([{"type": "text", "text": before}] if before else []) + list(content)
        if after:
            parts.append({"type": "text", "text": after})
        out[idx]["content"] = parts
    else:
        raise InjectorError(f"{who}: the user message's content must be a str or a list of parts, "
                            f"got {type(content).__name__}")
    return out


def _student_copy(student_messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    return [copy.deepcopy(dict(m)) for m in student_messages]


def _gold(row: Mapping[str, Any], who: str) -> str:
    if "answer" not in row:
        raise InjectorError(f"{who}: the row has no 'answer' column (columns: {sorted(row)})")
    gold = row["answer"]
    if isinstance(gold, (list, tuple)):
        if not gold:
            raise InjectorError(f"{who}: the row's 'answer' is an empty list")
        gold = gold[0]  # the first accepted answer is the canonical one
    if gold is None or isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise InjectorError(f"{who}: the row's 'answer' must be a string or a number, got {type(gold).__name__}")
    return str(gold)


def _template(ctx: InjectorContext, name: str) -> str:
    return ctx.options.get("template", TEMPLATES[name])


# --- the options each injector accepts (checked before any model loads; rlsd_core.check_options)

class HintOptions(BaseModel):
    """Options of reference_answer (and the base of the others)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    template: str | None = None
    max_hint_tokens: int | None = Field(None, ge=1)
    chars_per_token: float | None = Field(None, gt=0)

    @field_validator("template")
    @classmethod
    def _template_fields(cls, value):
        if value is not None and (value.count("{question}") != 1 or "{hint}" not in value):
            raise ValueError("the template must contain {question} once and {hint}")
        return value


class SolutionOptions(HintOptions):
    column: str | None = None


class GroupOptions(HintOptions):
    fallback: Literal["student", "reference_answer"] | None = None


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _fallback(row: Mapping[str, Any], student_messages: Sequence[Mapping[str, Any]],
              ctx: InjectorContext, who: str) -> list[dict]:
    mode = ctx.options.get("fallback", "student")
    if mode == "student":
        return _student_copy(student_messages)
    if mode == "reference_answer":
        # The fallback uses the reference_answer template, not this injector's own.
        return build_teacher_messages(student_messages, truncate_hint(_gold(row, who), ctx, 256),
                                      TEMPLATES["reference_answer"], who)
    raise InjectorError(f"{who}: option fallback must be 'student' or 'reference_answer', got {mode!r}")


def _siblings(ctx: InjectorContext, who: str) -> list[int]:
    """Indices of the other responses of the group, starting after ctx.index and wrapping round,
    so neighbouring responses get different siblings (deterministic, no RNG to seed)."""
    n = len(ctx.responses)
    if len(ctx.verdicts) != n:
        raise InjectorError(f"{who}: ctx has {n} responses but {len(ctx.verdicts)} verdicts")
    if n and not 0 <= ctx.index < n:
        raise InjectorError(f"{who}: ctx.index {ctx.index} is outside the group of {n} responses")
    return [(ctx.index + k) % n for k in range(1, n)]


def _is_correct(v: Verdict) -> bool:
    return v.category == Category.OK and v.reward >= 1.0


def _is_model_failure(v: Verdict) -> bool:
    # Infrastructure faults say nothing about the attempt; they are not feedback.
    return not v.is_infra and not _is_correct(v) and bool(v.message.strip())


# ---------------------------------------------------------------------------------------------
# the injectors
# ---------------------------------------------------------------------------------------------

def reference_answer(row: Mapping[str, Any], student_messages: list[dict], ctx: InjectorContext) -> list[dict]:
    """The release's teacher prompt with the gold answer (`row['answer']`) as the reference."""
    hint = truncate_hint(_gold(row, "reference_answer"), ctx, 256)
    return build_teacher_messages(student_messages, hint, _template(ctx, "reference_answer"), "reference_answer")


def reference_solution(row: Mapping[str, Any], student_messages: list[dict], ctx: InjectorContext) -> list[dict]:
    """A full worked solution (column `ctx.options['column']`, default 'solution') as the reference."""
    column = ctx.options.get("column", "solution")
    text = row.get(column)
    if not isinstance(text, str) or not text.strip():
        raise InjectorError(f"reference_solution: the row's {column!r} column must be a non-empty string, "
                            f"got {type(text).__name__ if text is not None else 'nothing'}")
    return build_teacher_messages(student_messages, truncate_hint(text, ctx),
                                  _template(ctx, "reference_solution"), "reference_solution")


def verifier_feedback(row: Mapping[str, Any], student_messages: list[dict], ctx: InjectorContext) -> list[dict]:
    """The verifier's message on a failed sibling response (the next failed one after ctx.index)."""
    who = "verifier_feedback"
    for j in _siblings(ctx, who):
        v = ctx.verdicts[j]
        if _is_model_failure(v):
            return build_teacher_messages(student_messages, truncate_hint(v.message, ctx),
                                          _template(ctx, who), who)
    return _fallback(row, student_messages, ctx, who)


def successful_sibling(row: Mapping[str, Any], student_messages: list[dict], ctx: InjectorContext) -> list[dict]:
    """A correct response from the same group, never the response itself (as in SDPO)."""
    who = "successful_sibling"
    for j in _siblings(ctx, who):
        if _is_correct(ctx.verdicts[j]) and ctx.responses[j].strip():
            return build_teacher_messages(student_messages, truncate_hint(ctx.responses[j], ctx),
                                          _template(ctx, who), who)
    return _fallback(row, student_messages, ctx, who)


def none(row: Mapping[str, Any], student_messages: list[dict], ctx: InjectorContext) -> list[dict]:
    """No privileged context: the teacher sees exactly the student's prompt (a copy)."""
    return _student_copy(student_messages)


RECORDS = [
    InjectorRecord(name="reference_answer", fn=reference_answer, columns=("answer",), version=VERSION,
                   description="The release's prompt: question, 'Here is a reference solution:', the gold "
                               "answer, solve it in your own way.", options_schema=HintOptions),
    InjectorRecord(name="reference_solution", fn=reference_solution, columns=("solution",), version=VERSION,
                   description="A full worked solution column as the reference.",
                   options_schema=SolutionOptions),
    InjectorRecord(name="verifier_feedback", fn=verifier_feedback, version=VERSION, needs_group=True,
                   description="The verifier's message on a failed sibling response.",
                   options_schema=GroupOptions),
    InjectorRecord(name="successful_sibling", fn=successful_sibling, version=VERSION, needs_group=True,
                   description="A correct response from the same group (not the response itself), as in SDPO.",
                   options_schema=GroupOptions),
    InjectorRecord(name="none", fn=none, version=VERSION,
                   description="No privileged context: the teacher sees the student's prompt.",
                   options_schema=NoOptions),
]


@hookimpl
def rlsd_injectors() -> list[InjectorRecord]:
    return list(RECORDS)
