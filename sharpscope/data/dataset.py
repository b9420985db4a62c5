"""A loaded data set (:class:`Dataset`): its tensors, loaders, seeded subsets and batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sharpscope.checks import int_at_least, is_int
from sharpscope.errors import ConfigError

from ._common import torch_seed
from .fingerprints import fingerprint
from .noise import LabelNoise
from .spec import TOKEN_DATASETS, DataSpec

__all__ = ["Dataset", "loss_for_labels"]


def loss_for_labels(labels: torch.Tensor) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``F.cross_entropy`` for class labels (N,); for token labels (N, T), already the next tokens,
    :class:`~sharpscope.tokens.TokenCrossEntropy` without shift (the token-mean cross-entropy)."""
    if labels.dim() <= 1:
        return F.cross_entropy
    from ..tokens import TokenCrossEntropy

    return TokenCrossEntropy(shift=False)


def _check_batch_size(batch_size: int) -> None:
    int_at_least("batch_size", batch_size, 1)


@dataclass
class Dataset:
    """A loaded data set: float32 inputs (token data: int64 (N, T)), int64 labels (``y_train`` noisy under
    label noise; token data: the next tokens, ``num_classes`` the vocabulary) and its spec."""

    spec: DataSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_clean: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    noise: LabelNoise

    @property
    def is_tokens(self) -> bool:
        """Whether the examples are token blocks with next-token labels."""
        return self.spec.name in TOKEN_DATASETS

    @property
    def loss_fn(self) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """``loss_fn(outputs, labels)`` its batches are scored with (:func:`loss_for_labels`)."""
        return loss_for_labels(self.y_train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    def train_loader(self, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                     clean_labels: bool = False) -> DataLoader:
        """A DataLoader over the training set (noisy labels unless ``clean_labels``), shuffled by a
        private generator seeded with ``seed``."""
        _check_batch_size(batch_size)
        labels = self.y_train_clean if clean_labels else self.y_train
        generator = torch.Generator().manual_seed(torch_seed(seed)) if shuffle else None
        return DataLoader(TensorDataset(self.x_train, labels), batch_size=int(batch_size), shuffle=bool(shuffle),
                          generator=generator)

    def test_loader(self, batch_size: int = 256) -> DataLoader:
        """An unshuffled DataLoader over the (clean) test set."""
        _check_batch_size(batch_size)
        return DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=int(batch_size), shuffle=False)

    def subset(self, split: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded random subset ``(x, y)`` of ``n`` examples of "train" (noisy labels) or "test"; the
        whole split in order for ``n=None``; ConfigError for an unknown split or a bad ``n``."""
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        if n is None:
            return x, y
        if not is_int(n) or n < 1 or n > len(x):
            raise ConfigError(f"subset size must be an integer in 1..{len(x)} for split {split!r}, got {n!r}")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(torch_seed(seed)))[: int(n)]
        return x[idx], y[idx]

    def fingerprint(self) -> dict[str, Any]:
        """:func:`fingerprint` of the training split as trained on (labels after noise)."""
        return fingerprint(self.x_train, self.y_train, self.num_classes)

    def batches(self, split: str = "train", samples: int | None = None, batch_size: int = 256,
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of ``(x, y)`` batches of ``split`` (or of a seeded subset of ``samples``)."""
        _check_batch_size(batch_size)
        x, y = self.subset(split, samples, seed)
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
