"""One epoch's data and checks: the example order and augmentation from ``(seed, epoch)``
(:func:`epoch_plan`, :func:`crop_and_flip`), :func:`evaluate`, :func:`check_diverged`, and
:class:`LogitsOnly`, the model as the steps on token data run it."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import NonFiniteLossError
from ..objective import eval_mode
from ..tokens import logits_of
from .config import DIVERGED_FACTOR, TrainConfig

__all__ = ["epoch_plan", "crop_and_flip", "evaluate", "check_diverged", "LogitsOnly", "token_eval_batch"]

_EVAL_LOGITS = 1 << 24  # float32 logits an evaluation batch of token data may hold (64 MiB)


def token_eval_batch(batch_size: int, block_size: int, vocab: int) -> int:
    """Blocks per evaluation batch of token data: logits within 64 MiB, at most 1024, at least the batch."""
    return max(int(batch_size), min(1024, _EVAL_LOGITS // max(1, block_size * vocab)))


class LogitsOnly(nn.Module):
    """``model(x)``'s logits as a tensor (a Hugging Face model's ``outputs.logits``), sharing its
    parameters (its ``state_dict`` keys gain ``model.``: save ``model`` itself)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def epoch_plan(data: Dataset, config: TrainConfig, epoch: int, augment: bool) -> dict[str, torch.Tensor]:
    """The order of examples (and augmentation draws) of one epoch, reproducible from (seed, epoch)."""
    n = data.x_train.shape[0]
    gen = torch.Generator().manual_seed((config.seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1))
    plan = {"order": torch.randperm(n, generator=gen)}
    if augment:
        plan["shift"] = torch.randint(-4, 5, (n, 2), generator=gen)
        plan["flip"] = torch.rand(n, generator=gen) < 0.5
    return plan


def crop_and_flip(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random crop with 4 pixels of zero padding and horizontal flip (He et al. 2016)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        dy, dx = int(shift[i, 0]) + 4, int(shift[i, 1]) + 4
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on (x, y), per token for token
    labels y (N, T); restores the mode."""
    loss_sum, correct = 0.0, 0
    with eval_mode(model):
        for lo in range(0, x.shape[0], batch_size):
            out = model(x[lo:lo + batch_size])
            out = logits_of(out) if y.dim() > 1 else out
            yb = y[lo:lo + batch_size]
            loss_sum += F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="sum").item()
            correct += (out.argmax(-1) == yb).sum().item()
    n = max(1, y.numel())
    return loss_sum / n, correct / n


def check_diverged(record: dict[str, Any], num_classes: int, kept: str) -> None:
    """Stop a run whose epoch ended with a non-finite or exploded loss (before it is saved)."""
    chance = math.log(max(num_classes, 2))
    train_loss, test_loss = record["train_loss"], record["test_loss"]
    if math.isfinite(train_loss) and math.isfinite(test_loss) and train_loss <= DIVERGED_FACTOR * chance:
        return
    raise NonFiniteLossError(
        f"training diverged in epoch {record['epoch']} (lr {record['lr']:.4g}): mean train loss {train_loss:.4g}, "
        f"test loss {test_loss:.4g}, chance level {chance:.3g}; not saved, {kept}; try a smaller --lr or --rho")
