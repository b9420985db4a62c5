"""Algorithms on symmetric linear operators known only through their products (a
:class:`SymmetricOperator`, e.g. a Hessian-vector product), frugal with those products:
:func:`lanczos` (extreme eigenpairs), :func:`hutchinson` / :func:`hutchpp` (traces with standard
errors), :func:`slq` / :func:`smooth_density` / :func:`spectral_density` (spectral density by
stochastic Lanczos quadrature, Ghorbani, Krishnan & Xiao, ICML 2019), :mod:`.basis` (what
Lanczos and SLQ share: CGS2 in a float64, float32, float16 or bfloat16 basis), :mod:`.budget` /
:mod:`.restart` (a basis planned within a memory budget; thick-restart Lanczos), :mod:`.layout`
(vectors whole or sharded over processes) and :func:`subspace_overlap` (tr(P1 P2) / k). Nothing
here knows about neural networks.
"""

from __future__ import annotations

from .basis import tridiagonal_eigh
from .density import DensityResult, slq, smooth_density, spectral_density
from .lanczos import EigenResult, lanczos
from .operator import SymmetricOperator
from .subspace import orthonormal_basis, principal_cosines, subspace_overlap
from .trace import TraceResult, exact_trace, hutchinson, hutchpp

__all__ = ["SymmetricOperator", "EigenResult", "lanczos", "tridiagonal_eigh", "TraceResult", "hutchinson", "hutchpp",
           "exact_trace", "DensityResult", "slq", "smooth_density", "spectral_density", "subspace_overlap",
           "principal_cosines", "orthonormal_basis"]
