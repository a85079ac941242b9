"""A free pixel-grid PSF model, optionally oversampled, fitted jointly to many star stamps.

The PSF is a grid ``g`` of ``G x G`` values on a lattice of spacing ``1 / oversample`` pixels,
centred on the star (lattice index ``(G - 1) / 2`` at the centroid), with positivity
(``g = softplus(raw)``) and unit sum.  A star of flux ``F`` at ``(x0, y0)`` is rendered by
bilinear interpolation of the grid at ``oversample²`` sample points per pixel, summed:

    m(i, j) = F · sum_{samples s in pixel (i, j)} g_bilinear((y_s - y0) · os + c, (x_s - x0) · os + c).

The samples step by exactly one lattice unit, so the bilinear weights of every grid node sum to
one over the samples and the stamp holds ``F`` (when it holds the whole grid); this is the
"effective PSF" of Anderson & King (2000, PASP 112, 1360), which already includes the pixel
response, interpolated as in photutils' ``EPSFModel`` (bilinear here, so the model is piecewise
linear in the centroid).  The bilinear interpolation is separable: ``W_y g W_x^T`` with
tent-function weight matrices, matrix products only.

:func:`pixel_psf_residuals` returns the residuals of a joint fit of one grid and per-star flux,
centroid and sky to N stamps, plus ``sqrt(smoothness)`` times the grid's discrete Laplacian
(a Tikhonov smoothness penalty); minimise with :func:`jaxdiff.core.fit.levenberg_marquardt` or
an optax optimiser (:func:`fit_pixel_psf`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .least_squares import FitResult, levenberg_marquardt, minimize_optax

__all__ = ["PixelPsfFit", "fit_pixel_psf", "pixel_grid", "pixel_grid_stamp", "pixel_psf_residuals"]


def pixel_grid(raw: Float[ArrayLike, "G G"]) -> Float[Array, "G G"]:
    """Positive, unit-sum grid from unconstrained values: ``softplus(raw) / sum(softplus(raw))``."""
    g = jax.nn.softplus(jnp.asarray(raw))
    return g / jnp.sum(g)


def _tent_weights(n_pix, center, oversample, n_grid, dtype):
    """(n_pix, n_grid) weights: sum over a pixel's samples of the tent function at each grid node."""
    s = (jnp.arange(n_pix * oversample, dtype=dtype) + 0.5) / oversample - 0.5  # sample positions, pixels
    v = (s - center) * oversample + (n_grid - 1) / 2  # in lattice units
    w = jnp.maximum(0, 1 - jnp.abs(v[:, None] - jnp.arange(n_grid, dtype=dtype)[None, :]))
    return w.reshape(n_pix, oversample, n_grid).sum(axis=1)


def pixel_grid_stamp(
    grid: Float[ArrayLike, "G G"], flux: Float[ArrayLike, ""], x0: Float[ArrayLike, ""], y0: Float[ArrayLike, ""],
    shape: tuple[int, int], *, oversample: int = 1,
) -> Float[Array, "H W"]:  # fmt: skip
    """Render a star of ``flux`` at ``(x0, y0)`` (stamp pixel coordinates) from a unit-sum grid."""
    grid = jnp.asarray(grid)
    dtype = grid.dtype
    wy = _tent_weights(shape[0], y0, oversample, grid.shape[0], dtype)
    wx = _tent_weights(shape[1], x0, oversample, grid.shape[1], dtype)
    return flux * (wy @ grid @ wx.T)


def _laplacian(g):
    gp = jnp.pad(g, 1)
    return gp[:-2, 1:-1] + gp[2:, 1:-1] + gp[1:-1, :-2] + gp[1:-1, 2:] - 4 * g


class PixelPsfFit(NamedTuple):
    """Result of :func:`fit_pixel_psf`: the unit-sum ``grid``, per-star ``flux``, ``x0``, ``y0``,
    ``sky`` (N,) and the :class:`FitResult` of the whole parameter vector."""

    grid: Float[Array, "G G"]
    flux: Float[Array, " N"]
    x0: Float[Array, " N"]
    y0: Float[Array, " N"]
    sky: Float[Array, " N"]
    fit: FitResult


