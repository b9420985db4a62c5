"""Directions along the top Hessian eigenvectors (:func:`sharpscope.hessian.eigenvalues`): UNIT
vectors, not filter-normalized, so they stay orthonormal eigenvectors and the loss along them is
L_0 + (g . v) t + (lambda / 2) t^2 + O(t^3), t a Euclidean distance (compare a random direction
through :func:`~.directions.scale_to_norm`); each sign makes the largest-magnitude entry positive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .directions import Direction

__all__ = ["HessianDirections", "hessian_directions", "eigenvector_directions"]


@dataclass
class HessianDirections:
    """Unit orthonormal eigenvector ``directions``, their ``eigenvalues`` lambda_i, ``slopes`` g . v_i,
    the centre ``loss`` L_0 and the Lanczos ``result`` (:class:`sharpscope.hessian.EigenvaluesResult`)."""

    directions: list[Direction]
    eigenvalues: list[float]
    slopes: list[float]
    loss: float
    result: Any = field(repr=False)

    def quadratic(self, i: int, t: Any) -> Any:
        """The second-order model L_0 + (g . v_i) t + lambda_i t^2 / 2 along direction i."""
        return self.loss + self.slopes[i] * t + 0.5 * self.eigenvalues[i] * t * t

    def to_dict(self) -> dict[str, Any]:
        return {"eigenvalues": self.eigenvalues, "slopes": self.slopes, "loss": self.loss,
                "lanczos": self.result.to_dict()}


def eigenvector_directions(model: nn.Module, result: Any) -> list[Direction]:
    """The eigenvectors of an ``EigenvaluesResult`` (``return_vectors=True``) as directions over
    every parameter of ``model`` (zero outside the Hessian's selection; module docstring's sign)."""
    if result.eigenvectors is None:
        raise ConfigError("the result holds no eigenvectors: call eigenvalues(..., return_vectors=True)")
    params = dict(model.named_parameters())
    for name, shape in zip(result.names, result.shapes):
        if name not in params or tuple(params[name].shape) != tuple(shape):
            raise ConfigError(f"the eigenvectors do not fit this model (parameter {name} {tuple(shape)})")
    out = []
    for j, views in enumerate(result.vector_views()):
        col = result.eigenvectors[:, j]
        sign = 1.0 if float(col[int(col.abs().argmax())]) >= 0 else -1.0
        out.append({n: (sign * views[n] if n in views else torch.zeros_like(p)).detach().to(p.device, p.dtype).clone()
                    for n, p in params.items()})
    return out


def hessian_directions(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: Iterable, k: int = 2,
                       which: str = "LA", tol: float = 1e-4, max_iter: int | None = None, params: Any = None,
                       seed: int = 0, hvp_mode: str = "auto", callback: Callable | None = None,
                       on_hvp: Callable[[int], None] | None = None) -> HessianDirections:
    """The ``k`` top (``which``) Hessian eigenvectors of the mean loss as unit directions, with
    their eigenvalues, slopes and the centre loss (Lanczos and one gradient); ``on_hvp(n)``: progress."""
    from .. import hessian
    from ..objective import Objective

    obj = Objective(model, loss_fn, data, params=params, hvp_mode=hvp_mode)
    obj.on_hvp = on_hvp
    try:
        res = hessian.eigenvalues(obj, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed,
                                  callback=callback, return_vectors=True)
        loss, g = obj.value_and_grad()
    finally:
        obj.release()
    directions = eigenvector_directions(model, res)
    flat = [obj.flatten({n: d[n] for n in obj.names}).to(g.dtype) for d in directions]
    slopes = [float(torch.dot(g.double(), v.double())) for v in flat]
    return HessianDirections(directions, list(res.eigenvalues), slopes, float(loss), res)
