"""Tests of the scene simulator :mod:`jaxdiff.testing.sim` against numpy/scipy and analytic references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from jaxdiff.image.image import DEFAULT_MASK_PLANES
from jaxdiff.image.psf import GridPsf, ImagePsf
from jaxdiff.testing import lsst_scenes, sim

X64 = bool(jax.config.jax_enable_x64)
FLOAT = np.float64 if X64 else np.float32
SAT, BAD, CR = (1 << DEFAULT_MASK_PLANES[p] for p in ("SAT", "BAD", "CR"))


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


def box_fraction_gauss(centre, sigma, lo, hi):
    """Fraction of N(centre, sigma^2) in [lo, hi] (scipy, float64; upper tail by symmetry)."""
    a, b = (lo - centre) / sigma, (hi - centre) / sigma
    return np.where(a > 0, special.ndtr(-a) - special.ndtr(-b), special.ndtr(b) - special.ndtr(a))


def gauss_image_ref(x, y, flux, sigma, shape):
    """Pixel-integrated Gaussian stars, per pixel with scipy's ndtr (float64)."""
    h, w = shape
    out = np.zeros(shape)
    i = np.arange(w)
    j = np.arange(h)
    for xk, yk, fk, sk in zip(x, y, flux, sigma, strict=False):
        gx = box_fraction_gauss(xk, sk, i - 0.5, i + 0.5)
        gy = box_fraction_gauss(yk, sk, j - 0.5, j + 0.5)
        out += fk * np.outer(gy, gx)
    return out


def moffat_profile(alpha, beta):
    return lambda v, u: (1.0 + (u * u + v * v) / alpha**2) ** (-beta)


def moffat_alpha(fwhm, beta):
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def square_sum(img, ix, iy, a):
    return float(np.sum(img[iy - a : iy + a + 1, ix - a : ix + a + 1]))


def centroid(img, ix, iy, a):
    """First moments (x, y) of img in the (2a+1)^2 box centred on pixel (ix, iy) (array coords)."""
    stamp = img[iy - a : iy + a + 1, ix - a : ix + a + 1]
    yy, xx = np.mgrid[iy - a : iy + a + 1, ix - a : ix + a + 1]
    s = stamp.sum()
    return float((stamp * xx).sum() / s), float((stamp * yy).sum() / s)


def second_moment_sigma(img, ix, iy, a):
    """sqrt of the mean of the x and y second moments, with the pixel's 1/12 px^2 removed."""
    stamp = img[iy - a : iy + a + 1, ix - a : ix + a + 1]
    yy, xx = np.mgrid[-a : a + 1, -a : a + 1].astype(np.float64)
    s = stamp.sum()
    xc, yc = (stamp * xx).sum() / s, (stamp * yy).sum() / s
    m = 0.5 * ((stamp * (xx - xc) ** 2).sum() + (stamp * (yy - yc) ** 2).sum()) / s
    return math.sqrt(m - 1.0 / 12.0)


def quiet(**kw):
    """Common settings: one bright isolated star, no random stars."""
    base = dict(n_stars=0, sky_science=100.0, sky_template=100.0, read_noise=5.0)
    base.update(kw)
    return base


# ----------------------------------------------------------------------------------------------
# determinism and streams
# ----------------------------------------------------------------------------------------------


def test_same_key_same_arrays_and_different_key_different_noise():
    kw = dict(shape=(64, 80), n_stars=20, n_transients=2, n_cosmic_rays=3, n_bad_columns=1)
    a = sim.simulate_pair(jax.random.PRNGKey(3), **kw)
    b = sim.simulate_pair(jax.random.PRNGKey(3), **kw)
    c = sim.simulate_pair(3, **kw)  # an int seed is PRNGKey(int)
    for p in (b, c):
        for exp_a, exp_b in ((a.science, p.science), (a.template, p.template)):
            np.testing.assert_array_equal(exp_a.image.array, exp_b.image.array)
            np.testing.assert_array_equal(exp_a.variance.array, exp_b.variance.array)
            np.testing.assert_array_equal(exp_a.mask.array, exp_b.mask.array)
        np.testing.assert_array_equal(a.truth.x, p.truth.x)
        np.testing.assert_array_equal(a.truth.flux_template, p.truth.flux_template)
    d = sim.simulate_pair(jax.random.PRNGKey(4), **kw)
    assert not np.array_equal(a.truth.x, d.truth.x)
    # same scene, different noise: fix the stars, change the key
    stars = (a.truth.x, a.truth.y, a.truth.flux_template)
    e = sim.simulate_pair(5, shape=(64, 80), stars=stars)
    f = sim.simulate_pair(6, shape=(64, 80), stars=stars)
    np.testing.assert_allclose(e.truth.science_model, f.truth.science_model)
    resid = e.science.image.array - f.science.image.array
    assert np.std(resid) > 5.0  # independent noise: std ~ sqrt(2 * 125)
    assert e.science.image.array.dtype == FLOAT


