"""Curvature operators beside the Hessian: the GGN, the true Fisher and the empirical Fisher, as
:class:`sharpscope.linalg.SymmetricOperator` s on an :class:`~sharpscope.objective.Objective`'s
parameters (its batches, weights, eval mode, all-reduce). With N examples, outputs f_n,
losses l_n, J_n = d f_n / d theta and w_n = 1/N:

- GGN (Schraudolph 2002; Martens 2020, "New insights and perspectives on the natural gradient
  method", JMLR 21, Sec. 8): G = sum_n w_n J_n^T H_n J_n, H_n = d^2 l_n / d f_n^2, per batch
  w_b J_b^T (d^2 loss_b / d F_b^2) J_b, w_b = n_b / N; PSD for a loss convex in f.
- true Fisher (Martens 2020, Sec. 5; Kunstner, Balles & Hennig, NeurIPS 2019):
  F = sum_n w_n J_n^T E_{y ~ p}[r r^T] J_n, r = softmax(f_n) - e_y, cross-entropy of class
  logits only. ``mc_samples="exact"``: E_y[r r^T] = diag(p) - p p^T (F = GGN, Martens Sec. 9.2);
  ``mc_samples=S``: S labels per example seeded by (seed, batch index), one fixed PSD matrix on
  any rank count, unbiased in trace but E lambda_max(F_S) >= lambda_max(F) (SampledFisherWarning).
- empirical Fisher (Kunstner et al. 2019, Eq. 3): sum_n w_n g_n g_n^T, g_n = J_n^T r_n,
  r_n = d l_n / d f_n = n_b times the batch-mean loss's gradient in row n (a per-example mean).

Products go v -> J v (forward mode) -> M J v -> J^T M J v (reverse mode), vmapped over (n, b)
blocks, normalized as curvlinops' with ``reduction="mean"``. A ModelLoss (no outputs) is refused,
except the GGN of a token loss (:class:`~sharpscope.tokens.TokenLoss`, chunked or not), which
:class:`sharpscope.vocab_chunks.TokenGGN` splits into outputs and the loss's Hessian in them
(batches weighted by their counted tokens; only the GGN, not the Fishers, takes token weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, jvp, vjp, vmap

from .batches import higher_order_attention
from .checks import require_memory
from .errors import ConfigError, SampledFisherWarning
from .objective import Objective, require_finite, eval_mode
from .vocab_chunks import TokenGGN

if TYPE_CHECKING:
    from .linalg import SymmetricOperator

__all__ = ["OPERATORS", "operator", "check", "block_size", "check_mc_samples", "sample_labels", "title"]

OPERATORS = ("hessian", "ggn", "fisher", "empirical-fisher")
_TITLES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "empirical-fisher": "empirical Fisher"}

# (outputs, batch, batch index, batch weight) -> u -> M u, the output-space matrix with its weights
Middle = Callable[[Tensor, Any, int, float], Callable[[Tensor], Tensor]]


def title(kind: str) -> str:
    """The operator's name for people ("GGN", "empirical Fisher", ...)."""
    return _TITLES[kind]


def check_mc_samples(mc_samples: object) -> int | str:
    """``mc_samples`` checked: an integer >= 1 or ``"exact"``."""
    if mc_samples == "exact":
        return "exact"
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
        raise ConfigError(f"mc_samples must be an integer >= 1 or 'exact', got {mc_samples!r}")
    return int(mc_samples)


def check(kind: str, mc_samples: object = "exact") -> int | str | None:
    """``kind`` and ``mc_samples`` checked; the ``mc_samples`` a result records (None but for the Fisher)."""
    if kind not in OPERATORS:
        raise ConfigError(f"operator must be one of {', '.join(OPERATORS)}, got {kind!r}")
    return check_mc_samples(mc_samples) if kind == "fisher" else None


def operator(objective: Objective, kind: str = "hessian", *, mc_samples: int | str = "exact",
             seed: int = 0) -> SymmetricOperator:
    """The curvature operator ``kind`` of ``objective``'s mean loss (``mc_samples``, ``seed``: the
    Fisher's); products count in ``objective.n_hvp``, a non-finite one raises NonFiniteLossError."""
    from .linalg import SymmetricOperator  # (scipy) when an operator is built, not when the CLI starts

    check(kind, mc_samples)
    if kind == "hessian":
        return objective.operator()
    middle: Middle
    tokens = TokenGGN.of(objective.model, objective.loss_fn) if kind == "ggn" else None
    if tokens is not None:  # a token loss: its logits (or, chunked, the output layer's inputs) as outputs
        middle = tokens.middle
    elif kind == "ggn":
        middle = _ggn_middle(objective)
    elif kind == "empirical-fisher":
        middle = _empirical_fisher_middle(objective)
    else:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        middle = _fisher_middle(objective, check_mc_samples(mc_samples), int(seed))
    _check_outputs(objective, kind, mc_samples)

    def product(v: Tensor) -> Tensor:
        extra = () if tokens is None else (tokens.outputs,)
        return _product(objective, middle, v, f"a product of the {title(kind)}", *extra)

    return SymmetricOperator(product, objective.n, dtype=objective.dtype, device=objective.device, matmat=product)


