"""What event hooks receive about a run (see the event hooks in `rlsd_core.hookspecs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass
class RunInfo:
    """A training run as observers see it."""

    config: Mapping[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    total_steps: int = 0
    start_step: int = 1
