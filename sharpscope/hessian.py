"""Hessian analyses of a model's loss by Hessian-vector products (HVPs) of
:class:`sharpscope.objective.Objective` and :mod:`sharpscope.linalg`; the Hessian is never formed.

- :func:`eigenvalues`: Lanczos, plus lambda_1 / lambda_k (Foret et al., ICLR 2021, App. C.3);
- :func:`trace`: Hutch++ (Meyer et al. 2021) or Hutchinson, with a standard error;
- :func:`density`: stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao, ICML 2019);
- :func:`layer_summary`: top eigenvalue and trace of each diagonal block.

``operator`` (:mod:`sharpscope.curvature`) analyses the GGN or a Fisher instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import Tensor, nn

from . import curvature, linalg
from .checks import (GIB, finite_float, int_at_least, parameter_count, require_lanczos_memory,
                     require_trace_memory)
from .linalg.budget import parse_basis_dtype, plan_basis
from .linalg.lanczos import default_max_iter
from .errors import ConfigError
from .objective import Objective, parameter_groups, select_parameters

__all__ = ["eigenvalues", "trace", "density", "layer_summary", "EigenvaluesResult", "TraceResult", "DensityResult",
           "LayerSummary", "LayerRow", "eigenspace_overlap", "EigenspaceOverlap"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _budget(memory_gb: float | None) -> float | None:
    """``memory_gb`` (GiB, 2^30 bytes) in bytes, checked; None without a budget."""
    return None if memory_gb is None else finite_float("memory_gb", memory_gb, above=0) * GIB


def _dtype(model: nn.Module | Objective) -> Any:
    """The dtype the products compute in: the objective's, or the model's first parameter's."""
    return model.dtype if isinstance(model, Objective) else next(model.parameters()).dtype


def _operator(model: nn.Module | Objective, loss_fn: LossFn | None, data: Iterable | None, params: Any,
              hvp_mode: str, operator: str, mc_samples: int | str, seed: int) -> tuple[Objective, Any]:
    """The objective (``model`` when it is one) and its curvature ``operator``."""
    if not isinstance(model, Objective) and data is None:
        raise ConfigError("pass loss_fn and data (or an Objective); loss_fn=None is the model's own "
                          "model(**batch).loss")
    obj = model if isinstance(model, Objective) else Objective(model, loss_fn, data, params=params, hvp_mode=hvp_mode)
    return obj, curvature.operator(obj, operator, mc_samples=mc_samples, seed=seed)


def _shared(obj: Objective, operator: str, mc: int | str | None, start: float) -> dict[str, Any]:
    """The fields every result records (the HVP mode once the products ran: "auto" may switch)."""
    return {"wall_time": time.perf_counter() - start, "n_params": obj.n, "n_examples": obj.n_examples,
            "operator": operator, "mc_samples": mc, "hvp_mode": obj.hvp_mode if operator == "hessian" else None}


@dataclass
class EigenvaluesResult:
    """Extreme eigenvalues with residuals ||H v - lambda v||; with ``return_vectors``, the unit Ritz
    vectors (n, k) by column over the parameters ``names`` of ``shapes`` (:meth:`vector_views`)."""

    eigenvalues: list[float]
    residuals: list[float]
    converged: list[bool]
    which: str
    tol: float
    n_hvp: int
    n_iter: int
    wall_time: float
    n_params: int
    n_examples: int
    eigenvectors: Tensor | None = field(default=None, repr=False)
    operator: str = "hessian"
    mc_samples: int | str | None = None
    hvp_mode: str | None = None  # how the Hessian's products were computed (None for other operators)
    names: list[str] | None = field(default=None, repr=False)
    shapes: list[tuple[int, ...]] | None = field(default=None, repr=False)

    def vector_views(self) -> list[dict[str, Tensor]]:
        """Each eigenvector as ``{parameter name: view shaped like the parameter}`` (no copy)."""
        if self.eigenvectors is None or self.names is None or self.shapes is None:
            raise ConfigError("no eigenvectors: call eigenvalues(..., return_vectors=True)")
        sizes = [math.prod(s) for s in self.shapes]
        return [{n: c.view(s) for n, c, s in zip(self.names, self.eigenvectors[:, j].split(sizes), self.shapes)}
                for j in range(self.eigenvectors.shape[1])]

    @property
    def ratio(self) -> float | None:
        """lambda_1 / lambda_k (lambda_max / lambda_5 for k = 5, which = "LA")."""
        if len(self.eigenvalues) < 2 or self.eigenvalues[-1] == 0:
            return None
        return self.eigenvalues[0] / self.eigenvalues[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the vectors and their layout are left out (they stay on the object)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("eigenvectors", "names", "shapes")}
        d["ratio"] = self.ratio
        return d


