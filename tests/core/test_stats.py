"""Clipped statistics against a plain numpy implementation of afw's algorithm (``makeStatistics`` MEANCLIP)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core.stats import clipped_stats, robust_std


def _numpy_clip(values, n_sigma=3.0, n_iter=3):
    x = values[np.isfinite(values)].astype(np.float64)
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    center, half = q50, n_sigma * 0.741301109252802 * (q75 - q25)
    for _ in range(n_iter):
        kept = x[np.abs(x - center) <= half]
        mean, var = kept.mean(), kept.var(ddof=1)
        center, half = mean, n_sigma * np.sqrt(var)
    return mean, var, q50


@pytest.fixture(scope="module")
def contaminated(float_dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(10.0, 2.0, size=(64, 80))
    outliers = rng.random(x.shape) < 0.05
    x[outliers] += rng.uniform(20, 200, size=int(outliers.sum()))
    x[5, 5] = np.nan
    x[6, 6] = np.inf
    return x.astype(float_dtype)


def test_clipped_stats_match_numpy(contaminated, x64):
    mean, var, med = _numpy_clip(contaminated)
    got = jax.jit(clipped_stats)(jnp.asarray(contaminated))
    tol = 1e-10 if x64 else 1e-5
    np.testing.assert_allclose(float(got.mean), mean, rtol=tol)
    np.testing.assert_allclose(float(got.variance), var, rtol=tol * 10)
    np.testing.assert_allclose(float(got.median), med, rtol=tol)


def test_clipped_stats_respects_valid_mask(contaminated):
    valid = np.zeros(contaminated.shape, bool)
    valid[:, :40] = True
    got = clipped_stats(jnp.asarray(contaminated), jnp.asarray(valid))
    mean, var, _ = _numpy_clip(np.where(valid, contaminated, np.nan))
    np.testing.assert_allclose(float(got.mean), mean, rtol=1e-5)
    np.testing.assert_allclose(float(got.variance), var, rtol=1e-4)


def test_clipped_stats_empty_is_nan():
    got = clipped_stats(jnp.ones((4, 4)), jnp.zeros((4, 4), bool))
    assert np.isnan(float(got.mean)) and int(got.n_used) == 0


def test_robust_std_gaussian():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3.0, 200_000)
    assert float(robust_std(jnp.asarray(x))) == pytest.approx(3.0, rel=0.01)


def test_masked_quantiles_are_exact_order_statistics(float_dtype):
    """The sort-free selection (integer keys, histogram + bisection) against numpy's quantiles."""
    from jaxdiff.core.stats import _masked_quantiles

    rng = np.random.default_rng(11)
    qs = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    quantiles = jax.jit(lambda x, ok: _masked_quantiles(x, ok, qs)[0])
    for trial in range(12):
        shape = [(1,), (2,), (3,), (97,), (33, 17), (40, 60)][trial % 6]
        x = rng.normal(size=shape) * 10.0 ** rng.integers(-3, 6)
        x[rng.random(shape) < 0.1] = 0.0
        x[rng.random(shape) < 0.05] = -0.0
        if trial % 3 == 0:
            x = np.round(x)  # many ties
        x[rng.random(shape) < 0.05] = np.inf
        ok = (rng.random(shape) < 0.8) & np.isfinite(x)
        ok.flat[0] = np.isfinite(x.flat[0])
        x = x.astype(float_dtype)
        if not ok.any():
            continue
        got = np.array(quantiles(jnp.asarray(x), jnp.asarray(ok)), np.float64)
        want = np.quantile(x[ok].astype(np.float64), qs)
        # order statistics are exact; only the interpolation rounds
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(float_dtype).eps * np.abs(x[ok]).max())
    # batched (one set of quantiles per cell) equals the loop
    x = rng.normal(size=(5, 64)).astype(float_dtype)
    ok = rng.random((5, 64)) < 0.6
    med = jax.vmap(lambda a, b: _masked_quantiles(a, b, (0.5,))[0][0])(jnp.asarray(x), jnp.asarray(ok))
    np.testing.assert_allclose(np.asarray(med, np.float64), [np.median(x[i][ok[i]].astype(np.float64)) for i in range(5)],
                               rtol=1e-6)
