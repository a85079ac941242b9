"""Analytic PSF models as pure functions of a parameter vector, integrated over pixels.

Conventions
-----------
* Coordinates are pixel-index coordinates of the stamp: the centre of pixel ``[i, j]`` is at
  ``(x, y) = (j, i)`` (afw's convention: integer coordinates at pixel centres), x = columns.
* Ellipticity ``(e1, e2)``, ``e1² + e2² < 1``: the profile is a function of
  ``u² = d^T M^{-1} d`` with ``d = (x - x0, y - y0)`` and the unit-determinant shape matrix
  ``M = [[1 + e1, e2], [e2, 1 - e1]] / sqrt(1 - e1² - e2²)``, so the area (and the flux
  normalisation) does not depend on the ellipticity; for a Gaussian the second-moment matrix is
  ``sigma² M`` (Bernstein & Jarvis 2002, eq. 2.9, with ``e`` the distortion of ``M``).
* Pixel integration by Gauss–Legendre quadrature with ``n_sub`` nodes per axis and pixel
  (static): exact for polynomials of degree ``2 n_sub - 1`` over a pixel; 4 nodes give about
  1e-6 of the peak for a sigma of 1 px.

Parameter vectors (``float`` arrays, this order):

* Gaussian (:data:`GAUSSIAN_PARAMS`): flux, x0, y0, sigma, e1, e2;
* Moffat (:data:`MOFFAT_PARAMS`): flux, x0, y0, fwhm, beta, e1, e2; the Moffat (1969) profile
  ``I(u) = flux (beta - 1) / (pi alpha²) (1 + u²/alpha²)^-beta`` with
  ``fwhm = 2 alpha sqrt(2^(1/beta) - 1)``; beta > 1 (normalisable).

Everything is pure and jit/vmap/grad-able; the shape and ``n_sub`` are static.  Degenerate
points (zero ellipticity, a star at a pixel centre) have finite gradients; out-of-range
parameters (``|e| >= 1``, ``sigma <= 0``, ``beta <= 1``) are clamped inside the model, so a fit
that wanders there sees a finite, flat model rather than NaN.
"""

import functools

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["GAUSSIAN_PARAMS", "MODELS", "MOFFAT_PARAMS", "gaussian_stamp", "model_stamp", "moffat_stamp"]

#: Parameter order of :func:`gaussian_stamp`.
GAUSSIAN_PARAMS = ("flux", "x0", "y0", "sigma", "e1", "e2")
#: Parameter order of :func:`moffat_stamp`.
MOFFAT_PARAMS = ("flux", "x0", "y0", "fwhm", "beta", "e1", "e2")


