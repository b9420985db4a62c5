"""Where the finite-difference HVP's time goes on a GPT-2-small-size model: each phase of one
product timed (issue 26: "where a goal is not reached ... a profile, not a guess").

    python benchmarks/bench_fd_phases.py --threads 2              # 124 M parameters, ~1 min
    python benchmarks/bench_fd_phases.py --threads 2 --layers 2   # the same widths, 2 blocks

Model and batch as ``bench_transformer.py --size gpt2`` (random init, 2 x 128 random tokens,
eval mode). One product of ``Objective(..., hvp_mode="finite-difference")`` is
||v|| (g(theta + t u) - g(theta - t u)) / (2 t): the norm of v, the shift of the weights to
theta + t u (into one buffer the parameters point at), a forward and a backward there, the
shift to theta - t u, a forward and a backward seeded with -1 that accumulates into the first
gradient, and one pass that gathers and scales the difference into the flat result. Each phase
is timed by wrapping the functions sharpscope calls (``fd_hvp.gradient_difference`` is
re-implemented here with timers, step for step, and checked to give sharpscope's product bit for
bit before anything is timed; ``gather_scaled`` and the norm wrapped), beside
a plain gradient (forward and backward timed apart), in interleaved rounds; medians printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_transformer import environment, gpt2_small, random_tokens  # noqa: E402

import sharpscope.fd_hvp as fd_hvp  # noqa: E402
import sharpscope.linalg.finite_difference as finite_difference  # noqa: E402
from sharpscope.objective import Objective  # noqa: E402

TIMES: dict[str, list[float]] = {}


def record(name: str, seconds: float) -> None:
    TIMES.setdefault(name, []).append(seconds)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        record(name, time.perf_counter() - start)
        return out
    return wrapper


def gradient_difference(model: torch.nn.Module, shift: Callable[[float], None], loss: Callable[[Any], torch.Tensor],
                        own: Any, alpha: float) -> None:
    """``fd_hvp.gradient_difference``, the same steps, each timed."""
    for p in model.parameters():
        p.grad = None
    for sign, side in ((1.0, "+"), (-1.0, "-")):
        start = time.perf_counter()
        with torch.no_grad():
            shift(sign * alpha)
        shifted = time.perf_counter()
        record(f"shift to theta {side} t u", shifted - start)
        for w, batch in own:
            with torch.enable_grad():
                value = loss(batch)
                forward = time.perf_counter()
                record(f"forward at theta {side} t u", forward - shifted)
                value.backward(torch.full_like(value, sign * w))
                record(f"backward at theta {side} t u" + (", accumulating into .grad" if sign < 0 else ""),
                       time.perf_counter() - forward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = gpt2_small(args.layers).eval()
    batch = random_tokens(50257, 2, 128, 0)
    objective = Objective(model, None, [batch], hvp_mode="finite-difference")
    v = torch.randn(objective.n, generator=torch.Generator().manual_seed(1))
    untimed = objective.hvp(v)  # sharpscope's own product, before the timers go in
    finite_difference.sum_of_squares = timed("norm of v (float64 block sums)", finite_difference.sum_of_squares)
    fd_hvp.gather_scaled = timed("gather and scale into the flat result", fd_hvp.gather_scaled)
    fd_hvp.gradient_difference = gradient_difference
    if not torch.equal(objective.hvp(v), untimed):  # the timed copy must be the same computation
        raise SystemExit("bench_fd_phases.gradient_difference no longer matches sharpscope.fd_hvp's: update it")
    TIMES.clear()
    del untimed

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = model(**batch).loss
        forward = time.perf_counter()
        loss.backward()
        record("plain gradient: forward", forward - start)
        record("plain gradient: backward", time.perf_counter() - forward)
        model.zero_grad(set_to_none=True)

    for round_ in range(args.rounds + 1):  # the first round warms up
        gradient()
        timed("the whole product", lambda: objective.hvp(v))()
        if round_ == 0:
            TIMES.clear()
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {environment()}; medians of "
          f"{args.rounds} rounds")
    median = {name: statistics.median(values) for name, values in TIMES.items()}
    unit = median["plain gradient: forward"] + median["plain gradient: backward"]
    print(f"| phase | s | / gradient ({unit:.3f} s) |\n|---|---:|---:|")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.3f} | {seconds / unit:.3f}x |")
    phases = sum(s for name, s in median.items() if not name.startswith(("plain", "the whole")))
    rest = median["the whole product"] - phases
    print(f"| the phases together | {phases:.3f} | {phases / unit:.3f}x |")
    print(f"| the rest (Python, pointing .data and .grad back, splitting v) | {rest:.3f} | {rest / unit:.3f}x |")


if __name__ == "__main__":
    main()
