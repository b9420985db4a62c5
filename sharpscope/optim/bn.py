"""Batch-norm policy of SAM: running statistics come from the clean pass only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["bn_modules", "frozen_bn_stats"]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]


def _bn_snapshot(bns: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m._buffers.items() if v is not None} for m in bns]


@torch.no_grad()
def _bn_restore(bns: list[nn.Module], snapshot: list[dict[str, torch.Tensor]]) -> None:
    for m, bufs in zip(bns, snapshot):
        for k, v in bufs.items():
            m._buffers[k].copy_(v)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside this block BatchNorm layers normalize with batch statistics as usual, but
    their running statistics (mean, var, num_batches_tracked) are restored on exit."""
    bns = bn_modules(model)
    saved = _bn_snapshot(bns)
    try:
        yield
    finally:
        _bn_restore(bns, saved)
