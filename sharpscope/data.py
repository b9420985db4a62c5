"""Data sets for sharpscope: loading, splitting, normalization and symmetric label noise.

Everything here is offline: ``digits`` is bundled with scikit-learn, ``mnist1d`` and ``synthetic``
are generated,
and ``npz`` / ``mnist`` / ``fashion-mnist`` / ``cifar10`` / ``cifar100`` are read from files the
user has already put on disk (raw IDX files, the official CIFAR "binary version", or an ``.npz``
archive).  Nothing is ever downloaded.

The pipeline of :func:`load_dataset` is

1. read the raw arrays (:func:`load_raw`; ``uint8`` pixels for image files),
2. split into train / test with ``spec.seed`` when the data set has no official split,
3. compute normalization statistics on the (whole) train part,
4. take the optional seeded ``n_train`` / ``n_test`` subsets,
5. convert to ``float32`` and normalize,
6. apply symmetric label noise to the training labels only (:func:`add_label_noise`).

All randomness comes from private ``torch.Generator`` objects; the global RNGs are never used.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import random
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from sharpscope.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "DataSpec",
    "LabelNoise",
    "Dataset",
    "RawData",
    "load_dataset",
    "load_raw",
    "analysis_data_spec",
    "add_label_noise",
    "read_idx",
    "fingerprint",
    "fingerprint_differences",
    "spec_differences",
]

DATASETS: tuple[str, ...] = ("digits", "mnist1d", "synthetic", "npz", "mnist", "fashion-mnist", "cifar10", "cifar100")

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_CIFAR100_FILES = ("train.bin", "test.bin")
_CIFAR_SUBFOLDER = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
_CIFAR_PIXELS = 3 * 32 * 32
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_NPZ_EXPECTED = (
    "arrays X (N, D) | (N, H, W) | (N, C, H, W) and y (N,) with integer labels 0..K-1 "
    "[optional X_test, y_test]"
)
# Distance scale between synthetic cluster centres (in units of the unit-variance noise):
# a linear model reaches roughly 85 % test accuracy, an MLP roughly 90 %.
_SYNTHETIC_SEPARATION = 5.0
_SYNTHETIC_SUBCLUSTERS = 2


def _expected_files(name: str) -> str:
    """Return a human-readable list of the files data set ``name`` expects in its root."""
    if name in ("mnist", "fashion-mnist"):
        return ", ".join(f"{f}[.gz]" for f in _MNIST_FILES)
    if name == "cifar10":
        return ", ".join(_CIFAR10_FILES) + f" (directly or in {_CIFAR_SUBFOLDER['cifar10']}/)"
    if name == "cifar100":
        return ", ".join(_CIFAR100_FILES) + f" (directly or in {_CIFAR_SUBFOLDER['cifar100']}/)"
    if name == "npz":
        return _NPZ_EXPECTED
    return ""


def _is_int(value: Any) -> bool:
    """Return True for a real integer (``bool`` excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """Return True for a real number (int or float, ``bool`` excluded)."""
    return _is_int(value) or isinstance(value, (float, np.floating))


# --------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to (re)build a :class:`Dataset` deterministically.

    ``root`` is a folder for ``mnist`` / ``fashion-mnist`` / ``cifar10`` / ``cifar100`` and an
    ``.npz`` file path for ``npz``; it is ignored by ``digits``, ``mnist1d`` and ``synthetic``.
    ``seed`` also generates ``mnist1d`` (and ``synthetic``); data sets with an official test split
    (``mnist1d``, the file-backed ones given a test part) ignore ``test_fraction``.
    """

    name: str = "digits"
    root: str | None = None
    seed: int = 0
    test_fraction: float = 0.2
    label_noise: float = 0.0
    noise_seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    synthetic_size: int = 512
    synthetic_classes: int = 4
    synthetic_features: int = 16

    def to_dict(self) -> dict[str, Any]:
        """Return a plain JSON-able dict (values are only str / int / float / None)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, str):
                out[f.name] = value
            elif f.name == "root":
                out[f.name] = os.fspath(value)
            elif _is_int(value):
                out[f.name] = int(value)
            elif _is_real(value):
                out[f.name] = float(value)
            else:
                out[f.name] = value  # invalid; validate() reports it
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        """Build a spec from a dict (e.g. one made by :meth:`to_dict`) and validate it.

        Unknown keys raise :class:`DataError`; missing keys take their defaults.
        """
        if not isinstance(d, Mapping):
            raise DataError(f"data spec must be a dict, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise DataError(f"unknown data spec key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        spec = cls(**dict(d))
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check every field; raise :class:`DataError` or :class:`ConfigError` on the first problem.

        Unknown name or a missing ``root`` for a file-backed data set -> DataError; wrongly typed or
        out-of-range options (label_noise outside [0, 1), test_fraction outside (0, 1), ...) ->
        ConfigError.
        """
        if not isinstance(self.name, str) or self.name not in DATASETS:
            raise DataError(f"unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        self._validate_types()
        if not 0.0 <= float(self.label_noise) < 1.0:
            raise ConfigError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for key in ("n_train", "n_test"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be None or >= 1, got {value}")
        if self.name == "synthetic":
            self._validate_synthetic()
        if self.name in ("npz", "mnist", "fashion-mnist", "cifar10", "cifar100") and self.root is None:
            what = "an .npz file path" if self.name == "npz" else "a folder"
            raise DataError(
                f"{self.name}: no root given; set root (--data-root) to {what} holding {_expected_files(self.name)}"
            )

    def _validate_types(self) -> None:
        """Raise ConfigError when a field has the wrong type."""
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise ConfigError(f"root must be a path string or None, got {type(self.root).__name__}")
        for key in ("seed", "noise_seed", "synthetic_size", "synthetic_classes", "synthetic_features"):
            if not _is_int(getattr(self, key)):
                raise ConfigError(f"{key} must be an integer, got {getattr(self, key)!r}")
        for key in ("n_train", "n_test"):
            value = getattr(self, key)
            if value is not None and not _is_int(value):
                raise ConfigError(f"{key} must be an integer or None, got {value!r}")
        for key in ("test_fraction", "label_noise"):
            value = getattr(self, key)
            if not _is_real(value) or not math.isfinite(float(value)):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")

    def _validate_synthetic(self) -> None:
        """Raise ConfigError for unusable synthetic sizes."""
        if self.synthetic_size < 2:
            raise ConfigError(f"synthetic_size must be >= 2, got {self.synthetic_size}")
        if self.synthetic_classes < 2:
            raise ConfigError(f"synthetic_classes must be >= 2, got {self.synthetic_classes}")
        if self.synthetic_features < 1:
            raise ConfigError(f"synthetic_features must be >= 1, got {self.synthetic_features}")


# --------------------------------------------------------------------------------------------
# Label noise
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LabelNoise:
    """What :func:`add_label_noise` did to a label vector.

    ``flipped`` is a bool mask over the training examples, True where the label changed;
    ``n_flipped`` is its sum.  (``eq=False``: tensors have no single truth value.)
    """

    rate: float
    seed: int
    n_flipped: int
    flipped: torch.Tensor


def _torch_seed(seed: int) -> int:
    """Map any Python int onto the range ``torch.Generator.manual_seed`` accepts."""
    return int(seed) % (1 << 64)


def _generator(seed: int, stream: str) -> torch.Generator:
    """Return a fresh generator for an independent named random stream derived from ``seed``."""
    digest = hashlib.blake2b(f"{int(seed)}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def add_label_noise(
    labels: torch.Tensor, num_classes: int, rate: float, seed: int
) -> tuple[torch.Tensor, LabelNoise]:
    """Apply symmetric label noise (Zhang et al. 2017; the SAM paper's noisy-label setting).

    Exactly ``round(rate * N)`` examples, chosen at random, get a label drawn uniformly from all
    ``num_classes`` classes (possibly their old one; ``n_flipped`` counts real changes).  Uses its
    own ``torch.Generator`` seeded with ``seed``.  Returns a new int64 tensor and a
    :class:`LabelNoise`; ``labels`` is not modified.  ``rate`` outside [0, 1) -> ConfigError.
    """
    if not _is_real(rate) or not 0.0 <= float(rate) < 1.0:
        raise ConfigError(f"label noise rate must be in [0, 1), got {rate!r}")
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_int(seed):
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
        gen = torch.Generator().manual_seed(_torch_seed(seed))
        idx = torch.randperm(n, generator=gen)[:n_redraw]
        noisy[idx] = torch.randint(0, num_classes, (n_redraw,), generator=gen, dtype=torch.int64)
    flipped = noisy != labels
    info = LabelNoise(rate=float(rate), seed=int(seed), n_flipped=int(flipped.sum()), flipped=flipped)
    return noisy, info


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
    """Raise ConfigError unless ``batch_size`` is a positive integer."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


@dataclass
class Dataset:
    """A loaded data set: float32 inputs, int64 labels, and how it was built.

    ``y_train`` are the labels used for training (noisy when ``spec.label_noise > 0``);
    ``y_train_clean`` the original ones; ``y_test`` is always clean.
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
        generator = torch.Generator().manual_seed(_torch_seed(seed)) if shuffle else None
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
        if not _is_int(n) or n < 1 or n > len(x):
            raise ConfigError(f"subset size must be an integer in 1..{len(x)} for split {split!r}, got {n!r}")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(_torch_seed(seed)))[: int(n)]
        return x[idx], y[idx]

    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the training split as trained on (labels after noise): see
        :func:`fingerprint`."""
        return fingerprint(self.x_train, self.y_train, self.num_classes)

    def batches(self, split: str = "train", samples: int | None = None, batch_size: int = 256,
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of ``(x, y)`` batches of ``split`` (optionally a seeded subset of
        ``samples`` examples), in order: the input of every analysis."""
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        x, y = self.subset(split, samples, seed)
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


# --------------------------------------------------------------------------------------------
# Fingerprints: what a checkpoint records of the data it was trained on
# --------------------------------------------------------------------------------------------

FINGERPRINT_VERSION = 1


def _sha256(t: torch.Tensor, dtype: torch.dtype) -> str:
    """SHA-256 of the C-contiguous bytes of ``t`` as ``dtype`` on the CPU (hashed in place: no
    copy of a tensor that is already so)."""
    return hashlib.sha256(t.detach().to("cpu", dtype).contiguous().numpy()).hexdigest()


def fingerprint(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> dict[str, Any]:
    """What identifies a training split: ``n_examples`` (N), ``input_shape`` (the shape of one
    example), ``num_classes`` (K, the data set's; ``max(y) + 1`` when not given), ``class_counts``
    (how many labels equal each class 0..K-1) and the SHA-256 of the inputs as float32 and of the
    labels as int64 (C order, native byte order), the labels as trained on (after label noise).

    Two splits with equal fingerprints hold the same examples in the same order, up to a hash
    collision. Hashing 50,000 CIFAR images (614 MB as float32) takes about 1.2 s on one core.
    """
    y = torch.as_tensor(y)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"labels of shape {tuple(y.shape)} do not match inputs of shape {tuple(x.shape)}")
    y64 = y.to("cpu", torch.int64)
    k = int(num_classes) if num_classes is not None else (int(y64.max()) + 1 if y64.numel() else 0)
    if y64.numel() and (int(y64.min()) < 0 or int(y64.max()) >= k):
        raise DataError(f"labels must lie in 0..{k - 1}, got {int(y64.min())}..{int(y64.max())}")
    return {
        "version": FINGERPRINT_VERSION,
        "n_examples": int(len(x)),
        "input_shape": [int(d) for d in x.shape[1:]],
        "num_classes": k,
        "class_counts": torch.bincount(y64, minlength=k).tolist(),
        "inputs_sha256": _sha256(torch.as_tensor(x), torch.float32),
        "labels_sha256": _sha256(y64, torch.int64),
    }


def _classes_difference(a: Mapping[str, Any], b: Mapping[str, Any], first: str, second: str) -> str | None:
    """'3 classes recorded, 5 now', or where the number agrees the first class whose count
    differs ('class 1: 27 examples recorded, 25 now'); None when both agree."""
    if a.get("num_classes") != b.get("num_classes"):
        return f"{a.get('num_classes')} classes {first}, {b.get('num_classes')} {second}"
    ca, cb = list(a.get("class_counts") or []), list(b.get("class_counts") or [])
    for k, (x, y) in enumerate(zip(ca, cb)):
        if x != y:
            more = sum(u != v for u, v in zip(ca, cb)) - 1
            return (f"class {k}: {x} examples {first}, {y} {second}"
                    + (f" (and {more} more classes' counts differ)" if more else ""))
    return None if ca == cb else f"class counts {ca} {first}, {cb} {second}"


def fingerprint_differences(recorded: Mapping[str, Any], current: Mapping[str, Any],
                            names: tuple[str, str] = ("recorded", "now")) -> list[str]:
    """What differs between two fingerprints (:func:`fingerprint`), one phrase each, the first
    value first ("1200 examples recorded, 1437 now"; ``names`` say what the two are); [] when
    they agree. A hash is named only where the sizes do not already explain it: the inputs'
    where the number of examples and the input shape agree, the labels' where the number of
    examples and the class counts agree."""
    first, second = names

    def same(key: str) -> bool:
        return list(recorded.get(key) or []) == list(current.get(key) or [])

    same_n = recorded.get("n_examples") == current.get("n_examples")
    out = []
    if not same_n:
        out.append(f"{recorded.get('n_examples')} examples {first}, {current.get('n_examples')} {second}")
    if not same("input_shape"):
        out.append(f"input shape {tuple(recorded.get('input_shape') or [])} {first}, "
                   f"{tuple(current.get('input_shape') or [])} {second}")
    classes = _classes_difference(recorded, current, first, second)
    if classes is not None:
        out.append(classes)
    for what, comparable in (("inputs", same_n and same("input_shape")), ("labels", same_n and same("class_counts"))):
        key = f"{what}_sha256"
        if comparable and recorded.get(key) != current.get(key):
            out.append(f"the {what} differ (SHA-256 {str(recorded.get(key))[:12]} {first}, "
                       f"{str(current.get(key))[:12]} {second})")
    return out


# The fields of a data spec that choose the training split (n_test and the root's spelling do not).
_TRAIN_SPLIT_FIELDS = ("name", "seed", "test_fraction", "label_noise", "noise_seed", "n_train", "synthetic_size",
                       "synthetic_classes", "synthetic_features")


def spec_differences(a: Mapping[str, Any], b: Mapping[str, Any], *, root: bool = True,
                     names: tuple[str, str] = ("in a", "in b")) -> list[str]:
    """The data-spec fields in which ``a`` and ``b`` (dicts of :meth:`DataSpec.to_dict`) choose
    different training splits, as "seed 0 in a, 1 in b" phrases (``names`` say what the two
    are); ``root`` (the file or folder) is
    compared too unless ``root=False`` (when fingerprints compare the contents instead).
    Missing fields take :class:`DataSpec`'s defaults."""
    default = DataSpec().to_dict()
    fields = _TRAIN_SPLIT_FIELDS + (("root",) if root else ())
    value = {key: (a.get(key, default.get(key)), b.get(key, default.get(key))) for key in fields}
    irrelevant = set()
    if not any(value["label_noise"]):
        irrelevant.add("noise_seed")  # no label noise: its seed draws nothing
    if value["name"] != ("synthetic", "synthetic"):
        irrelevant.update(k for k in fields if k.startswith("synthetic_"))
    out = []
    for key in (k for k in fields if k not in irrelevant):
        va, vb = value[key]
        if va != vb:
            out.append(f"{key} {va!r} {names[0]}, {vb!r} {names[1]}")
    return out


# --------------------------------------------------------------------------------------------
# Raw readers
# --------------------------------------------------------------------------------------------


@dataclass
class RawData:
    """Arrays as stored on disk, before split, subsetting and normalization.

    ``x_test`` / ``y_test`` are None when the data set has no official split.  ``scale`` is what
    pixels are divided by to reach [0, 1] (255 for uint8 images); ``normalize`` is "none",
    "scalar" (one mean/std over all train values) or "channel" (per-channel mean/std).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    scale: float = 1.0
    normalize: str = "none"


def _read_bytes(name: str, path: Path) -> bytes:
    """Read a file (transparently gunzipping ``*.gz``); I/O problems -> DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{name}: cannot read {path}: {exc}") from None


def read_idx(path: str | os.PathLike, expected_magic: int, name: str = "idx") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (optionally gzipped) into a uint8 array of its dims.

    Checks the big-endian magic number (0x00000803 images, 0x00000801 labels), that the header
    is complete and that the data length equals the product of the dims; otherwise DataError.
    """
    path = Path(path)
    data = _read_bytes(name, path)
    if len(data) < 4:
        raise DataError(f"{name}: {path} is too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{name}: {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(IDX unsigned-byte {'images' if expected_magic == _IDX_IMAGES_MAGIC else 'labels'})"
        )
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: {path} is truncated inside its IDX header (needs {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(
            f"{name}: {path} holds {len(data) - header} data bytes but its dims {dims} need {expected} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_folder(name: str, root: Path) -> None:
    """Raise DataError when ``root`` is not an existing folder."""
    if not root.exists():
        raise DataError(f"{name}: folder {root} does not exist; put {_expected_files(name)} there")
    if not root.is_dir():
        raise DataError(f"{name}: {root} is not a folder; point root at a folder holding {_expected_files(name)}")


def _find_idx_file(name: str, root: Path, base: str) -> Path:
    """Return ``root/base`` or ``root/base.gz``; DataError naming the expected files if neither exists."""
    for candidate in (root / base, root / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{name}: folder {root} has no {base}[.gz]; expected {_expected_files(name)} there")


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


def _load_mnist(name: str, root: Path) -> RawData:
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
    """Return the folder holding all CIFAR files: ``root`` or its official subfolder."""
    _check_folder(name, root)
    sub = root / _CIFAR_SUBFOLDER[name]
    for folder in (root, sub):
        if all((folder / f).is_file() for f in files):
            return folder
    folder = sub if sub.is_dir() and not any((root / f).is_file() for f in files) else root
    missing = [f for f in files if not (folder / f).is_file()]
    raise DataError(
        f"{name}: folder {folder} has no {', '.join(missing)} (also looked in {root if folder == sub else sub}); "
        f"expected {_expected_files(name)}"
    )


def _read_cifar_file(name: str, path: Path, label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR binary file into (N, 3, 32, 32) uint8 pixels and int64 labels (last label byte)."""
    data = _read_bytes(name, path)
    record = label_bytes + _CIFAR_PIXELS
    if len(data) == 0 or len(data) % record:
        raise DataError(
            f"{name}: {path} has {len(data)} bytes, not a positive multiple of the {record}-byte record "
            f"({label_bytes} label byte(s) + {_CIFAR_PIXELS} pixel bytes)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)
    if labels.max() >= num_classes:
        raise DataError(f"{name}: {path} has label {int(labels.max())}; expected 0..{num_classes - 1}")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _load_cifar(name: str, root: Path) -> RawData:
    """Read CIFAR-10 (5 train batches + test batch) or CIFAR-100 (fine labels) binary files."""
    if name == "cifar10":
        files, label_bytes, k = _CIFAR10_FILES, 1, 10
    else:
        files, label_bytes, k = _CIFAR100_FILES, 2, 100
    folder = _cifar_folder(name, root, files)
    parts = [_read_cifar_file(name, folder / f, label_bytes, k) for f in files]
    train, (x_test, y_test) = parts[:-1], parts[-1]
    x_train = np.concatenate([p[0] for p in train]) if len(train) > 1 else train[0][0]
    y_train = np.concatenate([p[1] for p in train]) if len(train) > 1 else train[0][1]
    return RawData(x_train, y_train, x_test, y_test, num_classes=k, scale=255.0, normalize="channel")


def _npz_inputs(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """Validate an npz input array and return it as (N, D) or (N, C, H, W)."""
    if x.dtype.kind not in "iuf":
        raise DataError(f"npz: {path} array {key} has dtype {x.dtype}; expected real numbers")
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim not in (2, 4):
        raise DataError(f"npz: {path} array {key} has shape {x.shape}; expected (N, D), (N, H, W) or (N, C, H, W)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"npz: {path} array {key} contains NaN or infinite values")
    return x


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    """Validate an npz label array (1-D, integer, >= 0, length n) and return it as int64."""
    if y.dtype.kind not in "iu":
        raise DataError(f"npz: {path} array {key} has dtype {y.dtype}; expected integer labels 0..K-1")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"npz: {path} array {key} has shape {y.shape}; expected ({n},) to match the inputs")
    if n and y.min() < 0:
        raise DataError(f"npz: {path} array {key} has negative label {int(y.min())}; expected 0..K-1")
    return y.astype(np.int64)


def _npz_arrays(path: Path, archive: Any) -> dict[str, np.ndarray]:
    """Return X, y (and X_test, y_test if present) from an open archive; object arrays -> DataError."""
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
                raise DataError(
                    f"npz: cannot read array {key} of {path} without unpickling ({exc}); expected {_NPZ_EXPECTED}"
                ) from None
    return arrays


def _load_npz(path: Path) -> RawData:
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
    x = _npz_inputs(path, "X", arrays["X"])
    y = _npz_labels(path, "y", arrays["y"], len(x))
    if len(x) == 0:
        raise DataError(f"npz: {path} array X is empty")
    x_test = y_test = None
    if "X_test" in arrays:
        x_test = _npz_inputs(path, "X_test", arrays["X_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"npz: {path} X_test examples have shape {x_test.shape[1:]} but X has {x.shape[1:]}")
        y_test = _npz_labels(path, "y_test", arrays["y_test"], len(x_test))
        if len(x_test) == 0:
            raise DataError(f"npz: {path} array X_test is empty")
    k = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    return RawData(x, y, x_test, y_test, num_classes=k)


def _load_digits() -> RawData:
    """Return scikit-learn's bundled 8x8 digits as (1797, 1, 8, 8) values in 0..16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return RawData(x, y, None, None, num_classes=10, scale=16.0, normalize="scalar")


# MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024): ten 1-D
# digit templates padded, scaled, translated, sheared and noised into 40-point signals by the
# mnist1d package's own generator. Generated in memory (about 1 s for the default 5,000 signals);
# the last few seeds' arrays are kept for this process only.
_MNIST1D_CACHE: dict[int, RawData] = {}
_MNIST1D_CACHE_SIZE = 4


def _mnist1d_seed(seed: int) -> int:
    """The numpy seed of ``mnist1d.make_dataset``: ``seed`` itself in [0, 2**32) (so seed 42 is the
    package's default draw), a 32-bit hash of it otherwise."""
    if 0 <= seed < 2**32:
        return int(seed)
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}:mnist1d".encode(), digest_size=4).digest(), "little")


def _make_mnist1d(seed: int) -> RawData:
    """MNIST-1D with the package's default arguments (4,000 train / 1,000 test signals of 40
    points, 10 balanced classes, already standardized by the generator) and numpy seed
    :func:`_mnist1d_seed`. The generator seeds numpy's and Python's global RNGs; both are
    restored afterwards, so loading the data leaves every global RNG as it was."""
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


def _make_synthetic(spec: DataSpec) -> RawData:
    """Generate seeded Gaussian-mixture classification data: each class is 2 unit-variance clusters.

    Cluster centres are drawn with a scale that puts centres about ``_SYNTHETIC_SEPARATION``
    noise units apart, so classes are learnable but overlap (not linearly separable).
    """
    n, k, d = spec.synthetic_size, spec.synthetic_classes, spec.synthetic_features
    gen = _generator(spec.seed, "synthetic")
    centres = torch.randn(k, _SYNTHETIC_SUBCLUSTERS, d, generator=gen) * (_SYNTHETIC_SEPARATION / math.sqrt(2 * d))
    y = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    sub = torch.randint(0, _SYNTHETIC_SUBCLUSTERS, (n,), generator=gen)
    x = centres[y, sub] + torch.randn(n, d, generator=gen)
    return RawData(x.numpy().astype(np.float32), y.numpy().astype(np.int64), None, None, num_classes=k)


def load_raw(spec: DataSpec) -> RawData:
    """Read (or generate) the raw arrays of ``spec`` without splitting, subsetting or normalizing.

    Image files come back as uint8 (N, C, H, W); ``x_test`` is None where there is no official split.
    """
    spec.validate()
    if spec.name == "digits":
        return _load_digits()
    if spec.name == "mnist1d":
        return _make_mnist1d(spec.seed)
    if spec.name == "synthetic":
        return _make_synthetic(spec)
    root = Path(os.fspath(spec.root)).expanduser()  # validate() guarantees root is set
    if spec.name == "npz":
        return _load_npz(root)
    if spec.name in ("mnist", "fashion-mnist"):
        return _load_mnist(spec.name, root)
    return _load_cifar(spec.name, root)


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def _split(raw: RawData, test_fraction: float, seed: int) -> RawData:
    """Split a data set without an official test set by a seeded permutation."""
    n = len(raw.x_train)
    if n < 2:
        raise DataError(f"need at least 2 examples to make a train/test split, got {n}")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = torch.randperm(n, generator=_generator(seed, "split")).numpy()
    test, train = perm[:n_test], perm[n_test:]
    return dataclasses.replace(
        raw, x_train=raw.x_train[train], y_train=raw.y_train[train], x_test=raw.x_train[test], y_test=raw.y_train[test]
    )


def _stats(x: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, std) of ``x`` in float64: scalars, or per channel (axis 1) shaped for broadcasting.

    uint8 data is summarized from value histograms, so no large temporary arrays are made.
    """
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
    """Convert raw inputs to float32 ``x / scale`` and, if ``stats`` are given, standardize them."""
    out = x.astype(np.float32)  # always a fresh, writable copy
    if raw.scale != 1.0:
        out /= np.float32(raw.scale)
    if stats is not None:
        mean, std = stats
        out -= (mean / raw.scale).astype(np.float32)
        out /= (std / raw.scale).astype(np.float32)
    return torch.from_numpy(out)


def _take(
    x: np.ndarray, y: np.ndarray, n: int | None, seed: int, stream: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return the first ``n`` examples after a seeded shuffle (all of them, in order, if n is None)."""
    if n is None:
        return x, y
    if n > len(x):
        raise ConfigError(f"{what}={n} is larger than the {len(x)} available examples")
    idx = torch.randperm(len(x), generator=_generator(seed, stream))[:n].numpy()
    return x[idx], y[idx]


def analysis_data_spec(stored: Mapping[str, Any] | None, name: str | None = None, root: str | None = None,
                       where: str = "the checkpoint") -> DataSpec:
    """The data an analysis of a checkpoint loads: the spec it recorded (``stored``), or the one
    the user names instead (the CLI's ``--data`` / ``--data-root``).

    - ``name`` other than the recorded one (or nothing recorded): that data set with its default
      split and no label noise, at ``root``;
    - ``name`` equal to the recorded one, or ``root`` alone: the recorded spec (its split seed,
      subset and label noise) with ``root`` replaced, e.g. for files that moved.

    :class:`DataError` when nothing is recorded and no ``name`` is given."""
    given_root = None if root is None else os.path.abspath(os.path.expanduser(str(root)))
    if not stored and name is None:
        extra = " (--data-root alone replaces a recorded data set's root)" if root is not None else ""
        raise DataError(f"{where} records no data set; name one with --data NAME [--data-root PATH]{extra}, or "
                        "store it once with sharpscope.save_checkpoint(..., data_spec={'name': ..., 'root': ...})")
    if stored and (name is None or name == stored.get("name")):
        spec = DataSpec.from_dict(stored)
        if given_root is not None:
            spec = dataclasses.replace(spec, root=given_root)
    else:
        spec = DataSpec(name=str(name), root=given_root)
    spec.validate()
    return spec


def load_dataset(spec: DataSpec | str | Mapping[str, Any] | None = None, **overrides: Any) -> Dataset:
    """Load a data set described by ``spec`` (default ``DataSpec()``) with field ``overrides`` applied.

    ``spec`` may also be a data set name or a dict for :meth:`DataSpec.from_dict`.  Unknown
    override keys -> DataError.  See the module docstring for the pipeline.
    """
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

    raw = load_raw(spec)
    if raw.x_test is None:
        raw = _split(raw, float(spec.test_fraction), spec.seed)
    assert raw.x_test is not None and raw.y_test is not None
    stats = None if raw.normalize == "none" else _stats(raw.x_train, raw.normalize == "channel")
    x_train, y_train = _take(raw.x_train, raw.y_train, spec.n_train, spec.seed, "n_train", "n_train")
    x_test, y_test = _take(raw.x_test, raw.y_test, spec.n_test, spec.seed, "n_test", "n_test")

    y_clean = torch.from_numpy(np.array(y_train, dtype=np.int64))
    y_noisy, noise = add_label_noise(y_clean, raw.num_classes, float(spec.label_noise), spec.noise_seed)
    return Dataset(
        spec=spec,
        x_train=_to_float(x_train, raw, stats),
        y_train=y_noisy,
        y_train_clean=y_clean,
        x_test=_to_float(x_test, raw, stats),
        y_test=torch.from_numpy(np.array(y_test, dtype=np.int64)),
        num_classes=raw.num_classes,
        noise=noise,
    )
