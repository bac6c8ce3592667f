"""Prompts: a row -> the student's chat messages and token ids; a row + its task's injector ->
the teacher's. The one copy: the warm-up, the rollout, the teacher forward and the evaluation
all see byte-identical prompts.

    row -> student_messages -> render_prompt -> student prompt ids        (rollout, eval)
    row (+ the group's responses and verdicts for group injectors) -> injector
        -> teacher messages -> render_prompt -> teacher prompt ids        (teacher forward)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..records import InjectorContext, InjectorRecord


def student_messages(row: Mapping[str, Any]) -> list[dict]:
    """What the student sees: the messages a task template rendered for the row (`messages`,
    rlsd_core.data.suites), else the row's prompt as the one user message."""
    if row.get("messages"):
        return [dict(m) for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}]


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template messages into prompt ids with the assistant turn opened."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


class TeacherPrompts:
    """Builds teacher prompts with each task's injector (looked up once, by task name).

    `messages(task, row, **ctx)` returns the injector's chat messages; `ids(...)` the rendered
    prompt. For group injectors (`needs_group`), ctx carries the response's index in its group
    and the group's responses and verdicts (see rlsd_core.InjectorContext).
    """

    def __init__(self, tasks: Sequence, injectors: Mapping[str, InjectorRecord], tokenizer) -> None:
        self.tokenizer = tokenizer
        self._tasks = {t.name: t for t in tasks}
        self._injectors = {t.name: injectors[t.injector] for t in tasks}

    def needs_group(self, task_name: str) -> bool:
        return self._injectors[task_name].needs_group

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def truncate_tokens(self, text: str, n: int) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= n else self.tokenizer.decode(ids[:n])

    def messages(self, task_name: str, row: Mapping[str, Any], **ctx_fields) -> list[dict]:
        task = self._tasks[task_name]
        ctx = InjectorContext(options=task.injector_options, count_tokens=self.count_tokens,
                              truncate_tokens=self.truncate_tokens, **ctx_fields)
        return self._injectors[task_name].fn(row, student_messages(row), ctx)

    def ids(self, task_name: str, row: Mapping[str, Any], **ctx_fields) -> list[int]:
        return render_prompt(self.tokenizer, self.messages(task_name, row, **ctx_fields))


def privileged_text(tokenizer, teacher_ids: Sequence[int] | None, row: Mapping[str, Any]) -> str:
    """What only the teacher saw: its prompt text minus the student's question (for leakage)."""
    if teacher_ids is None:
        return ""
    text = tokenizer.decode(teacher_ids, skip_special_tokens=True)
    return text.replace(row["prompt"], " ")
