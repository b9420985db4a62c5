"""Token-level losses: causal- and masked-language-model cross-entropy averaged over tokens.

A language model's loss is a mean over *tokens*, not over sequences: for token labels
y_{b,t} (-100: not counted) and logits z_{b,t}, the loss of the data is

    L = sum_{b,t counted} CE(z_{b,t}, y_{b,t}) / (number of counted tokens),

where a causal LM predicts the token at t + 1 from the prefix up to t (its logits at t are
scored against the label at t + 1, so the first label of a sequence is never a target) and
a masked LM scores each position against its own label. Batches of a data set hold
different numbers of counted tokens (ragged, padded sequences), so the mean of per-batch
means is not L; every analysis weighs batch b's mean by its number of counted tokens w_b
(:mod:`sharpscope.batches`: L = sum_b w_b mean_b / sum_b w_b), which is L exactly.

Two conventions, as everywhere in sharpscope:

- :class:`TokenLoss` (``"causal"`` or ``"masked"``), a :class:`~sharpscope.batches.ModelLoss`
  over dict batches ``{"input_ids", "attention_mask", "labels", ...}`` (Hugging Face
  style): the model is called as ``model(**fields)`` with every field but ``labels`` and its
  logits (``outputs.logits``, ``outputs["logits"]`` or the output tensor) are scored.
  A causal batch without ``labels`` uses ``input_ids`` with padding (``attention_mask`` 0)
  set to -100.
- :class:`TokenCrossEntropy` for ``(inputs, labels)`` pairs and a model called as
  ``model(inputs)`` -> logits (B, T, V) (the nanoGPT convention, whose labels are already
  the next tokens: ``shift=False``).

The model's own loss, ``model(**batch).loss``, is :class:`~sharpscope.batches.OutputLoss`
(``loss_fn=None``), weighted the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import IGNORE_INDEX, ModelLoss, count_tokens, pad_join
from .errors import ConfigError

__all__ = ["TokenLoss", "TokenCrossEntropy", "token_cross_entropy", "logits_of", "pad_join", "count_tokens",
           "IGNORE_INDEX", "KINDS"]

KINDS = ("causal", "masked")


def logits_of(outputs: Any) -> Tensor:
    """The logits of a model's outputs: the tensor itself, ``outputs.logits`` or ``outputs["logits"]``."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise ConfigError(f"a token loss needs logits (a tensor or outputs.logits), the model returned "
                      f"{type(outputs).__name__}")


def token_cross_entropy(logits: Tensor, labels: Tensor, shift: bool) -> Tensor:
    """Mean cross-entropy over the counted tokens of a batch (module docstring).

    ``logits`` (..., T, V), ``labels`` (..., T) of class indices, -100 not counted; with
    ``shift`` the logits at t are scored against the label at t + 1. A batch with no counted
    token gives 0 (its weight is 0, so it adds nothing to a mean over batches).
    """
    if logits.dim() < 2 or logits.shape[:-1] != labels.shape:
        raise ConfigError(f"token logits of shape (..., T, V) need labels (..., T); got logits "
                          f"{tuple(logits.shape)} and labels {tuple(labels.shape)}")
    if shift:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / count_tokens(labels, False).clamp(min=1).to(total.dtype)


class TokenCrossEntropy:
    """``loss_fn(outputs, labels)`` for ``(inputs, labels)`` batches: the token-mean
    cross-entropy, with ``batch_weight(labels)`` the batch's number of counted tokens (its
    weight in the mean over batches, :mod:`sharpscope.batches`)."""

    def __init__(self, shift: bool = False) -> None:
        self.shift = bool(shift)

    def __call__(self, outputs: Any, labels: Tensor) -> Tensor:
        return token_cross_entropy(logits_of(outputs), labels, self.shift)

    def batch_weight(self, labels: Tensor) -> int:
        """The number of counted tokens of a batch's labels."""
        return int(count_tokens(labels, self.shift))

    def __repr__(self) -> str:
        return f"TokenCrossEntropy(shift={self.shift})"


class TokenLoss(ModelLoss):
    """Causal- or masked-LM cross-entropy over dict batches, averaged over tokens (module docstring).

    Args:
        kind: ``"causal"`` (labels shifted by one position) or ``"masked"`` (not shifted).
        labels_key: the batch field holding the labels.
    """

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
        """The token-mean cross-entropy of ``model(**fields)`` on the batch."""
        labels = self.labels(batch)
        fields = {k: v for k, v in batch.items() if k != self.labels_key}
        return token_cross_entropy(logits_of(model(**fields)), labels, self.shift)

    def batch_weight(self, batch: Any) -> int:
        """The batch's number of counted tokens."""
        return int(count_tokens(self.labels(batch), self.shift))

    def join_padded(self, batches: list[Any]) -> Any:
        """Dict batches joined into one (:func:`pad_join`, labels padded with -100)."""
        return pad_join(batches, self.labels_key)

    def __repr__(self) -> str:
        return f"TokenLoss({self.kind!r})"
