"""Fixed and spatially varying image convolution with LSST afw conventions.

afw "convolution" (``lsst.afw.math.convolve``) is a **cross-correlation**: the kernel image is not
flipped (afw ``Kernel`` images and ``lsst.afw.math.convolve``)::

    out(X, Y) = sum_{u, v} K(u, v) * in(X + u, Y + v)

where kernel pixel ``[j, i]`` (arrays are indexed ``[y, x]``) holds the offset
``(u, v) = (i - ctrX, j - ctrY)`` with ``ctrX = Kw // 2``, ``ctrY = Kh // 2`` (also for even sizes).
Output pixels whose footprint leaves the image form the *edge band*: ``ctrX`` columns on the left,
``Kw - 1 - ctrX`` on the right, ``ctrY`` rows at the bottom (low row index) and ``Kh - 1 - ctrY`` at
the top.  The remaining *good region* is what :func:`correlate_valid` returns.

Functions
---------
* :func:`correlate_valid`, :func:`correlate_same`, :func:`good_box_slices`: fixed kernel, direct
  (an unrolled sum of shifted slices or ``lax.conv_general_dilated``) or real-FFT evaluation,
  chosen by :func:`choose_method` (a calibrated cost model) or explicitly with ``method=``.
* :func:`spatially_varying_correlate`, :func:`spatially_varying_correlate_variance`: a
  linear-combination kernel ``K(X, Y) = sum_s phi_s(X, Y) K_s`` with afw spatial functions
  ``phi_s`` (:mod:`jaxdiff.core.spatial`), applied exactly per pixel.
* :func:`grow_mask`: bitwise OR of a mask over a kernel footprint.
* :func:`convolve_masked_image`, :func:`spatially_varying_convolve_masked_image`: afw
  ``convolve(out, in, kernel, ConvolutionControl(doNormalize=False, doCopyEdge=False))`` on an
  (image, variance, mask) triple, returning :class:`MaskedConvolution`.

All functions take one 2-D image; batches go through ``jax.vmap``.
"""

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._numerics import PRECISION
from .fft import fast_fft_shape, psf_to_otf
from .spatial import SPATIAL_MODELS, SpatialRange, n_spatial_terms, spatial_exponents

