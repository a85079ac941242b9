"""Tests of the Alard–Lupton decorrelation afterburner (``jaxdiff.core.decorrelate``, DMTN-021).

Float mode comes from ``tests/conftest.py`` (float64 unless ``--float32``).  Every test compares
with something independent of jaxdiff: (a) float64 numpy implementations of the formulas written
here (np.fft, scipy.ndimage); (b) noise statistics of simulated AL differences; (c) analytic
identities (delta kernel); (d) the PSF of a noise-free point source; (e) the score image on
white noise and injected sources; (f) NaN edge bands; (g) SFFT's DECam decorrelation kernel;
plus an explicit-matrix oracle for the variance propagation, gradients and jit/vmap behaviour.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import ndimage

from jaxdiff.core import decorrelate as decor_module
from jaxdiff.core.decorrelate import (
    DecorrelationResult,
    decorrelate,
    decorrelation_kernel,
    decorrelation_kernel_ft,
    default_fft_shape,
    score_image,
)

# --------------------------------------------------------------------------------------
# independent numpy helpers (float64)
# --------------------------------------------------------------------------------------


def gauss(sigma, size, total=1.0, center=(0.0, 0.0), sigma_y=None):
    """Gaussian stamp (rows = y), centre pixel size // 2 shifted by ``center`` = (dy, dx), sum ``total``."""
    sigma_y = sigma if sigma_y is None else sigma_y
    y = np.arange(size) - size // 2
    g = np.exp(
        -((y[:, None] - center[0]) ** 2 / (2 * sigma_y**2) + (y[None, :] - center[1]) ** 2 / (2 * sigma**2))
    )
    return total * g / g.sum()


