"""The Hessian of a model sharded with FSDP2 ``fully_shard`` over the ranks of a process group:
its extreme eigenvalues (:func:`sharded_eigenvalues`, Lanczos), trace (:func:`sharded_trace`,
Hutchinson) and spectral density (:func:`sharded_density`, SLQ).

At 100 M+ parameters the parameters, their gradients and a Lanczos basis of m float64
vectors (8 n m bytes: 15 GiB at 124 M parameters and 16 steps) do not fit one device.
Here every rank holds only its shard of each:

* the parameters: FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps each parameter as a
  DTensor sharded on dim 0 (rank r holds a contiguous block of rows); a forward pass
  all-gathers it, a backward pass reduce-scatters its gradient back to the shards;
* the vectors: a vector over the parameters is held as the rank's rows of every parameter,
  concatenated in the parameters' order (a :class:`~sharpscope.linalg.layout.VectorLayout`
  whose pieces are those rows' global index ranges); Lanczos (:mod:`sharpscope.linalg`,
  which knows no networks) reduces its inner products over the ranks (an all-reduce of
  float64 partial sums) and draws its random start as the global vector's entries.

Products are finite differences of gradients (the gradient is the only derivative FSDP
gives: the model's parameters are perturbed in place on each rank's shard,
:mod:`sharpscope.linalg.finite_difference` for the step and its error bound):

    H v ~ ||v|| (g(w + t u) - g(w - t u)) / (2 t),    u = v / ||v||.

Every rank evaluates the SAME batches (the whole data set) and FSDP averages the ranks'
identical gradients in its reduce-scatter. Splitting the batches instead would divide the
work by the number of ranks, but (a) FSDP needs every rank to run the same sequence of
forward and backward passes (each is a collective), which an uneven split breaks, and (b)
the average of identical gradients over 2 ranks is exact (g + g = 2g, halved; over any power
of two alike, else within one rounding), so each product is the one-process product bit for
bit (measured on 2 gloo ranks: tests/test_sharded.py), and the analysis equals the one-process
finite-difference analysis to the float64 rounding of Lanczos' reduced inner products. What
is sharded is memory, not arithmetic: the cost per product is that of one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import distributed as dist_utils
from .batches import BatchLoss, fingerprint
from .checks import available_memory
from .errors import ConfigError, NonFiniteLossError
from .fd_hvp import gather_scaled, gradient_difference, grads_restored, restoring, shift_in_place
from .hessian import DensityResult, EigenvaluesResult, TraceResult
from .linalg import SymmetricOperator, hutchinson, lanczos, spectral_density
from .linalg.finite_difference import central_difference, central_difference_error, central_difference_step
from .linalg.lanczos import default_max_iter
from .linalg.layout import VectorLayout
from .objective import all_finite, eval_mode

__all__ = ["shard_model", "ShardedHessian", "sharded_eigenvalues", "sharded_trace", "sharded_density", "HVP_MODE"]

HVP_MODE = "finite-difference"  # the only product of a sharded model (module docstring)


def shard_model(model: nn.Module, units: Iterable[nn.Module] = ()) -> nn.Module:
    """``model`` sharded in place over the ranks of the current process group with FSDP2
    ``fully_shard`` on a 1-D device mesh of the parameters' device type: each module of
    ``units`` (e.g. a transformer's blocks, children before their parents) as its own unit
    (all-gathered only while it runs), then the whole model for the rest. Returns ``model``.

    Only the root by default: always correct (a parameter used outside its module's
    forward, e.g. an output layer tied to the embedding, belongs to the root's unit), at the
    price of all-gathering every parameter for each forward and backward pass."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("sharding needs a torch.distributed process group (launch with torchrun, or "
                          "'sharpscope hessian --nproc N')")
    first = next(model.parameters(), None)
    if first is None:
        raise ConfigError("the model has no parameters to shard")
    mesh = init_device_mesh(first.device.type, (dist_utils.world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _sharded_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters, each checked to be a DTensor sharded on dim 0 over a 1-D mesh."""
    from torch.distributed.tensor import DTensor, Shard

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameters")
    for name, p in named:
        if not isinstance(p, DTensor) or tuple(p.placements) != (Shard(0),):
            raise ConfigError(f"parameter {name} is not sharded on dim 0 over one mesh dimension (shard the model "
                              "with torch's FSDP2 fully_shard, e.g. sharpscope.sharded.shard_model)")
    if len({p.dtype for _, p in named}) != 1:
        raise ConfigError("a sharded analysis needs every trainable parameter in one dtype")
    return named


def _pieces(params: list[Tensor], local: list[Tensor]) -> list[tuple[int, int]]:
    """The global index ranges of this rank's entries in the flat vector of all parameters
    (each parameter flattened row-major, in order): its rows of each, rank r's after those of
    the ranks before it (Shard(0) on a 1-D mesh), found with one all-gather of row counts."""
    rows = torch.tensor([t.shape[0] if t.dim() else 0 for t in local], dtype=torch.int64,
                        device=_collective_device(local[0]))  # (NCCL gathers CUDA tensors only)
    counts = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, rows)
    before = sum((c.cpu() for c in counts[:dist.get_rank()]), torch.zeros(len(local), dtype=torch.int64))
    pieces, offset = [], 0
    for p, t, first_row in zip(params, local, before.tolist()):
        row = p.numel() // p.shape[0] if p.dim() else 1
        if t.numel():
            pieces.append((offset + first_row * row, offset + first_row * row + t.numel()))
        offset += p.numel()
    return pieces


def _collective_device(t: Tensor) -> torch.device:
    return t.device if t.device.type == "cuda" else torch.device("cpu")


class ShardedHessian:
    """Finite-difference Hessian-vector products of the mean loss of an FSDP2-sharded model,
    on this rank's shard of each vector (module docstring).

    Args:
        model: a module whose trainable parameters are sharded by ``fully_shard`` (e.g. by
            :func:`shard_model`); evaluated in eval mode at its current parameters, which are
            restored bit for bit after every product.
        loss_fn: as for :class:`sharpscope.objective.Objective` (``loss_fn(outputs,
            targets)``, a :class:`~sharpscope.batches.ModelLoss`, or None for the model's own
            loss); batches weighted by their examples (or counted tokens).
        data: the batches, the same on every rank (checked: their fingerprints must agree);
            kept on the parameters' device.

    ``n`` is the number of parameters, ``layout`` where this rank's entries of a vector lie,
    ``local_n`` how many there are; ``n_hvp`` counts products, ``on_hvp`` (if set) is told of
    each.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Iterable[Any]) -> None:
        named = _sharded_parameters(model)
        self.model = model
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.local = [p.to_local().detach() for p in self.params]  # views of FSDP's shards: perturbed in place
        self.device, self.dtype = self.local[0].device, self.local[0].dtype
        self.shapes = [tuple(p.shape) for p in self.params]
        self.n = sum(p.numel() for p in self.params)
        self.layout = VectorLayout(self.n, _pieces(self.params, self.local), reduce=dist_utils.all_reduce_sum)
        self.local_n = self.layout.local_n
        self.batch_loss = BatchLoss(model, loss_fn)
        prepared = self.batch_loss.read(data, self.device, self.dtype, cache=True)
        self.batches = list(prepared.batches)
        self.n_examples = prepared.n_examples
        self.weights = [w / prepared.total_weight for w in prepared.weights]  # type: ignore[union-attr]
        _check_same_batches(self.batches, _collective_device(self.local[0]))
        theta_norm = self.layout.norm(torch.cat([t.detach().reshape(-1) for t in self.local]))
        self.theta_norm = theta_norm
        self.step = central_difference_step(theta_norm, self.dtype)
        self.error_bound = central_difference_error(theta_norm, self.dtype)  # of ||H|| ||v|| (linalg.finite_difference)
        self.hvp_mode = HVP_MODE
        self.n_hvp = 0
        self.on_hvp: Callable[[int], None] | None = None

    def value_and_grad(self) -> tuple[float, Tensor]:
        """(L, this rank's shard of grad L) at the current parameters, every ``.grad`` restored:
        the weighted batch gradients summed (FSDP's reduce-scatter averages the ranks' identical
        gradients into each shard)."""
        packed = torch.zeros(self.local_n + 1, device=self.device, dtype=self.dtype)
        with eval_mode(self.model), grads_restored(self.model):
            for w, batch in zip(self.weights, self.batches):
                for p in self.model.parameters():
                    p.grad = None
                with torch.enable_grad():
                    value = self.batch_loss({}, batch)
                    value.backward()
                flat = torch.cat([(p.grad.to_local() if p.grad is not None else torch.zeros_like(t)).reshape(-1)
                                  for p, t in zip(self.params, self.local)])
                packed[:-1].add_(flat, alpha=w)
                packed[-1] += w * value.detach()
        return float(packed[-1]), packed[:-1]

    def hvp(self, v: Tensor) -> Tensor:
        """This rank's entries of H v, for this rank's entries ``v`` (``local_n``) of v."""
        if v.shape != (self.local_n,):
            raise ConfigError(f"vector of shape {tuple(v.shape)} does not match this rank's {self.local_n} entries")
        v = v.to(self.device, self.dtype)
        with eval_mode(self.model):
            out = central_difference(lambda alpha, scale: self._difference(v, alpha, scale), v, self.step,
                                     norm=self.layout.norm)
        bad = self.layout.sum(torch.tensor([float(not all_finite(out))], device=self.device))
        if float(bad) > 0:  # decided on every rank alike (else one rank would leave the others waiting)
            raise NonFiniteLossError("a Hessian-vector product is not finite (on some rank's shard)")
        self.n_hvp += 1
        if self.on_hvp is not None:
            self.on_hvp(1)
        return out

    def operator(self) -> SymmetricOperator:
        """The Hessian as an operator on this rank's entries (its layout reduces over the ranks)."""
        return SymmetricOperator(self.hvp, self.n, dtype=self.dtype, device=self.device, layout=self.layout)

    def _difference(self, v: Tensor, alpha: float, scale: float) -> Tensor:
        """This rank's entries of scale (g(theta + alpha v) - g(theta - alpha v)): the one-process
        product's arithmetic (:meth:`sharpscope.fd_hvp.PerturbedGradient.hvp`), the shards set in
        place to theta +- alpha v and restored from a copy."""
        with restoring(self.local, self.model) as saved:
            gradient_difference(self.model, shift_in_place(self.local, saved, v),
                                lambda batch: self.batch_loss({}, batch), list(zip(self.weights, self.batches)), alpha)
            grads = [None if p.grad is None else p.grad.to_local() for p in self.params]
            return gather_scaled(grads, [t.numel() for t in self.local], scale, torch.empty_like(v))



def _check_same_batches(batches: list[Any], device: torch.device) -> None:
    """Every rank must hold the same batches (each evaluates all of them): refused otherwise."""
    mine = [fingerprint(b) for b in batches]
    theirs = dist_utils.broadcast_object(mine)
    same = torch.tensor([float(mine == theirs)], device=device)
    if float(dist_utils.all_reduce_sum(same)) != dist_utils.world_size():
        raise ConfigError("the ranks hold different batches; a sharded analysis evaluates the same data on every rank")


def _max_iter(n: int, local_n: int, k: int, max_iter: int | None, device: torch.device) -> int | None:
    """The step cap: the given one, or :func:`~sharpscope.linalg.lanczos.default_max_iter` for
    ``n`` with the memory of a basis of this rank's ``local_n`` rows, the smallest over the
    ranks (free memory differs between ranks, and every rank must stop at the same step)."""
    if max_iter is not None:
        return max_iter
    memory = available_memory()
    cap = default_max_iter(n, k, None if memory is None else memory * n / max(local_n, 1))
    least = torch.tensor([float(cap)], device=device)
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    return int(least)


def _hessian_of(model: nn.Module | ShardedHessian, loss_fn: Any, data: Iterable[Any] | None) -> ShardedHessian:
    """``model`` when it is a :class:`ShardedHessian`, else the one of ``model``, ``loss_fn`` and ``data``."""
    if isinstance(model, ShardedHessian):
        return model
    if data is None:
        raise ConfigError("pass loss_fn and data (or a ShardedHessian)")
    return ShardedHessian(model, loss_fn, data)


def sharded_eigenvalues(model: nn.Module | ShardedHessian, loss_fn: Any = None, data: Iterable[Any] | None = None,
                        k: int = 5, which: str = "LA", tol: float = 1e-4, max_iter: int | None = None,
                        seed: int = 0, callback: Callable | None = None) -> EigenvaluesResult:
    """The ``k`` extreme Hessian eigenvalues of a sharded model's mean loss, by Lanczos on
    vectors sharded like its parameters (module docstring), called on every rank (every rank
    gets the result). ``model``: an FSDP2-sharded module (with ``loss_fn`` and ``data``, as for
    :class:`ShardedHessian`) or a :class:`ShardedHessian`. The other arguments are those of
    :func:`sharpscope.hessian.eigenvalues`; the products are finite differences, so the
    eigenvalues carry their error, about ``error_bound`` x lambda_max (1e-3 in float32, 4e-11
    in float64 at ||theta|| = 10; :mod:`sharpscope.linalg.finite_difference`) on top of Lanczos'
    tolerance. The eigenvectors are not returned (each rank holds only its rows of them)."""
    start = time.perf_counter()
    h = _hessian_of(model, loss_fn, data)
    op = h.operator()
    cap = _max_iter(h.n, h.local_n, k, max_iter, _collective_device(h.local[0]))
    res = lanczos(op, k=k, which=which, tol=tol, max_iter=cap, seed=seed, callback=callback)
    return EigenvaluesResult(
        eigenvalues=res.eigenvalues.tolist(), residuals=res.residuals.tolist(), converged=res.converged.tolist(),
        which=which, tol=tol, n_hvp=res.n_matvecs, n_iter=res.n_iter, wall_time=time.perf_counter() - start,
        n_params=h.n, n_examples=h.n_examples, hvp_mode=HVP_MODE)


def sharded_trace(model: nn.Module | ShardedHessian, loss_fn: Any = None, data: Iterable[Any] | None = None,
                  n_matvecs: int = 99, seed: int = 0) -> TraceResult:
    """tr(H) of a sharded model's mean loss by Hutchinson's estimator with ``n_matvecs``
    Rademacher probes (:func:`sharpscope.linalg.hutchinson`: each rank keeps its entries of the
    probes, the quadratic forms are summed over the ranks), called on every rank. The probes are
    those of one process with the same seed, so the estimate is the one-process Hutchinson
    estimate (``sharpscope.hessian.trace(..., method="hutchinson")``) to rounding; Hutch++,
    the one-process default, needs a QR factorization of sharded blocks (not implemented). Each
    probe is drawn whole on every rank (8 n bytes at a time)."""
    start = time.perf_counter()
    h = _hessian_of(model, loss_fn, data)
    res = hutchinson(h.operator(), n_matvecs=n_matvecs, seed=seed)
    return TraceResult(trace=float(res.estimate), stderr=float(res.stderr), method=res.method, n_hvp=res.n_matvecs,
                       wall_time=time.perf_counter() - start, n_params=h.n, n_examples=h.n_examples,
                       hvp_mode=HVP_MODE)


def sharded_density(model: nn.Module | ShardedHessian, loss_fn: Any = None, data: Iterable[Any] | None = None,
                    n_runs: int = 10, n_steps: int = 80, sigma_squared: float = 1e-5, grid_points: int = 2000,
                    seed: int = 0) -> DensityResult:
    """The spectral density of a sharded model's Hessian by stochastic Lanczos quadrature
    (:func:`sharpscope.linalg.spectral_density`, as :func:`sharpscope.hessian.density`), its
    Lanczos vectors and Rademacher starts sharded like the parameters; called on every rank.
    Equal to the one-process finite-difference density to float64 rounding (the same starts)."""
    start = time.perf_counter()
    h = _hessian_of(model, loss_fn, data)
    res = spectral_density(h.operator(), n_runs=n_runs, n_steps=n_steps, seed=seed, sigma_squared=sigma_squared,
                           grid_points=grid_points)
    return DensityResult(grid=res.grid.tolist(), density=res.density.tolist(), nodes=res.nodes.tolist(),
                         weights=res.weights.tolist(), sigma=float(res.sigma), n_runs=res.n_runs, n_steps=res.n_steps,
                         n_hvp=res.n_matvecs, wall_time=time.perf_counter() - start, n_params=h.n,
                         n_examples=h.n_examples, hvp_mode=HVP_MODE)
