"""afw's clipped statistics in exact rational arithmetic: the reference for tied and one-ulp data.

A float implementation of the reference would itself suffer from the rounding under test (the
mean of n equal values computed as ``sum / n`` is not always that value); ``fractions.Fraction``
decides every tie exactly.  Used by ``test_stats_ties.py`` and ``test_zogy_task_calibration.py``.
"""

import math
from fractions import Fraction

import numpy as np

#: afw's IQR -> sigma factor (1 / (2 * 0.6744897...)), as a literal so the reference does not import jaxdiff.
IQR_TO_SIGMA = 0.741301109252802


def exact_afw_clip(values, n_sigma=3, n_iter=3):
    """afw's MEANCLIP / VARIANCECLIP of the finite ``values``, in exact arithmetic.

    numpy's linear-interpolation quartiles and median, ``center = median``, ``half = n_sigma *
    0.741301109252802 * IQR``, then ``n_iter`` times: keep ``|x - center| <= half``, mean and
    unbiased variance of those, ``center = mean``, ``half = n_sigma * sqrt(variance)``.  The
    comparison is done on squares (``(x - center)**2 <= half**2``), which needs no square root.
    Values are grouped with their counts (the samples here have few distinct values).
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    uniq, counts = np.unique(x, return_counts=True)
    vals = [Fraction(float(u)) for u in uniq]
    cnt = [int(c) for c in counts]
    n_all = sum(cnt)
    cum = np.cumsum(counts)

    def order_stat(k):
        return vals[int(np.searchsorted(cum, k, side="right"))]

    def quantile(q):
        pos = Fraction(q) * (n_all - 1)
        lo = math.floor(pos)
        a, b = order_stat(lo), order_stat(min(lo + 1, n_all - 1))
        return a + (b - a) * (pos - lo)

    q25, q50, q75 = quantile(0.25), quantile(0.5), quantile(0.75)
    center = q50
    half2 = (Fraction(n_sigma) * Fraction(IQR_TO_SIGMA) * (q75 - q25)) ** 2
    mean = var = None
    n = 0
    for _ in range(n_iter):
        kept = [(v, c) for v, c in zip(vals, cnt, strict=True) if (v - center) ** 2 <= half2]
        n = sum(c for _, c in kept)
        if n < 2:
            return math.nan, math.nan, float(q50), n
        mean = sum(v * c for v, c in kept) / n
        var = sum(c * (v - mean) ** 2 for v, c in kept) / (n - 1)
        center, half2 = mean, Fraction(n_sigma) ** 2 * var
    return float(mean), float(var), float(q50), n
