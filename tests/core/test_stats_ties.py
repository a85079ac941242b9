"""Clipped statistics on tied values and zero spread, after calibration-like scalings.

The reference is afw's clipping (``makeStatistics`` MEANCLIP) evaluated in exact rational arithmetic
(``tests/afw_clip_reference.py``), so that ties and values one ulp apart are decided exactly: a
float implementation of the reference would itself suffer from the rounding under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core.stats import _masked_quantiles, clipped_stats, masked_median, robust_std
from tests.afw_clip_reference import exact_afw_clip

SCALES = (1 / 1.1, 1.05, 0.95**2, 1e-3, 1e3)


def _check(got, want, dtype, *, exact_n=True):
    """``got`` (ClippedStats) against the exact reference, to the dtype's resolution."""
    mean, var, med, n = want
    eps = float(np.finfo(dtype).eps)
    scale = abs(mean)
    assert np.isfinite(float(got.mean)) and np.isfinite(float(got.variance))
    assert float(got.mean) == pytest.approx(mean, rel=4 * eps, abs=0)
    assert float(got.median) == pytest.approx(med, rel=2 * eps, abs=0)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    # values a few ulps from the centre may be kept (see clipped_stats Notes): variance within (ulps)^2
    assert abs(float(got.variance) - var) <= rtol * var + (4 * eps * scale) ** 2
    if exact_n:
        assert int(got.n_used) == n


# module level, so that each input shape compiles once for the whole file
_scaled_clip = jax.jit(lambda b, s: clipped_stats(b * s))
_product = jax.jit(lambda b, s: b * s)


def _scaled(base, scale, dtype):
    """``clipped_stats(base * scale)`` with the product computed inside the same jitted program,
    and the product as a separate program computes it (IEEE products are correctly rounded, so
    these are the numbers the statistics should describe)."""
    base = jnp.asarray(base, dtype)
    s = jnp.asarray(scale, dtype)
    return _scaled_clip(base, s), np.asarray(_product(base, s))


def _dominant(rng, shape, frac_tied=0.9):
    """100 on ``frac_tied`` of the pixels, other values (N(100, 10)) on the rest."""
    x = np.full(shape, 100.0)
    other = rng.random(shape) > frac_tied
    x[other] = rng.normal(100.0, 10.0, int(other.sum()))
    return x


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(64, 64), (37, 53)])
def test_constant_plane_after_scaling(scale, shape, float_dtype):
    """A constant plane scaled by a non-power-of-two: that value, zero variance, every pixel kept."""
    got, values = _scaled(np.full(shape, 100.0), scale, float_dtype)
    want = exact_afw_clip(values)
    assert want[1] == 0.0 and want[3] == values.size
    _check(got, want, float_dtype)
    assert float(got.mean) == float(values.flat[0])  # exact: the tied value itself
    assert float(got.variance) == 0.0


@pytest.mark.parametrize("scale", SCALES)
def test_dominant_value_with_others(scale, float_dtype):
    """90 % of the pixels share one value (zero IQR): afw keeps exactly the tied pixels."""
    rng = np.random.default_rng(5)
    got, values = _scaled(_dominant(rng, (64, 64)), scale, float_dtype)
    want = exact_afw_clip(values)
    assert want[1] == 0.0 and 0.85 * values.size < want[3] < values.size
    _check(got, want, float_dtype)
    # a few distinct others (not a tenth of the pixels)
    x = np.full((48, 48), 100.0)
    x.flat[[3, 70, 900, 1500]] = [40.0, 99.0, 101.5, 3e3]
    got, values = _scaled(x, scale, float_dtype)
    _check(got, exact_afw_clip(values), float_dtype)


@pytest.mark.parametrize("scale", SCALES)
def test_sky_plus_source_variance_plane(scale, float_dtype):
    """A variance plane of sky 100 plus source counts (mostly the sky value), scaled by c**2."""
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[:64, :64]
    var = np.full((64, 64), 100.0)
    for x0, y0, flux in zip(
        rng.uniform(5, 59, 12), rng.uniform(5, 59, 12), rng.uniform(1e2, 1e4, 12), strict=True
    ):
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        var += np.where(r2 < 16, flux / (2 * np.pi * 2.0**2) * np.exp(-r2 / 8.0), 0.0)
    got, values = _scaled(var, scale * scale, float_dtype)
    want = exact_afw_clip(values)
    assert want[1] == 0.0  # the sky value dominates: IQR 0
    _check(got, want, float_dtype)