def origin_padded(a, shape):
    """Zero array of ``shape`` with stamp element k // 2 at index 0 (modular indexing)."""
    out = np.zeros(shape)
    out[np.ix_(*((np.arange(k) - k // 2) % n for k, n in zip(a.shape, shape, strict=True)))] = a
    return out


def centered_crop(a, shape):
    """Inverse of ``origin_padded``: the stamp of ``shape`` around index 0 of a periodic array."""
    return a[np.ix_(*((np.arange(k) - k // 2) % n for k, n in zip(shape, a.shape, strict=True)))]


def ref_phi_full(kernel, sv, tv, fft_shape):
    """φ̂ on the full DFT grid (DMTN-021 eq. 1 with ip_diffim's kernel-sum numerator)."""
    k_hat = np.fft.fft2(origin_padded(kernel, fft_shape))
    return np.sqrt((sv + tv * kernel.sum() ** 2) / (sv + tv * np.abs(k_hat) ** 2)), k_hat


def ref_decorrelate(d, v, kernel, sv, tv, fft_shape, *, psf=None, mask=None, pad_mode="constant",
                    planes=None, variance_mode="estimate"):  # fmt: skip
    """float64 numpy version of ``decorrelate``; ``planes`` = (V_I, V_T) with (sv, tv) their levels."""
    d, v = np.asarray(d, float), np.broadcast_to(np.asarray(v, float), d.shape)
    (h, w), (fh, fw) = d.shape, fft_shape
    valid = np.isfinite(d) & np.isfinite(v)
    if planes is not None:
        valid &= np.isfinite(planes[0]) & np.isfinite(planes[1])
    if mask is not None:
        valid &= ~mask
    fill = d[valid].mean()
    y0, x0 = (fh - h) // 2, (fw - w) // 2
    pads = ((y0, fh - h - y0), (x0, fw - w - x0))

    def pad(a, value):
        if pad_mode == "constant":
            return np.pad(a, pads, constant_values=value)
        return np.pad(a, pads, mode="reflect")

    def crop(a):
        return a[y0 : y0 + h, x0 : x0 + w]

    phi, k_hat = ref_phi_full(kernel, sv, tv, fft_shape)
    image = crop(np.fft.ifft2(np.fft.fft2(pad(np.where(valid, d, fill), fill)) * phi).real)
    image[~valid] = np.nan
    if planes is None:
        var = v * (sv + tv * kernel.sum() ** 2) / (sv + tv * (kernel**2).sum())
    else:
        vs, vt = (np.where(np.isfinite(p), p, lev) for p, lev in zip(planes, (sv, tv), strict=True))
        if variance_mode == "estimate":
            var = vs * np.mean(phi**2) + vt * np.mean(phi**2 * np.abs(k_hat) ** 2)
        else:
            g1 = np.fft.ifft2(phi).real
            g2 = np.fft.ifft2(np.conj(k_hat) * phi).real
            var = crop(np.fft.ifft2(np.fft.fft2(g1**2) * np.fft.fft2(pad(vs, sv))
                                    + np.fft.fft2(g2**2) * np.fft.fft2(pad(vt, tv))).real)  # fmt: skip
    var = np.where(valid, var, np.inf)
    out_psf = None
    if psf is not None:
        p = np.fft.ifft2(np.fft.fft2(origin_padded(psf / psf.sum(), fft_shape)) * phi).real
        out_psf = centered_crop(p, psf.shape)
        out_psf /= out_psf.sum()
    return image, var, out_psf, phi[:, : fw // 2 + 1], valid


def ref_score(d, v, psf, mask=None):
    """Direct (scipy.ndimage) matched filter Σ P·D / sqrt(Σ P² V) over valid pixels."""
    v = np.broadcast_to(v, d.shape)
    valid = np.isfinite(d) & np.isfinite(v)
    if mask is not None:
        valid &= ~mask
    num = ndimage.correlate(np.where(valid, d, 0.0), psf, mode="constant", cval=0.0)
    den = ndimage.correlate(np.where(valid, v, 0.0), psf**2, mode="constant", cval=0.0)
    return np.where(valid, num / np.sqrt(den), np.nan)


def rel_err(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    fin = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), fin) and np.array_equal(a[~fin], b[~fin], equal_nan=True)
    scale = np.abs(b[fin]).max()
    return np.abs(a[fin] - b[fin]).max() / (scale if scale > 0 else 1.0)


def as_input(a):
    """What jaxdiff sees (float32-rounded without x64), back as float64 numpy for the reference."""
    return np.asarray(jnp.asarray(a)).astype(np.float64)


def lag1(a):
    """Lag-1 autocorrelation coefficients of ``a`` along x and y."""
    a = a - a.mean()
    var = np.mean(a * a)
    return np.mean(a[:, 1:] * a[:, :-1]) / var, np.mean(a[1:] * a[:-1]) / var


def al_difference(rng, n, kernel, sigma_i, sigma_t, sigma_t_map=None):
    """D = I − κ ⋆ T (afw correlation via scipy.ndimage) for white noise I, T, cut from a larger field."""
    k = kernel.shape[0]
    big = n + 2 * k
    img = rng.normal(0.0, sigma_i, (big, big))
    tmpl = rng.normal(0.0, 1.0, (big, big)) * (sigma_t if sigma_t_map is None else np.sqrt(sigma_t_map))
    d = img - ndimage.correlate(tmpl, kernel, mode="wrap")
    return d[k : k + n, k : k + n]


KAPPA = gauss(1.5, 15, total=1.2)  # the brief's AL kernel: Gaussian σ 1.5 px, sum 1.2


@pytest.fixture
def need_x64(x64):
    if not x64:
        pytest.skip("finite-difference gradient checks need float64")


# --------------------------------------------------------------------------------------
# (a) agreement with the numpy reference
# --------------------------------------------------------------------------------------

KERNEL_CASES = {
    "gauss-sum1.2": (KAPPA, 1.0, 9.0, (64, 64)),
    "offset-elliptic": (gauss(1.2, 11, 0.9, center=(1.0, -2.0), sigma_y=2.0), 2.0, 3.0, (45, 60)),
    "random": (np.random.default_rng(3).normal(size=(7, 9)) * 0.1 + gauss(1.0, 9)[1:8], 1.0, 0.5, (30, 33)),
}


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_ft_matches_numpy(name, rtol):
    kernel, sv, tv, fft_shape = KERNEL_CASES[name]
    kernel = as_input(kernel)
    got = decorrelation_kernel_ft(kernel, sv, tv, fft_shape=fft_shape)
    want = ref_phi_full(kernel, sv, tv, fft_shape)[0][:, : fft_shape[1] // 2 + 1]
    assert got.shape == want.shape
    assert rel_err(got, want) < rtol
    assert abs(float(got[0, 0]) - 1.0) < 10 * rtol  # flux preserved: φ̂(0) = 1 for any kernel sum


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_image_matches_numpy_and_is_symmetric(name, rtol):
    kernel, sv, tv, _ = KERNEL_CASES[name]
    kernel = as_input(kernel)
    phi = np.asarray(decorrelation_kernel(kernel, sv, tv, size=(21, 25), fft_shape=(96, 100)))
    want = centered_crop(np.fft.ifft2(ref_phi_full(kernel, sv, tv, (96, 100))[0]).real, (21, 25))
    assert rel_err(phi, want) < rtol
    assert rel_err(phi, phi[::-1, ::-1]) < rtol  # φ̂ real and even: point-symmetric kernel
    default = decorrelation_kernel(kernel, sv, tv)
    assert default.shape == (2 * max(kernel.shape) + 1,) * 2
    # sum φ̂(0) = 1 up to the truncated tails (long for a noisy kernel)
    assert abs(float(jnp.sum(default)) - 1.0) < (1e-2 if name == "random" else 1e-3)


DECOR_CASES = {
    "scalar-constant": dict(shape=(64, 64), pad_mode="constant", planes=False, psf=(1.8, 13)),
    "scalar-reflect-odd": dict(shape=(63, 80), pad_mode="reflect", planes=False, psf=None),
    "planes-estimate-nan": dict(shape=(72, 64), pad_mode="constant", planes=True, mode="estimate", nan=True,
                                psf=(2.0, 17)),
    "planes-propagate-mask": dict(shape=(64, 56), pad_mode="constant", planes=True, mode="propagate",
                                  nan=True, mask=True, psf=None),
    "planes-propagate-reflect-fft": dict(shape=(50, 60), pad_mode="reflect", planes=True, mode="propagate",
                                         fft_shape=(81, 75), psf=(1.5, 9)),
}  # fmt: skip


def make_decor_case(
    seed, shape, pad_mode, planes, psf, mode="estimate", nan=False, mask=False, fft_shape=None
):
    rng = np.random.default_rng(seed)
    kernel = as_input(gauss(1.3, 11, 1.1, center=(0.5, -1.0), sigma_y=1.7))
    d = as_input(rng.normal(size=shape) * 2.0 + 0.3)
    v = as_input(rng.uniform(3.0, 5.0, size=shape))
    if nan:
        d[:5], d[:, -4:] = np.nan, np.nan
        d[30, 20] = np.inf
        v[10, 10] = np.inf
    m = None
    if mask:
        m = np.zeros(shape, bool)
        m[20:23, 30:40] = True
    kwargs = dict(pad_mode=pad_mode, mask=m)
    if fft_shape is not None:
        kwargs["fft_shape"] = fft_shape
    if psf is not None:
        kwargs["science_psf"] = as_input(gauss(psf[0], psf[1], sigma_y=1.2 * psf[0]))
    if planes:
        vs = as_input(rng.uniform(1.0, 2.0, size=shape))
        vt = as_input(rng.uniform(2.0, 3.0, size=shape))
        vt[15, 15] = np.nan
        args = (d, v, kernel, vs, vt)
        kwargs["variance_mode"] = mode
    else:
        args = (d, v, kernel, 1.4, 2.6)
    return args, kwargs


@pytest.mark.parametrize("name", DECOR_CASES)
def test_decorrelate_matches_numpy(name, rtol):
    case = DECOR_CASES[name]
    args, kwargs = make_decor_case(11, **case)
    res = decorrelate(*args, **kwargs)
    d, v, kernel, sv, tv = args
    psf = kwargs.get("science_psf")
    fft_shape = kwargs.get("fft_shape") or default_fft_shape(d.shape, kernel.shape, *([psf.shape] if psf is not None
                                                                                        else []))  # fmt: skip
    assert res.kernel_ft.shape == (fft_shape[0], fft_shape[1] // 2 + 1)
    planes = None
    if case["planes"]:
        planes = (sv, tv)
        sv, tv = float(res.science_variance), float(res.template_variance)
        # the levels are afw-style clipped means: within the plane ranges, and ignoring the NaN
        assert 1.0 < sv < 2.0 and 2.0 < tv < 3.0
    want = ref_decorrelate(d, v, kernel, sv, tv, fft_shape, psf=psf, mask=kwargs["mask"],
                           pad_mode=case["pad_mode"], planes=planes, variance_mode=case.get("mode"))  # fmt: skip
    image, var, out_psf, phi, valid = want
    np.testing.assert_array_equal(np.asarray(res.valid), valid)
    assert rel_err(res.image, image) < rtol
    assert rel_err(res.variance, var) < rtol
    assert rel_err(res.kernel_ft, phi) < rtol
    if psf is None:
        assert res.psf is None
    else:
        assert res.psf.shape == psf.shape and rel_err(res.psf, out_psf) < rtol


def test_variance_plane_levels_are_clipped_means(rtol):
    """A constant plane with outliers and NaNs has the constant as its 3σ-clipped mean."""
    rng = np.random.default_rng(2)
    shape = (40, 40)
    vs = np.full(shape, 2.0)
    vs[3, 4], vs[10, 11], vs[20, 5] = 500.0, np.nan, 900.0
    vt = np.full(shape, 5.0)
    vt[7, 7] = 1e4
    res = decorrelate(rng.normal(size=shape), 3.0, gauss(1.2, 7), vs, vt)
    assert abs(float(res.science_variance) - 2.0) < rtol
    assert abs(float(res.template_variance) - 5.0) < rtol


def test_propagated_variance_matches_explicit_matrices(rtol):
    """Orientation oracle: build the linear maps I → D' and T → D' as explicit matrices.

    On a periodic grid (``fft_shape`` = image shape) with an off-centre, asymmetric κ applied by
    afw's correlation (``ndimage.correlate``), D' = Φ (I − C T); for independent pixel noise the
    exact variance is (Φ²) V_I + ((Φ C)²) V_T.  Spatially varying V_I, V_T make the result
    sensitive to flipping κ.
    """
    rng = np.random.default_rng(7)
    shape = (18, 16)
    n = shape[0] * shape[1]
    kernel = as_input(gauss(1.0, 7, 1.1, center=(1.5, -1.0), sigma_y=1.6))
    vs = as_input(rng.uniform(0.5, 3.0, size=shape))
    vt = as_input(np.linspace(0.5, 8.0, n).reshape(shape) ** 2 / 4)
    img, tmpl = as_input(rng.normal(size=shape)), as_input(rng.normal(size=shape))
    d = img - ndimage.correlate(tmpl, kernel, mode="wrap")
    res = decorrelate(d, 1.0, kernel, vs, vt, variance_mode="propagate", fft_shape=shape)
    sv, tv = float(res.science_variance), float(res.template_variance)

    eye = np.eye(n).reshape(n, *shape)
    corr = np.stack([ndimage.correlate(e, kernel, mode="wrap").ravel() for e in eye], axis=1)  # C[x, y]
    phi = ref_phi_full(kernel, sv, tv, shape)[0]
    phi_mat = np.stack([np.fft.ifft2(np.fft.fft2(e) * phi).real.ravel() for e in eye], axis=1)
    want_image = phi_mat @ d.ravel()
    want_var = phi_mat**2 @ vs.ravel() + (phi_mat @ corr) ** 2 @ vt.ravel()
    assert rel_err(np.asarray(res.image).ravel(), want_image) < rtol
    assert rel_err(np.asarray(res.variance).ravel(), want_var) < rtol
    # and the flipped kernel would give a clearly different variance plane
    flipped = (phi_mat @ corr.T) ** 2 @ vt.ravel() + phi_mat**2 @ vs.ravel()
    assert rel_err(flipped, want_var) > 1e-3


# --------------------------------------------------------------------------------------
# (b) noise statistics of a simulated AL difference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(planes="estimate"), dict(planes="propagate"), dict(pad_mode="reflect")],
    ids=["scalar", "planes-estimate", "planes-propagate", "scalar-reflect"],
)
def test_whitening_statistics(kwargs):
    rng = np.random.default_rng(20)
    n, sigma_i, sigma_t = 256, 1.0, 3.0
    d = al_difference(rng, n, KAPPA, sigma_i, sigma_t)
    before = lag1(d)
    assert min(before) > 0.1
    v_d = sigma_i**2 + sigma_t**2 * np.sum(KAPPA**2)
    if "planes" in kwargs:
        res = decorrelate(d, v_d, KAPPA, np.full((n, n), sigma_i**2), np.full((n, n), sigma_t**2),
                          variance_mode=kwargs["planes"])  # fmt: skip
    else:
        res = decorrelate(d, np.full((n, n), v_d), KAPPA, sigma_i**2, sigma_t**2, **kwargs)
    out, var = np.asarray(res.image, float), np.asarray(res.variance, float)
    assert max(abs(c) for c in lag1(out)) < 0.03
    white = sigma_i**2 + sigma_t**2 * KAPPA.sum() ** 2  # the whitened level (Parseval)
    np.testing.assert_allclose(var[20:-20, 20:-20], white, rtol=1e-3)
    assert abs(out.std() / np.sqrt(var.mean()) - 1) < 0.03
    # lag-2 and the diagonal are whitened too
    o = out - out.mean()
    assert abs(np.mean(o[:, 2:] * o[:, :-2]) / o.var()) < 0.03
    assert abs(np.mean(o[1:, 1:] * o[:-1, :-1]) / o.var()) < 0.03


def test_whitening_with_spatially_varying_template_noise():
    """Per-pixel variance: the decorrelated std in each half matches the returned variance plane."""
    rng = np.random.default_rng(21)
    n = 256
    vt_map = np.where(np.arange(n + 30)[None, :] < (n + 30) // 2, 4.0, 16.0) * np.ones((n + 30, 1))
    d = al_difference(rng, n, KAPPA, 1.0, None, sigma_t_map=vt_map)
    vt = vt_map[15 : 15 + n, 15 : 15 + n]
    res = decorrelate(d, 1.0, KAPPA, np.ones((n, n)), vt, variance_mode="propagate")
    out, var = np.asarray(res.image, float), np.asarray(res.variance, float)
    for cols in (slice(20, n // 2 - 20), slice(n // 2 + 20, n - 20)):
        block = out[20:-20, cols]
        assert abs(block.std() / np.sqrt(var[20:-20, cols].mean()) - 1) < 0.04


# --------------------------------------------------------------------------------------
# (c) identities
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "offset"), [(1.0, (0, 0)), (2.5, (1, -2))])
def test_delta_kernel_is_identity(total, offset, rtol):
    kernel = np.zeros((7, 7))
    kernel[3 + offset[0], 3 + offset[1]] = total
    phi_ft = decorrelation_kernel_ft(kernel, 1.3, 2.0, fft_shape=(20, 22))
    np.testing.assert_allclose(np.asarray(phi_ft), 1.0, rtol=0, atol=rtol)
    phi = np.asarray(decorrelation_kernel(kernel, 1.3, 2.0))
    want = np.zeros_like(phi)
    want[phi.shape[0] // 2, phi.shape[1] // 2] = 1.0
    np.testing.assert_allclose(phi, want, rtol=0, atol=rtol)
    d = as_input(np.random.default_rng(0).normal(size=(40, 36)))
    res = decorrelate(d, 2.0, kernel, 1.3, 2.0, science_psf=gauss(1.5, 9))
    assert rel_err(res.image, d) < 10 * rtol
    # the variance is rescaled by (σ_I² + σ_T² k²) / (σ_I² + σ_T² Σκ²) = 1 for a delta
    np.testing.assert_allclose(np.asarray(res.variance), 2.0, rtol=10 * rtol)
    assert rel_err(res.psf, gauss(1.5, 9)) < 10 * rtol


def test_noiseless_template_limit_deconvolves(rtol):
    """σ_T² ≫ σ_I²: φ̂ → κ_sum / |κ̂|, so φ ⊛ (κ ⋆ T) ≈ κ_sum T for a band-limited T."""
    kernel = gauss(0.7, 5, 1.2)
    phi_ft = np.asarray(decorrelation_kernel_ft(kernel, 1e-8, 1.0, fft_shape=(32, 32)))
    k_hat = np.abs(np.fft.fft2(origin_padded(kernel, (32, 32))))[:, :17]
    np.testing.assert_allclose(phi_ft, 1.2 / k_hat, rtol=1e-4 if rtol < 1e-6 else 2e-3)


# --------------------------------------------------------------------------------------
# (d) the PSF of the decorrelated difference
# --------------------------------------------------------------------------------------


def test_psf_of_noise_free_point_source(x64, rtol):
    psf = gauss(2.0, 25, sigma_y=1.6)
    shape, (y, x), flux = (128, 128), (60, 71), 1000.0
    d = np.zeros(shape)
    d[y - 12 : y + 13, x - 12 : x + 13] = flux * psf
    res = decorrelate(d, 1.0, KAPPA, 1.0, 9.0, science_psf=psf)
    stamp = np.asarray(res.image, float)[y - 12 : y + 13, x - 12 : x + 13]
    got_psf = np.asarray(res.psf, float)
    assert abs(got_psf.sum() - 1) < 10 * rtol
    assert rel_err(stamp / stamp.sum(), got_psf) < (1e-9 if x64 else 1e-4)
    assert abs(stamp.sum() / flux - 1) < 1e-3  # flux preserved: φ̂(0) = 1
    assert got_psf.max() > 1.2 * psf.max()  # decorrelation sharpens the PSF
    want = ref_decorrelate(
        d, 1.0, KAPPA, 1.0, 9.0, default_fft_shape(shape, KAPPA.shape, psf.shape), psf=psf
    )[2]
    assert rel_err(got_psf, want) < rtol


# --------------------------------------------------------------------------------------
# (e) score image
# --------------------------------------------------------------------------------------


def test_score_matches_direct_correlation(rtol):
    rng = np.random.default_rng(5)
    shape = (60, 52)
    d = as_input(rng.normal(size=shape))
    v = as_input(rng.uniform(0.5, 2.0, size=shape))
    d[:3], v[40, 7] = np.nan, np.inf
    mask = np.zeros(shape, bool)
    mask[30:33, 20:25] = True
    psf = as_input(gauss(1.4, 11, center=(0.3, -0.7), sigma_y=2.1))
    got = score_image(d, v, psf, mask=mask)
    assert rel_err(got, ref_score(d, v, psf, mask)) < rtol
    got_scalar = score_image(d, 1.5, psf, fft_shape=(80, 72))
    assert rel_err(got_scalar, ref_score(d, 1.5, psf)) < rtol


def test_score_white_noise_and_injected_sources(x64, rtol):
    rng = np.random.default_rng(6)
    n, sigma = 256, 2.0
    psf = gauss(2.0, 21)
    noise = rng.normal(0.0, sigma, (n, n))
    s = np.asarray(score_image(noise, sigma**2, psf), float)
    assert abs(s.std() - 1) < 0.05 and abs(s.mean()) < 0.05
    # point sources at S/N 10: flux F = 10 σ / sqrt(Σ P²)
    flux = 10 * sigma / np.sqrt(np.sum(psf**2))
    sources = np.zeros((n, n))
    centres = [(y, x) for y in range(32, n - 20, 48) for x in range(32, n - 20, 48)]
    for y, x in centres:
        sources[y - 10 : y + 11, x - 10 : x + 11] += flux * psf
    clean = np.asarray(score_image(sources, sigma**2, psf), float)
    np.testing.assert_allclose([clean[c] for c in centres], 10.0, rtol=10 * rtol)
    noisy = np.asarray(score_image(sources + noise, sigma**2, psf), float)
    peaks = np.array([noisy[c] for c in centres])
    assert len(peaks) == 25 and abs(peaks.mean() - 10) < 0.6 and np.all(np.abs(peaks - 10) < 4)


def test_score_after_decorrelation_is_in_sigma():
    """On a raw AL difference the score is mis-scaled; after decorrelation it has unit std."""
    rng = np.random.default_rng(8)
    n = 256
    d = al_difference(rng, n, KAPPA, 1.0, 3.0)
    v_d = 1.0 + 9.0 * np.sum(KAPPA**2)
    psf = gauss(2.0, 21)
    raw = np.asarray(score_image(d, v_d, psf), float)
    res = decorrelate(d, v_d, KAPPA, 1.0, 9.0, science_psf=psf)
    s = np.asarray(score_image(res.image, res.variance, res.psf), float)
    assert raw.std() > 1.5
    assert abs(s[10:-10, 10:-10].std() - 1) < 0.05


# --------------------------------------------------------------------------------------
# (f) NaN edge band
# --------------------------------------------------------------------------------------


def test_nan_edge_band_does_not_poison(rtol):
    rng = np.random.default_rng(9)
    n, band = 128, 7
    d = al_difference(rng, n, KAPPA, 1.0, 3.0)
    v = np.full((n, n), 1.0 + 9.0 * np.sum(KAPPA**2))
    d_band, v_band = d.copy(), v.copy()
    d_band[:band], d_band[-band:], d_band[:, :band], d_band[:, -band:] = np.nan, np.nan, np.nan, np.nan
    v_band[:band] = np.inf  # afw's edge convention: NaN image, inf variance
    d_band[50, 60], d_band[70, 20] = np.inf, -np.inf
    mask = np.zeros((n, n), bool)
    mask[90:95, 40:50] = True
    res = decorrelate(d_band, v_band, KAPPA, 1.0, 9.0, science_psf=gauss(2.0, 15), mask=mask)
    valid = np.isfinite(d_band) & np.isfinite(v_band) & ~mask
    np.testing.assert_array_equal(np.asarray(res.valid), valid)
    out, var = np.asarray(res.image, float), np.asarray(res.variance, float)
    assert np.all(np.isfinite(out[valid])) and np.all(np.isnan(out[~valid]))
    assert np.all(np.isfinite(var[valid])) and np.all(np.isposinf(var[~valid]))
    assert np.all(np.isfinite(np.asarray(res.psf)))
    # identical to decorrelating the image with the invalid pixels set to the valid mean
    filled = np.where(valid, d_band, d_band[valid].mean())
    ref = np.asarray(decorrelate(filled, v, KAPPA, 1.0, 9.0).image, float)
    assert rel_err(out[valid], ref[valid]) < 10 * rtol
    # and whitened, with the right level, right next to the band
    inner = out[band : band + 5, band:-band]
    assert abs(inner.std() / np.sqrt(1.0 + 9.0 * KAPPA.sum() ** 2) - 1) < 0.1
    s = np.asarray(score_image(res.image, res.variance, res.psf), float)
    assert np.array_equal(np.isfinite(s), valid)


# --------------------------------------------------------------------------------------
# (g) SFFT's decorrelation kernel for DECam stacks (third-party answer)
# --------------------------------------------------------------------------------------


def test_sfft_decam_decorrelation_kernel(shared_dir, x64):
    """SFFT ``DeCorrelation_Calculator``: φ̂ ∝ 1/sqrt(N_J(k) + N_I(k) |K̂_fin(k)|²) for median stacks.

    N_J = Σ_j σ_j² |K̂_j|² / 5² over the 5 PSF-matched science exposures (K = δ for exposure a),
    N_I likewise for the reference stack; 64×64 grid, 51×51 stamp, unit sum.  With noise power
    spectra for the two variances jaxdiff's formula is the same up to normalisation.  σ_j are
    MAD-based standard deviations of the exposures (SFFT used DAOPHOT-MMM sky sigmas, which are
    not stored; the shared README reports max |Δ| = 7e-4 for MAD sigmas).
    """
    fits = pytest.importorskip("astropy.io.fits")
    root = shared_dir / "data" / "sfft_decam_decorr"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    grid = (64, 64)

    def spectrum(group):
        total = np.zeros((grid[0], grid[1] // 2 + 1))
        for e in "abcde":
            img = fits.getdata(root / "input_data" / f"DEC-OBS{group}{e}.mini.fits").astype(float)
            sigma = 1.482602218505602 * np.median(np.abs(img - np.median(img)))
            kfile = root / "input_data" / f"DEC-OBS{group}{e}.MatchKernel.fits"
            k = fits.getdata(kfile).astype(float) if kfile.exists() else np.ones((1, 1))
            total += sigma**2 * np.abs(np.fft.rfft2(origin_padded(k, grid))) ** 2 / 25
        return total

    n_sci, n_ref = spectrum("04"), spectrum("18")
    final = fits.getdata(root / "input_data" / "FinalMatchKernel.fits").astype(float)
    want = fits.getdata(root / "4check" / "DeCorrKernel.fits").astype(float)
    phi = np.array(decorrelation_kernel(final, n_sci, n_ref, size=51, fft_shape=grid), float)
    phi /= phi.sum()
    assert np.unravel_index(np.argmax(phi), phi.shape) == (25, 25)
    assert np.abs(phi - want).max() < 1.5e-3 * (1 if x64 else 1.5)  # peak 3.40
    # white-noise levels (ip_diffim's assumption) cannot describe these stacks: far worse match
    white = np.asarray(decorrelation_kernel(final, n_sci.mean(), n_ref.mean(), size=51, fft_shape=grid))
    assert np.abs(white / white.sum() - want).max() > 0.1


# --------------------------------------------------------------------------------------
# gradients, degenerate frequencies
# --------------------------------------------------------------------------------------


@pytest.fixture
def grad_inputs():
    rng = np.random.default_rng(12)
    shape = (24, 22)
    d = rng.normal(size=shape)
    v = rng.uniform(1.0, 2.0, size=shape)
    weights = rng.normal(size=(3, *shape))
    return d, v, weights


@pytest.mark.usefixtures("need_x64")
@pytest.mark.parametrize("planes", [None, "estimate", "propagate"])
def test_grad_difference_and_kernel(grad_inputs, planes):
    d, v, weights = grad_inputs
    psf = jnp.asarray(gauss(1.5, 9))
    vs, vt = (1.3, 2.2) if planes is None else (v, 2 * v)

    def f(diff, kernel, sv):
        res = decorrelate(diff, v, kernel, sv if planes is None else sv * vs, vt, science_psf=psf,
                          variance_mode=planes or "estimate")  # fmt: skip
        return (jnp.sum(weights[0] * res.image) + 0.1 * jnp.sum(weights[1] * res.variance)
                + jnp.sum(res.psf**2 * weights[2, :9, :9]))  # fmt: skip

    args = (jnp.asarray(d), jnp.asarray(gauss(1.2, 7, 1.1, center=(0.3, 0.0))), jnp.asarray(1.0))
    check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"))


@pytest.mark.usefixtures("need_x64")
def test_grad_kernel_ft_and_score(grad_inputs):
    d, v, weights = grad_inputs

    def f_phi(kernel, sv, tv):
        return decorrelation_kernel_ft(kernel, sv, tv, fft_shape=(16, 18))

    check_grads(jax.jit(f_phi), (jnp.asarray(gauss(1.0, 5, 1.2)), jnp.asarray(0.7), jnp.asarray(1.9)), order=2,
                modes=("fwd", "rev"))  # fmt: skip

    def f_score(diff, var, psf):
        return jnp.sum(weights[0] * score_image(diff, var, psf))

    check_grads(jax.jit(f_score), (jnp.asarray(d), jnp.asarray(v), jnp.asarray(gauss(1.3, 7))), order=1,
                modes=("fwd", "rev"))  # fmt: skip


def test_degenerate_frequencies_finite_values_and_gradients():
    """Zero science variance and a kernel whose transfer function vanishes (2-pixel box: exact zero
    on the Nyquist column): φ̂ = 1 there, everything else finite, gradients finite."""
    kernel = np.zeros((3, 3))
    kernel[1, 1:] = 0.5
    phi = np.asarray(decorrelation_kernel_ft(kernel, 0.0, 1.0, fft_shape=(8, 8)))
    assert np.all(np.isfinite(phi)) and np.all(phi[:, -1] == 1.0)
    d = np.random.default_rng(0).normal(size=(16, 16))

    def loss(k, sv):
        res = decorrelate(d, 1.0, k, sv, 1.0, science_psf=gauss(1.0, 5), fft_shape=(16, 16))
        return jnp.sum(res.image**2) + jnp.sum(res.variance) + jnp.sum(res.psf**2)

    val, grads = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(kernel), jnp.asarray(0.0))
    assert np.isfinite(float(val)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    all_zero = decorrelation_kernel_ft(kernel, 0.0, 0.0, fft_shape=(8, 8))
    np.testing.assert_array_equal(np.asarray(all_zero), 1.0)  # no noise: no correction


# --------------------------------------------------------------------------------------
# jit / vmap / retracing / validation / dtypes
# --------------------------------------------------------------------------------------


def test_vmap_matches_loop(rtol):
    rng = np.random.default_rng(13)
    b, shape = 3, (32, 30)
    ds = jnp.asarray(rng.normal(size=(b, *shape)))
    kernels = jnp.stack([jnp.asarray(gauss(s, 7, 1.1)) for s in (0.9, 1.2, 1.5)])
    tvs = jnp.asarray([1.0, 2.0, 3.0])
    psf = gauss(1.4, 9)

    def one(d, k, tv):
        return decorrelate(d, 2.0, k, 1.0, tv, science_psf=psf)

    batched = jax.vmap(one)(ds, kernels, tvs)
    for i in range(b):
        single = one(ds[i], kernels[i], tvs[i])
        for got, want in zip(batched, single, strict=True):
            assert rel_err(got[i], want) < rtol


def test_jit_and_no_retrace(monkeypatch):
    # count traces: the jitted decorrelation calls the module-level _phi_hat only while tracing
    traces = []
    original = decor_module._phi_hat

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(decor_module, "_phi_hat", counting)
    rng = np.random.default_rng(4)
    shape = (34, 46)  # used nowhere else
    for _ in range(3):
        decorrelate(rng.normal(size=shape), rng.uniform(1, 2), gauss(1.2, 9), rng.uniform(1, 2), 2.0)
    assert len(traces) == 1  # new values of the same shapes do not retrace
    d = rng.normal(size=shape)
    eager = decorrelate(d, 1.0, gauss(1.2, 9), 1.0, 2.0)
    jitted = jax.jit(lambda x: decorrelate(x, 1.0, gauss(1.2, 9), 1.0, 2.0))(d)
    assert rel_err(jitted.image, eager.image) < 1e-5


def test_result_pytree_and_dtypes():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(20, 24))
    res = decorrelate(d.astype(np.float32), 1.0, gauss(1.0, 5), 1.0, 1.0, science_psf=gauss(1.0, 5))
    assert isinstance(res, DecorrelationResult)
    assert len(jax.tree_util.tree_leaves(res)) == len(DecorrelationResult._fields)
    floats = [x for x in jax.tree_util.tree_leaves(res) if x.dtype != jnp.bool_]
    assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
    assert score_image(d.astype(np.float32), 1.0, gauss(1.0, 5)).dtype == jnp.float32
    assert decorrelation_kernel(gauss(1.0, 5).astype(np.float32), 1.0, 1.0).dtype == jnp.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d: decorrelate(d, 1.0, np.ones((4, 5)), 1.0, 1.0), "odd-sized"),
        (lambda d: decorrelate(d, np.ones((3, 3)), gauss(1.0, 5), 1.0, 1.0), "variance"),
        (lambda d: decorrelate(d, 1.0, gauss(1.0, 5), 1.0, 1.0, pad_mode="edge"), "pad_mode"),
        (lambda d: decorrelate(d, 1.0, gauss(1.0, 5), 1.0, 1.0, variance_mode="x"), "variance_mode"),
        (lambda d: decorrelate(d, 1.0, gauss(1.0, 5), 1.0, 1.0, fft_shape=(10, 64)), "fft_shape"),
        (lambda d: decorrelate(d, 1.0, gauss(1.0, 5), 1.0, 1.0, mask=np.zeros((3, 3), bool)), "mask"),
        (lambda d: decorrelate(d[0], 1.0, gauss(1.0, 5), 1.0, 1.0), "2-D"),
        (lambda d: decorrelation_kernel(gauss(1.0, 5), 1.0, 1.0, size=8), "odd"),
        (lambda d: decorrelation_kernel(gauss(1.0, 5), np.ones((8, 5)), 1.0), "fft_shape"),
        (
            lambda d: decorrelation_kernel_ft(gauss(1.0, 5), np.ones((8, 8)), 1.0, fft_shape=(8, 8)),
            "spectrum",
        ),
        (lambda d: score_image(d, 1.0, gauss(1.0, 5), fft_shape=(20, 24)), "fft_shape"),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.zeros((20, 24)))


def test_default_fft_shapes():
    assert default_fft_shape((256, 256), (15, 15), (25, 25)) == (320, 320)
    res = decorrelate(np.zeros((50, 40)), 1.0, gauss(1.0, 11), 1.0, 1.0)
    assert res.kernel_ft.shape == (72, 64 // 2 + 1)
    phi_ft = functools.partial(decorrelation_kernel_ft, gauss(1.0, 5), 1.0, 1.0)
    assert phi_ft(fft_shape=(9, 10)).shape == (9, 6)
