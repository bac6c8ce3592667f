"""`rlsd train`: build the config from defaults, a YAML file and overrides, validate it, train.

With no arguments it trains the embedded default: the tiny local model, warmed up (cached), on
the built-in addition + reverse suite, on the CPU. Every config field is also a flag
(`--optim.lr 1e-4`), generated from the typed config so `rlsd train --help` lists every field
with its default; `--set optim.lr=1e-4` does the same and reaches list entries
(`--set tasks.0.eval_size=200`).

Data parallel: `torchrun --nproc-per-node N -m rlsd_core.cli train ...` runs it on N processes
(docs/distributed.md); `rlsd train --nproc N ...` starts that torchrun for you on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

from ..config import ConfigError, build_config, iter_fields, parse_value, type_name
from .errors import Failed, Interrupted, UsageError, describe_os_error, full_disk

_FIELD_PREFIX = "field:"


def _default_text(value) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return repr(value) if isinstance(value, str) else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config file (any subset of the "
                        "fields below; the rest keep their defaults)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one field, e.g. --set optim.lr=1e-4 or "
                             "--set tasks.0.eval_size=200 (value read as YAML; repeatable)")
    parser.add_argument("--suite", metavar="NAME_OR_FILE",
                        help="train on a task suite: a shipped one (arithmetic, humaneval, mixed), "
                             "a suite YAML file, or an installed task source (see docs/suites.md)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR from its newest checkpoint with its config.yaml "
                             "(further flags override it, e.g. --steps to extend the run)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and plugin names, load no model, and exit")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="train data-parallel on N processes of this machine (one per GPU, "
                             "or CPU processes): runs `torchrun --standalone --nproc-per-node N "
                             "-m rlsd_core.cli train ...` with the other arguments; several "
                             "machines: see docs/distributed.md")
    sections: dict[str, argparse._ArgumentGroup] = {}
    for dotted, annotation, description, default in iter_fields():
        section = dotted.split(".")[0] if "." in dotted else "run"
        group = sections.get(section)
        if group is None:
            group = sections[section] = parser.add_argument_group(f"config: {section}")
        group.add_argument(f"--{dotted}", dest=_FIELD_PREFIX + dotted, default=argparse.SUPPRESS,
                           metavar=type_name(annotation).upper() if "|" not in type_name(annotation)
                           else "{" + type_name(annotation) + "}",
                           help=f"{description} (default: {_default_text(default)})".replace("%", "%%"))


def task_fields_epilog() -> str:
    """The fields of one `tasks` entry (a list cannot be a flag; set them in YAML or with
    --set tasks.N.FIELD=VALUE)."""
    from ..config import TaskConfig

    lines = ["fields of each `tasks` entry (YAML, or --set tasks.N.FIELD=VALUE):"]
    for dotted, annotation, description, default in iter_fields(TaskConfig, "tasks[N]."):
        shown = _default_text(default)
        lines.append(f"  {dotted} ({type_name(annotation)}): {description} (default: {shown})")
    return "\n".join(lines)


def overrides_from_args(args: argparse.Namespace) -> list[tuple[str, object]]:
    out = []
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
        key, value = item.split("=", 1)
        out.append((key.strip(), parse_value(value)))
    for key, value in vars(args).items():
        if key.startswith(_FIELD_PREFIX):
            out.append((key[len(_FIELD_PREFIX):], parse_value(value)))
    return out


def suite_overrides(args: argparse.Namespace, pm) -> list[tuple[str, object]]:
    """The flags' overrides, with --suite's task list first (the flags may change its entries)."""
    overrides = overrides_from_args(args)
    if getattr(args, "suite", None):
        from ..data import suite_tasks
        overrides.insert(0, ("tasks", suite_tasks(args.suite, pm.registry)))
    return overrides


def config_from_args(args: argparse.Namespace, pm, config_file=None, *, check: bool = True):
    """The run config of these flags (`add_arguments`): defaults <- YAML <- --suite <- flags,
    with every plugin name checked unless `check` is False. Raises ConfigError,
    UnknownNameError or SuiteError."""
    from ..config import check_plugins

    cfg = build_config(config_file if config_file is not None else args.config,
                       suite_overrides(args, pm))
    if check:
        check_plugins(cfg, pm.registry)
    return cfg


class WarmupProgress:
    """Turns the trainer's set-up events into console output: the warm-up's progress bar, the
    step-0 teacher check's verdict per task."""

    def __init__(self, console) -> None:
        self.console = console
        self.progress = None

    def __call__(self, event: str, payload: dict) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if event == "warmup_cached":
            self.console.print(f"warm-up: cached at {payload['path']}")
        elif event == "warmup_step":
            if self.progress is None:
                self.console.print("warm-up: supervised phase on the built-in tasks (first run only; "
                                   "cached afterwards)")
                self.progress = Progress(TextColumn("[bold]warm-up[/bold]"), BarColumn(),
                                         MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                                         TextColumn("{task.fields[check]}"),
                                         TimeElapsedColumn(), console=self.console)
                self.progress.start()
                self.task = self.progress.add_task("warmup", total=payload["steps"], loss=0.0, check="")
            self.progress.update(self.task, completed=payload["step"], loss=payload["loss"])
        elif event == "warmup_check" and self.progress is not None:
            # Greedy accuracy on the held-back rows without -> with the privileged prompt.
            shown = ", ".join(f"{name} {100 * s:.0f}->{100 * t:.0f}%"
                              for name, (s, t) in payload["accuracy"].items())
            self.progress.update(self.task, check=f"hint: {shown}")
        elif event == "warmup_done":
            if self.progress is not None:
                self.progress.stop()
                self.progress = None
                ran, ready = payload.get("steps_run"), payload.get("ready_at")
                if ready is not None:
                    self.console.print(f"warm-up: stopped at step {ran} of {payload['steps']}: the "
                                       f"self-teacher reads the hint (readiness check passed)")
        elif event == "teacher_check":
            self.teacher_check(payload)

    def teacher_check(self, report: dict) -> None:
        """One line per task; the ones that fail in yellow with their reason."""
        self.console.print(f"teacher check ({report['seconds']:.0f} s; `rlsd check-teacher` for "
                           f"the full one): {report['verdict']}", highlight=False)
        for name, t in report["tasks"].items():
            auroc = "n/a" if t["auroc"] is None else f"{t['auroc']:.2f}"
            line = (f"  {name}: {t['verdict']}: greedy {100 * t['acc_student']:.0f}% -> "
                    f"{100 * t['acc_teacher']:.0f}% with the hint, AUROC {auroc}, "
                    f"{100 * t['clip_frac']:.0f}% of weights clipped")
            if t["verdict"] != "informative":
                line = f"[yellow]{line}. {t['reason']}[/yellow]"
            self.console.print(line, highlight=False)


