"""SAM and its training step, as torch optimizers (see :mod:`.sam`, :mod:`.bn`, :mod:`.step`)."""

from __future__ import annotations

from .bn import bn_modules, frozen_bn_stats
from .sam import SAM
from .step import StepResult, sam_step

__all__ = ["SAM", "sam_step", "frozen_bn_stats", "bn_modules", "StepResult"]
