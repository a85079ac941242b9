"""Tests of jaxdiff.image.warp: resampling core, WCS pixel mapping, Exposure warping.

Every test compares against an independent reference: scipy.ndimage.map_coordinates, a direct
numpy Lanczos implementation, astropy's exact pixel -> sky -> pixel chain, or analytic truth.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS, Sip
from scipy.ndimage import gaussian_filter, map_coordinates

from jaxdiff import Box2I, Exposure, GaussianPsf, ImagePsf, Mask, MaskedImage
from jaxdiff.core.resample import resample, resample_mask, resample_variance, support_mask
from jaxdiff.image.psf import adaptive_moments
from jaxdiff.image.warp import warp_coordinates, warp_exposure, warp_psf
from jaxdiff.testing.sim import render_gaussian_stars

SCALE = 0.2 / 3600.0  # deg / pixel


def _rot(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _tan(crpix0, cd, crval=(150.0, 2.2)):
    """TAN WCS with 0-based PARENT reference pixel ``crpix0``."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [crpix0[0] + 1.0, crpix0[1] + 1.0]
    w.wcs.cd = np.asarray(cd, dtype=float)
    return w


def _affine_pair(c_s, c_t, R):
    """Science/template TAN WCSs with template PARENT pixel ``u = c_t + R (p - c_s)`` exactly."""
    cd_s = SCALE * np.diag([-1.0, 1.0])
    cd_t = cd_s @ np.linalg.inv(R)
    return _tan(c_s, cd_s), _tan(c_t, cd_t)


def _lanczos_reference(img, x, y, n):
    """Direct (loop) Lanczos-n interpolation with per-axis normalised weights."""
    out = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        xi, yi = x[idx], y[idx]
        fx, fy = int(np.floor(xi)), int(np.floor(yi))
        cols = np.arange(fx - n + 1, fx + n + 1)
        rows = np.arange(fy - n + 1, fy + n + 1)
        wx = np.sinc(xi - cols) * np.sinc((xi - cols) / n)
        wy = np.sinc(yi - rows) * np.sinc((yi - rows) / n)
        wx, wy = wx / wx.sum(), wy / wy.sum()
        # the last tap has weight 0 when the position is an integer: clip it onto the image
        rows_c = np.clip(rows, 0, img.shape[0] - 1)
        cols_c = np.clip(cols, 0, img.shape[1] - 1)
        out[idx] = wy @ img[np.ix_(rows_c, cols_c)] @ wx
    return out


def _tol(x64, f64, f32):
    return f64 if x64 else f32


# ----------------------------------------------------------------------------------------------
# Resampling core
# ----------------------------------------------------------------------------------------------


def test_resample_matches_references(x64, float_dtype):
    rng = np.random.default_rng(3)
    img = rng.normal(size=(30, 40))
    yy, xx = np.mgrid[0:30, 0:40].astype(float)
    # coordinates as the library sees them in this float mode, so that floor() agrees
    x = (0.96 * xx + 0.04 * yy + 0.37).astype(float_dtype).astype(np.float64)
    y = (1.02 * yy - 0.03 * xx - 0.21).astype(float_dtype).astype(np.float64)
    tol = _tol(x64, 1e-12, 2e-5)
    # bilinear == scipy order-1 spline wherever the 2x2 neighbourhood is inside
    ok = np.asarray(support_mask(img.shape, x, y, kernel="bilinear"))
    assert ok.sum() > 900
    out = np.asarray(resample(img, x, y, kernel="bilinear"))
    np.testing.assert_allclose(out[ok], map_coordinates(img, [y, x], order=1)[ok], atol=tol)
    # nearest == scipy order 0 (no exact .5 ties here)
    out = np.asarray(resample(img, x, y, kernel="nearest"))
    np.testing.assert_allclose(out[ok], map_coordinates(img, [y, x], order=0)[ok], atol=tol)
    # Lanczos-n == direct loop implementation
    for n in (2, 3, 5):
        ok = np.asarray(support_mask(img.shape, x, y, kernel=f"lanczos{n}"))
        out = np.asarray(resample(img, x, y, kernel=f"lanczos{n}"))
        ref = _lanczos_reference(img, np.where(ok, x, 10.0), np.where(ok, y, 10.0), n)
        np.testing.assert_allclose(out[ok], ref[ok], atol=tol * 10)
    # integer positions reproduce the image; a constant stays constant (normalised weights)
    np.testing.assert_allclose(np.asarray(resample(img, xx, yy)), img, atol=tol)
    np.testing.assert_allclose(np.asarray(resample(np.full((30, 40), 7.5), x, y))[ok], 7.5, rtol=tol)
    with pytest.raises(ValueError, match="unknown resampling kernel"):
        resample(img, x, y, kernel="cubic")


