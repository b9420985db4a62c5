"""Token cross-entropy over a large vocabulary, its logits formed a chunk of tokens at a time.

For hidden states h_t (the language model's last layer, d wide) and an output layer
(W, b) of V rows, the token loss of a batch is

    L = sum_{t counted} CE(W h_t + b, y_t) / (number of counted tokens),

the same number :func:`sharpscope.tokens.token_cross_entropy` computes from the model's
logits. Formed at once, the logits of T tokens take T V floats, and autograd keeps more of
that size (the log-softmax output; a double backward or a forward-mode tangent adds more):
at V = 50,257 they dominate a small model's memory. Here the tokens are split into chunks of
``chunk_tokens``; each chunk's logits are formed, scored and summed, and under ordinary
autograd (a gradient, and the finite-difference HVP, which is two gradients) each chunk runs
under ``torch.utils.checkpoint`` (non-reentrant), which keeps only the chunk's inputs and
recomputes its logits in the backward pass, so at most one chunk's logits (and their
gradient) are alive at a time. The sum over chunks is the same sum (equal to float rounding
of the different summation order).

Under ``torch.func`` transforms (the exact forward-over-reverse HVP, ``torch.func`` gradients)
checkpointing is not supported (saved-tensor hooks), and chunks without it would keep every
chunk's saved tensors (and a weight gradient per chunk): the logits are then formed at once,
as unchunked, so the exact HVP's peak is not reduced; the memory saving is the gradient's and
the finite-difference HVP's (measured in ``benchmarks/bench_vocab_chunks.py``). The GGN
refuses token-weighted losses (:mod:`sharpscope.curvature`), so it is not chunked here.

:class:`ChunkedTokenLoss` is :class:`sharpscope.tokens.TokenLoss` computed this way for a
Hugging Face model: the hidden states from ``model.base_model(**fields)`` and the output
layer ``model.get_output_embeddings()`` (it must be a plain ``nn.Linear``: models that scale
or cap their logits after it are not supported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import IGNORE_INDEX
from .errors import ConfigError
from .tokens import TokenLoss

__all__ = ["chunked_token_cross_entropy", "ChunkedTokenLoss", "DEFAULT_CHUNK_TOKENS"]

DEFAULT_CHUNK_TOKENS = 64  # logits of 64 x 50,257 floats: 12 MiB in float32


def _chunks(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int
            ) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(rows, P, R = P - E) for each chunk of rows: the softmax P of the chunk's logits and
    P minus the one-hot labels E."""
    for lo in range(0, h.shape[0], chunk):
        rows = slice(lo, lo + chunk)
        p = torch.softmax(F.linear(h[rows], weight, bias), dim=-1)
        y = labels[rows].unsqueeze(1)
        yield rows, p, p.scatter_add(1, y, torch.full(y.shape, -1.0, dtype=p.dtype, device=p.device))


def _head_sum(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int) -> Tensor:
    """S = sum_t CE(W h_t + b, y_t) over the rows, a chunk at a time."""
    total = h.new_zeros(())
    for lo in range(0, h.shape[0], chunk):
        total = total + F.cross_entropy(F.linear(h[lo:lo + chunk], weight, bias), labels[lo:lo + chunk],
                                        reduction="sum")
    return total


def _head_grad(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dS/dh, dS/dW, dS/db) of S (:func:`_head_sum`): (R W, R^T h, sum_t r_t), R = P - E."""
    gh, gw, gb = [], torch.zeros_like(weight), torch.zeros_like(bias)
    for rows, _, r in _chunks(h, weight, bias, labels, chunk):
        gh.append(r @ weight)
        gw = gw + r.T @ h[rows]
        gb = gb + r.sum(0)
    return (torch.cat(gh) if gh else torch.zeros_like(h)), gw, gb


def _head_hessian(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int,
                  dh: Tensor, dw: Tensor, db: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The Hessian of S in (h, W, b) applied to (dh, dW, db), a chunk of rows at a time: with
    dZ = dh W^T + h dW^T + db and dR = P * dZ - P rowsum(P * dZ) (the cross-entropy's Hessian
    in the logits, diag(p) - p p^T, row by row), it is (dR W + R dW, dR^T h + R^T dh, sum_t dr_t)
    (the derivative of :func:`_head_grad`'s (R W, R^T h, sum_t r_t) along the direction)."""
    oh, ow, ob = [], torch.zeros_like(weight), torch.zeros_like(bias)
    for rows, p, r in _chunks(h, weight, bias, labels, chunk):
        pdz = p * (F.linear(dh[rows], weight, db) + h[rows] @ dw.T)
        dr = pdz - p * pdz.sum(-1, keepdim=True)
        oh.append(dr @ weight + r @ dw)
        ow = ow + dr.T @ h[rows] + r.T @ dh[rows]
        ob = ob + dr.sum(0)
    return (torch.cat(oh) if oh else torch.zeros_like(h)), ow, ob


def _zeros_for(tangents: tuple[Tensor | None, ...], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(x) if t is None else t for t, x in zip(tangents, like))


