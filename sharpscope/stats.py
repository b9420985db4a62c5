"""Statistics of repeated runs: means with confidence intervals and paired comparisons.

Ground floor: numpy and scipy.stats only, nothing about networks or training.

- :func:`summarize`: mean, sample standard deviation and the Student-t confidence interval
  mean +/- t_{n-1, (1+c)/2} s / sqrt(n) of values from independent runs (seeds).
- :func:`paired_difference`: for two settings run on the same seeds (same split, label
  flips and initial weights per seed), the per-seed differences d_i = b_i - a_i, their
  Student-t interval and the two-sided paired t-test p-value (``scipy.stats.ttest_rel``).
  Pairing removes the between-seed variance that both settings share, which is why a
  comparison is made on differences and never on two separate intervals.
- :func:`verdict`: "higher" / "lower" only when the interval of the difference excludes
  zero; otherwise "no difference at this scale".

With one run there is no spread: standard deviations, intervals and p-values are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["Summary", "PairedDifference", "summarize", "paired_difference", "verdict", "CI_METHOD"]

CI_METHOD = "Student t"


def _values(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ConfigError(f"{what}: no values")
    return arr


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1) and confidence interval of ``n`` values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    method: str = CI_METHOD

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences b - a: their mean, standard deviation, confidence interval and
    the two-sided paired t-test p-value."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float = 0.95
    method: str = f"paired {CI_METHOD}"

    def to_dict(self) -> dict:
        return asdict(self) | {"verdict": verdict(self)}


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Student-t summary of independent values (module docstring); NaN spread for one value.
    Non-finite values are refused: a diverged run must be reported, not averaged."""
    _check_confidence(confidence)
    arr = _values(values, "summarize")
    if not np.isfinite(arr).all():
        raise ConfigError(f"summarize: non-finite values {arr.tolist()}")
    n = int(arr.size)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    low, high = _t_interval(mean, std, n, confidence)
    return Summary(n, mean, std, low, high, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """b - a over paired runs (same seeds, in the same order)."""
    _check_confidence(confidence)
    xa, xb = _values(a, "paired_difference"), _values(b, "paired_difference")
    if xa.shape != xb.shape:
        raise ConfigError(f"paired_difference needs the same number of runs, got {xa.size} and {xb.size}")
    d = summarize(xb - xa, confidence)
    if d.n < 2:
        p = math.nan
    elif d.std == 0:  # identical differences: no spread, the sign is certain unless they are all 0
        p = 1.0 if d.mean == 0 else 0.0
    else:
        from scipy import stats

        p = float(stats.ttest_rel(xb, xa).pvalue)
    return PairedDifference(d.n, d.mean, d.std, d.ci_low, d.ci_high, p, confidence)


def verdict(diff: PairedDifference | Summary) -> str:
    """"higher" or "lower" when the confidence interval excludes 0, else "no difference at
    this scale" (also with a single run, whose interval is undefined)."""
    if not (math.isfinite(diff.ci_low) and math.isfinite(diff.ci_high)):
        return "no difference at this scale"
    if diff.ci_low > 0:
        return "higher"
    if diff.ci_high < 0:
        return "lower"
    return "no difference at this scale"