def warn_sampled_fisher(kind: str, mc_samples: int | str | None, what: str) -> None:
    """:class:`~sharpscope.errors.SampledFisherWarning` when ``what`` comes from a sampled Fisher."""
    if kind == "fisher" and mc_samples != "exact":
        warnings.warn(f"{what} of the sampled Fisher (mc_samples={mc_samples} label(s) per example) are biased "
                      "upward: E lambda_max(F_S) >= lambda_max(F) (+13 % at S = 1, +2.5 % at S = 4 on a small MLP, "
                      "+69 % on another); its trace is unbiased. mc_samples='exact' (the default) has no bias at "
                      "the same cost per product", SampledFisherWarning, stacklevel=3)


def block_size(objective: Objective, kind: str = "hessian", budget_bytes: int | None = None) -> int | None:
    """Columns per batched product within ``budget_bytes`` (default: the objective's budget)."""
    budget = {} if budget_bytes is None else {"budget_bytes": budget_bytes}
    return objective.hvp_block_size(**budget) if kind == "hessian" else objective.vmapped_block_size(**budget)


def _product(obj: Objective, middle: Middle, v: Tensor, what: str,
             outputs_of: Callable[[dict[str, Tensor], Any], Any] | None = None) -> Tensor:
    """sum over batches of J_b^T M_b J_b v, for a flat (n,) vector or an (n, b) block; the
    outputs F_b are the model's on the inputs of (inputs, targets) batches, or
    ``outputs_of(state, batch)``."""
    if v.shape[0] != obj.n or v.dim() not in (1, 2):
        raise ConfigError(f"vector of shape {tuple(v.shape)} does not match {obj.n} parameters")
    tangents = obj.unflatten(v)
    out = torch.zeros(v.shape, device=obj.device, dtype=obj.dtype)
    with eval_mode(obj.model), higher_order_attention():
        for index, (w, batch) in zip(obj.owned_indices, obj.own):
            def f(theta: dict[str, Tensor], batch: Any = batch) -> Any:
                if outputs_of is not None:
                    return outputs_of({**obj.fixed, **theta}, batch)
                return functional_call(obj.model, {**obj.fixed, **theta}, (batch[0],))

            outputs, pullback = vjp(f, obj.theta)
            m = middle(outputs, batch, index, w)

            def one(t: dict[str, Tensor]) -> dict[str, Tensor]:
                return pullback(m(jvp(f, (obj.theta,), (t,))[1]))[0]

            if v.dim() == 1:
                out.add_(obj.flatten(one(tangents)))
            else:
                res = vmap(one)(tangents)
                out.add_(torch.cat([res[n].reshape(v.shape[1], -1).T for n in obj.names]))
    out = require_finite(obj.reduce_over_ranks(out), what)
    obj.count_products(1 if v.dim() == 1 else v.shape[1])
    return out


def _ggn_middle(obj: Objective) -> Middle:
    """u -> w_b (d^2 loss_b / d F^2) u, by forward-over-reverse on the loss of the outputs."""
    def middle(outputs: Tensor, batch: Any, index: int, w: float) -> Callable[[Tensor], Tensor]:
        g = grad(lambda out: obj.loss_fn(out, batch[1]))
        return lambda u: w * jvp(g, (outputs,), (u,))[1]
    return middle


def _empirical_fisher_middle(obj: Objective) -> Middle:
    """u -> (1/N) sum_n r_n (r_n . u_n), r_n = n_b * d loss_b / d F_n (the per-example gradient)."""
    def middle(outputs: Tensor, batch: Any, index: int, w: float) -> Callable[[Tensor], Tensor]:
        n_b = _examples(obj, outputs, w, "the empirical Fisher")
        r = grad(lambda out: obj.loss_fn(out, batch[1]))(outputs) * n_b
        rows = (r.shape[0], *([1] * (r.dim() - 1)))  # per-example dot products r_n . u_n broadcast against r
        return lambda u: r * (r * u).reshape(r.shape[0], -1).sum(1).reshape(rows) / obj.n_examples
    return middle


