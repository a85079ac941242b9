"""Array preparation before ZOGY and the output planes after it (the numerics of ``ZogyTask``).

Before the transform (:func:`prepare_zogy_input`, one input image): photometric calibration,
bad pixels filled with the clipped means of the good ones, optional background subtraction and
optional rescaling of the variance plane to the measured pixel noise (the pixel-based estimate of
ip_diffim's ``ScaleVarianceTask``).  After it (:func:`finish_difference_planes`,
:func:`finish_score_planes`): the OR-ed output mask with ``NO_DATA`` and ``EDGE`` bits, the
optional rescaling of the difference variance, S and S_corr zeroed (variance 1) at flagged pixels
and the optional robust normalisation of S_corr.

Statistics are afw's clipped ones (``afw.math.makeStatistics`` MEANCLIP/VARIANCECLIP, see
:mod:`jaxdiff.core.stats`).  A statistic that cannot be computed is NaN here; the counts of usable
pixels behind every statistic are returned as well, so that the task shell can raise a named error
after the computation.  Mask arguments are integer bit planes; the bit values (``and_mask``,
``fill_bits``, ``no_data``, ``edge_bits``) are static Python ints.

This module imports nothing outside :mod:`jaxdiff.core`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._numerics import tiny
from .stats import ClippedStats, clipped_stats, robust_std

__all__ = [
    "DifferencePlanes",
    "InputStatistics",
    "PreparedInput",
    "ScorePlanes",
    "finish_difference_planes",
    "finish_score_planes",
    "prepare_zogy_input",
    "variance_rescale_factor",
]


class InputStatistics(NamedTuple):
    """Statistics of one prepared input and the pixel counts behind them (0-d arrays).

    Attributes
    ----------
    n_good
        Pixels that are finite in image and variance and outside ``fill_bits | and_mask``.
    n_unmasked
        Pixels outside ``fill_bits | and_mask``.
    n_finite_image
        Unmasked pixels with a finite (calibrated) image value.
    n_usable_variance
        Unmasked pixels with a finite, positive variance.
    n_positive
        Good pixels with a positive variance (those of the variance statistics).
    background, background_used
        Clipped mean subtracted as the background and its pixel count (0 and 0 when
        ``correct_background`` is off).
    image_mean, image_used
        Clipped mean of the (background-subtracted) image over the good pixels: the fill value
        of bad pixels.
    variance_mean, variance_used
        Clipped mean of the variance over the good pixels with positive variance, before the
        rescaling.
    variance_scale_used
        Sky pixels behind the variance rescaling factor (0 when ``scale_variance`` is off).
    """

    n_good: Int[Array, ""]
    n_unmasked: Int[Array, ""]
    n_finite_image: Int[Array, ""]
    n_usable_variance: Int[Array, ""]
    n_positive: Int[Array, ""]
    background: Float[Array, ""]
    background_used: Int[Array, ""]
    image_mean: Float[Array, ""]
    image_used: Int[Array, ""]
    variance_mean: Float[Array, ""]
    variance_used: Int[Array, ""]
    variance_scale_used: Int[Array, ""]


class PreparedInput(NamedTuple):
    """One input of ZOGY after :func:`prepare_zogy_input`.

    Attributes
    ----------
    image, variance
        Calibrated planes, bad pixels filled with the clipped means, background subtracted and
        variance rescaled where requested.
    mask
        The input mask (unchanged).
    bad
        Pixels that were filled: non-finite in image or variance, or with a bit of ``fill_bits``.
    good
        Pixels that are neither bad nor in ``and_mask``: those of every statistic.
    nonfinite
        Pixels non-finite in image or variance (the ``NO_DATA`` pixels of the output).
    variance_scale
        Factor the variance was multiplied by (1 when ``scale_variance`` is off).
    noise_variance
        Clipped mean of the final variance over the good pixels with positive variance (the
        single-cell noise level of :func:`jaxdiff.core.zogy_grid.cell_noise_variances`; clipping
        commutes with the scaling).
    stats
        The :class:`InputStatistics` behind these values.
    """

    image: Float[Array, "H W"]
    variance: Float[Array, "H W"]
    mask: Int[Array, "H W"]
    bad: Bool[Array, "H W"]
    good: Bool[Array, "H W"]
    nonfinite: Bool[Array, "H W"]
    variance_scale: Float[Array, ""]
    noise_variance: Float[Array, ""]
    stats: InputStatistics


class DifferencePlanes(NamedTuple):
    """Output planes of the difference image (:func:`finish_difference_planes`).

    Attributes
    ----------
    difference, difference_variance
        D and its variance (rescaled where requested), in the output dtype.
    mask
        Input masks OR-ed, ``no_data`` where an input was non-finite, ``edge_bits`` in the edge band.
    variance_scale, variance_scale_used
        Factor the difference variance was multiplied by and its sky-pixel count (1 and 0 when
        ``scale_variance`` is off).
    """

    difference: Float[Array, "H W"]
    difference_variance: Float[Array, "H W"]
    mask: Int[Array, "H W"]
    variance_scale: Float[Array, ""]
    variance_scale_used: Int[Array, ""]


class ScorePlanes(NamedTuple):
    """Output planes of the score (:func:`finish_score_planes`).

    Attributes
    ----------
    score, score_variance, score_corr
        S, var S and S_corr, in the output dtype; 0, 1 and 0 at flagged pixels.
    norm, norm_used
        Robust standard deviation S_corr was divided by and its pixel count (1 and 0 when
        ``normalize`` is off).
    """

    score: Float[Array, "H W"]
    score_variance: Float[Array, "H W"]
    score_corr: Float[Array, "H W"]
    norm: Float[Array, ""]
    norm_used: Int[Array, ""]


def variance_rescale_factor(
    image: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"],
    usable: Bool[ArrayLike, "H W"],
    var_stats: ClippedStats,
) -> tuple[Float[Array, ""], Int[Array, ""]]:
    """Return the factor that makes ``variance`` describe the pixel noise of ``image``, and its count.

    The squared robust (IQR) standard deviation of ``image / sqrt(variance)`` over sky pixels:
    usable pixels whose variance is not raised by source photon noise (at most the clipped mean
    ``var_stats`` plus 3 sigma); the IQR ignores what remains of the sources.  This is the
    pixel-based estimate of ip_diffim's ``ScaleVarianceTask`` (a 3-sigma clipped variance would be
    2.7 % low for Gaussian noise: the clip truncates the tails).

    Parameters
    ----------
    image
        Background-free image.
    variance
        Its variance plane.
    usable
        Pixels that may enter.
    var_stats
        Clipped statistics of ``variance`` over ``usable`` (:func:`jaxdiff.core.stats.clipped_stats`).

    Returns
    -------
    tuple
        The factor (NaN without sky pixels) and the number of sky pixels with a finite ratio.
    """
    image, variance, usable = jnp.asarray(image), jnp.asarray(variance), jnp.asarray(usable)
    sky = usable & (variance <= var_stats.mean * (1 + 1e-6) + 3 * jnp.sqrt(var_stats.variance))
    ratio = image / jnp.sqrt(jnp.where(usable, variance, 1.0))
    std = robust_std(ratio, sky)
    return std * std, jnp.sum(sky & jnp.isfinite(ratio))


@functools.partial(jax.jit, static_argnames=("and_mask", "fill_bits", "correct_background", "scale_variance"))
def prepare_zogy_input(
    image: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"],
    mask: Int[ArrayLike, "H W"],
    scale: Float[ArrayLike, ""],
    *,
    and_mask: int,
    fill_bits: int,
    correct_background: bool,
    scale_variance: bool,
) -> PreparedInput:
    """Prepare one input image of ZOGY: calibrate, fill bad pixels, subtract background, rescale variance.

    Parameters
    ----------
    image, variance
        Pixel and variance planes.
    mask
        Integer mask plane.
    scale
        Photometric calibration factor (ip_diffim ``ZogyTask``: the PhotoCalib mean with
        ``scaleByCalibration``, else 1): the image is multiplied by it, the variance by its square.
    and_mask : int, keyword-only
        Bits of pixels excluded from the statistics (``ignoreMaskPlanes``).
    fill_bits : int, keyword-only
        Bits of pixels filled with the clipped means (their values must not spread in the FFT).
    correct_background : bool, keyword-only
        Subtract the clipped mean of the good pixels (``correctBackground``).
    scale_variance : bool, keyword-only
        Multiply the variance by :func:`variance_rescale_factor` (``doScaleVariance``), measured on
        the image minus its clipped median.

    Returns
    -------
    PreparedInput
        The planes, the pixel classes and the statistics with their counts; a statistic without
        usable pixels is NaN.
    """
    image = jnp.asarray(image) * scale
    variance = jnp.asarray(variance) * (scale * scale)
    mask = jnp.asarray(mask)
    nonfinite = ~(jnp.isfinite(image) & jnp.isfinite(variance))
    bad = nonfinite | ((mask & fill_bits) != 0)
    good = ~bad & ((mask & and_mask) == 0)
    unmasked = (mask & (fill_bits | and_mask)) == 0
    n_finite_image = jnp.sum(unmasked & jnp.isfinite(image))
    n_usable_variance = jnp.sum(unmasked & jnp.isfinite(variance) & (variance > 0))
    zero_count = jnp.zeros((), jnp.sum(good).dtype)
    background, background_used = jnp.zeros((), image.dtype), zero_count
    if correct_background:
        bg = clipped_stats(image, good)
        image = image - bg.mean
        background, background_used = bg.mean, bg.n_used
    im_stats = clipped_stats(image, good)
    positive = good & (variance > 0)
    var_stats = clipped_stats(variance, positive)
    # fill bad pixels with the clipped mean of the good ones (ip_diffim: the NaN-mean of the plane)
    image = jnp.where(bad, im_stats.mean, image)
    variance = jnp.where(bad, var_stats.mean, variance)
    factor, n_sky = jnp.asarray(1.0, image.dtype), zero_count
    if scale_variance:
        factor, n_sky = variance_rescale_factor(image - im_stats.median, variance, positive, var_stats)
        variance = variance * factor
    stats = InputStatistics(
        n_good=jnp.sum(good),
        n_unmasked=jnp.sum(unmasked),
        n_finite_image=n_finite_image,
        n_usable_variance=n_usable_variance,
        n_positive=jnp.sum(positive),
        background=background,
        background_used=background_used,
        image_mean=im_stats.mean,
        image_used=im_stats.n_used,
        variance_mean=var_stats.mean,
        variance_used=var_stats.n_used,
        variance_scale_used=n_sky,
    )
    return PreparedInput(image, variance, mask, bad, good, nonfinite, factor, var_stats.mean * factor, stats)


@functools.partial(jax.jit, static_argnames=("no_data", "edge_bits", "edge", "and_mask", "scale_variance",
                                             "out_dtype"))  # fmt: skip
def finish_difference_planes(
    difference: Float[ArrayLike, "H W"],
    difference_variance: Float[ArrayLike, "H W"],
    bad1: Bool[ArrayLike, "H W"],
    bad2: Bool[ArrayLike, "H W"],
    mask1: Int[ArrayLike, "H W"],
    mask2: Int[ArrayLike, "H W"],
    nonfinite1: Bool[ArrayLike, "H W"],
    nonfinite2: Bool[ArrayLike, "H W"],
    *,
    no_data: int,
    edge_bits: int,
    edge: tuple[int, int],
    and_mask: int,
    scale_variance: bool,
    out_dtype: str,
) -> DifferencePlanes:
    """Return the output mask and the difference planes of ZOGY.

    The masks are OR-ed, ``no_data`` is set where an input was non-finite and ``edge_bits`` in the
    band of ``edge = (ey, ex)`` pixels along the image edges (half a PSF box: sources there are
    truncated by the edge, differently in the two images).  With ``scale_variance`` the difference
    variance is rescaled by :func:`variance_rescale_factor` over the usable pixels (not bad, not in
    ``and_mask``, finite with positive variance): the propagated variance assumes white input
    noise, which resampled inputs do not have.

    Parameters
    ----------
    difference, difference_variance
        D and its propagated variance (:func:`jaxdiff.core.zogy_grid.zogy_cells`).
    bad1, bad2, mask1, mask2, nonfinite1, nonfinite2
        The :class:`PreparedInput` fields of the two inputs.
    no_data, edge_bits, and_mask : int, keyword-only
        Mask bits (``NO_DATA``, ``EDGE``, ``ignoreMaskPlanes``).
    edge : tuple of int, keyword-only
        Width of the edge band along rows and columns.
    scale_variance : bool, keyword-only
        Rescale the difference variance (``doScaleVariance``).
    out_dtype : str, keyword-only
        dtype name of the output planes.

    Returns
    -------
    DifferencePlanes
    """
    bad = jnp.asarray(bad1) | jnp.asarray(bad2)
    out_mask = jnp.asarray(mask1) | jnp.asarray(mask2)
    out_mask = jnp.where(jnp.asarray(nonfinite1) | jnp.asarray(nonfinite2), out_mask | no_data, out_mask)
    height, width = out_mask.shape
    edge_y, edge_x = edge
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    in_edge = (rows < edge_y) | (rows >= height - edge_y) | (cols < edge_x) | (cols >= width - edge_x)
    out_mask = jnp.where(in_edge, out_mask | edge_bits, out_mask)
    diff, diff_var = jnp.asarray(difference), jnp.asarray(difference_variance)
    factor, n_sky = jnp.asarray(1.0, diff.dtype), jnp.zeros((), jnp.sum(bad).dtype)
    if scale_variance:
        usable = ~bad & ((out_mask & and_mask) == 0)
        ok = usable & jnp.isfinite(diff) & jnp.isfinite(diff_var) & (diff_var > 0)
        factor, n_sky = variance_rescale_factor(diff, diff_var, ok, clipped_stats(diff_var, ok))
        diff_var = diff_var * factor
    return DifferencePlanes(diff.astype(out_dtype), diff_var.astype(out_dtype), out_mask, factor, n_sky)


@functools.partial(jax.jit, static_argnames=("and_mask", "normalize", "out_dtype"))
def finish_score_planes(
    score: Float[ArrayLike, "H W"],
    score_variance: Float[ArrayLike, "H W"],
    score_corr: Float[ArrayLike, "H W"],
    bad: Bool[ArrayLike, "H W"],
    out_mask: Int[ArrayLike, "H W"],
    *,
    and_mask: int,
    normalize: bool,
    out_dtype: str,
) -> ScorePlanes:
    """Return S, var S and S_corr with flagged pixels neutralised and S_corr optionally normalised.

    A pixel is flagged where it was filled in either input (``bad``) or where var S is below
    :func:`jaxdiff.core._numerics.tiny`; there S = 0, var S = 1 and S_corr = 0.  With
    ``normalize`` (``doNormalizeScore``) S_corr is divided by its robust (IQR) standard deviation
    ``norm`` over the unflagged pixels outside ``and_mask``, and var S multiplied by ``norm**2`` so
    that S / sqrt(var S) = S_corr still holds.

    Parameters
    ----------
    score, score_variance, score_corr
        S, var S and S_corr (Zackay, Ofek & Gal-Yam 2016 eqs. 12 and 25-33).
    bad
        Pixels filled in either input (``bad1 | bad2``).
    out_mask
        The output mask (:attr:`DifferencePlanes.mask`).
    and_mask : int, keyword-only
        Bits of pixels excluded from the normalisation (``ignoreMaskPlanes``).
    normalize : bool, keyword-only
        Normalise S_corr.
    out_dtype : str, keyword-only
        dtype name of the output planes.

    Returns
    -------
    ScorePlanes
    """
    score, score_variance, score_corr = jnp.asarray(score), jnp.asarray(score_variance), jnp.asarray(score_corr)
    bad, out_mask = jnp.asarray(bad), jnp.asarray(out_mask)
    flagged = bad | (score_variance < tiny(score_variance.dtype))
    score = jnp.where(flagged, 0.0, score)
    score_var = jnp.where(flagged, 1.0, score_variance)
    score_corr = jnp.where(flagged, 0.0, score_corr)
    norm, n_used = jnp.asarray(1.0, score_corr.dtype), jnp.zeros((), jnp.sum(bad).dtype)
    if normalize:
        ok = ~flagged & ((out_mask & and_mask) == 0)
        norm = robust_std(score_corr, ok)
        score_corr = score_corr / norm
        # S / sqrt(var S) = S_corr: the same calibration applies to S's variance
        score_var = jnp.where(flagged, score_var, score_var * (norm * norm))
        n_used = jnp.sum(ok & jnp.isfinite(score_corr))
    return ScorePlanes(score.astype(out_dtype), score_var.astype(out_dtype), score_corr.astype(out_dtype),
                       norm, n_used)
