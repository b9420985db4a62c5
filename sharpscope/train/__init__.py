"""Training with SGD and the SAM family to resumable checkpoints and a metrics log.

The modules, each importing only those before it:

    config.py     TrainConfig, TrainResult, the learning-rate schedule, the optimizer a
                  configuration names, and the names one may choose (TRACKABLE, SCHEDULES, ...;
                  OPTIMIZERS, VARIANTS, DEFAULT_RHO, M_SAM_OPTIMIZERS: views of sharpscope.optim.registry)
    callbacks.py  Callback and the TrainState callbacks see
    state.py      what a run keeps across a restart: RNG state, metrics files; Ctrl-C
    resume.py     what a resumed run may change: options given again must equal the stored
                  ones; a larger epochs extends a run whose schedule allows it
    launch.py     what train() refuses before it trains (folder, resume, factory, ranks, model fit)
    epoch.py      an epoch's example order and augmentation from (seed, epoch); evaluate(); divergence
    loop.py       train(): the loop, in short steps (determinism and the files written: its docstring)
    tracking.py   diagnostics tracked during training (``--track``); the loop imports it
                  only when a run tracks something
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
