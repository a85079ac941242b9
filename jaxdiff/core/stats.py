"""Robust statistics as afw computes them (``afw.math.makeStatistics``), jit-compatible.

afw's clipped statistics (``afw::math::makeStatistics``, MEANCLIP): start from ``center = median`` and
``halfwidth = n_sigma * 0.741301109252802 * IQR``; then ``n_iter`` times keep the values with
``|x - center| <= halfwidth``, compute their mean and unbiased variance, and set
``center = mean``, ``halfwidth = n_sigma * sqrt(variance)``.  MEANCLIP and VARIANCECLIP are the
mean and variance of the last iteration.  Non-finite values and pixels whose mask has any bit of
``and_mask`` set are excluded.

Everything here is a pure function of arrays with a fixed iteration count, so it can be jitted and
vmapped (one value per cell of a grid).  Quantiles use linear interpolation between order
statistics (numpy's default), as afw does.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ClippedStats", "clipped_stats", "masked_median", "robust_std"]

#: 1 / (2 * 0.6744897...) : converts an interquartile range into a Gaussian sigma.
IQR_TO_SIGMA = 0.741301109252802


class ClippedStats(NamedTuple):
    """Result of :func:`clipped_stats`."""

    mean: jax.Array
    variance: jax.Array
    median: jax.Array
    n_used: jax.Array


def _order_keys(x):
    """Unsigned integers with the order of the floats ``x`` (IEEE 754 sign-magnitude -> offset)."""
    uint, nbits = (jnp.uint32, 32) if x.dtype == jnp.float32 else (jnp.uint64, 64)
    bits = jax.lax.bitcast_convert_type(x, uint)
    negative = (bits >> (nbits - 1)) == 1
    return jnp.where(negative, ~bits, bits | (uint(1) << (nbits - 1))), uint, nbits


def _from_order_keys(keys, dtype):
    """Inverse of :func:`_order_keys`."""
    uint, nbits = (jnp.uint32, 32) if dtype == jnp.float32 else (jnp.uint64, 64)
    top = uint(1) << (nbits - 1)
    bits = jnp.where((keys & top) != 0, keys & ~top, ~keys)
    return jax.lax.bitcast_convert_type(bits, dtype)


def _order_statistics(flat, ok, ranks):
    """``sort(flat[ok])[ranks]`` without sorting (radix selection).

    The values become order-preserving unsigned integer keys; the wanted keys are then found
    16 bits at a time, most significant first.  Every element carries a *slot*: the histogram
    row of the first wanted rank whose key prefix it shares so far (a sink row when it shares
    none).  Per 16-bit level there is one scatter-add of the weights into the ``(slots, 65536)``
    histogram, a cumulative sum per rank that gives the rank's next digit, and one gather from a
    ``(slots, 65536)`` table that moves every element to its slot of the next level: no array of
    size (ranks x pixels) is formed.  Two levels in float32, four in float64.  Exact; about 40x
    faster than ``jnp.sort``, which XLA:CPU runs single-threaded (4.4 s for a 4096² image).
    Invalid entries never count; ranks must be below the number of valid values (larger ranks
    give the largest valid value).  Not differentiable (integer keys).
    """
    keys, uint, nbits = _order_keys(jax.lax.stop_gradient(flat))
    weight = ok.astype(jnp.int32)
    need = ranks.astype(jnp.int32) + 1  # 1-based rank still to find within the current prefix
    n_ranks = need.shape[0]
    digits = 1 << 16
    prefix = jnp.zeros(need.shape, uint)
    rank_slot = jnp.zeros(need.shape, jnp.int32)  # histogram row of each rank
    slot = None  # histogram row of each element (None: all in row 0)
    levels = nbits // 16
    for level in range(levels):
        shift = nbits - 16 * (level + 1)
        digit = ((keys >> shift) & uint(digits - 1)).astype(jnp.int32)
        if slot is None:
            hist = jnp.zeros((1, digits), jnp.int32).at[0, digit].add(weight)
        else:  # row n_ranks: elements whose prefix matches no rank's
            hist = jnp.zeros((n_ranks + 1) * digits, jnp.int32).at[slot * digits + digit].add(weight)
            hist = hist.reshape(n_ranks + 1, digits)
        cum = jnp.cumsum(hist[rank_slot], axis=1)  # (ranks, 65536)
        d = jax.vmap(lambda c, k: jnp.searchsorted(c, k, side="left"))(cum, need).astype(jnp.int32)
        d = jnp.minimum(d, digits - 1)
        before = jnp.where(d > 0, jnp.take_along_axis(cum, jnp.maximum(d - 1, 0)[:, None], axis=1)[:, 0], 0)
        need = jnp.maximum(need - before, 1)
        prefix = prefix | (d.astype(uint) << shift)
        if level + 1 < levels:
            # ranks that share the prefix so far share one row: the first of them
            cell = rank_slot * digits + d
            new_rank_slot = jnp.argmax(cell[:, None] == cell[None, :], axis=1).astype(jnp.int32)
            rows = 1 if slot is None else n_ranks + 1
            table = jnp.full(rows * digits, n_ranks, jnp.int32).at[cell].set(new_rank_slot)
            slot = table[digit] if slot is None else table[slot * digits + digit]
            rank_slot = new_rank_slot
    return _from_order_keys(prefix, flat.dtype)


def _masked_quantiles(values, valid, qs):
    """Quantiles ``qs`` of ``values[valid]`` with numpy's linear interpolation, static shapes."""
    flat = values.reshape(-1)
    ok = valid.reshape(-1)
    n = jnp.sum(ok)
    top = jnp.maximum(n, 1) - 1
    pos = [q * top for q in qs]
    lo = [jnp.floor(p).astype(jnp.int32) for p in pos]
    hi = [jnp.minimum(i + 1, top) for i in lo]
    if flat.dtype in (jnp.float32, jnp.float64):
        both = _order_statistics(flat, ok, jnp.stack(lo + hi))
        s_lo, s_hi = (jnp.where(n > 0, v, jnp.finfo(flat.dtype).max) for v in (both[: len(lo)], both[len(lo) :]))
    else:  # other dtypes: sort
        s = jnp.sort(jnp.where(ok, flat, jnp.finfo(flat.dtype).max))
        s_lo, s_hi = s[jnp.stack(lo)], s[jnp.stack(hi)]
    out = []
    for i, (p, low) in enumerate(zip(pos, lo, strict=True)):
        frac = (p - low).astype(flat.dtype)
        # numpy's lerp: exact at both ends and wherever s_lo == s_hi (ties give the tied value)
        step = s_hi[i] - s_lo[i]
        out.append(jnp.where(frac < 0.5, s_lo[i] + step * frac, s_hi[i] - step * (1 - frac)))
    return out, n


