"""Statistics of repeated runs (seeds): Student-t intervals mean +/- t_{n-1, (1+c)/2} s / sqrt(n)
(:func:`summarize`), paired differences b_i - a_i of two settings on the same seeds, which
removes their shared between-seed variance, with the paired t-test (:func:`paired_difference`),
and rank correlations over runs (Kendall's tau-b, Spearman's rho; Jiang et al., ICLR 2020)
with seeded percentile bootstrap intervals. ``bounds=(lo, hi)`` intersects an interval with the
range the mean surely lies in (coverage and verdicts unchanged). :func:`verdict` says "higher" /
"lower" only when the interval excludes 0. With one run, spreads, intervals and p-values are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["Summary", "PairedDifference", "summarize", "paired_difference", "verdict", "CI_METHOD",
           "RankCorrelation", "CorrelationDifference", "rank_correlation", "correlation_difference",
           "kendall_tau_b", "spearman_rho", "BOOTSTRAP_METHOD", "clipped_method"]

CI_METHOD = "Student t"


def _values(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ConfigError(f"{what}: no values")
    return arr


def _check(confidence: float, bounds: tuple[float, float] | None = None) -> None:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    if bounds is not None and not (len(bounds) == 2 and all(math.isfinite(b) for b in bounds)
                                   and bounds[0] < bounds[1]):
        raise ConfigError(f"bounds must be (low, high) with low < high, got {bounds!r}")


def _check_in_range(arr: np.ndarray, bounds: tuple[float, float] | None, what: str) -> None:
    """Refuse values outside ``bounds`` by over 1e-4 of the range (float32 rounding), e.g. percentages."""
    if bounds is None:
        return
    slack = 1e-4 * (bounds[1] - bounds[0])
    if ((arr < bounds[0] - slack) | (arr > bounds[1] + slack)).any():
        raise ConfigError(f"{what}: values {arr.tolist()} outside their range [{bounds[0]:g}, {bounds[1]:g}]")


def clipped_method(method: str, bounds: tuple[float, float] | None) -> str:
    """``method`` naming the range it is clipped to (unchanged without bounds)."""
    return method if bounds is None else f"{method}, clipped to [{bounds[0]:g}, {bounds[1]:g}]"


class _WithVerdict:
    """``to_dict`` with the :func:`verdict` of the interval."""

    def to_dict(self) -> dict:
        return asdict(self) | {"verdict": verdict(self)}  # type: ignore[call-overload, arg-type]


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
class PairedDifference(_WithVerdict):
    """Per-seed differences b - a: mean, standard deviation, interval and paired t-test p-value."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float = 0.95
    method: str = f"paired {CI_METHOD}"


def summarize(values: Sequence[float], confidence: float = 0.95,
              bounds: tuple[float, float] | None = None) -> Summary:
    """Student-t summary of independent values, the interval clipped to ``bounds``; non-finite
    values and values outside ``bounds`` are refused (a diverged run is reported, not averaged)."""
    _check(confidence, bounds)
    arr = _values(values, "summarize")
    if not np.isfinite(arr).all():
        raise ConfigError(f"summarize: non-finite values {arr.tolist()}")
    _check_in_range(arr, bounds, "summarize")
    n = int(arr.size)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    low = high = math.nan  # no spread from one value
    if n > 1 and math.isfinite(std):
        from scipy import stats

        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    if bounds is not None and math.isfinite(low) and math.isfinite(high):  # the interval clipped to the range
        lo, hi = float(bounds[0]), float(bounds[1])
        low, high = min(max(low, lo), hi), max(min(high, hi), lo)
    return Summary(n, mean, std, low, high, confidence, clipped_method(CI_METHOD, bounds))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      bounds: tuple[float, float] | None = None) -> PairedDifference:
    """b - a over paired runs (same seeds, same order); ``bounds``: the range of each value."""
    _check(confidence, bounds)
    xa, xb = _values(a, "paired_difference"), _values(b, "paired_difference")
    if xa.shape != xb.shape:
        raise ConfigError(f"paired_difference needs the same number of runs, got {xa.size} and {xb.size}")
    if bounds is not None:
        for x in (xa, xb):
            _check_in_range(x[np.isfinite(x)], bounds, "paired_difference")
    width = None if bounds is None else float(bounds[1]) - float(bounds[0])
    d = summarize(xb - xa, confidence, None if width is None else (-width, width))
    if d.n < 2:
        p = math.nan
    elif d.std == 0:  # identical differences: no spread, the sign is certain unless they are all 0
        p = 1.0 if d.mean == 0 else 0.0
    else:
        from scipy import stats

        p = float(stats.ttest_rel(xb, xa).pvalue)
    return PairedDifference(d.n, d.mean, d.std, d.ci_low, d.ci_high, p, confidence,
                            clipped_method(f"paired {CI_METHOD}", None if width is None else (-width, width)))


