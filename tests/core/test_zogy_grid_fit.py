"""Grid-of-cells ZOGY, the flux-ratio/shift fit, Fourier shifts and peak detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy.special import erf

from jaxdiff.core.detection import find_peaks, peaks_to_table
from jaxdiff.core.zogy import zogy
from jaxdiff.core.zogy_fit import fit_flux_ratio_shift, fourier_shift
from jaxdiff.core.zogy_grid import cell_noise_variances, zogy_cells
from jaxdiff.image.psf import gaussian_kernel_array


def _render(xs, ys, f, sigma, shape, dx=0.0, dy=0.0):
    """Pixel-integrated Gaussian stars (exact erf integrals), independent of jaxdiff.testing.sim."""
    def prof(c, n):
        g = np.arange(n)[None, :]
        s = np.sqrt(2) * sigma
        return 0.5 * (erf((g + 0.5 - c[:, None]) / s) - erf((g - 0.5 - c[:, None]) / s))

    return prof(ys + dy, shape[0]).T @ (f[:, None] * prof(xs + dx, shape[1]))


@pytest.fixture(scope="module")
def field(float_dtype):
    rng = np.random.default_rng(4)
    shape = (200, 232)
    n = 50
    xs, ys = rng.uniform(10, shape[1] - 10, n), rng.uniform(10, shape[0] - 10, n)
    f = 10 ** rng.uniform(3, 5, n)
    new = _render(xs, ys, 1.3 * f, 2.2, shape, 0.25, -0.15) + rng.normal(0, 10, shape) + 5.0
    ref = _render(xs, ys, f, 1.5, shape) + rng.normal(0, 5, shape)
    return dict(new=new.astype(float_dtype), ref=ref.astype(float_dtype),
                pn=gaussian_kernel_array(2.2, 21, 21).astype(float_dtype),
                pr=gaussian_kernel_array(1.5, 21, 21).astype(float_dtype), shape=shape)


def test_grid_with_constant_psf_matches_single_cell(field, x64):
    """With the same PSFs and noise in every cell, stitched cells equal the whole-image result."""
    shape = field["shape"]
    ny, nx, ch, cw, border = 2, 3, 100, 78, 40
    psfs_n = jnp.broadcast_to(jnp.asarray(field["pn"]), (ny, nx, 21, 21))
    psfs_r = jnp.broadcast_to(jnp.asarray(field["pr"]), (ny, nx, 21, 21))
    var_n = jnp.full(shape, 100.0, field["new"].dtype)
    var_r = jnp.full(shape, 25.0, field["new"].dtype)
    noise_n = jnp.full((ny, nx), 100.0, field["new"].dtype)
    noise_r = jnp.full((ny, nx), 25.0, field["new"].dtype)
    grid = zogy_cells(field["new"], field["ref"], psfs_n, psfs_r, var_n, var_r, noise_n, noise_r,
                      cell_shape=(ch, cw), border=border)
    whole = zogy(field["new"], field["ref"], field["pn"], field["pr"], var_n, var_r, new_noise_var=100.0,
                 ref_noise_var=25.0)
    inner = (slice(30, -30), slice(30, -30))
    noise = float(jnp.sqrt(jnp.mean(whole.difference_variance)))
    delta = np.asarray(grid.difference)[inner] - np.asarray(whole.difference)[inner]
    if x64:  # agreement far below the noise
        assert np.abs(delta).max() < 1e-3 * noise
    else:
        # float32: where both OTFs sink below float32 rounding (high frequencies of these broad
        # PSFs) the D kernels are ratios of rounding errors, different on the two FFT grids: D
        # differs at a fraction of the noise, pixel by pixel (README, "Precision").  S_corr is not
        # affected (checked below).
        assert np.sqrt(np.mean(delta**2)) < 0.15 * noise
    sdiff = np.abs(np.asarray(grid.score_corr)[inner] - np.asarray(whole.score_corr)[inner]).max()
    assert sdiff < (1e-3 if x64 else 2e-2)
    np.testing.assert_allclose(np.asarray(grid.difference_variance)[inner],
                               np.asarray(whole.difference_variance)[inner], rtol=1e-4)
    assert grid.difference_psf.shape == (ny, nx, 21, 21)
    np.testing.assert_allclose(np.asarray(grid.difference_psf[1, 2]), np.asarray(whole.difference_psf),
                               atol=1e-6)


def test_grid_uses_per_cell_noise(field):
    """Each cell's D variance follows that cell's own noise level."""
    shape = field["shape"]
    ny, nx = 2, 2
    cols = np.arange(shape[1])[None, :] * np.ones(shape)
    var_n = np.where(cols < 116, 50.0, 200.0).astype(field["new"].dtype)
    good = jnp.ones(shape, bool)
    noise = cell_noise_variances(jnp.asarray(var_n), good, cell_shape=(100, 116), n_cells=(ny, nx))
    np.testing.assert_allclose(np.asarray(noise), [[50.0, 200.0], [50.0, 200.0]], rtol=1e-6)
    # a PSF whose transform stays above float32 rounding, so the check holds in both precisions
    psf = gaussian_kernel_array(1.2, 21, 21).astype(var_n.dtype)
    psfs = jnp.broadcast_to(jnp.asarray(psf), (ny, nx, 21, 21))
    res = zogy_cells(field["new"], field["ref"], psfs, psfs, var_n, jnp.full(shape, 25.0, var_n.dtype),
                     noise, jnp.full((ny, nx), 25.0, var_n.dtype), cell_shape=(100, 116), border=30)
    v = np.asarray(res.difference_variance)
    assert v[50, 40] == pytest.approx(75.0, rel=0.01)
    assert v[50, 200] == pytest.approx(225.0, rel=0.01)


def test_fourier_shift_of_a_gaussian_is_analytic(float_dtype, x64):
    yy, xx = np.mgrid[0:96, 0:80].astype(np.float64)

    def blob(x0, y0):
        return np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / 3.0**2)

    img = blob(37.0, 45.0).astype(float_dtype)
    out = np.asarray(fourier_shift(jnp.asarray(img), jnp.asarray([0.4, -0.3], img.dtype)))
    np.testing.assert_allclose(out, blob(37.4, 44.7), atol=1e-6 if x64 else 1e-5)
    # compared with scipy's spline shift on band-limited noise, away from the edges
    rng = np.random.default_rng(1)
    noise = ndimage.gaussian_filter(rng.normal(size=(96, 80)), 3.0, mode="wrap").astype(float_dtype)
    out = np.asarray(fourier_shift(jnp.asarray(noise), jnp.asarray([2.0, 1.0], img.dtype)))
    np.testing.assert_allclose(out[12:-12, 12:-12], noise[11:-13, 10:-14], atol=1e-3 * np.abs(noise).max())


def test_fit_flux_ratio_and_shift_recovers_truth(field):
    fit = fit_flux_ratio_shift(field["new"], field["ref"], field["pn"], field["pr"], 100.0, 25.0)
    assert float(fit.flux_ratio) == pytest.approx(1.3, rel=3e-3)
    np.testing.assert_allclose(np.asarray(fit.shift), [0.25, -0.15], atol=0.01)
    assert float(fit.background) == pytest.approx(5.0, abs=1.0)
    assert int(fit.n_used) > 500
    # the reported errors describe the actual errors: bounded below by the truth's offset / 5 and
    # small enough to be informative (a zero or an infinite error fails)
    err, truth = np.asarray(fit.shift_err), np.array([0.25, -0.15])
    assert np.all(np.abs(np.asarray(fit.shift) - truth) < 5 * err + 1e-3) and np.all((err > 0) & (err < 0.01))
    assert abs(float(fit.flux_ratio) - 1.3) < 5 * float(fit.flux_ratio_err) + 1e-3 < 0.02


def test_fit_recovers_issue_pair_and_reports_fit(field, x64):
    """Issue 12's case: beta 1.1, shift (0.3, -0.2) px recovered to 1 % and 0.02 px; the fit result of the
    core's Levenberg-Marquardt comes along and its errors cover the truth."""
    rng = np.random.default_rng(11)
    shape = field["shape"]
    n = 60
    xs, ys = rng.uniform(12, shape[1] - 12, n), rng.uniform(12, shape[0] - 12, n)
    f = 10 ** rng.uniform(3, 4.7, n)
    new = _render(xs, ys, 1.1 * f, 2.2, shape, 0.3, -0.2) + rng.normal(0, 10, shape) + 3.0
    ref = _render(xs, ys, f, 1.5, shape) + rng.normal(0, 5, shape)
    dtype = field["new"].dtype
    fit = fit_flux_ratio_shift(new.astype(dtype), ref.astype(dtype), field["pn"], field["pr"], 100.0, 25.0)
    assert int(fit.status) == 0
    assert float(fit.flux_ratio) == pytest.approx(1.1, rel=0.01)
    np.testing.assert_allclose(np.asarray(fit.shift), [0.3, -0.2], atol=0.02)
    assert abs(float(fit.flux_ratio) - 1.1) < 5 * float(fit.flux_ratio_err) + 2e-3
    assert np.all(np.abs(np.asarray(fit.shift) - [0.3, -0.2]) < 5 * np.asarray(fit.shift_err) + 2e-3)
    np.testing.assert_allclose(np.asarray(fit.fit.params[:3]), [float(fit.flux_ratio), *np.asarray(fit.shift)])
    hist = np.asarray(fit.fit.loss_history)
    assert np.all(np.diff(hist) <= 1e-6 * hist[0])  # accepted steps never raise chi2