def _resumed_config(args, pm, overrides):
    """(run dir, config, checkpoint) for --resume, everything checked before any model loads:
    damaged newer checkpoints are skipped with a line each, settings that cannot continue the
    run are an error, changed ones are named."""
    from ..loop.checkpoint import check_resume, resume_point

    if args.config:
        raise UsageError("--resume continues a run with its own config.yaml; drop --config (use "
                         "flags such as --steps to change what may change)")
    run_dir, config_file, ckpt = resume_point(args.resume, on_skip=lambda path, problem: print(
        f"rlsd train: skipping damaged checkpoint {path.name} ({problem})", file=sys.stderr))
    cfg = build_config(config_file, overrides)
    from ..config import check_plugins
    check_plugins(cfg, pm.registry)
    changes = check_resume(build_config(config_file), cfg, pm.registry)
    if changes:
        print("rlsd train: warning: resuming with changed settings (the checkpoint trained with "
              "the old values): " + "; ".join(changes), file=sys.stderr)
    print(f"rlsd train: resuming {run_dir} from {ckpt.name}", file=sys.stderr)
    return run_dir, cfg, ckpt


def _stopped(run_dir, why: str) -> str:
    """What a stopped run kept, and how to go on."""
    from ..loop.checkpoint import latest

    ckpt = latest(run_dir) if run_dir is not None and run_dir.exists() else None
    if ckpt is None:
        return (f"{why}; no checkpoint was written yet (checkpoint_every: 0 saves only at the "
                f"end), so there is nothing to resume: start the run again")
    return (f"{why}; the newest checkpoint is {ckpt.name}: continue with "
            f"`rlsd train --resume {run_dir}`")