class _HeadGrad(torch.autograd.Function):
    """(h, W, b) -> the gradient of S (:func:`_head_grad`); its derivative, backward and forward
    mode alike, is the (symmetric) Hessian of S, :func:`_head_hessian`, itself made of
    differentiable chunked operations."""

    generate_vmap_rule = True

    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        return _head_grad(h, weight, bias, labels, chunk)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        h, weight, bias, labels, ctx.chunk = inputs
        ctx.save_for_backward(h, weight, bias, labels)
        ctx.save_for_forward(h, weight, bias, labels)

    @staticmethod
    def backward(ctx: Any, gh: Tensor, gw: Tensor, gb: Tensor) -> tuple:
        h, weight, bias, labels = ctx.saved_tensors
        return (*_head_hessian(h, weight, bias, labels, ctx.chunk, *_zeros_for((gh, gw, gb), (h, weight, bias))),
                None, None)

    @staticmethod
    def jvp(ctx: Any, th: Tensor, tw: Tensor, tb: Tensor, *_: Any) -> tuple[Tensor, Tensor, Tensor]:
        h, weight, bias, labels = ctx.saved_tensors
        return _head_hessian(h, weight, bias, labels, ctx.chunk, *_zeros_for((th, tw, tb), (h, weight, bias)))


class _HeadLoss(torch.autograd.Function):
    """(h, W, b) -> S = sum_t CE(W h_t + b, y_t), chunked, with a gradient (:class:`_HeadGrad`)
    that is itself differentiable, so no derivative of any order keeps the logits of all rows."""

    generate_vmap_rule = True

    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int) -> Tensor:
        return _head_sum(h, weight, bias, labels, chunk)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        h, weight, bias, labels, ctx.chunk = inputs
        ctx.save_for_backward(h, weight, bias, labels)
        ctx.save_for_forward(h, weight, bias, labels)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        grads = _HeadGrad.apply(*ctx.saved_tensors, ctx.chunk)
        return (*(g * x for x in grads), None, None)

    @staticmethod
    def jvp(ctx: Any, th: Tensor, tw: Tensor, tb: Tensor, *_: Any) -> Tensor:
        h, weight, bias, labels = ctx.saved_tensors
        tangents = _zeros_for((th, tw, tb), (h, weight, bias))
        return sum((x * t).sum() for x, t in zip(_head_grad(h, weight, bias, labels, ctx.chunk), tangents))


def _counted_rows(hidden: Tensor, labels: Tensor, shift: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(hidden states (N, d), labels (N,)) of the N counted tokens, and their number (a tensor)."""
    if shift:
        hidden, labels = hidden[..., :-1, :], labels[..., 1:]
    y = labels.reshape(-1)
    keep = (y != IGNORE_INDEX).nonzero().squeeze(1)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep), y.index_select(0, keep), keep.numel()


def chunked_token_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, shift: bool,
                                chunk_tokens: int = DEFAULT_CHUNK_TOKENS, bias: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T + bias`` over the counted tokens
    (module docstring), ``chunk_tokens`` tokens at a time, in its value and every derivative.

    ``hidden`` (..., T, d), ``labels`` (..., T) of class indices (-100 not counted), ``weight``
    (V, d); with ``shift`` the states at t are scored against the label at t + 1. A batch with
    no counted token gives 0.
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    if hidden.dim() < 2 or hidden.shape[:-1] != labels.shape:
        raise ConfigError(f"hidden states (..., T, d) need labels (..., T); got {tuple(hidden.shape)} and "
                          f"{tuple(labels.shape)}")
    h, y, count = _counted_rows(hidden, labels, shift)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return _HeadLoss.apply(h, weight, bias, y, chunk_tokens) / max(count, 1)


class ChunkedTokenLoss(TokenLoss):
    """:class:`~sharpscope.tokens.TokenLoss` (``"causal"`` or ``"masked"``) with the output layer
    applied ``chunk_tokens`` tokens at a time (module docstring)."""

    def __init__(self, kind: str = "causal", chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 labels_key: str = "labels") -> None:
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ConfigError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
        super().__init__(kind, labels_key)
        self.chunk_tokens = chunk_tokens

    def batch_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The token-mean cross-entropy of the model's hidden states through its output layer."""
        labels = self.labels(batch)
        fields = {k: v for k, v in batch.items() if k != self.labels_key}
        base = getattr(model, "base_model", None)
        head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
        if base is None or base is model or not isinstance(head, nn.Linear):
            raise ConfigError(f"ChunkedTokenLoss needs a Hugging Face LM with a base_model and a Linear output layer "
                              f"(get_output_embeddings()); {type(model).__name__} has none")
        hidden = base(**fields)[0]
        return chunked_token_cross_entropy(hidden, head.weight, labels, self.shift, self.chunk_tokens, head.bias)

    def __repr__(self) -> str:
        return f"ChunkedTokenLoss({self.kind!r}, chunk_tokens={self.chunk_tokens})"