def test_options_do_not_disturb_other_random_streams():
    kw = dict(shape=(64, 64), n_stars=15)
    a = sim.simulate_pair(11, **kw)
    b = sim.simulate_pair(11, n_cosmic_rays=4, n_bad_columns=2, n_transients=3, **kw)
    np.testing.assert_array_equal(a.truth.x, b.truth.x)
    np.testing.assert_array_equal(a.truth.flux_template, b.truth.flux_template)
    np.testing.assert_array_equal(a.template.image.array, b.template.image.array)


def test_random_star_fluxes_and_positions_follow_the_requested_distributions():
    p = sim.simulate_pair(0, shape=(128, 128), n_stars=3000, flux_range=(100.0, 1e5), noise=False)
    t = p.truth
    assert t.x.min() >= -0.5 and t.x.max() < 127.5 and t.y.min() >= -0.5 and t.y.max() < 127.5
    assert t.flux_template.min() >= 100.0 * (1 - 1e-6) and t.flux_template.max() <= 1e5 * (1 + 1e-6)
    # log-uniform: log10 flux uniform on [2, 5]; Kolmogorov-Smirnov against scipy
    from scipy import stats

    assert stats.kstest(np.log10(t.flux_template), stats.uniform(2, 3).cdf).pvalue > 1e-3
    # Euclidean counts, dN/dF ~ F^-2.5: the pdf of F^-1.5 is uniform
    q = sim.simulate_pair(1, (32, 32), n_stars=3000, flux_range=(100.0, 1e5), flux_slope=2.5, noise=False)
    v = q.truth.flux_template**-1.5
    ref = stats.uniform(1e5**-1.5, 100.0**-1.5 - 1e5**-1.5)
    assert stats.kstest(v, ref.cdf).pvalue > 1e-3


# ----------------------------------------------------------------------------------------------
# truth: fluxes, positions, flux ratio, shift, background
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [False, True])
def test_gaussian_star_flux_matches_truth(noise):
    x, y, f = 60.3, 70.8, 2e4
    p = sim.simulate_pair(
        21, (128, 128), stars=([x], [y], [f]), flux_ratio=1.3, noise=noise,
        template_psf=dict(kind="gaussian", sigma=1.5), science_psf=dict(kind="gaussian", sigma=2.2),
        **quiet(),
    )
    a = 6
    for exp, model, flux, sigma in (
        (p.science, p.truth.science_model, 1.3 * f, 2.2),
        (p.template, p.truth.template_model, f, 1.5),
    ):
        ref = flux * box_fraction_gauss(x, sigma, 60 - a - 0.5, 60 + a + 0.5) * box_fraction_gauss(
            y, sigma, 71 - a - 0.5, 71 + a + 0.5
        )
        np.testing.assert_allclose(square_sum(model, 60, 71, a), ref, rtol=1e-5)
        img = exp.image.array
        if noise:
            err = math.sqrt(square_sum(exp.variance.array, 60, 71, a))
            assert abs(square_sum(img, 60, 71, a) - ref) < 5 * err
        else:
            np.testing.assert_allclose(square_sum(img, 60, 71, a), ref, rtol=1e-4)


@pytest.mark.parametrize("noise", [False, True])
def test_moffat_star_flux_matches_truth(noise):
    x, y, f = 50.4, 61.7, 3e4
    fwhm, beta = 3.5, 2.5
    p = sim.simulate_pair(
        22, (128, 128), stars=([x], [y], [f]), noise=noise,
        template_psf=dict(kind="moffat", fwhm=fwhm, beta=beta),
        science_psf=dict(kind="moffat", fwhm=fwhm, beta=beta),
        **quiet(),
    )
    size = p.truth.psf_size
    half = size // 2
    alpha = moffat_alpha(fwhm, beta)
    prof = moffat_profile(alpha, beta)
    ix, iy = 50, 62  # nearest pixel: the stamp is centred there
    # the star is truncated to its stamp and normalised inside it (documented); integrate with scipy
    def box_integral(a):  # the profile over the (2a+1)^2 pixel box centred on (ix, iy)
        lo_x, hi_x, lo_y, hi_y = ix - a - 0.5 - x, ix + a + 0.5 - x, iy - a - 0.5 - y, iy + a + 0.5 - y
        return integrate.dblquad(prof, lo_x, hi_x, lo_y, hi_y)[0]

    stamp_total = box_integral(half)
    a = 4
    ap = box_integral(a)
    ref = f * ap / stamp_total
    model = p.template.image.array if noise else p.truth.template_model
    if noise:
        err = math.sqrt(square_sum(p.template.variance.array, ix, iy, a))
        assert abs(square_sum(model, ix, iy, a) - ref) < 5 * err
    else:
        np.testing.assert_allclose(square_sum(model, ix, iy, a), ref, rtol=0.01)
        np.testing.assert_allclose(square_sum(model, ix, iy, half), f, rtol=1e-5)  # whole stamp
        np.testing.assert_allclose(square_sum(p.truth.science_model, ix, iy, half), f, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "moffat"])