def _fisher_middle(obj: Objective, mc_samples: int | str, seed: int) -> Middle:
    """u -> (1/N) sum_n E_y[r r^T] u_n with r = softmax(f_n) - e_y: diag(p) - p p^T exactly, or
    the mean over ``mc_samples`` labels drawn from p (module docstring)."""
    def middle(outputs: Tensor, batch: Any, index: int, w: float) -> Callable[[Tensor], Tensor]:
        _examples(obj, outputs, w, "the Fisher")
        p = torch.softmax(outputs, dim=-1)
        if mc_samples == "exact":
            return lambda u: (p * u - p * (p * u).sum(-1, keepdim=True)) / obj.n_examples
        labels = sample_labels(p, int(mc_samples), seed, index)  # (n_b, S)
        r = p.unsqueeze(1) - F.one_hot(labels, p.shape[-1]).to(p.dtype)  # (n_b, S, C)
        scale = 1.0 / (obj.n_examples * int(mc_samples))
        return lambda u: scale * torch.einsum("nsc,ns->nc", r, torch.einsum("nsc,nc->ns", r, u))
    return middle


def sample_labels(p: Tensor, samples: int, seed: int, index: int) -> Tensor:
    """``samples`` labels per row of ``p`` (n, C), drawn on the CPU in float64 seeded by
    SeedSequence([seed, index]): the same for a batch on every call and any rank count."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state) >> 1)  # torch seeds are < 2**63
    probs = p.detach().to("cpu", torch.float64)
    return torch.multinomial(probs, samples, replacement=True, generator=gen).to(p.device)


def _examples(obj: Objective, outputs: Tensor, w: float, what: str) -> int:
    """The batch's number of examples, refused unless the outputs hold them along dim 0."""
    n_b = round(w * obj.n_examples)
    if outputs.dim() == 0 or outputs.shape[0] != n_b:
        raise ConfigError(f"{what} needs per-example outputs: a batch of {n_b} examples gave outputs of shape "
                          f"{tuple(outputs.shape)}")
    return n_b


def _check_outputs(obj: Objective, kind: str, mc_samples: int | str = 1) -> None:
    """Refuse, before any product, a loss or output the operator is not defined for (one forward)."""
    name = title(kind)
    if kind == "ggn" and TokenGGN.of(obj.model, obj.loss_fn) is not None:
        return  # a token loss's GGN (sharpscope.vocab_chunks.TokenGGN)
    if obj.batch_loss.takes_model:
        raise ConfigError(f"the {name} needs the model's outputs, which a ModelLoss hides; pass "
                          "loss_fn(outputs, targets) instead")
    if obj.total_weight != obj.n_examples and kind != "ggn":  # w_b J_b^T M_b J_b: any batch weights
        raise ConfigError(f"the {name} is defined here for a loss averaged over examples; this one is weighted by "
                          "tokens (use the Hessian)")
    inputs, targets = next(iter(obj.batches))
    with eval_mode(obj.model), higher_order_attention(), torch.no_grad():
        outputs = functional_call(obj.model, {**obj.fixed, **obj.theta}, (inputs,))
        if not isinstance(outputs, Tensor) or not outputs.is_floating_point():
            raise ConfigError(f"the {name} needs a model whose output is one floating tensor, got "
                              f"{type(outputs).__name__}")
        if kind == "fisher":
            _check_cross_entropy(obj, outputs, targets)
            if mc_samples != "exact":  # the residuals r (n_b, S, C), the one-hot labels and a product
                n_max = round(max(obj.weights) * obj.n_examples)
                require_memory(24.0 * n_max * int(mc_samples) * outputs.shape[1],
                               f"{mc_samples:,} Fisher labels per example of a batch of {n_max:,}")


def _check_cross_entropy(obj: Objective, outputs: Tensor, targets: Any) -> None:
    """Refuse a true Fisher unless ``loss_fn`` is ``F.cross_entropy`` of class logits (n, C)
    (compared at the outputs and at the outputs reversed)."""
    refusal = ("the true Fisher is defined here for class logits of shape (examples, classes) with the "
               "cross-entropy loss (-log softmax); use --operator ggn or empirical-fisher for other losses")
    if outputs.dim() != 2 or outputs.shape[1] < 2:
        raise ConfigError(f"{refusal}; the model's output has shape {tuple(outputs.shape)}")
    try:
        pairs = [(float(obj.loss_fn(out, targets)), float(F.cross_entropy(out, targets)))
                 for out in (outputs, outputs.flip(-1))]
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ConfigError(f"{refusal}; the cross-entropy cannot be evaluated on these targets ({err})") from None
    tol = 1e-4 if outputs.dtype in (torch.float64, torch.float32) else 1e-2
    if any(abs(a - b) > tol * max(1.0, abs(b)) for a, b in pairs):
        raise ConfigError(f"{refusal}; this loss differs from it ({pairs[0][0]:.6g} vs {pairs[0][1]:.6g})")
