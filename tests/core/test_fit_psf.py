"""PSF models and star-stamp fits (jaxdiff.core.fit): references, recovery, calibration, vmap, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxdiff.core._results import Status
from jaxdiff.core.fit import fit_psf_stamp, gaussian_stamp, moffat_stamp, parameter_names

SHAPE = (17, 17)


def _shape_inverse(e1, e2):
    s = np.sqrt(1 - e1 * e1 - e2 * e2)
    return (1 - e1) / s, -e2 / s, (1 + e1) / s  # M^-1 = [[a, b], [b, c]]


def _reference_stamp(profile, x0, y0, e1, e2, shape, n=40):
    """float64 numpy: midpoint rule with n x n sub-pixels (independent of the Gauss-Legendre model)."""
    h, w = shape
    sub = (np.arange(n) + 0.5) / n - 0.5
    ys = (np.arange(h)[:, None] + sub[None, :]).reshape(-1) - y0
    xs = (np.arange(w)[:, None] + sub[None, :]).reshape(-1) - x0
    a, b, c = _shape_inverse(e1, e2)
    dy, dx = ys[:, None], xs[None, :]
    u2 = a * dx * dx + 2 * b * dx * dy + c * dy * dy
    return profile(u2).reshape(h, n, w, n).mean(axis=(1, 3))


def test_round_gaussian_equals_erf_pixel_integral(float_dtype, x64):
    flux, x0, y0, sigma = 1234.0, 8.3, 7.6, 1.4
    ys, xs = np.arange(SHAPE[0]), np.arange(SHAPE[1])

    def axis(c, g):
        s = np.sqrt(2) * sigma
        return 0.5 * (erf((g + 0.5 - c) / s) - erf((g - 0.5 - c) / s))

    ref = flux * np.outer(axis(y0, ys), axis(x0, xs))
    got = gaussian_stamp(jnp.asarray([flux, x0, y0, sigma, 0.0, 0.0], float_dtype), SHAPE, n_sub=6)
    np.testing.assert_allclose(np.asarray(got), ref, atol=(1e-6 if x64 else 1e-4) * ref.max())


@pytest.mark.parametrize("e", [(0.0, 0.0), (0.2, -0.1), (-0.3, 0.25)])
def test_models_equal_subsampled_reference(float_dtype, x64, e):
    e1, e2 = e
    x0, y0 = 8.2, 7.9
    sigma = 1.7
    gauss = _reference_stamp(lambda u2: np.exp(-0.5 * u2 / sigma**2) / (2 * np.pi * sigma**2), x0, y0, e1, e2, SHAPE)
    fwhm, beta = 3.5, 2.7
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    moff = _reference_stamp(lambda u2: (beta - 1) / (np.pi * alpha**2) * (1 + u2 / alpha**2) ** -beta, x0, y0,
                            e1, e2, SHAPE)  # fmt: skip
    g = gaussian_stamp(jnp.asarray([1.0, x0, y0, sigma, e1, e2], float_dtype), SHAPE, n_sub=6)
    m = moffat_stamp(jnp.asarray([1.0, x0, y0, fwhm, beta, e1, e2], float_dtype), SHAPE, n_sub=6)
    # the midpoint rule with 40x40 sub-pixels is good to ~1e-5 of the peak
    np.testing.assert_allclose(np.asarray(g), gauss, atol=3e-5 * gauss.max())
    np.testing.assert_allclose(np.asarray(m), moff, atol=3e-5 * moff.max())


@pytest.fixture(scope="module")
def moffat_trials(float_dtype):
    """200 seeded Moffat stars with sky + Poisson-like Gaussian noise and their true variance."""
    rng = np.random.default_rng(12)
    n = 200
    truth = np.stack([
        rng.uniform(5e3, 2e4, n), 8 + rng.uniform(-0.5, 0.5, n), 8 + rng.uniform(-0.5, 0.5, n),
        rng.uniform(3.0, 4.0, n), rng.uniform(2.5, 4.0, n), rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n),
        np.full(n, 100.0),
    ], axis=1)  # fmt: skip
    model = np.asarray(jax.vmap(lambda p: moffat_stamp(p[:7], SHAPE))(jnp.asarray(truth)), np.float64) + 100.0
    variance = model  # gain 1: variance = expected counts (sky included)
    data = model + np.sqrt(variance) * rng.standard_normal(model.shape)
    return dict(truth=truth, data=data.astype(float_dtype), variance=variance.astype(float_dtype))


@pytest.fixture(scope="module")
def moffat_fits(moffat_trials):
    fit = jax.jit(jax.vmap(lambda s, v: fit_psf_stamp(s, v, model="moffat")))
    return fit(jnp.asarray(moffat_trials["data"]), jnp.asarray(moffat_trials["variance"]))


def test_hessian_errors_are_calibrated(moffat_trials, moffat_fits):
    """Each parameter lies within 2 of its Hessian standard errors in 90-99 % of 200 trials (Gaussian: 95.4 %)."""
    res = jax.device_get(moffat_fits)
    assert np.all(res.status == 0), Status(int(np.bitwise_or.reduce(res.status))).message
    pull = (res.params - moffat_trials["truth"]) / res.errors
    within = np.mean(np.abs(pull) < 2, axis=0)
    names = parameter_names("moffat")
    for name, frac in zip(names, within, strict=True):
        assert 0.90 <= frac <= 0.99, (name, frac)
    # and the reduced chi^2 is 1 on average (the variances are the true ones)
    assert abs(np.mean(res.chi2 / res.dof) - 1) < 0.02


def test_vmap_equals_separate_fits(moffat_trials, moffat_fits, x64):
    single = jax.jit(lambda s, v: fit_psf_stamp(s, v, model="moffat"))
    for i in (0, 57, 199):
        one = single(jnp.asarray(moffat_trials["data"][i]), jnp.asarray(moffat_trials["variance"][i]))
        tol = 1e-9 if x64 else 2e-4
        batch, alone = np.asarray(moffat_fits.params[i]), np.asarray(one.params)
        assert np.all(np.abs(batch - alone) <= tol * (np.abs(alone) + np.asarray(one.errors))), (batch, alone)


def test_second_batch_does_not_recompile(moffat_trials, float_dtype, compile_counter):
    fit = jax.jit(jax.vmap(lambda s, v: fit_psf_stamp(s, v, model="gaussian")))
    data, var = jnp.asarray(moffat_trials["data"][:64]), jnp.asarray(moffat_trials["variance"][:64])
    jax.block_until_ready(fit(data, var))
    data2 = jnp.asarray(moffat_trials["data"][64:128])
    with compile_counter as counter:
        jax.block_until_ready(fit(data2, var))
    assert counter.compiles == 0 and counter.traces == 0


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_noise_free_fit_recovers_truth_with_lm_and_optax(model, float_dtype, x64):
    import optax

    truth = {"gaussian": [3000.0, 8.4, 7.7, 1.8, 0.08, -0.05, 20.0],
             "moffat": [3000.0, 8.4, 7.7, 3.6, 3.2, 0.08, -0.05, 20.0]}[model]  # fmt: skip
    truth = jnp.asarray(truth, float_dtype)
    fn = gaussian_stamp if model == "gaussian" else moffat_stamp
    img = fn(truth[:-1], SHAPE) + truth[-1]
    var = jnp.full(SHAPE, 1.0, float_dtype)
    lm = fit_psf_stamp(img, var, model=model)
    assert int(lm.status) == 0
    np.testing.assert_allclose(np.asarray(lm.params), np.asarray(truth), rtol=1e-6 if x64 else 2e-3, atol=1e-4)
    start = lm.params * (1 + 0.02 * jnp.sign(jnp.arange(truth.shape[0]) % 2 - 0.5))  # 2 % off
    ad = fit_psf_stamp(img, var, start, model=model, optimizer=optax.adam(0.1), n_iter=3000)
    np.testing.assert_allclose(np.asarray(ad.params), np.asarray(truth), rtol=5e-3, atol=5e-3)
    assert float(ad.loss_history[-1]) < 1e-2 * float(ad.loss_history[0])


@pytest.mark.parametrize("point", ["round_centred_no_sky", "moffat_centred"])
def test_loss_gradients_at_degenerate_points(point, x64):
    """check_grads of the chi^2 of a stamp at zero ellipticity, a star at a pixel centre and zero sky."""
    if not x64:
        pytest.skip("finite-difference gradient checks need float64")
    from jax.test_util import check_grads

    small = (11, 11)  # small stamp: second-order finite differences are many model evaluations
    if point == "round_centred_no_sky":
        fn, p = gaussian_stamp, jnp.asarray([100.0, 5.0, 5.0, 1.5, 0.0, 0.0])
    else:
        fn, p = moffat_stamp, jnp.asarray([100.0, 5.0, 5.0, 3.0, 3.0, 0.0, 0.0])
    data = fn(p * 1.01, small)

    @jax.jit  # one compile per derivative order instead of op-by-op dispatch
    def loss(q):
        return jnp.sum((fn(q, small) - data) ** 2)

    check_grads(loss, (p,), order=2, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4)
    g = jax.grad(loss)(p)
    assert np.all(np.isfinite(np.asarray(g)))


def test_too_few_pixels_and_bad_shapes(float_dtype):
    img = jnp.ones(SHAPE, float_dtype)
    mask = jnp.zeros(SHAPE, bool).at[8, 8:11].set(True)  # 3 usable pixels for 8 parameters
    res = fit_psf_stamp(img, jnp.ones(SHAPE, float_dtype), model="moffat", mask=mask)
    assert int(res.status) & Status.too_few_pixels
    with pytest.raises(ValueError, match="model must be one of"):
        fit_psf_stamp(img, img, model="airy")
    with pytest.raises(ValueError, match="p0 must have 7 parameters"):
        fit_psf_stamp(img, img, jnp.zeros(3), model="gaussian")
