"""Confidence intervals and paired tests against scipy on known samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sharpscope import ConfigError, stats
from sharpscope.stats import (
    correlation_difference, kendall_tau_b, paired_difference, rank_correlation, spearman_rho, summarize, verdict,
)


def test_summary_matches_scipy_t_interval():
    x = [0.91, 0.95, 0.93, 0.97, 0.90]
    s = summarize(x)
    low, high = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(0.932), pytest.approx(np.std(x, ddof=1)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    # hand check: t_{4, 0.975} = 2.776445, s = 0.028636 -> half width 0.035556
    assert s.ci_high - s.mean == pytest.approx(2.7764451 * 0.0286356 / math.sqrt(5), rel=1e-5)
    s90 = summarize(x, confidence=0.9)
    assert s90.ci_high - s90.ci_low < s.ci_high - s.ci_low


def test_paired_difference_matches_ttest_rel():
    a = [0.72, 0.73, 0.70, 0.74, 0.71]
    b = [0.75, 0.74, 0.74, 0.78, 0.72]
    d = paired_difference(a, b)
    diffs = np.subtract(b, a)
    low, high = sps.t.interval(0.95, 4, loc=diffs.mean(), scale=sps.sem(diffs))
    assert d.mean == pytest.approx(0.026) and d.p_value == pytest.approx(sps.ttest_rel(b, a).pvalue, rel=1e-12)
    assert (d.ci_low, d.ci_high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert d.ci_low > 0 and verdict(d) == "higher" and d.to_dict()["verdict"] == "higher"
    assert verdict(paired_difference(b, a)) == "lower"


def test_pairing_is_what_makes_a_shared_seed_effect_visible():
    # seeds move both settings together; b is always 0.01 above a
    a = [0.60, 0.80, 0.70, 0.90, 0.65]
    b = [v + 0.01 + e for v, e in zip(a, [0.001, -0.001, 0.0005, 0.0, -0.0005])]
    sa, sb = summarize(a), summarize(b)
    assert sa.ci_high > sb.ci_low  # unpaired intervals overlap ...
    d = paired_difference(a, b)
    assert verdict(d) == "higher" and d.p_value < 1e-4  # ... the paired difference does not


def test_no_difference_and_degenerate_cases():
    d = paired_difference([0.5, 0.6, 0.7], [0.52, 0.57, 0.71])
    assert d.ci_low < 0 < d.ci_high and verdict(d) == "no difference at this scale"
    one = summarize([0.3])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert verdict(paired_difference([0.3], [0.4])) == "no difference at this scale"
    same = paired_difference([1.0, 2.0], [1.5, 2.5])  # identical differences: no spread
    assert same.std == 0 and same.p_value == 0.0 and same.ci_low == same.ci_high == 0.5
    with pytest.raises(ConfigError, match="same number"):
        paired_difference([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="non-finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ConfigError, match="no values"):
        summarize([])
    with pytest.raises(ConfigError, match="confidence"):
        summarize([1.0, 2.0], confidence=1.5)


# ----------------------------------------------------------------------------------------
# Rank correlations
# ----------------------------------------------------------------------------------------
def _tied_pairs(rng, rows, n):
    """Rows of (x, y) with ties (values rounded to a coarse grid), as sharpness columns have."""
    x = np.round(rng.normal(size=(rows, n)), 1)
    return x, np.round(x + rng.normal(size=(rows, n)), 1)


def test_kendall_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = _tied_pairs(rng, 50, 17)
    x[3] = 1.0  # a constant row: undefined, NaN as scipy says
    taus, rhos = kendall_tau_b(x, y), spearman_rho(x, y)
    for i in range(50):
        if i == 3:
            assert math.isnan(taus[i]) and math.isnan(rhos[i])
            continue
        want_tau = sps.kendalltau(x[i], y[i]).statistic
        want_rho = sps.spearmanr(x[i], y[i]).statistic
        assert taus[i] == pytest.approx(want_tau, abs=1e-12)
        assert rhos[i] == pytest.approx(want_rho, abs=1e-12)


def test_rank_correlation_estimate_and_p_value_are_scipys():
    rng = np.random.default_rng(1)
    x, y = _tied_pairs(rng, 1, 30)
    for method, ref in (("kendall", sps.kendalltau), ("spearman", sps.spearmanr)):
        r = rank_correlation(x[0], y[0], method=method, resamples=200)
        want = ref(x[0], y[0])
        assert r.estimate == pytest.approx(want.statistic, abs=1e-12) and r.p_value == pytest.approx(want.pvalue)
        assert r.n == 30 and r.ci_low < r.estimate < r.ci_high and r.to_dict()["verdict"] == "higher"


def test_bootstrap_interval_agrees_with_scipy_bootstrap():
    """Both are percentile intervals from 4,000 resamples of the same runs (scipy's loop is
    slow); they differ only by Monte-Carlo error. At n = 30 the bootstrap sd of tau is ~0.12
    and the density at the 2.5 % quantile ~0.058 / 0.12, so each endpoint's standard error is
    sqrt(0.025 * 0.975 / 4000) / (0.058 / 0.12) ~ 0.005: 0.025 is 3.5 sd of the difference
    of two such endpoints."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=30)
    y = x + 1.5 * rng.normal(size=30)
    mine = rank_correlation(x, y, resamples=4000, seed=3)
    ref = sps.bootstrap((x, y), lambda a, b: sps.kendalltau(a, b).statistic, paired=True, vectorized=False,
                        n_resamples=4000, method="percentile", random_state=4).confidence_interval
    assert mine.ci_low == pytest.approx(ref.low, abs=0.025) and mine.ci_high == pytest.approx(ref.high, abs=0.025)


