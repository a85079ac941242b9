"""Fit a PSF through the ZOGY subtraction: differentiate the difference image with respect to the PSF.

ZOGY's proper difference (Zackay, Ofek & Gal-Yam 2016, eq. 13) of a constant scene,

    D̂ = F_r F_n T̂ (P̂_r P̂_n^true − P̂_n P̂_r) / sqrt(σ_n² F_r² |P̂_r|² + σ_r² F_n² |P̂_n|²) + noise,

vanishes, apart from its noise, exactly when the science PSF ``P_n`` given to it is the true one;
the noise part of ``D / sqrt(V_D)`` has unit variance whatever ``P_n`` is.  So the "difference
energy" ``sum(D² / V_D)`` over the image interior is minimal at the true PSF, and its gradient with
respect to the parameters of a PSF model flows through :func:`jaxdiff.core.zogy.zogy` (pure FFT
arithmetic, differentiable).  Mis-set PSFs leave dipoles and rings at every star, which is what
drives ZOGY's false positives once the FWHM is a few per cent wrong.

:func:`zogy_psf_residuals` returns the residual vector ``D / sqrt(V_D)`` as a function of the
parameters of any user PSF model (``psf_fn``); :func:`fit_psf_through_zogy` minimises it with the
core's Levenberg–Marquardt or an ``optax`` optimiser.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..zogy import zogy
from .least_squares import FitResult, levenberg_marquardt, minimize_optax

__all__ = ["fit_psf_through_zogy", "zogy_psf_residuals"]


def zogy_psf_residuals(
    new_image: Float[ArrayLike, "H W"],
    ref_image: Float[ArrayLike, "H W"],
    ref_psf: Float[ArrayLike, "K K"],
    psf_fn: Callable[[Array], Array],
    *,
    new_noise_var: float,
    ref_noise_var: float,
    f_new: float = 1.0,
    f_ref: float = 1.0,
    border: int | None = None,
    fit_new_psf: bool = True,
) -> Callable[[Array], Array]:
    """Return ``q -> D / sqrt(V_D)`` on the image interior, with the science PSF ``psf_fn(q)``.

    Parameters
    ----------
    new_image, ref_image : array_like, shape (H, W)
        Registered, background-subtracted science and template images.
    ref_psf : array_like, shape (K, K)
        Template PSF (odd, centred).
    psf_fn : callable
        ``q -> PSF stamp`` (odd, centred; any normalisation), differentiable, e.g.
        ``lambda q: gaussian_stamp(jnp.array([1, 12, 12, q[0], 0, 0]), (25, 25))``.
    new_noise_var, ref_noise_var : float, keyword-only
        Scalar pixel variances (the fast constant-variance path of :func:`jaxdiff.core.zogy.zogy`).
    f_new, f_ref : float, keyword-only
        Flux scalings.
    border : int, optional, keyword-only
        Pixels dropped at each edge (default: the PSF stamp size).
    fit_new_psf : bool, keyword-only
        ``psf_fn`` gives the science PSF (default); else it gives the template PSF and ``ref_psf``
        is taken as the science PSF.

    Returns
    -------
    callable
        Residuals ``(H - 2 border, W - 2 border)``; ``sum(r²)`` is the difference energy.
    """
    new_image = jnp.asarray(new_image)
    dtype = new_image.dtype
    ref_image = jnp.asarray(ref_image, dtype)
    fixed_psf = jnp.asarray(ref_psf, dtype)
    b = fixed_psf.shape[0] if border is None else int(border)
    h, w = new_image.shape

    def residual(q):
        p = jnp.asarray(psf_fn(q), dtype)
        pn, pr = (p, fixed_psf) if fit_new_psf else (fixed_psf, p)
        res = zogy(new_image, ref_image, pn, pr, new_noise_var, ref_noise_var, new_noise_var=new_noise_var,
                   ref_noise_var=ref_noise_var, f_new=f_new, f_ref=f_ref, calculate_score=False,
                   kernel_mode="full")  # fmt: skip
        var = res.difference_variance[b : h - b, b : w - b]
        ok = var > 0
        return jnp.where(ok, res.difference[b : h - b, b : w - b], 0) * jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, var, 1)), 0)

    return residual


def fit_psf_through_zogy(
    new_image, ref_image, ref_psf, psf_fn, q0, *, new_noise_var, ref_noise_var, f_new=1.0, f_ref=1.0,
    border=None, fit_new_psf=True, optimizer=None, n_iter=None, tol=None,
) -> FitResult:  # fmt: skip
    """Fit PSF-model parameters ``q`` by minimising ZOGY's difference energy ``sum(D²/V_D)``.

    See :func:`zogy_psf_residuals` for the arguments.  ``q0`` the starting parameters;
    ``optimizer`` an ``optax.GradientTransformation`` (default: Levenberg–Marquardt, 30 iterations).
    The returned errors are the Gauss–Newton errors of the difference energy (``D/sqrt(V_D)`` has
    unit variance), and ``chi2 / dof`` near 1 says the PSF explains the stars.
    """
    residual = zogy_psf_residuals(new_image, ref_image, ref_psf, psf_fn, new_noise_var=new_noise_var,
                                  ref_noise_var=ref_noise_var, f_new=f_new, f_ref=f_ref, border=border,
                                  fit_new_psf=fit_new_psf)  # fmt: skip
    q0 = jnp.asarray(q0, jnp.asarray(new_image).dtype)
    if optimizer is None:
        return levenberg_marquardt(residual, q0, n_iter=30 if n_iter is None else n_iter, tol=tol)
    return minimize_optax(residual, q0, optimizer, n_iter=500 if n_iter is None else n_iter, tol=tol)
