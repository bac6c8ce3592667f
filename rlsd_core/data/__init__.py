"""Data: which rows a run trains on and what the student and the teacher see of them.

    config `tasks:` / `--suite` (suites.py: YAML manifests) -> task sources (plugins) or JSONL
    files -> rows (tasks.py: column mapping, checks, held-out split) -> TaskData
    row -> student prompt / teacher prompt through the task's injector (prompts.py)
    rows with images: checked and placed in the messages (images.py, tasks.attach_images)
"""

from .jsonl import JsonlError, json_safe, read_jsonl
from .images import image_refs, load_image
from .prompts import TeacherPrompts, encode_prompt, encode_student_prompts, privileged_text, render_prompt, student_messages
from .suites import SuiteError, shape_rows, shipped_suites, suite_tasks
from .tasks import TaskData, check_rows, has_images, load_task, source_defaults, split

__all__ = ["JsonlError", "SuiteError", "TaskData", "TeacherPrompts", "check_rows", "encode_prompt", "encode_student_prompts",
           "has_images", "image_refs", "json_safe", "load_image", "load_task", "privileged_text", "read_jsonl",
           "render_prompt", "shape_rows", "shipped_suites", "source_defaults", "split",
           "student_messages", "suite_tasks"]