def test_correlation_difference_pairs_the_resamples():
    rng = np.random.default_rng(6)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    z = x + 3 * rng.normal(size=25)
    same = correlation_difference(x, x, y, resamples=500)
    assert same.estimate == 0 and same.ci_low == 0 and same.ci_high == 0  # identical columns: no spread at all
    d = correlation_difference(x, z, y, resamples=4000, seed=7)
    assert d.estimate == pytest.approx(sps.kendalltau(x, y).statistic - sps.kendalltau(z, y).statistic, abs=1e-12)
    ref = sps.bootstrap((x, z, y), lambda a, b, c: sps.kendalltau(a, c).statistic - sps.kendalltau(b, c).statistic,
                        paired=True, vectorized=False, n_resamples=4000, method="percentile",
                        random_state=8).confidence_interval
    # the difference's bootstrap sd is ~0.13: the same 0.025 margin as above (~3.5 sd)
    assert d.ci_low == pytest.approx(ref.low, abs=0.025) and d.ci_high == pytest.approx(ref.high, abs=0.025)
    # Unpaired intervals of the two taus overlap here although the paired one excludes 0
    a, b = rank_correlation(x, y, resamples=2000), rank_correlation(z, y, resamples=2000)
    assert d.ci_low > 0 and a.ci_low < b.ci_high


def test_bootstrap_interval_covers_the_population_tau():
    """Bivariate normal with correlation r has population tau = (2 / pi) arcsin(r). Over 120
    data sets of 40 runs a 95 % interval should cover it about 114 times; fewer than 105
    (binomial probability < 0.2 % if the coverage were 0.95) means the interval is too narrow."""
    rng = np.random.default_rng(9)
    r = 0.6
    tau = 2 / math.pi * math.asin(r)
    cov = [[1, r], [r, 1]]
    hits = 0
    for i in range(120):
        xy = rng.multivariate_normal([0, 0], cov, size=40)
        c = rank_correlation(xy[:, 0], xy[:, 1], resamples=400, seed=i)
        hits += c.ci_low <= tau <= c.ci_high
    assert hits >= 105