def test_centroid_flux_ratio_and_shift(kind):
    x, y, f = 40.37, 45.81, 1e4
    shift = (0.43, -0.27)
    psf = dict(kind="gaussian", sigma=1.8) if kind == "gaussian" else dict(kind="moffat", fwhm=4.0, beta=3.0)
    p = sim.simulate_pair(
        1, (96, 96), stars=([x], [y], [f]), shift=shift, flux_ratio=0.8, noise=False,
        template_psf=psf, science_psf=psf, psf_size=31, **quiet(),
    )
    a = 15
    tx, ty = centroid(p.truth.template_model, 40, 46, a)
    sx, sy = centroid(p.truth.science_model, 41, 46, a)
    assert abs(tx - x) < 0.01 and abs(ty - y) < 0.01
    assert abs(sx - tx - shift[0]) < 0.01 and abs(sy - ty - shift[1]) < 0.01
    np.testing.assert_allclose(p.truth.x_science, [x + shift[0]], atol=1e-4)
    np.testing.assert_allclose(p.truth.flux_science, 0.8 * p.truth.flux_template, rtol=1e-6)
    ratio = square_sum(p.truth.science_model, 41, 46, a) / square_sum(p.truth.template_model, 40, 46, a)
    np.testing.assert_allclose(ratio, 0.8, rtol=1e-3)


def test_background_offset_constant_polynomial_and_callable():
    kw = quiet(shape=(64, 96), noise=False)
    p = sim.simulate_pair(0, background_offset=7.5, **kw)
    np.testing.assert_allclose(np.median(p.truth.science_model - p.truth.template_model), 7.5, rtol=1e-6)
    np.testing.assert_allclose(p.truth.background, 7.5)
    # noisy: the median difference is the offset within its error
    q = sim.simulate_pair(0, shape=(128, 128), n_stars=0, background_offset=7.5)
    diff = q.science.image.array - q.template.image.array
    assert abs(np.median(diff) - 7.5) < 5 * 1.26 * math.sqrt(2 * 125.0 / diff.size)
    # polynomial 1, x, y, x^2, xy, y^2 in u in [-1, 1]
    c = [3.0, 1.0, -2.0, 0.5, 0.25, -0.75]
    r = sim.simulate_pair(0, background_offset=c, **kw)
    yy, xx = np.mgrid[0:64, 0:96].astype(float)
    ux, uy = 2 * (xx - 47.5) / 95.0, 2 * (yy - 31.5) / 63.0
    ref = c[0] + c[1] * ux + c[2] * uy + c[3] * ux**2 + c[4] * ux * uy + c[5] * uy**2
    np.testing.assert_allclose(r.truth.background, ref, atol=1e-12)
    np.testing.assert_allclose(r.truth.science_model, ref, atol=1e-4)
    np.testing.assert_allclose(r.science.image.array, ref, atol=1e-4)  # noise=False, sky subtracted
    s = sim.simulate_pair(0, background_offset=lambda x, y: 0.01 * x + 0.02 * y, xy0=(10, 20), **kw)
    yy, xx = np.mgrid[20:84, 10:106].astype(float)
    np.testing.assert_allclose(s.truth.background, 0.01 * xx + 0.02 * yy, atol=1e-12)
    with pytest.raises(ValueError, match="coefficients"):
        sim.simulate_pair(0, background_offset=[1.0, 2.0], **kw)


# ----------------------------------------------------------------------------------------------
# noise and variance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_noise_is_unit_normal_in_units_of_the_variance_plane(gain):
    kw = dict(n_stars=150, gain=gain, read_noise=4.0, background_offset=[2.0, 1.0, 0.5])
    p = sim.simulate_pair(5, (256, 256), **kw)
    t = p.truth
    var = p.science.variance.array
    # the variance formula, independently: (model + sky) / gain + (rn / gain)^2
    np.testing.assert_allclose(var, (t.science_model + 100.0) / gain + (4.0 / gain) ** 2, rtol=1e-6)
    np.testing.assert_allclose(
        p.template.variance.array, (t.template_model + 100.0) / gain + (4.0 / gain) ** 2, rtol=1e-6
    )
    pairs = ((p.science, t.science_model), (p.template, t.template_model))
    for image, model, variance in ((e.image.array, m, e.variance.array) for e, m in pairs):
        z = (image - model) / np.sqrt(variance)
        assert abs(np.std(z) - 1.0) < 0.03
        assert abs(np.mean(z)) < 5 / math.sqrt(z.size)
    # no noise: the image is the model and the variance plane is unchanged
    q = sim.simulate_pair(5, (256, 256), noise=False, **kw)
    np.testing.assert_allclose(q.science.image.array, t.science_model, atol=1e-3 * gain)
    np.testing.assert_array_equal(q.science.variance.array, var)


