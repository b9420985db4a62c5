"""Fingerprints: what a checkpoint records of the data it was trained on, and how two differ."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from sharpscope.errors import DataError

__all__ = ["FINGERPRINT_VERSION", "fingerprint", "fingerprint_differences"]

FINGERPRINT_VERSION = 1


def _sha256(t: torch.Tensor, dtype: torch.dtype) -> str:
    """SHA-256 of the C-contiguous bytes of ``t`` as ``dtype`` on the CPU."""
    return hashlib.sha256(t.detach().to("cpu", dtype).contiguous().numpy()).hexdigest()


def fingerprint(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> dict[str, Any]:
    """What identifies a training split: sizes, ``num_classes`` (default ``max(y) + 1``), ``class_counts``
    (of every label token for token data) and the SHA-256 of the inputs as float32 and labels as int64."""
    y = torch.as_tensor(y)
    if y.ndim < 1 or len(y) != len(x):
        raise DataError(f"labels of shape {tuple(y.shape)} do not match inputs of shape {tuple(x.shape)}")
    y64 = y.to("cpu", torch.int64).reshape(-1)
    k = int(num_classes) if num_classes is not None else (int(y64.max()) + 1 if y64.numel() else 0)
    if y64.numel() and (int(y64.min()) < 0 or int(y64.max()) >= k):
        raise DataError(f"labels must lie in 0..{k - 1}, got {int(y64.min())}..{int(y64.max())}")
    return {"version": FINGERPRINT_VERSION, "n_examples": int(len(x)), "input_shape": [int(d) for d in x.shape[1:]],
            "num_classes": k, "class_counts": torch.bincount(y64, minlength=k).tolist(),
            "inputs_sha256": _sha256(torch.as_tensor(x), torch.float32), "labels_sha256": _sha256(y64, torch.int64)}


def _classes_difference(a: Mapping[str, Any], b: Mapping[str, Any], first: str, second: str) -> str | None:
    """'3 classes recorded, 5 now', else the first class count that differs; None when both agree."""
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
    """What differs between two fingerprints, one phrase each ("1200 examples recorded, 1437 now");
    a hash only where the sizes do not already explain it."""
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
