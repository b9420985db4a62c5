"""Thick-restart Lanczos: a few extreme eigenpairs with a basis of at most ``c`` vectors.

When a memory budget cannot hold the basis of every step Lanczos may need
(:mod:`sharpscope.linalg.budget`), the basis is compressed whenever it is full onto the
``l`` most wanted Ritz vectors (Wu & Simon, "Thick-restart Lanczos method for large symmetric
eigenvalue problems", SIMAX 22, 2000; Stathopoulos, Saad & Wu, SISC 19, 1998): with
``A Q_m = Q_m H_m + f e_m^T`` and ``H_m = Y Theta Y^T``,

    Q_l <- Q_m Y_l,    A Q_l = Q_l Theta_l + f s^T,    s = e_m^T Y_l,

so the run goes on from ``q_{l+1} = f / ||f||`` and the projected matrix becomes an arrow
(``Theta_l`` bordered by ``||f|| s``). It is mathematically the implicitly restarted Lanczos
method with exact shifts (ARPACK) and keeps the convergence of the kept Ritz vectors.
Here every step is fully reorthogonalized (CGS2; a coarser basis's second pass only where the
first cancelled, :meth:`~sharpscope.linalg.basis.Basis.orthogonalize`) and the whole column
``h = Q^T A q`` of the projected matrix ``H = Q^T A Q`` is kept, so the arrow (and, after an invariant subspace, the
block-diagonal) structure needs no bookkeeping: the Ritz pairs are those of the dense
symmetric ``H`` (at most ``c x c``), with residual ``||A Q y - theta Q y|| = ||f|| |y_m|``.

Choice over capping the steps: top-k of a network's Hessian typically needs tens of steps
(1-2 of 5 pairs converged after 30 steps at 1-10 M parameters), so a cap at what the budget
holds would mostly stop unconverged; restarting costs only products, and converges.
``l = min(c - 2, k + (c - k) // 2)``: half of the spare columns carry the wanted
directions over a restart, half are new steps (TRLan's rule of thumb).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UnconvergedWarning
from .basis import Basis, breakdown_threshold, matvec_work, random_unit, wanted_key
from .operator import SymmetricOperator

__all__ = ["thick_restart_lanczos"]


def thick_restart_lanczos(op: SymmetricOperator, start: Callable[[], Tensor], basis: Basis, limit: int,
                          gen: torch.Generator, k: int, which: str, tol: float, max_iter: int, check_every: int,
                          callback: Callable[[int, Tensor], None] | None,
                          vectors: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor, int]:
    """Thick-restart Lanczos (module docstring) from the unit vector ``start()`` (drawn here,
    so no caller holds a copy) in the empty ``basis``, restarting whenever it holds ``limit`` vectors; stops when the ``k`` wanted Ritz
    pairs have a relative residual <= ``tol`` (as :func:`~sharpscope.linalg.lanczos.lanczos`)
    or after ``max_iter`` products (warning). Returns values, unit Ritz vectors (op dtype, or
    None), residuals, converged flags (all ordered by ``which``) and the products spent."""
    n = op.n
    keep = min(limit - 2, k + (limit - k) // 2)
    proj = _Projection(limit)
    eps_op = torch.finfo(op.dtype).eps
    anorm, it, restarts, beta = 0.0, 0, 0, 0.0
    q = start().to(device=op.device, dtype=basis.work)
    while True:
        stored = proj.append(basis, q, beta)
        del q  # two working vectors during the product: the stored vector and the product
        w, h = proj.multiply(op, basis, stored)
        del stored
        it += 1
        beta = basis.layout.norm(w)  # float64 sums for a float32 w (sharpscope.reductions)
        anorm = max(anorm, float(h.abs().sum()) + beta)  # Gershgorin bound on ||H||, estimates ||A||
        m = basis.size
        breakdown = beta <= breakdown_threshold(op, anorm)
        full, last, exhausted = m == limit, it >= max_iter, m == n
        if not (full or last or exhausted or breakdown or (it >= k and (it - k) % check_every == 0)):
            q = w.div_(beta)
            continue
        theta, Y, residuals = proj.ritz(m, beta)
        tiny = max(math.sqrt(eps_op) * anorm, torch.finfo(torch.float64).tiny)
        converged = (residuals <= tol * theta.abs().clamp_min(tiny)) | exhausted
        order = torch.sort(wanted_key(theta, which), descending=True, stable=True).indices
        wanted = order[:k]
        if callback is not None and m >= k:
            callback(it, theta[wanted].clone())
        if (m >= k and bool(converged[wanted].all())) or last or exhausted:
            break
        if full:  # compress onto the most wanted Ritz vectors: H becomes diag(theta_l) + the coupling to come
            proj.compress(basis, Y[:, order[:keep]], theta[order[:keep]], w, anorm)
            restarts += 1
        if breakdown:  # an invariant subspace: go on with a random vector orthogonal to the basis
            r, _ = basis.orthogonalize(random_unit(gen, n, op.device).to(basis.work))
            rnorm = basis.layout.norm(r)
            if rnorm <= 1e-8:
                converged[:] = True
                break
            q, beta = r / rnorm, 0.0  # a fresh start: its rounding is no defect
        else:
            q = w.div_(beta)
    out = None
    if vectors:
        out = basis.combine(Y[:, wanted], torch.empty(n, min(k, m), dtype=basis.work, device=op.device))
        out = (out / out.new_tensor([basis.layout.norm(column) for column in out.T])).to(op.dtype)
    if not bool(converged[wanted].all()):
        _warn(theta[wanted], residuals[wanted], converged[wanted], k, it, limit, restarts, tol)
    return theta[wanted].clone(), out, residuals[wanted].clone(), converged[wanted].clone(), it


class _Projection:
    """The projected matrix ``H = Q^T A Q``, the Gram matrix ``G = Q^T Q`` of the stored basis
    (I for float64) and the rounding defects of its columns, at most ``limit`` of them.

    A basis stored in a lower precision than its working vectors holds each vector rounded:
    ``q_s = q + e``. The product is taken with the stored ``q_s`` (the basis and the products
    agree), but the exact remainder the previous step left was ``beta q``, so the column(s) it
    came from (``source``) gain ``-beta e`` in ``A Q - Q G^{-1} H``; a restart's rounding
    ``e_i`` of a kept Ritz vector adds at most ``2 ||A|| ||e_i||``. The norms are known
    exactly, so the residual reported is ``sqrt((||f|| y_m)^2 + sum_j (d_j y_j)^2)`` with these
    defects ``d_j`` (0 for float64; the sum of squares treats the rounding errors as uncorrelated).
    """

    def __init__(self, limit: int) -> None:
        self.H = torch.zeros(limit, limit, dtype=torch.float64)
        self.G = torch.eye(limit, dtype=torch.float64)
        self.defects = torch.zeros(limit, dtype=torch.float64)
        self.source = torch.zeros(limit, dtype=torch.float64)  # the columns the remainder beta q came from
        self.rounded = False  # the last vector appended was rounded by the storage

    def append(self, basis: Basis, q: Tensor, beta: float) -> Tensor:
        """Append ``q`` (the remainder ``beta q`` of the last step normalized; overwritten) and
        return it as stored, with its rounding's defect (its column of ``G`` comes with the
        product, from the same pass over the basis: :meth:`multiply`)."""
        stored = basis.append(q)
        self.rounded = stored is not q
        if self.rounded and beta > 0:  # the stored vector's rounding, against the remainder it came from
            d = beta * basis.layout.norm(q.sub_(stored))
            self.defects.copy_((self.defects**2 + (d * self.source) ** 2).sqrt())
        return stored

    def multiply(self, op: SymmetricOperator, basis: Basis, stored: Tensor) -> tuple[Tensor, Tensor]:
        """The product of the last stored vector, orthogonalized: the new remainder and its
        column ``h = Q^T A q_s`` of ``H`` (CPU); for a rounded basis also its column
        ``Q^T q_s`` of ``G``, projected in the same pass as the product."""
        j = basis.size - 1
        if self.rounded:
            w, h, g = basis.orthogonalize(matvec_work(op, stored), stored)
            g = g.double().cpu()
            self.G[: j + 1, j] = g
            self.G[j, : j + 1] = g
        else:
            w, h = basis.orthogonalize(matvec_work(op, stored))
        h = h.cpu()
        self.H[: j + 1, j] = h
        self.H[j, : j + 1] = h
        self.source.zero_()
        self.source[j] = 1.0
        return w, h

    def ritz(self, m: int, beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), ``G``-orthonormal coefficient vectors and residual bounds."""
        theta, Y = _ritz(self.H[:m, :m], self.G[:m, :m])
        return theta, Y, ((beta * Y[m - 1]) ** 2 + ((self.defects[:m, None] * Y) ** 2).sum(dim=0)).sqrt()

    def compress(self, basis: Basis, kept: Tensor, kept_theta: Tensor, w: Tensor, anorm: float) -> None:
        """The thick restart, in place: ``Q <- Q Y_l``, and ``H``, ``G``, the defects and the
        source of the next vector for the kept columns. The storage rounds ``Q_s = QY + E`` and,
        with ``A QY = QY Theta + w s^T``, to first order in ``E``:
        ``Q_s^T A Q_s = Theta + C Theta + Theta C^T + c s^T + s c^T`` and
        ``Q_s^T Q_s = I + C + C^T + D`` (``C, D, c`` from :meth:`Basis.rotate`)."""
        m, keep = basis.size, kept.shape[1]
        carried = ((self.defects[:m, None] * kept) ** 2).sum(dim=0)
        C, D, c, rounding = basis.rotate(kept, w)
        self.defects.zero_()
        self.defects[:keep] = (carried + (2 * anorm * rounding) ** 2).sqrt()
        s = kept[m - 1]
        CT = C * kept_theta
        self.H.zero_()
        self.H[:keep, :keep] = torch.diag(kept_theta) + CT + CT.T + torch.outer(c, s) + torch.outer(s, c)
        self.G.copy_(torch.eye(self.G.shape[0], dtype=torch.float64))
        self.G[:keep, :keep] += C + C.T + D
        self.source.zero_()
        self.source[:keep] = s  # A Q_l = Q_l Theta_l + f s^T