def test_rank_correlation_refusals_and_degenerate_input():
    perfect = rank_correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], resamples=200)
    assert perfect.estimate == 1 and perfect.ci_low == 1 and perfect.ci_high == 1
    flat = rank_correlation([1, 1, 1, 1], [1, 2, 3, 4], resamples=200)
    assert math.isnan(flat.estimate) and flat.resamples == 0 and flat.to_dict()["verdict"] == "no difference at this scale"
    for bad in (dict(x=[1, 2], y=[1, 2]), dict(x=[1, 2, 3], y=[1, 2]), dict(x=[1, 2, math.nan], y=[1, 2, 3]),
                dict(x=[1, 2, 3], y=[1, 2, 3], method="pearson"), dict(x=[1, 2, 3], y=[1, 2, 3], resamples=10),
                dict(x=[1, 2, 3], y=[1, 2, 3], confidence=1.0)):
        with pytest.raises(ConfigError):
            rank_correlation(**bad)


def test_bounded_interval_is_clipped_to_the_range_against_a_hand_computed_answer():
    """Accuracies 0.5, 1, 1: mean 5/6, s = sqrt(1/12) = 0.288675, t_{2, 0.975} = 4.302653,
    half-width 4.302653 * 0.288675 / sqrt(3) = 0.717109: the t interval [0.116224, 1.550442]
    leaves [0, 1]; clipped it is [0.116224, 1]. (Issue 23: accuracy [0.57, 1.02].)"""
    s = stats.summarize([0.5, 1.0, 1.0], bounds=(0.0, 1.0))
    assert s.mean == pytest.approx(5 / 6, abs=1e-12)
    assert s.ci_low == pytest.approx(0.116224, abs=1e-6)
    assert s.ci_high == 1.0
    assert s.method == "Student t, clipped to [0, 1]"
    free = stats.summarize([0.5, 1.0, 1.0])
    assert free.ci_high == pytest.approx(1.550442, abs=1e-6) and free.method == "Student t"
    # a cosine in [-1, 1]: 0.99, 1, 1 -> t interval [0.98, 1.01] before clipping
    c = stats.summarize([0.99, 1.0, 1.0], bounds=(-1.0, 1.0))
    half = 4.302653 * (0.01 * math.sqrt(1 / 3)) / math.sqrt(3)  # s = 0.01 sqrt(1/3)
    assert c.ci_high == 1.0 and c.ci_low == pytest.approx(1 - 0.01 / 3 - half, abs=1e-6)
    # rounding above the bound (a float32 cosine of 1 + 1e-7) is kept in range, not refused
    r = stats.summarize([1 + 1e-7] * 3, bounds=(-1.0, 1.0))
    assert r.ci_low == r.ci_high == 1.0
    # a float32 cosine of a GPT's gradients tracked before the clip: 1 + 8e-6 (compare on text)
    r = stats.summarize([0.992032527923584, 0.9871338605880737, 1.0000079870224], bounds=(-1.0, 1.0))
    assert r.ci_high == 1.0 and r.mean < 1
    with pytest.raises(ConfigError, match="outside their range"):
        stats.summarize([57.0, 60.0], bounds=(0.0, 1.0))  # percent, not a fraction
    with pytest.raises(ConfigError, match="bounds"):
        stats.summarize([0.5, 0.6], bounds=(1.0, 0.0))


def test_paired_difference_of_bounded_values_is_clipped_to_twice_the_range():
    """b - a for accuracies lies in [-1, 1]: differences 1, 1, 0 (a = 0, 0, 0.5; b = 1, 1, 0.5)
    have mean 2/3, s = sqrt(1/3) = 0.577350, half-width 4.302653 * 0.577350 / sqrt(3) = 1.434218:
    t interval [-0.767551, 2.100885], clipped [-0.767551, 1]; the verdict is unchanged."""
    d = stats.paired_difference([0.0, 0.0, 0.5], [1.0, 1.0, 0.5], bounds=(0.0, 1.0))
    assert d.ci_low == pytest.approx(-0.767551, abs=1e-6)
    assert d.ci_high == 1.0
    assert d.method == "paired Student t, clipped to [-1, 1]"
    assert d.to_dict()["verdict"] == stats.verdict(stats.paired_difference([0.0, 0.0, 0.5], [1.0, 1.0, 0.5]))
    assert d.p_value == stats.paired_difference([0.0, 0.0, 0.5], [1.0, 1.0, 0.5]).p_value
