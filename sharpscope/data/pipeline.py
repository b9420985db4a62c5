"""The pipeline of :func:`load_dataset` (:mod:`sharpscope.data`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpscope.errors import ConfigError, DataError

from ._common import stream_generator
from .builtin import make_mnist1d, make_synthetic, read_digits
from .dataset import Dataset
from .noise import LabelNoise, add_label_noise
from .readers import RawData, read_cifar, read_mnist, read_npz
from .spec import TOKEN_DATASETS, DataSpec
from .text import pair_count, token_arrays, token_pairs

__all__ = ["load_raw", "load_dataset"]


def load_raw(spec: DataSpec) -> RawData:
    """The raw arrays of ``spec`` (image files as uint8 (N, C, H, W)), before split, subsets, normalization."""
    spec.validate()
    generated = {"digits": read_digits, "mnist1d": lambda: make_mnist1d(spec.seed),
                 "synthetic": lambda: make_synthetic(spec)}
    if spec.name in generated:
        return generated[spec.name]()
    root = Path(os.fspath(spec.root)).expanduser()  # validate() guarantees root is set
    if spec.name == "npz":
        return read_npz(root)
    if spec.name in ("mnist", "fashion-mnist"):
        return read_mnist(spec.name, root)
    if spec.name in TOKEN_DATASETS:
        raise DataError(f"{spec.name} is token data: load it with load_dataset (blocks of block_size tokens)")
    return read_cifar(spec.name, root)


def _split(raw: RawData, test_fraction: float, seed: int) -> RawData:
    """A train / test split by a seeded permutation (for data sets without an official one)."""
    n = len(raw.x_train)
    if n < 2:
        raise DataError(f"need at least 2 examples to make a train/test split, got {n}")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = torch.randperm(n, generator=stream_generator(seed, "split")).numpy()
    test, train = perm[:n_test], perm[n_test:]
    return dataclasses.replace(raw, x_train=raw.x_train[train], y_train=raw.y_train[train], x_test=raw.x_train[test],
                               y_test=raw.y_train[test])


def _stats(x: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of ``x`` in float64, scalars or per channel (axis 1) shaped for broadcasting; uint8
    data from value histograms (no large temporaries)."""
    channels = [x[:, c] for c in range(x.shape[1])] if per_channel else [x]
    means, stds = [], []
    for part in channels:
        if part.dtype == np.uint8:
            counts = np.bincount(part.reshape(-1), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64)
            mean = float((counts * values).sum() / counts.sum())
            var = float((counts * (values - mean) ** 2).sum() / counts.sum())
        else:
            mean, var = float(part.mean(dtype=np.float64)), float(part.var(dtype=np.float64))
        means.append(mean)
        stds.append(math.sqrt(var) if var > 1e-24 else 1.0)
    shape = (1, len(channels)) + (1,) * (x.ndim - 2) if per_channel else ()
    return np.asarray(means).reshape(shape), np.asarray(stds).reshape(shape)


def _to_float(x: np.ndarray, raw: RawData, stats: tuple[np.ndarray, np.ndarray] | None) -> torch.Tensor:
    """Float32 ``x / scale``, standardized by ``stats`` if given."""
    out = x.astype(np.float32)  # always a fresh, writable copy
    if raw.scale != 1.0:
        out /= np.float32(raw.scale)
    if stats is not None:
        mean, std = stats
        out -= (mean / raw.scale).astype(np.float32)
        out /= (std / raw.scale).astype(np.float32)
    return torch.from_numpy(out)


def _take(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` examples after a seeded shuffle (all of them, in order, if n is None)."""
    if n is None:
        return x, y
    if n > len(x):
        raise ConfigError(f"{stream}={n} is larger than the {len(x)} available examples")
    idx = torch.randperm(len(x), generator=stream_generator(seed, stream))[:n].numpy()
    return x[idx], y[idx]


def load_dataset(spec: DataSpec | str | Mapping[str, Any] | None = None, **overrides: Any) -> Dataset:
    """The data set of ``spec`` (a :class:`DataSpec`, a name or a dict; default ``DataSpec()``) with
    field ``overrides`` (unknown ones -> DataError), by the pipeline of :mod:`sharpscope.data`."""
    if spec is None:
        spec = DataSpec()
    elif isinstance(spec, str):
        spec = DataSpec(name=spec)
    elif isinstance(spec, Mapping):
        spec = DataSpec.from_dict(spec)
    elif not isinstance(spec, DataSpec):
        raise DataError(f"spec must be a DataSpec, a data set name or a dict, got {type(spec).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(DataSpec)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DataError(f"unknown data spec key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        spec = dataclasses.replace(spec, **overrides)
    spec.validate()
    if spec.name in TOKEN_DATASETS:
        return _load_tokens(spec)

    raw = load_raw(spec)
    if raw.x_test is None:
        raw = _split(raw, float(spec.test_fraction), spec.seed)
    assert raw.x_test is not None and raw.y_test is not None
    stats = None if raw.normalize == "none" else _stats(raw.x_train, raw.normalize == "channel")
    x_train, y_train = _take(raw.x_train, raw.y_train, spec.n_train, spec.seed, "n_train")
    x_test, y_test = _take(raw.x_test, raw.y_test, spec.n_test, spec.seed, "n_test")
    y_clean = torch.from_numpy(np.array(y_train, dtype=np.int64))
    y_noisy, noise = add_label_noise(y_clean, raw.num_classes, float(spec.label_noise), spec.noise_seed)
    return Dataset(spec=spec, x_train=_to_float(x_train, raw, stats), y_train=y_noisy, y_train_clean=y_clean,
                   x_test=_to_float(x_test, raw, stats), y_test=torch.from_numpy(np.array(y_test, dtype=np.int64)),
                   num_classes=raw.num_classes, noise=noise)


def _token_blocks(tokens: object, spec: DataSpec, n: int | None, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(x, y)`` blocks of one split (:func:`~.text.token_pairs`): all, or ``n`` drawn as :func:`_take` does."""
    total = pair_count(len(tokens), spec.block_size)  # type: ignore[arg-type]
    if n is None or total == 0:
        return token_pairs(tokens, spec.block_size)  # type: ignore[arg-type]
    if n > total:
        raise ConfigError(f"{stream}={n} is larger than the {total} available blocks of {spec.block_size} tokens")
    return token_pairs(tokens, spec.block_size,  # type: ignore[arg-type]
                       torch.randperm(total, generator=stream_generator(spec.seed, stream))[:n])


def _load_tokens(spec: DataSpec) -> Dataset:
    """Token data: blocks of ``spec.block_size`` tokens labelled by their next tokens (nanoGPT's
    pairs); the vocabulary is the number of classes; no label noise."""
    train, test, vocab = token_arrays(spec.name, spec.root)
    x_train, y_train = _token_blocks(train, spec, spec.n_train, "n_train")
    x_test, y_test = _token_blocks(test, spec, spec.n_test, "n_test")
    noise = LabelNoise(rate=0.0, seed=int(spec.noise_seed), n_flipped=0,
                       flipped=torch.zeros(y_train.shape, dtype=torch.bool))
    return Dataset(spec=spec, x_train=x_train, y_train=y_train, y_train_clean=y_train, x_test=x_test, y_test=y_test,
                   num_classes=vocab, noise=noise)
