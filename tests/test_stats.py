"""Intervals and paired tests of bitsieve.stats, against hand-worked values and their defining properties."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from bitsieve import stats


def test_wilson_hand_worked():
    # 45 of 50 by the closed form: centre = (p + z^2/2n) / (1 + z^2/n),
    # half-width = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.96, 50, 0.9
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = stats.wilson(45, 50)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-15)
    assert (lo, hi) == pytest.approx((0.7864, 0.9565), abs=1e-4)  # the textbook figures for 45/50


def test_wilson_ends_and_errors():
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0
    assert 0 < stats.wilson(10, 10)[0] < 1 and 0 < stats.wilson(0, 10)[1] < 1  # never collapses to a point
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            stats.wilson(k, n)


@given(n=st.integers(1, 100_000), frac=st.floats(0, 1), z=st.floats(0.5, 4))
def test_wilson_contains_estimate(n, frac, z):
    k = round(frac * n)
    lo, hi = stats.wilson(k, n, z)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo2, hi2 = stats.wilson(k, n, z + 0.5)
    assert lo2 <= lo + 1e-12 and hi2 >= hi - 1e-12  # more confidence, a wider interval


@given(flags=st.lists(st.booleans(), min_size=1, max_size=300), seed=st.integers(0, 2**32 - 1))
def test_paired_bootstrap_of_identical_samples_is_zero(flags, seed):
    a = np.array(flags)
    assert stats.paired_bootstrap(a, a.copy(), "mean", n_boot=200, seed=seed) == (0.0, 0.0)
    pairs = np.column_stack([np.arange(len(a)), a]).astype(float)
    corr = lambda x: stats.pearson(x[:, 0], x[:, 1])  # noqa: E731
    lo, hi = stats.paired_bootstrap(pairs, pairs.copy(), corr, n_boot=50, seed=seed)
    assert (lo, hi) == (0.0, 0.0) or (math.isnan(lo) and math.isnan(hi))  # undefined when every resample is


def correlated(n=1000, flips=30, seed=5):
    """Correct flags of a base model (~80 %) and of a variant that differs from it on a few samples."""
    rng = np.random.default_rng(seed)
    base = rng.random(n) < 0.8
    var = base.copy()
    var[rng.choice(n, flips, replace=False)] ^= True
    return base, var


def test_paired_interval_is_narrower_than_unpaired():
    base, var = correlated()
    lo, hi = stats.paired_bootstrap(base, var, "mean", n_boot=2000, seed=1)
    rng = np.random.default_rng(2)  # unpaired: each model resampled on its own indices
    n = len(base)
    unpaired = var[rng.integers(0, n, (2000, n))].mean(1) - base[rng.integers(0, n, (2000, n))].mean(1)
    ulo, uhi = np.percentile(unpaired, [2.5, 97.5])
    assert lo <= var.mean() - base.mean() <= hi
    assert (hi - lo) < 0.5 * (uhi - ulo)


def test_seed_determinism_and_paths_agree():
    base, var = correlated()
    a = stats.paired_bootstrap(base, var, "mean", n_boot=500, seed=3)
    assert a == stats.paired_bootstrap(base, var, "mean", n_boot=500, seed=3)
    assert a != stats.paired_bootstrap(base, var, "mean", n_boot=500, seed=4)
    # the vectorised mean and a plain callable see the same resamples
    b = stats.paired_bootstrap(base, var, lambda x: x.mean(), n_boot=500, seed=3)
    assert b == pytest.approx(a, abs=1e-12)
    assert stats.bootstrap(var, "mean", n_boot=500, seed=3) == pytest.approx(
        stats.bootstrap(var, np.mean, n_boot=500, seed=3), abs=1e-12)


def test_bootstrap_contains_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    lo, hi = stats.bootstrap(np.column_stack([x, y]), lambda p: stats.pearson(p[:, 0], p[:, 1]), n_boot=500)
    assert lo < stats.pearson(x, y) < hi
    with pytest.raises(ValueError):
        stats.bootstrap([], "mean")
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 2], [1, 2, 3])


def test_mcnemar_hand_worked():
    assert stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(0, 5) == 2 / 32
    assert stats.mcnemar_p(9, 1) == 2 * 11 / 1024  # C(10,0) + C(10,1) = 11
    assert stats.mcnemar_p(7, 7) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_p(-1, 2)


@given(b=st.integers(0, 400), c=st.integers(0, 400))
def test_mcnemar_matches_scipy(b, c):
    sps = pytest.importorskip("scipy.stats")
    expected = 1.0 if b + c == 0 else sps.binomtest(min(b, c), b + c, 0.5).pvalue
    assert stats.mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar_p(b, c) == stats.mcnemar_p(c, b)


def test_agreement_and_pearson():
    assert stats.agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError):
        stats.agreement([1, 2], [1])
    assert math.isnan(stats.pearson([1, 1, 1], [1, 2, 3]))
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@given(x=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50).filter(lambda v: max(v) - min(v) > 1e-3))
def test_pearson_of_a_sample_with_itself_is_one(x):
    assert stats.pearson(x, list(x)) == 1.0
