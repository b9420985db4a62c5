"""A symmetric linear operator known only through its products, counting every vector it multiplies
(the design of f-dangel/curvlinops: algorithms separate from models, testable on explicit matrices)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..checks import int_at_least
from ..errors import ConfigError
from .layout import VectorLayout

__all__ = ["SymmetricOperator"]


class SymmetricOperator:
    """A symmetric ``n x n`` linear operator given by ``matvec`` (``v -> A v``, ``v`` already cast
    to ``dtype`` / ``device``) and optionally ``matmat`` (``V -> A V`` for ``V`` (n, b); else a
    loop over columns). ``n_matvecs`` counts vectors, not calls. Symmetry is the caller's
    promise (checked only by :meth:`from_matrix`); float32 products are fine (the algorithms
    keep float64 bases). ``layout`` (:class:`~.layout.VectorLayout`): whole by default; sharded,
    ``matvec`` takes and returns this process's ``layout.local_n`` entries and the algorithms
    reduce their inner products over the processes."""

    def __init__(self, matvec: Callable[[Tensor], Tensor], n: int, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", matmat: Callable[[Tensor], Tensor] | None = None,
                 layout: VectorLayout | None = None) -> None:
        if not callable(matvec):
            raise ConfigError("matvec must be callable")
        if matmat is not None and not callable(matmat):
            raise ConfigError("matmat must be callable or None")
        n = int_at_least("n", n, 1)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self._matvec = matvec
        self._matmat = matmat
        self.n: int = n
        self.dtype: torch.dtype = dtype
        self.device: torch.device = torch.device(device)
        self.n_matvecs: int = 0
        if layout is not None and (not isinstance(layout, VectorLayout) or layout.n != n):
            raise ConfigError(f"layout must be a VectorLayout of dimension {n}, got {layout!r}")
        self.layout: VectorLayout = VectorLayout.whole(n) if layout is None else layout
        self.local_n: int = self.layout.local_n  # the entries of a vector this process holds (n unless sharded)

    def __repr__(self) -> str:
        return f"SymmetricOperator(n={self.n}, dtype={self.dtype}, device={self.device}, n_matvecs={self.n_matvecs})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for ``v`` of shape ``(n,)``; ``v`` is cast to the operator's dtype/device first."""
        if v.shape != (self.local_n,):
            raise ConfigError(f"matvec expects a vector of shape ({self.local_n},), got {tuple(v.shape)}")
        out = self._matvec(v.to(device=self.device, dtype=self.dtype))
        self.n_matvecs += 1
        return out.reshape(self.local_n)

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` of shape ``(n, b)``; counts ``b`` products."""
        if V.ndim != 2 or V.shape[0] != self.local_n:
            raise ConfigError(f"matmat expects a matrix of shape ({self.local_n}, b), got {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        b = V.shape[1]
        if self._matmat is not None:
            out = self._matmat(V).reshape(self.local_n, b)
        elif b == 0:
            out = V.clone()
        else:
            out = torch.stack([self._matvec(V[:, j]).reshape(self.local_n) for j in range(b)], dim=1)
        self.n_matvecs += b
        return out

    def __matmul__(self, x: Tensor) -> Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    @classmethod
    def from_matrix(cls, A: Tensor) -> SymmetricOperator:
        """The operator of an explicit matrix ``A`` (its dtype and device): square, floating, finite and
        symmetric up to ``sqrt(eps) * max|A|`` (``Q diag(lam) Q^T`` is symmetric only to rounding)."""
        if not isinstance(A, Tensor) or A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ConfigError("from_matrix expects a square 2-D tensor")
        if not A.dtype.is_floating_point:
            raise ConfigError(f"from_matrix expects a floating matrix, got {A.dtype}")
        if A.shape[0] == 0:
            raise ConfigError("from_matrix expects a non-empty matrix")
        if not bool(torch.isfinite(A).all()):
            raise ConfigError("from_matrix expects a finite matrix")
        scale = float(A.abs().max())
        asym = float((A - A.T).abs().max())
        if asym > torch.finfo(A.dtype).eps ** 0.5 * max(scale, torch.finfo(A.dtype).tiny):
            raise ConfigError(f"matrix is not symmetric (max |A - A^T| = {asym:.3g})")
        M = A.detach()
        return cls(lambda v: M @ v, M.shape[0], dtype=M.dtype, device=M.device, matmat=lambda V: M @ V)
