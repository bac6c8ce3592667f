"""Tasks: a config entry -> the rows a run trains on and holds out, with the plugins that score
and teach them.

Data flow: config `tasks:` entry (`rlsd_core.config.TaskConfig`) -> the task source named by
`source` (a plugin record: built-ins in rlsd_plugins.task_sources) or a JSONL file (`path`) ->
raw rows -> `shape_rows` (column mapping and chat template, rlsd_core.data.suites) -> checked
columns -> images checked and placed (`attach_images`, rlsd_core.data.images) -> a disjoint
split -> `TaskData`. A row is a dict with at least `prompt` (what the student sees as the user
message) and `answer` (the gold the verifier checks and the default injector shows the teacher);
it may carry `images` (docs/multimodal.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records import TaskError
from . import jsonl
from .images import IMAGE_COLUMN, PLACEHOLDER, load_image, normalise_ref, place_images
from .prompts import student_messages
from .suites import shape_rows


@dataclass
class TaskData:
    """One task's rows, split, with the plugins that score and teach it.

    weighted_verifiers: (name, weight, options) of each verifier when the config lists several
    (`verifiers:`); empty when `verifier` alone scores the task.
    """

    name: str
    train: list[dict]
    eval: list[dict]
    verifier: str
    injector: str
    verifier_options: dict = field(default_factory=dict)
    injector_options: dict = field(default_factory=dict)
    weight: float = 1.0
    weighted_verifiers: list[tuple[str, float, dict]] = field(default_factory=list)


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows from a JSONL task file; each line an object with at least `prompt` and `answer`."""
    try:
        return jsonl.read_jsonl(path)
    except jsonl.JsonlError as exc:
        raise TaskError(f"task file: {exc}") from exc


def check_rows(name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Every row must be a mapping with a string prompt and the columns its plugins read."""
    if not rows:
        raise TaskError(f"task {name!r} has no rows")
    needed = {"prompt", *columns}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TaskError(f"task {name!r}: row {i} is a {type(row).__name__}, not a mapping")
        missing = sorted(needed - set(row))
        if missing:
            raise TaskError(f"task {name!r}: row {i} lacks column(s) {missing} "
                            f"(its verifier/injector need {sorted(needed)})")
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise TaskError(f"task {name!r}: row {i} has an empty or non-string prompt")


def split(rows: list[dict], *, train_size: int | None, eval_size: int, seed: int,
          shuffle: bool) -> tuple[list[dict], list[dict]]:
    """Held-out first, train after; disjoint by construction."""
    rows = list(rows)
    if shuffle:
        random.Random(seed).shuffle(rows)
    if eval_size >= len(rows):
        raise TaskError(f"eval_size {eval_size} leaves no training rows (the task has {len(rows)})")
    held, train = rows[:eval_size], rows[eval_size:]
    if train_size is not None:
        train = train[:train_size]
    return train, held


def source_defaults(cfg, registry) -> tuple[str, str]:
    """(verifier, injector) a task uses: its own, else its source's, else exact_match and
    reference_answer (a JSONL file has no source)."""
    verifier, injector = "exact_match", "reference_answer"
    if cfg.path is None:
        record = registry.task_source(cfg.source)
        verifier, injector = record.verifier, record.injector
    return cfg.verifier or verifier, cfg.injector or injector


def source_rows(cfg, registry, *, seed: int) -> tuple[list[dict], bool]:
    """The raw rows of a task config entry, and whether they are already shuffled by `seed`."""
    if cfg.path is not None:
        return read_jsonl(cfg.path), False
    record = registry.task_source(cfg.source)
    options = dict(cfg.options)
    if record.generated:
        options.setdefault("seed", seed)
    try:
        rows = [dict(r) for r in record.fn(**options)]
    except TypeError as exc:
        raise TaskError(f"task {cfg.name!r}: bad option for task source {cfg.source!r}: {exc}") from exc
    except TaskError as exc:  # e.g. a suite source's empty or unreadable data file
        raise TaskError(f"task {cfg.name!r}: {exc}") from exc
    return rows, record.generated


def image_base(cfg) -> Path:
    """Where a task's relative image paths start: its `image_dir`, else the folder of its one
    data file, else the current directory."""
    if cfg.image_dir:
        return Path(cfg.image_dir).expanduser()
    data = cfg.path or cfg.options.get("path")
    if isinstance(data, str) and Path(data).expanduser().is_file():
        return Path(data).expanduser().resolve().parent
    return Path.cwd()


def attach_images(task: str, rows: list[dict], *, base: Path, max_pixels: int) -> list[dict]:
    """Check every image of every row that has an `images` column (decoded once, so a missing
    file, a file that is not an image, a truncated or too large one is found now, before any
    model loads) and place them in the row's student messages (rlsd_core.data.images). Rows
    without images are returned unchanged. Raises TaskError naming the task, the row (index and
    id) and the image."""
    out = []
    for i, row in enumerate(rows):
        raw = row.get(IMAGE_COLUMN)
        if raw is None:
            out.append(row)
            continue
        who = f"task {task!r}: row {i}" + (f" (id {row['id']!r})" if "id" in row else "")
        items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if not items:
            raise TaskError(f"{who}: `images` is an empty list; drop the column or give images")
        refs = []
        for k, item in enumerate(items):
            try:
                ref = normalise_ref(item, base)
                load_image(ref, max_pixels)
            except ValueError as exc:
                raise TaskError(f"{who}: image {k} {exc}") from None
            refs.append(ref)
        try:
            messages = place_images(student_messages(row), refs)
        except ValueError as exc:
            raise TaskError(f"{who}: {exc}") from None
        # `prompt` is the student's text (leakage, logs): without the image placeholders.
        prompt = " ".join(p.strip() for p in row["prompt"].split(PLACEHOLDER) if p.strip())
        out.append({**row, IMAGE_COLUMN: refs, "messages": messages, "prompt": prompt})
    return out


def has_images(task: TaskData) -> bool:
    """Whether any row of the task carries images (then the policy must be a VLM)."""
    return any(row.get(IMAGE_COLUMN) for rows in (task.train, task.eval) for row in rows)


def load_task(cfg, registry, *, seed: int) -> TaskData:
    """Build one task from its config entry (`rlsd_core.config.TaskConfig`)."""
    rows, shuffled = source_rows(cfg, registry, seed=seed)
    if cfg.columns or cfg.template:
        rows = shape_rows(cfg, rows)
    verifier, injector = source_defaults(cfg, registry)
    columns = list(registry.verifier(verifier).columns) + list(registry.injector(injector).columns)
    check_rows(cfg.name, rows, columns)
    if any(row.get(IMAGE_COLUMN) is not None for row in rows):
        rows = attach_images(cfg.name, rows, base=image_base(cfg), max_pixels=cfg.max_image_pixels)
    train, held = split(rows, train_size=cfg.train_size, eval_size=cfg.eval_size,
                        seed=seed, shuffle=not shuffled)
    return TaskData(name=cfg.name, train=train, eval=held, verifier=verifier, injector=injector,
                    verifier_options=dict(cfg.verifier_options),
                    injector_options=dict(cfg.injector_options), weight=cfg.weight,
                    weighted_verifiers=[(v.name, v.weight, dict(v.options)) for v in cfg.verifiers])
