"""What a data set is (:class:`DataSpec`), how two specs' training splits differ, and the spec an
analysis of a checkpoint loads."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sharpscope.checks import is_int
from sharpscope.errors import ConfigError, DataError

from ._common import is_real
from .readers import expected_files

__all__ = ["DATASETS", "TOKEN_DATASETS", "DataSpec", "spec_differences", "analysis_data_spec"]

#: Token data for language models (:mod:`.text`): examples are blocks of ``block_size`` tokens.
TOKEN_DATASETS: tuple[str, ...] = ("text", "tokens")
DATASETS: tuple[str, ...] = ("digits", "mnist1d", "synthetic", "npz", "mnist", "fashion-mnist", "cifar10", "cifar100",
                             *TOKEN_DATASETS)
_FILE_BACKED = ("npz", "mnist", "fashion-mnist", "cifar10", "cifar100", "tokens")


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to (re)build a :class:`Dataset` deterministically: ``root`` a folder (an
    ``.npz`` file for ``npz``); ``seed`` also generates ``mnist1d`` / ``synthetic``; ``test_fraction``
    only without an official split; ``block_size`` only for token data."""

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
    block_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (str / int / float / None; invalid values kept for validate())."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "root" and value is not None:
                value = os.fspath(value)
            elif is_int(value):
                value = int(value)
            elif is_real(value):
                value = float(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        """A validated spec from a dict (:meth:`to_dict`'s); unknown keys -> DataError, missing ones default."""
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
        """:class:`DataError` for an unknown name or a missing ``root``; :class:`ConfigError` for a
        wrongly typed or out-of-range option."""
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
        for key, least in (("synthetic_size", 2), ("synthetic_classes", 2), ("synthetic_features", 1)):
            if self.name == "synthetic" and getattr(self, key) < least:
                raise ConfigError(f"{key} must be >= {least}, got {getattr(self, key)}")
        if self.name in TOKEN_DATASETS and (self.block_size < 1 or self.label_noise):
            raise ConfigError(f"{self.name}: block_size must be >= 1 (got {self.block_size}) and label_noise 0 "
                              f"(got {self.label_noise}: next tokens are not class labels)")
        if self.name in _FILE_BACKED and self.root is None:
            what = "an .npz file path" if self.name == "npz" else "a folder"
            raise DataError(f"{self.name}: no root given; set root (--data-root) to {what} holding "
                            f"{expected_files(self.name)}")

    def _validate_types(self) -> None:
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise ConfigError(f"root must be a path string or None, got {type(self.root).__name__}")
        checks = {"an integer": (is_int, ("seed", "noise_seed", "synthetic_size", "synthetic_classes",
                                          "synthetic_features", "block_size")),
                  "an integer or None": (lambda v: v is None or is_int(v), ("n_train", "n_test")),
                  "a finite number": (lambda v: is_real(v) and math.isfinite(float(v)),
                                      ("test_fraction", "label_noise"))}
        for what, (ok, keys) in checks.items():
            bad = [key for key in keys if not ok(getattr(self, key))]
            if bad:
                raise ConfigError(f"{bad[0]} must be {what}, got {getattr(self, bad[0])!r}")


# The fields of a data spec that choose the training split (n_test and the root's spelling do not).
_TRAIN_SPLIT_FIELDS = ("name", "seed", "test_fraction", "label_noise", "noise_seed", "n_train", "synthetic_size",
                       "synthetic_classes", "synthetic_features", "block_size")


def spec_differences(a: Mapping[str, Any], b: Mapping[str, Any], *, root: bool = True,
                     names: tuple[str, str] = ("in a", "in b")) -> list[str]:
    """The fields (``root`` too unless ``root=False``) in which two :meth:`DataSpec.to_dict` dicts choose
    different training splits, as "seed 0 in a, 1 in b" phrases; missing fields take the defaults."""
    default = DataSpec().to_dict()
    fields = _TRAIN_SPLIT_FIELDS + (("root",) if root else ())
    value = {key: (a.get(key, default.get(key)), b.get(key, default.get(key))) for key in fields}
    irrelevant = set()
    if not any(value["label_noise"]):
        irrelevant.add("noise_seed")  # no label noise: its seed draws nothing
    if value["name"] != ("synthetic", "synthetic"):
        irrelevant.update(k for k in fields if k.startswith("synthetic_"))
    if not any(name in TOKEN_DATASETS for name in value["name"]):
        irrelevant.add("block_size")
    return [f"{key} {value[key][0]!r} {names[0]}, {value[key][1]!r} {names[1]}" for key in fields
            if key not in irrelevant and value[key][0] != value[key][1]]


def analysis_data_spec(stored: Mapping[str, Any] | None, name: str | None = None, root: str | None = None,
                       where: str = "the checkpoint") -> DataSpec:
    """The data an analysis of a checkpoint loads: a ``name`` other than the recorded one, that data
    set's defaults at ``root``; else the recorded spec (``stored``) with ``root`` replaced (files
    that moved). :class:`DataError` when nothing is recorded and no ``name`` is given."""
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
