"""Alard–Lupton decorrelation afterburner (DMTN-021, ip_diffim ``DecorrelateALKernelTask``) in JAX.

An Alard–Lupton (AL) difference is ``D = I − κ ⋆ T − b``: science image I (white noise of
variance σ_I²), template T (σ_T²), PSF-matching kernel κ and background b.  ``⋆`` is afw's
convolution, a **cross-correlation**: ``(κ ⋆ T)(X, Y) = Σ_{u,v} κ(u, v) T(X + u, Y + v)`` with the
kernel image indexed ``[v + ctr, u + ctr]``, ``ctr = w // 2``.  The template term has the
noise power spectrum σ_T² |κ̂(k)|², so the noise of D is correlated.  Reiss & Lupton (DMTN-021,
§2, eq. 1) whiten it with one post-subtraction convolution by φ,

    φ̂(k) = sqrt( (σ_I² + σ_T² κ_sum²) / (σ_I² + σ_T² |κ̂(k)|²) ),

after which D has the white power spectrum σ_I² + σ_T² κ_sum² (κ_sum = Σκ; DMTN-021 writes the
formula for a unit-sum κ, the numerator keeps φ̂(0) = 1, i.e. fluxes, for any sum, as ip_diffim's
``computeDiffimCorrection`` does).  The PSF of the decorrelated difference is φ ⊛ P_I
(DMTN-021 §2, eq. 2).

Orientation: with κ̂ the DFT of the *centre-origin* kernel image (``psf_to_otf``), the transfer
function of "κ ⋆" is conj(κ̂).  φ̂ depends only on |κ̂|², so it is real and even: φ is
point-symmetric and convolving or correlating with it is the same.  The orientation matters only
for the template-path kernel of the full variance propagation (transfer function conj(κ̂) φ̂).

Hats are 2-D DFTs with numpy's convention; half spectra (``rfft2`` layout) are used throughout.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._checks import (
    check_2d,
    check_choice,
    check_fft_shape,
    check_odd_stamp,
    check_scalar_or_shape,
    check_shape,
    working_dtype,
)
from ._numerics import PRECISION, safe_divide, safe_rsqrt, tiny
from .fft import crop_center_origin, fast_fft_shape, half_spectrum_weights, psf_to_otf, stamp_idft_matrices
from .stats import clipped_stats

__all__ = [
    "PAD_MODES",
    "VARIANCE_MODES",
    "DecorrelationResult",
    "decorrelate",
    "decorrelation_kernel",
    "decorrelation_kernel_ft",
    "default_fft_shape",
    "score_image",
]

#: Accepted ``pad_mode`` values of :func:`decorrelate`.
PAD_MODES = ("constant", "reflect")

#: Accepted ``variance_mode`` values of :func:`decorrelate` (used with variance planes only).
VARIANCE_MODES = ("estimate", "propagate")


class DecorrelationResult(NamedTuple):
    """Outputs of :func:`decorrelate` (a NamedTuple, hence a pytree).

    Attributes
    ----------
    image : (H, W)
        Decorrelated difference φ ⊛ D (DMTN-021 §2, eq. 1); NaN where ``valid`` is False.
    variance : (H, W)
        Variance plane of ``image`` (see :func:`decorrelate`, "Variance"); +inf where ``valid``
        is False (afw's convention for unusable pixels).
    psf : (Kh, Kw) or None
        PSF of ``image``, φ ⊛ P_I cut to the stamp of ``science_psf`` and normalised to sum 1
        (DMTN-021 §2, eq. 2); None when no ``science_psf`` was given.
    kernel_ft : (Fh, Fw // 2 + 1)
        φ̂ on the half-spectrum (``rfft2``) grid of ``fft_shape``; real.
    valid : (H, W) bool
        Pixels whose difference and variances were finite and not masked; the others were
        replaced by the mean of the valid pixels before the FFT.
    science_variance, template_variance : ()
        The scalar noise levels σ_I², σ_T² used in φ̂ (the given scalars, or the clipped means of
        the given variance planes).
    """

    image: Float[Array, "H W"]
    variance: Float[Array, "H W"]
    psf: Float[Array, "Kh Kw"] | None
    kernel_ft: Float[Array, "Fh Fwr"]
    valid: Bool[Array, "H W"]
    science_variance: Float[Array, ""]
    template_variance: Float[Array, ""]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _bool_mask(mask, shape):
    """``mask`` as a bool array of the image ``shape`` (None stays None)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask, bool)
    check_shape(mask, "mask", shape)
    return mask


def _check_levels(svar, tvar, fft_shape):
    """Scalars or half-spectrum noise power spectra of the ``fft_shape`` grid."""
    half = (fft_shape[0], fft_shape[1] // 2 + 1) if fft_shape is not None else None
    for name, v in (("science_variance", svar), ("template_variance", tvar)):
        if v.ndim and v.shape != half:
            msg = (
                f"{name} must be a scalar or a noise power spectrum of the half grid {half} of fft_shape,"
                f" got shape {v.shape}"
            )
            raise ValueError(msg)


def _full_mean(half, fft_shape):
    """Mean over the full DFT grid of a real, even function of frequency given on the half grid."""
    fh, fw = fft_shape
    per_row = jnp.sum(jnp.asarray(half_spectrum_weights(fw), half.dtype) * half, axis=1)
    return jnp.sum(per_row) / (fh * fw)


def _stamp_from_half_spectrum(spec, fft_shape, stamp_shape):
    """``crop_center_origin(irfft2(spec, s=fft_shape), stamp_shape)`` with two skinny matrix products."""
    cdtype = spec.dtype
    ey, ex = (jnp.asarray(m, cdtype) for m in stamp_idft_matrices(fft_shape, stamp_shape))
    mm = functools.partial(jnp.matmul, precision=PRECISION)
    return mm(ey, mm(spec, ex)).real


def _phi_hat(kernel, svar, tvar, fft_shape):
    """φ̂ (half spectrum) and κ̂ on ``fft_shape``; see :func:`decorrelation_kernel_ft`."""
    eps = tiny(kernel.dtype)
    k_hat = psf_to_otf(kernel, fft_shape)
    k_abs2 = k_hat.real**2 + k_hat.imag**2
    k_sum = jnp.sum(kernel)
    # scalars, or noise power spectra on the half grid (their k = 0 term gives the white level)
    s0 = svar if svar.ndim == 0 else svar[0, 0]
    t0 = tvar if tvar.ndim == 0 else tvar[0, 0]
    num = s0 + t0 * k_sum**2
    den = svar + tvar * k_abs2
    ok = (den > eps) & (num > eps)
    # double where: the unused branch sees 1, so values and gradients stay finite
    phi = jnp.sqrt(safe_divide(num, den, fill=1, where=ok))
    return phi.astype(kernel.dtype), k_hat


# --------------------------------------------------------------------------------------
# decorrelation kernel
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fft_shape",))
def _kernel_ft_jit(kernel, svar, tvar, *, fft_shape):
    return _phi_hat(kernel, svar, tvar, fft_shape)[0]


def decorrelation_kernel_ft(
    matching_kernel: Float[ArrayLike, "Kh Kw"],
    science_variance: Float[ArrayLike, ""] | Float[ArrayLike, "Fh Fwr"],
    template_variance: Float[ArrayLike, ""] | Float[ArrayLike, "Fh Fwr"],
    *,
    fft_shape: tuple[int, int],
) -> Float[Array, "Fh Fwr"]:
    r"""Transfer function φ̂ of the AL decorrelation kernel on a half-spectrum DFT grid.

    .. math::

        \hat\phi(k) = \sqrt{\frac{\sigma_I^2 + \sigma_T^2\,\kappa_{\rm sum}^2}
                                 {\sigma_I^2 + \sigma_T^2\,|\hat\kappa(k)|^2}}

    (DMTN-021 §2, eq. 1, generalised to a kernel of any sum κ_sum = Σκ as in ip_diffim's
    ``computeDiffimCorrection``: the kernel is **not** renormalised; the numerator makes
    φ̂(0) = 1, so fluxes are preserved and the whitened noise has variance
    σ_I² + σ_T² κ_sum²).  This equals DMTN-021's formula for the unit-sum kernel κ / κ_sum with the
    template variance σ_T² κ_sum² of the flux-scaled template.

    Parameters
    ----------
    matching_kernel : array_like, shape (Kh, Kw)
        AL PSF-matching kernel image κ (odd-sized, afw layout: pixel ``[v + Kh // 2, u + Kw // 2]``
        is the weight of offset (u, v)), e.g. the spatial kernel evaluated at the image centre.
        Only |κ̂| enters, so the orientation (correlation vs convolution) does not matter here.
    science_variance, template_variance : float, 0-d array or array of shape (Fh, Fw // 2 + 1)
        σ_I², σ_T²: mean noise variances of the image that was *not* convolved (the science image
        in ip_diffim's default convolveTemplate mode) and of the image that was convolved by κ.
        Either may instead be a noise power spectrum N(k) = E|n̂(k)|² / (Fh Fw) on the half grid
        (σ² for white noise of variance σ², σ² |K̂|² for white noise convolved by K): then
        σ² → N(k) in the denominator and N(0) in the numerator, i.e. φ̂ whitens
        N_I(k) + N_T(k) |κ̂(k)|² (e.g. stacks of PSF-matched exposures, as SFFT's decorrelation
        does; an extension, not in DMTN-021 or ip_diffim).
    fft_shape : (int, int), keyword-only
        DFT grid ``(Fh, Fw)`` (static), >= the kernel shape.

    Returns
    -------
    jax.Array, shape (Fh, Fw // 2 + 1)
        φ̂, real (dtype of the kernel), on the ``rfft2`` half grid of ``fft_shape``.

    Raises
    ------
    ValueError
        For a kernel that is not 2-D and odd-sized, variances of the wrong shape or a too-small grid.

    Notes
    -----
    Where the numerator or the denominator is below ``100 * finfo(dtype).tiny`` (possible only
    with a zero science variance) φ̂ is set to 1 (no correction), through a double ``where``, so
    values and gradients stay finite.  With σ_I² > 0, φ̂ is bounded by
    sqrt(1 + σ_T² κ_sum² / σ_I²) (ip_diffim warns when σ_T² / σ_I² > 1e8).

    **JAX**: ``fft_shape`` and the kernel shape are static; differentiable in the kernel and the
    two variances.  κ̂ is a separable DFT of the stamp (:func:`~jaxdiff.core.fft.psf_to_otf`).

    References
    ----------
    Reiss, D. J. & Lupton, R. H. 2016, DMTN-021 "Implementation of Image Difference
    Decorrelation", §2, eq. 1 (https://dmtn-021.lsst.io).

    Examples
    --------
    >>> delta = jnp.zeros((5, 5)).at[2, 2].set(1.0)
    >>> phi = decorrelation_kernel_ft(delta, 1.0, 4.0, fft_shape=(8, 8))
    >>> phi.shape, bool(jnp.allclose(phi, 1.0))
    ((8, 5), True)
    """
    dtype = working_dtype(matching_kernel, "matching_kernel")
    kernel, svar, tvar = (
        jnp.asarray(a, dtype) for a in (matching_kernel, science_variance, template_variance)
    )
    check_odd_stamp(kernel, "matching_kernel")
    fft_shape = check_fft_shape(fft_shape, kernel.shape)
    _check_levels(svar, tvar, fft_shape)
    return _kernel_ft_jit(kernel, svar, tvar, fft_shape=fft_shape)


@functools.partial(jax.jit, static_argnames=("size", "fft_shape"))
def _kernel_jit(kernel, svar, tvar, *, size, fft_shape):
    phi = _phi_hat(kernel, svar, tvar, fft_shape)[0]
    return crop_center_origin(jnp.fft.irfft2(phi, s=fft_shape), size)


def decorrelation_kernel(
    matching_kernel: Float[ArrayLike, "Kh Kw"],
    science_variance: Float[ArrayLike, ""] | Float[ArrayLike, "Fh Fwr"],
    template_variance: Float[ArrayLike, ""] | Float[ArrayLike, "Fh Fwr"],
    *,
    size: int | tuple[int, int] | None = None,
    fft_shape: tuple[int, int] | None = None,
) -> Float[Array, "S S"]:
    """Real-space AL decorrelation kernel φ (odd-sized, centred, afw layout).

    The inverse DFT of :func:`decorrelation_kernel_ft` cut to a centred stamp.  φ is
    point-symmetric (φ̂ is real and even), so the stamp is the same for afw's correlation
    convention and for a true convolution; its sum is φ̂(0) = 1 up to the truncated tails (not
    renormalised here).

    Parameters
    ----------
    matching_kernel : array_like, shape (Kh, Kw)
        AL matching kernel κ (see :func:`decorrelation_kernel_ft`).
    science_variance, template_variance : float, 0-d array or noise power spectrum
        σ_I² and σ_T² (see :func:`decorrelation_kernel_ft`; spectra need an explicit ``fft_shape``).
    size : int or (int, int), optional, keyword-only
        Odd stamp size (static).  Default ``2 * max(Kh, Kw) + 1``: φ decays about
        exponentially, on the scale of κ (for a Gaussian κ of σ 1.5 px, to ~1e-5 of its peak at
        20 px), so this keeps all but a negligible part of it.
    fft_shape : (int, int), optional, keyword-only
        DFT grid on which φ is computed (static); default ``fast_fft_shape(4 * size)``.  φ on
        a finite grid is periodic; the default keeps aliasing of the tails negligible.

    Returns
    -------
    jax.Array, shape (S, S) (or ``size``)
        φ, centre pixel ``(S // 2, S // 2)``, dtype of the kernel.

    Raises
    ------
    ValueError
        For an even ``size``, a too-small ``fft_shape`` or invalid inputs.

    Notes
    -----
    **JAX**: ``size``, ``fft_shape`` and the kernel shape are static; differentiable in the
    kernel and variances.  Meant for users and task metadata; :func:`decorrelate` applies φ̂
    in Fourier space directly.

    References
    ----------
    Reiss & Lupton 2016, DMTN-021, §2, eq. 1.

    Examples
    --------
    >>> delta = jnp.zeros((3, 3)).at[1, 1].set(1.0)
    >>> phi = decorrelation_kernel(delta, 1.0, 1.0)
    >>> phi.shape, round(float(phi[3, 3]), 6), round(float(jnp.abs(phi).sum()), 6)
    ((7, 7), 1.0, 1.0)
    """
    dtype = working_dtype(matching_kernel, "matching_kernel")
    kernel, svar, tvar = (
        jnp.asarray(a, dtype) for a in (matching_kernel, science_variance, template_variance)
    )
    check_odd_stamp(kernel, "matching_kernel")
    if (svar.ndim or tvar.ndim) and fft_shape is None:
        msg = "noise power spectra need the fft_shape of their grid"
        raise ValueError(msg)
    if size is None:
        size = 2 * max(kernel.shape) + 1
    size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if len(size) != 2 or any(s % 2 == 0 or s < 1 for s in size):
        msg = f"size must be odd and positive, got {size}"
        raise ValueError(msg)
    if fft_shape is None:
        fft_shape = fast_fft_shape([4 * max(s, k) for s, k in zip(size, kernel.shape, strict=True)])
    fft_shape = check_fft_shape(fft_shape, [max(s, k) for s, k in zip(size, kernel.shape, strict=True)])
    _check_levels(svar, tvar, fft_shape)
    return _kernel_jit(kernel, svar, tvar, size=size, fft_shape=fft_shape)


# --------------------------------------------------------------------------------------
# decorrelate
# --------------------------------------------------------------------------------------


def default_fft_shape(image_shape: Sequence[int], *stamp_shapes: Sequence[int]) -> tuple[int, int]:
    """FFT grid used by :func:`decorrelate` and :func:`score_image` when ``fft_shape`` is not given.

    ``fast_fft_shape(image_shape + 2 * border)`` with ``border`` the largest dimension of the
    given stamps (matching kernel, PSF): at least a full stamp of padding on each side, so the
    wrap-around of the periodic DFT does not reach the image (ip_diffim uses
    ``image + kernel - 1`` in total, rounded up to even).

    Examples
    --------
    >>> default_fft_shape((256, 256), (21, 21), (25, 25))
    (320, 320)
    """
    border = max((max(int(k) for k in s) for s in stamp_shapes), default=0)
    return fast_fft_shape([int(n) + 2 * border for n in image_shape])


def _pad_fn(shape, fft_shape, pad_mode):
    """Return ``pad(a, fill)`` (image at offset ``(F - n) // 2``) and ``crop(a)``."""
    (h, w), (fh, fw) = shape, fft_shape
    y0, x0 = (fh - h) // 2, (fw - w) // 2
    pads = ((y0, fh - h - y0), (x0, fw - w - x0))
    if pad_mode == "reflect":  # static gather indices
        rows, cols = (np.pad(np.arange(n), p, mode="reflect") for n, p in zip((h, w), pads, strict=True))

    def pad(a, fill):
        if (fh, fw) == (h, w):
            return a
        if pad_mode == "constant":
            return jnp.pad(a, pads, constant_values=fill)
        return jnp.take(jnp.take(a, rows, axis=0), cols, axis=1)

    def crop(a):
        return a if (fh, fw) == (h, w) else a[y0 : y0 + h, x0 : x0 + w]

    return pad, crop


@functools.partial(jax.jit, static_argnames=("fft_shape", "pad_mode", "variance_mode"))
def _decorrelate_jit(difference, variance, kernel, svar, tvar, psf, mask, *, fft_shape, pad_mode,
                     variance_mode):  # fmt: skip
    dtype = difference.dtype
    eps = tiny(dtype)
    shape = difference.shape
    pad, crop = _pad_fn(shape, fft_shape, pad_mode)

    def inv(a):
        return jnp.fft.irfft2(a, s=fft_shape).astype(dtype)

    planes = svar.ndim == 2 or tvar.ndim == 2
    valid = jnp.isfinite(difference) & jnp.isfinite(variance)
    if planes:
        vs = jnp.broadcast_to(svar, shape)
        vt = jnp.broadcast_to(tvar, shape)
        valid = valid & jnp.isfinite(vs) & jnp.isfinite(vt)
    if mask is not None:
        valid = valid & ~mask
    n_valid = jnp.sum(valid)
    fill = jnp.sum(jnp.where(valid, difference, 0)) / jnp.maximum(n_valid, 1).astype(dtype)
    d0 = jnp.where(valid, difference, fill)

    if planes:

        def level(v):  # ip_diffim computeVarianceMean: 3-sigma, 3-iteration clipped mean
            return v if v.ndim == 0 else clipped_stats(v, jnp.isfinite(v) if mask is None else ~mask).mean

        s_level, t_level = level(svar), level(tvar)
    else:
        s_level, t_level = svar, tvar

    phi, k_hat = _phi_hat(kernel, s_level, t_level, fft_shape)
    image = crop(inv(phi * jnp.fft.rfft2(pad(d0, fill))))
    image = jnp.where(valid, image, jnp.nan)

    k_abs2 = k_hat.real**2 + k_hat.imag**2
    if not planes:
        # whitened level over the input level, for the same local science/template variance ratio
        k_sum, k_sq_sum = jnp.sum(kernel), jnp.sum(kernel**2)
        num = s_level + t_level * k_sum**2
        den = s_level + t_level * k_sq_sum
        ok = (den > eps) & (num > eps)
        new_var = variance * safe_divide(num, den, fill=1, where=ok)
    elif variance_mode == "estimate":
        # ip_diffim estimateVariancePlane: V_I Σφ² + V_T Σ(κ⋆φ)² (Parseval on the DFT grid)
        w1 = _full_mean(phi**2, fft_shape)
        w2 = _full_mean(phi**2 * k_abs2, fft_shape)
        vs0 = jnp.where(jnp.isfinite(vs), vs, s_level)
        vt0 = jnp.where(jnp.isfinite(vt), vt, t_level)
        new_var = w1 * vs0 + w2 * vt0
    else:
        # ip_diffim calculateVariancePlane: φ² ⊛ V_I + g² ⊛ V_T, ĝ = conj(κ̂) φ̂ (κ⋆ is a correlation)
        vs0 = jnp.where(jnp.isfinite(vs), vs, s_level)
        vt0 = jnp.where(jnp.isfinite(vt), vt, t_level)
        g1 = inv(phi.astype(k_hat.dtype))
        g2 = inv(jnp.conj(k_hat) * phi)
        new_var = crop(inv(jnp.fft.rfft2(g1**2) * jnp.fft.rfft2(pad(vs0, s_level))
                           + jnp.fft.rfft2(g2**2) * jnp.fft.rfft2(pad(vt0, t_level))))  # fmt: skip
    new_var = jnp.where(valid, new_var, jnp.inf)

    new_psf = None
    if psf is not None:
        p_hat = psf_to_otf(psf / jnp.sum(psf), fft_shape)
        stamp = _stamp_from_half_spectrum(p_hat * phi, fft_shape, psf.shape)
        new_psf = stamp / jnp.sum(stamp)
    return DecorrelationResult(image, new_var, new_psf, phi, valid, jnp.asarray(s_level, dtype),
                               jnp.asarray(t_level, dtype))  # fmt: skip


def decorrelate(
    difference: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"] | Float[ArrayLike, ""],
    matching_kernel: Float[ArrayLike, "Kh Kw"],
    science_variance: Float[ArrayLike, ""] | Float[ArrayLike, "H W"],
    template_variance: Float[ArrayLike, ""] | Float[ArrayLike, "H W"],
    *,
    science_psf: Float[ArrayLike, "Ph Pw"] | None = None,
    mask: Bool[ArrayLike, "H W"] | None = None,
    variance_mode: str = "estimate",
    fft_shape: tuple[int, int] | None = None,
    pad_mode: str = "constant",
) -> DecorrelationResult:
    r"""Decorrelate an Alard–Lupton difference image (DMTN-021 afterburner).

    Computes φ̂ (:func:`decorrelation_kernel_ft`) from κ and the scalar noise levels, and returns
    D' = IDFT(φ̂ · DFT(D)) (DMTN-021 §2, eq. 1), its variance plane and its PSF
    P_D = φ ⊛ P_I (eq. 2).  As in ip_diffim, one constant κ (e.g. the spatial kernel at the
    image centre) and constant noise levels are used for the whole image.

    Parameters
    ----------
    difference : array_like, shape (H, W)
        AL difference D = I − κ ⋆ T − b (NaN / inf allowed, e.g. the convolution edge band).
    variance : array_like, shape (H, W), or scalar
        Variance plane of ``difference`` (V_I + κ² ⋆ V_T for an afw convolution).
    matching_kernel : array_like, shape (Kh, Kw)
        The PSF-matching kernel κ (odd-sized, afw layout, any sum; not renormalised).
    science_variance, template_variance : scalar or array_like of shape (H, W)
        Noise of the unconvolved (science) and the κ-convolved (template) image.  Scalars:
        σ_I², σ_T² used in φ̂ directly.  Variance planes (one may be a scalar): φ̂ uses their
        3σ-clipped means over finite, unmasked pixels (ip_diffim ``computeVarianceMean``), and
        the output variance is recomputed from the planes (see "Variance").  For ip_diffim's
        convolveScience mode pass the template's noise as ``science_variance`` and the science
        image's as ``template_variance``.
    science_psf : array_like, shape (Ph, Pw), optional, keyword-only
        PSF image of the uncorrected difference (the science PSF in convolveTemplate mode),
        odd-sized; any normalisation.  If given, ``psf`` of the result is its decorrelated version.
    mask : bool array_like, shape (H, W), optional, keyword-only
        True for pixels to exclude (treated like non-finite ones).
    variance_mode : {"estimate", "propagate"}, keyword-only
        With variance planes only (static): "estimate" (ip_diffim's default
        ``estimateVariancePlane``) or "propagate" (``completeVarPlanePropagation=True``).
    fft_shape : (int, int), optional, keyword-only
        DFT grid (static); default :func:`default_fft_shape` with the kernel and PSF stamps.
    pad_mode : {"constant", "reflect"}, keyword-only
        How the image is extended to ``fft_shape`` (static).  "constant" (default) pads with the
        same fill value as the invalid pixels.

    Returns
    -------
    DecorrelationResult
        See :class:`DecorrelationResult`; dtype of ``difference``.

    Raises
    ------
    ValueError
        For inconsistent shapes, even-sized stamps, a too-small ``fft_shape`` or unknown modes.

    Notes
    -----
    **Invalid pixels.**  Pixels where the difference, its variance or a given science / template
    variance plane is non-finite, or ``mask`` is True, are replaced by the mean of the valid pixels before the DFT (ip_diffim uses the
    ``nanmean`` of the image), so the NaN edge band of an AL difference neither poisons the
    transform nor creates a step; they come back as NaN (image) and +inf (variance), and
    ``valid`` marks them.  The padding uses the same fill value by default: a difference image
    has (near-)zero expectation, so a constant border adds no edge step even with a residual
    background offset, and it is ip_diffim's choice up to that offset (``padCenterOriginArray``
    zero-pads after the ``nanmean`` fill).  "reflect" mirrors the noise, whose correlation with
    its own mirror image the whitening cannot remove.  Within about a kernel width of the edge
    (or of an invalid band) both are approximations: on simulated AL differences (κ Gaussian
    σ = 1.5 px, σ_T / σ_I = 3) the decorrelated std of the outermost rows stays within ~5 % of
    the whitened level for both modes, and the lag-1 correlation of the edge row is ~0.02.

    **Variance.**  The whitened noise is white with variance σ_I² + σ_T² κ_sum² (Parseval:
    Σ_k φ̂² (σ_I² + σ_T² |κ̂|²) / N).  With scalar ``science_variance`` / ``template_variance``
    the input ``variance`` plane is rescaled,
    V' = V · (σ_I² + σ_T² κ_sum²) / (σ_I² + σ_T² Σκ²), which equals ip_diffim's estimate wherever
    the local science/template variance ratio is σ_I² / σ_T².  With variance planes V_I, V_T
    (ip_diffim's approach, which discards the difference's variance plane):
    "estimate" gives V' = V_I Σφ² + V_T Σ(κ ⋆ φ)² (``estimateVariancePlane``; the sums are
    Σ_k φ̂² / N and Σ_k φ̂² |κ̂|² / N), "propagate" gives V' = φ² ⊛ V_I + g² ⊛ V_T with
    ĝ = conj(κ̂) φ̂ (``calculateVariancePlane``, here with the correlation orientation of κ; ip_diffim
    uses κ̂, which matters only for spatially varying V_T).  Non-finite plane values are replaced
    by the level before propagation (as ip_diffim does; those pixels are invalid); in
    "propagate" the planes are padded with their level (ip_diffim pads with 0).
    In convolveScience mode ip_diffim divides the difference by κ_sum; the image and the rescaled
    variance need nothing more, but planes-mode variances must then be divided by κ_sum².

    **PSF.**  P_D = φ ⊛ P_I on the same DFT grid as the image, cut to the stamp of ``science_psf``
    and normalised to sum 1 (ip_diffim ``computeCorrectedDiffimPsf``).  φ is point-symmetric, so
    no flip is involved.

    **JAX**: the work is one ``jax.jit``-compiled function.  Static: all shapes, whether the
    variances are planes, whether ``science_psf`` / ``mask`` are given, ``variance_mode``,
    ``fft_shape`` and ``pad_mode``.  Traced and differentiable (finite values and gradients
    through double ``where`` guards): the difference, variances and kernel and PSF images.  The
    clipped means of variance planes are differentiable in the values, not the clip masks.
    Cost: one ``rfft2`` and one ``irfft2`` of ``fft_shape`` (planes + "propagate": 7 more).

    References
    ----------
    Reiss, D. J. & Lupton, R. H. 2016, DMTN-021, §2, eqs. 1–2 (https://dmtn-021.lsst.io);
    ip_diffim ``imageDecorrelation.py`` (``DecorrelateALKernelTask``); variance planes: DMTN-179 §5.

    Examples
    --------
    >>> import numpy as np
    >>> d = np.random.default_rng(0).normal(size=(32, 32))
    >>> delta = np.zeros((5, 5)); delta[2, 2] = 1.0
    >>> res = decorrelate(d, 2.0, delta, 1.0, 1.0)  # delta kernel: nothing to decorrelate
    >>> bool(jnp.allclose(res.image, d, atol=1e-5)), float(res.variance[0, 0])
    (True, 2.0)
    """
    dtype = working_dtype(difference, "difference")
    as_arr = functools.partial(jnp.asarray, dtype=dtype)
    difference, variance, kernel, svar, tvar = map(
        as_arr, (difference, variance, matching_kernel, science_variance, template_variance)
    )
    shape = difference.shape
    check_2d(difference, "difference")
    for name, v in (("variance", variance), ("science_variance", svar), ("template_variance", tvar)):
        check_scalar_or_shape(v, name, shape)
    variance = jnp.broadcast_to(variance, shape)
    check_odd_stamp(kernel, "matching_kernel", shape)
    psf = None
    if science_psf is not None:
        psf = as_arr(science_psf)
        check_odd_stamp(psf, "science_psf", shape)
    mask = _bool_mask(mask, shape)
    check_choice(variance_mode, "variance_mode", VARIANCE_MODES)
    check_choice(pad_mode, "pad_mode", PAD_MODES)
    stamps = [kernel.shape] + ([psf.shape] if psf is not None else [])
    if fft_shape is None:
        fft_shape = default_fft_shape(shape, *stamps)
    fft_shape = check_fft_shape(fft_shape, shape)
    return _decorrelate_jit(difference, variance, kernel, svar, tvar, psf, mask, fft_shape=fft_shape,
                            pad_mode=pad_mode, variance_mode=variance_mode)  # fmt: skip


# --------------------------------------------------------------------------------------
# score image
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fft_shape",))
def _score_jit(difference, variance, psf, mask, *, fft_shape):
    dtype = difference.dtype
    pad, crop = _pad_fn(difference.shape, fft_shape, "constant")
    valid = jnp.isfinite(difference) & jnp.isfinite(variance)
    if mask is not None:
        valid = valid & ~mask
    d0 = jnp.where(valid, difference, 0)
    v0 = jnp.where(valid, variance, 0)
    p_hat = psf_to_otf(psf, fft_shape)
    p2_hat = psf_to_otf(psf**2, fft_shape)

    def correlate(otf, a):  # Σ_u p(u) a(x + u): conj of the centre-origin transfer function
        return crop(jnp.fft.irfft2(jnp.conj(otf) * jnp.fft.rfft2(pad(a, 0)), s=fft_shape)).astype(dtype)

    num = correlate(p_hat, d0)
    den = correlate(p2_hat, v0)
    ok = valid & (den > tiny(dtype))
    score = jnp.where(ok, num * safe_rsqrt(den, where=ok), 0)  # double where: finite values and gradients
    return jnp.where(valid, score, jnp.nan)


def score_image(
    difference: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"] | Float[ArrayLike, ""],
    psf: Float[ArrayLike, "Ph Pw"],
    *,
    mask: Bool[ArrayLike, "H W"] | None = None,
    fft_shape: tuple[int, int] | None = None,
) -> Float[Array, "H W"]:
    r"""Matched-filter detection score (in sigma) of a difference image with white noise.

    .. math::

        S(x) = \frac{\sum_u P(u)\, D(x + u)}{\sqrt{\sum_u P(u)^2\, V(x + u)}}

    (sums over valid pixels; u is the offset of PSF pixel ``[v + Ph // 2, u + Pw // 2]``).  For
    white noise of variance σ² this is S = Σ P·D / (σ sqrt(Σ P²)): under pure noise S has unit
    variance at every pixel, and at the position of a point source of flux F it has the
    expectation F sqrt(ΣP²) / σ (for P normalised to sum 1), the S/N of PSF-fit photometry.
    Use it after :func:`decorrelate` (with the decorrelated PSF and variance), where the noise
    is white; on a correlated difference it is not in units of sigma.

    Parameters
    ----------
    difference : array_like, shape (H, W)
        Difference image (NaN / inf allowed).
    variance : array_like, shape (H, W), or scalar
        Per-pixel noise variance of ``difference``.
    psf : array_like, shape (Ph, Pw)
        PSF image of ``difference``, odd-sized, centred; any normalisation (S does not depend on it).
    mask : bool array_like, shape (H, W), optional, keyword-only
        True for pixels to exclude.
    fft_shape : (int, int), optional, keyword-only
        DFT grid (static); default ``fast_fft_shape(image + PSF shape)``, enough zero padding for
        a linear (non-wrapping) correlation.

    Returns
    -------
    jax.Array, shape (H, W)
        S, NaN at pixels that are non-finite (difference or variance) or masked, 0 where the
        denominator vanishes.  Invalid pixels are left out of both sums (as zeros), so S stays
        in units of sigma next to them and at the image edges.

    Raises
    ------
    ValueError
        For inconsistent shapes, an even-sized PSF or a too-small ``fft_shape``.

    Notes
    -----
    Both sums are correlations computed with FFTs (zero padding): numerator with transfer
    function conj(P̂), denominator with conj(P̂²) (P̂ of the centre-origin stamp).  This is the
    per-pixel-variance generalisation of the matched filter of Zackay, Ofek & Gal-Yam 2016
    (eq. 12 for a noiseless reference; with per-pixel variances as ZOGY's eq. 25 normalises).

    **JAX**: shapes, ``fft_shape`` and whether ``mask`` is given are static; jit-compiled;
    differentiable in the difference, variance and PSF (a double ``where`` guards the square
    root).

    References
    ----------
    Reiss & Lupton 2016, DMTN-021 (detection on decorrelated differences); Zackay, Ofek &
    Gal-Yam 2016, ApJ 830, 27, eqs. 12 and 25.

    Examples
    --------
    >>> d = jnp.zeros((16, 16)).at[8, 8].set(3.0)
    >>> psf = jnp.zeros((3, 3)).at[1, 1].set(1.0)
    >>> float(score_image(d, 1.0, psf)[8, 8])
    3.0
    """
    dtype = working_dtype(difference, "difference")
    as_arr = functools.partial(jnp.asarray, dtype=dtype)
    difference, variance, psf = map(as_arr, (difference, variance, psf))
    shape = difference.shape
    check_2d(difference, "difference")
    check_scalar_or_shape(variance, "variance", shape)
    variance = jnp.broadcast_to(variance, shape)
    check_odd_stamp(psf, "psf", shape)
    mask = _bool_mask(mask, shape)
    if fft_shape is None:
        fft_shape = fast_fft_shape([n + k for n, k in zip(shape, psf.shape, strict=True)])
    fft_shape = check_fft_shape(fft_shape, [n + k - 1 for n, k in zip(shape, psf.shape, strict=True)])
    return _score_jit(difference, variance, psf, mask, fft_shape=fft_shape)
