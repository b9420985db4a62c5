"""Progress on the command line: the training bar and per-epoch lines, the time-left column,
and the cost a command announces before its first product."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from ..train import Callback, TrainState


def clock(seconds: float) -> str:
    """``seconds`` as H:MM:SS (rich's style), or M:SS under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def duration(seconds: float) -> str:
    """``seconds`` for a sentence: '40 s', '3.5 min', '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


class RemainingColumn(ProgressColumn):
    """Time left at the rate measured so far: 'N left'; '<= N left' for a task whose total is only
    a cap (field ``cap``: Lanczos stops once converged); '-:--' before a rate or without a total."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        left = task.time_remaining
        if left is None:
            return Text("-:-- left", style="progress.remaining")
        return Text(f"{'<= ' if task.fields.get('cap') else ''}{clock(left)} left", style="progress.remaining")


@dataclass
class ProductPlan:
    """The products (HVPs) a command computes, said after the first one (so that input refused
    by the first call says only its error) or by :meth:`announce`; then, once ``sample``
    products after the first (which builds the graph) have taken ``min_seconds``, the time all
    take at the measured rate, said once if at least ``long_seconds``. ``parts`` maps a label to
    (count, exact): an exact count is computed, an inexact one is a cap (Lanczos stops under it)."""

    say: Callable[[str], None]
    unit: str
    parts: dict[str, tuple[int, bool]]
    note: str = ""
    sample: int = 5
    min_seconds: float = 0.5
    long_seconds: float = 10.0
    now: Callable[[], float] = time.perf_counter
    _done: int = 0
    _first: tuple[int, float] | None = None
    _announced: bool = False
    _said: bool = False

    def _count(self, exact: bool) -> int:
        return sum(n for n, is_exact in self.parts.values() if is_exact == exact)

    def announce(self) -> None:
        """Say the plan once: '899 HVPs planned, and at most 300 more (eigenvalues (LA): at most
        300; trace (Hutch++): 99; ...)'."""
        if self._announced or not self.parts:
            return
        self._announced = True
        planned, capped = self._count(True), self._count(False)
        items = "; ".join(f"{label}: {'' if exact else 'at most '}{n:,}" for label, (n, exact) in self.parts.items())
        more = f", and at most {capped:,} more" if capped else ""
        lead = f"{planned:,} {self.unit} planned{more}" if planned else f"at most {capped:,} {self.unit}"
        self.say(f"{lead} ({items}{'; ' + self.note if self.note else ''})")

    def done(self, n: int) -> None:
        """Count ``n`` more products; say the plan after the first, the estimate once the rate is known."""
        self.announce()
        self._done += n
        t = self.now()
        if self._first is None:
            self._first = (self._done, t)
            return
        timed, elapsed = self._done - self._first[0], t - self._first[1]
        if self._said or timed < self.sample or elapsed < self.min_seconds:
            return
        self._said = True
        rate = timed / elapsed
        planned, capped = self._count(True), self._count(False)
        if (planned + capped) / rate < self.long_seconds:
            return
        text = f"at the measured {rate:.3g} {self.unit}/s: "
        if planned:
            text += f"about {duration(planned / rate)} for the {planned:,} planned"
            text += f", at most {duration((planned + capped) / rate)} with all {capped:,} more" if capped else ""
        else:
            text += f"at most {duration(capped / rate)} for {capped:,}"
        self.say(text)


class RichProgress(Callback):
    """Shows steps done over all epochs and prints one line per finished epoch."""

    def __init__(self, console: Console | None = None, enabled: bool = True, label: str | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.label = label  # the bar's description; default: the optimizer's name
        self.progress: Progress | None = None
        self.task: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        if not self.enabled:
            return
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.label or state.config.optimizer.upper(), completed=state.step,
                                           total=state.config.epochs * state.steps_per_epoch, status="")

    def on_step_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.step,
                                 status=f"epoch {state.epoch + 1}/{state.config.epochs}")

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        line = (f"epoch {metrics['epoch']:>3}/{state.config.epochs}  "
                f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.3f}  "
                f"test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:.3f}  "
                f"lr {metrics['lr']:.4f}  {metrics['epoch_time']:.1f}s")
        if "test_ppl" in metrics:  # token data: losses and accuracies per token
            line += f"  (per token; test perplexity {metrics['test_ppl']:.2f})"
        if state.config.label_noise > 0:
            line += f"  (clean-label train acc {metrics['train_acc_clean']:.3f})"
        if self.enabled:  # the bar's console, which prints above the bar
            self.console.print(line, highlight=False, soft_wrap=True)

    def on_train_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