def pixel_psf_residuals(
    stamps: Float[ArrayLike, "N H W"], variances: Float[ArrayLike, "N H W"], *, grid_size: int, oversample: int = 1,
    smoothness: float = 0.0,
):  # fmt: skip
    """Return ``(theta -> r, unpack)`` for a joint pixel-grid PSF fit of N star stamps.

    ``theta = (raw grid (G²), flux (N), x0 (N), y0 (N), sky (N))``; ``r`` is the inverse-sigma
    weighted residual of every stamp followed by ``sqrt(smoothness)`` times the Laplacian of the
    unit-sum grid scaled by the mean stamp flux (so the penalty is in units of the data's noise
    when ``smoothness`` is ~1) and two rows that pin the grid's centroid to its centre node
    (which removes the shift degeneracy between the grid and the stars' centroids).  Non-finite pixels and non-positive variances carry no weight.
    """
    stamps = jnp.asarray(stamps)
    dtype = stamps.dtype
    variances = jnp.asarray(variances, dtype)
    n, h, w = stamps.shape
    ok = jnp.isfinite(stamps) & jnp.isfinite(variances) & (variances > 0)
    sw = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, variances, 1)), 0)
    data = jnp.where(ok, stamps, 0)
    g2 = grid_size * grid_size
    root = jnp.sqrt(jnp.asarray(smoothness, dtype))

    def unpack(theta):
        grid = pixel_grid(theta[:g2].reshape(grid_size, grid_size))
        flux, x0, y0, sky = (theta[g2 + k * n : g2 + (k + 1) * n] for k in range(4))
        return grid, flux, x0, y0, sky

    def residual(theta):
        grid, flux, x0, y0, sky = unpack(theta)
        model = jax.vmap(lambda f, x, y: pixel_grid_stamp(grid, f, x, y, (h, w), oversample=oversample))(flux, x0, y0)
        r = ((data - model - sky[:, None, None]) * sw).ravel()
        scale = jnp.mean(jnp.abs(flux)) / jnp.sqrt(jnp.mean(jnp.where(ok, variances, 0)) + 1e-30)
        # the grid's centroid is pinned to its centre node: else a shift of the grid and the opposite
        # shift of every star leave the model unchanged (a singular Hessian)
        u = jnp.arange(grid_size, dtype=dtype) - (grid_size - 1) / 2
        centre = jnp.stack([jnp.sum(grid * u[None, :]), jnp.sum(grid * u[:, None])])
        return jnp.concatenate([r, root * scale * _laplacian(grid).ravel(), 10 * scale * centre])

    return residual, unpack


def fit_pixel_psf(
    stamps, variances, x0, y0, *, grid_size: int, oversample: int = 1, smoothness: float = 0.0, flux0=None,
    sky0=None, grid0=None, optimizer=None, n_iter: int | None = None, tol: float | None = None,
) -> PixelPsfFit:  # fmt: skip
    """Fit one pixel-grid PSF and each star's flux, centroid and sky to N stamps jointly.

    Parameters
    ----------
    stamps, variances : array_like, shape (N, H, W)
        Star stamps and their variances.
    x0, y0 : array_like, shape (N,)
        Starting centroids (stamp pixel coordinates, e.g. from :func:`fit_psf_stamp`).
    grid_size, oversample : int, keyword-only
        Grid nodes per axis and nodes per pixel (static).
    smoothness : float, keyword-only
        Strength of the Laplacian penalty (0: none).
    flux0, sky0 : array_like, optional, keyword-only
        Starting fluxes and skies (default: border median and sky-subtracted sum).
    grid0 : array_like, shape (G, G), optional, keyword-only
        Starting grid (positive); default a round Gaussian of the stamps' mean second moment.
    optimizer, n_iter, tol : keyword-only
        As in :func:`jaxdiff.core.fit.fit_psf_stamp` (default Levenberg–Marquardt, 30 iterations).

    Returns
    -------
    PixelPsfFit
    """
    stamps = jnp.asarray(stamps)
    dtype = stamps.dtype
    n, h, w = stamps.shape
    x0, y0 = jnp.asarray(x0, dtype), jnp.asarray(y0, dtype)
    if sky0 is None:
        border = jnp.concatenate([stamps[:, 0], stamps[:, -1], stamps[:, :, 0], stamps[:, :, -1]], axis=1)
        sky0 = jnp.median(border, axis=1)
    sky0 = jnp.asarray(sky0, dtype)
    if flux0 is None:
        flux0 = jnp.sum(stamps - sky0[:, None, None], axis=(1, 2))
    flux0 = jnp.asarray(flux0, dtype)
    c = (grid_size - 1) / 2
    if grid0 is None:
        r2 = ((jnp.arange(grid_size, dtype=dtype) - c)[:, None] ** 2 + (jnp.arange(grid_size, dtype=dtype) - c)[None] ** 2)
        grid0 = jnp.exp(-0.5 * r2 / (1.5 * oversample) ** 2) + 1e-3
    grid0 = jnp.asarray(grid0, dtype)
    grid0 = grid0 / jnp.sum(grid0) * grid_size * grid_size
    raw0 = grid0 + jnp.log(-jnp.expm1(-grid0))  # inverse softplus
    theta0 = jnp.concatenate([raw0.ravel(), flux0, x0, y0, sky0])
    residual, unpack = pixel_psf_residuals(stamps, variances, grid_size=grid_size, oversample=oversample,
                                           smoothness=smoothness)  # fmt: skip
    n_data = jnp.sum(jnp.isfinite(stamps) & (jnp.asarray(variances) > 0))
    if optimizer is None:
        res = levenberg_marquardt(residual, theta0, n_iter=30 if n_iter is None else n_iter, n_data=n_data, tol=tol)
    else:
        res = minimize_optax(residual, theta0, optimizer, n_iter=2000 if n_iter is None else n_iter, n_data=n_data,
                             tol=tol)  # fmt: skip
    grid, flux, xs, ys, sky = unpack(res.params)
    return PixelPsfFit(grid, flux, xs, ys, sky, res)
