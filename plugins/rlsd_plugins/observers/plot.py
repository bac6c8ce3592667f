"""plot.png: the paper's curves by step (reward per task, held-out accuracy, lambda, clip
fractions, entropy, response length), redrawn at the end of the run (and on error, so a failed
run still shows how far it got)."""

from __future__ import annotations

import math

PANELS = (
    ("reward (train)", ("reward/",)),
    ("held-out greedy accuracy", ("eval/",)),
    ("lambda", ("lambda",)),
    ("clip fractions", ("clip_low_frac", "clip_high_frac", "pg_clipfrac")),
    ("entropy (nats)", ("entropy",)),
    ("response length (tokens)", ("response_length",)),
)


def _series(history: list[dict], prefix: str, exact: bool) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = {}
    for m in history:
        for key, value in m.items():
            hit = key == prefix if exact else key.startswith(prefix)
            if hit and isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(m["step"])
                ys.append(value)
    return out


def draw(history: list[dict], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server, and no GUI event loop in a training run
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, (name, keys) in zip(axes.flat, PANELS):
        drawn = False
        for key in keys:
            exact = not key.endswith("/")
            for label, (xs, ys) in sorted(_series(history, key, exact).items()):
                ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=label)
                drawn = True
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


class PlotObserver:
    def before_run(self, run) -> None:
        self.history: list[dict] = []
        metrics = run.run_dir / "metrics.jsonl"
        if getattr(run, "start_step", 1) > 1 and metrics.is_file():  # resumed: plot earlier steps
            import json
            self.history = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines()
                            if x.strip()]

    def after_step(self, run, step, metrics) -> None:
        self.history.append({**metrics, "step": step})

    def _draw(self, run) -> None:
        cfg = run.config
        title = f"{cfg.get('algo', {}).get('loss', '')} on {cfg.get('model', {}).get('name_or_path', '')}"
        draw(self.history, run.run_dir / "plot.png", title=title)

    def after_run(self, run, summary) -> None:
        self._draw(run)

    def on_error(self, run, step, error) -> None:
        if self.history:
            self._draw(run)
