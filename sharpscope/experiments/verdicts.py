"""What a compare's or a sweep's verdicts may claim: the ranges of bounded metrics (their
intervals are clipped to them) and whether a run had converged when it stopped.

A run has *converged* (:func:`run_convergence`) when its final train accuracy is >=
``CONVERGED_TRAIN_ACC`` (0.99, the level Jiang et al. 2020 train to) or its training loss has
levelled off: its last ``k = max(1, ceil(E / 4))`` of E epochs brought less than
``STILL_FALLING`` of the decrease since the first, (L[E-k] - L[E]) / (L[1] - L[E]) < 0.1 (the
share of the total decrease tells a plateau from a slow crawl, which a relative drop does not).
Otherwise its test accuracy, curvature and sharpness describe a point on the way to a minimum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["METRIC_BOUNDS", "CI_METHOD_TEXT", "CONVERGED_TRAIN_ACC", "STILL_FALLING", "CONVERGENCE_DEFINITION",
           "finite_number", "run_convergence", "unconverged_warning", "qualified_verdict"]

# Metrics with a fixed range: their intervals are clipped to it (paired differences to +/- its width).
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "test_acc": (0.0, 1.0), "train_acc": (0.0, 1.0), "train_acc_clean": (0.0, 1.0), "gradcos": (-1.0, 1.0),
}
CI_METHOD_TEXT = ("Student t; for accuracies (in [0, 1]) and cosines (in [-1, 1]) clipped to that range, and "
                  "for their paired differences to +/- its width (the mean lies there with certainty, so the "
                  "clipped interval covers it exactly as often as the t interval)")

CONVERGED_TRAIN_ACC = 0.99
STILL_FALLING = 0.10
CONVERGENCE_DEFINITION = (
    f"a run has converged when its final train accuracy is at least {CONVERGED_TRAIN_ACC:.0%} or its training loss "
    f"has levelled off (its last quarter of epochs, at least one, brought less than {STILL_FALLING:.0%} of its "
    "decrease since the first epoch); otherwise it was still learning its training set when it stopped")


def finite_number(x: Any) -> bool:
    """Whether ``x`` is a finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_convergence(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the run of these epoch records converged (module docstring): ``{"converged",
    "train_acc", "late_share", "over_epochs", "reason"}``, ``late_share`` None with one epoch
    or a loss that did not fall."""
    recs = [r for r in records if finite_number(r.get("train_loss"))]
    if not recs:
        return {"converged": False, "train_acc": None, "late_share": None, "over_epochs": 0,
                "reason": "no finite training loss recorded"}
    acc = recs[-1].get("train_acc")
    acc = float(acc) if finite_number(acc) else None
    losses = [float(r["train_loss"]) for r in recs]
    k = max(1, math.ceil(len(losses) / 4))
    total = losses[0] - losses[-1]
    share = (losses[-1 - k] - losses[-1]) / total if len(losses) > k and total > 0 else None
    fits = acc is not None and acc >= CONVERGED_TRAIN_ACC
    levelled = share is not None and share < STILL_FALLING
    acc_text = "n/a" if acc is None else f"{acc:.3f}"
    if fits:
        reason = f"train accuracy {acc_text} >= {CONVERGED_TRAIN_ACC:g}"
    elif levelled:
        reason = f"the last {k} epoch(s) brought {share:.1%} of the loss decrease (< {STILL_FALLING:.0%})"
    elif share is None:
        reason = (f"train accuracy {acc_text} < {CONVERGED_TRAIN_ACC:g}, and "
                  + ("one epoch: no trend" if len(losses) == 1 else "the training loss did not fall"))
    else:
        reason = (f"train accuracy {acc_text} < {CONVERGED_TRAIN_ACC:g} and the last {k} epoch(s) brought "
                  f"{share:.1%} of the loss decrease")
    return {"converged": fits or levelled, "train_acc": acc, "late_share": share, "over_epochs": k,
            "reason": reason}


def unconverged_warning(unconverged: Iterable[str], total: int) -> str | None:
    """The warning when any of ``total`` runs has not converged; None when all have."""
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
