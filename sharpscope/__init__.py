"""sharpscope: sharpness and loss-landscape analysis built around SAM (Foret et al., ICLR 2021).

``import sharpscope`` loads only the version and the errors (no torch: ``sharpscope --help``
starts fast); the torch-backed names and the submodules are imported on first attribute
access (PEP 562), so ``ss.SAM`` and ``ss.hessian.eigenvalues(...)`` need no explicit import.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__  # the one source of the version (pyproject.toml reads it too)
from .errors import (CheckpointError, ConfigError, DataChangedWarning, DataError, DataMismatchError,
                     FiniteDifferenceWarning, MemoryBudgetError, ModelSpecError, NonFiniteLossError, RestartsDisagreeWarning,
                     SampledFisherWarning, SharpscopeError, UnconvergedWarning, ZeroGradientWarning)

# The package's torch-backed names, imported on first access.
_LAZY_NAMES = {
    "ModelLoss": "batches", "OutputLoss": "batches", "TokenLoss": "tokens", "TokenCrossEntropy": "tokens",
    "ChunkedTokenLoss": "vocab_chunks",
    "SAM": "optim", "RSAM": "optim", "GSAM": "optim", "WSAM": "optim", "LookSAM": "optim", "FriendlySAM": "optim",
    "sam_step": "optim", "frozen_bn_stats": "optim",
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
}

# Submodules reachable as attributes, imported on first access (tests/test_startup.py checks the list).
_SUBMODULES = ("ascent", "batches", "checkpoint", "checks", "cli", "cpu", "curvature", "data", "determinism",
               "distributed", "errors", "experiments", "fd_hvp", "hessian", "io", "landscape", "linalg",
               "measure_table", "measures", "models", "objective", "optim", "plots", "plots_html", "provenance",
               "reductions", "sharded", "sharpness", "stats", "tokens", "train", "train_options", "vocab_chunks", "weight_spectra")

__all__ = [
    "__version__", "SAM", "RSAM", "GSAM", "WSAM", "LookSAM", "FriendlySAM", "sam_step", "frozen_bn_stats",
    "save_checkpoint", "load_checkpoint", "Checkpoint", "SharpscopeError", "ConfigError", "DataError",
    "DataMismatchError", "MemoryBudgetError", "DataChangedWarning", "ModelSpecError", "CheckpointError", "NonFiniteLossError",
    "UnconvergedWarning", "RestartsDisagreeWarning", "SampledFisherWarning", "ZeroGradientWarning", "ModelLoss",
    "OutputLoss", "TokenLoss", "TokenCrossEntropy", "ChunkedTokenLoss", "FiniteDifferenceWarning",
]


def __getattr__(name: str) -> Any:
    """Import a submodule (``ss.hessian``) or a torch-backed name (``ss.SAM``) on first access;
    anything else is an AttributeError."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import also binds it in globals()
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_LAZY_NAMES))
