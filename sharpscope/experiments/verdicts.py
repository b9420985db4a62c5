"""What a compare's or a sweep's verdicts may claim: the ranges of bounded metrics (their
intervals are clipped to them) and whether a run had converged when it stopped.

Convergence (:func:`run_convergence`). A run has *converged* when it fits its training labels,
final train accuracy >= ``CONVERGED_TRAIN_ACC`` (0.99, the level Jiang et al. 2020 train to),
or when its training loss has levelled off: the mean training loss of its last epoch is less
than ``STILL_FALLING`` (5 %) below that of ``k = max(1, ceil(E / 4))`` epochs earlier (E the
epochs recorded). A run below 99 % whose loss still fell by more than 5 % over its last
quarter of epochs was still learning its training set when it stopped: its test accuracy,
curvature and sharpness describe a point on the way, not a minimum, and a verdict comparing
such runs is about unconverged runs. A run with one epoch has no trend and counts as
unconverged below 99 %. Train accuracy and loss are the means over the epoch's mini-batches
on the labels trained on (metrics.jsonl). A run that fits noisy labels poorly but has levelled
off (SAM under label noise) counts as converged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["METRIC_BOUNDS", "CI_METHOD_TEXT", "CONVERGED_TRAIN_ACC", "STILL_FALLING", "CONVERGENCE_DEFINITION",
           "run_convergence", "unconverged_warning", "qualified_verdict"]

# Metrics with a fixed range: their intervals are clipped to it (paired differences to
# +/- its width), see sharpscope.stats.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "test_acc": (0.0, 1.0), "train_acc": (0.0, 1.0), "train_acc_clean": (0.0, 1.0), "gradcos": (-1.0, 1.0),
}
CI_METHOD_TEXT = ("Student t; for accuracies (in [0, 1]) and cosines (in [-1, 1]) clipped to that range, and "
                  "for their paired differences to +/- its width (the mean lies there with certainty, so the "
                  "clipped interval covers it exactly as often as the t interval)")

CONVERGED_TRAIN_ACC = 0.99
STILL_FALLING = 0.05
CONVERGENCE_DEFINITION = (
    f"a run has converged when its final train accuracy is at least {CONVERGED_TRAIN_ACC:.0%} or its training loss "
    f"fell by less than {STILL_FALLING:.0%} over its last quarter of epochs (at least one epoch); "
    "otherwise it was still learning its training set when it stopped")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_convergence(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the run of these epoch records (metrics.jsonl) converged (module docstring):
    ``{"converged", "train_acc", "loss_drop", "over_epochs", "reason"}``; ``loss_drop`` is
    (L[E-k] - L[E]) / L[E-k] over the last k epochs (None with one epoch)."""
    recs = [r for r in records if _finite(r.get("train_loss"))]
    if not recs:
        return {"converged": False, "train_acc": None, "loss_drop": None, "over_epochs": 0,
                "reason": "no finite training loss recorded"}
    acc = recs[-1].get("train_acc")
    acc = float(acc) if _finite(acc) else None
    k = max(1, math.ceil(len(recs) / 4))
    drop = None
    if len(recs) > k:
        before, last = float(recs[-1 - k]["train_loss"]), float(recs[-1]["train_loss"])
        drop = (before - last) / before if before > 0 else 0.0
    fits = acc is not None and acc >= CONVERGED_TRAIN_ACC
    levelled = drop is not None and drop < STILL_FALLING
    acc_text = "n/a" if acc is None else f"{acc:.3f}"
    if fits:
        reason = f"train accuracy {acc_text} >= {CONVERGED_TRAIN_ACC:g}"
    elif levelled:
        reason = f"train loss fell {drop:.1%} over the last {k} epoch(s) (< {STILL_FALLING:.0%})"
    elif drop is None:
        reason = f"train accuracy {acc_text} < {CONVERGED_TRAIN_ACC:g} after one epoch (no trend)"
    else:
        reason = (f"train accuracy {acc_text} < {CONVERGED_TRAIN_ACC:g} and train loss still fell {drop:.1%} over "
                  f"the last {k} epoch(s)")
    return {"converged": fits or levelled, "train_acc": acc, "loss_drop": drop, "over_epochs": k, "reason": reason}


def unconverged_warning(unconverged: Iterable[str], total: int) -> str | None:
    """The warning for reports and summaries when any of ``total`` runs (named in
    ``unconverged``) has not converged; None when all have."""
    names = list(unconverged)
    if not names:
        return None
    return (f"{len(names)} of {total} runs have not converged ({', '.join(names)}): {CONVERGENCE_DEFINITION}. "
            "Their test accuracy, curvature and sharpness describe points on the way to a minimum, so every "
            "verdict involving them is about unconverged runs; train longer (more --epochs) before reading it "
            "as a property of the optimizers.")


def qualified_verdict(verdict: str, about_unconverged: bool) -> str:
    """``verdict``, marked when it compares unconverged runs."""
    return f"{verdict} (unconverged runs)" if about_unconverged else verdict
