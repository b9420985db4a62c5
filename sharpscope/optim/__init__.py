"""SAM and its training step, as torch optimizers (see :mod:`.sam`, :mod:`.bn`, :mod:`.step`;
variants over SAM's two steps: :mod:`.rsam`, :mod:`.gsam`, :mod:`.wsam`, :mod:`.looksam`,
:mod:`.fsam`; batch norm over the global batch of every rank: :mod:`.sync_bn`)."""

from __future__ import annotations

from .asam import asam_groups
from .bn import bn_modules, frozen_bn_stats
from .fsam import FriendlySAM
from .gsam import GSAM
from .looksam import LookSAM
from .rsam import RSAM
from .sam import SAM
from .step import StepResult, sam_step
from .sync_bn import GlobalBatchNorm, convert_to_global_bn, has_global_bn
from .wsam import WSAM

__all__ = ["SAM", "RSAM", "GSAM", "WSAM", "LookSAM", "FriendlySAM", "sam_step", "frozen_bn_stats", "bn_modules",
           "StepResult", "asam_groups",
           "GlobalBatchNorm", "convert_to_global_bn", "has_global_bn"]
