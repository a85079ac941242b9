"""Fit analytic PSF models (:mod:`.psf_models`) to star stamps, one stamp at a time (``vmap`` for many).

The model of a stamp is ``psf(params) + sky`` with a constant local sky fitted jointly (optional),
weighted by the inverse variance of each pixel; masked, non-finite and zero-variance pixels carry
no weight.  The fit is Levenberg–Marquardt (:func:`.least_squares.levenberg_marquardt`) unless an
``optax`` optimiser is passed.  Errors are the Gauss–Newton (Hessian) errors: with the true
per-pixel variances they are the standard deviations of the fitted parameters.
"""

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .least_squares import FitResult, levenberg_marquardt, minimize_optax
from .psf_models import MODELS

__all__ = ["fit_psf_stamp", "initial_psf_params", "parameter_names"]


def parameter_names(model: str, *, fit_sky: bool = True) -> tuple[str, ...]:
    """Names of the fitted parameter vector of :func:`fit_psf_stamp` (the model's, then ``"sky"``)."""
    if model not in MODELS:
        msg = f"model must be one of {sorted(MODELS)}, got {model!r}"
        raise ValueError(msg)
    return MODELS[model][1] + (("sky",) if fit_sky else ())


class _Weights(NamedTuple):
    sqrt_w: Array
    n_valid: Array


def _weights(stamp, variance, mask):
    valid = jnp.isfinite(stamp) & jnp.isfinite(variance) & (variance > 0)
    if mask is not None:
        valid = valid & jnp.asarray(mask, bool)
    inv = jnp.where(valid, 1 / jnp.where(valid, variance, 1), 0)
    return _Weights(jnp.sqrt(inv), jnp.sum(valid))


def initial_psf_params(
    stamp: Float[ArrayLike, "H W"], *, model: str = "moffat", beta: float = 3.0, fit_sky: bool = True,
    mask: Bool[ArrayLike, "H W"] | None = None,
) -> Float[Array, " P"]:  # fmt: skip
    """Return starting parameters from the stamp's moments (pure, vmappable).

    Sky: the median of the one-pixel border (0 with ``fit_sky=False``); flux: the sky-subtracted
    sum; centroid: the flux-weighted mean position of the positive pixels; size and ellipticity:
    their second moments (sigma = det^(1/4); Moffat FWHM = 2.3548 sigma with ``beta``).
    """
    s = jnp.asarray(stamp)
    dtype = s.dtype if jnp.issubdtype(s.dtype, jnp.floating) else jnp.float32
    s = s.astype(dtype)
    h, w = s.shape
    ok = jnp.isfinite(s) if mask is None else jnp.isfinite(s) & jnp.asarray(mask, bool)
    border = jnp.zeros((h, w), bool).at[0].set(True).at[-1].set(True).at[:, 0].set(True).at[:, -1].set(True)
    sky = jnp.nanmedian(jnp.where(border & ok, s, jnp.nan)) if fit_sky else jnp.zeros((), dtype)
    sky = jnp.where(jnp.isfinite(sky), sky, 0)
    f = jnp.where(ok, s - sky, 0)
    pos = jnp.maximum(f, 0)
    tot = jnp.maximum(jnp.sum(pos), jnp.finfo(dtype).tiny)
    ys, xs = jnp.arange(h, dtype=dtype)[:, None], jnp.arange(w, dtype=dtype)[None, :]
    x0, y0 = jnp.sum(pos * xs) / tot, jnp.sum(pos * ys) / tot
    ixx = jnp.sum(pos * (xs - x0) ** 2) / tot
    iyy = jnp.sum(pos * (ys - y0) ** 2) / tot
    ixy = jnp.sum(pos * (xs - x0) * (ys - y0)) / tot
    det = jnp.maximum(ixx * iyy - ixy * ixy, 1e-4)
    sigma = jnp.clip(det**0.25, 0.5, min(h, w) / 4)
    tr = jnp.maximum(ixx + iyy, 1e-4)
    e1 = jnp.clip((ixx - iyy) / tr, -0.5, 0.5)
    e2 = jnp.clip(2 * ixy / tr, -0.5, 0.5)
    flux = jnp.sum(f)
    if model == "gaussian":
        p = [flux, x0, y0, sigma, e1, e2]
    elif model == "moffat":
        p = [flux, x0, y0, 2.3548 * sigma, jnp.asarray(beta, dtype), e1, e2]
    else:
        msg = f"model must be one of {sorted(MODELS)}, got {model!r}"
        raise ValueError(msg)
    if fit_sky:
        p.append(sky)
    return jnp.stack([jnp.asarray(v, dtype) for v in p])