@pytest.mark.parametrize("pattern", ["half", "rare", "three", "dominant"])
@pytest.mark.parametrize("scale", SCALES)
def test_values_one_ulp_apart(pattern, scale, float_dtype):
    """Values v - ulp, v, v + ulp in several proportions (v = 100 * scale in the test dtype)."""
    rng = np.random.default_rng(13)
    v = float_dtype(100.0 * scale)
    up, down = np.nextafter(v, float_dtype(np.inf)), np.nextafter(v, float_dtype(-np.inf))
    u = rng.random((64, 64))
    x = np.full(u.shape, v, float_dtype)
    if pattern == "half":  # IQR of one ulp: all kept, variance ~ ulp^2 / 4
        x[u < 0.5] = up
    elif pattern == "rare":  # 5 % one ulp above: IQR 0
        x[u < 0.05] = up
    elif pattern == "three":
        x[u < 0.3] = down
        x[u > 0.7] = up
    else:  # 90 % v, 5 % each side, and a far outlier
        x[u < 0.05] = down
        x[u > 0.95] = up
        x[0, 0] = 10 * v
    want = exact_afw_clip(x)
    got = jax.jit(clipped_stats)(jnp.asarray(x))
    _check(got, want, float_dtype, exact_n=pattern in ("half", "three"))
    if pattern == "half":
        assert float(got.variance) > 0  # one-ulp spread is resolved, not rounded away


def test_vmapped_cells_with_ties(float_dtype):
    """One clipped mean per cell (as cell_noise_variances does), constant and tied cells, scaled."""
    rng = np.random.default_rng(2)
    cells = np.stack(
        [
            np.full((32, 32), 100.0),
            _dominant(rng, (32, 32)),
            rng.normal(100, 10, (32, 32)),
            np.full((32, 32), 7.0),
        ]
    )
    ok = np.ones(cells.shape, bool)
    ok[3, :, :16] = False
    for scale in (1 / 1.1, 1e3):
        c = jnp.asarray(cells, float_dtype)
        got = jax.jit(jax.vmap(lambda v, g, s: clipped_stats(v * s, g), in_axes=(0, 0, None)))(
            c, jnp.asarray(ok), jnp.asarray(scale, float_dtype)
        )
        values = np.asarray(c * jnp.asarray(scale, float_dtype))
        for i in range(len(cells)):
            want = exact_afw_clip(np.where(ok[i], values[i], np.nan))
            _check(jax.tree.map(lambda a, i=i: a[i], got), want, float_dtype)


_QS = (0.1, 0.25, 0.5, 0.75, 0.9)
_tie_summaries = jax.jit(
    lambda b, s: (
        _masked_quantiles(b * s, jnp.ones(b.shape, bool), _QS)[0],
        robust_std(b * s),
        masked_median(b * s),
    )
)


@pytest.mark.parametrize("n", [7, 1000])  # fractional positions 0.6/0.5/0.4, 0.9/0.75/0.5/0.25/0.1
def test_quantiles_of_ties_are_the_tied_value(n, float_dtype):
    """Interpolating between two equal order statistics gives that value exactly (numpy's lerp)."""
    base = jnp.full((n,), 100.0, float_dtype)
    for scale in SCALES:
        s = jnp.asarray(scale, float_dtype)
        quantiles, std, med = _tie_summaries(base, s)
        v = float(np.asarray(_product(base, s))[0])
        assert [float(q) for q in quantiles] == [v] * len(_QS)
        assert float(std) == 0.0 and float(med) == v


def test_random_data_still_matches_exact_reference(float_dtype):
    """The reformulated sums agree with the exact reference on ordinary (untied) data too."""
    rng = np.random.default_rng(21)
    x = rng.normal(10.0, 2.0, (40, 50))
    x[rng.random(x.shape) < 0.05] += 50.0
    x = x.astype(float_dtype)
    _check(jax.jit(clipped_stats)(jnp.asarray(x)), exact_afw_clip(x), float_dtype)


def test_exact_reference_agrees_with_plain_numpy_on_untied_data():
    """The rational reference is afw's algorithm: on untied float64 data it equals a plain numpy port."""
    rng = np.random.default_rng(8)
    x = rng.normal(3.0, 1.5, 3000)
    x[:100] += rng.uniform(10, 100, 100)
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    center, half = q50, 3.0 * 0.741301109252802 * (q75 - q25)
    for _ in range(3):
        kept = x[np.abs(x - center) <= half]
        mean, var = kept.mean(), kept.var(ddof=1)
        center, half = mean, 3.0 * np.sqrt(var)
    got = exact_afw_clip(x)
    np.testing.assert_allclose(got[:3], [mean, var, q50], rtol=1e-12)
    assert got[3] == kept.size
