"""`rlsd eval CHECKPOINT_OR_MODEL --suite NAME_OR_FILE`: greedy accuracy and pass@k per task.

Data flow: the model spec (a checkpoint directory `runs/<run>/checkpoints/step-N`, a model
directory, 'tiny', 'smollm2-135m-instruct', a GGUF file; `rlsd_core.models.resolve_model`) and
the suite (`rlsd_core.data.suite_tasks`, validated before the model loads) -> each task's
held-out rows (the same split a training run with the same seed holds out) -> the HF engine ->
`rlsd_core.loop.evaluate_task`, the code the trainer's held-out evaluation runs -> a table
(stdout) and JSON (`--json FILE`, or `--json -` for JSON on stdout and the table on stderr).

Greedy accuracy is always reported; pass@k needs `--samples N` (N >= the largest k) sampled
responses per problem at `--temperature`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="CHECKPOINT_OR_MODEL",
                        help="a checkpoint directory (runs/<run>/checkpoints/step-N), a model "
                             "directory, 'tiny', 'smollm2-135m-instruct' or a GGUF file")
    parser.add_argument("--suite", required=True, metavar="NAME_OR_FILE",
                        help="a shipped suite (arithmetic, humaneval, mixed), a suite YAML file, "
                             "or an installed task source")
    parser.add_argument("--samples", type=int, default=0, metavar="N",
                        help="sampled responses per problem for pass@k (default 0: greedy only)")
    parser.add_argument("--k", default="1", metavar="K[,K...]",
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
            return yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
    return {}


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

    from ..config import ConfigError, TaskConfig
    from ..data import load_task, suite_tasks
    from ..models import ModelSpecError, resolve_model
    from ..plugins import UnknownNameError, get_plugin_manager
    from ..records import TaskError
    from ..rewards import build_scorer

    err = Console(file=sys.stderr, width=max(120, Console(file=sys.stderr).width))
    try:
        ks = [int(k) for k in str(args.k).split(",") if k.strip()]
    except ValueError:
        print(f"rlsd eval: --k {args.k!r}: expected integers like 1,5,10", file=sys.stderr)
        return 2
    if args.samples and max(ks) > args.samples:
        print(f"rlsd eval: pass@{max(ks)} needs --samples >= {max(ks)} (got {args.samples})",
              file=sys.stderr)
        return 2
    saved = _checkpoint_config(args.model)
    seed = args.seed if args.seed is not None else int(saved.get("seed", 0))
    max_new = args.max_new_tokens or int(saved.get("eval", {}).get("max_new_tokens", 256))
    pm = get_plugin_manager()
    try:
        # Everything about the suite is checked, and its rows built, before the model loads.
        entries = suite_tasks(args.suite, pm.registry)
        if args.limit:
            entries = [{**e, "eval_size": min(e.get("eval_size", 100), args.limit)} for e in entries]
        cfgs = [TaskConfig.model_validate(e) for e in entries]
        tasks = [load_task(c, pm.registry, seed=seed) for c in cfgs]
        path = resolve_model(args.model)
    except (ConfigError, TaskError, UnknownNameError, ModelSpecError, ValueError) as exc:
        print(f"rlsd eval: {exc}", file=sys.stderr)
        return 2

    import torch
    from transformers.utils import logging as hf_logging

    from ..engines import make_engine
    from ..loop import evaluate_task
    from ..models import load_model, load_tokenizer

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(path)
    model = load_model(path, "float32")
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
                                        temperature=args.temperature, seed=seed,
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
    if args.json == "-":
        err.print(table)
        print(json.dumps(results, indent=1))
    else:
        Console(width=max(120, Console().width)).print(table)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=1)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="greedy accuracy and pass@k of a checkpoint or model on a task suite",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_eval)
