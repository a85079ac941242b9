"""PSF estimation from an exposure without a PSF model (jaxdiff.fit.estimate_psf)."""

import numpy as np
import pytest

from jaxdiff.fit import PsfEstimationError, estimate_psf
from jaxdiff.image.image import Exposure, Image, Mask, MaskedImage
from jaxdiff.testing.sim import moffat_pixel_kernel, render_moffat_stars

N = 1024
BETA = 3.0


def _true_fwhm(x):
    return 3.0 + 0.6 * x / (N - 1)  # 3.0 -> 3.6 px across the field


@pytest.fixture(scope="module")
def moffat_field():
    """1024² field, Moffat PSF (beta 3) whose FWHM grows from 3.0 to 3.6 px across x, sky 200, Gaussian noise."""
    rng = np.random.default_rng(21)
    n = 900
    x, y = rng.uniform(10, N - 10, n), rng.uniform(10, N - 10, n)
    flux = 10 ** rng.uniform(3.0, 5.3, n)
    model = np.asarray(render_moffat_stars(x, y, flux, _true_fwhm(x), BETA, (N, N), stamp_size=41), np.float64)
    var = model + 200.0
    img = model + 200.0 + np.sqrt(var) * rng.standard_normal((N, N))
    mask = Mask(np.zeros((N, N), np.int32))
    return Exposure(MaskedImage(Image(img.astype(np.float32)), mask, Image(var.astype(np.float32))))


@pytest.fixture(scope="module")
def estimate(moffat_field):
    return estimate_psf(moffat_field, model="moffat", spatial_order=1)


@pytest.mark.once_in_float32
def test_fwhm_and_psf_image_at_nine_positions(estimate):
    psf, rep = estimate.psf, estimate.report
    assert rep["n_used"] >= 50 and rep["n_reserve"] >= 5
    # reserve stars (not used for the model) are fitted as well as the training stars
    assert 0.8 < rep["reserve_chi2_per_dof"] < 1.3
    assert rep["reserve_chi2_per_dof"] < rep["used_chi2_per_dof"] + 0.1
    for xp in (60.0, N / 2, N - 60.0):
        for yp in (60.0, N / 2, N - 60.0):
            kern = np.asarray(psf.computeKernelImage((xp, yp)))
            size = kern.shape[0]
            truth = np.asarray(moffat_pixel_kernel(_true_fwhm(xp), BETA, size, oversample=9), np.float64)
            truth /= truth.sum()
            assert np.max(np.abs(kern / kern.sum() - truth)) < 0.01 * truth.max(), (xp, yp)
    # the FWHM of the model on its grid follows the truth to 2 %
    fwhm = rep["fwhm"]
    for j, gx in enumerate(rep["grid_x"]):
        np.testing.assert_allclose(fwhm[:, j], _true_fwhm(gx), rtol=0.02)


@pytest.mark.once_in_float32
def test_too_few_stars_is_a_typed_error(moffat_field):
    with pytest.raises(PsfEstimationError, match="usable stars") as info:
        estimate_psf(moffat_field, snr_min=1e7)
    assert info.value.rejected["snr"] == info.value.n_found
