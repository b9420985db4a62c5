"""How much two subspaces overlap, e.g. the top-k Hessian eigenspaces of two checkpoints.

With orthonormal bases Q1, Q2 (QR in float64) of the spans of ``V1`` (n x k1), ``V2`` (n x k2),

    overlap = ||Q1^T Q2||_F^2 / k = (1/k) sum_i cos^2(phi_i),    k = min(k1, k2),

the mean squared cosine of the principal angles (tr(P1 P2) / k, Gur-Ari, Roberts & Dyer,
arXiv:1812.04754): 1 when the smaller space lies in the larger, 0 when orthogonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["orthonormal_basis", "principal_cosines", "subspace_overlap"]


def orthonormal_basis(V: Tensor, name: str = "V") -> Tensor:
    """An orthonormal basis (float64, n x k) of the column space of ``V`` (n x k, or (n,) for
    one vector); :class:`ConfigError` if ``V`` is not finite or its columns are dependent."""
    if not isinstance(V, Tensor):
        raise ConfigError(f"{name} must be a tensor")
    V = V.detach().to(torch.float64)
    if V.dim() == 1:
        V = V[:, None]
    if V.dim() != 2 or V.shape[1] == 0 or V.shape[0] < V.shape[1]:
        raise ConfigError(f"{name} must be an n x k matrix with 1 <= k <= n, got shape {tuple(V.shape)}")
    if not bool(torch.isfinite(V).all()):
        raise ConfigError(f"{name} holds NaN or infinite values")
    Q, R = torch.linalg.qr(V)
    diag = R.diagonal().abs()
    if not bool((diag > 1e-10 * max(float(diag.max()), torch.finfo(torch.float64).tiny)).all()):
        raise ConfigError(f"the columns of {name} are linearly dependent (rank < {V.shape[1]})")
    return Q


def principal_cosines(V1: Tensor, V2: Tensor) -> Tensor:
    """The matrix ``Q1^T Q2`` (k1 x k2) of cosines between the orthonormalized bases; its
    singular values are the cosines of the principal angles."""
    Q1, Q2 = orthonormal_basis(V1, "V1"), orthonormal_basis(V2, "V2").to(V1.device)
    if Q1.shape[0] != Q2.shape[0]:
        raise ConfigError(f"the two bases live in spaces of different dimension ({Q1.shape[0]} and "
                          f"{Q2.shape[0]}): the models have different parameters")
    return Q1.T @ Q2


def subspace_overlap(V1: Tensor, V2: Tensor) -> float:
    """``||Q1^T Q2||_F^2 / min(k1, k2)`` in [0, 1] (module docstring; Gur-Ari et al. 2018)."""
    C = principal_cosines(V1, V2)
    k = min(C.shape)
    return float(min(1.0, max(0.0, float((C**2).sum()) / k)))
