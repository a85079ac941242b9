"""ZogyImagePsfMatchTask end to end: LSST cross-checks, noise statistics, transients, real data."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS

import jaxdiff
from jaxdiff import Exposure, GaussianPsf, ImagePsf, MaskedImage, PhotoCalib
from jaxdiff.core.stats import clipped_stats, robust_std
from jaxdiff.tasks import ZogyImagePsfMatchTask, ZogyTask
from jaxdiff.tasks.image_psf_match import NOT_REGISTERED_MESSAGE
from jaxdiff.testing.lsst_scenes import make_lsst_zogy_test_images
from jaxdiff.testing.sim import simulate_pair

SEED_API = Path(__file__).resolve().parents[2].parent / "shared" / "seeds" / "ZogyImagePsfMatchTask-api.txt"


def _task(**zogy):
    task = ZogyImagePsfMatchTask()
    task.config.zogyConfig.scaleByCalibration = False
    for k, v in zogy.items():
        setattr(task.config.zogyConfig, k, v)
    return task


def _arr(x):
    return np.asarray(x, dtype=np.float64)


def _clipped_var(a):
    return float(clipped_stats(jnp.asarray(a)).variance)


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def test_public_methods_match_seed_api():
    text = SEED_API.read_text() if SEED_API.exists() else pytest.skip("seed API file not found")
    summary = text.split("Methods Summary")[1].split("Methods Documentation")[0]
    seed = set(re.findall(r"^(\w+)\(", summary, flags=re.M))
    assert len(seed) == 17
    ours = {n for n in dir(ZogyImagePsfMatchTask) if not n.startswith("_") and callable(getattr(ZogyImagePsfMatchTask, n))}
    assert seed <= ours, f"missing: {sorted(seed - ours)}"
    assert ZogyImagePsfMatchTask().getName() == "psfMatch"
    assert issubclass(ZogyImagePsfMatchTask, jaxdiff.ImagePsfMatchTask)


def test_config_defaults_follow_lsst():
    cfg = jaxdiff.ZogyImagePsfMatchConfig()
    z = cfg.zogyConfig
    assert (z.scaleByCalibration, z.correctBackground, z.doSpatialGrid) == (True, False, False)
    assert z.maxPsfCentroidDist == 0.2 and z.gridInnerSize == 8
    assert list(z.ignoreMaskPlanes) == ["INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA",
                                        "DETECTED_NEGATIVE"]
    assert (z.doScaleVariance, z.doNormalizeScore, z.doFitFluxRatio, z.doFitShift) == (False,) * 4
    assert cfg.kernel.name == "AL"


# ---------------------------------------------------------------------------------------------
# LSST test_zogy.py expectations (ip_diffim tests/test_zogy.py)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lsst_sourceless():
    sci, tmp = make_lsst_zogy_test_images(svar=100.0, tvar=100.0, n_sources=0, seed=1)
    return sci, tmp, _task().run(sci, tmp)


def test_lsst_sourceless_pair(lsst_sourceless):
    _, _, res = lsst_sourceless
    d = res.subtractedExposure.maskedImage.subset(res.subtractedExposure.getBBox().grow(-25))
    assert _clipped_var(d.image.array) == pytest.approx(200.0, rel=0.10)
    assert float(clipped_stats(jnp.asarray(d.variance.array)).mean) == pytest.approx(200.0, rel=0.05)
    s = _arr(res.scoreExposure.image.array) / np.sqrt(_arr(res.scoreExposure.variance.array))
    assert s.max() < 5
    # aliases and S_corr
    assert res.diffExp is res.subtractedExposure and res.scoreExp is res.scoreExposure
    np.testing.assert_allclose(_arr(res.scoreCorrExposure.image.array), s, rtol=1e-4, atol=1e-5)
    assert res.subtractedExposure.getPhotoCalib() == PhotoCalib(1.0)
    assert res.warpedExposure is lsst_sourceless[1]


def test_lsst_variable_source_detected():
    sci, tmp = make_lsst_zogy_test_images(svar=10.0, tvar=10.0, n_sources=10, varSourceChange=0.1, seed=1)
    res = _task().run(sci, tmp)
    s = _arr(res.scoreExposure.image.array) / np.sqrt(_arr(res.scoreExposure.variance.array))
    assert s.max() > 5


def test_lsst_pixel_offset():
    """ip_diffim test_zogy.py test_pixelOffset, scaled from 1000x2000 to 256x512 (the position scales too)."""
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    sci = np.zeros((512, 256), dtype)
    sci[150, 150] = 1000.0
    var = np.ones_like(sci)
    science = Exposure(MaskedImage(sci, None, var), psf=GaussianPsf(17, 17, 2.0))
    template = Exposure(MaskedImage(np.zeros_like(sci), None, var.copy()), psf=GaussianPsf(17, 17, 1.0))
    res = ZogyTask(config=jaxdiff.ZogyConfig(scaleByCalibration=False)).run(science, template, calculateScore=False)
    d = _arr(res.diffExp.image.array)
    assert np.unravel_index(np.argmax(d), d.shape) == (150, 150)
    assert res.scoreExp is None


# ---------------------------------------------------------------------------------------------
# noise statistics on pure-noise pairs, single cell and grid, including cell seams
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_pair():
    return simulate_pair(jax.random.key(11), (1024, 1024), n_stars=0, sky_science=400.0, sky_template=150.0,
                         science_psf=dict(kind="gaussian", sigma=2.2), template_psf=dict(kind="gaussian", sigma=1.5))


@pytest.mark.once_in_float32
@pytest.mark.parametrize("grid", [False, True])
def test_pure_noise_statistics(noise_pair, grid):
    task = _task(doSpatialGrid=grid)
    res = task.run(noise_pair.science, noise_pair.template)
    scorr = _arr(res.scoreCorrExposure.image.array)[16:-16, 16:-16]
    assert abs(scorr.mean()) < 0.02
    assert scorr.std() == pytest.approx(1.0, abs=0.03)
    d = _arr(res.subtractedExposure.image.array)[16:-16, 16:-16]
    v = _arr(res.subtractedExposure.variance.array)[16:-16, 16:-16]
    assert d.std() / np.sqrt(v.mean()) == pytest.approx(1.0, abs=0.03)
    assert np.all(np.isfinite(d)) and np.all(np.isfinite(scorr))
    if grid:
        ny, nx = res.ftDiff.nCells
        ch, cw = res.ftDiff.cellShape
        assert ny * nx > 1
        # bands of +-8 pixels around every internal cell edge
        full_d = _arr(res.subtractedExposure.image.array)
        full_v = _arr(res.subtractedExposure.variance.array)
        full_s = _arr(res.scoreCorrExposure.image.array)
        band = np.zeros(full_d.shape, bool)
        for i in range(1, nx):
            band[:, i * cw - 8: i * cw + 8] = True
        for j in range(1, ny):
            band[j * ch - 8: j * ch + 8, :] = True
        band[:16], band[-16:], band[:, :16], band[:, -16:] = False, False, False, False
        z = full_d[band] / np.sqrt(full_v[band])
        assert z.std() == pytest.approx(1.0, abs=0.03)
        assert abs(z.mean()) < 0.03
        # S_corr is correlated over ~the PSF area, so a band holds only ~10^3 independent values:
        # its std scatters by ~0.02 (1 sigma) around 1
        assert full_s[band].std() == pytest.approx(1.0, abs=0.06)
        assert abs(full_s[band].mean()) < 0.06
        assert isinstance(res.subtractedExposure.getPsf(), jaxdiff.GridPsf)


def test_second_run_does_not_recompile(noise_pair, compile_counter):
    task = _task()
    task.run(noise_pair.science, noise_pair.template)
    science, template = noise_pair.science.clone(), noise_pair.template.clone()
    with compile_counter as counter:
        task.run(science, template)
    # nothing of the second run (core programs, shell statistics, eager glue) is traced or compiled again
    assert (counter.traces, counter.compiles) == (0, 0)


# ---------------------------------------------------------------------------------------------
# transients on a 2048^2 star field
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def star_field():
    pair = simulate_pair(jax.random.key(2048), (2048, 2048), n_stars=1600, flux_range=(300.0, 3e5),
                         n_transients=10, transient_snr=8.0,
                         science_psf=dict(kind="gaussian", sigma=2.2), template_psf=dict(kind="gaussian", sigma=1.5))
    return pair, _task().run(pair.science, pair.template)


@pytest.mark.once_in_float32
def test_transients_found_with_few_false_positives(star_field):
    from jaxdiff.core.detection import find_peaks, peaks_to_table

    pair, res = star_field
    s = res.scoreCorrExposure.image.array
    mask = res.scoreCorrExposure.mask
    ok = (mask.array & mask.getPlaneBitMask(["EDGE", "NO_DATA"])) == 0
    assert 0.97 < ok.mean() < 0.995  # only a thin EDGE band is flagged
    dets = (peaks_to_table(find_peaks(s, 5.0, ok, max_peaks=200))
            + peaks_to_table(find_peaks(-s, 5.0, ok, max_peaks=200), sign=-1))
    tx, ty = np.asarray(pair.truth.transient_x), np.asarray(pair.truth.transient_y)
    assert len(tx) == 10
    matched = set()
    false = 0
    for d in dets:
        dist = np.hypot(tx - d["x"], ty - d["y"])
        if dist.min() <= 3 and d["value"] > 0:
            matched.add(int(dist.argmin()))
        else:
            false += 1
    assert len(matched) >= 9
    assert false <= 1


def test_bright_stars_leave_no_residual(star_field):
    pair, res = star_field
    s = _arr(res.scoreCorrExposure.image.array)
    t = pair.truth
    bright = np.argsort(np.asarray(t.flux_template))[-50:]
    tx, ty = np.asarray(t.transient_x), np.asarray(t.transient_y)
    checked = 0
    for k in bright:
        x, y = int(round(float(t.x[k]))), int(round(float(t.y[k])))
        if not (6 <= x < 2042 and 6 <= y < 2042) or np.hypot(tx - x, ty - y).min() < 10:
            continue
        checked += 1
        assert np.abs(s[y - 5:y + 6, x - 5:x + 6]).max() < 5, (x, y, float(t.flux_template[k]))
    assert checked >= 40


# ---------------------------------------------------------------------------------------------
# bad pixels, masks, errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pair():
    return simulate_pair(jax.random.key(3), (128, 160), n_stars=30, n_transients=0)


def test_nan_and_masked_pixels_do_not_poison(small_pair):
    sci = small_pair.science.clone()
    sci.image.array[40, 50] = np.nan
    sci.variance.array[10, 10] = np.inf
    sat = sci.mask.getPlaneBitMask("SAT")
    sci.mask.array[70:73, 90:93] |= sat
    sci.image.array[70:73, 90:93] = 1e9  # garbage in a saturated core
    res = _task().run(sci, small_pair.template)
    for e in (res.subtractedExposure, res.scoreExposure, res.scoreCorrExposure):
        assert np.all(np.isfinite(_arr(e.image.array))) and np.all(np.isfinite(_arr(e.variance.array)))
    s, sv = _arr(res.scoreExposure.image.array), _arr(res.scoreExposure.variance.array)
    for y, x in [(40, 50), (10, 10), (71, 91)]:
        assert s[y, x] == 0 and sv[y, x] == 1 and _arr(res.scoreCorrExposure.image.array)[y, x] == 0
    no_data = res.subtractedExposure.mask.getPlaneBitMask("NO_DATA")
    assert res.subtractedExposure.mask.array[40, 50] & no_data
    assert res.subtractedExposure.mask.array[71, 91] & sat  # masks are OR-ed
    # the garbage did not spread: S_corr stays calm a few pixels away
    assert np.abs(_arr(res.scoreCorrExposure.image.array)[60:83, 80:103]).max() < 8


def test_inputs_are_not_modified(small_pair):
    """Every plane of both inputs is bit-identical afterwards, although the run filled, shifted and scaled."""
    sci, tmpl = small_pair.science.clone(), small_pair.template.clone()
    sci.image.array[40, 50] = np.nan  # filled by the run
    sci.mask.array[70:73, 90:93] |= sci.mask.getPlaneBitMask("SAT")
    planes = lambda e: [np.array(p.array, copy=True) for p in (e.image, e.variance, e.mask)]  # noqa: E731
    before = planes(sci) + planes(tmpl)
    res = _task(correctBackground=True, doScaleVariance=True).run(sci, tmpl)
    for after, snap in zip(planes(sci) + planes(tmpl), before, strict=True):
        assert after.dtype == snap.dtype
        np.testing.assert_array_equal(after, snap)
    assert np.isnan(sci.image.array[40, 50]) and np.isfinite(res.subtractedExposure.image.array[40, 50])


def test_missing_photocalib_raises(small_pair):
    task = ZogyImagePsfMatchTask()
    with pytest.raises(ValueError, match="Photometric calibrations are not available"):
        task.run(small_pair.science, small_pair.template)


def test_calibration_scales_the_difference(small_pair):
    sci, tmp = small_pair.science.clone(), small_pair.template.clone()
    sci.setPhotoCalib(PhotoCalib(2.0))
    tmp.setPhotoCalib(PhotoCalib(2.0))
    calibrated = ZogyImagePsfMatchTask().run(sci, tmp)
    plain = _task().run(small_pair.science, small_pair.template)
    np.testing.assert_allclose(_arr(calibrated.subtractedExposure.image.array),
                               2.0 * _arr(plain.subtractedExposure.image.array), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(_arr(calibrated.scoreCorrExposure.image.array),
                               _arr(plain.scoreCorrExposure.image.array), rtol=1e-3, atol=1e-3)


def test_psf_errors(small_pair):
    sci = small_pair.science.clone()
    sci.setPsf(GaussianPsf(201, 201, 2.0))
    with pytest.raises(ValueError, match="larger than"):
        _task().run(sci, small_pair.template)
    off = np.zeros((15, 15))
    off[7, 8] = 1.0  # centroid 1 pixel off
    sci.setPsf(ImagePsf(off))
    with pytest.raises(ValueError, match="PSF centroids are offset by more than 0.20 pixels"):
        _task().run(sci, small_pair.template)
    sci.setPsf(None)
    with pytest.raises(ValueError, match="no PSF"):
        _task().run(sci, small_pair.template)


def test_dimension_mismatch_and_wcs(small_pair):
    sci = small_pair.science
    cut = small_pair.template.subset(jaxdiff.Box2I((0, 0), (150, 128)))
    with pytest.raises(RuntimeError, match=re.escape(NOT_REGISTERED_MESSAGE)):
        _task().run(sci, cut, doWarping=False)

    def wcs(shift):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [10.0, 20.0]
        w.wcs.crpix = [64.0 + shift, 64.0]
        w.wcs.cdelt = [-5e-5, 5e-5]
        return w

    a, b = sci.clone(), small_pair.template.clone()
    a.setWcs(wcs(0.0))
    b.setWcs(wcs(0.0))
    res = _task().run(a, b, doWarping=False)  # same WCS: fine
    assert res.subtractedExposure.getWcs() is a.getWcs()
    b.setWcs(wcs(0.5))
    with pytest.raises(RuntimeError, match="not registered"):
        _task().run(a, b, doWarping=False)
    # doWarping=True now warps the template onto the science grid (jaxdiff.image.warp)
    res = _task().run(a, b, doWarping=True)
    warped = res.warpedExposure
    assert warped.getWcs() is a.getWcs()
    assert warped.getBBox() == a.getBBox()
    assert np.all(np.isfinite(np.asarray(res.subtractedExposure.image.array)))
    assert np.all(np.isfinite(np.asarray(warped.image.array)))
    # template pixel x_t = x_s + 0.5 (CRPIX larger by 0.5): Lanczos-3 needs x_t in [2, W - 3],
    # so science columns 0, 1 and the last 3 have no complete data and are NO_DATA
    noData = warped.getMask().getPlaneBitMask("NO_DATA")
    flagged = (np.asarray(warped.getMask().array) & noData) != 0
    width = a.getWidth()
    assert np.array_equal(np.where(flagged.all(axis=0))[0], [0, 1, width - 3, width - 2, width - 1])
    inner = np.asarray(warped.image.array)[10:-10, 10:-10]
    ref = 0.5 * (np.asarray(b.image.array)[10:-10, 10:-10] + np.asarray(b.image.array)[10:-10, 11:-9])
    # a half-pixel Lanczos shift of a well-sampled image is close to the 2-point average
    assert np.median(np.abs(inner - ref)) < 0.2 * np.std(np.asarray(b.image.array))


def test_metadata_and_timers(small_pair):
    task = _task(doScaleVariance=True, doNormalizeScore=True)
    res = task.run(small_pair.science, small_pair.template)
    md = task.getFullMetadata()
    names = md.names()
    for key in ("psfMatch.runStartUtc", "psfMatch.runEndCpuTime", "psfMatch.zogy.fluxZeroPoint",
                "psfMatch.zogy.scienceVarianceScale", "psfMatch.zogy.scoreNormalizationFactor"):
        assert key in names, key
    assert md["psfMatch"]["zogy.scienceVarianceScale"] == pytest.approx(res.scienceVarianceScale)
    assert md["psfMatch"]["zogy.doScaleVariance"] is True and md["psfMatch"]["zogy.doNormalizeScore"] is True
    # simulated variance planes are right: the rescaling factors are ~1
    assert res.scienceVarianceScale == pytest.approx(1.0, abs=0.05)
    assert res.templateVarianceScale == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------------------------------
# fitting beta and the shift from the data
# ---------------------------------------------------------------------------------------------


def test_fit_flux_ratio_and_shift():
    pair = simulate_pair(jax.random.key(7), (256, 256), n_stars=120, flux_range=(2e3, 3e5), flux_ratio=1.3,
                         shift=(0.3, -0.2))
    task = _task(doFitFluxRatio=True, doFitShift=True)
    res = task.run(pair.science, pair.template)
    md = task.metadata
    assert md["zogy.fittedFluxRatio"] == pytest.approx(1.3, rel=0.01)
    assert md["zogy.fittedShiftX"] == pytest.approx(0.3, abs=0.02)
    assert md["zogy.fittedShiftY"] == pytest.approx(-0.2, abs=0.02)
    s = _arr(res.scoreCorrExposure.image.array)[16:-16, 16:-16]
    assert np.abs(s).max() < 6
    # without the fit the mismatch leaves strong residuals
    plain = _arr(_task().run(pair.science, pair.template).scoreCorrExposure.image.array)[16:-16, 16:-16]
    assert np.abs(plain).max() > 10


# ---------------------------------------------------------------------------------------------
# real data: JWST NIRCam pair
# ---------------------------------------------------------------------------------------------


def test_nircam_real_pair(shared_dir):
    from jaxdiff.cli import load_nircam_pair

    sci, ref = load_nircam_pair(shared_dir / "data")
    task = _task(doScaleVariance=True, doNormalizeScore=True)
    res = task.run(sci, ref)
    s = _arr(res.scoreCorrExposure.image.array)
    # the noise maps underestimate the pixel noise (i2d resampling): rescaling factors > 1, reported
    assert res.scienceVarianceScale > 1.1 and res.templateVarianceScale > 1.1
    assert task.metadata["zogy.scienceVarianceScale"] == pytest.approx(res.scienceVarianceScale)
    mask = res.scoreCorrExposure.mask
    ok = (mask.array & mask.getPlaneBitMask(["NO_DATA", "BAD"])) == 0
    assert float(robust_std(jnp.asarray(s), jnp.asarray(ok))) == pytest.approx(1.0, abs=0.05)
    # the bright compact source at [643, 280] leaves a PSF-mismatch residual among the strongest
    order = np.argsort(np.abs(np.where(ok, s, 0)).ravel())[::-1][:200]
    ys, xs = np.unravel_index(order, s.shape)
    assert np.any(np.hypot(ys - 643, xs - 280) < 15)
    assert np.abs(s[628:659, 265:296]).max() > 20


@pytest.mark.parametrize("kernel", ["lanczos3", "lanczos3_linear"])
def test_run_warps_a_shifted_template(kernel):
    """Template on a WCS offset by a sub-pixel shift: run() warps it and the difference is clean."""
    pair = simulate_pair(jax.random.key(21), (128, 128), n_stars=20, with_wcs=True, shift=(0.4, -0.3))
    task = _task()
    task.config.kernel.active.warpingConfig.warpingKernelName = kernel
    res = task.run(pair.science, pair.template)
    assert res.warpedExposure.getWcs() is pair.science.getWcs()
    assert res.warpedExposure.getBBox() == pair.science.getBBox()
    s = _arr(res.scoreCorrExposure.image.array)
    m = res.scoreCorrExposure.mask
    ok = (m.array & m.getPlaneBitMask(["EDGE", "NO_DATA"])) == 0
    assert ok.mean() > 0.6  # EDGE band (half a PSF box) and the NO_DATA strip of the warp
    assert np.abs(s[ok]).max() < 6
    # resampling correlates the template noise, which the per-pixel variance does not describe:
    # S_corr's std rises by ~0.1 over an unwarped pair (doNormalizeScore corrects it empirically)
    assert 0.9 < s[ok].std() < 1.3
    with pytest.raises(RuntimeError, match="not registered"):
        _task().run(pair.science, pair.template, doWarping=False)
