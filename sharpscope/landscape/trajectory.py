"""PCA directions of a training trajectory (Li et al. 2018, Sec. 7): the centre is the last snapshot
theta_E, the rows of M are theta_e - theta_E, the directions the first principal components of M
(rows centred, as scikit-learn's PCA), unit vectors; ``explained_variance`` their variance fractions;
``path`` the coordinates (theta_e - theta_E) . d_k, ending at (0, 0). Parameters ignored by
``ignore="biasbn"`` are left out (zero in the directions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .directions import Direction, ignored_names

__all__ = ["TrajectoryDirections", "trajectory_directions", "trajectory_grid"]


@dataclass
class TrajectoryDirections:
    directions: list[Direction]
    explained_variance: list[float]
    path: np.ndarray  # (E + 1, 2): coordinates of every snapshot, the last is (0, 0)


def trajectory_directions(model: nn.Module, snapshots: Sequence[dict[str, Tensor]],
                          ignore: str = "biasbn", n_components: int = 2) -> TrajectoryDirections:
    """PCA directions of ``snapshots`` (parameter dicts in training order, the centre last);
    ``model`` gives only the names and the ignore rule."""
    if len(snapshots) < n_components + 1:
        raise ConfigError(f"a trajectory needs at least {n_components + 1} snapshots, got {len(snapshots)}")
    skip = ignored_names(model, ignore)
    names = [n for n, _ in model.named_parameters() if n not in skip]
    if not names:
        raise ConfigError("no parameters left for the trajectory PCA")
    for i, snap in enumerate(snapshots):
        missing = [n for n in names if n not in snap]
        if missing:
            raise ConfigError(f"snapshot {i} lacks parameter {missing[0]}")
    final = torch.cat([snapshots[-1][n].detach().double().reshape(-1) for n in names])
    rows = torch.stack([torch.cat([s[n].detach().double().reshape(-1) for n in names]) - final for s in snapshots])
    centred = rows - rows.mean(0, keepdim=True)
    # the rows are few: SVD of the small Gram matrix instead of the (E x n) matrix
    gram = centred @ centred.T
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    total = float(evals.sum())
    if total == 0:
        raise ConfigError("the snapshots are all identical: no trajectory to analyse")
    comps = [v / v.norm() for v in (centred.T @ evecs[:, k] for k in range(n_components))]
    path = torch.stack([rows @ c for c in comps], dim=1).numpy()
    ref = dict(model.named_parameters())
    directions = []
    for c in comps:
        parts = dict(zip(names, c.split([ref[n].numel() for n in names])))
        directions.append({n: (parts[n].view(p.shape) if n in parts else torch.zeros(p.shape, dtype=torch.float64))
                           .to(p.dtype).to(p.device) for n, p in ref.items()})
    return TrajectoryDirections(directions, [float(e) / total for e in evals[:n_components]], path)


def trajectory_grid(path: np.ndarray, points: int = 31, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate k, ``points`` values over [lo_k - pad_k, hi_k + pad_k] (the path's range, pad =
    margin (hi - lo) + 1e-6), ends rounded to 6 significant digits as the recorded ``MIN:MAX:POINTS``."""
    from .surface import parse_grid

    path = np.asarray(path, dtype=np.float64)
    lo, hi = path.min(0), path.max(0)
    pad = margin * (hi - lo) + 1e-6
    xs, ys = (parse_grid(f"{lo[k] - pad[k]:.6g}:{hi[k] + pad[k]:.6g}:{points}") for k in range(2))
    return xs, ys
