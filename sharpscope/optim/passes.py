"""The forward and backward passes of one training step, over the whole batch or accumulated
over micro-batches (gradient accumulation).

Gradient accumulation (``sam_step(..., accumulate=N)``, ``train --grad-accum N``). A batch of
B examples is cut into N consecutive micro-batches k of n_k examples (the sizes of
``torch.tensor_split``: they differ by at most one, sum to B). With mean losses L_k,

    L(w) = sum_k (n_k / B) L_k(w),    grad L(w) = sum_k (n_k / B) grad L_k(w),

so back-propagating (n_k / B) L_k on each micro-batch leaves the full batch's gradient in
``.grad`` (weighted by examples, so unequal micro-batches are averaged correctly) while only one
micro-batch's activations are alive at a time. SAM's step accumulates both of its passes this
way: the gradient at w over every micro-batch, then the perturbation e from that gradient, then
the gradient at w + e over every micro-batch; the update is the full-batch SAM step up to the
order in which float sums are taken. Every hook of the SAM base (:mod:`.sam`) sees only the
gradients in ``.grad``, never the batch, so each variant built on them (ASAM, RSAM, GSAM, WSAM,
LookSAM, Friendly SAM) gets the accumulated gradient where it would get the full-batch one.

Batch norm in train mode normalizes each micro-batch with its own statistics, so a model with
batch norm computes a different function than on the whole batch (as with any gradient
accumulation); its running statistics are updated once per micro-batch forward of the pass at
w (N momentum updates, ``num_batches_tracked`` grows by N), and the pass at w + e leaves them as
they were (:func:`~sharpscope.optim.frozen_bn_stats`, as without accumulation).

Data-parallel models (``no_sync``): every micro-batch but the last is back-propagated under
``model.no_sync()``, so the ranks all-reduce the accumulated gradient once per pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batches import concat, leading_size, take
from ..errors import ConfigError

__all__ = ["Passes", "micro_slices", "check_accumulate", "micro_batch_count"]


def check_accumulate(accumulate: Any, batch: int) -> None:
    """Refuse an ``accumulate`` that is not a whole number of micro-batches in [1, batch]."""
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"accumulate must be a positive whole number of micro-batches, got {accumulate!r}")
    if accumulate > batch:
        raise ConfigError(f"accumulate={accumulate} micro-batches cannot split a batch of {batch} examples "
                          "(at most one micro-batch per example)")


def micro_batch_count(requested: int, batch: int) -> int:
    """The micro-batches a training step of ``batch`` examples uses when ``requested`` are asked
    for: ``requested``, or one per example for a batch smaller than that (an epoch's last)."""
    return min(requested, batch)


def micro_slices(batch: int, n: int) -> list[slice]:
    """``n`` consecutive slices covering ``range(batch)``, the first ``batch % n`` one longer
    (the split of ``torch.tensor_split``)."""
    size, extra = divmod(batch, n)
    bounds = [0]
    for k in range(n):
        bounds.append(bounds[-1] + size + (k < extra))
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


class Passes:
    """How one step runs a forward and a backward pass: autocast, the data-parallel loss scale,
    the gradient scaler, and accumulation over ``accumulate`` micro-batches (module docstring)."""

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

    def forward_backward(self, inputs: Any, targets: Any) -> tuple[Any, torch.Tensor]:
        """One pass: the gradient of the batch's mean loss added to ``.grad``; returns the outputs
        and the mean loss (accumulated: the outputs joined, the example-weighted mean loss)."""
        if self.accumulate == 1:
            outputs, loss = self.forward(inputs, targets)
            self.backward(loss)
            return outputs, loss
        slices = self._slices(targets)
        batch = slices[-1].stop
        outs, total = [], None
        for k, part in enumerate(slices):
            out, loss = self.forward(take(inputs, part), take(targets, part))
            weight = (part.stop - part.start) / batch
            with self._no_sync() if k < len(slices) - 1 else contextlib.nullcontext():
                self.backward(loss * weight)
            outs.append(out.detach())
            total = loss.detach() * weight if total is None else total + loss.detach() * weight
        return concat(outs), total

    def clean_forward(self, inputs: Any, targets: Any) -> tuple[Any, torch.Tensor]:
        """The pass at w of a variant whose perturbation needs no gradient (RSAM): forwards in the
        model's own mode without a graph, for the running BatchNorm statistics (updated exactly as
        SAM's clean pass updates them) and the loss and outputs reported at w."""
        with self.amp, torch.no_grad():
            if self.accumulate == 1:
                outputs = self.model(inputs)
                return outputs, self.loss_fn(outputs, targets)
            slices = self._slices(targets)
            parts = [self.forward(take(inputs, s), take(targets, s)) for s in slices]
            weights = [(s.stop - s.start) / slices[-1].stop for s in slices]
            return concat([o for o, _ in parts]), sum(loss * w for (_, loss), w in zip(parts, weights))

    def _slices(self, targets: Any) -> list[slice]:
        batch = leading_size(targets, "targets")
        check_accumulate(self.accumulate, batch)
        return micro_slices(batch, self.accumulate)

    def _no_sync(self) -> Any:
        """``model.no_sync()`` for a data-parallel model (no all-reduce of this micro-batch), else nothing."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()
