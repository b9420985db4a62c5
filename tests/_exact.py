"""Independent float64 references for tests that check what sharpscope reports about a
checkpoint: the loss as a function of the flat weight vector, its explicit Hessian
(``torch.func.hessian``), and the full gradient of L(w + e_hat(w)) by differentiating through
the gradient.

Nothing here calls sharpscope's analyses: only its checkpoint and data loaders, which are
what the analyses under test read too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def training_data(ckpt) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's whole training split (labels as trained on), inputs in float64."""
    from sharpscope.data import DataSpec, load_dataset
    data = load_dataset(DataSpec.from_dict(ckpt.data_spec))
    return data.x_train.double(), data.y_train


def seeded_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented subset rule of ``--samples``: the first n of a seeded permutation."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              loss_fn: Callable = F.cross_entropy) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(f, w)``: the mean loss on (x, y) of a float64 copy of ``model`` (eval mode) as a
    function of its flat parameter vector, and that vector now."""
    model = copy.deepcopy(model).double().eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())

    def f(w: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes)}
        return loss_fn(torch.func.functional_call(model, {**params, **buffers}, (x,)), y)
    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def hessian(f: Callable, w: torch.Tensor) -> torch.Tensor:
    """The explicit Hessian of f at w (symmetrized against rounding)."""
    H = torch.func.hessian(f)(w)
    return (H + H.T) / 2


def sam_cosine(f: Callable, w: torch.Tensor, rho: float) -> float:
    """cos(grad L(w + e), d/dw L(w + e_hat(w))) with e_hat(w) = rho grad L(w) / ||grad L(w)||:
    the second vector by autograd through e_hat (no Hessian-vector formula), the cosine by hand."""
    grad = torch.func.grad(f)

    def perturbed(v: torch.Tensor) -> torch.Tensor:
        g = grad(v)
        return f(v + rho * g / g.norm())
    g = grad(w)
    sam = grad(w + rho * g / g.norm())
    full = torch.func.grad(perturbed)(w)
    return float(sam @ full / (sam.norm() * full.norm()))


def load(path: Path):
    """A checkpoint through the loader the analyses use."""
    from sharpscope import load_checkpoint
    return load_checkpoint(path)
