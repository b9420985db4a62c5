"""Confidence intervals and paired tests against scipy on known samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sharpscope import ConfigError
from sharpscope.stats import paired_difference, summarize, verdict


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