def eigenvalues(model: nn.Module | Objective, loss_fn: LossFn | None = None, data: Iterable | None = None,
                k: int = 5, which: str = "LA", tol: float = 1e-4, max_iter: int | None = None,
                params: Any = None, seed: int = 0, hvp_mode: str = "auto",
                return_eigenvectors: bool = False, callback: Callable | None = None,
                operator: str = "hessian", mc_samples: int | str = "exact",
                return_vectors: bool = False, memory_gb: float | None = None,
                basis_dtype: str | None = None, basis_device: Any = None) -> EigenvaluesResult:
    """The k extreme eigenvalues (``which``: LA, SA or LM) of the Hessian or another ``operator``.
    Converged: ||H x - theta x|| <= tol |theta|, so the error is <= residual^2 / gap (Parlett, The
    Symmetric Eigenvalue Problem, 11.7). ``return_vectors`` (or ``return_eigenvectors``) keeps the
    Ritz vectors, within angle residual / gap of the true ones (Davis-Kahan), sign arbitrary.

    ``memory_gb`` bounds what Lanczos holds (basis, working and Ritz vectors; not the model nor a
    product's graph): the basis is stored in float64, float32 or float16 and, if need be, Lanczos
    restarts thickly (:mod:`sharpscope.linalg.budget`); a budget that cannot hold ``k + 2`` float16
    vectors raises :class:`~sharpscope.errors.MemoryBudgetError` before any product. ``basis_dtype``
    fixes the basis's dtype, ``basis_device`` where it is kept (e.g. ``"cpu"`` for a model on a GPU)."""
    mc = curvature.check(operator, mc_samples)
    keep = return_vectors or return_eigenvectors
    n, budget = parameter_count(model), _budget(memory_gb)  # refuse a basis that cannot fit, before any product
    k = int_at_least("k", k, 1)
    if budget is None:
        steps = max_iter if max_iter is not None else default_max_iter(n, k)
        require_lanczos_memory(n, int_at_least("max_iter", steps, 1))
    else:
        steps = int_at_least("max_iter", max_iter, 1) if max_iter is not None else default_max_iter(n, k, budgeted=True)
        plan_basis(n, steps, budget, _dtype(model), k=k, dtype=parse_basis_dtype(basis_dtype), vectors=keep)
    start = time.perf_counter()
    obj, op = _operator(model, loss_fn, data, params, hvp_mode, operator, mc_samples, seed)
    curvature.warn_sampled_fisher(operator, mc, "the top eigenvalues")
    res = linalg.lanczos(op, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed, callback=callback,
                         vectors=keep, memory_bytes=budget, basis_dtype=basis_dtype, basis_device=basis_device)
    return EigenvaluesResult(
        eigenvalues=[float(x) for x in res.eigenvalues], residuals=[float(x) for x in res.residuals],
        converged=[bool(x) for x in res.converged], which=which, tol=tol, n_hvp=res.n_matvecs, n_iter=res.n_iter,
        eigenvectors=res.eigenvectors.T.contiguous().T if keep else None,  # columns contiguous: views
        names=list(obj.names) if keep else None, shapes=[tuple(s) for s in obj.shapes] if keep else None,
        **_shared(obj, operator, mc, start))


@dataclass
class TraceResult:
    """tr(H) with its standard error."""

    trace: float
    stderr: float
    method: str
    n_hvp: int
    wall_time: float
    n_params: int
    n_examples: int
    operator: str = "hessian"
    mc_samples: int | str | None = None
    hvp_mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trace(model: nn.Module | Objective, loss_fn: LossFn | None = None, data: Iterable | None = None,
          n_matvecs: int = 99, method: str = "hutch++", params: Any = None, seed: int = 0,
          hvp_mode: str = "auto", operator: str = "hessian", mc_samples: int | str = "exact",
          memory_gb: float | None = None) -> TraceResult:
    """tr(H) (or of another ``operator``) from ``n_matvecs`` products by Hutch++ or Hutchinson.
    ``memory_gb``: refuse (:class:`~sharpscope.errors.MemoryBudgetError`) probe blocks that would not
    fit in it, and multiply the products in blocks sized from what is left of it."""
    mc = curvature.check(operator, mc_samples)
    budget = _budget(memory_gb)
    held = require_trace_memory(parameter_count(model), int_at_least("n_matvecs", n_matvecs, 1), budget)
    if method not in ("hutch++", "hutchinson"):
        raise ConfigError(f"trace method must be 'hutch++' or 'hutchinson', got {method!r}")
    start = time.perf_counter()
    obj, op = _operator(model, loss_fn, data, params, hvp_mode, operator, mc_samples, seed)
    fn = linalg.hutchpp if method == "hutch++" else linalg.hutchinson
    # batched products in blocks whose memory stays within a budget (what memory_gb leaves)
    block = curvature.block_size(obj, operator, None if budget is None else max(1, int(budget - held)))
    res = fn(op, n_matvecs=n_matvecs, seed=seed, block_size=block if method == "hutch++" else (block or 1))
    return TraceResult(trace=float(res.estimate), stderr=float(res.stderr), method=res.method, n_hvp=res.n_matvecs,
                       **_shared(obj, operator, mc, start))


