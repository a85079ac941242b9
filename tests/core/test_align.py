"""Tests of jaxdiff.core.align (gradient-based sub-pixel alignment) and the lanczos3_linear kernel.

Truth comes from the simulation: the science stars are rendered (exact pixel-integrated
Gaussians) at the positions the known affine map sends the template stars to.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff.core.align import AlignmentResult, affine_coordinates, alignment_loss, refine_alignment
from jaxdiff.core.resample import resample, resample_variance, support_mask
from jaxdiff.testing.sim import render_gaussian_stars

SHAPE = (96, 96)
TRUTH = np.array([0.37, -0.21, np.deg2rad(0.3), 0.0])
SIGMA = 1.3  # FWHM 3.1 px
SKY_VAR = 2500.0  # sigma 50 per image: expected shift errors ~0.01 px


def _rot(t):
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _pair(dtype, noise, seed=1, n_stars=30):
    """Template stars at u, science stars at p = c + R^-1 (u - c - d) (same PSF)."""
    h, w = SHAPE
    rng = np.random.default_rng(seed)
    ux, uy = rng.uniform(6, w - 7, n_stars), rng.uniform(6, h - 7, n_stars)
    flux = rng.uniform(2e3, 2e4, n_stars)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    p = _rot(TRUTH[2]).T @ (np.vstack([ux, uy]) - c[:, None] - TRUTH[:2, None]) + c[:, None]
    tmpl = np.asarray(render_gaussian_stars(ux, uy, flux, SIGMA, SHAPE), np.float64)
    sci = np.asarray(render_gaussian_stars(p[0], p[1], flux, SIGMA, SHAPE), np.float64)
    if noise:
        sci = sci + rng.normal(scale=np.sqrt(SKY_VAR), size=SHAPE)
        tmpl = tmpl + rng.normal(scale=np.sqrt(SKY_VAR), size=SHAPE)
    return sci.astype(dtype), tmpl.astype(dtype)


def _errors(params):
    p = np.asarray(params, dtype=np.float64)
    return np.abs(p[:2] - TRUTH[:2]), abs(np.rad2deg(p[2] - TRUTH[2]))


def test_affine_coordinates_analytic(float_dtype):
    params = jnp.asarray([0.4, -1.2, 0.02, 0.01], float_dtype)
    x, y = affine_coordinates((5, 7), params)
    assert x.shape == (5, 7) and x.dtype == float_dtype
    c = np.array([3.0, 2.0])
    yy, xx = np.mgrid[0:5, 0:7]
    m = np.exp(0.01) * _rot(0.02)
    u = m @ np.vstack([xx.ravel() - c[0], yy.ravel() - c[1]]) + (c + [0.4, -1.2])[:, None]
    tol = 1e-12 if float_dtype == np.float64 else 1e-5
    np.testing.assert_allclose(np.asarray(x).ravel(), u[0], atol=tol)
    np.testing.assert_allclose(np.asarray(y).ravel(), u[1], atol=tol)
    # zero params: the identity
    x0, y0 = affine_coordinates((5, 7), jnp.zeros(4, float_dtype))
    np.testing.assert_array_equal(np.asarray(x0), xx)
    np.testing.assert_array_equal(np.asarray(y0), yy)


def test_alignment_loss_definition_and_grad(float_dtype, x64):
    sci, tmpl = _pair(float_dtype, noise=True)
    params = jnp.asarray([0.3, -0.1, 0.004, 0.0], float_dtype)
    vs, vt = np.full(SHAPE, SKY_VAR, float_dtype), SKY_VAR
    got = alignment_loss(params, sci, tmpl, vs, vt, kernel="lanczos3")
    x, y = affine_coordinates(SHAPE, params)
    model = resample(tmpl, x, y)
    var = vs + resample_variance(jnp.full(SHAPE, vt, float_dtype), x, y)
    ok = np.asarray(support_mask(SHAPE, x, y))
    ref = np.mean((np.asarray(sci - model) ** 2 / np.asarray(var))[ok])
    assert float(got) == pytest.approx(ref, rel=1e-10 if x64 else 1e-4)
    g = jax.grad(alignment_loss)(params, sci, tmpl, vs, vt)
    assert g.shape == (4,) and bool(jnp.all(jnp.isfinite(g)))
    # at the truth the noisy loss is about 1 (pure noise, variance propagated)
    at_truth = alignment_loss(jnp.asarray(TRUTH, float_dtype), sci, tmpl, vs, vt, kernel="lanczos3_linear")
    assert 0.8 < float(at_truth) < 1.25


def test_alignment_loss_check_grads(x64):
    if not x64:
        pytest.skip("finite-difference gradient checks need float64")
    from jax.test_util import check_grads

    rng = np.random.default_rng(5)
    h = w = 32
    tmpl = np.asarray(render_gaussian_stars(np.array([14.2, 20.7]), np.array([15.1, 9.6]),
                                            np.array([1e3, 6e2]), 1.4, (h, w)))
    sci = np.asarray(render_gaussian_stars(np.array([14.0, 20.4]), np.array([15.3, 9.9]),
                                           np.array([1e3, 6e2]), 1.4, (h, w))) + rng.normal(size=(h, w))
    # small rotation / scale: no pixel within 0.15 px of the support edge, which the finite
    # differences must not cross (the support set is piecewise constant)
    p0 = jnp.array([0.23, -0.31, 0.002, 0.001])

    def f(p):
        return alignment_loss(p, sci, tmpl, 1.0, 0.5)

    check_grads(jax.jit(f), (p0,), order=1, modes=["fwd", "rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fits(float_dtype):
    """Noise-free and noisy pairs fitted with one compiled optimizer (lanczos3_linear)."""
    opt = optax.adam(0.05)
    out = {}
    for noise in (False, True):
        sci, tmpl = _pair(float_dtype, noise)
        var = SKY_VAR if noise else None
        res = refine_alignment(sci, tmpl, var, var, optimizer=opt, n_steps=150, kernel="lanczos3_linear")
        out[noise] = (res, sci, tmpl)
    return out


def test_refine_alignment_noise_free(fits, float_dtype):
    res, _, _ = fits[False]
    assert isinstance(res, AlignmentResult)
    assert res.params.shape == (4,) and res.loss_history.shape == (150,)
    assert res.params.dtype == float_dtype
    assert bool(jnp.all(jnp.isfinite(res.loss_history)))
    dxy, drot = _errors(res.params)
    assert np.all(dxy < 0.01), dxy
    assert drot < 0.01, drot
    assert float(res.params[3]) == 0.0  # fit_scale=False keeps init
    assert float(res.final_loss) < 1e-3 * float(res.loss_history[0])


def test_refine_alignment_noisy_within_expected_error(fits, float_dtype):
    res, _, _ = fits[True]
    # expected errors: Fisher matrix J^T J of the whitened residuals on the noise-free pair
    sci0, tmpl0 = _pair(np.float64, noise=False)
    x, y = affine_coordinates(SHAPE, jnp.asarray(TRUTH))
    ok = np.asarray(support_mask(SHAPE, x, y))
    sd = np.sqrt(SKY_VAR + np.asarray(resample_variance(np.full(SHAPE, SKY_VAR), x, y, kernel="lanczos3_linear")))

    def model(p):
        return resample(tmpl0, *affine_coordinates(SHAPE, p), kernel="lanczos3_linear")

    jac = np.asarray(jax.jacfwd(model)(jnp.asarray(TRUTH)))[ok][:, :3] / sd[ok][:, None]
    sig = np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)))
    assert 0.002 < sig[0] < 0.05 and 0.002 < sig[1] < 0.05  # a meaningful test
    err = np.asarray(res.params, np.float64)[:3] - TRUTH[:3]
    assert np.all(np.abs(err) < 4 * sig + 0.003), (err, sig)
    assert 0.8 < float(res.final_loss) < 1.25


def test_refine_alignment_default_kernel_and_options(float_dtype):
    """Default optimizer and kernel ('lanczos3') still reach 0.01 px noise-free (small image)."""
    sci, tmpl = _pair(float_dtype, noise=False)
    # the same central crop of both keeps the map about the (crop) centre: 64^2 is quicker
    sci, tmpl = sci[16:80, 16:80], tmpl[16:80, 16:80]
    res = refine_alignment(sci, tmpl, n_steps=60, fit_rotation=False,
                           init=(0.0, 0.0, TRUTH[2], 0.0))
    dxy, drot = _errors(res.params)
    assert np.all(dxy < 0.01), dxy
    assert drot == pytest.approx(0.0, abs=1e-5)  # rotation fixed at init
    with pytest.raises(ValueError):
        refine_alignment(sci, tmpl, init=(0.0, 0.0))
    with pytest.raises(ValueError):
        refine_alignment(sci, tmpl, kernel="cubic")


# ----------------------------------------------------------------------------------------------
# lanczos3_linear: exact linear reproduction, unbiased centroids
# ----------------------------------------------------------------------------------------------


def test_lanczos3_linear_reproduces_ramps(float_dtype):
    yy, xx = np.mgrid[0:24, 0:24].astype(float_dtype)
    ramp = 3.0 * xx - 2.0 * yy + 5.0
    rng = np.random.default_rng(0)
    xs = rng.uniform(3, 20, (8, 8)).astype(float_dtype)
    ys = rng.uniform(3, 20, (8, 8)).astype(float_dtype)
    got = np.asarray(resample(ramp, xs, ys, kernel="lanczos3_linear"), np.float64)
    tol = 1e-10 if float_dtype == np.float64 else 2e-4
    np.testing.assert_allclose(got, 3.0 * xs - 2.0 * ys + 5.0, atol=tol)
    # plain (afw) lanczos3 does not: errors up to 0.02 px times the slope
    bad = np.asarray(resample(ramp, xs, ys, kernel="lanczos3"), np.float64)
    assert np.max(np.abs(bad - (3.0 * xs - 2.0 * ys + 5.0))) > 0.02
    # still interpolating: integer positions return the pixel values
    img = rng.normal(size=(24, 24)).astype(float_dtype)
    np.testing.assert_allclose(np.asarray(resample(img, xx[4:20, 4:20], yy[4:20, 4:20], kernel="lanczos3_linear")),
                               img[4:20, 4:20], atol=tol)


@pytest.mark.parametrize("fwhm", [2.5, 3.5])
def test_lanczos3_linear_star_centroids(fwhm, float_dtype):
    """Warped star centroids agree with truth to 0.01 px (rotation 7 deg + sub-pixel shift)."""
    sigma = fwhm / 2.3548
    g = np.arange(14.0, 120.0, 18.0) + 0.13
    ux, uy = [a.ravel() for a in np.meshgrid(g, g * 1.01)]
    img = np.asarray(render_gaussian_stars(ux, uy, 1e3, sigma, (128, 128), dtype=float_dtype))
    params = jnp.asarray([0.37, -0.21, np.deg2rad(7.0), 0.0], float_dtype)
    xs, ys = affine_coordinates((128, 128), params)
    c = np.array([63.5, 63.5])
    p = _rot(np.deg2rad(7.0)).T @ (np.vstack([ux, uy]) - c[:, None] - np.array([[0.37], [-0.21]])) + c[:, None]
    res = {}
    for kernel in ("lanczos3", "lanczos3_linear"):
        out = np.asarray(resample(img, xs, ys, kernel=kernel), np.float64)
        dpos = []
        for xc, yc in p.T:
            if not (10 < xc < 117 and 10 < yc < 117):
                continue
            ix, iy, r = int(round(xc)), int(round(yc)), 7
            st = out[iy - r:iy + r + 1, ix - r:ix + r + 1]
            yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
            dpos.append(np.hypot((st * xx).sum() / st.sum() - xc, (st * yy).sum() / st.sum() - yc))
        assert len(dpos) >= 25
        res[kernel] = np.max(dpos)
    assert res["lanczos3_linear"] < 0.01 * (0.1 if float_dtype == np.float64 else 0.3)
    assert res["lanczos3"] > res["lanczos3_linear"]
