"""sharpscope: sharpness and loss-landscape analysis built around SAM (Foret et al., ICLR 2021).

``import sharpscope`` loads only the optimizer, the checkpoint reader and the errors; the
analysis submodules (``sharpscope.hessian``, ``.landscape``, ``.sharpness``, ``.plots``, ...)
are imported on first attribute access (PEP 562), so ``ss.hessian.eigenvalues(...)`` works
without an explicit ``import sharpscope.hessian`` and without slowing down the bare import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._version import __version__  # the one source of the version (pyproject.toml reads it too)
from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataChangedWarning,
    DataError,
    DataMismatchError,
    ModelSpecError,
    NonFiniteLossError,
    RestartsDisagreeWarning,
    SampledFisherWarning,
    SharpscopeError,
    UnconvergedWarning,
    ZeroGradientWarning,
)
from .batches import ModelLoss  # noqa: E402
from .optim import GSAM, RSAM, SAM, WSAM, FriendlySAM, LookSAM, frozen_bn_stats, sam_step  # noqa: E402
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402

# Submodules reachable as attributes of the package, imported on first access.
# (tests/test_startup.py checks that every public module of the package is listed.)
_SUBMODULES = ("ascent", "batches", "checkpoint", "checks", "cli", "cpu", "curvature", "data", "determinism",
               "distributed", "errors", "experiments", "hessian", "io", "landscape", "linalg", "measure_table", "measures",
               "models", "objective", "optim", "plots", "plots_html", "provenance", "sharpness", "stats", "train",
               "train_options",
               "weight_spectra")

__all__ = [
    "__version__",
    "SAM",
    "RSAM",
    "GSAM",
    "WSAM",
    "LookSAM",
    "FriendlySAM",
    "sam_step",
    "frozen_bn_stats",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
    "SharpscopeError",
    "ConfigError",
    "DataError",
    "DataMismatchError",
    "DataChangedWarning",
    "ModelSpecError",
    "CheckpointError",
    "NonFiniteLossError",
    "UnconvergedWarning",
    "RestartsDisagreeWarning",
    "SampledFisherWarning",
    "ZeroGradientWarning",
    "ModelLoss",
]


def __getattr__(name: str) -> ModuleType:
    """Import a submodule on first access (``ss.hessian``); anything else is an AttributeError."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import also binds it in globals()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))
