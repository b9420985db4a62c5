"""Token-level losses: causal- and masked-language-model cross-entropy averaged over tokens.

L = sum_{b,t counted} CE(z_{b,t}, y_{b,t}) / (counted tokens), labels -100 not counted; a causal
LM scores its logits at t against the label at t + 1. Each batch is weighted by its counted
tokens (:mod:`sharpscope.batches`), which gives L exactly. :class:`TokenLoss` takes Hugging Face
style dict batches and ``model(**fields)``; :class:`TokenCrossEntropy` takes ``(inputs, labels)``
pairs and ``model(inputs)`` -> logits (B, T, V) (nanoGPT's convention: ``shift=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .batches import IGNORE_INDEX, ModelLoss, count_tokens, pad_join
from .errors import ConfigError

__all__ = ["TokenLoss", "TokenCrossEntropy", "token_cross_entropy", "logits_of", "pad_join", "count_tokens",
           "IGNORE_INDEX", "KINDS"]

KINDS = ("causal", "masked")


def logits_of(outputs: Any) -> Tensor:
    """The logits of a model's outputs: the tensor itself, ``outputs.logits`` or ``outputs["logits"]``."""
    logits = outputs if isinstance(outputs, Tensor) else getattr(outputs, "logits", None)
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        logits = outputs["logits"]
    if isinstance(logits, Tensor):
        return logits
    raise ConfigError(f"a token loss needs logits (a tensor or outputs.logits), the model returned "
                      f"{type(outputs).__name__}")


def token_cross_entropy(logits: Tensor, labels: Tensor, shift: bool) -> Tensor:
    """Mean cross-entropy over the counted tokens of ``logits`` (..., T, V) against ``labels``
    (..., T), shifted by one position when ``shift``; 0 for a batch without counted tokens."""
    if logits.dim() < 2 or logits.shape[:-1] != labels.shape:
        raise ConfigError(f"token logits of shape (..., T, V) need labels (..., T); got logits "
                          f"{tuple(logits.shape)} and labels {tuple(labels.shape)}")
    if shift:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / count_tokens(labels, False).clamp(min=1).to(total.dtype)


class TokenCrossEntropy:
    """``loss_fn(outputs, labels)``: the token-mean cross-entropy, weighted by its counted tokens."""

    def __init__(self, shift: bool = False) -> None:
        self.shift = bool(shift)

    def __call__(self, outputs: Any, labels: Tensor) -> Tensor:
        return token_cross_entropy(logits_of(outputs), labels, self.shift)

    def batch_weight(self, labels: Tensor) -> int:
        return int(count_tokens(labels, self.shift))

    def __repr__(self) -> str:
        return f"TokenCrossEntropy(shift={self.shift})"


class TokenLoss(ModelLoss):
    """Causal (shifted) or masked LM token-mean cross-entropy of dict batches' ``labels_key``."""

    def __init__(self, kind: str = "causal", labels_key: str = "labels") -> None:
        if kind not in KINDS:
            raise ConfigError(f"token loss kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        self.shift = kind == "causal"
        self.labels_key = labels_key
        super().__init__(self.batch_loss, weight=self.batch_weight, join=self.join_padded)

    def labels(self, batch: Any) -> Tensor:
        """The batch's labels; for a causal batch without them, ``input_ids`` with padding set to -100."""
        if not isinstance(batch, Mapping):
            raise ConfigError(f"a TokenLoss needs dict batches (input_ids, attention_mask, labels), got "
                              f"{type(batch).__name__}")
        if self.labels_key in batch:
            return batch[self.labels_key]
        if self.shift and "input_ids" in batch:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            return ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
        raise ConfigError(f"the batch has no {self.labels_key!r} field (fields: {', '.join(map(str, batch))})")

    def batch_loss(self, model: nn.Module, batch: Any) -> Tensor:
        labels = self.labels(batch)
        fields = {k: v for k, v in batch.items() if k != self.labels_key}
        return token_cross_entropy(logits_of(model(**fields)), labels, self.shift)

    def batch_weight(self, batch: Any) -> int:
        return int(count_tokens(self.labels(batch), self.shift))

    def join_padded(self, batches: list[Any]) -> Any:
        return pad_join(batches, self.labels_key)

    def __repr__(self) -> str:
        return f"TokenLoss({self.kind!r})"
