"""Token cross-entropy over a large vocabulary, its logits formed a chunk of tokens at a time,
in the loss, the gradient, both exact Hessian-vector products and the GGN product.

For hidden states h_t (the language model's last layer, d wide) and an output layer
(W, b) of V rows, the token loss of a batch is

    L = sum_{t counted} CE(W h_t + b, y_t) / (number of counted tokens),

the same number :func:`sharpscope.tokens.token_cross_entropy` computes from the model's
logits. Formed at once, the logits of T tokens take T V floats, and autograd keeps more of
that size (the softmax; a double backward or a forward-mode tangent adds more): at
V = 50,257 they dominate a small model's memory. Here the counted tokens are split into
chunks of ``chunk_tokens`` and the output layer with the cross-entropy is one
``torch.autograd.Function`` of (h, W, b) whose every derivative is computed a chunk at a time
from h, W and b alone (no logits are saved; each chunk's are formed again when needed). With
R = P - E (softmax minus one-hot labels) and, along a direction (dh, dW, db),
dZ = dh W^T + h dW^T + db and dR = P * dZ - P rowsum(P * dZ) (the cross-entropy's Hessian
diag(p) - p p^T, row by row), chunk by chunk:

- the gradient of S = sum_t CE is (R W, R^T h, sum_t r_t) (:func:`_head_grad`);
- its derivative, the Hessian of S applied to the direction, is
  (dR W + R dW, dR^T h + R^T dh, sum_t dr_t) (:func:`_head_hessian`). It is symmetric, so the
  gradient's own Function (:class:`_HeadGrad`) gives it both as its backward (the
  ``reuse-graph`` HVP, a double backward) and as its forward-mode derivative (the
  ``forward-over-reverse`` HVP under ``torch.func``, vmapped by ``generate_vmap_rule``), and
  it is built from differentiable operations, so higher derivatives are exact too;
- the GGN drops the terms of R: (dR W, dR^T h, sum_t dr_t) (:func:`_head_ggn`, used by
  :class:`TokenGGN` for :mod:`sharpscope.curvature`'s ``"ggn"``).

The model's body is differentiated by autograd as usual; at most one chunk's logits (and a
few tensors of their size) are alive at a time, and the kept double-backward graph of
``reuse-graph`` holds h, W and b, not the logits. The sums over chunks equal the unchunked
sums to the float rounding of the different summation order (tests/test_vocab_chunks.py, in
float64 against the unchunked products and an explicit GGN). Peak memory with and without,
at V = 50,257: ``benchmarks/bench_vocab_chunks.py``.

:class:`ChunkedTokenLoss` is :class:`sharpscope.tokens.TokenLoss` computed this way for a
Hugging Face model: the hidden states from ``model.base_model(**fields)`` and the output
layer ``model.get_output_embeddings()`` (it must be a plain ``nn.Linear``: models that scale
or cap their logits after it are not supported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .batches import IGNORE_INDEX
from .checks import int_at_least
from .errors import ConfigError
from .tokens import TokenLoss, logits_of

__all__ = ["chunked_token_cross_entropy", "ChunkedTokenLoss", "TokenGGN", "DEFAULT_CHUNK_TOKENS"]

DEFAULT_CHUNK_TOKENS = 64  # logits of 64 x 50,257 floats: 12 MiB in float32


def _chunks(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int
            ) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(rows, P, R = P - E) for each chunk of rows: the softmax P of the chunk's logits and
    P minus the one-hot labels E."""
    for lo in range(0, h.shape[0], chunk):
        rows = slice(lo, lo + chunk)
        p = torch.softmax(F.linear(h[rows], weight, bias), dim=-1)
        y = labels[rows].unsqueeze(1)
        r = p.scatter_add(1, y, torch.full(y.shape, -1.0, dtype=p.dtype, device=p.device))
        yield rows, p, r
        del p, r  # before the next chunk's: the callers drop theirs too (one chunk alive at a time)


