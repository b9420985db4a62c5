"""A model, a loss and a data set as a function of (some of) the model's parameters.

For parameters theta (a selection of the model's parameters, the rest held fixed) and data
batches (x_b, y_b) of weights w_b, W = sum_b w_b,

    L(theta) = sum_b (w_b / W) * loss_fn(f(x_b; theta), y_b),

with ``loss_fn`` returning the mean loss of a batch over what w_b counts (its n_b examples,
or its counted tokens under a token loss, :mod:`sharpscope.tokens`), so L is the mean loss
over the whole data set (every example, or every token) whatever the batching.
:class:`Objective` gives L, its gradient and Hessian-vector products
H v = d/dt grad L(theta + t v) |_{t=0}, on flat vectors.

Everything is computed with ``torch.func.functional_call`` on detached copies of the
parameters, in eval mode (BatchNorm uses its running statistics, dropout is off), over the
batches in the order they were given. The user's model is never modified: its parameters,
buffers and train/eval flags are the same afterwards.

Hessian-vector products (Pearlmutter 1994) are computed in one of two ways:

- ``"forward-over-reverse"``: ``jvp(grad(L))`` with ``torch.func``; memory of one gradient
  per batch; several vectors at once share the primal pass through ``vmap``.
- ``"reuse-graph"``: the gradient of every batch is computed once with ``create_graph=True``
  and kept; each product is then one backward pass through that graph (PyHessian's
  single-batch trick, extended to many batches). Fastest per product, but it holds the
  double-backward graph of the whole data set in memory.

- ``"finite-difference"``: central differences of two gradients along u = v / ||v|| with the
  step t = (3 u_r (1 + ||theta||) / 1000)^(1/3) (u_r the unit roundoff of the dtype) and an
  error below (3/2) u_r (1 + ||theta||) ||H||_2 ||v|| / t, ~1e-3 in float32
  (:mod:`sharpscope.linalg.finite_difference` derives and measures both). Its gradients are
  ``backward()`` passes on the model's own parameters at the perturbed weights, restored bit
  for bit (:mod:`sharpscope.fd_hvp`): it works wherever a gradient works (checkpointing, custom backwards, fused attention kernels). Smooth networks
  only: ReLU kinks crossed by the step make errors of order one (measured there).

``"auto"`` (the default) takes ``reuse-graph`` when the data set is small (at most
``reuse_graph_max_examples`` examples) and ``forward-over-reverse`` otherwise;
``benchmarks/bench_hessian.py`` measures both. When the first product fails because the
model has no second derivative (:func:`sharpscope.fd_hvp.double_backward_unavailable`, or a
``@once_differentiable`` backward in the graph, which an explicit ``"reuse-graph"`` refuses:
its product would silently lack terms), it switches to ``"finite-difference"`` with a
:class:`~sharpscope.errors.FiniteDifferenceWarning`; ``hvp_mode`` and ``hvp_fallback`` say
so. Gradients fall back to ``backward()`` (exact) when ``torch.func`` cannot run the model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, grad_and_value, jvp, vmap

from . import distributed as dist_utils
from . import fd_hvp
from .batches import BatchLoss, Streamed, higher_order_attention
from .checks import finite_float
from .errors import ConfigError, FiniteDifferenceWarning, NonFiniteLossError
from .models.attention import attention_calls
from .models.param_names import (biasbn_names, frozen_parameters, moved_parameters, parameter_groups,  # noqa: F401
                                  select_parameters)

__all__ = ["Objective", "select_parameters", "moved_parameters", "frozen_parameters", "parameter_groups",
           "biasbn_names", "eval_mode", "HVP_MODES"]

HVP_MODES = ("auto", "forward-over-reverse", "reuse-graph", "finite-difference")
FINITE_DIFFERENCE = "finite-difference"
DEFAULT_BLOCK_BYTES = 512 * 2**20  # extra memory a block of batched HVPs may take (hvp_block_size)


def require_finite_tensors(tensors: Mapping[str, Tensor], what: str) -> None:
    """The one rule for non-finite weights in every analysis (Hessian, sharpness measures,
    surfaces): NaN or infinite values in a floating-point tensor of ``tensors`` (name ->
    tensor) raise NonFiniteLossError naming the first few; there is nothing to analyse."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not all_finite(t)]
    if bad:
        raise NonFiniteLossError(f"{what} hold NaN or infinite values ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}): there is nothing to analyse")


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite, in one pass when it is: a NaN or infinite entry
    makes the sum NaN or infinite (IEEE 754 propagates both through addition), so a finite sum
    proves every entry finite; only a non-finite sum (a bad entry, or finite entries whose sum
    overflows) pays the entrywise check, which ``torch.isfinite(t).all()`` makes in five passes."""
    return (t.is_floating_point() and bool(torch.isfinite(t.sum()))) or bool(torch.isfinite(t).all())


def require_finite(t: Tensor, what: str) -> Tensor:
    """``t`` itself when every entry is finite (:func:`all_finite`); otherwise NonFiniteLossError naming ``what``."""
    if not all_finite(t):
        raise NonFiniteLossError(f"{what} is NaN or infinite at these weights on this data")
    return t


class _Owned:
    """(weight, batch) of the batches this rank evaluates, read from a streamed loader on
    every iteration (the other ranks' batches are read and skipped)."""

    def __init__(self, weights: list[float], batches: Streamed, owned: Iterable[int]) -> None:
        self.weights, self.batches, self.owned = weights, batches, set(owned)

    def __iter__(self) -> Iterator[tuple[float, Any]]:
        for i, batch in enumerate(self.batches):
            if i in self.owned:
                yield self.weights[i], batch


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every module's own train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class Objective:
    """L(theta): mean loss of ``model`` over ``data`` as a function of the selected parameters.

    Args:
        model: any ``nn.Module``; evaluated at its current parameters, never modified.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss of a batch, or
            :class:`sharpscope.batches.ModelLoss` ``(fn)`` with ``fn(model, batch)`` for
            batches of any structure (see :mod:`sharpscope.batches`; token losses:
            :mod:`sharpscope.tokens`), or None: the model's own ``model(**batch).loss``
            (a Hugging Face model), weighted by its counted tokens.
        data: an iterable of batches (a ``DataLoader``, a list): ``(inputs, targets)``
            pairs, inputs being a tensor or a pytree of tensors (a dict, a tuple), or any
            structure under ``ModelLoss``. Every evaluation sees the same batches in the
            same order: read once and kept on the model's device, or, when they take more
            than ``cache_bytes``, streamed from the loader on every pass and checked to be
            the same batches (:meth:`sharpscope.batches.BatchLoss.read`).
        params: which parameters theta holds (see :func:`select_parameters`).
        include_frozen: let ``params`` choose parameters with ``requires_grad=False`` too; by
            default they are held fixed, so a LoRA model is analysed over its adapters
            (``frozen`` names them, ``n_frozen`` counts their entries).
        hvp_mode: one of ``HVP_MODES``.
        reuse_graph_max_examples: ``"auto"`` reuses the double-backward graph up to this
            many examples in total (never when streaming: the graph would hold every batch).
        cache: ``"auto"`` (keep the batches up to ``cache_bytes``, else stream), ``True``
            (keep) or ``False`` (stream).
        cache_bytes: the budget of ``"auto"``; default
            :data:`sharpscope.batches.DEFAULT_CACHE_BYTES` (1 GiB).
        fd_step: the step t of finite-difference products along a unit vector; default
            :meth:`finite_difference_step`'s rule. Rounding errs as 1 / t and truncation as
            t^2: a random direction (Hutchinson's probes) gains from a larger t, a top
            eigenvector from a smaller one (``benchmarks/bench_fd_step.py``: at GPT-2 small,
            16 t0 gives 2.8e-4 on a random direction, t0 / 4 gives 6.7e-4 on a top one).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: Iterable[tuple[Tensor, Tensor]],
        params: Any = None,
        hvp_mode: str = "auto",
        reuse_graph_max_examples: int = 4096,
        distributed: bool | None = None,
        cache: bool | str = "auto",
        cache_bytes: int | None = None,
        include_frozen: bool = False,
        fd_step: float | None = None,
    ) -> None:
        if hvp_mode not in HVP_MODES:
            raise ConfigError(f"hvp_mode must be one of {', '.join(HVP_MODES)}, got {hvp_mode!r}")
        if fd_step is not None and hvp_mode not in ("auto", FINITE_DIFFERENCE):
            raise ConfigError(f"fd_step (--fd-step) is the step of finite-difference products: give it with "
                              f"hvp_mode 'finite-difference' or 'auto', not {hvp_mode!r}")
        self.model = model
        self.batch_loss = BatchLoss(model, loss_fn)
        self.loss_fn = self.batch_loss.loss_fn  # None became the model's own loss (OutputLoss)
        self.names = select_parameters(model, params, include_frozen)
        all_params = dict(model.named_parameters())
        self.frozen = [n for n in frozen_parameters(model) if n not in self.names]
        self.n_frozen = sum(all_params[n].numel() for n in self.frozen)
        self.theta = {n: all_params[n].detach() for n in self.names}
        self.fixed = {n: p.detach() for n, p in all_params.items() if n not in self.theta}
        self.fixed.update({n: b.detach() for n, b in model.named_buffers()})
        first = next(iter(self.theta.values()))
        self.device, self.dtype = first.device, first.dtype
        self.shapes = [self.theta[n].shape for n in self.names]
        self.sizes = [self.theta[n].numel() for n in self.names]
        self.n = sum(self.sizes)
        require_finite_tensors(self.theta, "the model's parameters")
        prepared = self.batch_loss.read(data, self.device, self.dtype, cache, cache_bytes)
        self.batches: list[Any] | Streamed = prepared.batches
        self.streamed = prepared.streamed
        self.n_examples = prepared.n_examples
        self.total_weight = prepared.total_weight  # W: examples, or counted tokens under a token loss
        self.weights = [c / self.total_weight for c in prepared.weights]  # type: ignore[union-attr]
        # torch.distributed: every rank holds the same batches, evaluates its share (round
        # robin) and the sums are all-reduced, so every rank gets the single-process answer
        self.distributed = dist_utils.is_distributed() if distributed is None else bool(distributed)
        owned = dist_utils.shard(len(self.batches)) if self.distributed else range(len(self.batches))
        owned = [i for i in owned if self.weights[i] > 0]  # a batch with nothing counted adds nothing
        self.owned_indices = list(owned)  # the positions of this rank's batches in ``batches``, as ``own`` yields them
        self.own: Iterable[tuple[float, Any]] = (
            _Owned(self.weights, self.batches, owned) if self.streamed
            else [(self.weights[i], self.batches[i]) for i in owned])  # type: ignore[index]
        if self.streamed and hvp_mode == "reuse-graph":
            raise ConfigError("hvp_mode='reuse-graph' keeps the graph of every batch, which streamed data cannot "
                              "afford; use 'forward-over-reverse' (or 'auto'), or cache=True")
        requested_auto = hvp_mode == "auto"
        if hvp_mode == "auto":
            small = self.n_examples <= reuse_graph_max_examples and not self.streamed
            hvp_mode = "reuse-graph" if small else "forward-over-reverse"
        self.hvp_mode = hvp_mode
        self.auto_mode = requested_auto
        self.hvp_fallback: str | None = None  # why "auto" switched to finite differences
        self._fd_step = None if fd_step is None else finite_float("fd_step", fd_step, above=0.0)
        self._grad_by_backward = False  # torch.func failed on this model: gradients by backward()
        self._graph: list[tuple[Tensor, ...]] | None = None
        self._graph_leaves: list[Tensor] | None = None
        self._activation_bytes: int | None = None
        self._attention: str | None = None
        self.n_hvp = 0
        self.n_grad = 0
        self.on_hvp: Callable[[int], None] | None = None  # called with the number of products done

    # -- flat vectors <-> parameter dicts -----------------------------------------------
    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        items = [tensors[n] for n in self.names] if isinstance(tensors, dict) else list(tensors)
        return torch.cat([t.reshape(-1) for t in items])

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """A flat (n,) vector -> {name: tensor}; an (n, b) block -> leaves with a leading b dim."""
        v = v.to(self.device, self.dtype)
        if v.dim() == 1:
            return {n: c.view(s) for n, c, s in zip(self.names, v.split(self.sizes), self.shapes)}
        b = v.shape[1]
        return {n: c.T.reshape(b, *s) for n, c, s in zip(self.names, v.split(self.sizes), self.shapes)}

    def parameters_vector(self) -> Tensor:
        """theta at the model's current weights, flat."""
        return self.flatten(self.theta)

    # -- the function and its derivatives ------------------------------------------------
    def _batch_loss(self, theta: dict[str, Tensor], batch: Any) -> Tensor:
        return self.batch_loss({**self.fixed, **theta}, batch)

    def loss(self, theta: Tensor | None = None) -> float:
        """L at the current weights, or at the flat parameter vector ``theta``."""
        params = self.theta if theta is None else self.unflatten(theta)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with eval_mode(self.model), torch.no_grad():
            for w, batch in self.own:
                total += w * self._batch_loss(params, batch).double()
        return float(require_finite(self.reduce_over_ranks(total), "the loss"))

    def reduce_over_ranks(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks of a distributed objective (all-reduce), else ``t`` itself."""
        return dist_utils.all_reduce_sum(t) if self.distributed else t

    def grad(self, theta: Tensor | None = None) -> Tensor:
        """grad L, flat (n,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta: Tensor | None = None) -> tuple[float, Tensor]:
        """(L, grad L) in one pass over the data."""
        packed = None
        if self.hvp_mode != FINITE_DIFFERENCE and not self._grad_by_backward:
            try:
                packed = self._value_and_grad_func(theta)
            except (RuntimeError, NotImplementedError) as err:  # torch.func cannot run this model:
                if not fd_hvp.double_backward_unavailable(err):  # backward() computes the same gradient
                    raise
                self._grad_by_backward = True
        if packed is None:
            packed = self._value_and_grad_backward(theta)
        self.n_grad += 1
        packed = require_finite(self.reduce_over_ranks(packed), "the loss or its gradient")
        return float(packed[-1]), packed[:-1]

    def _value_and_grad_func(self, theta: Tensor | None) -> Tensor:
        """[grad L, L] (flat) by ``torch.func``, summed over this rank's batches."""
        params = self.theta if theta is None else self.unflatten(theta)
        packed = torch.zeros(self.n + 1, device=self.device, dtype=self.dtype)  # [grad, loss]: one all-reduce
        with eval_mode(self.model), higher_order_attention():
            for w, batch in self.own:
                g, value = grad_and_value(self._batch_loss)(params, batch)
                packed[:-1].add_(self.flatten(g), alpha=w)
                packed[-1] += w * value.detach()
        return packed

    def _value_and_grad_backward(self, theta: Tensor | None) -> Tensor:
        """[grad L, L] (flat) by ``backward()`` on the model's own parameters (finite-difference mode)."""
        with eval_mode(self.model):
            return self._perturbed().value_and_grad(None if theta is None else theta.to(self.device, self.dtype))

    def _perturbed(self) -> fd_hvp.PerturbedGradient:
        return fd_hvp.PerturbedGradient(self.model, self.names, self._batch_loss, self.own, self.fixed)

    def _fall_back(self, err: BaseException, why: str | None = None) -> None:
        """Under ``"auto"``, switch to finite differences when ``err`` says the model has no
        second derivative (module docstring), with a warning; otherwise re-raise ``err``."""
        why = why or fd_hvp.double_backward_unavailable(err)
        if not (self.auto_mode and why):
            raise err
        self.release()
        self.hvp_mode, self.hvp_fallback = FINITE_DIFFERENCE, why
        warnings.warn(f"hvp_mode='auto': double backward is unavailable here ({why}); using finite differences of "
                      f"gradients (hvp_mode='finite-difference', relative error about "
                      f"{self.finite_difference_error():.1e} of ||H|| ||v|| for smooth activations; ReLU kinks "
                      "make it far larger)", FiniteDifferenceWarning, stacklevel=3)

    def finite_difference_step(self) -> float:
        """The step t of a finite-difference product along a unit vector: ``fd_step``, else eq. (2)
        of :mod:`sharpscope.linalg.finite_difference` from ||theta|| and the float precision."""
        if self._fd_step is None:
            from .linalg.finite_difference import central_difference_step  # (linalg imports scipy)

            norm = float(self.parameters_vector().double().norm())
            self._fd_step = central_difference_step(norm, self.dtype)
        return self._fd_step

    def finite_difference_error(self) -> float:
        """The predicted error bound of a finite-difference product relative to ||H||_2 ||v||."""
        from .linalg.finite_difference import central_difference_error

        return central_difference_error(float(self.parameters_vector().double().norm()), self.dtype,
                                        step=self.finite_difference_step())

    def hvp(self, v: Tensor) -> Tensor:
        """H v for a flat (n,) vector, or H V column by column for an (n, b) block."""
        if v.shape[0] != self.n or v.dim() not in (1, 2):
            raise ConfigError(f"vector of shape {tuple(v.shape)} does not match {self.n} parameters")
        cols = 1 if v.dim() == 1 else v.shape[1]
        if self.hvp_mode != FINITE_DIFFERENCE:
            try:
                with eval_mode(self.model), higher_order_attention():
                    if self.hvp_mode == "reuse-graph":
                        out = self._hvp_reuse(v)
                    else:
                        out = self._hvp_forward_over_reverse(v)
            except (RuntimeError, NotImplementedError, fd_hvp.OnceDifferentiableError) as err:
                self._fall_back(err, getattr(err, "why", None))
        if self.hvp_mode == FINITE_DIFFERENCE:
            with eval_mode(self.model):
                out = self._perturbed().hvp(v.to(self.device, self.dtype), self.finite_difference_step())
        out = require_finite(self.reduce_over_ranks(out), "a Hessian-vector product")
        self.count_products(cols)
        return out

    def count_products(self, cols: int) -> None:
        """Record ``cols`` products (of the Hessian or of another curvature operator built on
        this objective, :mod:`sharpscope.curvature`) in ``n_hvp`` and tell ``on_hvp``."""
        self.n_hvp += cols
        if self.on_hvp is not None:
            self.on_hvp(cols)

    def _hvp_forward_over_reverse(self, v: Tensor) -> Tensor:
        tangents = self.unflatten(v)
        out = torch.zeros(v.shape, device=self.device, dtype=self.dtype)
        for w, batch in self.own:
            def grad_fn(theta: dict[str, Tensor]) -> dict[str, Tensor]:
                return grad(self._batch_loss)(theta, batch)

            def hv(t: dict[str, Tensor]) -> dict[str, Tensor]:
                return jvp(grad_fn, (self.theta,), (t,))[1]

            if v.dim() == 1:
                out.add_(self.flatten(hv(tangents)), alpha=w)
            else:
                res = vmap(hv)(tangents)
                out.add_(torch.cat([res[n].reshape(v.shape[1], -1).T for n in self.names]), alpha=w)
        return out

    def _build_graph(self) -> None:
        leaves = [self.theta[n].clone().requires_grad_(True) for n in self.names]
        params = dict(zip(self.names, leaves))
        graph = []
        with torch.enable_grad():
            for w, batch in self.own:
                loss = self._batch_loss(params, batch) * w
                graph.append(torch.autograd.grad(loss, leaves, create_graph=True))
                if len(graph) == 1 and fd_hvp.cut_by_once_differentiable(graph[0]):
                    raise fd_hvp.OnceDifferentiableError()
        self._graph, self._graph_leaves = graph, leaves

    def _hvp_reuse(self, v: Tensor) -> Tensor:
        if self._graph is None:
            self._build_graph()
        assert self._graph is not None and self._graph_leaves is not None
        vecs = [v] if v.dim() == 1 else list(v.T)
        cols = []
        for vec in vecs:
            parts = list(self.unflatten(vec).values())
            total: list[Tensor] = []
            for k, g in enumerate(self._graph):  # the batches' products summed in order, per parameter
                hv = torch.autograd.grad(g, self._graph_leaves, grad_outputs=parts, retain_graph=True)
                if k == 0:
                    total = list(hv)  # (may be views of ``vec`` itself: never written into)
                elif k == 1:
                    total = [a + b for a, b in zip(total, hv)]
                else:
                    for a, b in zip(total, hv):
                        a.add_(b)
            # a rank given none of the batches contributes zeros to the all-reduced product
            cols.append(self.flatten(total) if total else torch.zeros_like(vec))
        return cols[0] if v.dim() == 1 else torch.stack(cols, dim=1)

    def hvp_block_size(self, budget_bytes: int = DEFAULT_BLOCK_BYTES) -> int | None:
        """Columns per block of a batched product (:meth:`hvp` with an (n, b) block) that keep its
        extra memory near ``budget_bytes``; None (no limit) in reuse-graph mode, which multiplies
        one column at a time anyway; else :meth:`vmapped_block_size`.
        """
        if self.hvp_mode in ("reuse-graph", FINITE_DIFFERENCE):
            return None
        return self.vmapped_block_size(budget_bytes)

    def vmapped_block_size(self, budget_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
        """Columns per block of a product vmapped over columns (a forward-over-reverse HVP, or a
        product of :mod:`sharpscope.curvature`) that keep its extra memory near ``budget_bytes``.

        A vmapped forward-over-reverse product carries, per column, a tangent and a
        cotangent of every activation of the largest batch besides the shared primal pass:
        per column ~ 3 x (the bytes of every module output on that batch) + 2 x the
        parameters. The activations are measured once with forward hooks on the largest
        batch (an estimate: fused kernels and views need less, some nonlinearities save more).
        """
        if budget_bytes < 1:
            raise ConfigError(f"budget_bytes must be positive, got {budget_bytes}")
        if self._activation_bytes is None:
            self._activation_bytes = self._measure_activation_bytes()
        per_column = 3 * self._activation_bytes + 2 * self.n * self.theta[self.names[0]].element_size()
        return max(1, int(budget_bytes // max(1, per_column)))

    def _measure_activation_bytes(self) -> int:
        """The bytes of every module output in one forward pass of the largest batch."""
        largest = max(range(len(self.weights)), key=lambda i: self.weights[i])
        batch = next(b for i, b in enumerate(self.batches) if i == largest)
        total = 0

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            nonlocal total
            for t in torch.utils._pytree.tree_leaves(output):
                if isinstance(t, Tensor):
                    total += t.numel() * t.element_size()

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            with eval_mode(self.model), torch.no_grad():
                self._batch_loss(self.theta, batch)
        finally:
            for h in handles:
                h.remove()
        return total

    def attention_kernel(self) -> str | None:
        """``"math"`` when the model calls ``F.scaled_dot_product_attention`` (directly or through
        ``nn.MultiheadAttention``), whose derivatives here all run on its math kernel (exact
        second derivatives, :mod:`sharpscope.models.attention`); None when it calls none. Found
        once, by one forward pass of a batch with gradients on (as the derivatives see it: no
        inference fast path)."""
        if self._attention is None:
            batch = next(b for _, b in self.own) if self.owned_indices else None
            leaves = {n: t.clone().requires_grad_(True) for n, t in self.theta.items()}
            with eval_mode(self.model), higher_order_attention(), torch.enable_grad():
                calls = {} if batch is None else attention_calls(lambda: self._batch_loss(leaves, batch))
            self._attention = "math" if calls else ""
        return self._attention or None

    def release(self) -> None:
        """Drop the cached double-backward graph (reuse-graph mode)."""
        self._graph = self._graph_leaves = None

    def operator(self) -> Any:
        """The Hessian as a :class:`sharpscope.linalg.SymmetricOperator` (counts products)."""
        from .linalg import SymmetricOperator

        return SymmetricOperator(self.hvp, self.n, dtype=self.dtype, device=self.device, matmat=self.hvp)
