"""Readers of files the user put on disk: MNIST-format IDX files, the official CIFAR "binary version"
and ``.npz`` archives (read without unpickling)."""

from __future__ import annotations

import gzip
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sharpscope.errors import DataError

__all__ = ["RawData", "read_idx", "expected_files", "read_mnist", "read_cifar", "read_npz"]

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
_CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_CIFAR100_FILES = ("train.bin", "test.bin")
_CIFAR_SUBFOLDER = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
_CIFAR_PIXELS = 3 * 32 * 32
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_NPZ_EXPECTED = ("arrays X (N, D) | (N, H, W) | (N, C, H, W) and y (N,) with integer labels 0..K-1 "
                 "[optional X_test, y_test]")
_EXPECTED = {"mnist": ", ".join(f"{f}[.gz]" for f in _MNIST_FILES),
             "cifar10": ", ".join(_CIFAR10_FILES) + " (directly or in cifar-10-batches-bin/)",
             "cifar100": ", ".join(_CIFAR100_FILES) + " (directly or in cifar-100-binary/)", "npz": _NPZ_EXPECTED,
             "tokens": "train.bin, val.bin (uint16 token ids, as nanoGPT's prepare.py writes them)"}


def expected_files(name: str) -> str:
    """A human-readable list of the files data set ``name`` expects in its root ("" if none)."""
    return _EXPECTED.get("mnist" if name == "fashion-mnist" else name, "")


@dataclass
class RawData:
    """Arrays as stored (test None without an official split), pixels / ``scale`` in [0, 1], ``normalize``:
    "none", "scalar" (one mean/std over all train values) or "channel" (per-channel)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    scale: float = 1.0
    normalize: str = "none"


def _read_bytes(name: str, path: Path) -> bytes:
    """A file's bytes (``*.gz`` gunzipped); I/O problems -> DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{name}: cannot read {path}: {exc}") from None


