"""Curvature and SAM diagnostics tracked during training (``--track``).

Every ``every`` epochs, on a fixed seeded subset of the training set (the labels trained
on), the callback measures any of

- ``gradcos``: cosine between SAM's gradient and the full second-order one (rho = the run's
  rho, or 0.05 for SGD), :func:`sharpscope.sharpness.sam_gradient_cosine`;
- ``lambda_max``: the top Hessian eigenvalue (Lanczos, tol 1e-3);
- ``trace``: the Hessian trace (Hutch++, 30 products);
- ``m_sharpness``: m-sharpness with m = 16, 3 ascent steps at the same rho,

and adds them to the epoch's record in ``metrics.jsonl`` under those names. The analyses use
their own seeded generators and eval mode, so tracking changes neither the weights nor the
random stream of training: a tracked run ends with the same weights as an untracked one.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from . import hessian, sharpness
from .errors import ConfigError
from .objective import Objective
from .train import TRACKABLE, Callback, TrainState

__all__ = ["TRACKABLE", "TrackingCallback"]


class TrackingCallback(Callback):
    """Adds the chosen diagnostics to the metrics record every ``every`` epochs."""

    def __init__(self, keys: list[str], every: int = 1, samples: int = 512, rho: float = 0.05, seed: int = 0) -> None:
        unknown = sorted(set(keys) - set(TRACKABLE))
        if unknown:
            raise ConfigError(f"cannot track {', '.join(unknown)}; choose from {', '.join(TRACKABLE)}")
        if every < 1 or samples < 1:
            raise ConfigError("--track-every and --track-samples must be >= 1")
        self.keys, self.every, self.samples, self.rho, self.seed = list(keys), every, samples, rho, seed
        self.batches: list | None = None

    def on_train_begin(self, state: TrainState) -> None:
        n = min(self.samples, state.data.x_train.shape[0])
        device = next(state.model.parameters()).device
        self.batches = [(x.to(device), y.to(device)) for x, y in state.data.batches("train", n, 4096, self.seed)]

    def measure(self, state: TrainState) -> dict[str, Any]:
        assert self.batches is not None
        model, loss, out = state.model, F.cross_entropy, {}
        obj = Objective(model, loss, self.batches)  # one double-backward graph for all three
        if "gradcos" in self.keys:
            out["gradcos"] = sharpness.sam_gradient_cosine(obj, rho=self.rho).cosine
        if "lambda_max" in self.keys:
            out["lambda_max"] = hessian.eigenvalues(obj, k=1, tol=1e-3, seed=self.seed).eigenvalues[0]
        if "trace" in self.keys:
            out["trace"] = hessian.trace(obj, n_matvecs=30, seed=self.seed).trace
        obj.release()
        if "m_sharpness" in self.keys:
            res = sharpness.m_sharpness(model, loss, self.batches, m=16, rho=self.rho, steps=3, seed=self.seed)
            out["m_sharpness"] = res.results[0].mean
        return out

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.epoch % self.every == 0 or state.epoch == state.config.epochs:
            metrics.update(self.measure(state))
