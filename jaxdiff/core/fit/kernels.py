"""Alard–Lupton matching kernels fitted by gradient: minimise the chi² of the difference directly.

The least-squares path of the AL task (:func:`jaxdiff.core.kernel_fit.fit_stamps` and
:func:`jaxdiff.core.kernel_fit.solve_spatial`) builds normal equations from a design matrix.  Here
the same spatial model (Alard 2000, eqs. 2–4: basis coefficients ``a_m(x, y)`` and a background
``b(x, y)`` that are polynomials in position) is fitted by differentiating the difference itself,

    chi²(theta) = sum_c sum_pix w_c (I_c - K_c(theta) ⋆ T_c - b_c(theta))²,

with ``K_c = sum_m a_m(x_c, y_c) B_m`` at each stamp centre, the afw correlation ``⋆`` (as in
:func:`jaxdiff.core.kernel_fit.stamp_difference`) and ``w_c`` the stamp weight (the inverse of the
median variance of the stamp, LSST's ``constantVarianceWeighting``, or per pixel).  The residuals
are computed by the convolution, never from a design matrix, so the same loss accepts any kernel
parametrisation a user writes (a free pixel kernel with a smoothness penalty, for example,
:func:`pixel_kernel_residuals`).  The minimiser is the core's Levenberg–Marquardt (exact Jacobian by
forward-mode differentiation) or any ``optax`` optimiser (:mod:`.least_squares`).

The parameter vector ``theta`` has the layout of :func:`jaxdiff.core.kernel_fit.solve_spatial`: with
``constant_first_term`` the first basis kernel has one constant coefficient, every other basis
kernel ``n_spatial_terms(kernel_order)`` coefficients, then the background coefficients.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._numerics import PRECISION
from ..kernel_fit import _fft_correlate_valid, _good, _spatial_layout
from ..kernel_fit import unpack_spatial_parameters as _unpack
from ..spatial import n_spatial_terms, spatial_basis
from .least_squares import FitResult, levenberg_marquardt, minimize_optax

__all__ = ["KernelFit", "fit_spatial_kernel", "pixel_kernel_residuals", "spatial_kernel_residuals",
           "unpack_spatial_parameters"]  # fmt: skip


class KernelFit(NamedTuple):
    """Result of :func:`fit_spatial_kernel`.

    ``kernel_coeffs`` (n_basis, n_kernel_terms) and ``background_coeffs`` (n_bg_terms,) in the
    layout of :class:`jaxdiff.core.kernel_fit.SpatialSolution`; ``fit`` the :class:`FitResult` of
    the parameter vector (errors from the Gauss–Newton Hessian, loss history, status).
    """

    kernel_coeffs: Float[Array, "B S"]
    background_coeffs: Float[Array, " Q"]
    fit: FitResult


def _n_params(n_basis, kernel_order, bg_order, fit_background, constant_first_term):
    n_bt = n_spatial_terms(bg_order) if fit_background else 0
    return _spatial_layout(n_basis, n_spatial_terms(kernel_order), n_bt, fit_background, constant_first_term)[3]


def unpack_spatial_parameters(theta, *, n_basis, kernel_order, bg_order, fit_background, constant_first_term):
    """Split ``theta`` into kernel coefficients (n_basis, n_kernel_terms) and background coefficients.

    :func:`jaxdiff.core.kernel_fit.unpack_spatial_parameters` (``bg_order`` is implied by the length).
    """
    del bg_order
    return _unpack(theta, n_basis=n_basis, kernel_order=kernel_order, fit_background=fit_background,
                   constant_first_term=constant_first_term)  # fmt: skip


def _stamp_weights(template_variances, science_variances, valid, hw, constant_variance):
    var = template_variances + science_variances
    if constant_variance:
        med = jnp.median(var.reshape(var.shape[0], -1), axis=1)
        ok = valid & jnp.isfinite(med) & (med > 0)
        w = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, med, 1)), 0)
        return jnp.broadcast_to(w[:, None, None], (var.shape[0], var.shape[1] - 2 * hw, var.shape[2] - 2 * hw))
    good = var[:, hw : var.shape[1] - hw, hw : var.shape[2] - hw]
    ok = valid[:, None, None] & jnp.isfinite(good) & (good > 0)
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, good, 1)), 0)


def spatial_kernel_residuals(
    templates: Float[ArrayLike, "N S S2"],
    sciences: Float[ArrayLike, "N S S2"],
    template_variances: Float[ArrayLike, "N S S2"],
    science_variances: Float[ArrayLike, "N S S2"],
    x: Float[ArrayLike, " N"],
    y: Float[ArrayLike, " N"],
    valid: Bool[ArrayLike, " N"],
    basis_images: Float[ArrayLike, "B K K"],
    *,
    kernel_order: int,
    bg_order: int,
    fit_background: bool = True,
    constant_first_term: bool = True,
    model: str = "chebyshev1",
    xy_range=None,
    constant_variance: bool = True,
) -> Callable[[Array], Array]:
    """Return ``theta -> r``, the weighted differences of every stamp (shape (N, G, G2)).

    ``r_c = sqrt(w_c) (I_c - K_c(theta) ⋆ T_c - b_c(theta))`` on the stamps' good regions
    (zero for ``valid=False``); ``sum(r²)`` is the chi² the AL least-squares solution minimises.
    The stamps are those of the AL candidates (template ``T``, science ``I``, kernel-sized border
    included); ``x, y`` their centres in PARENT pixels.  Pure and differentiable in ``theta``.
    """
    basis_images = jnp.asarray(basis_images)
    dtype = basis_images.dtype
    templates, sciences = jnp.asarray(templates, dtype), jnp.asarray(sciences, dtype)
    tv, sv = jnp.asarray(template_variances, dtype), jnp.asarray(science_variances, dtype)
    valid = jnp.asarray(valid, bool)
    n_basis = basis_images.shape[0]
    hw = basis_images.shape[-1] // 2
    sw = _stamp_weights(tv, sv, valid, hw, constant_variance)
    phi = spatial_basis(jnp.asarray(x, dtype), jnp.asarray(y, dtype), kernel_order, model=model,
                        xy_range=xy_range).astype(dtype)  # fmt: skip
    psi = (spatial_basis(jnp.asarray(x, dtype), jnp.asarray(y, dtype), bg_order, model=model, xy_range=xy_range)
           .astype(dtype) if fit_background else jnp.zeros((phi.shape[0], 1), dtype))  # fmt: skip
    layout = dict(n_basis=n_basis, kernel_order=kernel_order, bg_order=bg_order, fit_background=fit_background,
                  constant_first_term=constant_first_term)  # fmt: skip

    def residual(theta):
        kc, bc = unpack_spatial_parameters(theta, **layout)
        coeffs = jnp.matmul(phi, kc.T, precision=PRECISION)  # (N, B); the constant term phi[:, 0] is 1
        kernels = jnp.einsum("nb,bij->nij", coeffs, basis_images, precision=PRECISION)
        bgs = jnp.matmul(psi, bc, precision=PRECISION) if fit_background else jnp.zeros(phi.shape[0], dtype)

        def one(t, s, k, bg):
            return _good(s, hw) - _fft_correlate_valid(t, k) - bg

        diff = jax.vmap(one)(templates, sciences, kernels, bgs)
        return jnp.where(sw > 0, diff, 0) * sw

    return residual


def fit_spatial_kernel(
    templates, sciences, template_variances, science_variances, x, y, valid, basis_images, *,
    kernel_order: int, bg_order: int, fit_background: bool = True, constant_first_term: bool = True,
    model: str = "chebyshev1", xy_range=None, constant_variance: bool = True, theta0=None, optimizer=None,
    n_iter: int | None = None, tol: float | None = None,
) -> KernelFit:  # fmt: skip
    """Fit the AL spatial kernel and background by minimising the chi² of the difference.

    Parameters
    ----------
    templates, sciences, template_variances, science_variances : array_like, shape (N, S, S2)
        Candidate stamps (see :func:`spatial_kernel_residuals`).
    x, y : array_like, shape (N,)
        Stamp centres, PARENT pixels.
    valid : bool array_like, shape (N,)
        Stamps that enter the fit.
    basis_images : array_like, shape (B, K, K)
        The kernel basis (e.g. ``FitBasis.images``).
    kernel_order, bg_order, fit_background, constant_first_term, model, xy_range : keyword-only
        The spatial model, as in :func:`jaxdiff.core.kernel_fit.solve_spatial` (static).
    constant_variance : bool, keyword-only
        One weight per stamp (LSST's default) or per pixel.
    theta0 : array_like, optional, keyword-only
        Starting parameters (default: the delta-like start, first coefficient 1, the rest 0).
    optimizer : optax.GradientTransformation, optional, keyword-only
        A gradient optimiser instead of Levenberg–Marquardt (slow to converge on the
        ill-conditioned AL bases; Levenberg–Marquardt reaches the least-squares solution).
    n_iter, tol : keyword-only
        As in :func:`jaxdiff.core.fit.levenberg_marquardt` (default 30 iterations) or
        :func:`jaxdiff.core.fit.minimize_optax` (default 2000).

    Returns
    -------
    KernelFit
    """
    basis_images = jnp.asarray(basis_images)
    layout = dict(kernel_order=kernel_order, bg_order=bg_order, fit_background=fit_background,
                  constant_first_term=constant_first_term)  # fmt: skip
    residual = spatial_kernel_residuals(templates, sciences, template_variances, science_variances, x, y, valid,
                                        basis_images, model=model, xy_range=xy_range,
                                        constant_variance=constant_variance, **layout)  # fmt: skip
    n_par = _n_params(basis_images.shape[0], **layout)
    if theta0 is None:
        theta0 = jnp.zeros(n_par, basis_images.dtype).at[0].set(1.0)
    theta0 = jnp.asarray(theta0, basis_images.dtype)
    hw = basis_images.shape[-1] // 2
    s = jnp.asarray(templates).shape
    n_data = jnp.sum(jnp.asarray(valid)) * (s[1] - 2 * hw) * (s[2] - 2 * hw)
    if optimizer is None:
        res = levenberg_marquardt(residual, theta0, n_iter=30 if n_iter is None else n_iter, n_data=n_data, tol=tol)
    else:
        res = minimize_optax(residual, theta0, optimizer, n_iter=2000 if n_iter is None else n_iter, n_data=n_data,
                             tol=tol)  # fmt: skip
    kc, bc = unpack_spatial_parameters(res.params, n_basis=basis_images.shape[0], **layout)
    return KernelFit(kc, bc, res)


def pixel_kernel_residuals(
    template: Float[ArrayLike, "S S2"], science: Float[ArrayLike, "S S2"], variance: Float[ArrayLike, "S S2"], *,
    kernel_size: int, smoothness: float = 0.0,
) -> Callable[[Array], Array]:  # fmt: skip
    """Residuals of a free pixel kernel (plus a constant background) with a smoothness penalty.

    ``theta = (kernel.ravel(), background)``; the residual vector is the weighted difference
    ``(I - K ⋆ T - b) / sqrt(V)`` on the good region followed by ``sqrt(smoothness)`` times the
    discrete Laplacian of ``K`` (zero-padded), a Tikhonov penalty as in Becker et al. (2012, eq. 8)
    with a free strength.  Minimise ``sum(r²)`` with :func:`jaxdiff.core.fit.levenberg_marquardt`.
    """
    template, science = jnp.asarray(template), jnp.asarray(science)
    dtype = template.dtype
    variance = jnp.asarray(variance, dtype)
    hw = kernel_size // 2
    good = variance[hw : variance.shape[0] - hw, hw : variance.shape[1] - hw]
    ok = jnp.isfinite(good) & (good > 0)
    sw = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, good, 1)), 0)
    root = jnp.sqrt(jnp.asarray(smoothness, dtype))

    def residual(theta):
        k = theta[:-1].reshape(kernel_size, kernel_size)
        diff = _good(science, hw) - _fft_correlate_valid(template, k) - theta[-1]
        kp = jnp.pad(k, 1)
        lap = kp[:-2, 1:-1] + kp[2:, 1:-1] + kp[1:-1, :-2] + kp[1:-1, 2:] - 4 * k
        return jnp.concatenate([(jnp.where(ok, diff, 0) * sw).ravel(), root * lap.ravel()])

    return residual
