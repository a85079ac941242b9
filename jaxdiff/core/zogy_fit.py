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

from ._numerics import PRECISION
from ._results import Status, flag
from .fft import fast_fft_shape, psf_to_otf
from .stats import masked_median

__all__ = ["FluxShiftFit", "fit_flux_ratio_shift", "fourier_shift"]


class FluxShiftFit(NamedTuple):
    """Result of :func:`fit_flux_ratio_shift`.

    ``flux_ratio`` is beta = F_n / F_r; ``shift`` = (s_x, s_y) in pixels is where the science
    image's sources sit relative to the template's (x = columns); ``*_err`` are 1-sigma errors
    from the least-squares covariance scaled by the residual variance; ``n_used`` counts the
    pixels in the last iteration.  ``status`` (int32 :class:`~jaxdiff.core._results.Status`) is
    ``too_few_pixels`` when no pixel passed the selection (the values are then NaN) and
    ``nonfinite_solution`` when the fitted values are not finite.
    """

    flux_ratio: jax.Array
    shift: jax.Array
    background: jax.Array
    flux_ratio_err: jax.Array
    shift_err: jax.Array
    n_used: jax.Array
    status: jax.Array


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
                         n_iter=4, fit_shift=True, snr_min=10.0):
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
        Gauss-Newton iterations (static).
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
    Every matrix product of the normal equations and of the solve uses ``precision=PRECISION``
    (:data:`jaxdiff.core._numerics.PRECISION`).

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
    # noise of the cross-convolved images (white noise through a unit-sum kernel)
    sig_n = jnp.sqrt(new_noise_var * jnp.sum(jnp.asarray(ref_psf, dtype) ** 2) / jnp.sum(ref_psf) ** 2)
    sig_r = jnp.sqrt(ref_noise_var * jnp.sum(jnp.asarray(new_psf, dtype) ** 2) / jnp.sum(new_psf) ** 2)
    fy, fx = _freqs(fft_shape, dtype)
    ok = jnp.ones((h, w), bool) if valid is None else valid
    ok = ok & jnp.isfinite(new_image) & jnp.isfinite(ref_image)
    n_med = masked_median(n_cc)

    def step(carry, _):
        shift, _prev = carry
        phase = jnp.exp(-2j * jnp.pi * (fx * shift[0] + fy * shift[1]))
        rs_hat = rp_hat * phase
        r_cc = crop(jnp.fft.irfft2(rs_hat, s=fft_shape))
        r_med = masked_median(r_cc)
        sel = ok & (r_cc - r_med > snr_min * sig_r) & (n_cc - n_med > snr_min * sig_n)
        cols = [r_cc, jnp.ones_like(r_cc)]
        if fit_shift:
            dx = crop(jnp.fft.irfft2(rs_hat * (2j * jnp.pi * fx), s=fft_shape))
            dy = crop(jnp.fft.irfft2(rs_hat * (2j * jnp.pi * fy), s=fft_shape))
            cols += [dx, dy]
        x = jnp.stack([jnp.where(sel, c, 0).ravel() for c in cols], axis=1)
        y = jnp.where(sel, n_cc, 0).ravel()
        a = jnp.matmul(x.T, x, precision=PRECISION)
        b = jnp.matmul(x.T, y, precision=PRECISION)
        n = jnp.sum(sel, dtype=jnp.int32)
        a = a + jnp.eye(a.shape[0], dtype=dtype) * (n == 0)  # keep the solve finite with no pixels
        a_inv = jnp.linalg.inv(a)  # one factorisation (no concurrent LAPACK calls)
        coef = jnp.matmul(a_inv, b, precision=PRECISION)
        resid = y - jnp.matmul(x, coef, precision=PRECISION)
        dof = jnp.maximum(n - coef.shape[0], 1).astype(dtype)
        cov = a_inv * (jnp.sum(resid**2) / dof)
        beta = coef[0]
        if fit_shift:
            delta = jnp.stack([-coef[2], -coef[3]]) / beta
            errs = jnp.sqrt(jnp.abs(jnp.stack([cov[2, 2], cov[3, 3]]))) / jnp.abs(beta)
        else:
            delta = jnp.zeros(2, dtype)
            errs = jnp.zeros(2, dtype)
        out = (beta, coef[1], jnp.sqrt(jnp.abs(cov[0, 0])), errs, n)
        return (shift + delta, out), None

    init = (jnp.zeros(2, dtype), (jnp.asarray(1.0, dtype), jnp.asarray(0.0, dtype), jnp.asarray(0.0, dtype),
                                  jnp.zeros(2, dtype), jnp.asarray(0, jnp.int32)))
    (shift, (beta, gamma, beta_err, shift_err, n)), _ = jax.lax.scan(step, init, None, length=n_iter)
    # the last step's increment was already applied: its errors describe the final shift
    bad = n == 0
    nan = jnp.asarray(jnp.nan, dtype)
    finite = jnp.isfinite(beta) & jnp.all(jnp.isfinite(shift)) & jnp.isfinite(gamma)
    status = flag(bad, Status.too_few_pixels) | flag(~bad & ~finite, Status.nonfinite_solution)
    return FluxShiftFit(
        flux_ratio=jnp.where(bad, nan, beta), shift=jnp.where(bad, nan, shift),
        background=jnp.where(bad, nan, gamma), flux_ratio_err=jnp.where(bad, nan, beta_err),
        shift_err=jnp.where(bad, nan, shift_err), n_used=n, status=status,
    )
