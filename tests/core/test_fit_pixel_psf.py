"""Pixel-grid (effective) PSF fitted jointly to star stamps (jaxdiff.core.fit.pixel_psf)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core.fit.pixel_psf import fit_pixel_psf, pixel_grid_stamp
from jaxdiff.core.fit.psf_models import moffat_stamp


def test_grid_stamp_conserves_flux_and_interpolates_linearly(float_dtype):
    """A unit-sum grid renders a star of the given flux at any sub-pixel centroid; at integer offsets it
    reproduces the grid itself (oversample 1) or the 2x2 sums of the grid (oversample 2), numpy reference."""
    rng = np.random.default_rng(1)
    g = rng.uniform(0.1, 1, (9, 9))
    g /= g.sum()
    img = np.asarray(pixel_grid_stamp(jnp.asarray(g, float_dtype), 250.0, 10.3, 9.6, (21, 21)))
    assert img.sum() == pytest.approx(250.0, rel=1e-5)
    img = np.asarray(pixel_grid_stamp(jnp.asarray(g, float_dtype), 1.0, 10.0, 9.0, (21, 21)))
    np.testing.assert_allclose(img[5:14, 6:15], g, rtol=1e-5, atol=1e-7)
    # half a pixel to the right: the mean of horizontal neighbours
    img = np.asarray(pixel_grid_stamp(jnp.asarray(g, float_dtype), 1.0, 10.5, 9.0, (21, 21)))
    np.testing.assert_allclose(img[5:14, 7:15], 0.5 * (g[:, :-1] + g[:, 1:]), rtol=1e-5, atol=1e-7)
    g2 = rng.uniform(0.1, 1, (10, 10))
    g2 /= g2.sum()
    # oversample 2, grid centre (4.5, 4.5) in lattice units: at x0 = 10.25 the samples fall on the nodes
    img = np.asarray(pixel_grid_stamp(jnp.asarray(g2, float_dtype), 1.0, 10.0, 10.0, (21, 21), oversample=2))
    assert img.sum() == pytest.approx(1.0, rel=1e-5)
    want = g2.reshape(5, 2, 5, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(img[8:13, 8:13], want, rtol=1e-4, atol=1e-6)


def test_joint_fit_recovers_the_effective_psf(float_dtype, x64):
    """30 noisy Moffat stars at random sub-pixel centroids: the fitted 11x11 grid is the pixel-integrated
    Moffat (the effective PSF) to 2 % of its peak, fluxes to their noise."""
    rng = np.random.default_rng(3)
    n, size = 30, 15
    truth = dict(fwhm=3.2, beta=3.0)
    xs, ys = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    flux = rng.uniform(2e4, 1e5, n)
    stamps = np.stack([np.asarray(moffat_stamp(jnp.asarray([f, x, y, truth["fwhm"], truth["beta"], 0, 0]),
                                               (size, size), n_sub=8)) for f, x, y in zip(flux, xs, ys, strict=True)])
    stamps = stamps + 20.0
    var = stamps + 25.0
    stamps = stamps + rng.normal(size=stamps.shape) * np.sqrt(var)
    dtype = float_dtype
    res = fit_pixel_psf(jnp.asarray(stamps, dtype), jnp.asarray(var, dtype), xs + rng.normal(0, 0.05, n),
                        ys + rng.normal(0, 0.05, n), grid_size=11, smoothness=0.0)
    epsf = np.asarray(moffat_stamp(jnp.asarray([1.0, 5, 5, truth["fwhm"], truth["beta"], 0, 0]), (11, 11), n_sub=8))
    grid = np.asarray(res.grid, np.float64) * epsf.sum()  # the truth's own flux inside 11x11
    assert np.abs(grid - epsf).max() < 0.02 * epsf.max()
    np.testing.assert_allclose(np.asarray(res.flux) * epsf.sum(), flux * np.asarray(
        [np.asarray(moffat_stamp(jnp.asarray([1.0, x, y, 3.2, 3.0, 0, 0]), (size, size), n_sub=8)).sum()
         for x, y in zip(xs, ys, strict=True)]) / 1.0, rtol=0.03)
    np.testing.assert_allclose(np.asarray(res.x0), xs, atol=0.05)
    chi2_dof = float(res.fit.chi2) / int(res.fit.dof)
    assert chi2_dof == pytest.approx(1.0, abs=0.1)
