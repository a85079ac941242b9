"""Detection of point-like sources for Alard-Lupton kernel candidates.

A compact stand-in for LSST's ``SourceDetectionTask`` + ``SingleFrameMeasurementTask`` on the
PSF-matching path (ip_diffim ``ImagePsfMatchTask.getSelectSources``).

Steps (as meas_algorithms ``SourceDetectionTask.detectFootprints`` with ``thresholdType="stdev"``,
then meas_base measurement): subtract a coarse background (median in
bins, bilinearly interpolated), smooth with a Gaussian of the PSF width (kernel width
``2 floor(int(7 sigma + 0.5) / 2) + 1``, as meas_algorithms), threshold at ``n_sigma`` times the
clipped standard deviation of the smoothed image (``thresholdType="stdev"``), keep local maxima,
and measure each peak: a sub-pixel centroid from a quadratic fit to the smoothed 3x3 neighbourhood
(the idea of ``SdssCentroid``), the PSF-weighted flux ``sum(g (I - bg)) / sum(g^2)`` for a unit-sum
Gaussian ``g`` (``PsfFlux`` for a Gaussian PSF), and its signal-to-noise ratio from the variance plane.

Everything is one jitted function with a fixed maximum number of sources (``max_sources``),
returning a validity mask, so repeated calls on equal shapes never recompile.  The host-side
drivers (banded detection of large images, catalogue tables) live one layer up, in
:mod:`jaxdiff.image.catalog`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .detection import Peaks as _Peaks
from .stats import clipped_stats, masked_median

__all__ = ["DetectedSources", "smoothing_kernel_width", "detect_sources"]


class DetectedSources(NamedTuple):
    """Fixed-size detection result (array indices, not PARENT positions); strongest first.

    Attributes
    ----------
    x, y : array, shape (N,)
        Sub-pixel centroids (column, row), floating point.
    peak_x, peak_y : array of int, shape (N,)
        Integer peak pixel.
    flux : array, shape (N,)
        PSF-weighted flux above the background.
    snr : array, shape (N,)
        Flux signal-to-noise ratio.
    peak : array, shape (N,)
        Smoothed peak value (``-inf`` for the unused entries).
    valid : array of bool, shape (N,)
        The real entries.
    threshold : array, shape ()
        The detection threshold applied to the smoothed image.
    background : array, shape ()
        Median background level.
    """

    x: jax.Array
    y: jax.Array
    peak_x: jax.Array
    peak_y: jax.Array
    flux: jax.Array
    snr: jax.Array
    peak: jax.Array
    valid: jax.Array
    threshold: jax.Array
    background: jax.Array


def smoothing_kernel_width(sigma: float) -> int:
    """Return meas_algorithms' smoothing kernel width for a Gaussian of ``sigma`` pixels (always odd).

    ``2 floor(int(7 sigma + 0.5) / 2) + 1``, as ``SourceDetectionTask.calculateKernelSize``.
    """
    return 2 * (int(sigma * 7.0 + 0.5) // 2) + 1


def _gaussian_1d(sigma, width, dtype):
    u = jnp.arange(width, dtype=dtype) - (width // 2)
    g = jnp.exp(-0.5 * (u / sigma) ** 2)
    return g / jnp.sum(g)


def _separable(image, g, axis_op="sum"):
    """Correlate (``"sum"``) or max-filter (``"max"``) along both axes with a 1-D window, 'same' size.

    Shifted-slice accumulation, chosen over a 2-D convolution or ``reduce_window`` for the small
    windows used here (cheaper on CPU).
    """
    w = g.shape[0]
    half = w // 2
    fill = 0 if axis_op == "sum" else -jnp.inf
    out = image
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = jnp.pad(out, pad, constant_values=fill)
        n = out.shape[axis]
        acc = None
        for i in range(w):
            sl = jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
            term = sl * g[i] if axis_op == "sum" else sl
            acc = term if acc is None else (acc + term if axis_op == "sum" else jnp.maximum(acc, term))
        out = acc
    return out


def _binned_background(image, valid, bin_size, stride=2):
    """Median per ``bin_size`` block (valid pixels, every ``stride``-th row and column), bilinearly resized."""
    h, w = shape = image.shape
    ny, nx = max(h // bin_size, 1), max(w // bin_size, 1)
    by, bx = h // ny, w // nx
    image = image[: ny * by, : nx * bx].reshape(ny, by, nx, bx)[:, ::stride, :, ::stride]
    valid = valid[: ny * by, : nx * bx].reshape(ny, by, nx, bx)[:, ::stride, :, ::stride]
    by, bx = image.shape[1], image.shape[3]
    crop = image.transpose(0, 2, 1, 3).reshape(ny, nx, by * bx)
    ok = valid.transpose(0, 2, 1, 3).reshape(ny, nx, by * bx)
    med = jnp.nanmedian(jnp.where(ok, crop, jnp.nan), axis=-1)
    glob = masked_median(crop, ok)
    glob = jnp.where(jnp.isfinite(glob), glob, 0)
    med = jnp.where(jnp.isfinite(med), med, glob)
    if ny == 1 and nx == 1:
        return jnp.broadcast_to(med[0, 0], shape), glob
    return jax.image.resize(med, shape, "linear"), glob


@functools.partial(jax.jit, static_argnames=("sigma", "max_sources", "bin_size", "footprint", "do_smooth"))
def detect_sources(image, variance, bad, *, sigma, n_sigma=10.0, max_sources=1000, bin_size=128, footprint=None,
                   do_smooth=True):
    """Detect point sources and measure centroid, PSF flux and S/N.

    Parameters
    ----------
    image, variance : array, shape (H, W)
    bad : bool array, shape (H, W)
        Pixels excluded from statistics and detection (e.g. BAD/SAT/EDGE/NO_DATA).
    sigma : float, keyword-only
        Gaussian PSF width in pixels (static).
    n_sigma : float, keyword-only
        Threshold in units of the clipped standard deviation of the smoothed image (LSST
        ``thresholdValue``, default 10).
    max_sources : int, keyword-only
        Output size (static); the strongest peaks are kept.
    bin_size : int, keyword-only
        Background bin size (static).
    footprint : int, optional, keyword-only
        Side of the local-maximum window; default ``2 int(2.4 sigma + 0.5) + 1`` (LSST's footprint
        growth ``nSigmaToGrow = 2.4``), so nearby peaks of one object merge.
    do_smooth : bool, keyword-only
        Smooth with the PSF before thresholding (LSST ``doSmooth``).

    Returns
    -------
    DetectedSources
        ``max_sources`` entries (array indices), strongest smoothed peak first; ``valid`` marks
        the detections.

    Notes
    -----
    The flux is ``sum(g (I - bg)) / sum(g^2)`` for the unit-sum Gaussian ``g`` of width ``sigma``
    (meas_base ``PsfFlux`` for a Gaussian PSF), its variance ``sum(g^2 var) / sum(g^2)^2``.  The
    centroid is the vertex of a parabola through the smoothed 3x3 neighbourhood of the peak,
    per axis, clipped to half a pixel (the idea of ``SdssCentroid``).  Peaks within the smoothing
    half-width (plus one pixel) of the border or of a bad pixel are not reported.

    JAX: ``sigma``, ``max_sources``, ``bin_size``, ``footprint`` and ``do_smooth`` are static; one
    compilation per image shape, dtype and static set.  Not meant for differentiation (arg-max).
    """
    image = jnp.asarray(image)
    dtype = image.dtype
    finite = jnp.isfinite(image) & jnp.isfinite(variance)
    valid = finite & ~bad
    bkg, _ = _binned_background(image, valid, bin_size)
    sub = jnp.where(valid, image - bkg, 0)
    width = smoothing_kernel_width(sigma)
    g = _gaussian_1d(sigma, width, dtype)
    half = width // 2
    h, w = image.shape
    if do_smooth:
        smooth = _separable(sub, g)
        rows = jnp.arange(h)[:, None]
        cols = jnp.arange(w)[None, :]
        # one pixel of margin: a star centred just outside must not peak on the border
        interior = (rows > half) & (rows < h - half - 1) & (cols > half) & (cols < w - half - 1)
    else:
        smooth = sub
        interior = jnp.ones((h, w), bool)
    # bad pixels spread over the smoothing window
    bad_f = (~valid).astype(dtype)
    spread = _separable(bad_f, jnp.ones((width + 2,), dtype), "max") > 0
    usable = interior & ~spread
    stats = clipped_stats(smooth[::2, ::2], usable[::2, ::2])  # a subsample is plenty for the noise level
    threshold = n_sigma * jnp.sqrt(stats.variance)
    if footprint is None:
        footprint = 2 * int(2.4 * sigma + 0.5) + 1
    # local maxima: separable max filter (faster than reduce_window on CPU), then the strongest
    # (the maximum is taken over all pixels, so a slope rising towards a star just outside the
    # usable region has no local maximum on its border)
    local_max = _separable(smooth, jnp.ones((footprint,), dtype), "max")
    img = jnp.where(usable, smooth, -jnp.inf)
    is_peak = (smooth == local_max) & (smooth > threshold) & usable
    score = jnp.where(is_peak, img, -jnp.inf).ravel()
    k = min(max_sources, score.size)
    values, idx = jax.lax.top_k(score, k)
    pyy, pxx = jnp.divmod(idx, w)
    peaks = _Peaks(pxx, pyy, values, jnp.isfinite(values))
    py = jnp.clip(peaks.y, 1, h - 2)
    px = jnp.clip(peaks.x, 1, w - 2)

    def at(dy, dx):
        return smooth[py + dy, px + dx]

    c0 = at(0, 0)
    denx = at(0, -1) - 2 * c0 + at(0, 1)
    deny = at(-1, 0) - 2 * c0 + at(1, 0)
    dx = jnp.where(denx < 0, 0.5 * (at(0, -1) - at(0, 1)) / jnp.where(denx < 0, denx, -1), 0)
    dy = jnp.where(deny < 0, 0.5 * (at(-1, 0) - at(1, 0)) / jnp.where(deny < 0, deny, -1), 0)
    dx = jnp.clip(dx, -0.5, 0.5)
    dy = jnp.clip(dy, -0.5, 0.5)
    g2 = jnp.sum(g * g) ** 2  # sum of the squared 2-D kernel
    if do_smooth:
        var_s = _separable(jnp.where(valid, variance, 0), g * g)
        flux = c0 / g2
        snr = c0 / jnp.sqrt(jnp.maximum(var_s[py, px], jnp.finfo(dtype).tiny))
    else:
        flux = c0
        snr = c0 / jnp.sqrt(jnp.maximum(variance[py, px], jnp.finfo(dtype).tiny))
    return DetectedSources(
        x=px.astype(dtype) + dx, y=py.astype(dtype) + dy, peak_x=px, peak_y=py, flux=flux, snr=snr,
        peak=peaks.value, valid=peaks.valid, threshold=threshold, background=masked_median(bkg),
    )
