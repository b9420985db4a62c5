"""Training with SGD and the SAM family to resumable checkpoints and a metrics log: ``config``,
``callbacks``, ``state`` (RNG, metrics files, Ctrl-C), ``resume``, ``launch`` (what train()
refuses), ``epoch``, ``loop`` (train()) and ``tracking`` (``--track``), each importing only those before it.
"""

from __future__ import annotations

from typing import Any

from . import config as _config
from .callbacks import Callback, TrainState
from .config import AMP_DTYPES, SCHEDULES, TRACKABLE, TrainConfig, TrainResult, learning_rate
from .loop import check_launch, check_model, evaluate, train, trusted_factory

__all__ = ["TrainConfig", "TrainResult", "Callback", "TrainState", "train", "check_launch", "check_model",
           "trusted_factory", "learning_rate", "evaluate",
           "OPTIMIZERS", "VARIANTS", "M_SAM_OPTIMIZERS", "TRACKABLE", "DEFAULT_RHO", "SCHEDULES", "AMP_DTYPES"]


def __getattr__(name: str) -> Any:
    """OPTIMIZERS, VARIANTS, DEFAULT_RHO, M_SAM_OPTIMIZERS: the registry as it is now."""
    return getattr(_config, name)
