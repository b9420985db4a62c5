"""A loaded data set (:class:`Dataset`): its tensors, loaders, seeded subsets and batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sharpscope.errors import ConfigError

from ._common import is_int, torch_seed
from .fingerprints import fingerprint
from .noise import LabelNoise
from .spec import TOKEN_DATASETS, DataSpec

__all__ = ["Dataset", "loss_for_labels"]


def loss_for_labels(labels: torch.Tensor) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``loss_fn(outputs, labels)`` for labels like ``labels``: ``F.cross_entropy`` for one class
    label per example (N,), :class:`~sharpscope.tokens.TokenCrossEntropy` (the mean over tokens of
    the cross-entropy of the logits (N, T, V); labels already the next tokens, so no shift;
    batches weighted by their tokens) for token labels (N, T)."""
    if labels.dim() <= 1:
        return F.cross_entropy
    from ..tokens import TokenCrossEntropy

    return TokenCrossEntropy(shift=False)


def _check_batch_size(batch_size: int) -> None:
    """Raise ConfigError unless ``batch_size`` is a positive integer."""
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


@dataclass
class Dataset:
    """A loaded data set: float32 inputs, int64 labels, and how it was built.

    ``y_train`` are the labels used for training (noisy when ``spec.label_noise > 0``);
    ``y_train_clean`` the original ones; ``y_test`` is always clean.

    Token data (:attr:`is_tokens`: ``text``, ``tokens``): int64 inputs (N, T), blocks of T
    tokens, and labels (N, T), the token after each (``num_classes`` is the vocabulary);
    :attr:`loss_fn` is then the token-mean cross-entropy.
    """

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
        """Whether the examples are token blocks with next-token labels (``spec.name`` in TOKEN_DATASETS)."""
        return self.spec.name in TOKEN_DATASETS

    @property
    def loss_fn(self) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """``loss_fn(outputs, labels)`` its batches are scored with (:func:`loss_for_labels`):
        ``F.cross_entropy`` over the classes, or for token data the token-mean cross-entropy."""
        return loss_for_labels(self.y_train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    def train_loader(
        self, batch_size: int = 256, shuffle: bool = False, seed: int = 0, clean_labels: bool = False
    ) -> DataLoader:
        """Return a DataLoader over the training set (noisy labels unless ``clean_labels``).

        With ``shuffle`` the order is drawn from a private generator seeded with ``seed``.
        Every example appears exactly once per pass (the last batch may be smaller).
        """
        _check_batch_size(batch_size)
        labels = self.y_train_clean if clean_labels else self.y_train
        generator = torch.Generator().manual_seed(torch_seed(seed)) if shuffle else None
        return DataLoader(
            TensorDataset(self.x_train, labels), batch_size=int(batch_size), shuffle=bool(shuffle), generator=generator
        )

    def test_loader(self, batch_size: int = 256) -> DataLoader:
        """Return an unshuffled DataLoader over the (clean) test set."""
        _check_batch_size(batch_size)
        return DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=int(batch_size), shuffle=False)

    def subset(self, split: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a seeded random subset ``(x, y)`` of size ``n`` of "train" (noisy labels) or "test".

        ``n=None`` returns the whole split in stored order.  Unknown split, ``n < 1`` or ``n``
        larger than the split -> ConfigError.
        """
        if split == "train":
            x, y = self.x_train, self.y_train
        elif split == "test":
            x, y = self.x_test, self.y_test
        else:
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        if n is None:
            return x, y
        if not is_int(n) or n < 1 or n > len(x):
            raise ConfigError(f"subset size must be an integer in 1..{len(x)} for split {split!r}, got {n!r}")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(torch_seed(seed)))[: int(n)]
        return x[idx], y[idx]

    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the training split as trained on (labels after noise): see
        :func:`fingerprint`."""
        return fingerprint(self.x_train, self.y_train, self.num_classes)

    def batches(self, split: str = "train", samples: int | None = None, batch_size: int = 256,
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of ``(x, y)`` batches of ``split`` (optionally a seeded subset of
        ``samples`` examples), in order: the input of every analysis."""
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        x, y = self.subset(split, samples, seed)
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
