"""Fit the flux ratio beta = F_n / F_r and a sub-pixel shift (Zackay, Ofek & Gal-Yam 2016, secs. 3.3, 5.2).

For users without photometric calibrations: cross-convolve the images so that they share one PSF,
``N' = N * P_r`` and ``R' = R * P_n`` (Zackay, Ofek & Gal-Yam 2016, sec. 3.3: then
``N' = beta R'`` for constant sources), and solve on high-S/N pixels the linearised model

    N'(x) = beta R'(x) - beta s . grad R'(x) + gamma

for ``beta``, the shift ``s = (s_x, s_y)`` of the science image relative to the template and a
constant ``gamma``.  The template is then shifted by the current ``s`` in Fourier space and the fit
repeated (Gauss-Newton), so the result is not limited to the linear regime.  Pixels are selected
where both cross-convolved images exceed ``snr_min`` times their noise, which keeps the
errors-in-variables bias of the slope below ``1/snr_min^2`` per pixel.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._results import Status, flag
from .fft import fast_fft_shape, psf_to_otf
from .fit.least_squares import FitResult, levenberg_marquardt
from .stats import masked_median

__all__ = ["FluxShiftFit", "fit_flux_ratio_shift", "fourier_shift"]


class FluxShiftFit(NamedTuple):
    """Result of :func:`fit_flux_ratio_shift`.

    ``flux_ratio`` is beta = F_n / F_r; ``shift`` = (s_x, s_y) in pixels is where the science
    image's sources sit relative to the template's (x = columns); ``*_err`` are 1-sigma errors
    from the least-squares covariance scaled by the residual variance; ``n_used`` counts the
    selected pixels; ``fit`` is the underlying :class:`~jaxdiff.core.fit.FitResult` (parameters
    ``(beta, s_x, s_y, gamma)`` or ``(beta, gamma)``, unscaled covariance, loss history).
    ``status`` (int32 :class:`~jaxdiff.core._results.Status`) is ``too_few_pixels`` when fewer
    pixels than parameters passed the selection (the values are then NaN),
    ``nonfinite_solution`` when the fitted values are not finite, and carries the fit's
    ``not_converged`` / ``singular`` flags.
    """

    flux_ratio: jax.Array
    shift: jax.Array
    background: jax.Array
    flux_ratio_err: jax.Array
    shift_err: jax.Array
    n_used: jax.Array
    status: jax.Array
    fit: FitResult


def _freqs(fft_shape, dtype):
    fy = jnp.fft.fftfreq(fft_shape[0]).astype(dtype)[:, None]
    fx = jnp.fft.rfftfreq(fft_shape[1]).astype(dtype)[None, :]
    return fy, fx


def fourier_shift(image, shift, *, fft_shape=None):
    """Shift ``image`` by ``shift = (s_x, s_y)`` pixels (band-limited, reflect-padded).

    ``out(x, y) = image(x - s_x, y - s_y)``: a source at ``x`` moves to ``x + s_x``.
    Differentiable in ``image`` and ``shift``.
    """
    image = jnp.asarray(image)
    h, w = image.shape
    if fft_shape is None:
        fft_shape = fast_fft_shape((h + 16, w + 16))
    y0, x0 = (fft_shape[0] - h) // 2, (fft_shape[1] - w) // 2
    padded = jnp.pad(image, ((y0, fft_shape[0] - h - y0), (x0, fft_shape[1] - w - x0)), mode="reflect")
    fy, fx = _freqs(fft_shape, image.dtype)
    phase = jnp.exp(-2j * jnp.pi * (fx * shift[0] + fy * shift[1]))
    out = jnp.fft.irfft2(jnp.fft.rfft2(padded) * phase, s=fft_shape)
    return out[y0 : y0 + h, x0 : x0 + w].astype(image.dtype)


@functools.partial(jax.jit, static_argnames=("n_iter", "fit_shift", "snr_min"))
def fit_flux_ratio_shift(new_image, ref_image, new_psf, ref_psf, new_noise_var, ref_noise_var, valid=None, *,
                         n_iter=20, fit_shift=True, snr_min=10.0):
    """Fit beta = F_n/F_r, a sub-pixel shift and a constant offset between two images.

    Parameters
    ----------
    new_image, ref_image : array, shape (H, W)
        Science (N) and template (R) images, background-subtracted or not (the offset is fitted).
    new_psf, ref_psf : array
        Odd, centred PSF stamps.
    new_noise_var, ref_noise_var : float
        Scalar pixel-noise variances sigma_n^2, sigma_r^2.
    valid : bool array, shape (H, W), optional
        Pixels that may be used (e.g. not saturated or masked).
    n_iter : int, keyword-only
        Most Levenberg–Marquardt iterations (static; the fit stops earlier once converged).
    fit_shift : bool, keyword-only
        Fit the shift too (else only beta and the offset).
    snr_min : float, keyword-only
        Pixel selection: both cross-convolved images above ``snr_min`` sigma.

    Returns
    -------
    FluxShiftFit
        Failures are reported in its ``status`` (no pixel selected, non-finite fit), not raised.

    Notes
    -----
    **JAX.** jit-compiled; static ``n_iter``, ``fit_shift``, ``snr_min``; differentiable almost
    everywhere (the pixel selection is a discrete mask).
    """
    new_image = jnp.asarray(new_image)
    dtype = new_image.dtype
    ref_image = jnp.asarray(ref_image, dtype)
    h, w = new_image.shape
    border = max(*new_psf.shape, *ref_psf.shape)
    fft_shape = fast_fft_shape((h + 2 * border, w + 2 * border))
    y0, x0 = (fft_shape[0] - h) // 2, (fft_shape[1] - w) // 2
    pads = ((y0, fft_shape[0] - h - y0), (x0, fft_shape[1] - w - x0))

    def crop(a):
        return a[y0 : y0 + h, x0 : x0 + w]

    pn = psf_to_otf(jnp.asarray(new_psf, dtype) / jnp.sum(new_psf), fft_shape)
    pr = psf_to_otf(jnp.asarray(ref_psf, dtype) / jnp.sum(ref_psf), fft_shape)
    n_hat = jnp.fft.rfft2(jnp.pad(new_image, pads, mode="reflect"))
    r_hat = jnp.fft.rfft2(jnp.pad(ref_image, pads, mode="reflect"))
    n_cc = crop(jnp.fft.irfft2(n_hat * pr, s=fft_shape))
    rp_hat = r_hat * pn
    r_cc = crop(jnp.fft.irfft2(rp_hat, s=fft_shape))
    # noise of the cross-convolved images (white noise through a unit-sum kernel)
    sig_n = jnp.sqrt(new_noise_var * jnp.sum(jnp.asarray(ref_psf, dtype) ** 2) / jnp.sum(ref_psf) ** 2)
    sig_r = jnp.sqrt(ref_noise_var * jnp.sum(jnp.asarray(new_psf, dtype) ** 2) / jnp.sum(new_psf) ** 2)
    fy, fx = _freqs(fft_shape, dtype)
    ok = jnp.ones((h, w), bool) if valid is None else valid
    ok = ok & jnp.isfinite(new_image) & jnp.isfinite(ref_image)
    n_med, r_med = masked_median(n_cc), masked_median(r_cc)
    # near the edges the cross-convolved images depend on the padding (stars partly outside): skip
    # the pixels within the two PSF radii of an edge
    edge = max(new_psf.shape) // 2 + max(ref_psf.shape) // 2
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inner = (rows >= edge) & (rows < h - edge) & (cols >= edge) & (cols < w - edge)
    sel = ok & inner & (r_cc - r_med > snr_min * sig_r) & (n_cc - n_med > snr_min * sig_n)
    n_sel = jnp.sum(sel, dtype=jnp.int32)
    data = jnp.where(sel, n_cc, 0)
    # starting point: the straight-line fit N' = beta R' + gamma on the selected pixels
    m = jnp.maximum(n_sel, 1).astype(dtype)
    rm, nm = jnp.sum(jnp.where(sel, r_cc, 0)) / m, jnp.sum(data) / m
    srr = jnp.sum(jnp.where(sel, (r_cc - rm) ** 2, 0))
    beta0 = jnp.where(srr > 0, jnp.sum(jnp.where(sel, (r_cc - rm) * (n_cc - nm), 0)) / jnp.where(srr > 0, srr, 1), 1)
    beta0 = jnp.where(jnp.isfinite(beta0) & (beta0 > 0), beta0, 1)
    gamma0 = nm - beta0 * rm
    scale = jax.lax.rsqrt(sig_n**2 + (beta0 * sig_r) ** 2)
    scale = jnp.where(jnp.isfinite(scale), scale, 1).astype(dtype)

    def residual(p):
        if fit_shift:
            phase = jnp.exp(-2j * jnp.pi * (fx * p[1] + fy * p[2]))
            model = crop(jnp.fft.irfft2(rp_hat * phase, s=fft_shape))
        else:
            model = r_cc
        return jnp.where(sel, data - p[0] * model - p[-1], 0) * scale

    p0 = jnp.stack([beta0, 0.0, 0.0, gamma0] if fit_shift else [beta0, gamma0]).astype(dtype)
    res = levenberg_marquardt(residual, p0, n_iter=n_iter, n_data=n_sel)
    bad = n_sel < p0.shape[0] + 1
    # correlated pixels: errors scaled by the residual scatter
    inflate = jnp.sqrt(jnp.maximum(res.chi2 / jnp.maximum(res.dof, 1).astype(dtype), 1e-30))
    err = res.errors * inflate
    beta, gamma = res.params[0], res.params[-1]
    if fit_shift:
        shift, shift_err = res.params[1:3], err[1:3]
    else:
        shift, shift_err = jnp.zeros(2, dtype), jnp.zeros(2, dtype)
    nan = jnp.asarray(jnp.nan, dtype)
    finite = jnp.isfinite(beta) & jnp.all(jnp.isfinite(shift)) & jnp.isfinite(gamma)
    status = (flag(bad, Status.too_few_pixels) | flag(~bad & ~finite, Status.nonfinite_solution)
              | jnp.where(bad, 0, res.status & (Status.not_converged | Status.singular)).astype(jnp.int32))  # fmt: skip
    return FluxShiftFit(
        flux_ratio=jnp.where(bad, nan, beta), shift=jnp.where(bad, nan, shift),
        background=jnp.where(bad, nan, gamma), flux_ratio_err=jnp.where(bad, nan, err[0]),
        shift_err=jnp.where(bad, nan, shift_err), n_used=n_sel, status=status, fit=res,
    )