def _under_torch_func(x: Tensor) -> bool:
    """Whether ``x`` is traced by a ``torch.func`` transform (wrapped, e.g. batched by ``vmap``)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


def _add_product(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc + a^T b: in place (no temporary of acc's size) where nothing records or transforms it,
    out of place under autograd or a ``torch.func`` transform (whose wrapped tensors may be batched)."""
    recorded = torch.is_grad_enabled() and any(x.requires_grad for x in (acc, a, b))
    plain = not recorded and not any(_under_torch_func(x) for x in (acc, a, b))
    return acc.addmm_(a.T, b) if plain else acc + a.T @ b


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
    for rows, p, r in _chunks(h, weight, bias, labels, chunk):
        gh.append(r @ weight)
        gw = _add_product(gw, r, h[rows])
        gb = gb + r.sum(0)
        del p, r
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
        ow = _add_product(_add_product(ow, dr, h[rows]), r, dh[rows])
        ob = ob + dr.sum(0)
        del p, r, pdz, dr
    return (torch.cat(oh) if oh else torch.zeros_like(h)), ow, ob


def _zeros_for(tangents: tuple[Tensor | None, ...], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The tangents (or cotangents), a zero tensor shaped as ``like`` for each one autograd left None."""
    return tuple(torch.zeros_like(x) if t is None else t for t, x in zip(tangents, like))


class _ChunkedHead(torch.autograd.Function):
    """What both head functions share: (h, W, b, labels, chunk) saved for backward and for
    forward mode, and vmap rules generated (torch.func's HVPs batch them)."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        h, weight, bias, labels, ctx.chunk = inputs
        ctx.save_for_backward(h, weight, bias, labels)
        ctx.save_for_forward(h, weight, bias, labels)


class _HeadGrad(_ChunkedHead):
    """(h, W, b) -> the gradient of S (:func:`_head_grad`); its derivative, backward and forward
    mode alike, is the (symmetric) Hessian of S, :func:`_head_hessian`, itself made of
    differentiable chunked operations."""

    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        return _head_grad(h, weight, bias, labels, chunk)

    @staticmethod
    def backward(ctx: Any, gh: Tensor, gw: Tensor, gb: Tensor) -> tuple:
        h, weight, bias, labels = ctx.saved_tensors
        return (*_head_hessian(h, weight, bias, labels, ctx.chunk, *_zeros_for((gh, gw, gb), (h, weight, bias))),
                None, None)

    @staticmethod
    def jvp(ctx: Any, th: Tensor, tw: Tensor, tb: Tensor, *_: Any) -> tuple[Tensor, Tensor, Tensor]:
        h, weight, bias, labels = ctx.saved_tensors
        return _head_hessian(h, weight, bias, labels, ctx.chunk, *_zeros_for((th, tw, tb), (h, weight, bias)))


class _HeadLoss(_ChunkedHead):
    """(h, W, b) -> S = sum_t CE(W h_t + b, y_t), chunked, with a gradient (:class:`_HeadGrad`)
    that is itself differentiable: neither a gradient nor a Hessian-vector product keeps the
    logits of all rows (a third derivative is exact but records every chunk of the second)."""

    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int) -> Tensor:
        return _head_sum(h, weight, bias, labels, chunk)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        grads = _HeadGrad.apply(*ctx.saved_tensors, ctx.chunk)
        if torch.is_grad_enabled() or any(_under_torch_func(x) for x in (g, *grads)):
            return (*(g * x for x in grads), None, None)
        return (*(x.mul_(g) for x in grads), None, None)  # a first derivative only: no copy of dS/dW

    @staticmethod
    def jvp(ctx: Any, th: Tensor, tw: Tensor, tb: Tensor, *_: Any) -> Tensor:
        h, weight, bias, labels = ctx.saved_tensors
        tangents = _zeros_for((th, tw, tb), (h, weight, bias))
        return sum((x * t).sum() for x, t in zip(_head_grad(h, weight, bias, labels, ctx.chunk), tangents))


def _counted_rows(hidden: Tensor, labels: Tensor, shift: bool) -> tuple[Tensor, Tensor, int]:
    """(hidden states (N, d), labels (N,)) of the N counted tokens, and N."""
    keep = _kept(labels, shift)
    y = (labels[..., 1:] if shift else labels).reshape(-1)
    return _flat_rows(hidden, shift).index_select(0, keep), y.index_select(0, keep), keep.numel()


def chunked_token_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, shift: bool,
                                chunk_tokens: int = DEFAULT_CHUNK_TOKENS, bias: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T + bias`` over the counted tokens
    (module docstring), ``chunk_tokens`` tokens at a time, in its value and every derivative.

    ``hidden`` (..., T, d), ``labels`` (..., T) of class indices (-100 not counted), ``weight``
    (V, d); with ``shift`` the states at t are scored against the label at t + 1. A batch with
    no counted token gives 0.
    """
    chunk_tokens = int_at_least("chunk_tokens", chunk_tokens, 1)
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
        super().__init__(kind, labels_key)
        self.chunk_tokens = int_at_least("chunk_tokens", chunk_tokens, 1)

    def parts(self, model: nn.Module) -> tuple[nn.Module, nn.Linear]:
        """(the model's body, which gives the hidden states first, its output layer)."""
        base = getattr(model, "base_model", None)
        head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
        if base is None or base is model or not isinstance(head, nn.Linear):
            raise ConfigError(f"ChunkedTokenLoss needs a Hugging Face LM with a base_model and a Linear output layer "
                              f"(get_output_embeddings()); {type(model).__name__} has none")
        return base, head

    def batch_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The token-mean cross-entropy of the model's hidden states through its output layer."""
        labels = self.labels(batch)
        fields = {k: v for k, v in batch.items() if k != self.labels_key}
        base, head = self.parts(model)
        hidden = base(**fields)[0]
        return chunked_token_cross_entropy(hidden, head.weight, labels, self.shift, self.chunk_tokens, head.bias)

    def __repr__(self) -> str:
        return f"ChunkedTokenLoss({self.kind!r}, chunk_tokens={self.chunk_tokens})"


def _head_ggn(h: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, chunk: int,
              dh: Tensor, dw: Tensor, db: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """J^T H_CE J (dh, dW, db) for the logits Z = h W^T + b of the rows, a chunk at a time: with
    dZ = dh W^T + h dW^T + db (J applied) and dR = P * dZ - P rowsum(P * dZ) (H_CE = diag(p) - p p^T
    per row), J^T dR = (dR W, dR^T h, sum_t dr_t). (The Hessian, :func:`_head_hessian`, adds the
    terms of R = P - E, which the GGN drops.)"""
    oh, ow, ob = [], torch.zeros_like(weight), torch.zeros_like(bias)
    for rows, p, _ in _chunks(h, weight, bias, labels, chunk):
        pdz = p * (F.linear(dh[rows], weight, db) + h[rows] @ dw.T)
        dr = pdz - p * pdz.sum(-1, keepdim=True)
        oh.append(dr @ weight)
        ow = _add_product(ow, dr, h[rows])
        ob = ob + dr.sum(0)
        del p, pdz, dr
    return (torch.cat(oh) if oh else torch.zeros_like(h)), ow, ob


class _Outputs(nn.Module):
    """``fn(model, batch)`` as a module, for ``functional_call`` to run it at other parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


class TokenGGN:
    """The generalized Gauss-Newton matrix of a token loss (:class:`~sharpscope.tokens.TokenLoss`,
    :class:`ChunkedTokenLoss`) split for :mod:`sharpscope.curvature`: the outputs of a batch as a
    function of the parameters, and the Hessian of the batch's loss in those outputs.

    For logits z_t of the counted tokens t and J_t = dz_t / dtheta, the token-mean loss over the
    data (:mod:`sharpscope.tokens`, W counted tokens in all) has the GGN
    (Schraudolph 2002; Martens 2020, Sec. 8)

        G = (1 / W) sum_{t counted} J_t^T (diag(p_t) - p_t p_t^T) J_t,   p_t = softmax(z_t),

    which :mod:`sharpscope.curvature` computes batch by batch as w_b J_b^T M_b J_b with w_b
    the batch's share of the counted tokens and M_b the Hessian of the batch's token mean in
    its outputs (1 / (its counted tokens) times diag(p) - p p^T per counted token, 0 elsewhere).
    Under :class:`~sharpscope.tokens.TokenLoss` the outputs are the logits (B, T, V). Under
    :class:`ChunkedTokenLoss` they are (hidden states, W, b) of the output layer, the logits
    z = W h + b are formed inside M a chunk of tokens at a time (:func:`_head_ggn`), so a product
    never holds the logits (or their tangents) of every token at once.
    """

    def __init__(self, model: nn.Module, loss: TokenLoss) -> None:
        self.loss = loss
        self.chunked = isinstance(loss, ChunkedTokenLoss)
        self.module = _Outputs(model, self._outputs)

    @staticmethod
    def of(model: nn.Module, loss: Any) -> TokenGGN | None:
        """The split of ``loss`` when it is a token loss, else None."""
        return TokenGGN(model, loss) if isinstance(loss, TokenLoss) else None

    def _outputs(self, model: nn.Module, batch: Any) -> Any:
        fields = {k: v for k, v in batch.items() if k != self.loss.labels_key}
        if not self.chunked:
            return logits_of(model(**fields))
        base, head = self.loss.parts(model)  # type: ignore[attr-defined]
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.weight.shape[0])
        return base(**fields)[0], head.weight, bias

    def outputs(self, state: dict[str, Tensor], batch: Any) -> Any:
        """The batch's outputs with the model's parameters and buffers ``state`` (by name)."""
        return functional_call(self.module, {f"model.{k}": v for k, v in state.items()}, (batch,))

    def middle(self, outputs: Any, batch: Any, index: int, w: float) -> Callable[[Any], Any]:
        """u -> w M u, M the Hessian of the batch's token-mean loss in its outputs (class docstring)."""
        labels = self.loss.labels(batch)
        if self.chunked:
            hidden, weight, bias = outputs
            h, y, count = _counted_rows(hidden, labels, self.loss.shift)
            keep, scale = _kept(labels, self.loss.shift), w / max(count, 1)

            def chunked(u: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
                dh = _flat_rows(u[0], self.loss.shift).index_select(0, keep)
                oh, ow, ob = _head_ggn(h, weight, bias, y, self.loss.chunk_tokens, dh, u[1], u[2])  # type: ignore
                return _placed(oh * scale, keep, u[0], self.loss.shift), ow * scale, ob * scale
            return chunked
        logits, y = (outputs[..., :-1, :], labels[..., 1:]) if self.loss.shift else (outputs, labels)
        counted = (y != IGNORE_INDEX).unsqueeze(-1)
        p = torch.softmax(logits, dim=-1)
        scale = w / max(int(counted.sum()), 1)

        def full(u: Tensor) -> Tensor:
            pu = p * (u[..., :-1, :] if self.loss.shift else u)
            out = (pu - p * pu.sum(-1, keepdim=True)) * counted * scale
            return F.pad(out, (0, 0, 0, 1)) if self.loss.shift else out
        return full


def _flat_rows(x: Tensor, shift: bool) -> Tensor:
    """(..., T, d) -> the rows (N, d) the loss scores (without the last position when ``shift``)."""
    return (x[..., :-1, :] if shift else x).reshape(-1, x.shape[-1])


def _kept(labels: Tensor, shift: bool) -> Tensor:
    """The positions, among :func:`_flat_rows`' rows, of the counted tokens."""
    return ((labels[..., 1:] if shift else labels).reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)


def _placed(rows: Tensor, keep: Tensor, like: Tensor, shift: bool) -> Tensor:
    """The counted rows (N, d) put back at their positions in a zero tensor shaped as ``like``."""
    scored = like[..., :-1, :] if shift else like
    flat = rows.new_zeros(scored.reshape(-1, like.shape[-1]).shape).index_add(0, keep, rows)
    out = flat.reshape(scored.shape)
    return F.pad(out, (0, 0, 0, 1)) if shift else out