def test_support_mask_analytic():
    x = np.array([1.99, 2.0, 2.5, 36.0, 36.01, np.nan])
    y = np.full_like(x, 10.0)
    # lanczos3 on a width-40 image: x in [2, 37]; bilinear: [0, 39]
    assert np.asarray(support_mask((30, 40), x, y, kernel="lanczos3")).tolist() == [
        False, True, True, True, True, False]
    x = np.array([-0.01, 0.0, 39.0, 39.01])
    assert np.asarray(support_mask((30, 40), x, np.full_like(x, 3.0), kernel="bilinear")).tolist() == [
        False, True, True, False]


def test_resample_mask_and_variance_reference(x64):
    rng = np.random.default_rng(5)
    var = rng.uniform(1.0, 2.0, size=(20, 24))
    yy, xx = np.mgrid[3:17, 3:21].astype(float)
    x, y = xx + 0.4, yy - 0.25
    # variance: sum of squared separable weights (analytic for a pure translation)
    wx = np.array([np.sinc(d) * np.sinc(d / 3) for d in 0.4 + np.arange(2, -4, -1)])
    wy = np.array([np.sinc(d) * np.sinc(d / 3) for d in 0.75 + np.arange(2, -4, -1)])
    wx, wy = wx / wx.sum(), wy / wy.sum()
    w2 = np.outer(wy, wx) ** 2
    ref = np.array([[np.sum(w2 * var[int(r) - 3:int(r) + 3, int(c) - 2:int(c) + 4]) for c in xx[0]]
                    for r in yy[:, 0]])
    np.testing.assert_allclose(np.asarray(resample_variance(var, x, y)), ref, rtol=_tol(x64, 1e-12, 1e-5))
    # mask: OR of the pixels with non-zero bilinear weight
    m = np.zeros((20, 24), np.int32)
    m[7, 9] = 1
    m[12, 15] = 4
    got = np.asarray(resample_mask(m, x, y))
    for bit in (1, 4):
        ind = (m & bit).astype(float)
        ref = map_coordinates(ind, [y, x], order=1) > 0
        assert np.array_equal((got & bit) != 0, ref)


# ----------------------------------------------------------------------------------------------
# (a) stars through a rotation + shift
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1.1, 1.8])
def test_warped_star_positions_and_fluxes(sigma, float_dtype, x64):
    R = _rot(7.0)
    c_s, c_t = np.array([80.3, 74.6]), np.array([83.1, 71.2])
    sci_wcs, tmp_wcs = _affine_pair(c_s, c_t, R)
    txy0 = (2, -1)
    shape = (160, 160)
    g = np.arange(16.0, 150.0, 18.0)
    ux, uy = [a.ravel() for a in np.meshgrid(g + txy0[0], g + txy0[1])]
    flux = np.linspace(1e3, 5e3, ux.size)
    img = np.asarray(render_gaussian_stars(ux - txy0[0], uy - txy0[1], flux, sigma, shape,
                                           dtype=float_dtype))
    mi = MaskedImage(img, variance=np.ones(shape, float_dtype), xy0=txy0)
    template = Exposure(mi, psf=GaussianPsf(17, 17, sigma), wcs=tmp_wcs)
    sbbox = Box2I((4, -3), (150, 156))
    warped = warp_exposure(template, sci_wcs, sbbox)
    assert warped.getBBox() == sbbox and warped.getWcs() is sci_wcs
    assert warped.dtype == float_dtype

    # truth: p = c_s + R^-1 (u - c_t)
    p = c_s[:, None] + np.linalg.inv(R) @ (np.vstack([ux, uy]) - c_t[:, None])
    out = np.asarray(warped.image.array, dtype=np.float64)
    px, py = p[0] - sbbox.getMinX(), p[1] - sbbox.getMinY()
    r = 7
    inside = (px > r + 3) & (px < out.shape[1] - r - 4) & (py > r + 3) & (py < out.shape[0] - r - 4)
    assert inside.sum() >= 30
    dpos, dflux = [], []
    for xc, yc, f in zip(px[inside], py[inside], flux[inside], strict=True):
        ix, iy = int(round(xc)), int(round(yc))
        stamp = out[iy - r:iy + r + 1, ix - r:ix + r + 1]
        yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
        s = stamp.sum()
        dpos.append(np.hypot((stamp * xx).sum() / s - xc, (stamp * yy).sum() / s - yc))
        dflux.append(s / f - 1)
    # Lanczos-3 does not reproduce linear functions exactly: a star shifted by a fractional
    # delta moves by delta - eps(delta) with |eps| <= 0.020 px (LANCZOS3_MAX_BIAS; afw's
    # normalised Lanczos has the same property, see test_lanczos_centroid_bias_is_analytic),
    # so the 0.01 px goal is out of reach for Lanczos-3 itself: allow its intrinsic bound.
    assert np.max(dpos) < LANCZOS3_MAX_BIAS * np.sqrt(2) * 1.05
    assert np.median(dpos) < 0.015
    assert np.max(np.abs(dflux)) < 2e-3
    # the warped PSF (a pure rotation of a circular Gaussian) keeps its width
    wsig = warped.getPsf().computeShape().getDeterminantRadius()
    assert wsig == pytest.approx(template.getPsf().computeShape().getDeterminantRadius(), rel=1e-3)


