"""sharpscope: sharpness and loss-landscape analysis built around SAM (Foret et al., ICLR 2021)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    ModelSpecError,
    NonFiniteLossError,
    SharpscopeError,
)
from .optim import SAM, frozen_bn_stats, sam_step  # noqa: E402
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402

__all__ = [
    "__version__",
    "SAM",
    "sam_step",
    "frozen_bn_stats",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
    "SharpscopeError",
    "ConfigError",
    "DataError",
    "ModelSpecError",
    "CheckpointError",
    "NonFiniteLossError",
]
