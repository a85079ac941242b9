"""Kernel-candidate source detection (``jaxdiff.core.sources``, with its host drivers in
``jaxdiff.image.catalog``) on injected stars of known truth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff.core.sources as sources_mod
from jaxdiff.core.sources import detect_sources, smoothing_kernel_width
from jaxdiff.image.catalog import detect_sources_banded, sources_to_table

SIGMA = 2.0  # PSF sigma of every scene (pixels)
SKY = 100.0  # flat background
SHAPE = (128, 128)
MAX_SOURCES = 20


def _render(shape, xs, ys, fluxes, sigma):
    """Unit-sum pixel-centre-sampled Gaussian stars (numpy, independent of jaxdiff)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        g = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2)
        img += f * g / g.sum()
    return img


def _sum_g2(sigma):
    """``sum g^2`` of the unit-sum 2-D smoothing Gaussian on its meas_algorithms box."""
    w = smoothing_kernel_width(sigma)
    u = np.arange(w) - w // 2
    g = np.exp(-0.5 * (u / sigma) ** 2)
    g /= g.sum()
    return float(np.sum(np.outer(g, g) ** 2))


def _detect(img, var, bad=None, **kw):
    bad = np.zeros(img.shape, bool) if bad is None else bad
    kw.setdefault("max_sources", MAX_SOURCES)
    kw.setdefault("n_sigma", 10.0)  # always passed, as detect_sources_banded does: one program
    kw.setdefault("do_smooth", True)
    det = detect_sources(jnp.asarray(img), jnp.asarray(var), jnp.asarray(bad), sigma=SIGMA, **kw)
    return jax.device_get(det)