def _lanczos_eps(delta, n=3):
    """First moment of the normalised Lanczos-n weights at fraction delta (linear-reproduction error)."""
    k = np.arange(-n + 1, n + 1)
    d = delta - k
    w = np.sinc(d) * np.sinc(d / n)
    return float(np.sum(w * d) / np.sum(w))


LANCZOS3_MAX_BIAS = max(abs(_lanczos_eps(d)) for d in np.linspace(0, 1, 201))


@pytest.mark.parametrize("delta", [(0.3, 0.45), (0.5, 0.1)])
def test_lanczos_centroid_bias_is_analytic(delta, float_dtype):
    assert 0.019 < LANCZOS3_MAX_BIAS < 0.021
    sigma, xs, ys = 1.5, 40.0, 37.0
    img = np.asarray(render_gaussian_stars(np.array([xs]), np.array([ys]), 1000.0, sigma, (80, 80),
                                           dtype=float_dtype))
    yy, xx = np.mgrid[0:80, 0:80].astype(np.float64)
    out = np.asarray(resample(img, xx + delta[0], yy + delta[1]), dtype=np.float64)
    cx, cy = (out * xx).sum() / out.sum(), (out * yy).sum() / out.sum()
    assert cx == pytest.approx(xs - delta[0] + _lanczos_eps(delta[0]), abs=1e-3)
    assert cy == pytest.approx(ys - delta[1] + _lanczos_eps(delta[1]), abs=1e-3)
    assert out.sum() == pytest.approx(1000.0, rel=1e-4)
    # bilinear reproduces linear functions: no centroid bias
    out = np.asarray(resample(img, xx + delta[0], yy + delta[1], kernel="bilinear"), dtype=np.float64)
    assert (out * xx).sum() / out.sum() == pytest.approx(xs - delta[0], abs=1e-3)


def test_warp_psf_analytic():
    # elliptical Gaussian, mapped by a rotation + anisotropic scale
    sx, sy = 2.0, 1.3
    d = np.arange(-12, 13)
    xx, yy = np.meshgrid(d, d)
    psf_t = np.exp(-0.5 * ((xx / sx) ** 2 + (yy / sy) ** 2))
    jac = _rot(25.0) @ np.diag([1.1, 0.95])
    got = warp_psf(psf_t / psf_t.sum(), jac)
    n = got.shape[0] // 2
    d = np.arange(-n, n + 1)
    xx, yy = np.meshgrid(d, d)
    ux = jac[0, 0] * xx + jac[0, 1] * yy
    uy = jac[1, 0] * xx + jac[1, 1] * yy
    ref = np.exp(-0.5 * ((ux / sx) ** 2 + (uy / sy) ** 2))
    ref /= ref.sum()
    assert np.max(np.abs(got - ref)) < 1e-2 * ref.max()
    # second moments: Sigma_s = J^-1 Sigma_t J^-T (pixel-sampled Gaussians, so compare loosely)
    q = adaptive_moments(got)
    ji = np.linalg.inv(jac)
    cov = ji @ np.diag([sx**2, sy**2]) @ ji.T
    assert q.getIxx() == pytest.approx(cov[0, 0], rel=0.02)
    assert q.getIyy() == pytest.approx(cov[1, 1], rel=0.02)
    assert q.getIxy() == pytest.approx(cov[0, 1], rel=0.05, abs=0.02)