def test_subtract_sky_false_keeps_the_sky():
    p = sim.simulate_pair(2, (64, 64), n_stars=0, sky_science=250.0, subtract_sky=False, noise=False)
    np.testing.assert_allclose(p.science.image.array, 250.0)
    np.testing.assert_allclose(p.truth.science_model, 250.0)
    np.testing.assert_allclose(p.science.variance.array, 250.0 + 25.0)


# ----------------------------------------------------------------------------------------------
# PSF models are the rendering
# ----------------------------------------------------------------------------------------------


def test_pixel_kernels_match_scipy_reference():
    k = np.asarray(sim.gaussian_pixel_kernel(1.7, 15, dx=0.3, dy=-0.2))
    i = np.arange(15) - 7
    gx = box_fraction_gauss(0.3, 1.7, i - 0.5, i + 0.5)
    gy = box_fraction_gauss(-0.2, 1.7, i - 0.5, i + 0.5)
    ref = np.outer(gy, gx)
    np.testing.assert_allclose(k, ref / ref.sum(), atol=1e-7)
    # Moffat: each pixel vs scipy's 2-D integral of the analytic profile (5x5 midpoint rule ~1e-3)
    fwhm, beta, size = 3.0, 2.5, 11
    m = np.asarray(sim.moffat_pixel_kernel(fwhm, beta, size))
    prof = moffat_profile(moffat_alpha(fwhm, beta), beta)
    ref = np.array(
        [[integrate.dblquad(prof, c - 0.5, c + 0.5, r - 0.5, r + 0.5)[0] for c in range(-5, 6)]
         for r in range(-5, 6)]
    )
    ref /= ref.sum()
    np.testing.assert_allclose(m, ref, rtol=3e-3, atol=1e-6)


@pytest.mark.parametrize(
    "psf",
    [dict(kind="gaussian", sigma=2.2), dict(kind="moffat", fwhm=4.2, beta=2.8)],
    ids=["gaussian", "moffat"],
)
def test_attached_psf_equals_the_rendered_star(psf):
    p = sim.simulate_pair(
        0, (96, 96), stars=([40.0], [52.0], [5e4]), science_psf=psf, template_psf=psf, noise=False, **quiet()
    )
    for exp, model in ((p.science, p.truth.science_model), (p.template, p.truth.template_model)):
        assert isinstance(exp.getPsf(), ImagePsf)
        kern = np.asarray(exp.getPsf().computeKernelArray((40.0, 52.0)))
        half = kern.shape[0] // 2
        assert kern.shape == (p.truth.psf_size, p.truth.psf_size)
        stamp = model[52 - half : 52 + half + 1, 40 - half : 40 + half + 1]
        np.testing.assert_allclose(stamp / stamp.sum(), kern, atol=1e-6)
    sigma = 2.2 if psf["kind"] == "gaussian" else 4.2 / (2 * math.sqrt(2 * math.log(2)))
    assert p.truth.psf_size == 2 * math.ceil(5 * sigma) + 1


def test_spatially_varying_psf_corners_and_grid_psf():
    var = 0.1
    sigma = 2.0
    inset = 16
    pos = [(inset, inset), (127 - inset, 127 - inset), (inset, 127 - inset)]
    xs, ys = zip(*pos, strict=False)
    p = sim.simulate_pair(
        0, (128, 128), stars=(list(xs), list(ys), [1e4] * 3), science_psf=dict(kind="gaussian", sigma=sigma),
        psf_variation=var, noise=False, **quiet(),
    )
    psf = p.science.getPsf()
    assert isinstance(psf, GridPsf)
    assert isinstance(p.template.getPsf(), ImagePsf)
    u = 2 * (inset - 63.5) / 127.0  # corner star at -u, opposite at +u
    expected = [sigma * (1 + var * u), sigma * (1 - var * u), sigma]
    measured = [second_moment_sigma(p.truth.science_model, x, y, 12) for x, y in pos]
    np.testing.assert_allclose(measured, expected, rtol=5e-3)
    np.testing.assert_allclose(measured[1] / measured[0], (1 - var * u) / (1 + var * u), rtol=0.02)
    np.testing.assert_allclose(p.truth.science_psf_scale, np.array(expected) / sigma, rtol=1e-6)
    for (x, y), e in zip(pos, expected, strict=False):
        kern = np.asarray(psf.computeKernelArray((x, y)))
        c = kern.shape[0] // 2
        np.testing.assert_allclose(second_moment_sigma(kern, c, c, c), e, rtol=0.01)
        np.testing.assert_allclose(p.truth.psf_scale_at(x, y) * sigma, e, rtol=1e-12)
    # at a grid node the GridPsf is the exact kernel: the bottom-left corner has width (1 - var)
    node = np.asarray(psf.computeKernelArray((0.0, 0.0)))
    exact = np.asarray(sim.gaussian_pixel_kernel(sigma * (1 - var), node.shape[0]))
    np.testing.assert_allclose(node, exact, atol=1e-6)
    # template stars are not affected
    t = [second_moment_sigma(p.truth.template_model, x, y, 12) for x, y in pos]
    np.testing.assert_allclose(t, 1.5, rtol=5e-3)


