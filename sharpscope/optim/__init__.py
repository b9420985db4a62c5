"""SAM, its variants and its training step as torch optimizers: :mod:`.sam` (SAM / ASAM), :mod:`.step`
and :mod:`.passes` (the step), :mod:`.bn`, the variants (:mod:`.rsam`, :mod:`.gsam`, :mod:`.wsam`,
:mod:`.looksam`, :mod:`.fsam`), :mod:`.registry` (every optimizer a run may name), :mod:`.sync_bn`."""

from __future__ import annotations

# The registered optimizers, in the order the registry lists them (sharpscope train --help).
from .baselines import SGD, AdamW
from .sam import SAM
from .asam import ASAM, asam_groups
from .rsam import RSAM
from .gsam import GSAM
from .wsam import WSAM
from .looksam import LookSAM
from .fsam import FriendlySAM
from .bn import bn_modules, frozen_bn_stats
from .step import StepResult, sam_step
from .sync_bn import GlobalBatchNorm, convert_to_global_bn, has_global_bn
from . import registry

__all__ = ["SGD", "AdamW", "SAM", "ASAM", "RSAM", "GSAM", "WSAM", "LookSAM", "FriendlySAM", "sam_step",
           "frozen_bn_stats", "bn_modules", "StepResult", "asam_groups", "registry", "GlobalBatchNorm",
           "convert_to_global_bn", "has_global_bn"]
