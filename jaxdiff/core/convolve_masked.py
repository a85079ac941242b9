"""Convolution of masked images (image, variance, mask) as afw ``convolve`` with doNormalize=False.

:func:`convolve_masked_image` (fixed kernel) and :func:`spatially_varying_convolve_masked_image`
(linear-combination kernel) reproduce ``lsst.afw.math.convolve(out, in, kernel,
ConvolutionControl(doNormalize=False, doCopyEdge=False))`` on an (image, variance, mask) triple and
return :class:`MaskedConvolution`: the image is correlated with the kernel
(:mod:`jaxdiff.core.convolve_fixed`, :mod:`jaxdiff.core.convolve_spatial`), the variance with its
square, and the mask is OR-ed over the kernel footprint (:mod:`jaxdiff.core.masks`).  The edge band
is NaN / +inf / NO_DATA, and non-finite input pixels spoil only the outputs whose footprint touches
them, as in afw's direct sum.  Re-exported by :mod:`jaxdiff.core.convolve`.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int

from ._checks import float_array
from .convolve_fixed import _check_image_kernel, _pad_band, _valid, choose_method, good_box_slices
from .convolve_spatial import _SV_STATIC, _check_spatial, _sv_valid
from .masks import _check_mask, _grow
from .spatial import SpatialRange

__all__ = [
    "MaskedConvolution",
    "convolve_masked_image",
    "spatially_varying_convolve_masked_image",
]


class MaskedConvolution(NamedTuple):
    """Result of :func:`convolve_masked_image` / :func:`spatially_varying_convolve_masked_image`.

    Attributes
    ----------
    image : (H, W) float
        Correlated image; NaN in the edge band.
    variance : (H, W) float
        Variance propagated with the squared kernel; +inf in the edge band.
    mask : (H, W) int32
        Input mask OR-ed over the kernel footprint; exactly ``1 << no_data_bit`` in the edge band.
    """

    image: Float[Array, "H W"]
    variance: Float[Array, "H W"]
    mask: Int[Array, "H W"]



def _no_data_value(no_data_bit):
    bit = int(no_data_bit)
    if not 0 <= bit <= 31:
        msg = (
            f"no_data_bit must be a mask-plane index in [0, 31] (NO_DATA is 8 by default), got {no_data_bit}"
        )
        raise ValueError(msg)
    return int(np.array(1 << bit, np.uint32).view(np.int32))


def _footprint(kernels):
    """Where the kernel (or, for a term stack, any term kernel) is non-zero."""
    return kernels != 0 if kernels.ndim == 2 else jnp.any(kernels != 0, axis=0)


def _finish_plane(plane, valid, footprint, kind):
    """Edge band and afw treatment of non-finite inputs for one plane (``kind`` "image"/"variance").

    Non-finite input pixels were zeroed before the correlation; outputs whose footprint touches one
    become NaN (image; NaN variance) or +inf (+inf variance), like afw's direct sum, in which
    ``NaN * 0`` terms are skipped.
    """
    rows, cols = good_box_slices(plane.shape, footprint.shape)
    if kind == "image":
        flags = (~jnp.isfinite(plane)).astype(jnp.int32)
    else:
        pos_inf = plane == jnp.inf
        flags = (~jnp.isfinite(plane) & ~pos_inf).astype(jnp.int32) | (pos_inf.astype(jnp.int32) << 1)
    flags = lax.cond(
        jnp.any(flags != 0),
        lambda f, fp: _grow(f, fp)[rows, cols],
        lambda f, fp: jnp.zeros_like(f[rows, cols]),
        flags, footprint,
    )  # fmt: skip
    valid = jnp.where((flags & 1) != 0, jnp.nan, jnp.where((flags & 2) != 0, jnp.inf, valid))
    fill = jnp.nan if kind == "image" else jnp.inf
    return _pad_band(valid, footprint.shape, jnp.asarray(fill, plane.dtype))


def _zero_nonfinite(a):
    return jnp.where(jnp.isfinite(a), a, 0)


@functools.partial(jax.jit, static_argnames=("method", "kind"))
def _masked_plane_jit(plane, kernel, *, method, kind):
    k = kernel if kind == "image" else kernel * kernel
    return _finish_plane(plane, _valid(_zero_nonfinite(plane), k, method), kernel != 0, kind)


@functools.partial(jax.jit, static_argnames=(*_SV_STATIC, "kind"))
def _sv_masked_plane_jit(plane, term_kernels, xy0, *, order, model, xy_range, method, kind):
    valid = _sv_valid(
        _zero_nonfinite(plane), term_kernels, xy0, order=order, model=model, xy_range=xy_range, method=method,
        kind=kind,
    )  # fmt: skip
    return _finish_plane(plane, valid, _footprint(term_kernels), kind)


@functools.partial(jax.jit, static_argnames=("no_data",))
def _masked_mask_jit(mask, kernels, *, no_data):
    footprint = _footprint(kernels)
    rows, cols = good_box_slices(mask.shape, footprint.shape)
    return _pad_band(_grow(mask, footprint)[rows, cols], footprint.shape, jnp.asarray(no_data, jnp.int32))


def _check_variance(variance, image):
    variance = float_array(variance, "variance")
    if variance.shape != image.shape or variance.dtype != image.dtype:
        msg = (
            f"variance must match the image shape and dtype {image.shape} {image.dtype}, "
            f"got {variance.shape} {variance.dtype}"
        )
        raise ValueError(msg)
    return variance


def convolve_masked_image(
    image: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"],
    mask: Int[ArrayLike, "H W"],
    kernel: Float[ArrayLike, "Kh Kw"],
    *,
    no_data_bit: int,
    method: str = "auto",
) -> MaskedConvolution:
    """Convolve a masked image with a fixed kernel (afw ``convolve``, doNormalize=False, doCopyEdge=False).

    Parameters
    ----------
    image, variance : array_like, shape (H, W)
        Image and variance planes (float32 or float64, same dtype).
    mask : array_like, shape (H, W)
        Integer bit-plane mask.
    kernel : array_like, shape (Kh, Kw)
        Kernel (not normalised; centre ``K // 2``).
    no_data_bit : int, keyword-only
        Index of the NO_DATA mask plane (8 in afw's default dictionary).
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}, keyword-only
        As :func:`correlate_valid`.

    Returns
    -------
    MaskedConvolution
        Good region: ``image`` = correlation with ``kernel``, ``variance`` = correlation of the
        variance with ``kernel**2``, ``mask`` = input mask OR-ed over the footprint ``kernel != 0``
        (zero kernel pixels do not smear).  Edge band: image NaN, variance +inf, mask exactly
        ``1 << no_data_bit`` (overwritten, not OR-ed) -- the NaN band is flagged NO_DATA exactly as
        LSST does.

    Raises
    ------
    ValueError
        Bad shapes or dtypes, a ``no_data_bit`` outside ``[0, 31]``.

    Notes
    -----
    Non-finite input pixels are handled like afw's direct sum, whatever the method: an output pixel
    whose footprint (``kernel != 0``) touches a non-finite image pixel is NaN (afw gives +-inf for an
    isolated infinity), one that touches a NaN variance is NaN and one that touches a +inf variance
    is +inf; other pixels are unaffected (with the FFT method a single NaN would otherwise spoil the
    whole image).  The mask is not changed by non-finite values.

    **JAX.** Static: shapes, dtype, ``method``, ``no_data_bit``.  Differentiable with respect to
    ``image``, ``variance`` and ``kernel`` (the mask is integer).
    """
    image, kernel = _check_image_kernel(image, kernel)
    variance = _check_variance(variance, image)
    mask = _check_mask(mask, image.shape)
    method = choose_method(image.shape, kernel.shape, method)
    no_data = _no_data_value(no_data_bit)
    # three jitted calls (inlined under an outer jit): one plane alive at a time keeps peak memory low
    return MaskedConvolution(
        _masked_plane_jit(image, kernel, method=method, kind="image"),
        _masked_plane_jit(variance, kernel, method=method, kind="variance"),
        _masked_mask_jit(mask, kernel, no_data=no_data),
    )


def spatially_varying_convolve_masked_image(
    image: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"],
    mask: Int[ArrayLike, "H W"],
    term_kernels: Float[ArrayLike, "P Kh Kw"],
    *,
    order: int,
    model: str = "chebyshev1",
    xy_range: SpatialRange | Sequence[float] | None = None,
    xy0: Sequence[float] | Float[ArrayLike, "2"] = (0, 0),
    no_data_bit: int,
    method: str = "auto",
) -> MaskedConvolution:
    """Convolve a masked image with a spatially varying kernel (afw ``convolve``, doNormalize=False).

    As afw with ``doNormalize=False, doCopyEdge=False``.

    Image plane: :func:`spatially_varying_correlate`; variance plane:
    :func:`spatially_varying_correlate_variance` (exact ``K(X, Y)**2``); mask: input mask OR-ed over
    the footprint where *any* term kernel is non-zero.  Edge band: image NaN, variance +inf, mask
    exactly ``1 << no_data_bit`` (the NaN band is flagged NO_DATA exactly as LSST does).

    Parameters
    ----------
    image, variance : array_like, shape (H, W)
        Image and variance planes (same float dtype); element ``[r, c]`` is PARENT pixel
        ``(x0 + c, y0 + r)``.
    mask : array_like, shape (H, W)
        Integer bit-plane mask.
    term_kernels, order, model, xy_range, xy0
        As :func:`spatially_varying_correlate`.
    no_data_bit : int, keyword-only
        Index of the NO_DATA plane (8 in afw's default dictionary).
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}, keyword-only
        Per term kernel, as :func:`correlate_valid`.

    Returns
    -------
    MaskedConvolution

    Raises
    ------
    ValueError
        As :func:`spatially_varying_correlate` and :func:`convolve_masked_image`.

    Notes
    -----
    Exact per-pixel kernel (afw interpolates the kernel image bilinearly between sub-region corners).
    Non-finite inputs are handled as in :func:`convolve_masked_image`.  Cost with ``"fft"``: two
    forward real FFTs, ``P`` inverse FFTs for the image and ``(2 order + 1)(2 order + 2) / 2`` for
    the variance (6 + 15 for order 2), one term at a time in ``lax.scan``; the image, variance and
    mask planes are three separate jitted calls, so only one plane's work buffers are alive at a
    time.

    **JAX.** As :func:`spatially_varying_correlate` plus static ``no_data_bit``.  Differentiable
    with respect to ``image``, ``variance`` and ``term_kernels``.
    """
    image, term_kernels, order, xy_range, xy0, method = _check_spatial(
        image, term_kernels, order, model, xy_range, xy0, method, "image"
    )
    variance = _check_variance(variance, image)
    mask = _check_mask(mask, image.shape)
    no_data = _no_data_value(no_data_bit)
    static = dict(order=order, model=model, xy_range=xy_range, method=method)
    # three jitted calls (inlined under an outer jit): one plane alive at a time keeps peak memory low
    return MaskedConvolution(
        _sv_masked_plane_jit(image, term_kernels, xy0, kind="image", **static),
        _sv_masked_plane_jit(variance, term_kernels, xy0, kind="variance", **static),
        _masked_mask_jit(mask, term_kernels, no_data=no_data),
    )
