"""Statistics sized to the sample: how sure an accuracy figure is, and whether two models really differ.

An accuracy on 200 faces or 1300 images is an estimate; these helpers say how wide it is. Comparisons between
a model and its pruned variant are *paired*: both ran on the same samples, so resampling the same sample
indices for both cancels the per-sample difficulty they share and gives a much tighter interval for the
change than two independent intervals would. Pure NumPy; proportions are fractions of 1 throughout (the
caller scales to percent).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

CHUNK_VALUES = 1 << 22  # bootstrap index matrices are drawn in chunks of about this many entries (32 MiB)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials, as fractions of 1 (multiply by 100 for percent).

    Unlike the normal approximation p +- z*sqrt(p(1-p)/n), it stays inside [0, 1] and does not collapse to a
    point at k = 0 or k = n, which is where a near-perfect model sits (z = 1.96: 95 %)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    zz = z * z
    den = 1.0 + zz / n
    centre = (p + zz / (2 * n)) / den
    half = z * math.sqrt(p * (1.0 - p) / n + zz / (4 * n * n)) / den
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends where the closed form rounds
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _index_chunks(n: int, n_boot: int, seed: int):
    """Bootstrap resamples as rows of sample indices [rows, n], drawn chunk by chunk to bound memory; the
    same seed gives the same rows whatever the caller does with them."""
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_VALUES // max(n, 1))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def _replicates(values: np.ndarray, stat: Callable | str, n_boot: int, seed: int) -> np.ndarray:
    """``stat`` of every bootstrap resample of ``values`` (samples along axis 0). ``"mean"`` is vectorised
    over a whole chunk of resamples; a callable is called once per resample."""
    if stat == "mean":
        return np.concatenate([values[idx].mean(axis=1) for idx in _index_chunks(len(values), n_boot, seed)])
    return np.array([stat(values[i]) for idx in _index_chunks(len(values), n_boot, seed) for i in idx],
                    dtype=np.float64)


def _percentile_interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; resamples whose statistic is undefined (NaN, e.g. a
    correlation of a constant resample) are left out."""
    reps = reps[~np.isnan(reps)]
    if not reps.size:
        return math.nan, math.nan
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(reps, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _samples(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 0 or len(a) == 0:
        raise ValueError(f"{name}: need a non-empty array of per-sample values")
    return a


def bootstrap(values, stat: Callable | str = "mean", n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over one sample, for statistics with no closed-form
    interval (a Spearman correlation). ``values``: per-sample values along axis 0 (e.g. [n, 2] pairs);
    ``stat``: a function of such an array, or ``"mean"``."""
    return _percentile_interval(_replicates(_samples(values, "bootstrap"), stat, n_boot, seed), level)


def paired_bootstrap(base, var, stat: Callable | str = "mean", n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval (95 % by default) of stat(var) - stat(base), resampling the SAME sample indices for
    both, so the interval reflects how the two differ on shared samples rather than how hard the samples are.

    ``base`` and ``var``: per-sample values of the two models on the same samples in the same order, samples
    along axis 0 (correct flags for an accuracy; [n, 2] (similarity, gold) pairs for a Spearman). ``stat``:
    a function of one such array, or ``"mean"`` (vectorised: the mean of the per-sample differences).
    Identical inputs give exactly (0, 0)."""
    base, var = _samples(base, "paired_bootstrap"), _samples(var, "paired_bootstrap")
    if base.shape != var.shape:
        raise ValueError(f"paired_bootstrap: samples differ in shape, {base.shape} vs {var.shape}")
    if stat == "mean":  # the mean is linear: resample the differences once
        reps = _replicates(var.astype(np.float64) - base.astype(np.float64), "mean", n_boot, seed)
    else:
        reps = _replicates(var, stat, n_boot, seed) - _replicates(base, stat, n_boot, seed)
    return _percentile_interval(reps, level)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: b and c are the discordant pairs (right only for one model, right only
    for the other). Under 'no difference' each discordant pair goes either way with probability 1/2, so
    p = 2 * P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1; 1.0 when there is no discordant pair."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_p needs counts >= 0, got {b}, {c}")
    n, k = b + c, min(b, c)
    term, tail = 1, 1  # exact integers: C(n, 0), and the running sum of C(n, i) for i <= k
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        tail += term
    return min(1.0, 2 * tail / 2 ** n)


def agreement(pred_a, pred_b) -> float:
    """Share of samples on which two models predict the same label (1.0: indistinguishable on this data)."""
    a, b = _samples(pred_a, "agreement"), _samples(pred_b, "agreement")
    if a.shape != b.shape:
        raise ValueError(f"agreement: predictions differ in shape, {a.shape} vs {b.shape}")
    return float(np.mean(a == b))


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either side is constant. Exactly 1.0 for a sample with itself."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den else math.nan
