"""Task suites: a YAML manifest names the tasks of a run, each with its own data, verifier(s),
injector, magnitude scheduler and sampling weight.

Data flow:
  `--suite NAME_OR_FILE` -> `suite_tasks()` -> the run config's `tasks:` entries (TaskConfig,
  validated here with the task's name in every error) -> `rlsd_core.data.load_task` -> the task
  source gives raw rows -> `shape_rows` (column mapping, chat template) -> TaskData
  -> `rlsd_core.rewards.build_scorer` (one verifier, or several averaged by weight) -> the loop.

A manifest is `{name, description, tasks: [<TaskConfig entries>]}`: a task entry is exactly a
`tasks:` entry of a run config (see docs/suites.md), so a suite is data and needs no code.
Relative data paths in a manifest are relative to the manifest file.

How a suite is found: an existing file path; else a suite shipped in rlsd_core/data/manifests;
else an installed task source of that name (the `rlsd_task_sources` hook), as a one-task suite.

Task sources (files, reasoning_gym, humaneval, addition, reverse) are plugins: rlsd_plugins.task_sources.

Batches mix tasks by weight: each step takes round(prompts_per_step * weight / sum of weights)
prompts of every task (largest remainder, `rlsd_core.loop.batch.task_counts`), and every prompt's group of
`group_size` responses is sampled, scored and normalised within that one prompt, so a group never
spans two tasks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import ValidationError

from ..config import ConfigError, TaskConfig, read_text_file, read_yaml_text, yaml_problem
from ..plugins import UnknownNameError
from ..records import TaskError

SUITES_DIR = Path(__file__).parent / "manifests"


class SuiteError(TaskError):
    """A suite manifest or one of its tasks is unusable; the message names the task and field."""


# =================================================================================================
# rows: column mapping and chat template
# =================================================================================================

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: str, row: Mapping[str, Any]) -> str:
    """Fill {field} from the row; {{ and }} are literal braces; other braces stay as written."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return str(row[m.group(1)])
    return _FIELD.sub(sub, template)


def template_fields(template: str) -> list[str]:
    return [m.group(1) for m in _FIELD.finditer(template) if m.group(1)]


def shape_rows(cfg, rows: list[dict]) -> list[dict]:
    """Apply a task's `columns` ({rlsd column: source column}) and `template` (student chat
    messages) to its rows. The rendered messages go to `messages`; `prompt` keeps the mapped
    prompt column if there is one (the code verifier reads the stub from it), else it becomes
    the last user message."""
    name = cfg.name
    template = cfg.template or []
    for j, msg in enumerate(template):
        if set(msg) - {"role", "content"} or "content" not in msg:
            raise SuiteError(f"task {name!r}: template[{j}] must be {{role, content}}, got {sorted(msg)}")
        if msg.get("role", "user") not in ("system", "user", "assistant"):
            raise SuiteError(f"task {name!r}: template[{j}].role must be system, user or assistant, "
                             f"got {msg['role']!r}")
    if template and template[-1].get("role", "user") != "user":
        raise SuiteError(f"task {name!r}: template: the last message must be the user's")
    out = []
    for i, row in enumerate(rows):
        new = dict(row)
        for dst, src in cfg.columns.items():
            if src not in row:
                raise SuiteError(f"task {name!r}: columns.{dst}: the data has no column {src!r} "
                                 f"(row {i} has {sorted(row)})")
            new[dst] = row[src]
        if template:
            messages = []
            for j, msg in enumerate(template):
                missing = [f for f in template_fields(msg["content"]) if f not in new]
                if missing:
                    raise SuiteError(
                        f"task {name!r}: template[{j}].content references {{{missing[0]}}}, which is "
                        f"not a field of the rows (row {i} has {sorted(new)}); map it with "
                        f"`columns` or write {{{{ }}}} for literal braces")
                messages.append({"role": msg.get("role", "user"), "content": render(msg["content"], new)})
            new["messages"] = messages
            if "prompt" not in new:
                new["prompt"] = messages[-1]["content"]
        out.append(new)
    return out