@functools.lru_cache(maxsize=32)
def _gauss_legendre(n_sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (-0.5, 0.5) and weights (sum 1) for one pixel."""
    x, w = np.polynomial.legendre.leggauss(int(n_sub))
    return x / 2, w / 2


def _u2_grid(x0, y0, e1, e2, shape, n_sub, dtype):
    """Return ``u²`` at every quadrature node ``(n_sub, n_sub, H, W)`` and the node weights.

    Nodes come first so that the pixel axes stay contiguous for vectorised arithmetic; the
    weights have shape ``(n_sub, n_sub, 1, 1)``.
    """
    nodes, weights = _gauss_legendre(n_sub)
    h, w = shape
    ys = (jnp.asarray(nodes, dtype)[:, None] + jnp.arange(h, dtype=dtype)[None, :]) - y0  # (n, H)
    xs = (jnp.asarray(nodes, dtype)[:, None] + jnp.arange(w, dtype=dtype)[None, :]) - x0  # (n, W)
    e_sq = e1 * e1 + e2 * e2
    s = jnp.sqrt(jnp.maximum(1 - e_sq, 1e-6))  # |e| -> 1 clamped: finite model and gradient
    dy = ys[:, None, :, None]
    dx = xs[None, :, None, :]
    u2 = ((1 - e1) * dx * dx - 2 * e2 * dx * dy + (1 + e1) * dy * dy) / s
    wgt = jnp.asarray(np.outer(weights, weights)[:, :, None, None], dtype)
    return u2, wgt


def _integrate(profile, wgt):
    return jnp.sum(profile * wgt, axis=(0, 1))


def gaussian_stamp(
    params: Float[ArrayLike, "6"], shape: tuple[int, int], *, n_sub: int = 4
) -> Float[Array, "H W"]:
    """Pixel-integrated elliptical Gaussian of total flux ``flux`` (see the module conventions).

    Parameters
    ----------
    params : array_like, shape (6,)
        flux, x0, y0, sigma, e1, e2 (:data:`GAUSSIAN_PARAMS`).
    shape : (int, int)
        Stamp shape ``(H, W)`` (static).
    n_sub : int, keyword-only
        Gauss–Legendre nodes per axis and pixel (static).

    Returns
    -------
    jax.Array, shape (H, W)
        Flux per pixel; sums to ``flux`` when the stamp holds the whole profile.
    """
    p = jnp.asarray(params)
    dtype = p.dtype if jnp.issubdtype(p.dtype, jnp.floating) else jnp.float32
    p = p.astype(dtype)
    flux, x0, y0, sigma, e1, e2 = (p[i] for i in range(6))
    sigma = jnp.maximum(jnp.abs(sigma), 1e-3)
    u2, wgt = _u2_grid(x0, y0, e1, e2, shape, n_sub, dtype)
    norm = flux / (2 * jnp.pi * sigma * sigma)
    return norm * _integrate(jnp.exp(-0.5 * u2 / (sigma * sigma)), wgt)


def moffat_stamp(
    params: Float[ArrayLike, "7"], shape: tuple[int, int], *, n_sub: int = 4
) -> Float[Array, "H W"]:
    """Pixel-integrated elliptical Moffat profile of total flux ``flux`` (see the module conventions).

    Parameters
    ----------
    params : array_like, shape (7,)
        flux, x0, y0, fwhm, beta, e1, e2 (:data:`MOFFAT_PARAMS`).
    shape : (int, int)
        Stamp shape ``(H, W)`` (static).
    n_sub : int, keyword-only
        Gauss–Legendre nodes per axis and pixel (static).

    Returns
    -------
    jax.Array, shape (H, W)
        Flux per pixel (the wings beyond the stamp are not included: a Moffat of beta 2.5 keeps
        a few per cent of its flux outside a stamp of 5 FWHM).
    """
    p = jnp.asarray(params)
    dtype = p.dtype if jnp.issubdtype(p.dtype, jnp.floating) else jnp.float32
    p = p.astype(dtype)
    flux, x0, y0, fwhm, beta, e1, e2 = (p[i] for i in range(7))
    beta = jnp.maximum(beta, 1.0 + 1e-3)
    fwhm = jnp.maximum(jnp.abs(fwhm), 1e-3)
    alpha = fwhm / (2 * jnp.sqrt(2 ** (1 / beta) - 1))
    u2, wgt = _u2_grid(x0, y0, e1, e2, shape, n_sub, dtype)
    norm = flux * (beta - 1) / (jnp.pi * alpha * alpha)
    return norm * _integrate(jnp.exp(-beta * jnp.log1p(u2 / (alpha * alpha))), wgt)


#: Models by name: (stamp function, parameter names).
MODELS = {"gaussian": (gaussian_stamp, GAUSSIAN_PARAMS), "moffat": (moffat_stamp, MOFFAT_PARAMS)}


def model_stamp(model: str, params: Float[ArrayLike, " P"], shape: tuple[int, int], *, n_sub: int = 4):
    """Evaluate the named model (``"gaussian"`` or ``"moffat"``) on a stamp; see :data:`MODELS`."""
    if model not in MODELS:
        msg = f"model must be one of {sorted(MODELS)}, got {model!r}"
        raise ValueError(msg)
    return MODELS[model][0](params, shape, n_sub=n_sub)
