"""Curvature and SAM diagnostics tracked during training (``--track``): every ``every`` epochs, on a
fixed seeded subset of the training set, each chosen measure of :mod:`sharpscope.measure_table`
that tracking can set up (:func:`trackable`) at the run's rho (0.05 for SGD), its headline value
added to the epoch's record (``lambda_max`` with the edges of stability beside it). The analyses
use their own seeded generators and eval mode: tracking changes neither weights nor random stream.
"""

from __future__ import annotations

import math
from typing import Any

from .. import measure_table
from ..errors import ConfigError
from ..objective import Objective
from ..optim import registry
from ..reductions import large_norm
from .callbacks import Callback, TrainState

__all__ = ["TRACK_SETTINGS", "trackable", "TrackingCallback", "stability_threshold", "sam_stability_threshold"]

# The settings of every tracked measure (besides the subset, the tracking seed and rho).
TRACK_SETTINGS: dict[str, Any] = {"top_k": 1, "eig_tol": 1e-3, "trace_matvecs": 30, "m_values": [16], "m_steps": 3}


def trackable() -> list[str]:
    """The measures of the table with a headline value whose settings tracking provides."""
    have = [*TRACK_SETTINGS, *measure_table.SUBSET, "rho"]
    return [n for n in measure_table.available(have) if measure_table.MEASURES[n].headline is not None]


def stability_threshold(lr: float, momentum: float = 0.0) -> float:
    """(2 + 2 beta) / lr: gradient descent with heavy-ball momentum beta diverges along eigenvalues
    above it; full-batch training drives lambda_max up to it (Cohen et al., ICLR 2021, Sec. 3 and App.)."""
    return (2.0 + 2.0 * momentum) / lr


def sam_stability_threshold(lr: float, rho: float, grad_norm: float, momentum: float = 0.0) -> float:
    """SAM's edge of stability (Long & Bartlett, 2023): SAM with e = rho g / ||g|| is stable while
    lr lambda (1 + rho lambda / ||g||) <= 2 + 2 beta, i.e. up to

        lambda = ||g|| / (2 rho) (sqrt(1 + 4 rho (2 + 2 beta) / (lr ||g||)) - 1)

    (their threshold for beta = 0, momentum carried over as in :func:`stability_threshold`);
    0 for a zero gradient."""
    if rho == 0:
        return stability_threshold(lr, momentum)
    if grad_norm <= 0:
        return 0.0
    c = 4.0 * rho * (2.0 + 2.0 * momentum) / (lr * grad_norm)
    return grad_norm / (2.0 * rho) * (math.sqrt(1.0 + c) - 1.0)


class TrackingCallback(Callback):
    """Adds the chosen diagnostics to the metrics record every ``every`` epochs."""

    def __init__(self, keys: list[str], every: int = 1, samples: int = 512, rho: float = 0.05, seed: int = 0) -> None:
        known = trackable()
        unknown = sorted(set(keys) - set(known))
        if unknown:
            raise ConfigError(f"cannot track {', '.join(unknown)}; choose from {', '.join(known)}")
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
        model, out = state.model, {}
        settings = {**TRACK_SETTINGS, "samples": self.samples, "seed": self.seed, "rho": self.rho}
        measures = [measure_table.MEASURES[k] for k in self.keys]
        # one double-backward graph for the Hessian ones; the data's loss (token data: per token)
        obj = Objective(model, state.data.loss_fn, self.batches)
        for m in [m for m in measures if m.shares_objective]:
            out[m.name] = m.headline(m.compute(model, self.batches, settings, obj))
            if m.name == "lambda_max":
                out.update(self._edges(state, obj))
        obj.release()
        for m in [m for m in measures if not m.shares_objective]:
            result = m.compute(model, self.batches, settings, None)
            if result is None:  # nothing at these settings: m-sharpness at m = 16 on fewer examples
                raise ConfigError(f"cannot track {m.name} on {sum(len(b[1]) for b in self.batches)} examples: "
                                  "raise --track-samples")
            out[m.name] = m.headline(result)
        return out

    def _edges(self, state: TrainState, obj: Objective) -> dict[str, float]:
        """The edge of stability at the last learning rate; for SAM (p = 2, no m) also its own, from
        ||grad L|| on the subset. None for AdamW (its edge is the preconditioned Hessian's)."""
        config = state.config
        base = config.base_optimizer if registry.get(config.optimizer).perturbs else config.optimizer
        if base == "adamw":  # (2 + 2 beta) / lr is (heavy-ball) SGD's edge
            return {}
        lr = float(state.optimizer.param_groups[0]["lr"])
        edges = {"edge_of_stability": stability_threshold(lr, config.momentum)}
        if config.optimizer == "sam" and config.p == 2 and config.m is None and config.effective_rho > 0:
            grad_norm = large_norm(obj.grad())
            edges["sam_edge_of_stability"] = sam_stability_threshold(lr, config.effective_rho, grad_norm,
                                                                     config.momentum)
        return edges

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.epoch % self.every == 0 or state.epoch == state.config.epochs:
            metrics.update(self.measure(state))