def test_fit_without_usable_pixels_returns_nan(field):
    fit = fit_flux_ratio_shift(field["new"], field["ref"], field["pn"], field["pr"], 100.0, 25.0,
                               jnp.zeros(field["shape"], bool))
    assert int(fit.n_used) == 0 and np.isnan(float(fit.flux_ratio))


def test_find_peaks_against_scipy(float_dtype):
    rng = np.random.default_rng(2)
    img = ndimage.gaussian_filter(rng.normal(size=(64, 72)), 1.5).astype(float_dtype)
    img /= img.std()
    thr = 1.5
    peaks = peaks_to_table(find_peaks(jnp.asarray(img), thr, max_peaks=500, footprint=5))
    maxf = ndimage.maximum_filter(img, size=5, mode="constant", cval=-np.inf)
    ys, xs = np.nonzero((img == maxf) & (img > thr))
    assert {(p["y"], p["x"]) for p in peaks} == set(zip(ys.tolist(), xs.tolist(), strict=True))
    values = [p["value"] for p in peaks]
    assert values == sorted(values, reverse=True)
    valid = np.ones(img.shape, bool)
    valid[:, :36] = False
    right = peaks_to_table(find_peaks(jnp.asarray(img), thr, jnp.asarray(valid), max_peaks=500))
    assert all(p["x"] >= 36 for p in right) and len(right) == int(np.sum(xs >= 36))