def test_moffat_psf_variation_renders_varying_widths():
    p = sim.simulate_pair(
        0, (96, 96), stars=([20.0, 75.0], [20.0, 75.0], [1e4, 1e4]), psf_variation=(0.15, 0.0),
        science_psf=dict(kind="moffat", fwhm=3.5, beta=3.0), noise=False, **quiet(),
    )
    half = p.truth.psf_size // 2
    k_left = p.truth.science_model[20 - half : 21 + half, 20 - half : 21 + half]
    k_right = p.truth.science_model[75 - half : 76 + half, 75 - half : 76 + half]
    scale = p.truth.science_psf_scale
    for stamp, s, pos in ((k_left, scale[0], (20.0, 20.0)), (k_right, scale[1], (75.0, 75.0))):
        ref = np.asarray(sim.moffat_pixel_kernel(3.5 * s, 3.0, 2 * half + 1))
        np.testing.assert_allclose(stamp / stamp.sum(), ref, atol=1e-6)
        np.testing.assert_allclose(np.asarray(p.science.getPsf().computeKernelArray(pos)), ref, atol=2e-3)
    u = 2 * (np.array([20.0, 75.0]) - 47.5) / 95.0
    np.testing.assert_allclose(scale, 1 + 0.15 * u, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# masks, defects, transients
# ----------------------------------------------------------------------------------------------


def test_saturated_stars_are_clipped_and_flagged():
    stars = ([20.0, 60.0, 100.0, 40.0], [20.0, 60.0, 100.0, 100.0], [4e5, 2e5, 1e4, 5e3])
    p = sim.simulate_pair(3, (128, 128), stars=stars, n_saturated=2)
    t = p.truth
    np.testing.assert_array_equal(t.saturated, [True, True, False, False])
    level = t.saturation_level
    for exp, sky in ((p.science, t.sky_science), (p.template, t.sky_template)):
        img, mask = exp.image.array, exp.mask.array
        sat = (mask & SAT) != 0
        np.testing.assert_allclose(img[sat], level - sky, rtol=1e-6)
        assert np.all(img[~sat] < level - sky)
        for x, y in ((20, 20), (60, 60)):
            assert sat[y, x]
        assert not sat[100, 100].any() and not sat[100, 40].any()
        assert np.all(mask[~sat] == 0)
    # explicit level, applied to both images
    q = sim.simulate_pair(3, (128, 128), stars=stars, saturation_level=5000.0)
    assert ((q.template.mask.array & SAT) != 0).sum() > 0
    assert np.all(q.template.image.array <= 5000.0 - 100.0 + 1e-3)


def test_bad_columns_and_cosmic_rays_are_flagged_in_the_science_only():
    p = sim.simulate_pair(9, (96, 128), n_stars=30, n_bad_columns=3, n_cosmic_rays=6, xy0=(5, 7))
    t = p.truth
    img, mask = p.science.image.array, p.science.mask.array
    cols = t.bad_columns - 5
    assert len(set(cols)) == 3
    bad = (mask & BAD) != 0
    expected_bad = np.zeros_like(bad)
    expected_bad[:, cols] = True
    np.testing.assert_array_equal(bad, expected_bad)
    np.testing.assert_array_equal(img[:, cols], 0.0)
    cr = (mask & CR) != 0
    expected_cr = np.zeros_like(cr)
    expected_cr[t.cosmic_ray_y - 7, t.cosmic_ray_x - 5] = True
    np.testing.assert_array_equal(cr, expected_cr)
    assert 6 <= cr.sum() <= 12
    hit = cr & ~bad
    excess = (img - t.science_model)[hit]
    on_good = ~np.isin(t.cosmic_ray_x - 5, cols)
    noise = 6 * math.sqrt(p.science.variance.array.max())
    np.testing.assert_allclose(excess, t.cosmic_ray_flux[on_good], atol=noise)
    assert np.all(p.template.mask.array == 0)
    assert np.all(mask & ~(BAD | CR) == 0)


@pytest.mark.parametrize("sign", [1, -1])
def test_transients_in_science_only_or_template_only(sign):
    p = sim.simulate_pair(
        1, (128, 128), n_stars=0, n_transients=3, transient_flux=5000.0, transient_sign=sign,
        shift=(0.3, 0.2), noise=False,
    )
    t = p.truth
    assert t.transient_x.size == 3 and np.all(t.transient_sign == sign)
    sep = np.hypot(t.transient_x[:, None] - t.transient_x, t.transient_y[:, None] - t.transient_y)
    assert np.min(sep + 1e3 * np.eye(3)) > 30  # isolated, so the centroid boxes see one source each
    half = t.psf_size // 2
    assert np.all((t.transient_x >= half) & (t.transient_x <= 127 - half))
    present, absent = (t.science_model, t.template_model) if sign > 0 else (t.template_model, t.science_model)
    np.testing.assert_allclose(present.sum(), 3 * 5000.0, rtol=1e-4)
    np.testing.assert_allclose(absent, 0.0, atol=1e-9)
    off = (0.0, 0.0) if sign > 0 else (0.3, 0.2)  # fading transients sit at position - shift in the template
    for x, y in zip(t.transient_x, t.transient_y, strict=False):
        ix, iy = int(round(x - off[0])), int(round(y - off[1]))
        cx, cy = centroid(present, ix, iy, 10)
        assert abs(cx - (x - off[0])) < 0.02 and abs(cy - (y - off[1])) < 0.02


def test_transient_snr_sets_the_flux():
    sigma, sky, rn = 2.2, 100.0, 5.0
    p = sim.simulate_pair(
        8, (128, 128), n_stars=0, n_transients=2, transient_snr=20.0, sky_science=sky, read_noise=rn,
        science_psf=dict(kind="gaussian", sigma=sigma),
    )
    # analytic: flux = snr * sqrt(4 pi s^2 V), with s^2 = sigma^2 + 1/12 for the pixel-integrated PSF
    ref = 20.0 * math.sqrt(4 * math.pi * (sigma**2 + 1 / 12) * (sky + rn**2))
    np.testing.assert_allclose(p.truth.transient_flux, ref, rtol=0.01)
    # and exactly the documented formula with the attached PSF
    kern = np.asarray(p.science.getPsf().computeKernelArray())
    np.testing.assert_allclose(p.truth.transient_flux, sim.flux_for_snr(20.0, kern, sky + rn**2), rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        sim.simulate_pair(8, (64, 64), n_transients=1, transient_snr=5.0, transient_flux=10.0)


# ----------------------------------------------------------------------------------------------
# WCS, PhotoCalib, xy0, errors
# ----------------------------------------------------------------------------------------------


def test_wcs_describes_the_shift_and_photo_calib_auto():
    shift = (1.7, -0.6)
    p = sim.simulate_pair(
        0, (64, 64), n_stars=3, shift=shift, with_wcs=True, photo_calib="auto", flux_ratio=1.25, xy0=(100, 50)
    )
    t = p.truth
    sky_t = p.template.getWcs().pixel_to_world(t.x, t.y)
    sky_s = p.science.getWcs().pixel_to_world(t.x_science, t.y_science)
    assert np.all(sky_t.separation(sky_s).arcsec < 1e-6)
    np.testing.assert_allclose(p.science.getWcs().proj_plane_pixel_scales()[0].to_value("arcsec"), 0.2)
    np.testing.assert_allclose(p.science.getPhotoCalib().getCalibrationMean(), 1 / 1.25)
    np.testing.assert_allclose(p.template.getPhotoCalib().getCalibrationMean(), 1.0)
    assert p.science.getXY0() == (100, 50)
    assert sim.simulate_pair(0, (32, 32), n_stars=1).science.getPhotoCalib() is None


def test_xy0_positions_are_parent_coordinates():
    star = ([130.2], [240.6], [1e4])
    p = sim.simulate_pair(0, (64, 64), stars=star, xy0=(100, 200), noise=False, **quiet())
    cx, cy = centroid(p.truth.template_model, 30, 41, 10)
    assert abs(cx + 100 - 130.2) < 0.01 and abs(cy + 200 - 240.6) < 0.01
    assert p.template.getPsf().getAveragePosition() == (131.5, 231.5)


def test_clear_errors():
    with pytest.raises(ValueError, match="too small"):
        sim.simulate_pair(0, (16, 16), psf_size=21)
    with pytest.raises(ValueError, match="fluxes must be >= 0"):
        sim.simulate_pair(0, (32, 32), stars=([1.0], [1.0], [-5.0]))
    with pytest.raises(ValueError, match="kind"):
        sim.simulate_pair(0, (32, 32), science_psf=dict(kind="airy", fwhm=2.0))
    with pytest.raises(ValueError, match="beta"):
        sim.simulate_pair(0, (32, 32), science_psf=dict(kind="moffat", fwhm=2.0, beta=0.5))
    with pytest.raises(ValueError, match="non-positive"):
        sim.simulate_pair(0, (32, 32), psf_variation=(0.6, 0.6))
    with pytest.raises(ValueError, match="odd"):
        sim.simulate_pair(0, (32, 32), psf_size=10)
    with pytest.raises(ValueError, match="negative"):
        sim.simulate_pair(0, (32, 32), n_stars=0, sky_science=1.0, background_offset=-5.0)
    with pytest.raises(ValueError, match="flux_range"):
        sim.simulate_pair(0, (32, 32), flux_range=(-1.0, 10.0))
    if not X64:
        with pytest.raises(ValueError, match="x64"):
            sim.simulate_pair(0, (32, 32), dtype=np.float64)


def test_default_psf_size_is_clipped_to_the_image():
    p = sim.simulate_pair(0, (20, 30), n_stars=2, science_psf=dict(kind="gaussian", sigma=4.0))
    assert p.truth.psf_size == 19
    assert p.science.getPsf().computeKernelArray().shape == (19, 19)


# ----------------------------------------------------------------------------------------------
# renderers as pure functions
# ----------------------------------------------------------------------------------------------


def test_render_gaussian_matches_scipy_and_chunks_and_jit():
    rng = np.random.default_rng(0)
    n = 11
    x, y = rng.uniform(-5, 45, n), rng.uniform(-5, 35, n)
    f, s = rng.uniform(100, 1000, n), rng.uniform(0.8, 3.0, n)
    ref = gauss_image_ref(x, y, f, s, (30, 40))
    args = [jnp.asarray(v, FLOAT) for v in (x, y, f, s)]
    out = sim.render_gaussian_stars(*args, (30, 40))
    tol = 1e-9 if X64 else 2e-4
    np.testing.assert_allclose(np.asarray(out), ref, atol=tol * f.max())
    chunked = sim.render_gaussian_stars(*args, (30, 40), chunk_size=3)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(out), atol=tol * f.max())
    jitted = jax.jit(lambda a, b, c, d: sim.render_gaussian_stars(a, b, c, d, (30, 40)))(*args)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(out), atol=tol * f.max())
    assert out.dtype == FLOAT
    # far tails in float32 keep relative accuracy (erfc form): a pixel 8 sigma away is still positive
    zero, unit = jnp.zeros(1, FLOAT), jnp.ones(1, FLOAT)
    one = sim.render_gaussian_stars(zero, zero, unit, 1.0, (1, 12))
    far = box_fraction_gauss(0.0, 1.0, 7.5, 8.5) * box_fraction_gauss(0.0, 1.0, -0.5, 0.5)
    np.testing.assert_allclose(float(one[0, 8]), far, rtol=1e-9 if X64 else 1e-4)
    # empty star list
    empty = jnp.zeros(0)
    assert float(jnp.abs(sim.render_gaussian_stars(empty, empty, empty, 1.0, (4, 5))).sum()) == 0.0


