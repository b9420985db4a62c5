"""Symmetric label noise (Zhang et al. 2017; the SAM paper's noisy-label setting)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sharpscope.checks import is_int
from sharpscope.errors import ConfigError, DataError

from ._common import is_real, torch_seed

__all__ = ["LabelNoise", "add_label_noise"]


@dataclass(frozen=True, eq=False)
class LabelNoise:
    """What :func:`add_label_noise` did: ``flipped``, True where a label changed, and its sum."""

    rate: float
    seed: int
    n_flipped: int
    flipped: torch.Tensor


def add_label_noise(labels: torch.Tensor, num_classes: int, rate: float, seed: int) -> tuple[torch.Tensor, LabelNoise]:
    """Exactly ``round(rate * N)`` random examples get a label drawn uniformly from all classes
    (possibly their own), by a generator seeded with ``seed``; a new int64 tensor and the record."""
    if not is_real(rate) or not 0.0 <= float(rate) < 1.0:
        raise ConfigError(f"label noise rate must be in [0, 1), got {rate!r}")
    if not is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not is_int(seed):
        raise ConfigError(f"label noise seed must be an integer, got {seed!r}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"labels must be a 1-D integer tensor, got dtype {labels.dtype} shape {tuple(labels.shape)}")
    labels = labels.to(torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    n = labels.numel()
    n_redraw = round(float(rate) * n)
    noisy = labels.clone()
    if n_redraw > 0:
        gen = torch.Generator().manual_seed(torch_seed(seed))
        idx = torch.randperm(n, generator=gen)[:n_redraw]
        noisy[idx] = torch.randint(0, num_classes, (n_redraw,), generator=gen, dtype=torch.int64)
    flipped = noisy != labels
    info = LabelNoise(rate=float(rate), seed=int(seed), n_flipped=int(flipped.sum()), flipped=flipped)
    return noisy, info