# ----------------------------------------------------------------------------------------------
# (b) round trip
# ----------------------------------------------------------------------------------------------


def test_round_trip_band_limited(float_dtype, x64):
    rng = np.random.default_rng(11)
    field = gaussian_filter(rng.normal(size=(128, 128)), 3.0)
    field = (field / field.std()).astype(float_dtype)
    A = 1.0 * _rot(6.0)
    b = np.array([1.37, -0.61])
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    xf = A[0, 0] * xx + A[0, 1] * yy + b[0]
    yf = A[1, 0] * xx + A[1, 1] * yy + b[1]
    fwd = resample(field, xf, yf)
    Ai = np.linalg.inv(A)
    xb = Ai[0, 0] * (xx - b[0]) + Ai[0, 1] * (yy - b[1])
    yb = Ai[1, 0] * (xx - b[0]) + Ai[1, 1] * (yy - b[1])
    back = np.asarray(resample(fwd, xb, yb))
    interior = np.zeros((128, 128), bool)
    interior[24:-24, 24:-24] = True
    assert np.max(np.abs(back - field)[interior]) < 0.01 * float(field.std())
    # and one step agrees with scipy's (independent) spline interpolation of the same field
    ref = map_coordinates(field.astype(np.float64), [yf, xf], order=5)
    ok = np.asarray(support_mask(field.shape, xf, yf)) & interior
    assert np.max(np.abs(np.asarray(fwd) - ref)[ok]) < 0.03


# ----------------------------------------------------------------------------------------------
# (c) SIP mapping
# ----------------------------------------------------------------------------------------------


def _sip_wcs():
    w = _tan((100.0, 80.0), SCALE * np.array([[-0.98, 0.05], [0.04, 1.01]]), crval=(10.0, -30.0))
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    a = np.zeros((4, 4))
    bb = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 0], a[1, 2] = 1e-4, -7e-5, 5e-5, 3e-7, -2e-7
    bb[2, 0], bb[1, 1], bb[0, 2], bb[0, 3], bb[2, 1] = -5e-5, 1e-4, 7e-5, 2e-7, 1e-7
    w.sip = Sip(a, bb, None, None, w.wcs.crpix)
    return w


def test_warp_coordinates_sip_against_astropy():
    sci = _sip_wcs()
    tmp = _tan((60.0, 55.0), SCALE * 1.03 * _rot(-4.0) @ np.diag([-1.0, 1.0]), crval=(10.0, -30.0))
    bbox = Box2I((-5, 3), (200, 170))
    txy0 = (7, -4)
    x, y = warp_coordinates(sci, tmp, bbox, txy0, interp_length=10)
    assert x.shape == (170, 200)
    yy, xx = np.mgrid[3:173, -5:195].astype(float)
    tx, ty = tmp.world_to_pixel(sci.pixel_to_world(xx, yy))
    assert np.max(np.hypot(x - (tx - txy0[0]), y - (ty - txy0[1]))) < 0.01
    # the distortion is real: a pure affine fit misses by more than a pixel
    M = np.column_stack([np.ones(xx.size), xx.ravel(), yy.ravel()])
    res = tx.ravel() - M @ np.linalg.lstsq(M, tx.ravel(), rcond=None)[0]
    assert np.max(np.abs(res)) > 1.0
    x0, y0 = warp_coordinates(sci, tmp, bbox, txy0, interp_length=0)
    np.testing.assert_allclose(x0, tx - txy0[0], atol=1e-9)
    np.testing.assert_allclose(y0, ty - txy0[1], atol=1e-9)


def test_warp_coordinates_affine_fast_path(monkeypatch):
    """Two TAN WCSs (shift, rotation, scale): the fast path agrees with astropy's exact chain and
    evaluates the WCS at only a few dozen points; a SIP pair falls back to the coarse grid."""
    import jaxdiff.image.warp as warp

    sci = _tan((100.0, 90.0), SCALE * _rot(0.0) @ np.diag([-1.0, 1.0]))
    tmp = _tan((96.3, 93.8), SCALE * 1.002 * _rot(3.0) @ np.diag([-1.0, 1.0]))
    bbox = Box2I((0, 0), (240, 200))
    calls = []
    real = warp._map_pixels

    def counting(a, b, x, y):
        calls.append(np.size(x))
        return real(a, b, x, y)

    monkeypatch.setattr(warp, "_map_pixels", counting)
    x, y = warp_coordinates(sci, tmp, bbox, (3, -2))
    assert sum(calls) < 100
    yy, xx = np.mgrid[0:200, 0:240].astype(float)
    tx, ty = tmp.world_to_pixel(sci.pixel_to_world(xx, yy))
    assert np.max(np.hypot(x - (tx - 3), y - (ty + 2))) < 1e-3
    calls.clear()
    warp_coordinates(_sip_wcs(), tmp, bbox, (0, 0))
    assert sum(calls) > 400  # distorted: the exact coarse grid is evaluated