# =================================================================================================
# manifests
# =================================================================================================

def shipped_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.yaml"))}


def _locate(name_or_file: str, registry) -> tuple[str, dict, Path | None]:
    path = Path(name_or_file).expanduser()
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SuiteError(f"suite file {str(path)!r} does not exist")
        return str(path), _read(path), path.parent
    shipped = shipped_suites()
    if name_or_file in shipped:
        return name_or_file, _read(shipped[name_or_file]), shipped[name_or_file].parent
    if registry is not None and name_or_file in registry.names("task_source"):
        return name_or_file, {"name": name_or_file,
                              "tasks": [{"name": name_or_file, "source": name_or_file}]}, None
    sources = registry.names("task_source") if registry is not None else []
    raise SuiteError(f"no suite {name_or_file!r}: not a file, not a shipped suite "
                     f"({', '.join(shipped) or 'none'}), not an installed task source "
                     f"({', '.join(sources) or 'none'})")


def _read(path: Path) -> dict:
    try:
        data = read_yaml_text(read_text_file(path, "suite file"))
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise SuiteError(f"suite file {str(path)!r} must be a mapping with a non-empty `tasks:` list")
    unknown = set(data) - {"name", "description", "tasks"}
    if unknown:
        raise SuiteError(f"suite file {str(path)!r}: unknown top-level key(s) {sorted(unknown)}; "
                         f"valid: name, description, tasks")
    return data


def _resolve_paths(entry: dict, base: Path | None) -> dict:
    if base is None:
        return entry
    entry = dict(entry)

    def fix(p):
        return p if Path(p).expanduser().is_absolute() else str(base / p)

    for key in ("path", "image_dir"):
        if isinstance(entry.get(key), str):
            entry[key] = fix(entry[key])
    opts = entry.get("options")
    if isinstance(opts, dict) and "path" in opts:
        opts = dict(opts)
        opts["path"] = [fix(p) for p in opts["path"]] if isinstance(opts["path"], list) else fix(opts["path"])
        entry["options"] = opts
    return entry


def suite_tasks(name_or_file: str, registry=None) -> list[dict]:
    """The validated `tasks:` entries of a suite. Every error names the suite, the task and the
    field, and is raised before any data or model is loaded."""

    label, data, base = _locate(name_or_file, registry)
    entries, problems = [], []
    for i, raw in enumerate(data["tasks"]):
        if not isinstance(raw, dict):
            problems.append(f"tasks[{i}]: must be a mapping, got {type(raw).__name__}")
            continue
        who = f"task {raw.get('name', f'#{i}')!r}"
        try:
            task = TaskConfig.model_validate(_resolve_paths(raw, base))
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(x) for x in err["loc"]) or "(entry)"
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                got = err.get("input")
                shown = "" if isinstance(got, dict) or err["type"] == "extra_forbidden" else f" (got {got!r})"
                problems.append(f"{who}: {where}: {msg}{shown}")
            continue
        if registry is not None:
            names = [("source", "task_source", task.source)] if task.path is None and task.source \
                else []
            names += [("verifier" if not task.verifiers else "verifiers[0].name", "verifier", task.verifier)] \
                if task.verifier else []
            names += [(f"verifiers[{j}].name", "verifier", v.name) for j, v in enumerate(task.verifiers[1:], 1)]
            names += [("injector", "injector", task.injector)] if task.injector else []
            names += [("scheduler.name", "scheduler", task.scheduler.name)] if task.scheduler else []
            for field, kind, value in names:
                try:
                    registry.get(kind, value)
                except UnknownNameError as exc:
                    problems.append(f"{who}: {field}: {exc}")
        for j, msg in enumerate(task.template or []):
            if "content" not in msg:
                problems.append(f"{who}: template[{j}]: needs a `content`")
        entries.append(task.model_dump(mode="json", exclude_defaults=True) | {"name": task.name})
    names = [e["name"] for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"task names must be unique; repeated: {dupes}")
    if problems:
        raise SuiteError(f"suite {label!r}:\n  " + "\n  ".join(problems))
    return entries