@dataclass
class DensityResult:
    """Smoothed eigenvalue density of H (stochastic Lanczos quadrature)."""

    grid: list[float]
    density: list[float]
    nodes: list[list[float]]
    weights: list[list[float]]
    sigma: float
    n_runs: int
    n_steps: int
    n_hvp: int
    wall_time: float
    n_params: int
    n_examples: int
    operator: str = "hessian"
    mc_samples: int | str | None = None
    hvp_mode: str | None = None

    @property
    def mean(self) -> float:
        """Estimate of tr(H) / n: the mean of the quadrature over runs."""
        return sum(sum(t * w for t, w in zip(ts, ws)) for ts, ws in zip(self.nodes, self.weights)) / self.n_runs

    @property
    def trace_estimate(self) -> float:
        return self.mean * self.n_params

    @property
    def trace_stderr(self) -> float | None:
        """s / sqrt(R) over the R runs' n sum_j tau_j theta_j (Hutchinson's z^T H z); None for one run."""
        runs = len(self.nodes)
        if runs < 2:
            return None
        per_run = [self.n_params * sum(t * w for t, w in zip(ts, ws)) for ts, ws in zip(self.nodes, self.weights)]
        mean = sum(per_run) / runs
        return math.sqrt(sum((x - mean) ** 2 for x in per_run) / (runs - 1) / runs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trace_estimate"] = self.trace_estimate
        d["trace_stderr"] = self.trace_stderr
        return d


def density(model: nn.Module | Objective, loss_fn: LossFn | None = None, data: Iterable | None = None,
            n_runs: int = 10, n_steps: int = 80, sigma_squared: float = 1e-5, grid_points: int = 2000,
            params: Any = None, seed: int = 0, hvp_mode: str = "auto", operator: str = "hessian",
            mc_samples: int | str = "exact", memory_gb: float | None = None,
            basis_dtype: str | None = None, basis_device: Any = None) -> DensityResult:
    """Spectral density by SLQ: ``n_runs`` Lanczos runs of ``n_steps`` steps, Gaussian kernel of
    variance sigma_squared * max(1, lambda_max - lambda_min) (Ghorbani et al. 2019). The runs hold
    one basis at a time; ``memory_gb`` stores it in the finest dtype that fits (float64, float32,
    float16), else raises :class:`~sharpscope.errors.MemoryBudgetError` before any product;
    ``basis_dtype``, ``basis_device`` as in :func:`eigenvalues`."""
    mc = curvature.check(operator, mc_samples)
    finite_float("sigma_squared", sigma_squared, above=0)  # checked again only after the SLQ runs
    n, budget = parameter_count(model), _budget(memory_gb)
    steps, runs = int_at_least("n_steps", n_steps, 1), int_at_least("n_runs", n_runs, 1)
    if budget is None:
        require_lanczos_memory(n, steps, runs)
    else:
        plan_basis(n, steps, budget, _dtype(model), dtype=parse_basis_dtype(basis_dtype),
                   what=f"an SLQ run of {min(steps, n):,} steps")
    start = time.perf_counter()
    obj, op = _operator(model, loss_fn, data, params, hvp_mode, operator, mc_samples, seed)
    curvature.warn_sampled_fisher(operator, mc, "the spectral density's upper edge and top eigenvalues")
    res = linalg.spectral_density(op, n_runs=n_runs, n_steps=n_steps, seed=seed, sigma_squared=sigma_squared,
                                  grid_points=grid_points, memory_bytes=budget, basis_dtype=basis_dtype,
                                  basis_device=basis_device)
    return DensityResult(
        grid=res.grid.tolist(), density=res.density.tolist(), nodes=res.nodes.tolist(),
        weights=res.weights.tolist(), sigma=float(res.sigma), n_runs=res.n_runs, n_steps=res.n_steps,
        n_hvp=res.n_matvecs, **_shared(obj, operator, mc, start))


@dataclass
class LayerRow:
    name: str
    n_params: int
    lambda_max: float
    converged: bool
    trace: float
    trace_stderr: float
    n_hvp: int


@dataclass
class LayerSummary:
    """Top eigenvalue and trace of each diagonal block H_ll of the Hessian."""

    by: str
    rows: list[LayerRow]
    n_hvp: int
    wall_time: float
    operator: str = "hessian"
    mc_samples: int | str | None = None
    hvp_mode: str | None = None  # the last block's mode (every block's, unless "auto" switched)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_summary(model: nn.Module, loss_fn: LossFn, data: Iterable, by: str = "layer", tol: float = 1e-3,
                  trace_matvecs: int = 30, seed: int = 0, hvp_mode: str = "auto",
                  callback: Callable[[str], None] | None = None, operator: str = "hessian",
                  mc_samples: int | str = "exact", params: Any = None,
                  memory_gb: float | None = None, fd_step: float | None = None) -> LayerSummary:
    """lambda_max(H_ll) by Lanczos and tr(H_ll) by Hutch++ per group of ``params`` (``by``: "layer",
    "block" or "kind", :func:`sharpscope.models.param_names.group_parameters`), of any ``operator``;
    ``memory_gb`` bounds each block's Lanczos and trace (:func:`eigenvalues`, :func:`trace`); ``fd_step``
    as :class:`~sharpscope.objective.Objective`'s."""
    mc = curvature.check(operator, mc_samples)
    start = time.perf_counter()
    groups = parameter_groups(model, by=by)
    if params is not None:
        chosen = set(select_parameters(model, params))
        groups = {k: kept for k, v in groups.items() if (kept := [n for n in v if n in chosen])}
    batches = Objective(model, loss_fn, data, hvp_mode=hvp_mode).batches  # read the data once
    rows, mode = [], None
    for name, names in groups.items():
        if callback is not None:
            callback(name)
        obj = Objective(model, loss_fn, batches, params=names, hvp_mode=hvp_mode, fd_step=fd_step)
        top = eigenvalues(obj, k=1, tol=tol, seed=seed, operator=operator, mc_samples=mc_samples, memory_gb=memory_gb)
        tr = trace(obj, n_matvecs=min(trace_matvecs, max(3, obj.n)), seed=seed, operator=operator,
                   mc_samples=mc_samples, memory_gb=memory_gb)
        rows.append(LayerRow(name, obj.n, top.eigenvalues[0], top.converged[0], tr.trace, tr.stderr,
                             top.n_hvp + tr.n_hvp))
        obj.release()
        mode = top.hvp_mode
    return LayerSummary(by, rows, sum(r.n_hvp for r in rows), time.perf_counter() - start, operator, mc, mode)



