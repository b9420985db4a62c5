"""Generic algorithms on symmetric linear operators known only through matrix-vector products.

Nothing here knows about neural networks: the algorithms are handed a
:class:`SymmetricOperator` (for instance a Hessian-vector product) and are frugal with its
products, which dominate the cost; orthogonalization and small eigenproblems are cheap.

* :func:`lanczos` - a few extreme eigenpairs (full reorthogonalization, relative residual
  stopping rule).
* :func:`hutchinson`, :func:`hutchpp` - stochastic trace estimates with standard errors.
* :func:`slq`, :func:`smooth_density`, :func:`spectral_density` - spectral density by
  stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao, ICML 2019).
* :mod:`.basis` - the pieces Lanczos and SLQ share (:class:`~.basis.Basis`, CGS2, stored in
  float64, float32 or bfloat16; random unit start vectors; :func:`tridiagonal_eigh`).
* :mod:`.budget`, :mod:`.restart` - a basis planned within a memory budget, and thick-restart
  Lanczos for a basis that cannot hold every step.
* :func:`subspace_overlap` - overlap of two subspaces (e.g. top eigenspaces), tr(P1 P2) / k.
"""

from __future__ import annotations

from .basis import tridiagonal_eigh
from .density import DensityResult, slq, smooth_density, spectral_density
from .lanczos import EigenResult, lanczos
from .operator import SymmetricOperator
from .subspace import orthonormal_basis, principal_cosines, subspace_overlap
from .trace import TraceResult, exact_trace, hutchinson, hutchpp

__all__ = [
    "SymmetricOperator",
    "EigenResult",
    "lanczos",
    "tridiagonal_eigh",
    "TraceResult",
    "hutchinson",
    "hutchpp",
    "exact_trace",
    "DensityResult",
    "slq",
    "smooth_density",
    "spectral_density",
    "subspace_overlap",
    "principal_cosines",
    "orthonormal_basis",
]