def _ritz(H: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """Ritz pairs of ``H y = theta G y`` (``G`` = the Gram matrix of a stored basis that rounding
    left slightly non-orthonormal), ascending, with ``Y^T G Y = I``: ``x = Q y`` is then a unit
    vector and ``theta`` its Rayleigh quotient. By Cholesky ``G = L L^T``: the eigenpairs
    ``(theta, z)`` of ``L^{-1} H L^{-T}`` and ``y = L^{-T} z``."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) != 0:
        return torch.linalg.eigh(H)
    M = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, H, upper=False).T, upper=False)
    theta, Z = torch.linalg.eigh((M + M.T) / 2)
    return theta, torch.linalg.solve_triangular(L.T, Z, upper=True)


def _warn(values: Tensor, residuals: Tensor, converged: Tensor, k: int, steps: int, capacity: int, restarts: int,
          tol: float) -> None:
    rel = float((residuals / values.abs().clamp_min(torch.finfo(torch.float64).tiny)).max())
    warnings.warn(UnconvergedWarning(
        f"thick-restart Lanczos (a basis of {capacity} vectors, {restarts} restarts) stopped at its cap of "
        f"{steps} products with {int(converged.sum())} of {k} eigenvalues converged to tol = {tol:g} (largest "
        f"relative residual {rel:.1e}); unconverged values may be far off: pass a larger max_iter (CLI: "
        "--max-iter), a larger memory budget or a looser tol"), stacklevel=4)
