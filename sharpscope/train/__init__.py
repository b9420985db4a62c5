"""Training: the loop (:mod:`.loop`) and the diagnostics tracked during it (:mod:`.tracking`)."""

from __future__ import annotations

from .loop import (
    AMP_DTYPES,
    DEFAULT_RHO,
    M_SAM_OPTIMIZERS,
    OPTIMIZERS,
    SCHEDULES,
    TRACKABLE,
    VARIANTS,
    Callback,
    TrainConfig,
    TrainResult,
    TrainState,
    evaluate,
    learning_rate,
    train,
)

__all__ = ["TrainConfig", "TrainResult", "Callback", "TrainState", "train", "learning_rate", "evaluate",
           "OPTIMIZERS", "VARIANTS", "M_SAM_OPTIMIZERS", "TRACKABLE", "DEFAULT_RHO", "SCHEDULES", "AMP_DTYPES"]
