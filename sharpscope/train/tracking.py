"""Curvature and SAM diagnostics tracked during training (``--track``).

Every ``every`` epochs, on a fixed seeded subset of the training set (the labels trained
on), the callback measures any measure of :mod:`sharpscope.measure_table` that has a headline
value and whose settings :data:`TRACK_SETTINGS` provides (:func:`trackable`), with the run's rho
(0.05 for SGD) and the tracking seed; today

- ``lambda_max``: the top Hessian eigenvalue (Lanczos, tol 1e-3), with the edge of stability
  of the epoch's last learning rate beside it (:func:`stability_threshold`; for SAM also
  :func:`sam_stability_threshold`, from the gradient norm on the same subset), under
  ``edge_of_stability`` and ``sam_edge_of_stability``;
- ``trace``: the Hessian trace (Hutch++, 30 products);
- ``m_sharpness``: m-sharpness with m = 16, 3 ascent steps at the same rho;
- ``gradcos``: cosine between SAM's gradient and the full second-order one,
  :func:`sharpscope.sharpness.sam_gradient_cosine`,

and adds their headline values to the epoch's record in ``metrics.jsonl`` under those names
(in the order asked; the Hessian ones, sharing one double-backward graph, first). The analyses use
their own seeded generators and eval mode, so tracking changes neither the weights nor the
random stream of training: a tracked run ends with the same weights as an untracked one.
"""

from __future__ import annotations

import math
from typing import Any


from .. import measure_table
from ..errors import ConfigError
from ..objective import Objective
from ..optim import registry
from .callbacks import Callback, TrainState

__all__ = ["TRACKABLE", "TRACK_SETTINGS", "trackable", "TrackingCallback", "stability_threshold",
           "sam_stability_threshold"]

# The work tracking gives each measure, every tracked epoch: the top eigenvalue to tolerance
# 1e-3, Hutch++ with 30 products, m-sharpness at m = 16 with 3 ascent steps. With the subset's
# size, the tracking seed and the run's rho, these are the settings a trackable measure may read.
TRACK_SETTINGS: dict[str, Any] = {"top_k": 1, "eig_tol": 1e-3, "trace_matvecs": 30, "m_values": [16], "m_steps": 3}


def trackable() -> list[str]:
    """The measures tracking can compute: those of the table with a headline value whose
    settings are among :data:`TRACK_SETTINGS`, the subset's, and rho."""
    have = [*TRACK_SETTINGS, *measure_table.SUBSET, "rho"]
    return [n for n in measure_table.available(have) if measure_table.MEASURES[n].headline is not None]


def __getattr__(name: str) -> Any:
    if name == "TRACKABLE":  # as before: the names of trackable(), read from the table when asked
        return tuple(trackable())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stability_threshold(lr: float, momentum: float = 0.0) -> float:
    """The edge of stability of gradient descent with heavy-ball momentum beta on a quadratic:
    it diverges along an eigenvector whose eigenvalue exceeds (2 + 2 beta) / lr (2 / lr without
    momentum). Full-batch training drives lambda_max up to it and hovers there (Cohen et al.,
    ICLR 2021, "Gradient descent on neural networks typically occurs at the edge of
    stability", Sec. 3 and App. for momentum)."""
    return (2.0 + 2.0 * momentum) / lr


def sam_stability_threshold(lr: float, rho: float, grad_norm: float, momentum: float = 0.0) -> float:
    """SAM's edge of stability (Long & Bartlett, 2023, "Sharpness-Aware Minimization and the
    Edge of Stability"): SAM with e = rho g / ||g|| multiplies the gradient along an eigenvector
    of eigenvalue lambda by lambda (1 + rho lambda / ||g||), so it is stable while
    lr lambda (1 + rho lambda / ||g||) <= 2 + 2 beta, i.e. up to

        lambda = ||g|| / (2 rho) (sqrt(1 + 4 rho (2 + 2 beta) / (lr ||g||)) - 1),

    their threshold for beta = 0 (the momentum factor is carried over from
    :func:`stability_threshold` by the same argument). It lies below (2 + 2 beta) / lr and
    tends to it as rho -> 0; 0 for a zero gradient."""
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
        """The edge of stability at the last step's learning rate; for SAM (p = 2, whole-batch
        perturbations) also its own, from ||grad L|| on the tracking subset (one gradient).
        None for AdamW, alone or as SAM's base (its edge is one of the preconditioned Hessian)."""
        config = state.config
        base = config.base_optimizer if registry.get(config.optimizer).perturbs else config.optimizer
        if base == "adamw":  # (2 + 2 beta) / lr is (heavy-ball) SGD's edge
            return {}
        lr = float(state.optimizer.param_groups[0]["lr"])
        edges = {"edge_of_stability": stability_threshold(lr, config.momentum)}
        if config.optimizer == "sam" and config.p == 2 and config.m is None and config.effective_rho > 0:
            grad_norm = float(obj.grad().norm())
            edges["sam_edge_of_stability"] = sam_stability_threshold(lr, config.effective_rho, grad_norm,
                                                                     config.momentum)
        return edges

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.epoch % self.every == 0 or state.epoch == state.config.epochs:
            metrics.update(self.measure(state))
