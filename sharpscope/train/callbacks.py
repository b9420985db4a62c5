"""The loop's hooks: :class:`Callback` and the :class:`TrainState` they see."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Dataset
from .config import TrainConfig

__all__ = ["Callback", "TrainState"]


class Callback:
    """Hooks into the loop; ``on_epoch_end`` may add keys to the epoch's metrics."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


@dataclass
class TrainState:
    """What callbacks can see (and ``stop_requested`` they may set)."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Dataset
    out_dir: Path
    epoch: int = 0           # completed epochs
    step: int = 0            # optimizer steps taken
    batch_in_epoch: int = 0  # batches done in the running epoch
    steps_per_epoch: int = 0
    stop_requested: bool = False
