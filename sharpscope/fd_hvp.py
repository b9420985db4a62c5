"""Gradients at perturbed weights, for Hessian-vector products by finite differences.

:class:`PerturbedGradient` computes grad L(theta + d) with an ordinary ``loss.backward()``
on the model's *own* parameters, at theta + d for the duration of the call, so it works
wherever training's gradient works: ``torch.utils.checkpoint`` with ``use_reentrant=True``
(which refuses ``torch.autograd.grad`` and ``torch.func``, and recomputes its forward pass
from the module's attributes during the backward pass), non-reentrant checkpointing
(saved-tensor hooks, refused by ``torch.func``), custom ``autograd.Function`` s without a
double backward or a ``jvp`` (``@once_differentiable``), fused attention kernels (the user's
SDPA choice is left alone) and other wrappers. A product is the central difference
||v|| (g(theta + t u) - g(theta - t u)) / (2 t) (the step and its error bound:
:mod:`sharpscope.linalg.finite_difference`), formed by :func:`gradient_difference` without
either gradient ever being gathered into a flat vector.

The weights are restored *exactly* afterwards. For plain parameters of the vector's dtype
and device, each ``.data`` points at theta + t u (then theta - t u) in one shared buffer
during the passes and at its own untouched storage again after them, in a ``finally``
block; otherwise (mixed dtypes, tensor subclasses, the gradient at a given point) the
selected parameters are copied once and copied back from that copy (theta + d - d would
drift by rounding). Every parameter's ``.grad`` is saved and put back (a reentrant
checkpoint accumulates into the ``.grad`` of parameters outside the selection too). The loss
is evaluated as :class:`sharpscope.objective.Objective` evaluates it: same batches and
weights, eval mode (batch norm on its running statistics, which a forward pass in eval mode
leaves untouched; dropout off), the fixed parameters and buffers by name.

:func:`double_backward_unavailable` recognizes the errors by which ``torch.func`` and a
double backward say that a model has no second derivative (``hvp_mode="auto"`` falls back
to finite differences on them); :func:`cut_by_once_differentiable` finds the marker a
``@once_differentiable`` backward leaves in a ``create_graph=True`` gradient, through which
``torch.autograd.grad`` silently drops the second-order terms instead of failing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .optim.sam import owns_storage

__all__ = ["PerturbedGradient", "double_backward_unavailable", "cut_by_once_differentiable", "OnceDifferentiableError",
           "restoring", "grads_restored",
           "gradient_difference", "shift_in_place", "gather_scaled"]

# (fragment of the message, why): the errors that mean "no second derivative here"
_NO_SECOND_DERIVATIVE = (
    ("must override the setup_context staticmethod", "an autograd.Function without setup_context (e.g. "
     "torch.utils.checkpoint with use_reentrant=True) cannot run under torch.func"),
    ("don't yet support saved tensor hooks", "saved-tensor hooks (e.g. torch.utils.checkpoint with "
     "use_reentrant=False) cannot run under torch.func"),
    ("incompatible with .grad()", "torch.utils.checkpoint with use_reentrant=True refuses torch.autograd.grad"),
    ("Checkpointing is not compatible with .grad()", "torch.utils.checkpoint with use_reentrant=True refuses "
     "torch.autograd.grad"),
    ("must implement the jvp function", "an autograd.Function has no jvp (forward-mode derivative)"),
    ("differentiate twice a function that was marked with @once_differentiable",
     "an autograd.Function's backward is @once_differentiable"),
    ("derivative for", "an operation has no second derivative"),
    ("double backward", "an operation has no double backward"),
)


@contextlib.contextmanager
def grads_restored(model: nn.Module) -> Iterator[None]:
    """On exit, every parameter of ``model`` has its ``.grad`` of the entry back (the object itself)."""
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, g in grads:
            p.grad = g


@contextlib.contextmanager
def restoring(tensors: list[Tensor], model: nn.Module) -> Iterator[list[Tensor]]:
    """Copies of ``tensors`` (yielded); on exit the tensors and every ``.grad`` of ``model``'s
    parameters are restored bit for bit."""
    saved = [t.detach().clone() for t in tensors]
    with grads_restored(model):
        try:
            yield saved
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved):
                    t.copy_(s)

class OnceDifferentiableError(ConfigError):
    """A double-backward graph through a ``@once_differentiable`` backward (its product would
    silently lack the second-order terms through it): refused by ``hvp_mode="reuse-graph"``."""

    why = "an autograd.Function's backward is @once_differentiable (torch.autograd.grad would drop its terms)"

    def __init__(self) -> None:
        super().__init__(f"hvp_mode='reuse-graph' cannot differentiate this model twice: {self.why}; use "
                         "hvp_mode='finite-difference' (or 'auto')")


def double_backward_unavailable(err: BaseException) -> str | None:
    """Why ``err`` (raised by a forward-over-reverse or double-backward product) means the
    model has no usable second derivative; None for any other error."""
    if not isinstance(err, (RuntimeError, NotImplementedError)):
        return None
    text = str(err)
    if "derivative for" in text and "not implemented" not in text:
        return None
    for fragment, why in _NO_SECOND_DERIVATIVE:
        if fragment in text:
            return why
    return None


def cut_by_once_differentiable(grads: Iterable[Tensor]) -> bool:
    """Whether the graph of ``create_graph=True`` gradients passes through the error node of
    a ``@once_differentiable`` backward (whose double backward ``torch.autograd.grad``
    prunes silently, giving a wrong product rather than an error)."""
    stack = [g.grad_fn for g in grads if g.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() == "torch::autograd::Error":
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def gradient_difference(model: nn.Module, shift: Callable[[float], None], loss: Callable[[Any], Tensor],
                        own: Iterable[tuple[float, Any]], alpha: float) -> None:
    """Leave g(theta + alpha v) - g(theta - alpha v) in the ``.grad`` of ``model``'s parameters,
    g = sum_b w_b grad L_b over ``own``'s (w_b, batch) pairs (iterated twice: a list, not an
    iterator); ``shift(a)`` puts the selected
    parameters at theta + a v (no grad mode). The first backward passes (seeded with w_b) leave
    g+ in the ``.grad`` s, the second ones (seeded with -w_b: a negation, exact) accumulate
    -g- into them in place, so each entry of g+ - g- is rounded once, as a subtraction of two
    gathered gradients rounds it, without either ever being gathered."""
    for p in model.parameters():
        p.grad = None
    for sign in (1.0, -1.0):
        with torch.no_grad():
            shift(sign * alpha)
        for w, batch in own:
            with torch.enable_grad():
                value = loss(batch)
                value.backward(torch.full_like(value, sign * w))


def shift_in_place(tensors: list[Tensor], saved: list[Tensor], v: Tensor) -> Callable[[float], None]:
    """The ``shift`` of :func:`gradient_difference` for tensors moved in place: ``shift(a)`` sets
    each of ``tensors`` to its ``saved`` value plus ``a`` times its piece of the flat ``v`` (cast to
    its dtype), in one ``add`` per tensor, as the re-pointing path of :class:`PerturbedGradient`
    computes theta + a v."""
    sizes = [t.numel() for t in tensors]

    def shift(a: float) -> None:
        for t, s, part in zip(tensors, saved, v.split(sizes)):
            torch.add(s, part.view_as(s).to(s), alpha=a, out=t)

    return shift


def gather_scaled(grads: list[Tensor | None], sizes: list[int], scale: float, out: Tensor) -> Tensor:
    """``out`` (flat) = ``scale`` times the gradients in order, of ``sizes`` entries (zeros for a
    None); one fused pass where a gradient has ``out``'s dtype and device."""
    for g, part in zip(grads, out.split(sizes)):
        if g is None:
            part.zero_()
        elif g.dtype == out.dtype and g.device == out.device:
            torch.mul(g.reshape(-1), scale, out=part)
        else:
            part.copy_(g.reshape(-1)).mul_(scale)
    return out


