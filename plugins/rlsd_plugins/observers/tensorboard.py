"""TensorBoard event files under <run_dir>/tensorboard, when a SummaryWriter can be imported
(the `tensorboard` package, through torch.utils.tensorboard)."""

from __future__ import annotations

import importlib.util


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardObserver:
    def before_run(self, run) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError(
                "log.tensorboard is true but TensorBoard cannot be imported "
                f"({exc}); pip install tensorboard, or set log.tensorboard=auto") from exc
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"))

    def after_step(self, run, step, metrics) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