def test_render_moffat_edges_are_dropped_not_wrapped_and_gradients_flow():
    size = 9
    xs = jnp.asarray([-20.0, 1.2, 18.6], FLOAT)
    ys = jnp.asarray([5.0, 10.4, 28.9], FLOAT)
    fl = jnp.asarray([100.0, 200.0, 300.0], FLOAT)
    img = np.asarray(sim.render_moffat_stars(xs, ys, fl, 3.0, 2.5, (30, 20), stamp_size=size))
    # star 1 (x=-20) is entirely off the image; star 2 at column 1 loses the columns left of -0.5;
    # star 3 near the top-right corner is cut on two sides: compare with the kernel stamps
    for xc, yc, fc in ((1.2, 10.4, 200.0), (18.6, 28.9, 300.0)):
        ix, iy = math.floor(xc + 0.5), math.floor(yc + 0.5)
        k = fc * np.asarray(sim.moffat_pixel_kernel(3.0, 2.5, size, dx=xc - ix, dy=yc - iy, dtype=FLOAT))
        full = np.zeros((30 + 2 * size, 20 + 2 * size))
        full[iy + size - 4 : iy + size + 5, ix + size - 4 : ix + size + 5] += k
        part = full[size : size + 30, size : size + 20]
        mask = part > 0
        np.testing.assert_allclose(img[mask], part[mask], rtol=1e-5)
    total = float(img.sum())
    assert total < 500.0 and total > 250.0  # clipped stars lose flux, nothing wraps around
    assert img[:, 15:].sum() > 0 and img[0:2, :].sum() == 0  # no wrap from the top star to row 0
    g = jax.grad(lambda f: sim.render_moffat_stars(xs, ys, f, 3.0, 2.5, (30, 20), stamp_size=size).sum())(fl)
    np.testing.assert_allclose(np.asarray(g)[0], 0.0)
    assert np.all(np.asarray(g)[1:] > 0.3)


