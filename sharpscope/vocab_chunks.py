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

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .batches import IGNORE_INDEX, count_tokens
from .errors import ConfigError
from .tokens import TokenLoss

__all__ = ["chunked_token_cross_entropy", "ChunkedTokenLoss", "DEFAULT_CHUNK_TOKENS"]

DEFAULT_CHUNK_TOKENS = 64  # logits of 64 x 50,257 floats: 12 MiB in float32


def _chunk_sum(h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
    """sum_t CE(W h_t + b, y_t) over the chunk's counted tokens."""
    return F.cross_entropy(F.linear(h, weight, bias), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def _under_torch_func(h: Tensor) -> bool:
    """Whether ``h`` is traced by a ``torch.func`` transform (its tensors are wrapped), which
    refuses the saved-tensor hooks of ``torch.utils.checkpoint``."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(h))


def chunked_token_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, shift: bool,
                                chunk_tokens: int = DEFAULT_CHUNK_TOKENS, bias: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T + bias`` over the counted tokens
    (module docstring), ``chunk_tokens`` tokens at a time.

    ``hidden`` (..., T, d), ``labels`` (..., T) of class indices (-100 not counted), ``weight``
    (V, d); with ``shift`` the states at t are scored against the label at t + 1. A batch with
    no counted token gives 0.
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    if hidden.dim() < 2 or hidden.shape[:-1] != labels.shape:
        raise ConfigError(f"hidden states (..., T, d) need labels (..., T); got {tuple(hidden.shape)} and "
                          f"{tuple(labels.shape)}")
    if shift:
        hidden, labels = hidden[..., :-1, :], labels[..., 1:]
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    if _under_torch_func(h):  # chunks would keep as much (and more: one weight gradient each)
        total = _chunk_sum(h, weight, bias, y)
    else:
        recorded = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        parts = [(h[lo:lo + chunk_tokens], weight, bias, y[lo:lo + chunk_tokens])
                 for lo in range(0, h.shape[0], chunk_tokens)]
        total = sum(checkpoint(_chunk_sum, *part, use_reentrant=False) if recorded else _chunk_sum(*part)
                    for part in parts)
    return total / count_tokens(labels, False).clamp(min=1).to(total.dtype)


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
