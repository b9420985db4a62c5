"""The finite-difference HVP's error against the exact product, as a function of its step, on a
GPT-2-small-size model (issue 26: "relative error below 1e-3 in float32").

    python benchmarks/bench_fd_step.py --threads 2                 # 124 M parameters, ~5 min
    python benchmarks/bench_fd_step.py --threads 2 --layers 2      # the same widths, 2 blocks

Model and batch as ``bench_transformer.py --size gpt2`` (``GPT2LMHeadModel`` from
``GPT2Config``'s defaults, random init, 2 x 128 random tokens, eval mode). The exact product is
sharpscope's reused double-backward graph (``hvp_mode="reuse-graph"``, float32); the
finite-difference one is ``hvp_mode="finite-difference"`` with its step t0 (the default,
:mod:`sharpscope.linalg.finite_difference`) multiplied by each ``--scales``. Two directions:

- a random Gaussian one (the probes of Hutchinson, Hutch++ and SLQ look like it);
- a high-curvature one: ``--power`` steps of power iteration with exact products (it tends to
  the eigenvector of largest |lambda|; Lanczos' top-k vectors look like it).

A central difference errs by truncation (~ t^2, the fourth derivative along u) plus rounding
(~ 1 / t, the float32 rounding of the two gradients, divided by 2t). The script also splits the
rounding: the product of the exact Hessian with the direction the rounded weights theta +- t u
actually realize, against the finite-difference product (the gradients' own rounding), and
against H v (the weights' rounding).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_transformer import environment, gpt2_small, random_tokens  # noqa: E402

from sharpscope.objective import Objective  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def realized(theta: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """The direction the float32 weights theta +- t u realize, scaled like v (float64 arithmetic)."""
    norm = float(v.double().norm())
    d = v * (t / norm)
    up, down = (theta + d).double() - theta.double(), theta.double() - (theta - d).double()
    return ((up + down) / (2 * t) * norm).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=12, help="blocks of GPT-2 small (12: 124 M parameters)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scales", default="0.25,1,4,16", help="multiples of the default step t0")
    ap.add_argument("--power", type=int, default=25, help="power-iteration steps for the high-curvature direction")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = gpt2_small(args.layers)
    batch = random_tokens(50257, 2, 128, seed=0)
    exact_obj = Objective(model, None, [batch], hvp_mode="reuse-graph")
    fd = Objective(model, None, [batch], hvp_mode="finite-difference")
    t0, scales = fd.finite_difference_step(), [float(s) for s in args.scales.split(",")]
    theta = fd.parameters_vector().detach().clone()
    print(f"## finite-difference HVP error vs step: {fd.n:,} parameters, float32\n{environment()}")
    print(f"||theta|| {float(theta.double().norm()):.2f}, default step t0 {t0:.3e}, ||grad|| "
          f"{float(fd.grad().double().norm()):.3f}")
    v = torch.randn(fd.n, generator=torch.Generator().manual_seed(1))
    q = v / v.norm()
    for _ in range(args.power):
        hq = exact_obj.hvp(q)
        q = hq / hq.norm()
    lam = float(q.double() @ exact_obj.hvp(q).double())
    directions = {"random": v, f"high-curvature (power iteration, q^T H q = {lam:.4g})": q}
    exact = {name: exact_obj.hvp(d) for name, d in directions.items()}
    split = {name: exact_obj.hvp(realized(theta, d, t0)) for name, d in directions.items()}
    exact_obj.release()
    print("| direction | ||Hv|| / ||v|| | " + " | ".join(f"t = {s:g} t0" for s in scales) + " |")
    print("|---|---:|" + "---:|" * len(scales))
    rows = {}
    for name, d in directions.items():
        errs = []
        for s in scales:
            fd._fd_step = t0 * s
            product = fd.hvp(d)
            errs.append(relative(product, exact[name]))
            if s == 1.0:
                rows[name] = (relative(product, split[name]), relative(split[name], exact[name]))
        ratio = float(exact[name].double().norm() / d.double().norm())
        print(f"| {name} | {ratio:.4g} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    for name, (gradients, weights) in rows.items():
        print(f"{name}, t = t0: against H times the realized direction {gradients:.2e} (the gradients' rounding "
              f"and truncation); H (realized - v) {weights:.2e} (the weights' rounding)")


if __name__ == "__main__":
    main()