# ----------------------------------------------------------------------------------------------
# (d) masks and footprint
# ----------------------------------------------------------------------------------------------


def _flat_template(shape, crpix0, xy0=(0, 0), dtype=np.float64):
    h, w = shape
    rng = np.random.default_rng(2)
    img = (100.0 + rng.normal(size=shape)).astype(dtype)
    mask = Mask(np.zeros(shape, np.int32), xy0)
    mi = MaskedImage(img, mask, np.full(shape, 4.0, dtype), xy0=xy0)
    cd = SCALE * np.diag([-1.0, 1.0])
    return Exposure(mi, psf=ImagePsf(GaussianPsf(15, 15, 1.5).computeKernelArray()), wcs=_tan(crpix0, cd))


@pytest.mark.parametrize("dx, ncols", [(0.3, 2), (2.0, 1)])
def test_bad_column_band(dx, ncols, float_dtype):
    template = _flat_template((64, 80), (40.0 + dx, 32.0), dtype=float_dtype)
    bad = template.getMask().getPlaneBitMask("BAD")
    template.getMask().array[:, 30] = bad
    sci_wcs = _tan((40.0, 32.0), SCALE * np.diag([-1.0, 1.0]))
    warped = warp_exposure(template, sci_wcs, template.getBBox())
    m = np.asarray(warped.getMask().array)
    cols = np.where(((m & bad) != 0).any(axis=0))[0]
    # template x_t = x_s + dx: bilinear flags x_s with |x_s + dx - 30| < 1
    ref = np.where(np.abs(np.arange(80) + dx - 30) < 1)[0]
    assert len(cols) == ncols and np.array_equal(cols, ref)
    assert ((m[:, cols] & bad) != 0).all()


def test_outside_footprint_is_no_data(float_dtype):
    template = _flat_template((64, 80), (40.0, 32.0), xy0=(0, 0), dtype=float_dtype)
    nan_row = 50
    template.image.array[nan_row, 50] = np.nan  # a non-finite template pixel (science x 19.75)
    sci_wcs = _tan((10.0, 32.0), SCALE * np.diag([-1.0, 1.0]))  # x_t = x_s + 30.25 below
    sci_wcs.wcs.crpix[0] -= 0.25
    bbox = Box2I((0, 0), (90, 64))
    warped = warp_exposure(template, sci_wcs, bbox)
    planes = warped.getMask()
    nodata = planes.getPlaneBitMask("NO_DATA")
    m = np.asarray(planes.array)
    img, var = np.asarray(warped.image.array), np.asarray(warped.variance.array)
    x_t = np.arange(90) + 30.25
    y_t = np.arange(64)
    valid = ((x_t >= 2) & (x_t <= 80 - 3))[None, :] & ((y_t >= 2) & (y_t <= 64 - 3))[:, None]
    flagged = (m & nodata) != 0
    # the template NaN spreads NO_DATA over the Lanczos-3 footprint: |x_t - 50| < 3 on its row
    nan_band = np.zeros_like(valid)
    nan_band[nan_row, np.abs(x_t - 50) < 3] = True
    assert nan_band.sum() == 6
    assert np.array_equal(flagged, ~valid | nan_band)
    assert np.all(img[~valid] == 0) and np.all(np.isfinite(img)) and np.all(np.isfinite(var))
    assert np.all((m[~valid] & planes.getPlaneBitMask("EDGE")) != 0)
    fill = np.median(var[valid])
    np.testing.assert_allclose(var[~valid], fill)
    # valid pixels: data near 100 (not zeros that look like data)
    assert np.all(np.abs(img[valid & ~nan_band] - 100.0) < 10)


# ----------------------------------------------------------------------------------------------
# (e) variance propagation
# ----------------------------------------------------------------------------------------------


