"""Clipped statistics against a plain numpy implementation of afw's algorithm (spec section 2.6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.stats import clipped_stats, robust_std


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