def test_fit_is_jittable_and_vmappable(field):
    batch = jnp.stack([jnp.asarray(field["new"]), 2 * jnp.asarray(field["new"])])
    fits = jax.vmap(lambda n: fit_flux_ratio_shift(n, field["ref"], field["pn"], field["pr"], 100.0, 25.0))(batch)
    # each vmapped entry against its own unbatched fit, and against the truth (beta 1.3 and 2.6)
    for i in range(2):
        single = fit_flux_ratio_shift(batch[i], field["ref"], field["pn"], field["pr"], 100.0, 25.0)
        np.testing.assert_allclose(float(fits.flux_ratio[i]), float(single.flux_ratio), rtol=1e-4)
        np.testing.assert_allclose(np.asarray(fits.shift[i]), np.asarray(single.shift), atol=1e-4)
        assert float(single.flux_ratio) == pytest.approx(1.3 * (i + 1), rel=3e-3)


def _sampled_gaussian(sigma, size):
    """Centre-sampled float64 Gaussian stamp (tails below 1e-13 at the edge for small sigma)."""
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma**2)
    return g / g.sum()


@pytest.mark.parametrize("psfs", [(1.2, 1.0, 25), (3.3, 2.2, 15)], ids=["compact", "truncated"])
def test_host_kernel_mode_is_the_auto_choice(field, psfs):
    """The kernel path chosen on the host for zogy_cells is the one zogy's "auto" takes on the same grid:
    "full" exactly when the reported kernel tail exceeds the tolerance (or the grid is small), and
    zogy_cells with that static mode reproduces zogy's outputs."""
    from jaxdiff.core.zogy import KERNEL_TAIL_TOLERANCE, psf_low_part
    from jaxdiff.core.zogy_grid import cells_kernel_mode

    sn, sr, size = psfs
    dtype = field["new"].dtype
    pn64, pr64 = _sampled_gaussian(sn, size), _sampled_gaussian(sr, size)
    shape, border = field["shape"], size
    lo = {}
    if dtype == np.float32:
        lo = {"new_psfs_lo": jnp.asarray(psf_low_part(pn64))[None, None],
              "ref_psfs_lo": jnp.asarray(psf_low_part(pr64))[None, None]}  # fmt: skip
    pn, pr = jnp.asarray(pn64, dtype)[None, None], jnp.asarray(pr64, dtype)[None, None]
    noise = jnp.full((1, 1), 100.0, dtype), jnp.full((1, 1), 25.0, dtype)
    mode = cells_kernel_mode(pn, pr, *noise, image_shape=shape, cell_shape=shape, border=border, **lo)
    from jaxdiff.core.fft import fast_fft_shape

    fft_shape = fast_fft_shape((shape[0] + 2 * border, shape[1] + 2 * border))
    ref = zogy(field["new"], field["ref"], pn64, pr64, 100.0, 25.0, new_noise_var=100.0, ref_noise_var=25.0,
               fft_shape=fft_shape)  # fmt: skip
    assert mode == ("full" if bool(ref.full_grid) else "box")
    assert bool(ref.full_grid) == (float(ref.kernel_tail) > KERNEL_TAIL_TOLERANCE)
    var = [jnp.full(shape, v, dtype) for v in (100.0, 25.0)]
    cells = zogy_cells(field["new"], field["ref"], pn, pr, *var, *noise, cell_shape=shape, border=border,
                       kernel_mode=mode, **lo)  # fmt: skip
    tol = 1e-5 if dtype == np.float32 else 1e-10
    scale = float(jnp.max(jnp.abs(ref.score_corr)))
    np.testing.assert_allclose(cells.score_corr, ref.score_corr, atol=tol * scale)
    np.testing.assert_allclose(cells.difference, ref.difference, atol=tol * float(jnp.max(jnp.abs(ref.difference))))