class PerturbedGradient:
    """(L, grad L) at theta + d by ``backward()`` on the model's own parameters (module docstring).

    Args:
        model: the module whose parameters are perturbed in place (and restored).
        names: the selected parameters, in the order of the flat vectors.
        loss: ``loss(state, batch)`` -> the mean loss of a batch, ``state`` the model's
            tensors by name (the objective's batch loss).
        own: (weight, batch) pairs, the weights summing to one over all ranks.
        fixed: the buffers by name (and the other parameters, which the model's own replace).
    """

    def __init__(self, model: nn.Module, names: list[str], loss: Callable[[dict[str, Tensor], Any], Tensor],
                 own: Iterable[tuple[float, Any]], fixed: dict[str, Tensor]) -> None:
        self.model, self.names, self.loss, self.own, self.fixed = model, names, loss, own, fixed
        named = dict(model.named_parameters())
        self.params = [named[n] for n in names]

    def value_and_grad(self, point: Tensor | None = None) -> Tensor:
        """[grad L, L] (flat, n + 1) at the flat parameters ``point`` (None: the current ones);
        the parameters (set in place to ``point``) and every ``.grad`` are restored bit for bit."""
        with restoring(self.params, self.model):
            if point is not None:
                with torch.no_grad():
                    for p, part in zip(self.params, point.split([p.numel() for p in self.params])):
                        p.copy_(part.view_as(p))
            value, g = self._gradient()
        return torch.cat([g, value.reshape(1)])

    def hvp(self, v: Tensor, step: float) -> Tensor:
        """Central-difference products with step ``step`` of a flat (n,) vector or of each
        column of an (n, b) block (:func:`~sharpscope.linalg.finite_difference.central_difference`
        over :meth:`_difference`)."""
        from .linalg.finite_difference import central_difference  # (the linalg package imports scipy)

        with grads_restored(self.model):
            cols = [central_difference(lambda alpha, scale: self._difference(col, alpha, scale), col, step)
                    for col in [c.contiguous() for c in ([v] if v.dim() == 1 else v.T)]]
        return cols[0] if v.dim() == 1 else torch.stack(cols, dim=1)

    def _difference(self, v: Tensor, alpha: float, scale: float) -> Tensor:
        """scale (g(theta + alpha v) - g(theta - alpha v)) (:func:`gradient_difference`), flat.

        Plain parameters of ``v``'s dtype and device are never written: each ``.data`` points,
        for one pass, at theta +- alpha v computed into one buffer and back at its own storage
        afterwards (theta restored bit for bit without a copy), and the product is gathered
        into that buffer (already paged in). Others (mixed dtypes or devices, tensor
        subclasses, views into a flat buffer: :func:`~sharpscope.optim.sam.owns_storage`) are
        set in place from a copy and copied back."""
        sizes = [p.numel() for p in self.params]
        out = torch.empty_like(v)
        state = {**self.fixed, **dict(self.model.named_parameters())}

        def loss(batch: Any) -> Tensor:
            return self.loss(state, batch)

        if all(p.dtype == v.dtype and p.device == v.device and owns_storage(p) for p in self.params):
            originals = [p.data for p in self.params]
            shifted = [x.view_as(o) for x, o in zip(out.split(sizes), originals)]

            def shift(a: float) -> None:
                for o, part, x, p in zip(originals, v.split(sizes), shifted, self.params):
                    torch.add(o, part.view_as(o), alpha=a, out=x)
                    p.data = x

            try:
                gradient_difference(self.model, shift, loss, self.own, alpha)
            finally:
                for p, o in zip(self.params, originals):
                    p.data = o
            return gather_scaled([p.grad for p in self.params], sizes, scale, out)
        with restoring(self.params, self.model) as saved:
            gradient_difference(self.model, shift_in_place(self.params, saved, v), loss, self.own, alpha)
            return gather_scaled([p.grad for p in self.params], sizes, scale, out)

    def _gradient(self) -> tuple[Tensor, Tensor]:
        """(L, grad L) at the parameters as they are: the weighted batch gradients summed."""
        n = sum(p.numel() for p in self.params)
        packed = torch.zeros(n + 1, device=self.params[0].device, dtype=self.params[0].dtype)
        # every parameter as the model holds it (requires_grad as the user set it), as in training:
        # a reentrant checkpoint yields no gradient when its inputs do not require grad
        state = {**self.fixed, **dict(self.model.named_parameters())}
        for w, batch in self.own:
            for p in self.model.parameters():
                p.grad = None
            with torch.enable_grad():
                value = self.loss(state, batch)
                value.backward()
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in self.params])
            packed[:-1].add_(flat, alpha=w)
            packed[-1] += w * value.detach()
        return packed[-1], packed[:-1]
