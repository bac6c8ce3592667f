"""`rlsd eval CHECKPOINT_OR_MODEL --suite NAME_OR_FILE`: greedy accuracy and pass@k per task.

Data flow: the model spec (a checkpoint directory `runs/<run>/checkpoints/step-N`, a model
directory, 'tiny', 'smollm2-135m-instruct', a GGUF file; `rlsd_core.models.resolve_model`) and
the suite (`rlsd_core.data.suite_tasks`, validated before the model loads) -> each task's
held-out rows (the same split a training run with the same seed holds out) -> the HF engine ->
`rlsd_core.loop.evaluate_task`, the code the trainer's held-out evaluation runs -> a table
(stdout) and JSON (`--json FILE`, or `--json -` for JSON on stdout and the table on stderr).

Greedy accuracy is always reported; pass@k needs `--samples N` (N >= the largest k) sampled
responses per problem at `--temperature`.

A run directory (runs/<run>) means its newest intact checkpoint. A checkpoint that is damaged
(cut short by a full disk or a kill) is not loaded: the newest intact checkpoint beside it is
evaluated instead, with a line saying so (the JSON's `resolved` names what was evaluated).
Everything but the model is checked before the model loads, the verifiers started included.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from ..data.files import atomic_output, check_writable
from ..data.jsonl import json_safe
from .errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="CHECKPOINT_OR_MODEL",
                        help="a checkpoint directory (runs/<run>/checkpoints/step-N), a model "
                             "directory, 'tiny', 'smollm2-135m-instruct' or a GGUF file")
    parser.add_argument("--suite", required=True, metavar="NAME_OR_FILE",
                        help="a shipped suite (arithmetic, humaneval, mixed), a suite YAML file, "
                             "or an installed task source")
    parser.add_argument("--samples", type=int, default=0, metavar="N",
                        help="sampled responses per problem for pass@k (default 0: greedy only)")
    parser.add_argument("--k", default=None, metavar="K[,K...]",
                        help="pass@k values, comma-separated (default 1; needs --samples >= k)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="response length cap (default: the checkpoint's eval.max_new_tokens, "
                             "else 256)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate at most N held-out problems per task")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the task split and sampling (default: the checkpoint's run "
                             "seed, else 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")


def _checkpoint_config(model: str) -> dict:
    """The run config saved next to a checkpoint (for its seed and eval length), if any."""
    from pathlib import Path

    import yaml

    path = Path(model).expanduser()
    for candidate in (path / "config.yaml", path.parent.parent / "config.yaml"):
        if path.is_dir() and candidate.is_file() and (path / "trainer_state.pt").is_file():
            try:
                return yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError):
                return {}  # defaults then; the model itself is what is evaluated
    return {}


def parse_ks(text: str | None, samples: int) -> list[int]:
    """The pass@k values, each one computable from `samples` responses per problem."""
    if samples < 0:
        raise UsageError(f"--samples {samples}: give 0 (greedy only) or a positive count")
    try:
        ks = [int(k) for k in (text or "1").split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--k {text!r}: expected positive integers like 1,5,10") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"--k {text!r}: every k must be a positive integer (pass@k draws k samples)")
    if text is not None and not samples:
        raise UsageError(f"--k {text}: pass@k needs sampled responses; add --samples N with "
                         f"N >= {max(ks)}")
    if samples and max(ks) > samples:
        raise UsageError(f"pass@{max(ks)} needs --samples >= {max(ks)} (got {samples})")
    return ks


def pick_checkpoint(model: str) -> str:
    """`model`, or for a run directory its newest intact checkpoint, or for a damaged checkpoint
    the newest intact one beside it (with a line saying so)."""
    from pathlib import Path

    path = Path(model).expanduser()
    if not path.is_dir():
        return model
    from ..loop.checkpoint import CHECKPOINTS, STATE_FILE, CheckpointError, intact, newest_intact

    if (path / CHECKPOINTS).is_dir():  # a run directory
        found, damaged = newest_intact(path)
        for skipped, problem in damaged:
            print(f"rlsd eval: skipping damaged checkpoint {skipped.name} ({problem})", file=sys.stderr)
        if found is None:
            raise CheckpointError(f"{model}: no intact checkpoint in {path / CHECKPOINTS}")
        return str(found)
    if not (path / STATE_FILE).exists() or path.parent.name != CHECKPOINTS:
        return model  # a plain model directory
    problem = intact(path)
    if problem is None:
        return model
    found, _damaged = newest_intact(path.parent.parent)
    if found is None:
        raise CheckpointError(f"{model} is damaged ({problem}) and no intact checkpoint is beside it")
    print(f"rlsd eval: {path.name} is damaged ({problem}); evaluating {found.name}, the newest "
          f"intact checkpoint of the run", file=sys.stderr)
    return str(found)


def results_table(results: dict):
    from rich.table import Table

    ks = sorted({key for t in results["tasks"].values() for key in t if key.startswith("pass@")},
                key=lambda s: int(s[5:]))
    table = Table(title=f"rlsd eval on suite {results['suite']}")
    for col in ("task", "verifier", "problems", "greedy accuracy", *ks, "infra faults"):
        table.add_column(col, justify="left" if col in ("task", "verifier") else "right")
    for name, t in results["tasks"].items():
        table.add_row(name, t["verifier"], str(t["n"]), f"{100 * t['accuracy']:.1f}%",
                      *[f"{100 * t[k]:.1f}%" for k in ks], str(t["infra"]))
    how = (f"pass@k from {results['samples']} samples at T={results['temperature']}" if ks
           else "greedy decoding")
    table.caption = f"model {results['model']}; held-out split of seed {results['seed']}; {how}"
    return table


def run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pydantic import ValidationError

    from ..config import ConfigError, TaskConfig, TrainConfig, check_plugins
    from ..data import load_task, suite_tasks
    from ..models import resolve_model
    from ..plugins import get_plugin_manager
    from ..rewards import build_scorer

    err = Console(file=sys.stderr, width=max(120, Console(file=sys.stderr).width))
    ks = parse_ks(args.k, args.samples)
    for flag, value in (("--temperature", args.temperature), ("--max-new-tokens", args.max_new_tokens),
                        ("--limit", args.limit)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} {value}: give a finite number > 0")
    model = pick_checkpoint(args.model)
    saved = _checkpoint_config(model)
    seed = args.seed if args.seed is not None else int(saved.get("seed", 0))
    max_new = args.max_new_tokens or int(saved.get("eval", {}).get("max_new_tokens", 256))
    pm = get_plugin_manager()
    # Everything about the suite is checked, and its rows built, before the model loads.
    entries = suite_tasks(args.suite, pm.registry)
    if args.limit:
        entries = [{**e, "eval_size": min(e.get("eval_size", 100), args.limit)} for e in entries]
    try:
        cfgs = [TaskConfig.model_validate(e) for e in entries]
    except ValidationError as exc:
        raise ConfigError(f"suite {args.suite!r}: {exc}") from None
    # plugin names and every verifier's and injector's options, as for a training run
    check_plugins(TrainConfig(tasks=cfgs), pm.registry)
    tasks = [load_task(c, pm.registry, seed=seed) for c in cfgs]
    path = resolve_model(model)
    if args.json and args.json != "-":
        check_writable(args.json)  # before any work, not after an hour of sampling

    import torch
    from transformers.utils import logging as hf_logging

    from ..engines import make_engine
    from ..loop import evaluate_task
    from ..models import load_model, load_tokenizer, load_vision

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(path)
    model = load_model(path, "float32")
    vision = load_vision(path)  # None for a text model
    model.eval()
    engine = make_engine("hf", model, tokenizer)
    started = time.perf_counter()
    results = {"model": args.model, "resolved": str(path), "suite": args.suite, "seed": seed,
               "samples": args.samples, "temperature": args.temperature, "max_new_tokens": max_new,
               "tasks": {}}
    per_row = 1 + (1 if args.samples else 0)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err) as progress:
            for task, cfg in zip(tasks, cfgs):
                bar = progress.add_task(task.name, total=len(task.eval) * per_row)
                scorer = build_scorer(task, pm.registry)
                try:
                    out = evaluate_task(engine, tokenizer, task, scorer, max_new_tokens=max_new,
                                        samples=args.samples, ks=ks if args.samples else (),
                                        temperature=args.temperature, seed=seed, vision=vision,
                                        on_chunk=lambda n, bar=bar: progress.advance(bar, n))
                finally:
                    close = getattr(scorer, "close", None)
                    if close is not None:
                        close()
                results["tasks"][task.name] = {"verifier": task.verifier, **out}
    finally:
        engine.close()
    results["seconds"] = round(time.perf_counter() - started, 1)
    table = results_table(results)
    text = json.dumps(json_safe(results), indent=1, allow_nan=False)
    if args.json == "-":
        err.print(table)
        print(text)
    else:
        Console(width=max(120, Console().width)).print(table)
        if args.json:
            with atomic_output(args.json) as fh:
                fh.write(text)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="greedy accuracy and pass@k of a checkpoint or model on a task suite",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_eval)
