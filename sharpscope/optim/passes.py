"""The forward and backward passes of one training step, whole or accumulated over N
micro-batches (``sam_step(..., accumulate=N)``) of n_k examples (``torch.tensor_split``'s sizes):

    L(w) = sum_k (n_k / B) L_k(w),    grad L(w) = sum_k (n_k / B) grad L_k(w),

so back-propagating (n_k / B) L_k on each leaves the full batch's gradient in ``.grad``, one
micro-batch's activations alive at a time; SAM's hooks see only ``.grad``. Batch norm in train
mode normalizes each micro-batch by itself. A data-parallel model back-propagates every
micro-batch but the last under ``model.no_sync()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..batches import concat, leading_size, take
from ..errors import ConfigError

__all__ = ["Passes", "StepResult", "micro_slices", "check_accumulate", "micro_batch_count"]


@dataclass
class StepResult:
    """What one training step saw at the unperturbed weights (for metrics)."""

    loss: torch.Tensor      # mean loss of the batch at w (0-dim, detached)
    outputs: torch.Tensor   # model outputs at w (detached)
    perturbed_loss: torch.Tensor | None  # mean loss at w + e (SAM only)
    skipped: bool = False   # mixed precision: an inf/NaN gradient, the weights left at w, no update


def check_accumulate(accumulate: Any, batch: int) -> None:
    """Refuse an ``accumulate`` that is not a whole number of micro-batches in [1, batch]."""
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"accumulate must be a positive whole number of micro-batches, got {accumulate!r}")
    if accumulate > batch:
        raise ConfigError(f"accumulate={accumulate} micro-batches cannot split a batch of {batch} examples "
                          "(at most one micro-batch per example)")


def micro_batch_count(requested: int, batch: int) -> int:
    """The micro-batches of a step of ``batch`` examples: ``requested``, at most one per example."""
    return min(requested, batch)


def micro_slices(batch: int, n: int) -> list[slice]:
    """``n`` consecutive slices covering ``range(batch)`` (``torch.tensor_split``'s sizes)."""
    size, extra = divmod(batch, n)
    bounds = [k * size + min(k, extra) for k in range(n + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


class Passes:
    """How one step runs its passes: autocast, the data-parallel loss scale, the gradient scaler
    and ``accumulate`` micro-batches."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], amp: Any,
                 loss_scale: float = 1.0, scaler: torch.amp.GradScaler | None = None, accumulate: int = 1) -> None:
        self.model, self.loss_fn, self.amp = model, loss_fn, amp
        self.loss_scale, self.scaler, self.accumulate = loss_scale, scaler, accumulate

    def forward(self, x: Any, y: Any) -> tuple[Any, torch.Tensor]:
        """Outputs and mean loss of ``model(x)`` under the step's autocast."""
        with self.amp:
            out = self.model(x)
            return out, self.loss_fn(out, y)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` times the data-parallel loss scale, through the scaler if any."""
        loss = loss * self.loss_scale if self.loss_scale != 1.0 else loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def forward_backward(self, inputs: Any, targets: Any, backward: bool = True) -> tuple[Any, torch.Tensor]:
        """One pass: the gradient of the batch's mean loss added to ``.grad`` (``backward=False``: no
        graph, RSAM's pass at w); returns the (joined) outputs and the (example-weighted) mean loss."""
        with contextlib.nullcontext() if backward else torch.no_grad():
            if self.accumulate == 1:
                outputs, loss = self.forward(inputs, targets)
                if backward:
                    self.backward(loss)
                return outputs, loss
            slices = self._slices(targets)
            outs, total = [], None
            for k, part in enumerate(slices):
                out, loss = self.forward(take(inputs, part), take(targets, part))
                weight = (part.stop - part.start) / slices[-1].stop
                if backward:
                    with self._no_sync() if k < len(slices) - 1 else contextlib.nullcontext():
                        self.backward(loss * weight)
                outs.append(out.detach())
                total = loss.detach() * weight if total is None else total + loss.detach() * weight
            return concat(outs), total

    def _slices(self, targets: Any) -> list[slice]:
        batch = leading_size(targets, "targets")
        check_accumulate(self.accumulate, batch)
        return micro_slices(batch, self.accumulate)

    def _no_sync(self) -> Any:
        """``model.no_sync()`` for a data-parallel model, else nothing."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()
