"""Robust statistics as afw computes them (``afw.math.makeStatistics``), jit-compatible.

afw's clipped statistics (spec section 2.6): start from ``center = median`` and
``halfwidth = n_sigma * 0.741301109252802 * IQR``; then ``n_iter`` times keep the values with
``|x - center| <= halfwidth``, compute their mean and unbiased variance, and set
``center = mean``, ``halfwidth = n_sigma * sqrt(variance)``.  MEANCLIP and VARIANCECLIP are the
mean and variance of the last iteration.  Non-finite values and pixels whose mask has any bit of
``and_mask`` set are excluded.

Everything here is a pure function of arrays with a fixed iteration count, so it can be jitted and
vmapped (one value per cell of a grid).  Quantiles use linear interpolation between order
statistics (numpy's default), as afw does.
"""

from typing import NamedTuple

import functools

import jax
import jax.numpy as jnp

__all__ = ["ClippedStats", "clipped_stats", "robust_std"]

#: 1 / (2 * 0.6744897...) : converts an interquartile range into a Gaussian sigma.
IQR_TO_SIGMA = 0.741301109252802


class ClippedStats(NamedTuple):
    """Result of :func:`clipped_stats`."""

    mean: jax.Array
    variance: jax.Array
    median: jax.Array
    n_used: jax.Array


def _masked_quantiles(values, valid, qs):
    """Quantiles ``qs`` of ``values[valid]`` with numpy's linear interpolation, static shapes."""
    flat = values.reshape(-1)
    ok = valid.reshape(-1)
    big = jnp.finfo(flat.dtype).max
    s = jnp.sort(jnp.where(ok, flat, big))
    n = jnp.sum(ok)
    out = []
    for q in qs:
        pos = q * (jnp.maximum(n, 1) - 1)
        lo = jnp.floor(pos).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, jnp.maximum(n, 1) - 1)
        frac = (pos - lo).astype(flat.dtype)
        out.append(s[lo] * (1 - frac) + s[hi] * frac)
    return out, n


@functools.partial(jax.jit, static_argnames=("n_iter",))
def clipped_stats(values, valid=None, *, n_sigma=3.0, n_iter=3):
    """Iteratively sigma-clipped mean and variance, afw's MEANCLIP / VARIANCECLIP.

    Parameters
    ----------
    values : array
        Pixel values (any shape).
    valid : bool array, optional
        Pixels to use; default: the finite ones.
    n_sigma : float, keyword-only
        Clipping threshold (afw ``numSigmaClip``, default 3).
    n_iter : int, keyword-only
        Clipping iterations (afw ``numIter``, default 3); static.

    Returns
    -------
    ClippedStats
        ``mean``, ``variance`` (unbiased, n-1), ``median`` of the valid values and ``n_used`` in
        the last iteration.  With fewer than two usable values the mean/variance are NaN: callers
        must check (the task shell turns this into a clear error).

    Notes
    -----
    JAX: pure and jit/vmap compatible; ``n_iter`` is static.  Not meant to be differentiated
    (the clip masks are discrete).
    """
    values = jnp.asarray(values)
    if valid is None:
        valid = jnp.isfinite(values)
    valid = valid & jnp.isfinite(values)
    x = jnp.where(valid, values, 0)
    (q25, q50, q75), _ = _masked_quantiles(values, valid, (0.25, 0.5, 0.75))
    center = q50
    half = n_sigma * IQR_TO_SIGMA * (q75 - q25)
    mean = center
    var = jnp.asarray(jnp.nan, values.dtype)
    n = jnp.sum(valid)
    for _ in range(n_iter):
        keep = valid & (jnp.abs(values - center) <= half)
        n = jnp.sum(keep)
        nf = n.astype(values.dtype)
        n_safe = jnp.where(n > 0, nf, 1)
        mean = jnp.sum(jnp.where(keep, x, 0)) / n_safe
        dev = jnp.where(keep, x - mean, 0)
        var = jnp.sum(dev * dev) / jnp.where(n > 1, nf - 1, 1)
        mean = jnp.where(n > 0, mean, jnp.nan)
        var = jnp.where(n > 1, var, jnp.nan)
        center = mean
        half = n_sigma * jnp.sqrt(var)
    return ClippedStats(mean, var, q50, n)


@jax.jit
def robust_std(values, valid=None):
    """Gaussian-equivalent standard deviation from the interquartile range (``0.7413 * IQR``)."""
    values = jnp.asarray(values)
    if valid is None:
        valid = jnp.isfinite(values)
    (q25, q75), n = _masked_quantiles(values, valid & jnp.isfinite(values), (0.25, 0.75))
    return jnp.where(n > 1, IQR_TO_SIGMA * (q75 - q25), jnp.nan)
