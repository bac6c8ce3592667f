"""Prompts: a row -> the student's chat messages and token ids; a row + its task's injector ->
the teacher's. The one copy: the warm-up, the rollout, the teacher forward and the evaluation
all see byte-identical prompts.

    row -> student_messages -> render_prompt -> student prompt ids        (rollout, eval)
    row (+ the group's responses and verdicts for group injectors) -> injector
        -> teacher messages -> render_prompt -> teacher prompt ids        (teacher forward)
                            -> privileged_text (teacher minus student)     (leakage metric)

Messages with image parts (rows with `images`, rlsd_core.data.images) go through
`encode_prompt` instead, which decodes the images and asks the model's vision prompter
(rlsd_core.models.vision.VisionPrompter) for the ids, each image expanded into its tokens, and
the pixel inputs. The teacher is scored with the student's pixel inputs, so an injector must keep
the images as they are (the built-in ones do; `TeacherPrompts.ids` checks it). Image parts carry
no text, so the privileged text (and the leakage metric) never sees them.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, Mapping, Sequence

from ..plugins import PluginError
from ..records import InjectorContext, InjectorRecord, TaskError
from .images import image_refs, load_image


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


def encode_prompt(tokenizer, messages: list[dict], vision=None) -> tuple[list[int], Any]:
    """(prompt ids, vision inputs): for text messages `render_prompt`'s ids and None; for
    messages with images, `vision.encode(messages, images)` (a VisionPrompter)."""
    refs = image_refs(messages)
    if not refs:
        return render_prompt(tokenizer, messages), None
    if vision is None:
        raise TaskError("the prompt holds images but the model has no image processor: train a "
                        "vision-language model (e.g. --model.name_or_path tiny-vlm, or a "
                        "Qwen2-VL / Qwen2.5-VL / Qwen3-VL directory); see docs/multimodal.md")
    return vision.encode(messages, [load_image(r) for r in refs])


def encode_student_prompts(tokenizer, rows, vision=None) -> tuple[list[list[int]], list | None]:
    """The student prompts of `rows` (`encode_prompt` of `student_messages`) and their pixel
    inputs, one per row, or None when no row has images: what the rollout, the held-out
    evaluation and the teacher check pass to an engine's `generate(..., vision=)`."""
    encoded = [encode_prompt(tokenizer, student_messages(row), vision) for row in rows]
    pixels = [v for _, v in encoded]
    return [ids for ids, _ in encoded], pixels if any(v is not None for v in pixels) else None


class TeacherPrompts:
    """Builds teacher prompts with each task's injector (looked up once, by task name).

    `messages(task, row, **ctx)` returns the injector's chat messages; `ids(...)` the rendered
    prompt. For group injectors (`needs_group`), ctx carries the response's index in its group
    and the group's responses and verdicts (see rlsd_core.InjectorContext). `vision`: the
    model's vision prompter, for rows with images (None for a text model).
    """

    def __init__(self, tasks: Sequence, injectors: Mapping[str, InjectorRecord], tokenizer,
                 vision=None) -> None:
        self.tokenizer = tokenizer
        self.vision = vision
        self._tasks = {t.name: t for t in tasks}
        self._injectors = {t.name: injectors[t.injector] for t in tasks}

    def needs_group(self, task_name: str) -> bool:
        return self._injectors[task_name].needs_group

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def truncate_tokens(self, text: str, n: int) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= n else self.tokenizer.decode(ids[:n])

    def dry_run(self) -> None:
        """Build the teacher messages of each task's first training row, before any model
        loads (no tokenizer needed: injectors then budget hints by characters): an injector
        that raises or returns the wrong type fails the run in seconds, not after a warm-up."""
        for name, task in self._tasks.items():
            if task.train:
                self.messages(name, task.train[0])

    def messages(self, task_name: str, row: Mapping[str, Any], **ctx_fields) -> list[dict]:
        """The injector's messages for `row`. The injector gets its own deep copy of the row (and
        of its options), so nothing it writes reaches the student's prompt or the next call. An
        injector that raises or returns anything but chat messages stops the run with a
        PluginError naming it and the task."""
        task = self._tasks[task_name]
        record = self._injectors[task_name]
        mine = copy.deepcopy(dict(row))
        known = self.tokenizer is not None
        ctx = InjectorContext(options=copy.deepcopy(task.injector_options),
                              count_tokens=self.count_tokens if known else None,
                              truncate_tokens=self.truncate_tokens if known else None,
                              **ctx_fields)
        try:
            out = record.fn(mine, student_messages(mine), ctx)
        except Exception as exc:  # noqa: BLE001 - named and re-raised for the user
            raise PluginError(f"injector {record.name!r} (task {task_name!r}) failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not _is_messages(out):
            raise PluginError(f"injector {record.name!r} (task {task_name!r}) returned "
                              f"{_describe(out)}; an injector returns a non-empty list of chat "
                              f"messages, each a dict with 'role' and 'content'")
        return out

    def ids(self, task_name: str, row: Mapping[str, Any], **ctx_fields) -> list[int]:
        return self.prompt(task_name, row, **ctx_fields)[0]

    def prompt(self, task_name: str, row: Mapping[str, Any], **ctx_fields) -> tuple[list[int], str]:
        """(the teacher prompt's ids, its privileged text), from one call of the injector."""
        messages = self.messages(task_name, row, **ctx_fields)
        return self._encode(task_name, row, messages), privileged_text(student_messages(row), messages)

    def _encode(self, task_name: str, row: Mapping[str, Any], messages: list[dict]) -> list[int]:
        if not row.get("images"):
            return render_prompt(self.tokenizer, messages)
        # The teacher forward reuses the student's pixel inputs: the images must be the same.
        if image_refs(messages) != row["images"]:
            raise TaskError(f"task {task_name!r}: injector {self._injectors[task_name].name!r} "
                            f"changed the images of the prompt; the teacher sees the student's "
                            f"images (keep the image parts of student_messages as they are)")
        return encode_prompt(self.tokenizer, messages, self.vision)[0]


def message_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of chat messages: string contents and the text of content parts, in order."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return "\n".join(out)


def privileged_text(student: Sequence[Mapping[str, Any]], teacher: Sequence[Mapping[str, Any]]) -> str:
    """What only the teacher saw (for the leakage metric): the words of the teacher's messages
    that the student's messages do not have at that place (a word-level diff), so that a
    shared system prompt, the question and the chat template never count as privileged."""
    s_words, t_words = message_text(student).split(), message_text(teacher).split()
    ops = difflib.SequenceMatcher(a=s_words, b=t_words, autojunk=False).get_opcodes()
    return "\n".join(" ".join(t_words[j1:j2]) for tag, _i1, _i2, j1, j2 in ops
                     if tag in ("insert", "replace"))


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), (str, list)) for m in value))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"