@functools.partial(jax.jit, static_argnames=("n_iter",))
def clipped_stats(values, valid=None, *, n_sigma=3.0, n_iter=3):
    """Compute the iteratively sigma-clipped mean and variance, afw's MEANCLIP / VARIANCECLIP.

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
    Ties and zero spread.  A sample whose values are all equal (a constant variance plane, or
    one scaled by a calibration factor) has that value as its mean and zero variance, and a
    dominant repeated value is kept by the clip, as afw does.  Two details make this hold in
    floating point, whatever XLA fuses around the call:

    * the clip half-width is never below ``2 eps |center|`` (2 to 4 ulps of the centre).  With
      a zero interquartile range or a zero variance the window would otherwise be empty unless
      ``|x - center|`` is exactly 0, and it need not be: when the values are computed in the
      same program (``variance * scale**2``), XLA:CPU may evaluate ``v * c - center`` as one
      fused multiply-add, without rounding the product, and it then differs from the median of
      the rounded values by the rounding error of the product (a fraction of an ulp).  Values
      within the floor are kept although afw, in exact arithmetic, would reject those a few
      ulps from the centre: the mean and variance differ from afw's by a few ulps at most;
    * sums are taken over deviations from the current centre,
      ``mean = center + sum(x - center) / n``, which is exact for values equal to the centre
      (``sum(x) / n`` of n equal values is not, for most n and values; in float32 the
      variance of a constant plane of 1e8 came out as 64).

    JAX: pure and jit/vmap compatible; ``n_iter`` is static.  Not meant to be differentiated
    (the clip masks are discrete).
    """
    values = jnp.asarray(values)
    if valid is None:
        valid = jnp.isfinite(values)
    valid = valid & jnp.isfinite(values)
    (q25, q50, q75), _ = _masked_quantiles(values, valid, (0.25, 0.5, 0.75))
    dtype = values.dtype
    eps2 = 2 * jnp.finfo(dtype).eps
    center = q50
    half = jnp.maximum(n_sigma * IQR_TO_SIGMA * (q75 - q25), eps2 * jnp.abs(center))
    mean = center
    var = jnp.asarray(jnp.nan, dtype)
    n = jnp.sum(valid)
    for _ in range(n_iter):
        dev = jnp.where(valid, values - center, 0)  # exact (Sterbenz) for values near the centre
        keep = valid & (jnp.abs(dev) <= half)
        n = jnp.sum(keep)
        nf = n.astype(dtype)
        shift = jnp.sum(jnp.where(keep, dev, 0)) / jnp.where(n > 0, nf, 1)
        resid = jnp.where(keep, dev - shift, 0)
        var = jnp.sum(resid * resid) / jnp.where(n > 1, nf - 1, 1)
        mean = jnp.where(n > 0, center + shift, jnp.nan)
        var = jnp.where(n > 1, var, jnp.nan)
        center = mean
        half = jnp.maximum(n_sigma * jnp.sqrt(var), eps2 * jnp.abs(center))
    return ClippedStats(mean, var, q50, n)


@jax.jit
def robust_std(values, valid=None):
    """Gaussian-equivalent standard deviation from the interquartile range (``0.7413 * IQR``)."""
    values = jnp.asarray(values)
    if valid is None:
        valid = jnp.isfinite(values)
    (q25, q75), n = _masked_quantiles(values, valid & jnp.isfinite(values), (0.25, 0.75))
    return jnp.where(n > 1, IQR_TO_SIGMA * (q75 - q25), jnp.nan)


@jax.jit
def masked_median(values, valid=None):
    """Median of the finite ``values`` where ``valid`` (numpy's ``median`` of ``values[valid]``).

    The same result as ``jnp.nanmedian(jnp.where(valid, values, nan))`` but without a sort
    (see :func:`_order_statistics`): over 10x faster on CPU for large images.  NaN when no
    value is usable.  Not differentiable.
    """
    values = jnp.asarray(values)
    ok = jnp.isfinite(values) if valid is None else valid & jnp.isfinite(values)
    (med,), n = _masked_quantiles(values, ok, (0.5,))
    return jnp.where(n > 0, med, jnp.nan)