def read_idx(path: str | os.PathLike, expected_magic: int, name: str = "idx") -> np.ndarray:
    """An IDX file of unsigned bytes (optionally gzipped) as a uint8 array of its dims; DataError
    unless the big-endian magic number (0x803 images, 0x801 labels), header and length agree."""
    path = Path(path)
    data = _read_bytes(name, path)
    if len(data) < 4:
        raise DataError(f"{name}: {path} is too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{name}: {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                        f"(IDX unsigned-byte {'images' if expected_magic == _IDX_IMAGES_MAGIC else 'labels'})")
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: {path} is truncated inside its IDX header (needs {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(f"{name}: {path} holds {len(data) - header} data bytes but its dims {dims} need {expected} "
                        "(truncated or corrupt file)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_folder(name: str, root: Path) -> None:
    if not root.exists():
        raise DataError(f"{name}: folder {root} does not exist; put {expected_files(name)} there")
    if not root.is_dir():
        raise DataError(f"{name}: {root} is not a folder; point root at a folder holding {expected_files(name)}")


def _find_idx_file(name: str, root: Path, base: str) -> Path:
    """``root/base`` or ``root/base.gz``; DataError naming the expected files if neither exists."""
    for candidate in (root / base, root / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{name}: folder {root} has no {base}[.gz]; expected {expected_files(name)} there")


def _load_idx_pair(name: str, root: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one images/labels IDX pair; images come back as (N, 1, H, W) uint8."""
    x = read_idx(_find_idx_file(name, root, images), _IDX_IMAGES_MAGIC, name)
    y = read_idx(_find_idx_file(name, root, labels), _IDX_LABELS_MAGIC, name)
    if len(x) != len(y):
        raise DataError(f"{name}: {images} holds {len(x)} images but {labels} holds {len(y)} labels in {root}")
    if len(x) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{name}: {images} in {root} is empty (dims {x.shape})")
    if y.max() >= 10:
        raise DataError(f"{name}: {labels} in {root} has label {int(y.max())}; expected 0..9")
    return x[:, None, :, :], y.astype(np.int64)


def read_mnist(name: str, root: Path) -> RawData:
    """Read the four MNIST-format IDX files (``mnist`` and ``fashion-mnist``)."""
    _check_folder(name, root)
    for base in _MNIST_FILES:
        _find_idx_file(name, root, base)  # report a missing file before parsing anything
    x_train, y_train = _load_idx_pair(name, root, _MNIST_FILES[0], _MNIST_FILES[1])
    x_test, y_test = _load_idx_pair(name, root, _MNIST_FILES[2], _MNIST_FILES[3])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: train images are {x_train.shape[2:]} but test images {x_test.shape[2:]} in {root}")
    return RawData(x_train, y_train, x_test, y_test, num_classes=10, scale=255.0, normalize="scalar")


def _cifar_folder(name: str, root: Path, files: tuple[str, ...]) -> Path:
    """The folder holding all CIFAR files: ``root`` or its official subfolder."""
    _check_folder(name, root)
    sub = root / _CIFAR_SUBFOLDER[name]
    for folder in (root, sub):
        if all((folder / f).is_file() for f in files):
            return folder
    folder = sub if sub.is_dir() and not any((root / f).is_file() for f in files) else root
    missing = [f for f in files if not (folder / f).is_file()]
    raise DataError(f"{name}: folder {folder} has no {', '.join(missing)} (also looked in "
                    f"{root if folder == sub else sub}); expected {expected_files(name)}")


def _read_cifar_file(name: str, path: Path, label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR binary file into (N, 3, 32, 32) uint8 pixels and int64 labels (last label byte)."""
    data = _read_bytes(name, path)
    record = label_bytes + _CIFAR_PIXELS
    if len(data) == 0 or len(data) % record:
        raise DataError(f"{name}: {path} has {len(data)} bytes, not a positive multiple of the {record}-byte "
                        f"record ({label_bytes} label byte(s) + {_CIFAR_PIXELS} pixel bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)
    if labels.max() >= num_classes:
        raise DataError(f"{name}: {path} has label {int(labels.max())}; expected 0..{num_classes - 1}")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def read_cifar(name: str, root: Path) -> RawData:
    """Read CIFAR-10 (5 train batches + test batch) or CIFAR-100 (fine labels) binary files."""
    files, label_bytes, k = (_CIFAR10_FILES, 1, 10) if name == "cifar10" else (_CIFAR100_FILES, 2, 100)
    folder = _cifar_folder(name, root, files)
    parts = [_read_cifar_file(name, folder / f, label_bytes, k) for f in files]
    train, (x_test, y_test) = parts[:-1], parts[-1]
    x_train = np.concatenate([p[0] for p in train]) if len(train) > 1 else train[0][0]
    y_train = np.concatenate([p[1] for p in train]) if len(train) > 1 else train[0][1]
    return RawData(x_train, y_train, x_test, y_test, num_classes=k, scale=255.0, normalize="channel")


def _npz_pair(path: Path, arrays: dict[str, np.ndarray], x_key: str, y_key: str,
              shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Checked npz inputs as (N, D) or (N, C, H, W) (examples of ``shape`` if given) and int64 labels >= 0."""
    x, y = arrays[x_key], arrays[y_key]
    if x.dtype.kind not in "iuf":
        raise DataError(f"npz: {path} array {x_key} has dtype {x.dtype}; expected real numbers")
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim not in (2, 4):
        raise DataError(f"npz: {path} array {x_key} has shape {x.shape}; expected (N, D), (N, H, W) or (N, C, H, W)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"npz: {path} array {x_key} contains NaN or infinite values")
    if shape is not None and x.shape[1:] != shape:
        raise DataError(f"npz: {path} {x_key} examples have shape {x.shape[1:]} but X has {shape}")
    n = len(x)
    if y.dtype.kind not in "iu":
        raise DataError(f"npz: {path} array {y_key} has dtype {y.dtype}; expected integer labels 0..K-1")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"npz: {path} array {y_key} has shape {y.shape}; expected ({n},) to match the inputs")
    if n and y.min() < 0:
        raise DataError(f"npz: {path} array {y_key} has negative label {int(y.min())}; expected 0..K-1")
    if n == 0:
        raise DataError(f"npz: {path} array {x_key} is empty")
    return x, y.astype(np.int64)


def _npz_arrays(path: Path, archive: Any) -> dict[str, np.ndarray]:
    """X, y (and X_test, y_test if present) of an open archive; object arrays -> DataError."""
    keys = set(archive.files)
    missing = [k for k in ("X", "y") if k not in keys]
    if missing:
        raise DataError(f"npz: {path} has no {', '.join(missing)} (found {sorted(keys)}); expected {_NPZ_EXPECTED}")
    if ("X_test" in keys) != ("y_test" in keys):
        raise DataError(f"npz: {path} must hold both X_test and y_test or neither")
    arrays = {}
    for key in ("X", "y", "X_test", "y_test"):
        if key in keys:
            try:
                arrays[key] = archive[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"npz: cannot read array {key} of {path} without unpickling ({exc}); "
                                f"expected {_NPZ_EXPECTED}") from None
    return arrays


def read_npz(path: Path) -> RawData:
    """Read an ``.npz`` archive with X, y and optionally X_test, y_test (no unpickling)."""
    if not path.is_file():
        raise DataError(f"npz: file {path} does not exist; expected an .npz archive with {_NPZ_EXPECTED}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz: cannot read {path} as an .npz archive ({exc}); expected {_NPZ_EXPECTED}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"npz: {path} is a single .npy array, not an .npz archive; expected {_NPZ_EXPECTED}")
    with archive:
        arrays = _npz_arrays(path, archive)
    x, y = _npz_pair(path, arrays, "X", "y")
    x_test, y_test = _npz_pair(path, arrays, "X_test", "y_test", x.shape[1:]) if "X_test" in arrays else (None, None)
    k = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    return RawData(x, y, x_test, y_test, num_classes=k)