__all__ = [
    "AUTO_DIRECT_MAX_AREA",
    "METHODS",
    "SHIFT_ADD_MAX_AREA",
    "MaskedConvolution",
    "choose_method",
    "convolve_masked_image",
    "correlate_same",
    "correlate_valid",
    "good_box_slices",
    "grow_mask",
    "spatially_varying_convolve_masked_image",
    "spatially_varying_correlate",
    "spatially_varying_correlate_variance",
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


def _float_array(a, name, dtype=None):
    """Return ``a`` as a jax array: float32/float64 (``dtype=None``), or any float cast to ``dtype``."""
    a = jnp.asarray(a)
    if dtype is None and a.dtype not in (jnp.float32, jnp.float64):
        msg = (
            f"{name} must be float32 or float64, got dtype {a.dtype}; "
            f"convert it first, e.g. {name}.astype(np.float32)"
        )
        raise ValueError(msg)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        msg = f"{name} must be a floating-point array, got dtype {a.dtype}; convert it first with .astype()"
        raise ValueError(msg)
    return a if dtype is None else a.astype(dtype)


def _check_2d(a, name, what="(H, W)"):
    if a.ndim != 2:
        msg = (
            f"{name} must be 2-D {what}, got shape {a.shape}; "
            "for stacks of images or kernels use jax.vmap over the leading axis"
        )
        raise ValueError(msg)


def _check_image_kernel(image, kernel, image_name="image", kernel_name="kernel", kernel_ndim=2):
    image = _float_array(image, image_name)
    _check_2d(image, image_name)
    kernel = _float_array(kernel, kernel_name, image.dtype)
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
    if method not in METHODS:
        msg = f"method must be one of {METHODS}, got {method!r}"
        raise ValueError(msg)
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


# --------------------------------------------------------------------------------------
# spatially varying linear-combination kernels
# --------------------------------------------------------------------------------------


def _axis_table(coord, order, model, lo, hi):
    """``(n, order + 1)`` table of ``T_k(coord')`` (chebyshev1, mapped from ``[lo, hi]``) or ``coord**k``.

    Same mapping and recurrence as :func:`jaxdiff.core.spatial.spatial_basis`, one axis at a time.
    """
    if model == "chebyshev1":
        t = (coord - 0.5 * (lo + hi)) * (2.0 / (hi - lo))
        values = [jnp.ones_like(t)]
        if order >= 1:
            values.append(t)
        for _ in range(2, order + 1):
            values.append(2.0 * t * values[-1] - values[-2])
    else:
        values = [jnp.ones_like(coord)]
        for _ in range(order):
            values.append(values[-1] * coord)
    return jnp.stack(values, axis=-1)


def _term_weights(order, model, xy_range, xy0, rows, cols, dtype):
    """Separable spatial weights of the good region: ``phi_s(X, Y) = wy[s, r] * wx[s, c]``.

    ``rows``/``cols`` are the good-region slices; returns ``wy (n, Hv)``, ``wx (n, Wv)``.
    """
    x = xy0[0] + jnp.arange(cols.start, cols.stop, dtype=dtype)
    y = xy0[1] + jnp.arange(rows.start, rows.stop, dtype=dtype)
    r = xy_range if xy_range is not None else (0.0, 0.0, 1.0, 1.0)
    tx = _axis_table(x, order, model, r[0], r[2])
    ty = _axis_table(y, order, model, r[1], r[3])
    exps = spatial_exponents(order)
    ix = np.array([i for i, _ in exps])
    iy = np.array([j for _, j in exps])
    return ty[:, iy].T, tx[:, ix].T


@functools.lru_cache(maxsize=32)
def _square_mixing(order: int, model: str) -> np.ndarray:
    """``C[q, s, t]`` with ``phi_s * phi_t = sum_q C[q, s, t] psi_q``, ``psi`` of degree ``2 * order``.

    Products of afw terms are again afw terms of twice the degree: ``x^a x^c = x^(a+c)`` and
    ``T_a T_c = (T_(a+c) + T_|a-c|) / 2``.
    """
    exps = spatial_exponents(order)
    index = {e: q for q, e in enumerate(spatial_exponents(2 * order))}
    n = len(exps)
    mix = np.zeros((len(index), n, n))

    def product_1d(a, c):
        if model == "chebyshev1":
            return [(a + c, 0.5), (abs(a - c), 0.5)]
        return [(a + c, 1.0)]

    for s, (a, b) in enumerate(exps):
        for t, (c, d) in enumerate(exps):
            for i, wi in product_1d(a, c):
                for j, wj in product_1d(b, d):
                    mix[index[(i, j)], s, t] += wi * wj
    mix.flags.writeable = False
    return mix


def _spatial_accumulate(image, kernels, wy, wx, method):
    """Accumulate ``sum_s wy[s][:, None] * (K_s star image)_good * wx[s][None, :]``, a term per scan step."""
    kh, kw = kernels.shape[1:]
    rows, cols = good_box_slices(image.shape, (kh, kw))
    if method == "fft":
        fft_shape = _fft_shape(image.shape)
        image_hat = _rfft_padded(image, fft_shape)  # forward transform once

        def term(k):
            return _fft_valid_from_hat(image_hat, k, image.shape, fft_shape)
    else:

        def term(k):
            return _direct_valid(image, k, method)

    def body(acc, xs):
        k, a, b = xs
        return acc + a[:, None] * term(k) * b[None, :], None

    acc0 = jnp.zeros((rows.stop - rows.start, cols.stop - cols.start), image.dtype)
    acc, _ = lax.scan(body, acc0, (kernels, wy, wx))
    return acc


def _sv_image_valid(image, term_kernels, xy0, *, order, model, xy_range, method):
    rows, cols = good_box_slices(image.shape, term_kernels.shape[1:])
    wy, wx = _term_weights(order, model, xy_range, xy0, rows, cols, image.dtype)
    return _spatial_accumulate(image, term_kernels, wy, wx, method)


def _sv_variance_valid(variance, term_kernels, xy0, *, order, model, xy_range, method):
    """``sum_{s,t} phi_s phi_t (K_s K_t) star V`` regrouped as ``sum_q psi_q (L_q star V)``."""
    rows, cols = good_box_slices(variance.shape, term_kernels.shape[1:])
    mix = jnp.asarray(_square_mixing(order, model), variance.dtype)
    sq_kernels = jnp.einsum("qst,sij,tij->qij", mix, term_kernels, term_kernels, precision=PRECISION)
    wy, wx = _term_weights(2 * order, model, xy_range, xy0, rows, cols, variance.dtype)
    return _spatial_accumulate(variance, sq_kernels, wy, wx, method)


_SV_STATIC = ("order", "model", "xy_range", "method")


@functools.partial(jax.jit, static_argnames=_SV_STATIC)
def _sv_correlate_jit(image, term_kernels, xy0, fill, *, order, model, xy_range, method):
    valid = _sv_image_valid(
        image, term_kernels, xy0, order=order, model=model, xy_range=xy_range, method=method
    )
    return _pad_band(valid, term_kernels.shape[1:], fill)


@functools.partial(jax.jit, static_argnames=_SV_STATIC)
def _sv_variance_jit(variance, term_kernels, xy0, fill, *, order, model, xy_range, method):
    valid = _sv_variance_valid(
        variance, term_kernels, xy0, order=order, model=model, xy_range=xy_range, method=method
    )
    return _pad_band(valid, term_kernels.shape[1:], fill)


def _check_spatial(image, term_kernels, order, model, xy_range, xy0, method, image_name):
    image, term_kernels = _check_image_kernel(image, term_kernels, image_name, "term_kernels", kernel_ndim=3)
    n = n_spatial_terms(order)
    if term_kernels.shape[0] != n:
        msg = (
            f"term_kernels has {term_kernels.shape[0]} term kernels but spatial order {order} has {n} "
            f"terms; pass an (n_terms, Kh, Kw) stack with n_terms = (order + 1)(order + 2) / 2"
        )
        raise ValueError(msg)
    if model not in SPATIAL_MODELS:
        msg = f"unknown spatial model {model!r}; use one of {SPATIAL_MODELS}"
        raise ValueError(msg)
    if model == "chebyshev1":
        if xy_range is None:
            msg = "model='chebyshev1' needs xy_range=SpatialRange(x_min, y_min, x_max, y_max) (a Box2D)"
            raise ValueError(msg)
        xy_range = SpatialRange(*(float(v) for v in xy_range))
        if not (xy_range.x_max > xy_range.x_min and xy_range.y_max > xy_range.y_min):
            msg = f"xy_range {tuple(xy_range)} is empty; it needs x_max > x_min and y_max > y_min"
            raise ValueError(msg)
    else:
        xy_range = None  # unused by the polynomial model: no recompiles when it changes
    if hasattr(xy0, "getX"):  # a Point2I-like object
        xy0 = (xy0.getX(), xy0.getY())
    xy0 = jnp.asarray(xy0)
    if xy0.shape != (2,):
        msg = f"xy0 must be the PARENT origin (x0, y0) of the array, got shape {xy0.shape}"
        raise ValueError(msg)
    xy0 = xy0.astype(image.dtype)
    method = choose_method(image.shape, term_kernels.shape[1:], method)
    return image, term_kernels, int(order), xy_range, xy0, method


def spatially_varying_correlate(
    image: Float[ArrayLike, "H W"],
    term_kernels: Float[ArrayLike, "P Kh Kw"],
    *,
    order: int,
    model: str = "chebyshev1",
    xy_range: SpatialRange | Sequence[float] | None = None,
    xy0: Sequence[float] | Float[ArrayLike, "2"] = (0, 0),
    method: str = "auto",
    fill: float | Float[ArrayLike, ""] = 0.0,
) -> Float[Array, "H W"]:
    """Correlation with a spatially varying linear-combination kernel, exact per pixel.

    The kernel at PARENT pixel ``(X, Y)`` is ``K(X, Y) = sum_s phi_s(X, Y) K_s`` with
    ``phi_s = spatial_basis(X, Y, order, model=model, xy_range=xy_range)`` (afw term order), and::

        out(X, Y) = sum_{u,v} K(X, Y)(u, v) * image(X + u, Y + v)
                  = sum_s phi_s(X, Y) * (K_s star image)(X, Y)

    Parameters
    ----------
    image : array_like, shape (H, W)
        float32 or float64 image.  Array element ``[r, c]`` is PARENT pixel ``(x0 + c, y0 + r)``.
    term_kernels : array_like, shape (P, Kh, Kw)
        The term kernels ``K_s``, ``P = (order + 1)(order + 2) / 2``; cast to the image dtype.
        Centre ``(Kh // 2, Kw // 2)``.
    order : int, keyword-only
        Total degree of the spatial functions (static).
    model : {"chebyshev1", "polynomial"}, keyword-only
        afw ``Chebyshev1Function2`` or ``PolynomialFunction2`` (static).
    xy_range : SpatialRange or (x_min, y_min, x_max, y_max), keyword-only
        Box2D mapped onto ``[-1, 1]^2`` by ``"chebyshev1"`` (static; required there, ignored by
        ``"polynomial"``).
    xy0 : (x0, y0), keyword-only
        PARENT origin of the array (traced: sub-images with other origins do not recompile).
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}, keyword-only
        As :func:`correlate_valid`, per term kernel.
    fill : float or 0-d array, keyword-only
        Edge-band value (traced).

    Returns
    -------
    jax.Array, shape (H, W)
        Good region as above, edge band ``fill``.

    Raises
    ------
    ValueError
        Bad shapes or dtypes, a term count that does not match ``order``, an unknown model, a missing
        or empty ``xy_range``, unknown ``method``.

    See Also
    --------
    spatially_varying_correlate_variance, spatially_varying_convolve_masked_image

    Notes
    -----
    Exact: every output pixel uses the kernel evaluated at its own position, by linearity.  afw
    instead evaluates the kernel on a grid of sub-regions (``maxInterpolationDistance = 10``) and
    interpolates the kernel image bilinearly in between, an approximation; expect tiny (far below
    noise) differences from LSST.  With one term (``order=0``) this equals :func:`correlate_same`
    with ``K_0``.

    Cost: one forward real FFT of the image and, per term, one kernel transfer function and one
    inverse real FFT (``"fft"``), accumulated inside ``lax.scan`` so that only one full-size term is
    alive at a time; the spatial weights are outer products of 1-D tables in x and y (every afw term
    is ``f(x) g(y)``), never ``P`` full planes.

    **JAX.** Static: shapes, dtype, ``order``, ``model``, ``xy_range`` and ``method``; traced:
    ``image``, ``term_kernels``, ``xy0``, ``fill``.  Differentiable with respect to ``image`` and
    ``term_kernels``.  One image per call; ``jax.vmap`` for batches.

    Examples
    --------
    >>> k = jnp.zeros((3, 3, 3)).at[0, 1, 1].set(1.0)  # K(X, Y) = delta: the identity
    >>> out = spatially_varying_correlate(jnp.ones((5, 5)), k, order=1, xy_range=(0, 0, 4, 4))
    >>> out[2].tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    image, term_kernels, order, xy_range, xy0, method = _check_spatial(
        image, term_kernels, order, model, xy_range, xy0, method, "image"
    )
    return _sv_correlate_jit(
        image, term_kernels, xy0, jnp.asarray(fill, image.dtype),
        order=order, model=model, xy_range=xy_range, method=method,
    )  # fmt: skip


def spatially_varying_correlate_variance(
    variance: Float[ArrayLike, "H W"],
    term_kernels: Float[ArrayLike, "P Kh Kw"],
    *,
    order: int,
    model: str = "chebyshev1",
    xy_range: SpatialRange | Sequence[float] | None = None,
    xy0: Sequence[float] | Float[ArrayLike, "2"] = (0, 0),
    method: str = "auto",
    fill: float | Float[ArrayLike, ""] = float("inf"),
) -> Float[Array, "H W"]:
    """Variance propagation through a spatially varying kernel: correlation with ``K(X, Y)**2``.

    ``out(X, Y) = sum_{u,v} K(X, Y)(u, v)**2 * variance(X + u, Y + v)
    = sum_{s,t} phi_s phi_t ((K_s * K_t) star variance)(X, Y)`` (pixel covariances ignored, as afw).

    Parameters
    ----------
    variance : array_like, shape (H, W)
        float32 or float64 variance plane.
    term_kernels, order, model, xy_range, xy0, method
        As :func:`spatially_varying_correlate`.
    fill : float or 0-d array, keyword-only
        Edge-band value (default +inf, afw's edge variance).

    Returns
    -------
    jax.Array, shape (H, W)

    Raises
    ------
    ValueError
        As :func:`spatially_varying_correlate`.

    Notes
    -----
    The double sum over term pairs is regrouped exactly: ``phi_s phi_t`` is a combination of the
    afw terms of degree ``2 * order`` (``x^a x^c = x^(a+c)``, ``T_a T_c = (T_(a+c) + T_|a-c|) / 2``),
    so ``out = sum_q psi_q(X, Y) (L_q star variance)`` with ``L_q = sum_{s,t} C[q,s,t] K_s K_t``.
    That is ``(2 order + 1)(2 order + 2) / 2`` correlations instead of the ``P (P + 1) / 2``
    symmetric pairs (15 instead of 21 for order 2; equal for order 1).  The result is a sum of
    signed terms: in float32 its absolute error is ~1e-7 of the largest term, which matters only
    where ``K(X, Y)**2`` nearly cancels (e.g. a badly conditioned ``"polynomial"`` model at raw
    coordinates).  With one term this equals ``correlate_same(variance, K_0**2)``.

    **JAX.** As :func:`spatially_varying_correlate`.
    """
    variance, term_kernels, order, xy_range, xy0, method = _check_spatial(
        variance, term_kernels, order, model, xy_range, xy0, method, "variance"
    )
    return _sv_variance_jit(
        variance, term_kernels, xy0, jnp.asarray(fill, variance.dtype),
        order=order, model=model, xy_range=xy_range, method=method,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------


def _or_window(a, before, after, axis):
    """``out[x] = OR_{u=-before}^{after} a[x + u]`` along ``axis`` (zeros outside), by doubling.

    ``ceil(log2(width))`` passes instead of ``width``: windows of width 1, 2, 4, ... are built by
    OR-ing shifted copies, and the final window is the OR of two overlapping power-of-two windows.
    """
    n, w = a.shape[axis], before + after + 1
    if w == 1:
        return a
    cfg = [(0, 0, 0)] * a.ndim
    cfg[axis] = (before, after, 0)
    p = lax.pad(a, jnp.zeros((), a.dtype), cfg)
    width = 1
    while 2 * width <= w:
        m = p.shape[axis]
        p = lax.slice_in_dim(p, 0, m - width, axis=axis) | lax.slice_in_dim(p, width, m, axis=axis)
        width *= 2
    return lax.slice_in_dim(p, 0, n, axis=axis) | lax.slice_in_dim(p, w - width, w - width + n, axis=axis)


def _grow_box(mask, kernel_shape):
    (b, t), (left, right) = _band(kernel_shape)
    return _or_window(_or_window(mask, left, right, axis=1), b, t, axis=0)


def _grow_general(mask, footprint):
    """Any footprint, one footprint row at a time.

    A footprint row that is all True costs one pass (a shifted copy of the x-window OR, computed
    once); in other rows each True pixel costs one shifted OR and False pixels are skipped.
    """
    (h, w), (kh, kw) = mask.shape, footprint.shape
    (b, t), (left, right) = _band(footprint.shape)
    padded_y = jnp.pad(mask, ((b, t), (0, 0)))
    padded = jnp.pad(padded_y, ((0, 0), (left, right)))
    row_or = _or_window(padded_y, left, right, axis=1)  # OR over a whole kernel row, (h + kh - 1, w)

    def row(j, acc):
        def full(acc):
            return acc | lax.dynamic_slice_in_dim(row_or, j, h, axis=0)

        def partial(acc):
            def pixel(i, acc):
                return lax.cond(
                    footprint[j, i], lambda a: a | lax.dynamic_slice(padded, (j, i), (h, w)), lambda a: a, acc
                )

            return lax.fori_loop(0, kw, pixel, acc)

        return lax.cond(jnp.all(footprint[j]), full, partial, acc)

    return lax.fori_loop(0, kh, row, jnp.zeros_like(mask))


def _grow(mask, footprint):
    return lax.cond(
        jnp.all(footprint),
        lambda m, f: _grow_box(m, f.shape),
        _grow_general,
        mask, footprint,
    )  # fmt: skip


_grow_mask_jit = jax.jit(_grow)


def _check_mask(mask, shape=None):
    mask = jnp.asarray(mask)
    _check_2d(mask, "mask")
    if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
        msg = f"mask must be an integer (bit-plane) array, got dtype {mask.dtype}; use .astype(np.int32)"
        raise ValueError(msg)
    if shape is not None and mask.shape != tuple(shape):
        msg = f"mask shape {mask.shape} must equal the image shape {tuple(shape)}"
        raise ValueError(msg)
    return mask.astype(jnp.int32)


def grow_mask(mask: Int[ArrayLike, "H W"], footprint: Bool[ArrayLike, "Kh Kw"]) -> Int[Array, "H W"]:
    """Bitwise OR of a mask over a kernel footprint (afw mask propagation through a convolution).

    ``out(X, Y) = OR_{(u, v): footprint[v + ctrY, u + ctrX]} mask(X + u, Y + v)`` with
    ``ctr = K // 2``; pixels outside the image contribute nothing.

    Parameters
    ----------
    mask : array_like, shape (H, W)
        Integer bit-plane mask (cast to int32; bool is accepted).
    footprint : array_like of bool, shape (Kh, Kw)
        Where the kernel is non-zero (e.g. ``kernel != 0``); no larger than the image.

    Returns
    -------
    jax.Array, shape (H, W), int32
        The grown mask, full size (no edge band here).

    Raises
    ------
    ValueError
        Wrong ndim, non-integer mask, footprint larger than the mask.

    Notes
    -----
    A full (all-True) footprint, the usual case, is separable: OR along x, then along y, each with
    ``ceil(log2(K))`` shifted ORs (window doubling).  Any other footprint goes row by row: one pass
    per all-True footprint row and one pass per True pixel of the other rows (False pixels are
    skipped), so a footprint whose every row is partial costs ``~Kh * Kw`` passes.

    **JAX.** Static: shapes.  The footprint is traced; the two paths are the branches of a
    ``lax.cond`` (under ``jax.vmap`` with a batched footprint both branches run).  Not differentiable
    (integers).

    Examples
    --------
    >>> m = jnp.zeros((3, 5), jnp.int32).at[1, 2].set(4)
    >>> grow_mask(m, jnp.array([[True, True, False]]))[1].tolist()  # offsets u = -1, 0
    [0, 0, 4, 4, 0]
    """
    mask = _check_mask(mask)
    footprint = jnp.asarray(footprint)
    _check_2d(footprint, "footprint", "(Kh, Kw)")
    good_box_slices(mask.shape, footprint.shape)
    return _grow_mask_jit(mask, footprint.astype(bool))


# --------------------------------------------------------------------------------------
# masked images
# --------------------------------------------------------------------------------------


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
    valid_fn = _sv_image_valid if kind == "image" else _sv_variance_valid
    valid = valid_fn(
        _zero_nonfinite(plane), term_kernels, xy0, order=order, model=model, xy_range=xy_range, method=method
    )
    return _finish_plane(plane, valid, _footprint(term_kernels), kind)


@functools.partial(jax.jit, static_argnames=("no_data",))
def _masked_mask_jit(mask, kernels, *, no_data):
    footprint = _footprint(kernels)
    rows, cols = good_box_slices(mask.shape, footprint.shape)
    return _pad_band(_grow(mask, footprint)[rows, cols], footprint.shape, jnp.asarray(no_data, jnp.int32))


def _check_variance(variance, image):
    variance = _float_array(variance, "variance")
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