# ----------------------------------------------------------------------------------------------
# LSST makeFakeImages replica
# ----------------------------------------------------------------------------------------------


def lsst_reference(size, svar, tvar, psf1, psf2, offset, change, n, seed):
    """Vectorised numpy re-derivation of section 8.1's recipe (float64)."""
    rng = np.random.default_rng(seed)
    w, h = size
    xg, yg = np.meshgrid(np.arange(-w // 2, w // 2), np.arange(-h // 2, h // 2))
    sci = rng.normal(scale=np.sqrt(svar), size=(h, w))
    tmp = rng.normal(scale=np.sqrt(tvar), size=(h, w))
    if n:
        f = rng.uniform(50, 30000, n)
        x = rng.uniform(xg.min() + 16, xg.max() - 5, n)
        y = rng.uniform(yg.min() + 16, yg.max() - 5, n)
        fs = f.copy()
        fs[np.argmin(x**2 + y**2)] *= 1 + change

        def stack(xc, yc, s):
            r2 = (xg[None] - xc[:, None, None]) ** 2 + (yg[None] - yc[:, None, None]) ** 2
            g = np.exp(-r2 / (2 * s * s))
            return g / g.sum(axis=(1, 2), keepdims=True)

        tmp = tmp + np.einsum("k,kij->ij", f, stack(x, y, psf2))
        sci = sci + np.einsum("k,kij->ij", fs, stack(x + offset[0], y + offset[1], psf1))
    return sci, tmp


def test_lsst_zogy_images_replicate_the_recipe():
    kw = dict(
        size=(64, 48), svar=0.5, tvar=0.3, psf1=3.3, psf2=2.2, offset=(0.4, -0.3), varSourceChange=0.1,
        n_sources=6, seed=5,
    )
    sci, tmp = lsst_scenes.make_lsst_zogy_test_images(**kw)
    ref_s, ref_t = lsst_reference(kw["size"], 0.5, 0.3, 3.3, 2.2, kw["offset"], 0.1, 6, 5)
    tol = 1e-10 if X64 else 2e-3
    np.testing.assert_allclose(sci.image.array, ref_s, atol=tol * max(1.0, np.abs(ref_s).max()))
    np.testing.assert_allclose(tmp.image.array, ref_t, atol=tol * max(1.0, np.abs(ref_t).max()))
    assert sci.image.array.shape == (48, 64) and sci.getXY0() == (0, 0)
    np.testing.assert_array_equal(sci.variance.array, np.float32(0.5) if not X64 else 0.5)
    np.testing.assert_array_equal(tmp.variance.array, np.float32(0.3) if not X64 else 0.3)
    assert sci.getPhotoCalib() is None and tmp.getPhotoCalib() is None
    # PSFs: 25x25 windows of the normalised Gaussians around grid origin (template at the offset)
    i = np.arange(-12, 13)
    for exp, s, (ox, oy) in ((sci, 3.3, (0, 0)), (tmp, 2.2, kw["offset"])):
        k = np.asarray(exp.getPsf().computeKernelArray())
        assert k.shape == (25, 25)
        np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-12)
        ref = np.exp(-((i[None, :] - ox) ** 2 + (i[:, None] - oy) ** 2) / (2 * s * s))
        np.testing.assert_allclose(k, ref / ref.sum(), atol=1e-12)


def test_lsst_zogy_images_sourceless_noise():
    sci, tmp = lsst_scenes.make_lsst_zogy_test_images(size=(256, 256), svar=100.0, tvar=100.0, n_sources=0, seed=1)
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(sci.image.array, rng.normal(scale=10.0, size=(256, 256)), rtol=1e-6)
    assert abs(np.std(sci.image.array) / 10.0 - 1) < 0.02
    assert abs(np.std(tmp.image.array) / 10.0 - 1) < 0.02
    np.testing.assert_array_equal(sci.variance.array, 100.0)
    assert sci.hasWcs() and sci.getWcs().wcs.ctype[0] == "RA---SIN"
    assert sci.image.array.dtype == FLOAT
