"""The console: a progress bar over RL steps (reward, lambda, step time) and, at the end, the
table of results per task (train reward first vs last steps, held-out greedy accuracy before vs
after)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def results_table(summary: dict) -> Table:
    window = summary.get("reward_window", 5)
    table = Table(title=f"rlsd train: {summary.get('loss', '')}, {summary['steps']} steps, "
                        f"{summary['seconds']:.0f} s")
    table.add_column("task")
    table.add_column("verifier")
    table.add_column("reward first", justify="right")
    table.add_column("reward last", justify="right")
    table.add_column("held-out before", justify="right")
    table.add_column("held-out after", justify="right")
    table.add_column("change (2 SE)", justify="right")
    table.caption = (f"reward: mean train reward over the first / last {window} steps; held-out: "
                     f"greedy accuracy on problems never trained on; change in points, with 2 "
                     f"standard errors of the change (paired over the same problems)")
    for name, t in summary["tasks"].items():
        se = t.get("heldout_change_se")
        moved = (f"{100 * (t['heldout_after'] - t['heldout_before']):+.1f} ({200 * se:.1f})"
                 if se is not None else "-")
        table.add_row(name, t["verifier"], _pct(t["reward_first"]), _pct(t["reward_last"]),
                      f"{_pct(t['heldout_before'])} of {t['eval_size']}",
                      _pct(t["heldout_after"]), moved)
    return table


class ConsoleObserver:
    def __init__(self, console: Console | None = None) -> None:
        if console is None:
            console = Console(file=sys.stderr)
            if not console.is_terminal:  # a log file or a pipe: no 80-column wrapping of the table
                console = Console(file=sys.stderr, width=120)
        self.console = console
        self.progress: Progress | None = None

    def before_run(self, run) -> None:
        self.console.print(f"[bold]rlsd train[/bold]: {run.total_steps} steps, run directory "
                           f"{run.run_dir}")
        self.progress = Progress(TextColumn("[bold]RL[/bold]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("rl", total=run.total_steps, info="held-out eval")

    def after_step(self, run, step, metrics) -> None:
        if self.progress is None:
            return
        evals = {k[5:]: v for k, v in metrics.items() if k.startswith("eval/") and v is not None}
        if step == 0:
            self.console.print("held-out greedy accuracy before: " +
                               ", ".join(f"{k} {_pct(v)}" for k, v in evals.items()))
            self.progress.update(self.task, info="")
            return
        reward = metrics.get("reward_mean")
        info = (f"reward {reward:.2f}" if reward is not None else "reward -") + \
               f"  lambda {metrics.get('lambda', 0):.2f}  {metrics.get('time/step_s', 0):.1f} s/step"
        if metrics.get("infra_masked"):
            info += f"  [yellow]{metrics['infra_masked']} infra-masked[/yellow]"
        self.progress.update(self.task, advance=1, info=info)
        if evals:
            self.progress.console.print(f"step {step}: held-out " +
                                        ", ".join(f"{k} {_pct(v)}" for k, v in evals.items()))

    def after_run(self, run, summary) -> None:
        self.close()
        self.console.print(results_table(summary))
        self.console.print(f"run directory: {summary['run_dir']} (config.yaml, metrics.jsonl, "
                           f"plot.png, checkpoints/)")

    def on_error(self, run, step, error) -> None:
        self.close()
        self.console.print(f"[red]run stopped at step {step}: {type(error).__name__}: {error}[/red]")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