def launch(nproc: int, argv: list[str]) -> int:
    """`rlsd train --nproc N ARGS`: the same command on N local processes under torchrun."""
    rest, skip = [], False
    for item in (argv[1:] if argv[:1] == ["train"] else argv):
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "rlsd_core.cli", "train", *rest]
    return subprocess.call(cmd)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc {nproc}: give a number of processes >= 1")

    from ..plugins import get_plugin_manager

    console = Console(file=sys.stderr)
    pm = get_plugin_manager()
    run_dir = resume = None
    if getattr(args, "resume", None):
        run_dir, cfg, resume = _resumed_config(args, pm, suite_overrides(args, pm))
    else:
        cfg = config_from_args(args, pm, check=False)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from ..config import check_plugins
    check_plugins(cfg, pm.registry)
    from ..loop.run import check_environment, resolve_run_dir
    if args.check:
        from ..data import TeacherPrompts, load_task
        from ..loop.run import model_spec
        # the rows too (columns, templates, data files, images) and each injector once: all but
        # the model; model_spec refuses what the model side cannot take (vLLM with images)
        tasks = [load_task(task, pm.registry, seed=cfg.seed) for task in cfg.tasks]
        TeacherPrompts(tasks, {t.injector: pm.registry.injector(t.injector) for t in tasks},
                       tokenizer=None).dry_run()
        model_spec(cfg, tasks)
        check_environment(cfg)  # after the rows: vLLM with images is refused whether installed or not
        console.print("config OK")
        return 0
    check_environment(cfg)
    launching = bool(nproc and nproc > 1 and "LOCAL_RANK" not in os.environ)
    from ..loop.distributed import World, check_rows
    # Before any process starts: one line, not a traceback from every rank.
    check_rows(World(size=nproc if launching else int(os.environ.get("WORLD_SIZE", "1"))),
               cfg.rollout.prompts_per_step)
    if launching:  # validated once, here
        return launch(nproc, getattr(args, "argv", sys.argv[1:]))
    # Under torchrun rank 0 makes the run directory and setup hands it to the others.
    if run_dir is None and os.environ.get("RANK", "0") == "0":
        run_dir = resolve_run_dir(cfg.output_dir)  # made now: a bad path fails before any work
        run_dir.mkdir(parents=True, exist_ok=True)

    from transformers.utils import logging as hf_logging

    from ..loop import TeacherCheckWarning, train
    from ..loop.distributed import recorded

    # Our own progress bars tell the story; transformers' per-load bars would bury them.
    hf_logging.disable_progress_bar()
    warnings.simplefilter("ignore", TeacherCheckWarning)  # the reporter prints it, with the numbers
    try:
        recorded(train)(cfg, pm, reporter=WarmupProgress(console), run_dir=run_dir, resume=resume)
    except KeyboardInterrupt:
        raise Interrupted(_stopped(run_dir, "training stopped")) from None
    except OSError as exc:
        if not full_disk(exc):
            raise
        raise Failed(_stopped(run_dir, describe_os_error(exc).split(";")[0])
                     + " after freeing space") from None
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a policy with RLSD / GRPO / OPSD (no arguments: the embedded default)",
        description=__doc__, epilog=task_fields_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_train)


def main(argv: list[str] | None = None) -> int:
    """`rlsd train ARGS` (the same command, errors handled the same way)."""
    from . import main as rlsd_main

    return rlsd_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