def test_warped_variance_matches_noise(float_dtype):
    shape = (200, 200)
    R = _rot(10.0)
    sci_wcs, tmp_wcs = _affine_pair(np.array([99.6, 100.2]), np.array([100.0, 100.0]), R)
    rng = np.random.default_rng(7)
    measured, propagated = [], []
    for _ in range(3):
        noise = rng.normal(size=shape).astype(float_dtype)
        mi = MaskedImage(noise, variance=np.ones(shape, float_dtype))
        t = Exposure(mi, wcs=tmp_wcs)
        w = warp_exposure(t, sci_wcs, Box2I((0, 0), (200, 200)))
        ok = (np.asarray(w.getMask().array) & w.getMask().getPlaneBitMask("NO_DATA")) == 0
        measured.append(np.mean(np.asarray(w.image.array, np.float64)[ok] ** 2))
        propagated.append(np.mean(np.asarray(w.variance.array, np.float64)[ok]))
    m, p = np.mean(measured), np.mean(propagated)
    assert 0.5 < p < 0.95  # Lanczos smooths white noise: the variance really drops
    assert m == pytest.approx(p, rel=0.05)


# ----------------------------------------------------------------------------------------------
# (f) gradients, (g) compilation cache, vmap
# ----------------------------------------------------------------------------------------------


def test_grad_wrt_subpixel_shift(x64):
    if not x64:
        pytest.skip("finite-difference gradient checks need float64")
    from jax.test_util import check_grads

    rng = np.random.default_rng(1)
    img = jnp.asarray(gaussian_filter(rng.normal(size=(24, 24)), 1.5))
    yy, xx = jnp.mgrid[6:18, 6:18].astype(jnp.float64)

    for kernel in ("lanczos3", "bilinear"):
        def f(s, kernel=kernel):
            return resample(img, xx + s[0], yy + 0.5 * s[1], kernel=kernel)

        check_grads(jax.jit(f), (jnp.array([0.31, 0.42]),), order=1, modes=["fwd", "rev"])
    # analytic checks on a ramp 2x: bilinear reproduces it, d/ds = 2 per pixel; Lanczos-3 gives
    # 2 (x + s - eps(s)), so d/ds = 2 (1 - eps'(s)) with eps the weights' first moment
    ramp = 2.0 * jnp.arange(24.0)[None, :] + 0.0 * jnp.arange(24.0)[:, None]
    g = jax.grad(lambda s: resample(ramp, xx + s, yy, kernel="bilinear").sum())(0.3)
    assert float(g) == pytest.approx(2.0 * xx.size, rel=1e-12)
    g = jax.grad(lambda s: resample(ramp, xx + s, yy, kernel="lanczos3").sum())(0.3)
    h = 1e-6
    deps = (_lanczos_eps(0.3 + h) - _lanczos_eps(0.3 - h)) / (2 * h)
    assert float(g) == pytest.approx(2.0 * xx.size * (1 - deps), rel=1e-6)


def test_no_retrace_and_vmap(monkeypatch):
    import jaxdiff.core.resample as resample_mod

    # ``_prepare`` runs inside the jitted ``_resample``, so the counter counts traces, not calls
    traces = []
    real = resample_mod._prepare

    def counting(*args):
        traces.append(1)
        return real(*args)

    monkeypatch.setattr(resample_mod, "_prepare", counting)
    img = np.random.default_rng(0).normal(size=(29, 31)).astype(np.float32)  # a shape no other test uses
    yy, xx = np.mgrid[0:29, 0:31].astype(np.float32)
    resample(img, xx + 0.2, yy, kernel="lanczos4")
    assert len(traces) == 1
    for s in (0.3, 0.7, -1.2):
        resample(img * s, xx + s, yy - s, kernel="lanczos4")
    assert len(traces) == 1  # new values, same shapes: no retrace
    resample(img, xx, yy, kernel="lanczos2")
    assert len(traces) == 2  # the kernel is static: a new program
    img = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    # vmap over shifts agrees with the per-shift calls
    shifts = jnp.array([0.1, 0.5, 0.9], jnp.float32)
    batched = jax.vmap(lambda s: resample(img, xx + s, yy))(shifts)
    for i, s in enumerate([0.1, 0.5, 0.9]):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(resample(img, xx + s, yy)), atol=1e-5)


def test_resample_keeps_its_docstring_and_signature():
    import inspect

    assert resample.__name__ == "resample"
    doc = inspect.getdoc(resample)
    assert doc.startswith("Interpolate ``image`` at fractional source positions")
    assert "Parameters\n----------" in doc and "Returns\n-------" in doc
    params = inspect.signature(resample).parameters
    assert list(params) == ["image", "x_src", "y_src", "kernel"]
    assert params["kernel"].kind is inspect.Parameter.KEYWORD_ONLY