def fit_psf_stamp(
    stamp: Float[ArrayLike, "H W"],
    variance: Float[ArrayLike, "H W"],
    p0: Float[ArrayLike, " P"] | None = None,
    *,
    model: str = "moffat",
    fit_sky: bool = True,
    mask: Bool[ArrayLike, "H W"] | None = None,
    optimizer=None,
    n_iter: int | None = None,
    n_sub: int = 4,
    tol: float | None = None,
) -> FitResult:
    """Fit a PSF model (plus a constant sky) to one star stamp by weighted least squares.

    Minimises ``chi² = sum(w (stamp - psf(p) - sky)²)``, ``w = 1 / variance`` on the usable pixels.

    Parameters
    ----------
    stamp, variance : array_like, shape (H, W)
        Pixel values and their variances (same units).
    p0 : array_like, optional
        Starting parameters in the order of :func:`parameter_names`; default
        :func:`initial_psf_params`.
    model : {"moffat", "gaussian"}, keyword-only
        The PSF model (static).
    fit_sky : bool, keyword-only
        Fit a constant local sky as the last parameter (static).
    mask : bool array_like, optional, keyword-only
        Pixels to use (True = use); non-finite pixels and non-positive variances are excluded
        anyway.
    optimizer : optax.GradientTransformation, optional, keyword-only
        Use this gradient optimiser instead of Levenberg–Marquardt.
    n_iter : int, optional, keyword-only
        Iterations (static; default 40 for Levenberg–Marquardt, 2000 for an optimiser).
    n_sub : int, keyword-only
        Quadrature nodes per axis and pixel of the model (static).
    tol : float, optional, keyword-only
        Convergence threshold on the Gauss–Newton decrement (default
        :func:`~jaxdiff.core.fit.least_squares.default_tol`).

    Returns
    -------
    FitResult
        Parameters in the order of :func:`parameter_names`, Hessian errors, chi², dof, loss
        history and status (``too_few_pixels`` when fewer usable pixels than parameters).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxdiff.core.fit.psf_models import gaussian_stamp
    >>> truth = jnp.array([1000.0, 7.3, 6.8, 1.6, 0.05, -0.02])
    >>> img = gaussian_stamp(truth, (15, 15)) + 10.0
    >>> res = fit_psf_stamp(img, jnp.ones((15, 15)), model="gaussian")
    >>> bool(jnp.allclose(res.params[:6], truth, atol=1e-3)), int(res.status)
    (True, 0)
    """
    if model not in MODELS:
        msg = f"model must be one of {sorted(MODELS)}, got {model!r}"
        raise ValueError(msg)
    stamp = jnp.asarray(stamp)
    dtype = stamp.dtype if jnp.issubdtype(stamp.dtype, jnp.floating) else jnp.float32
    stamp = stamp.astype(dtype)
    variance = jnp.asarray(variance, dtype)
    if stamp.ndim != 2 or variance.shape != stamp.shape:
        msg = f"stamp and variance must be 2-D of one shape, got {stamp.shape} and {variance.shape}"
        raise ValueError(msg)
    fn, names = MODELS[model]
    n_model = len(names)
    wts = _weights(stamp, variance, mask)
    data = jnp.where(wts.sqrt_w > 0, stamp, 0)
    if p0 is None:
        p0 = initial_psf_params(stamp, model=model, fit_sky=fit_sky, mask=None if mask is None else mask)
    p0 = jnp.asarray(p0, dtype)
    expected = n_model + int(fit_sky)
    if p0.shape != (expected,):
        msg = f"p0 must have {expected} parameters {parameter_names(model, fit_sky=fit_sky)}, got shape {p0.shape}"
        raise ValueError(msg)

    def residual(p):
        m = fn(p[:n_model], stamp.shape, n_sub=n_sub)
        if fit_sky:
            m = m + p[n_model]
        return (data - m) * wts.sqrt_w

    if optimizer is None:
        return levenberg_marquardt(residual, p0, n_iter=40 if n_iter is None else n_iter, n_data=wts.n_valid,
                                   tol=tol)  # fmt: skip
    return minimize_optax(residual, p0, optimizer, n_iter=2000 if n_iter is None else n_iter, n_data=wts.n_valid,
                          tol=tol)  # fmt: skip