def verdict(diff: PairedDifference | Summary | RankCorrelation | CorrelationDifference) -> str:
    """"higher" or "lower" when the interval excludes 0, else "no difference at this scale"."""
    if not (math.isfinite(diff.ci_low) and math.isfinite(diff.ci_high)):
        return "no difference at this scale"
    if diff.ci_low > 0:
        return "higher"
    if diff.ci_high < 0:
        return "lower"
    return "no difference at this scale"


BOOTSTRAP_METHOD = "percentile bootstrap over runs"
CORRELATIONS = ("kendall", "spearman")


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of ``x`` and ``y`` (..., n): sum_ij s_x s_y /
    sqrt(sum_ij s_x^2 sum_ij s_y^2), s_x = sign(x_i - x_j) (ties as scipy.stats.kendalltau);
    NaN where a row is constant."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    num = (sx * sy).sum(axis=(-2, -1))
    den = np.sqrt((sx * sx).sum(axis=(-2, -1)) * (sy * sy).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: the Pearson correlation of the average ranks (ties
    share their mean rank, as scipy.stats.spearmanr). NaN where one row is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


_STATISTICS = {"kendall": kendall_tau_b, "spearman": spearman_rho}


@dataclass(frozen=True)
class RankCorrelation(_WithVerdict):
    """A rank correlation of ``n`` runs, its two-sided p-value and its bootstrap interval
    (``resamples`` kept: those with a constant resampled column are dropped)."""

    method: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int
    confidence: float = 0.95
    ci_method: str = BOOTSTRAP_METHOD


@dataclass(frozen=True)
class CorrelationDifference(_WithVerdict):
    """r(a, y) - r(b, y) over the same ``n`` runs with a paired bootstrap interval."""

    method: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    resamples: int
    confidence: float = 0.95
    ci_method: str = f"paired {BOOTSTRAP_METHOD}"


def _columns(what: str, method: str, resamples: int, confidence: float, *cols: Sequence[float]) -> list[np.ndarray]:
    """The columns of a rank correlation, every option checked."""
    _check(confidence)
    if method not in _STATISTICS:
        raise ConfigError(f"unknown correlation {method!r}; choose from {', '.join(CORRELATIONS)}")
    if not (isinstance(resamples, int) and 100 <= resamples <= 1_000_000):
        raise ConfigError(f"resamples must be an integer in [100, 1e6], got {resamples!r}")
    arrs = [_values(c, what) for c in cols]
    if len({a.size for a in arrs}) != 1:
        raise ConfigError(f"{what}: the columns have different lengths {[a.size for a in arrs]}")
    if not all(np.isfinite(a).all() for a in arrs):
        raise ConfigError(f"{what}: non-finite values (drop failed runs first)")
    if arrs[0].size < 3:
        raise ConfigError(f"{what}: a rank correlation needs at least 3 runs, got {arrs[0].size}")
    return arrs


def _bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, seed: int,
               confidence: float) -> tuple[float, float, int]:
    """The percentile interval of ``stat(idx)`` over ``resamples`` index rows drawn with
    replacement from range(n) (in chunks that keep Kendall's n x n sign matrices near 16 MB),
    NaNs dropped, and the number of resamples kept."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // (n * n))
    values = np.concatenate([stat(rng.integers(0, n, size=(min(chunk, resamples - lo), n)))
                             for lo in range(0, resamples, chunk)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, 0
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high), int(values.size)


def rank_correlation(x: Sequence[float], y: Sequence[float], method: str = "kendall", confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> RankCorrelation:
    """Kendall's tau-b or Spearman's rho over runs, scipy's p-value and a bootstrap interval."""
    xs, ys = _columns("rank_correlation", method, resamples, confidence, x, y)
    from scipy import stats

    fn = _STATISTICS[method]
    estimate = float(fn(xs, ys))
    p = math.nan  # a constant column has no correlation to test
    if math.isfinite(estimate):
        p = float((stats.kendalltau if method == "kendall" else stats.spearmanr)(xs, ys).pvalue)
    low, high, kept = _bootstrap(lambda idx: fn(xs[idx], ys[idx]), xs.size, resamples, seed, confidence)
    return RankCorrelation(method, int(xs.size), estimate, low, high, p, kept, confidence)


def correlation_difference(a: Sequence[float], b: Sequence[float], y: Sequence[float], method: str = "kendall",
                           confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> CorrelationDifference:
    """r(a, y) - r(b, y), its interval from resampling the (shared) runs once for both."""
    xa, xb, ys = _columns("correlation_difference", method, resamples, confidence, a, b, y)
    fn = _STATISTICS[method]
    estimate = float(fn(xa, ys) - fn(xb, ys))
    low, high, kept = _bootstrap(lambda idx: fn(xa[idx], ys[idx]) - fn(xb[idx], ys[idx]), ys.size, resamples, seed,
                                 confidence)
    return CorrelationDifference(method, int(ys.size), estimate, low, high, kept, confidence)
