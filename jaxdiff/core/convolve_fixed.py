"""Fixed-kernel image correlation with LSST afw conventions: method choice, direct and FFT paths.

:func:`correlate_valid` and :func:`correlate_same` cross-correlate an image with one kernel (afw
"convolution" does not flip the kernel; its centre is pixel ``K // 2``, also for even sizes), over
the good region or on the full frame with the edge band filled; :func:`good_box_slices` gives the
good region.  The direct evaluation (an unrolled sum of shifted slices or
``lax.conv_general_dilated``) or the real-FFT one is chosen by :func:`choose_method` (a calibrated
cost model) or explicitly with ``method=``.  The conventions (kernel offsets, edge band) are set
out in :mod:`jaxdiff.core.convolve`, which re-exports these names.

The traced building blocks here (``_direct_valid``, ``_fft_valid_from_hat``, ``_valid``,
``_pad_band``, ...) are shared with :mod:`jaxdiff.core.convolve_spatial`,
:mod:`jaxdiff.core.masks` and :mod:`jaxdiff.core.convolve_masked`.  All functions take one 2-D
image; batches go through ``jax.vmap``.
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ._checks import check_2d, check_choice, float_array
from ._numerics import PRECISION
from .fft import fast_fft_shape, psf_to_otf

__all__ = [
    "AUTO_DIRECT_MAX_AREA",
    "METHODS",
    "SHIFT_ADD_MAX_AREA",
    "choose_method",
    "correlate_same",
    "correlate_valid",
    "good_box_slices",
]


#: Accepted ``method`` values: ``"auto"`` and ``"direct"`` are resolved by :func:`choose_method` to
#: one of the three implementations ``"shift_add"``, ``"lax_conv"`` and ``"fft"``.
METHODS = ("auto", "direct", "fft", "shift_add", "lax_conv")

#: Cost model of ``method="auto"`` (see :func:`choose_method`): the direct method is used when the
#: kernel area ``Kh * Kw`` is at most ``AUTO_DIRECT_MAX_AREA[0] + AUTO_DIRECT_MAX_AREA[1] *
#: log2(N_fft)``, ``N_fft`` = number of pixels of the FFT grid.  Calibrated on CPU (XLA:CPU),
#: float32 and float64, images 40^2 to 2048^2, kernels 5x5 to 15x15: the break-even kernel area
#: grows from ~50 pixels for 40^2-100^2 images (log2 N_fft 11-13.5) to ~90-100 for 256^2-1024^2
#: (16-20) and ~130-160 for 2048^2 (22), i.e. roughly 7x7 to 12x12 kernels.  Not calibrated on
#: GPUs.
AUTO_DIRECT_MAX_AREA = (-40.0, 8.0)

#: On CPU, ``method="direct"`` resolves to ``"shift_add"`` (an unrolled sum of shifted slices) for
#: kernels of at most this many pixels and to ``"lax_conv"`` (``lax.conv_general_dilated``) above,
#: because the compile time of the unrolled sum grows with the kernel area.  On other backends
#: ``"direct"`` is always ``"lax_conv"``.
SHIFT_ADD_MAX_AREA = 225


# --------------------------------------------------------------------------------------
# static helpers (pure Python, outside jit)
# --------------------------------------------------------------------------------------


def _centers(kernel_shape):
    kh, kw = kernel_shape
    return kh // 2, kw // 2


def _band(kernel_shape):
    """Edge widths ``((bottom, top), (left, right))`` of a kernel shape ``(Kh, Kw)``."""
    (kh, kw), (cy, cx) = kernel_shape, _centers(kernel_shape)
    return (cy, kh - 1 - cy), (cx, kw - 1 - cx)


def good_box_slices(image_shape: Sequence[int], kernel_shape: Sequence[int]) -> tuple[slice, slice]:
    """Row and column slices of the good region of a correlation.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)``.
    kernel_shape : (int, int)
        ``(Kh, Kw)``; the kernel centre is ``(Kh // 2, Kw // 2)`` (also for even sizes).

    Returns
    -------
    (slice, slice)
        ``slice(ctrY, H - (Kh - 1 - ctrY))`` and ``slice(ctrX, W - (Kw - 1 - ctrX))``: the pixels
        whose kernel footprint lies inside the image (afw ``Kernel.shrinkBBox``).

    Raises
    ------
    ValueError
        If a shape is not 2-D or the kernel is larger than the image.

    Examples
    --------
    >>> good_box_slices((10, 12), (3, 4))
    (slice(1, 9, None), slice(2, 11, None))
    """
    image_shape = tuple(int(n) for n in image_shape)
    kernel_shape = tuple(int(n) for n in kernel_shape)
    if len(image_shape) != 2 or len(kernel_shape) != 2:
        msg = f"image and kernel shapes must be 2-D, got {image_shape} and {kernel_shape}"
        raise ValueError(msg)
    if any(k > n or k < 1 for k, n in zip(kernel_shape, image_shape, strict=True)):
        msg = (
            f"kernel shape {kernel_shape} must be non-empty and no larger than the image {image_shape}; "
            "crop the kernel or pad the image"
        )
        raise ValueError(msg)
    (b, t), (left, right) = _band(kernel_shape)
    return slice(b, image_shape[0] - t), slice(left, image_shape[1] - right)


def _check_image_kernel(image, kernel, image_name="image", kernel_name="kernel", kernel_ndim=2):
    image = float_array(image, image_name)
    check_2d(image, image_name)
    kernel = float_array(kernel, kernel_name, image.dtype)
    if kernel.ndim != kernel_ndim:
        what = "(Kh, Kw)" if kernel_ndim == 2 else "(n_terms, Kh, Kw)"
        msg = f"{kernel_name} must have shape {what}, got {kernel.shape}"
        if kernel_ndim == 2:
            msg += "; for stacks of kernels use jax.vmap over the leading axis"
        raise ValueError(msg)
    good_box_slices(image.shape, kernel.shape[-2:])
    return image, kernel


def _fft_shape(image_shape):
    """FFT grid of the FFT method: ``>= (H, W)`` suffices for the good region (no wrap-around)."""
    return fast_fft_shape(image_shape)


def choose_method(
    image_shape: Sequence[int],
    kernel_shape: Sequence[int],
    method: str = "auto",
    *,
    backend: str | None = None,
) -> str:
    """Resolve ``method`` to one implementation: ``"shift_add"``, ``"lax_conv"`` or ``"fft"`` (static).

    Parameters
    ----------
    image_shape, kernel_shape : (int, int)
        Shapes of the image and of one kernel.
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}
        ``"auto"`` applies the calibrated cost model: direct when
        ``Kh * Kw <= a + b * log2(N_fft)`` with ``(a, b) =`` :data:`AUTO_DIRECT_MAX_AREA` and
        ``N_fft`` the pixel count of the FFT grid (``fast_fft_shape((H, W))``), else ``"fft"``.
        ``"direct"`` then picks the direct implementation for ``backend``: ``"shift_add"`` on CPU
        for kernels of at most :data:`SHIFT_ADD_MAX_AREA` pixels, ``"lax_conv"`` otherwise.
        ``"shift_add"``, ``"lax_conv"`` and ``"fft"`` are returned unchanged (on any backend).
    backend : str, optional, keyword-only
        The backend the choice is made for (``"cpu"``, ``"gpu"``, ``"tpu"``); default
        ``jax.default_backend()``.  Passing it lets every path be selected and compared anywhere.

    Returns
    -------
    str
        ``"shift_add"``, ``"lax_conv"`` or ``"fft"``.

    Raises
    ------
    ValueError
        For an unknown ``method``.

    Notes
    -----
    Both methods cost about proportionally to the number of pixels: direct ``~ c_d * Kh * Kw`` per
    output pixel, FFT ``~ c_f * log2(N_fft)`` per grid pixel (one forward + one inverse real FFT and
    the kernel's transfer function), hence a crossover kernel area linear in ``log2(N_fft)``.  The
    model gives 48 (64^2), 88 (256^2), 120 (1024^2), 136 (2048^2) and 152 (4096^2) pixels, so the AL
    kernels (21^2 to 35^2) always take the FFT and kernels up to ~7x7 always a direct sum.  On
    XLA:CPU, float32 ``conv_general_dilated`` is slow enough that the FFT beats it even for 3x3
    kernels, hence the unrolled ``"shift_add"`` implementation there.

    Examples
    --------
    >>> choose_method((256, 256), (5, 5), backend="cpu"), choose_method((256, 256), (23, 23))
    ('shift_add', 'fft')
    >>> choose_method((256, 256), (5, 5), backend="gpu")
    'lax_conv'
    """
    check_choice(method, "method", METHODS)
    kh, kw = (int(n) for n in kernel_shape)
    if method == "auto":
        fh, fw = _fft_shape(image_shape)
        a, b = AUTO_DIRECT_MAX_AREA
        method = "direct" if kh * kw <= a + b * math.log2(fh * fw) else "fft"
    if method == "direct":
        backend = jax.default_backend() if backend is None else str(backend)
        method = "shift_add" if backend == "cpu" and kh * kw <= SHIFT_ADD_MAX_AREA else "lax_conv"
    return method


# --------------------------------------------------------------------------------------
# traced building blocks
# --------------------------------------------------------------------------------------


def _direct_valid(image, kernel, method):
    """Good region by a direct sum over kernel offsets (``method`` "shift_add" or "lax_conv").

    ``"shift_add"``: an unrolled sum of shifted slices (one fused loop; on XLA:CPU much faster than
    float32 ``conv_general_dilated``); ``"lax_conv"``: ``lax.conv_general_dilated`` (a correlation,
    "VALID" padding, ``precision=PRECISION``).  Which one ``method="direct"`` means is decided
    outside jit by :func:`choose_method`.
    """
    (h, w), (kh, kw) = image.shape, kernel.shape
    if method == "shift_add":
        hv, wv = h - kh + 1, w - kw + 1
        out = kernel[0, 0] * image[:hv, :wv]
        for j in range(kh):
            for i in range(kw):
                if i or j:
                    out = out + kernel[j, i] * image[j : j + hv, i : i + wv]
        return out
    out = lax.conv_general_dilated(
        image[None, None], kernel[None, None], window_strides=(1, 1), padding="VALID", precision=PRECISION
    )
    return out[0, 0]


def _rfft_padded(image, fft_shape):
    (h, w), (fh, fw) = image.shape, fft_shape
    return jnp.fft.rfft2(jnp.pad(image, ((0, fh - h), (0, fw - w))), s=fft_shape)


def _fft_valid_from_hat(image_hat, kernel, image_shape, fft_shape):
    """Good region from the (zero-padded) image spectrum: ``irfft2(I_hat * conj(K_hat))``.

    The kernel is centred at the origin of the FFT grid (``psf_to_otf``), so the circular
    correlation is aligned with the image frame; with the grid ``>= (H, W)`` the good region never
    wraps around.
    """
    otf = psf_to_otf(kernel, fft_shape)
    full = jnp.fft.irfft2(image_hat * jnp.conj(otf), s=fft_shape)
    rows, cols = good_box_slices(image_shape, kernel.shape)
    return full[rows, cols]


def _valid(image, kernel, method):
    if method != "fft":
        return _direct_valid(image, kernel, method)
    fft_shape = _fft_shape(image.shape)
    return _fft_valid_from_hat(_rfft_padded(image, fft_shape), kernel, image.shape, fft_shape)


def _pad_band(valid, kernel_shape, fill):
    (b, t), (left, right) = _band(kernel_shape)
    return lax.pad(valid, fill.astype(valid.dtype), ((b, t, 0), (left, right, 0)))


@functools.partial(jax.jit, static_argnames=("method",))
def _correlate_valid_jit(image, kernel, *, method):
    return _valid(image, kernel, method)


@functools.partial(jax.jit, static_argnames=("method",))
def _correlate_same_jit(image, kernel, fill, *, method):
    return _pad_band(_valid(image, kernel, method), kernel.shape, fill)


def correlate_valid(
    image: Float[ArrayLike, "H W"], kernel: Float[ArrayLike, "Kh Kw"], *, method: str = "auto"
) -> Float[Array, "Hv Wv"]:
    """Cross-correlation of an image with a kernel over the good region (afw convention).

    ``out[r, c] = sum_{j, i} kernel[j, i] * image[r + j, c + i]``, shape ``(H - Kh + 1, W - Kw + 1)``:
    the afw convolution evaluated at the input pixel ``(X, Y) = (c + ctrX, r + ctrY)``, with
    ``ctrX = Kw // 2``, ``ctrY = Kh // 2``.  No kernel flip (afw "convolution" is a correlation).

    Parameters
    ----------
    image : array_like, shape (H, W)
        float32 or float64 image; sets the dtype of the computation and the output.
    kernel : array_like, shape (Kh, Kw)
        Floating-point kernel, cast to the image dtype; odd or even sizes (centre ``K // 2``), no
        larger than the image.  Not normalised (afw ``doNormalize=False``).
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}, keyword-only
        ``"shift_add"``: an unrolled sum of shifted slices; ``"lax_conv"``:
        ``lax.conv_general_dilated`` with ``precision=HIGHEST``; ``"fft"``: real FFT on the grid
        ``fast_fft_shape((H, W))`` (kernel transfer function by skinny matrix products).
        ``"direct"`` is ``"shift_add"`` on CPU for kernels of at most :data:`SHIFT_ADD_MAX_AREA`
        pixels and ``"lax_conv"`` otherwise; ``"auto"`` chooses between direct and FFT with the
        cost model of :func:`choose_method`.  All give the same result to rounding.

    Returns
    -------
    jax.Array, shape (H - Kh + 1, W - Kw + 1)
        The good region, in the image dtype.

    Raises
    ------
    ValueError
        Wrong ndim, kernel larger than the image, non-float image or kernel, unknown ``method``.

    See Also
    --------
    correlate_same : the same on the full image frame, edge band filled.

    Notes
    -----
    Non-finite input pixels poison the output: with ``"direct"`` every output whose kernel box
    covers them, with ``"fft"`` the *whole* output.  (:func:`convolve_masked_image` handles them the
    afw way.)  float32 FFT results carry rounding errors ~1e-7 relative to ``max|out|``; tiny values
    far below that scale are not reproduced to relative precision.

    **JAX.** Static: the shapes, the dtype and ``method`` (``"auto"`` and ``"direct"`` are resolved
    before jit, so they compile the same program as the implementation they pick); one compile per
    shape.  Differentiable with
    respect to ``image`` and ``kernel`` (forward and reverse mode).  Written for one image: use
    ``jax.vmap`` for leading batch axes of ``image`` and/or ``kernel``.

    Examples
    --------
    >>> img = jnp.arange(12.0).reshape(3, 4)
    >>> correlate_valid(img, jnp.array([[0.0, 1.0]])).tolist()  # shifts the image by one column
    [[1.0, 2.0, 3.0], [5.0, 6.0, 7.0], [9.0, 10.0, 11.0]]
    """
    image, kernel = _check_image_kernel(image, kernel)
    method = choose_method(image.shape, kernel.shape, method)
    return _correlate_valid_jit(image, kernel, method=method)


def correlate_same(
    image: Float[ArrayLike, "H W"],
    kernel: Float[ArrayLike, "Kh Kw"],
    *,
    method: str = "auto",
    fill: float | Float[ArrayLike, ""] = 0.0,
) -> Float[Array, "H W"]:
    """Cross-correlation on the full image frame: good region as :func:`correlate_valid`, edge band = fill.

    Parameters
    ----------
    image : array_like, shape (H, W)
        float32 or float64 image.
    kernel : array_like, shape (Kh, Kw)
        Floating-point kernel (centre ``(Kh // 2, Kw // 2)``), no larger than the image.
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}, keyword-only
        See :func:`correlate_valid`.
    fill : float or 0-d array, keyword-only
        Value of the edge band (traced: changing it does not recompile; NaN is fine).

    Returns
    -------
    jax.Array, shape (H, W)
        ``out[good_box_slices(...)] = correlate_valid(image, kernel)``; elsewhere ``fill``.

    Raises
    ------
    ValueError
        As :func:`correlate_valid`.

    Notes
    -----
    The edge band is ``ctrY`` rows at the bottom (low row index), ``Kh - 1 - ctrY`` at the top,
    ``ctrX`` columns on the left and ``Kw - 1 - ctrX`` on the right (afw).

    **JAX.** As :func:`correlate_valid`; ``fill`` is traced.  Differentiable with respect to
    ``image``, ``kernel`` and ``fill``.

    Examples
    --------
    >>> out = correlate_same(jnp.ones((4, 5)), jnp.ones((3, 3)), fill=-1.0)
    >>> out[0].tolist(), out[1].tolist()
    ([-1.0, -1.0, -1.0, -1.0, -1.0], [-1.0, 9.0, 9.0, 9.0, -1.0])
    """
    image, kernel = _check_image_kernel(image, kernel)
    method = choose_method(image.shape, kernel.shape, method)
    return _correlate_same_jit(image, kernel, jnp.asarray(fill, image.dtype), method=method)
