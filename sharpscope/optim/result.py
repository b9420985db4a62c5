"""What one training step reports."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StepResult"]


@dataclass
class StepResult:
    """What one training step saw at the unperturbed weights (for metrics)."""

    loss: torch.Tensor      # mean loss of the batch at w (0-dim, detached)
    outputs: torch.Tensor   # model outputs at w (detached)
    perturbed_loss: torch.Tensor | None  # mean loss at w + e (SAM only)
    skipped: bool = False   # mixed precision: an inf/NaN gradient, the weights left at w, no update
