"""Hessian-vector products by central differences of a gradient map, and their step.

For a twice continuously differentiable L with gradient g and a vector v = ||v|| u
(||u|| = 1), the central difference along u with step t,

    D_t(v) = ||v|| (g(w + t u) - g(w - t u)) / (2 t),

equals H v up to a truncation error and a rounding error (Taylor expansion of g about w,
the even terms cancelling):

    ||D_t(v) - H v|| / ||v||  <=  t^2 M3 / 6  +  B / t,                              (1)

with M3 a bound on ||grad^3 L [u, u, .]|| near w (the truncation term) and B the rounding
error of one gradient difference: the rounding of the points w +- t u to the float grid
(each coordinate off by at most u_r |w_i|, so H applied to it is at most u_r ||H|| ||w||)
plus the rounding of the gradients themselves (about u_r ||H|| in the scale below), i.e.
B = u_r ||H|| (1 + ||w||), u_r the unit roundoff of the float type (half its ``eps``).

Minimizing (1) over t gives t* = (3 B / M3)^(1/3). With the curvature assumed to vary over
distances of order one (M3 ~ ||H||, the scale assumption behind every parameter-free step
rule) the step is

    t = (3 u_r (1 + ||w||))^(1/3),                                                   (2)

and the error (1) at t is ||H|| ||v|| (t^2 / 6 + t^2 / 3) = ||H|| ||v|| t^2 / 2:

    ||D_t(v) - H v|| <~ (t^2 / 2) ||H||_2 ||v||.                                      (3)

This is the central-difference form of the step of Pernice & Walker's NITSOL, t =
sqrt(u_r (1 + ||w||)) / ||v|| for forward differences (Knoll & Keyes, "Jacobian-free
Newton-Krylov methods: a survey of approaches and applications", J. Comput. Phys. 193,
2004, Sec. 2.2, eq. 12; Pernice & Walker, SIAM J. Sci. Comput. 19, 1998); the cube root
and the O(u_r^(2/3)) error of central differences are Nocedal & Wright, "Numerical
Optimization", 2nd ed., 2006, Sec. 8.1 (eqs. 8.5-8.7). With ||w|| = 10: t = 0.0126 and
t^2 / 2 = 8e-5 in float32; t = 1.5e-5 and t^2 / 2 = 1.2e-10 in float64. The bound (3) is
relative to ||H||_2 ||v||: a vector of small curvature (||H v|| << ||H|| ||v||) has a larger
error relative to ||H v||. The map v -> D_t(v) is odd and positively homogeneous but only
approximately linear, which Lanczos and Hutch++ tolerate at the level of (3).

Measured (``tests/test_fd_hvp.py``; MLPs 64-256-10 on 256 digits, 26k parameters, ||w|| = 9.4):
with tanh or GELU the error is 6e-6 of ||H|| ||v|| in float32 and 1e-11 in float64 at the
step (2), within 3x of the best step of a scan over t * 10^(-2..2) and below the bound (3)
(7.6e-5 and 1.1e-10). Smoothness is required: with ReLU (or max-pooling) the gradient jumps
where a pre-activation crosses zero, a step t crosses such kinks for a number of units and
examples proportional to t, each adding an error of order jump / t, so the error does not
shrink with t: 0.23 of ||H|| ||v|| on the ReLU MLP in float32, 0.48 on a ReLU / max-pool CNN
in float64, while the exact products give the Hessian of the smooth piece (the activation
pattern held fixed). Finite differences are for smooth networks (transformers: GELU, SiLU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["unit_roundoff", "central_difference_step", "central_difference_error", "central_difference"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """u_r = eps / 2 of a floating dtype (2^-24 in float32, 2^-53 in float64)."""
    return torch.finfo(dtype).eps / 2


def central_difference_step(w_norm: float, dtype: torch.dtype) -> float:
    """The step t = (3 u_r (1 + ||w||))^(1/3) along a unit direction (module docstring, eq. 2)."""
    return (3.0 * unit_roundoff(dtype) * (1.0 + float(w_norm))) ** (1.0 / 3.0)


def central_difference_error(w_norm: float, dtype: torch.dtype) -> float:
    """The predicted error of a product relative to ||H||_2 ||v||: t^2 / 2 (eq. 3)."""
    return central_difference_step(w_norm, dtype) ** 2 / 2.0


def central_difference(grad_at: Callable[[Tensor], Tensor], v: Tensor, step: float) -> Tensor:
    """||v|| (g(w + t u) - g(w - t u)) / (2 t), u = v / ||v||, t = ``step``.

    ``grad_at(d)`` returns a new tensor, the gradient at w + d (flat, like ``v``); the
    difference is formed in place in it (no copy of parameter size beyond the two gradients).
    A zero ``v`` gives zero without evaluating anything. The norm and the scale factors are
    taken in float64 (Python floats), the arithmetic on vectors in ``v``'s dtype.
    """
    norm = float(v.double().norm())
    if norm == 0.0:
        return torch.zeros_like(v)
    d = v * (step / norm)
    plus = grad_at(d)
    d.neg_()
    return plus.sub_(grad_at(d)).mul_(norm / (2.0 * step))