@dataclass
class EigenspaceOverlap:
    """Overlap of two eigenspaces, tr(P_a P_b) / k (:func:`sharpscope.linalg.subspace_overlap`)."""

    overlap: float
    k: int
    cos2: list[list[float]]  # squared cosines <v_a_i, v_b_j>^2 between the two sets of eigenvectors
    n_params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eigenspace_overlap(a: EigenvaluesResult, b: EigenvaluesResult) -> EigenspaceOverlap:
    """Overlap ||V_a^T V_b||_F^2 / k in [0, 1] of two :func:`eigenvalues` results' vectors (Gur-Ari,
    Roberts & Dyer, "Gradient Descent Happens in a Tiny Subspace", 2018): 1 the same space."""
    for name, r in (("first", a), ("second", b)):
        if r.eigenvectors is None or r.names is None or r.shapes is None:
            raise ConfigError(f"the {name} result holds no eigenvectors: call eigenvalues(..., return_vectors=True)")
    if a.names != b.names or a.shapes != b.shapes:
        diff = next((f"{na} {tuple(sa)} vs {nb} {tuple(sb)}" for na, sa, nb, sb in
                     zip(a.names, a.shapes, b.names, b.shapes) if na != nb or sa != sb),
                    f"{len(a.names)} vs {len(b.names)} tensors")
        raise ConfigError(f"the two models have different parameters ({diff}): their eigenspaces cannot be compared")
    C = linalg.principal_cosines(a.eigenvectors, b.eigenvectors)
    return EigenspaceOverlap(overlap=linalg.subspace_overlap(a.eigenvectors, b.eigenvectors), k=min(C.shape),
                             cos2=(C**2).tolist(), n_params=int(a.eigenvectors.shape[0]))
