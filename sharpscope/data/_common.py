"""Checks and seeded random streams shared by the modules of :mod:`sharpscope.data`."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from sharpscope.checks import is_int

__all__ = ["is_real", "torch_seed", "stream_generator"]


def is_real(value: Any) -> bool:
    """A real number (int or float, ``bool`` excluded)."""
    return is_int(value) or isinstance(value, (float, np.floating))


def torch_seed(seed: int) -> int:
    """Map any Python int onto the range ``torch.Generator.manual_seed`` accepts."""
    return int(seed) % (1 << 64)


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A fresh generator for an independent named random stream derived from ``seed``."""
    digest = hashlib.blake2b(f"{int(seed)}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))
