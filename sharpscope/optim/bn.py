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


def bn_snapshot(bns: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    """Copies of the buffers (running statistics) of the BatchNorm layers ``bns``."""
    return [{k: v.clone() for k, v in m._buffers.items() if v is not None} for m in bns]


@torch.no_grad()
def bn_restore(bns: list[nn.Module], snapshot: list[dict[str, torch.Tensor]]) -> None:
    """Copy a :func:`bn_snapshot` back into the buffers of ``bns``, in place."""
    for m, bufs in zip(bns, snapshot):
        for k, v in bufs.items():
            m._buffers[k].copy_(v)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm's running statistics are the same after this block (batch statistics as usual
    inside). Each buffer is replaced by a copy inside and the untouched original put back, so
    graphs that saved the buffers stay valid (backward inside or after the block)."""
    bns = bn_modules(model)
    originals = [dict(m._buffers) for m in bns]
    for m, bufs in zip(bns, originals):
        for k, v in bufs.items():
            if v is not None:
                m._buffers[k] = v.clone()
    try:
        yield
    finally:
        for m, bufs in zip(bns, originals):
            m._buffers.update(bufs)
