"""The data sets that need no files: ``digits`` (scikit-learn's), ``mnist1d`` and ``synthetic``."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random

import numpy as np
import torch

from sharpscope.errors import DataError

from ._common import stream_generator
from .readers import RawData
from .spec import DataSpec

__all__ = ["read_digits", "make_mnist1d", "make_synthetic"]

# Distance between synthetic cluster centres, in units of the unit-variance noise
_SYNTHETIC_SEPARATION = 5.0
_SYNTHETIC_SUBCLUSTERS = 2


def read_digits() -> RawData:
    """scikit-learn's bundled 8x8 digits as (1797, 1, 8, 8) values in 0..16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return RawData(x, y, None, None, num_classes=10, scale=16.0, normalize="scalar")


# MNIST-1D (Greydanus & Kobak, ICML 2024) from the mnist1d package's generator; the last few seeds' arrays kept
_MNIST1D_CACHE: dict[int, RawData] = {}
_MNIST1D_CACHE_SIZE = 4


def _mnist1d_seed(seed: int) -> int:
    """The numpy seed of ``mnist1d.make_dataset``: ``seed`` in [0, 2**32) (42: the package's default
    draw), a 32-bit hash of it otherwise."""
    if 0 <= seed < 2**32:
        return int(seed)
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}:mnist1d".encode(), digest_size=4).digest(), "little")


def make_mnist1d(seed: int) -> RawData:
    """MNIST-1D with the package's default arguments (4,000 train / 1,000 test standardized signals of
    40 points, 10 classes) and numpy seed :func:`_mnist1d_seed`; the global RNGs it seeds are restored."""
    key = _mnist1d_seed(seed)
    if key not in _MNIST1D_CACHE:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as exc:
            raise DataError(f"mnist1d: the generator package is missing ({exc}); pip install mnist1d") from None
        args = get_dataset_args()
        args.seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            made = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        while len(_MNIST1D_CACHE) >= _MNIST1D_CACHE_SIZE:
            _MNIST1D_CACHE.pop(next(iter(_MNIST1D_CACHE)))
        _MNIST1D_CACHE[key] = RawData(
            np.asarray(made["x"], dtype=np.float64), np.asarray(made["y"], dtype=np.int64),
            np.asarray(made["x_test"], dtype=np.float64), np.asarray(made["y_test"], dtype=np.int64), num_classes=10,
        )
    cached = _MNIST1D_CACHE[key]
    return dataclasses.replace(cached, x_train=cached.x_train.copy(), y_train=cached.y_train.copy(),
                               x_test=cached.x_test.copy(), y_test=cached.y_test.copy())


def make_synthetic(spec: DataSpec) -> RawData:
    """Seeded Gaussian mixture: each class is 2 unit-variance clusters whose centres lie about
    ``_SYNTHETIC_SEPARATION`` noise units apart (learnable, not linearly separable)."""
    n, k, d = spec.synthetic_size, spec.synthetic_classes, spec.synthetic_features
    gen = stream_generator(spec.seed, "synthetic")
    centres = torch.randn(k, _SYNTHETIC_SUBCLUSTERS, d, generator=gen) * (_SYNTHETIC_SEPARATION / math.sqrt(2 * d))
    y = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    sub = torch.randint(0, _SYNTHETIC_SUBCLUSTERS, (n,), generator=gen)
    x = centres[y, sub] + torch.randn(n, d, generator=gen)
    return RawData(x.numpy().astype(np.float32), y.numpy().astype(np.int64), None, None, num_classes=k)