@pytest.fixture(scope="module")
def scene(float_dtype):
    """12 stars on a 4 x 3 grid with sub-pixel offsets, fluxes 3e3..2e4, unit-variance noise."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.linspace(16, 112, 4), [20.0, 80.0, 108.0])
    xs = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    ys = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    fluxes = rng.uniform(3e3, 2e4, gx.size)
    img = SKY + _render(SHAPE, xs, ys, fluxes, SIGMA) + rng.normal(0.0, 1.0, SHAPE)
    var = np.ones(SHAPE)
    return dict(img=img.astype(float_dtype), var=var.astype(float_dtype), x=xs, y=ys, flux=fluxes)


def _match(det, xs, ys):
    """Index of the injected star nearest to each valid detection (unique, else the test fails)."""
    v = np.asarray(det.valid)
    idx = [int(np.argmin(np.hypot(xs - x, ys - y))) for x, y in zip(det.x[v], det.y[v], strict=True)]
    assert len(set(idx)) == len(idx), "two detections on one star"
    return np.asarray(idx)


def test_smoothing_kernel_width_is_meas_algorithms_formula():
    # SourceDetectionTask.calculateKernelSize: (int(7 sigma + 0.5) // 2) * 2 + 1
    widths = {1.0: 7, 1.5: 11, 1.6: 11, 2.0: 15, 2.2: 15, 2.3: 17, 3.0: 21}
    assert {s: smoothing_kernel_width(s) for s in widths} == widths


def test_injected_stars_positions_fluxes_snr(scene, rtol):
    det = _detect(scene["img"], scene["var"])
    v = np.asarray(det.valid)
    assert v.sum() == len(scene["x"])  # every star, nothing else
    idx = _match(det, scene["x"], scene["y"])
    tx, ty, tf = scene["x"][idx], scene["y"][idx], scene["flux"][idx]
    x, y, flux = (np.asarray(a, np.float64)[v] for a in (det.x, det.y, det.flux))
    # sub-pixel centroids (x is the column, y the row)
    np.testing.assert_array_less(np.abs(x - tx), 0.03)
    np.testing.assert_array_less(np.abs(y - ty), 0.03)
    np.testing.assert_array_equal(np.asarray(det.peak_x)[v], np.round(tx).astype(int))
    np.testing.assert_array_equal(np.asarray(det.peak_y)[v], np.round(ty).astype(int))
    # PSF flux at the peak pixel: the overlap of two sigma Gaussians offset by d, exp(-d^2 / (4 sigma^2))
    d2 = (tx - np.round(tx)) ** 2 + (ty - np.round(ty)) ** 2
    np.testing.assert_allclose(flux / tf, np.exp(-d2 / (4 * SIGMA**2)), rtol=5e-3)
    # S/N of a PSF flux with white noise of variance 1: flux sqrt(sum g^2 / var)
    np.testing.assert_allclose(np.asarray(det.snr)[v], flux * np.sqrt(_sum_g2(SIGMA)), rtol=rtol * 10)
    # strongest smoothed peak first; the background is the flat sky
    peak = np.asarray(det.peak)[v]
    assert np.all(np.diff(peak) <= 0)
    assert abs(float(det.background) - SKY) < 0.5


def test_threshold_is_n_sigma_of_the_smoothed_noise(float_dtype):
    rng = np.random.default_rng(2)
    noise_sigma = 2.0
    img = (SKY + rng.normal(0.0, noise_sigma, SHAPE)).astype(float_dtype)
    var = np.full(SHAPE, noise_sigma**2, float_dtype)
    det = _detect(img, var, n_sigma=10.0)
    expected = 10.0 * noise_sigma * np.sqrt(_sum_g2(SIGMA))  # std of the smoothed white noise
    assert float(det.threshold) == pytest.approx(expected, rel=0.12)
    assert int(np.asarray(det.valid).sum()) == 0  # nothing at 10 sigma in pure noise
    low = _detect(img, var, n_sigma=2.5)  # n_sigma is traced: same program
    v = np.asarray(low.valid)
    assert v.sum() > 0
    assert np.all(np.asarray(low.peak)[v] > float(low.threshold))
    assert float(low.threshold) == pytest.approx(float(det.threshold) / 4.0, rel=1e-5)


def test_bad_pixels_and_border_exclude_stars(scene, float_dtype):
    # one more bright star too close to the border (within the smoothing half-width)
    img = scene["img"] + _render(SHAPE, [4.0], [60.0], [2e4], SIGMA).astype(float_dtype)
    bad = np.zeros(SHAPE, bool)
    k = int(np.argmax(scene["flux"]))  # hide the brightest star under a bad patch
    bx, by = int(round(scene["x"][k])), int(round(scene["y"][k]))
    bad[by - 2 : by + 3, bx - 2 : bx + 3] = True
    det = _detect(img, scene["var"], bad)
    idx = _match(det, np.append(scene["x"], 4.0), np.append(scene["y"], 60.0))
    assert sorted(idx.tolist()) == [i for i in range(len(scene["x"])) if i != k]


def test_max_sources_keeps_the_strongest_in_one_trace(scene, monkeypatch):
    full = _detect(scene["img"], scene["var"])
    # ``_binned_background`` runs inside the jitted function, so this counts traces, not calls
    traces = []
    real = sources_mod._binned_background

    def counting(*args, **kwargs):
        traces.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sources_mod, "_binned_background", counting)
    for n_sigma in (5.0, 10.0, 20.0):  # n_sigma is traced: one program
        top = _detect(scene["img"], scene["var"], max_sources=7, n_sigma=n_sigma)
        assert top.x.shape == (7,)
        assert bool(np.all(top.valid))
        np.testing.assert_array_equal(np.asarray(top.peak), np.asarray(full.peak)[:7])
        np.testing.assert_array_equal(np.asarray(top.x), np.asarray(full.x)[:7])
    assert len(traces) == 1, "max_sources=7 on this shape must be traced once (and not before this test)"


def test_unsmoothed_single_pixel_sources(float_dtype, rtol):
    rng = np.random.default_rng(4)
    img = SKY + rng.normal(0.0, 1.0, SHAPE)
    pos = [(20, 30), (64, 90), (100, 45)]  # (x, y)
    amps = [400.0, 250.0, 150.0]
    for (x, y), a in zip(pos, amps, strict=True):
        img[y, x] += a
    img = img.astype(float_dtype)
    var = np.full(SHAPE, 4.0, float_dtype)
    det = _detect(img, var, do_smooth=False)
    v = np.asarray(det.valid)
    assert v.sum() == 3
    np.testing.assert_array_equal(np.asarray(det.peak_x)[v], [20, 64, 100])  # brightest first
    np.testing.assert_array_equal(np.asarray(det.peak_y)[v], [30, 90, 45])
    np.testing.assert_allclose(np.asarray(det.x)[v], [20, 64, 100], atol=0.02)
    np.testing.assert_allclose(np.asarray(det.y)[v], [30, 90, 45], atol=0.02)
    flux = np.asarray(det.flux, np.float64)[v]
    np.testing.assert_allclose(flux, amps, atol=5.0)  # pixel value above the sky, noise 1
    np.testing.assert_allclose(np.asarray(det.snr)[v], flux / 2.0, rtol=rtol * 10)


def test_banded_detection_matches_the_whole_image(scene):
    # bands of 40 rows plus 44-row margins (128 rows, the scene's shape: the same program); the
    # stars near y = 80 sit on a band boundary
    img, var = scene["img"], scene["var"]
    bad = np.zeros(img.shape, bool)
    whole = _detect(img, var, bad)
    banded = detect_sources_banded(img, var, bad, sigma=SIGMA, n_sigma=10.0, max_sources=MAX_SOURCES, band_rows=40)
    wv = np.asarray(whole.valid)
    assert wv.sum() == len(scene["x"])
    assert len(banded.x) == wv.sum()
    order = np.argsort(np.asarray(banded.y) * 1000 + np.asarray(banded.x))
    worder = np.argsort(np.asarray(whole.y)[wv] * 1000 + np.asarray(whole.x)[wv])
    for name, tol in (("x", 1e-3), ("y", 1e-3), ("peak_x", 0), ("peak_y", 0)):
        np.testing.assert_allclose(np.asarray(getattr(banded, name))[order],
                                   np.asarray(getattr(whole, name))[wv][worder], atol=tol)
    np.testing.assert_allclose(np.asarray(banded.flux)[order], np.asarray(whole.flux)[wv][worder], rtol=2e-3)
    idx = _match(banded, scene["x"], scene["y"])
    np.testing.assert_array_less(np.abs(np.asarray(banded.y) - scene["y"][idx]), 0.03)


def test_sources_to_table_parent_positions(scene):
    det = _detect(scene["img"], scene["var"])
    v = np.asarray(det.valid)
    table = sources_to_table(det, xy0=(1000, -50))
    assert len(table) == v.sum()
    np.testing.assert_array_equal(table["id"], np.arange(1, v.sum() + 1))
    np.testing.assert_allclose(table["x"], np.asarray(det.x, np.float64)[v] + 1000)
    np.testing.assert_allclose(table["y"], np.asarray(det.y, np.float64)[v] - 50)
    np.testing.assert_array_equal(table["peak_x"], np.asarray(det.peak_x)[v] + 1000)
    assert table.meta["threshold"] == pytest.approx(float(det.threshold))
