"""A rich progress bar and per-epoch summary lines for the training loop."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..train import Callback, TrainState


class RichProgress(Callback):
    """Shows steps done over all epochs and prints one line per finished epoch."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        if not self.enabled:
            return
        total = state.config.epochs * state.steps_per_epoch
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(state.config.optimizer.upper(), total=total,
                                           completed=state.step, status="")

    def on_step_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.step,
                                 status=f"epoch {state.epoch + 1}/{state.config.epochs}")

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        line = (f"epoch {metrics['epoch']:>3}/{state.config.epochs}  "
                f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.3f}  "
                f"test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:.3f}  "
                f"lr {metrics['lr']:.4f}  {metrics['epoch_time']:.1f}s")
        if state.config.label_noise > 0:
            line += f"  (clean-label train acc {metrics['train_acc_clean']:.3f})"
        if self.progress is not None:
            self.progress.console.print(line, highlight=False, soft_wrap=True)
        elif self.enabled:
            self.console.print(line, highlight=False, soft_wrap=True)

    def on_train_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
