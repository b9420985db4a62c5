"""Data-free weight-spectrum measures after weightwatcher (Martin & Mahoney, "Implicit
self-regularization in deep neural networks", JMLR 2021; Nature Communications 2021; the
weightwatcher 0.7.7 package's default rules).

Per ``nn.Linear`` / ``nn.Conv2d`` layer, the eigenvalues lambda_i = sigma_i^2 of W^T W (a conv
weight: its kh * kw slices W[:, :, i, j] pooled, each halved, weightwatcher's ``conv2d_norm``);
layers with fewer than 8 are skipped (``min_evals``). Per layer:

- ``alpha``: the power law p(lambda) ~ lambda^-alpha of the eigenvalues above 1e-5: for each
  candidate xmin, alpha = 1 + n / sum_i log(lambda_i / xmin) (maximum likelihood), xmin
  minimizing the Kolmogorov-Smirnov distance D (Clauset, Shalizi & Newman, SIAM Review 2009);
  below 20 eigenvalues 1 + (n - 1) / sum log(lambda / xmin) over tails of at least 8, xmin by
  the smallest D (what weightwatcher returns after ``WWFit.__init__``);
- ``log_norm`` = log10 ||W||_F^2 = log10 sum lambda, ``log_spectral_norm`` = log10 lambda_max,
  ``alpha_weighted`` = alpha log10 lambda_max, ``log_alpha_norm`` = log10 sum lambda^alpha,
  ``stable_rank`` = sum lambda / lambda_max; and their means over layers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .objective import moved_parameters

__all__ = ["LayerSpectrum", "WeightSpectra", "weight_spectra", "layer_eigenvalues", "fit_power_law",
           "SUMMARY_METRICS"]

EVALS_THRESH = 1e-5   # eigenvalues at or below this are left out of the power-law fit
MIN_EVALS = 8         # layers with fewer eigenvalues are skipped
SMALL_N = 20          # below this many eigenvalues in the fit, the small-sample rule
SUMMARY_METRICS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm", "stable_rank")


def layer_eigenvalues(module: nn.Module) -> np.ndarray | None:
    """The pooled, sorted float64 eigenvalues of a Linear or Conv2d layer; None for other modules."""
    if isinstance(module, nn.Linear):
        mats = [module.weight.detach().double()]
    elif isinstance(module, nn.Conv2d):
        w = module.weight.detach().double()
        mats = [w[:, :, i, j] * math.sqrt(0.5) for i in range(w.shape[2]) for j in range(w.shape[3])]
    else:
        return None
    sv = torch.cat([torch.linalg.svdvals(m.cpu()) for m in mats])
    return np.sort((sv * sv).numpy())


def fit_power_law(evals: np.ndarray) -> tuple[float, float, float]:
    """(alpha, xmin, D) of the power-law tail of the positive ``evals`` (module docstring)."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    n_all = len(x)
    if n_all < 2:
        raise ConfigError(f"a power-law fit needs at least 2 eigenvalues, got {n_all}")
    logs = np.log(x)
    tail_log_sums = np.cumsum(logs[::-1])[::-1]  # sum of logs from i to the end
    best = (math.nan, math.nan, math.inf)  # alpha, xmin, D
    for i in range(n_all - 1):
        n = n_all - i
        s = tail_log_sums[i] - n * logs[i]
        if n_all < SMALL_N:
            if n < 8 or s <= 1e-12:
                continue
            alpha = 1.0 + (n - 1.0) / s
        else:
            alpha = 1.0 + n / s if s > 0 else math.inf
        if not alpha > 1:
            continue
        d = float(np.max(np.abs(1.0 - (x[i:] / x[i]) ** (1.0 - alpha) - np.arange(n) / n)))
        if d < best[2]:
            best = (alpha, float(x[i]), d)
    return best


@dataclass
class LayerSpectrum:
    """One layer's ESD summary (module docstring)."""

    name: str
    kind: str               # "linear" or "conv2d"
    shape: list[int]
    n_evals: int
    lambda_max: float
    alpha: float
    xmin: float
    ks_distance: float
    alpha_weighted: float
    log_norm: float
    log_spectral_norm: float
    log_alpha_norm: float
    stable_rank: float


@dataclass
class WeightSpectra:
    """Every analysed layer and the means over layers (``summary``)."""

    layers: list[LayerSpectrum]
    skipped: list[str] = field(default_factory=list)   # layers with fewer than 8 eigenvalues

    @property
    def summary(self) -> dict[str, float]:
        values = {m: [v for layer in self.layers if math.isfinite(v := getattr(layer, m))] for m in SUMMARY_METRICS}
        return {m: float(np.mean(v)) if v else math.nan for m, v in values.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(layer) for layer in self.layers], "skipped": self.skipped, "summary": self.summary}


def weight_spectra(model: nn.Module, params: Any = None) -> WeightSpectra:
    """The measures of every Linear and Conv2d layer whose weight ``params`` selects
    (:func:`sharpscope.objective.moved_parameters`; None: every trainable one, all if none is)."""
    chosen = None if params is None and all(p.requires_grad for p in model.parameters()) else \
        set(moved_parameters(model, params))
    layers, skipped = [], []
    for name, module in model.named_modules():
        if chosen is not None and (f"{name}.weight" if name else "weight") not in chosen:
            continue
        evals = layer_eigenvalues(module)
        if evals is None:
            continue
        if len(evals) < MIN_EVALS:
            skipped.append(name)
            continue
        fit_evals = evals[evals > EVALS_THRESH]
        alpha, xmin, d = fit_power_law(fit_evals) if len(fit_evals) >= 2 else (math.nan, math.nan, math.nan)
        lam_max, total = float(evals.max()), float(evals.sum())
        log_spec = math.log10(lam_max) if lam_max > 0 else -math.inf
        layers.append(LayerSpectrum(
            name=name, kind="linear" if isinstance(module, nn.Linear) else "conv2d", shape=list(module.weight.shape),
            n_evals=len(evals), lambda_max=lam_max, alpha=alpha, xmin=xmin, ks_distance=d,
            alpha_weighted=alpha * log_spec, log_norm=math.log10(total) if total > 0 else -math.inf,
            log_spectral_norm=log_spec,
            log_alpha_norm=math.log10(float(np.sum(evals ** alpha))) if math.isfinite(alpha) else math.nan,
            stable_rank=total / lam_max if lam_max > 0 else math.nan))
    if not layers:
        raise ConfigError("the model has no Linear or Conv2d layer with at least 8 eigenvalues to analyse")
    return WeightSpectra(layers, skipped)
