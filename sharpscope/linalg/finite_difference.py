"""Hessian-vector products by central differences of a gradient map, and their step.

For a smooth L with gradient g and v = ||v|| u (||u|| = 1), the central difference with step t,
D_t(v) = ||v|| (g(w + t u) - g(w - t u)) / (2 t), equals H v up to truncation (the even Taylor
terms cancel) and rounding:

    ||D_t(v) - H v|| / ||v||  <=  t^2 M / 6  +  B / t,                               (1)

M bounding ||D^3 g [u, u, u]|| near w, B = u_r ||H|| (1 + ||w||) the rounding of one gradient
difference (u_r the unit roundoff). The best t is (3 B / M)^(1/3); with M = kappa ||H||,

    t = (3 u_r (1 + ||w||) / kappa)^(1/3),                                           (2)
    ||D_t(v) - H v|| <~ (3 / 2) u_r (1 + ||w||) ||H||_2 ||v|| / t.                    (3)

kappa = 1 is the usual assumption (NITSOL's step in central-difference form: Knoll & Keyes, J.
Comput. Phys. 193, 2004, Sec. 2.2, eq. 12; Nocedal & Wright, 2nd ed., Sec. 8.1, eqs. 8.5-8.7);
networks break it along their top curvature directions, hence kappa = 10^3
(:data:`CURVATURE_SCALE`; measurements in BENCHMARKS.md). v -> D_t(v) is linear only to the
level of (3), which Lanczos and Hutch++ tolerate. ReLU or max-pooling kinks add errors of order
jump / t that do not shrink with t: finite differences are for smooth networks (GELU, SiLU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..reductions import sum_of_squares

CURVATURE_SCALE = 1e3  # kappa of eq. (2): the fourth derivative taken as kappa ||H|| (module docstring)

__all__ = ["CURVATURE_SCALE", "unit_roundoff", "central_difference_step", "central_difference_error",
           "central_difference"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """u_r = eps / 2 of a floating dtype (2^-24 in float32, 2^-53 in float64)."""
    return torch.finfo(dtype).eps / 2


def central_difference_step(w_norm: float, dtype: torch.dtype, kappa: float = CURVATURE_SCALE) -> float:
    """The step t = (3 u_r (1 + ||w||) / kappa)^(1/3) along a unit direction (module docstring, eq. 2)."""
    return (3.0 * unit_roundoff(dtype) * (1.0 + float(w_norm)) / kappa) ** (1.0 / 3.0)


def central_difference_error(w_norm: float, dtype: torch.dtype, kappa: float = CURVATURE_SCALE,
                             step: float | None = None) -> float:
    """The predicted error of a product relative to ||H||_2 ||v||: eq. (1) with M = kappa ||H||,
    kappa t^2 / 6 + u_r (1 + ||w||) / t, at ``step`` t (default eq. 2's, where it is eq. 3's
    (3/2) u_r (1 + ||w||) / t)."""
    t = central_difference_step(w_norm, dtype, kappa) if step is None else float(step)
    return kappa * t * t / 6.0 + unit_roundoff(dtype) * (1.0 + float(w_norm)) / t


def central_difference(difference: Callable[[float, float], Tensor], v: Tensor, step: float,
                       norm: Callable[[Tensor], float] | None = None) -> Tensor:
    """||v|| (g(w + t u) - g(w - t u)) / (2 t), u = v / ||v||, t = ``step``: ``difference(alpha,
    scale)`` returns scale (g(w + alpha v) - g(w - alpha v)) as a new flat tensor, called with
    alpha = t / ||v|| and scale = ||v|| / (2 t) (float64 scalars; the vector arithmetic is the
    caller's). Zero for a zero ``v``, without calling it. ``norm``: ||v|| of a vector held in
    shards (``v`` this process's entries; :mod:`.layout`); by default float64 block sums
    (:func:`sharpscope.reductions.sum_of_squares`)."""
    norm = math.sqrt(float(sum_of_squares(v))) if norm is None else norm(v)
    if norm == 0.0:
        return torch.zeros_like(v)
    return difference(step / norm, norm / (2.0 * step))
