"""Lanczos with full reorthogonalization for a few extreme eigenpairs of a symmetric operator.

Lanczos (1950; Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1) builds an
orthonormal basis ``Q_m = [q_1 .. q_m]`` of the Krylov space ``K_m(A, q_1)`` with

    A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T,     T_m = tridiag(beta, alpha, beta),

using ONE product with ``A`` per step. The eigenpairs ``(theta_j, s_j)`` of the small
``T_m`` give Ritz pairs ``(theta_j, x_j = Q_m s_j)`` whose residual is known for free:

    ||A x_j - theta_j x_j|| = beta_m |e_m^T s_j|                                   (*)

For a symmetric ``A`` and a unit ``x`` with residual ``r`` there is an eigenvalue within
``r`` of ``theta`` (Weyl / Bauer-Fike), and within ``r^2 / gap`` once ``r`` is below the
gap separating ``theta`` from the rest of the spectrum (Kato-Temple; Parlett, *The
Symmetric Eigenvalue Problem*, Thm. 11.7.1). Stopping at a relative residual ``tol`` (the
default ``1e-4``) therefore typically yields eigenvalues with relative error far below
``1e-6``: the eigenvalue converges twice as fast as the vector.

Design choices, all because one product may cost two gradient evaluations of a network:

* FULL reorthogonalization (classical Gram-Schmidt against every previous basis vector,
  done twice - "twice is enough", Giraud, Langou & Rozloznik 2005) in float64. It costs
  O(n m) flops per step, negligible next to an HVP, and keeps (*) valid, avoids ghost
  copies of converged eigenvalues and makes ``m <= n`` steps exhaust the space exactly.
* The basis is float64 even when the operator computes in float32 (cast in and out), unless
  it is asked for in float32, float16 or bfloat16, or a memory budget needs them; such a basis, and
  one the budget cannot hold whole, run in :mod:`~sharpscope.linalg.restart` (thick restarts,
  Rayleigh-Ritz with the stored basis's Gram matrix).
* Convergence is checked on the small ``T_m`` (cheap), every ``check_every`` steps.

Invariant subspaces (``beta ~ 0``: few distinct eigenvalues, a rank-deficient matrix, or a
start vector inside an invariant subspace) end a Krylov sequence early. The run then
continues with a fresh random vector orthogonalized against the basis (a new "block" of
``T``, which becomes block diagonal). This is how repeated eigenvalues are found with their
multiplicity: in exact arithmetic a Krylov space holds one vector per distinct eigenvalue,
and each restart uncovers one more copy. A block counts as invariant when ``beta`` is at
rounding level OR when every one of its Ritz pairs has converged. Stopping rule:

* every wanted Ritz pair has converged, and so has the current block's leader (its most
  wanted Ritz value: after a restart, the estimate of the best value left in the
  complement); and
* if the current block is invariant, it grew from a random vector (with probability 1 it
  then holds every distinct eigenvalue left in the complement, but copies may remain) and
  its leader does not rank strictly ahead of the ``k``-th wanted value (by more than the
  tolerance). Otherwise the run restarts.

Limitation, shared by every single-vector Krylov method (ARPACK included): a repeated
eigenvalue in a generic spectrum (no invariant subspace is met) is found with its
multiplicity only through rounding errors, i.e. possibly not at all; a block method would be
needed for that. Hessians of networks rarely have exactly repeated extreme eigenvalues.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checks import available_memory, finite_float, int_at_least
from ..errors import ConfigError, UnconvergedWarning
from .basis import Basis, breakdown_threshold, matvec_work, tridiagonal_eigh, wanted_key, work_dtype
from .budget import parse_basis_dtype, plan_basis
from .restart import thick_restart_lanczos
from .operator import SymmetricOperator

__all__ = ["EigenResult", "lanczos", "tridiagonal_eigh"]

_WHICH = ("LA", "SA", "LM")


# ------------------------------------------------------------------------------------------
# Lanczos for extreme eigenpairs
# ------------------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Ritz pairs from :func:`lanczos`.

    Attributes:
        eigenvalues: ``(k,)`` float64, ordered by ``which``: ``"LA"`` descending,
            ``"SA"`` ascending, ``"LM"`` by ``|lambda|`` descending.
        eigenvectors: ``(n, k)`` unit Ritz vectors (operator dtype), columns matching; None
            when ``vectors=False`` (they are then never formed).
        residuals: ``(k,)`` the Lanczos estimates ``beta_m |s_last|`` of
            ``||A x - theta x||`` (exact in exact arithmetic; with full
            reorthogonalization they match the true residual down to rounding level).
        converged: ``(k,)`` bool, ``residual <= tol * max(|theta|, tiny)`` with
            ``tiny = sqrt(eps(op dtype)) * ||T||`` (the criterion turns absolute for
            eigenvalues near zero). Pairs of an exhausted Krylov space are exact and
            always converged.
        n_matvecs: products spent by this call.
        n_iter: Lanczos steps (basis size; equals ``n_matvecs``).
        tol: the relative residual tolerance used.
        which: ``"LA"``, ``"SA"`` or ``"LM"``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    converged: Tensor
    n_matvecs: int
    n_iter: int
    tol: float
    which: str

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


@dataclass
class _Block:
    """One Krylov sequence (a diagonal block of T): start column, alphas, betas."""

    start: int
    random_start: bool
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)  # len(alphas) after each step: last is the trailing beta
    cache: tuple[Tensor, Tensor, Tensor] | None = None  # (values, vectors, residuals) once closed

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.cache is not None:
            return self.cache
        alphas = torch.tensor(self.alphas, dtype=torch.float64)
        values, vectors = tridiagonal_eigh(alphas, torch.tensor(self.betas[:-1], dtype=torch.float64))
        residuals = abs(self.betas[-1]) * vectors[-1, :].abs()
        return values, vectors, residuals

    def close(self) -> None:
        self.cache = None
        self.cache = self.ritz()


def default_max_iter(n: int, k: int, memory: float | None = None, budgeted: bool = False) -> int:
    """The default cap on Lanczos steps: ``min(n, max(300, 30k))``, lowered (never below the
    old default ``max(2k + 40, 10k)``) to what a float64 basis of n x steps fits into half of
    ``memory`` bytes (default: the memory available now); not lowered when ``budgeted`` (a
    memory budget: its plan restarts thickly instead).

    A generous cap, because the run stops as soon as the wanted pairs converge: on the
    2,410-parameter digits MLP of the tests, the top 1 / 5 converge after 11 / 18 products,
    but the smallest 1 / 5, at the edge of the dense bulk, need 51 / 97 (the old cap, 50,
    stopped them short: 60 % errors). The cap only bounds a run that does not converge, and
    that run warns (:class:`~sharpscope.errors.UnconvergedWarning`).
    """
    steps = max(300, 30 * k)
    if budgeted:
        return min(n, steps)
    if memory is None:
        memory = available_memory()
    if memory is not None:
        steps = min(steps, max(2 * k + 40, 10 * k, int(memory / 2 / (8 * max(n, 1)))))
    return min(n, steps)


def _check_arguments(op: SymmetricOperator, k: int, which: str, tol: float, max_iter: int | None,
                     check_every: int, callback: Callable[[int, Tensor], None] | None,
                     budget: bool = False) -> tuple[int, int, int]:
    """:func:`lanczos`'s arguments checked (ConfigError); returns ``k``, ``max_iter`` (the default
    or the given one capped at ``n``; within a memory ``budget`` the default is not lowered to
    what a float64 basis fits: the plan restarts instead) and ``check_every`` as ints."""
    if not isinstance(op, SymmetricOperator):
        raise ConfigError("lanczos expects a SymmetricOperator")
    n = op.n
    k = int_at_least("k", k, 1)
    if k > n:
        raise ConfigError(f"k = {k} exceeds the dimension n = {n}")
    if which not in _WHICH:
        raise ConfigError(f"which must be one of {_WHICH}, got {which!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ConfigError(f"tol must be a finite number > 0, got {tol!r}")
    check_every = int_at_least("check_every", check_every, 1)
    if max_iter is None:
        max_iter = default_max_iter(n, k, budgeted=budget)
    else:
        max_iter = int_at_least("max_iter", max_iter, 1)
        if max_iter < k:
            raise ConfigError(f"max_iter = {max_iter} is smaller than k = {k}")
        max_iter = min(max_iter, n)
    if callback is not None and not callable(callback):
        raise ConfigError("callback must be callable")
    return k, max_iter, check_every


def _unit_start(v0: object, op: SymmetricOperator) -> Tensor:
    """The given start vector (this process's entries of it) as a float64 unit vector on the operator's device."""
    n = op.local_n
    if not isinstance(v0, Tensor) or v0.numel() != n:
        raise ConfigError(f"v0 must be a tensor with {n} entries")
    q = v0.detach().reshape(n).to(device=op.device, dtype=torch.float64)
    norm = op.layout.norm(q)
    if not (math.isfinite(norm) and norm > 0):
        raise ConfigError("v0 must be finite and nonzero")
    return q / norm


def lanczos(
    op: SymmetricOperator,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    v0: Tensor | None = None,
    check_every: int = 1,
    callback: Callable[[int, Tensor], None] | None = None,
    *,
    vectors: bool = True,
    memory_bytes: float | None = None,
    basis_dtype: torch.dtype | str | None = None,
    basis_device: str | torch.device | None = None,
) -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalization.

    Args:
        op: the operator; only ``op.matvec`` is used, once per step. With a sharded
            ``op.layout`` (:mod:`.layout`) every vector, ``v0`` and the eigenvectors
            included, is this process's entries of it, and inner products are reduced.
        k: how many eigenpairs.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest
            magnitude.
        tol: relative residual tolerance: stop when every wanted Ritz pair has
            ``beta_m |s_last| <= tol * max(|theta|, tiny)``. The eigenvalue error is then
            at most the residual and, past the gap, about ``residual^2 / gap``: ``1e-4``
            typically gives eigenvalues accurate far below ``1e-6`` relative.
        max_iter: cap on steps (= products); default :func:`default_max_iter` (300 or
            30k, less where the basis would not fit in memory). Never more than ``n``:
            after ``n`` steps the space is exhausted and the Ritz values are the exact
            eigenvalues.
        seed: seeds the Gaussian start vector and the restart vectors.
        v0: optional start vector (normalized here).
        check_every: solve the small tridiagonal problem every this many steps (from step
            ``k`` on; always at a breakdown and at the last step).
        callback: ``callback(iteration, ritz_values)`` at each check, the wanted Ritz
            values ordered by ``which`` (for progress bars).
        vectors: form the Ritz vectors (an ``n x k`` matrix); False leaves them out.
        memory_bytes: a budget for the basis, working and Ritz vectors: the plan of
            :func:`~sharpscope.linalg.budget.plan_basis` (dtype, thick restarts) or its
            :class:`~sharpscope.errors.MemoryBudgetError` before any product.
        basis_dtype, basis_device: store the basis in ``"float64"`` (default), ``"float32"``,
            ``"float16"`` or ``"bfloat16"``, there (e.g. ``"cpu"`` for an operator on a GPU).

    Returns:
        An :class:`EigenResult`. Unconverged pairs are reported as such (``converged``
        False) and the call warns (:class:`~sharpscope.errors.UnconvergedWarning`),
        never silently.
    """
    if memory_bytes is not None:
        memory_bytes = finite_float("memory_bytes", memory_bytes, above=0)
    k, max_iter, check_every = _check_arguments(op, k, which, tol, max_iter, check_every, callback,
                                                memory_bytes is not None)
    basis, limit = _basis(op, k, max_iter, memory_bytes, basis_dtype, basis_device, vectors)
    device = op.device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    start_count = op.n_matvecs
    if limit < max_iter or basis.dtype != torch.float64:  # the rounding of a coarser basis is tracked there
        values, ritz, residuals, converged, it = thick_restart_lanczos(
            op, lambda: op.layout.random_unit(gen, device) if v0 is None else _unit_start(v0, op), basis, limit, gen,
            k, which, tol, max_iter, check_every, callback, vectors)
        return EigenResult(values, ritz, residuals, converged, op.n_matvecs - start_count, it, float(tol), which)
    q = op.layout.random_unit(gen, device) if v0 is None else _unit_start(v0, op)
    blocks, state, it = _iterate(op, basis, q.to(basis.work), v0 is None, gen, k, which, tol, max_iter,
                                 check_every, callback)
    wanted = state.wanted
    if not bool(state.converged[wanted].all()):
        _warn_unconverged(state, wanted, k, it, max_iter, tol)
    return EigenResult(
        eigenvalues=state.values[wanted].clone(),
        eigenvectors=_ritz_vectors(basis, blocks, state, k, op.dtype) if vectors else None,
        residuals=state.residuals[wanted].clone(),
        converged=state.converged[wanted].clone(),
        n_matvecs=op.n_matvecs - start_count,
        n_iter=it,
        tol=float(tol),
        which=which,
    )


def _basis(op: SymmetricOperator, k: int, max_iter: int, memory_bytes: float | None, basis_dtype: object,
           basis_device: str | torch.device | None, vectors: bool) -> tuple[Basis, int]:
    """The empty basis of :func:`lanczos` and the number of vectors it may hold before a thick
    restart: ``max_iter`` (growing as needed) without a budget, else the plan's fixed size."""
    dtype = parse_basis_dtype(basis_dtype)
    if op.layout.sharded and (memory_bytes is not None or dtype not in (None, torch.float64)):
        raise ConfigError("a memory budget or a basis dtype other than float64 is not supported for a sharded operator")
    store = op.device if basis_device is None else torch.device(basis_device)
    if memory_bytes is None:
        dtype = dtype or torch.float64
        limit, fixed = max_iter, False
    else:
        plan = plan_basis(op.n, max_iter, memory_bytes, op.dtype, k=k, dtype=dtype, vectors=vectors)
        dtype, limit, fixed = plan.dtype, plan.capacity, True
    capacity = limit if fixed else min(max_iter, max(2 * k + 20, 32))
    return Basis(op.n, store, capacity, dtype, work_dtype(dtype, op.dtype), fixed=fixed, work_device=op.device,
                 layout=op.layout), limit


def _iterate(op: SymmetricOperator, basis: Basis, q: Tensor, random_start: bool, gen: torch.Generator, k: int,
             which: str, tol: float, max_iter: int, check_every: int,
             callback: Callable[[int, Tensor], None] | None) -> tuple[list[_Block], _State, int]:
    """The Lanczos steps from the unit vector ``q`` into the empty ``basis`` until the stopping
    rule (module docstring) or ``max_iter``: the blocks, the last convergence check and the
    number of steps.

    Step j appends ``q_j`` and orthogonalizes ``A q_j`` against the whole basis (CGS2):
    ``alpha_j = q_j^T A q_j`` and ``beta_j = ||w||`` of the remainder ``w``, which is
    ``q_{j+1} beta_j`` unless the block ends (breakdown, or all its pairs converged) and a
    random vector orthogonal to the basis starts the next block (:func:`_restart_vector`)."""
    n, device = op.n, op.device
    eps_op = torch.finfo(op.dtype).eps
    blocks = [_Block(start=0, random_start=random_start)]
    anorm = 0.0
    it = 0
    while True:
        block = blocks[-1]
        q = basis.append(q)
        it += 1
        w, h = basis.orthogonalize(matvec_work(op, q))
        alpha = float(h[-1])
        beta = basis.layout.norm(w)
        prev_beta = block.betas[-1] if block.betas else 0.0
        block.alphas.append(alpha)
        block.betas.append(beta)
        anorm = max(anorm, abs(alpha) + beta + prev_beta)  # Gershgorin bound on ||T||, estimates ||A||

        exhausted = it >= n
        breakdown = (not exhausted) and beta <= breakdown_threshold(op, anorm)
        last = it >= max_iter
        if not (exhausted or breakdown or last or (it >= k and (it - k) % check_every == 0)):
            q = w / beta
            continue

        state = _State.build(blocks, which, k, tol, math.sqrt(eps_op) * anorm, exhausted)
        if callback is not None:
            callback(it, state.values[state.wanted].clone())
        # the current block is (numerically) invariant when beta ~ 0 or when every one of its
        # Ritz pairs has converged: its Krylov sequence has nothing more to say
        invariant = breakdown or state.block_converged
        if exhausted or last or _finished(state, block, invariant):
            return blocks, state, it
        if not invariant:
            q = w / beta
            continue
        # close this block, continue with a random vector orthogonal to the whole basis
        # (T becomes block diagonal; the dropped coupling beta is below the tolerance)
        block.close()
        q = _restart_vector(basis, gen, device)
        if q is None:  # numerically the basis already spans everything
            state.converged[:] = True
            return blocks, state, it
        blocks.append(_Block(start=basis.size, random_start=True))


def _finished(state: _State, block: _Block, invariant: bool) -> bool:
    """The stopping rule at a check: every wanted pair and the current block's leader have
    converged and, where the block is invariant, it grew from a random vector (it then holds
    every distinct eigenvalue left in the complement, with probability 1; copies of them may
    remain, which matters only if its leader ranks strictly ahead of the k-th wanted value)."""
    if not state.enough:
        return False
    return not invariant or (block.random_start and not state.leader_ahead)


def _restart_vector(basis: Basis, gen: torch.Generator, device: torch.device) -> Tensor | None:
    """A random unit vector orthogonal to the basis (CGS2), or None when the remainder is
    below 1e-8: numerically the basis already spans everything."""
    r, _ = basis.orthogonalize(basis.layout.random_unit(gen, device).to(basis.work))
    rnorm = basis.layout.norm(r)
    if rnorm <= 1e-8:
        return None
    return r / rnorm


def _ritz_vectors(basis: Basis, blocks: list[_Block], state: _State, k: int, dtype: torch.dtype) -> Tensor:
    """``(n, k)`` Ritz vectors ``x = Q_block s`` of the wanted values, in their order, formed one
    column at a time in the working dtype and stored in ``dtype`` (no ``n x k`` float64 matrix)."""
    vectors = torch.empty(basis.n, k, dtype=dtype, device=basis.device)
    for out_col, idx in enumerate(state.wanted.tolist()):
        blk = blocks[int(state.owner[idx])]
        _, S, _ = blk.ritz()
        s = S[:, int(state.column[idx])]
        if basis.dtype == torch.float64:
            vectors[:, out_col] = basis.Q[:, blk.start : blk.start + len(blk.alphas)] @ s.to(basis.device)
        else:  # the block's coefficients in a column of the whole basis, read in chunks of rows
            y = torch.zeros(basis.size, 1, dtype=torch.float64)
            y[blk.start : blk.start + len(blk.alphas), 0] = s
            vectors[:, out_col : out_col + 1] = basis.combine(y, torch.empty(basis.n, 1, dtype=basis.work,
                                                                              device=basis.device))
    return vectors


def _warn_unconverged(state: _State, wanted: Tensor, k: int, steps: int, max_iter: int, tol: float) -> None:
    values, residuals = state.values[wanted], state.residuals[wanted]
    rel = float((residuals / values.abs().clamp_min(torch.finfo(torch.float64).tiny)).max())
    done = int(state.converged[wanted].sum())
    warnings.warn(UnconvergedWarning(
        f"Lanczos stopped at its cap of {max_iter} steps ({steps} products) with {done} of {k} eigenvalues "
        f"converged to tol = {tol:g} (largest relative residual {rel:.1e}); unconverged values may be far off: "
        "pass a larger max_iter (CLI: --max-iter) or a looser tol"), stacklevel=3)


@dataclass
class _State:
    """All Ritz values at a convergence check, and the facts the stopping rule needs."""

    values: Tensor  # all Ritz values, blocks concatenated
    residuals: Tensor
    converged: Tensor
    owner: Tensor  # block index of each Ritz value
    column: Tensor  # column in its block's eigenvector matrix
    wanted: Tensor  # indices of the k most wanted values, best first
    enough: bool  # >= k values, wanted ones and the current block's leader converged
    block_converged: bool  # every Ritz pair of the current block converged
    leader_ahead: bool  # current block's leader ranks strictly ahead of the k-th wanted value

    @classmethod
    def build(cls, blocks: list[_Block], which: str, k: int, tol: float, tiny: float, exhausted: bool) -> _State:
        values, residuals, owner, column = _gather(blocks)
        tiny = max(tiny, torch.finfo(torch.float64).tiny)
        converged = residuals <= tol * torch.clamp(values.abs(), min=tiny)
        if exhausted:  # Krylov space = whole space: the Ritz values are the eigenvalues
            converged = torch.ones_like(converged)
        key = wanted_key(values, which)
        wanted = torch.sort(key, descending=True, stable=True).indices[:k]
        current = torch.nonzero(owner == len(blocks) - 1).reshape(-1)
        leader = current[torch.argmax(key[current])]
        kth = wanted[-1]
        margin = tol * max(abs(float(values[kth])), tiny)
        return cls(
            values=values,
            residuals=residuals,
            converged=converged,
            owner=owner,
            column=column,
            wanted=wanted,
            enough=values.numel() >= k and bool(converged[wanted].all()) and bool(converged[leader]),
            block_converged=bool(converged[current].all()),
            leader_ahead=float(key[leader] - key[kth]) > margin,
        )


def _gather(blocks: list[_Block]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ritz values and residuals of all blocks, with the owning block and column of each."""
    values, residuals, owner, column = [], [], [], []
    for b, blk in enumerate(blocks):
        v, _, r = blk.ritz()
        values.append(v)
        residuals.append(r)
        owner.append(torch.full((v.numel(),), b, dtype=torch.int64))
        column.append(torch.arange(v.numel()))
    return torch.cat(values), torch.cat(residuals), torch.cat(owner), torch.cat(column)
