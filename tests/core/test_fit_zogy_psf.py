"""The science PSF fitted through the ZOGY subtraction (jaxdiff.core.fit.zogy_psf)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import erf

from jaxdiff.core.fit.psf_models import gaussian_stamp
from jaxdiff.core.fit.zogy_psf import fit_psf_through_zogy, zogy_psf_residuals

FWHM = 2.0 * np.sqrt(2 * np.log(2))


def _render(xs, ys, f, sigma, shape):
    """Pixel-integrated Gaussian stars from exact erf integrals (numpy float64)."""
    def prof(c, n):
        g = np.arange(n)[None, :]
        s = np.sqrt(2) * sigma
        return 0.5 * (erf((g + 0.5 - c[:, None]) / s) - erf((g - 0.5 - c[:, None]) / s))

    return prof(ys, shape[0]).T @ (f[:, None] * prof(xs, shape[1]))


@pytest.fixture(scope="module")
def pair(float_dtype):
    rng = np.random.default_rng(8)
    shape, n = (128, 128), 40
    xs, ys = rng.uniform(14, 114, n), rng.uniform(14, 114, n)
    f = 10 ** rng.uniform(3.3, 4.5, n)
    new = _render(xs, ys, f, 1.9, shape) + rng.normal(0, 5, shape)
    ref = _render(xs, ys, f, 1.4, shape) + rng.normal(0, 3, shape)
    return dict(new=new.astype(float_dtype), ref=ref.astype(float_dtype), sigma_new=1.9, sigma_ref=1.4)


def _psf(dtype):
    return lambda q: gaussian_stamp(jnp.stack([jnp.ones((), dtype), 12.0, 12.0, q[0], 0.0, 0.0]).astype(dtype), (25, 25))


def test_fwhm_fitted_through_zogy(pair, float_dtype):
    """Issue 12: from 10 % off, the science FWHM fitted through the subtraction is within 1 % of the truth."""
    dtype = float_dtype
    ref_psf = gaussian_stamp(jnp.asarray([1.0, 12, 12, pair["sigma_ref"], 0, 0], dtype), (25, 25))
    kw = dict(new_noise_var=25.0, ref_noise_var=9.0)
    fit = fit_psf_through_zogy(pair["new"], pair["ref"], ref_psf, _psf(dtype), jnp.asarray([1.1 * pair["sigma_new"]]),
                               **kw)
    sigma = float(fit.params[0])
    assert FWHM * sigma == pytest.approx(FWHM * pair["sigma_new"], rel=0.01)
    assert abs(sigma - pair["sigma_new"]) < 4 * float(fit.errors[0]) + 2e-3
    assert int(fit.status) == 0
    # the difference energy per pixel is ~1 at the fitted PSF (noise only) and clearly above it 5 % off
    res = zogy_psf_residuals(pair["new"], pair["ref"], ref_psf, _psf(dtype), **kw)
    e_fit = float(jnp.mean(res(fit.params) ** 2))
    e_off = float(jnp.mean(res(jnp.asarray([1.05 * pair["sigma_new"]], dtype)) ** 2))
    assert e_fit == pytest.approx(1.0, abs=0.06)
    assert e_off > e_fit + 0.05


def test_difference_energy_gradients(pair, x64):
    """check_grads (float64) of the difference energy, including the degenerate point where the two PSFs
    are identical (the template PSF given as the science PSF)."""
    if not x64:
        pytest.skip("check_grads needs float64")
    new, ref = pair["new"][32:96, 32:96], pair["ref"][32:96, 32:96]
    ref_psf = gaussian_stamp(jnp.asarray([1.0, 12, 12, pair["sigma_ref"], 0, 0]), (25, 25))
    res = zogy_psf_residuals(new, ref, ref_psf, _psf(jnp.float64), new_noise_var=25.0, ref_noise_var=9.0)

    def loss(q):
        return jnp.sum(res(q) ** 2)

    for q in (pair["sigma_ref"], pair["sigma_new"]):
        check_grads(jax.jit(loss), (jnp.asarray([q]),), order=1, modes=["fwd", "rev"])
