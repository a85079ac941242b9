"""ZOGY task with photometric calibrations, tied variance planes, typed statistics errors, and
output variance planes that describe their images' noise (issue #10 items 1 and 4).

References: afw's clipping in exact arithmetic (``tests/afw_clip_reference.py``) for the noise
levels; the same pair calibrated on the host (``PhotoCalib.calibrateImage``) and run with
``scaleByCalibration=False``; unit noise of D / sqrt(var D) on pure noise; S / sqrt(var S) = S_corr.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxdiff import Exposure, GaussianPsf, MaskedImage, PhotoCalib
from jaxdiff.core.stats import robust_std
from jaxdiff.image.image import Box2I
from jaxdiff.tasks import ImagePsfMatchTask, ZogyImagePsfMatchTask
from jaxdiff.tasks.errors import AlgorithmError, ImageStatisticsError
from jaxdiff.testing.sim import simulate_pair
from tests.afw_clip_reference import exact_afw_clip

CALIBRATIONS = (1 / 1.1, 0.95, 1.05, 1e-3, 1e3)
SHAPE = (128, 128)  # one shape: every run below shares one compilation per dtype


def _arr(x):
    return np.asarray(x, dtype=np.float64)


def _calibrated_variance(exposure):
    """The variance plane times mean**2 in the exposure's dtype, as the task's program rounds it."""
    v = np.asarray(exposure.variance.array)
    c = v.dtype.type(exposure.getPhotoCalib().getCalibrationMean())
    return v * (c * c)


def _unflagged(exposure, planes=("EDGE", "NO_DATA", "BAD", "SAT", "CR")):
    m = exposure.mask
    return (np.asarray(m.array) & m.getPlaneBitMask(list(planes))) == 0


def _noise_ratio_std(exposure, ok=None):
    """Robust (IQR) standard deviation of image / sqrt(variance) over unflagged pixels."""
    z = _arr(exposure.image.array) / np.sqrt(_arr(exposure.variance.array))
    ok = _unflagged(exposure) if ok is None else ok
    return float(robust_std(jnp.asarray(z), jnp.asarray(ok)))


@pytest.fixture(scope="module")
def pairs(float_dtype):
    """Two variance planes that are mostly one value: a constant sky (no stars, no read noise) and
    sky 100 plus the source counts of 30 stars."""
    out = {}
    for kind, n_stars in (("constant", 0), ("sky+sources", 30)):
        out[kind] = simulate_pair(
            jax.random.key(4), SHAPE, n_stars=n_stars, read_noise=0.0, dtype=float_dtype
        )
    assert np.all(np.asarray(out["constant"].science.variance.array) == 100.0)
    return out


# ---------------------------------------------------------------------------------------------
# item 1: calibrated exposures with tied variance planes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("calib", CALIBRATIONS)
@pytest.mark.parametrize("kind", ["constant", "sky+sources"])
def test_default_task_on_calibrated_exposures(pairs, kind, calib, x64):
    """Default config (scaleByCalibration=True): science PhotoCalib mean ``calib``; template 1 on
    the star-free pair, ``calib`` on the star field (its fluxes are equal in counts).

    The noise levels are afw's clipped means of the calibrated variance planes (exact reference),
    and the outputs equal those of the same pair calibrated on the host and run uncalibrated.
    """
    pair = pairs[kind]
    sci, tmp = pair.science.clone(), pair.template.clone()
    sci.setPhotoCalib(PhotoCalib(calib))
    tmp.setPhotoCalib(PhotoCalib(1.0 if kind == "constant" else calib))
    task = ZogyImagePsfMatchTask()
    res = task.run(sci, tmp)
    md = task.metadata
    eps = float(np.finfo(np.asarray(sci.image.array).dtype).eps)
    want_sci = exact_afw_clip(_calibrated_variance(sci))[0]
    want_tmp = exact_afw_clip(_calibrated_variance(tmp))[0]
    if kind == "constant":
        assert want_sci == float(_calibrated_variance(sci)[0, 0])  # the tied value itself
    assert md["zogy.scienceNoiseVariance"] == pytest.approx(want_sci, rel=8 * eps)
    assert md["zogy.templateNoiseVariance"] == pytest.approx(want_tmp, rel=8 * eps)

    # the same pair calibrated on the host, run with scaleByCalibration=False
    host = [
        Exposure(e.getPhotoCalib().calibrateImage(e.getMaskedImage()), psf=e.getPsf()) for e in (sci, tmp)
    ]
    plain = ZogyImagePsfMatchTask()
    plain.config.zogyConfig.scaleByCalibration = False
    ref = plain.run(*host)
    rtol, atol = (1e-9, 1e-9) if x64 else (2e-4, 2e-4)
    for name in ("subtractedExposure", "scoreExposure", "scoreCorrExposure"):
        a, b = getattr(res, name), getattr(ref, name)
        scale = np.abs(_arr(b.image.array)).max()
        np.testing.assert_allclose(_arr(a.image.array), _arr(b.image.array), rtol=rtol, atol=atol * scale)
        np.testing.assert_allclose(_arr(a.variance.array), _arr(b.variance.array), rtol=rtol)
    d = res.subtractedExposure
    assert _noise_ratio_std(d) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("grid", [False, True])
def test_grid_cells_with_constant_variance(pairs, grid):
    """Grid mode: every cell's noise level of a constant plane scaled by 1/1.1**2 is that value."""
    pair = pairs["constant"]
    sci, tmp = pair.science.clone(), pair.template.clone()
    sci.setPhotoCalib(PhotoCalib(1 / 1.1))
    tmp.setPhotoCalib(PhotoCalib(1.05))
    task = ZogyImagePsfMatchTask()
    task.config.zogyConfig.doSpatialGrid = grid
    task.config.zogyConfig.gridInnerSize = 1.0  # cells of one border (~22 px) on a 128 px image
    res = task.run(sci, tmp)
    assert (task.metadata["zogy.nCells"] > 1) == grid
    assert task.metadata["zogy.scienceNoiseVariance"] == pytest.approx(
        float(_calibrated_variance(sci)[0, 0]), rel=1e-6
    )
    assert task.metadata["zogy.templateNoiseVariance"] == pytest.approx(
        float(_calibrated_variance(tmp)[0, 0]), rel=1e-6
    )
    assert _noise_ratio_std(res.subtractedExposure) == pytest.approx(1.0, abs=0.05)


def _noise_exposure(rng, var, psf_sigma, calib, dtype):
    img = rng.normal(size=var.shape) * np.sqrt(var)
    return Exposure(
        MaskedImage(img.astype(dtype), None, var.astype(dtype)),
        psf=GaussianPsf(15, 15, psf_sigma),
        photoCalib=PhotoCalib(calib),
    )


def _tied_variance(rng, kind, sky, level, fraction):
    """A variance plane with ties: constant; a second value on a random block or on random pixels."""
    var = np.full(SHAPE, sky)
    if kind == "block":
        h, w = int(SHAPE[0] * fraction**0.5), int(SHAPE[1] * fraction**0.5)
        y0, x0 = rng.integers(0, SHAPE[0] - h + 1), rng.integers(0, SHAPE[1] - w + 1)
        var[y0 : y0 + h, x0 : x0 + w] = sky * level
    elif kind == "pixels":
        var[rng.random(SHAPE) < fraction] = sky * level
    return var


_log_calib = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: float(10.0**e))


@settings(max_examples=25, deadline=None)
@given(
    c_sci=_log_calib,
    c_tmp=_log_calib,
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["constant", "block", "pixels"]),
    sky=st.sampled_from([1.0, 100.0, 2.5e3]),
    level=st.floats(min_value=1.5, max_value=4.0),
    fraction=st.floats(min_value=0.01, max_value=0.2),
)
def test_property_calibrations_and_tied_variances(
    float_dtype, c_sci, c_tmp, seed, kind, sky, level, fraction
):
    """Any calibration means in [1e-3, 1e3] and tied variance planes: finite outputs, unit noise.

    Pure noise drawn from the variance planes, so D / sqrt(var D) must have std 1; the science
    noise level is the tied sky value times c**2 (a zero IQR keeps only the tied pixels).
    """
    rng = np.random.default_rng(seed)
    var_s = _tied_variance(rng, kind, sky, level, fraction)
    var_t = _tied_variance(rng, kind, sky, level, fraction)
    sci = _noise_exposure(rng, var_s, 2.0, c_sci, float_dtype)
    tmp = _noise_exposure(rng, var_t, 1.5, c_tmp, float_dtype)
    task = ZogyImagePsfMatchTask()
    res = task.run(sci, tmp)
    for name in ("subtractedExposure", "scoreExposure", "scoreCorrExposure"):
        e = getattr(res, name)
        assert np.all(np.isfinite(_arr(e.image.array))), name
        assert np.all(np.isfinite(_arr(e.variance.array)) & (_arr(e.variance.array) > 0)), name
    want = float(_calibrated_variance(sci)[var_s == sky][0])
    assert task.metadata["zogy.scienceNoiseVariance"] == pytest.approx(want, rel=1e-5)
    d = res.subtractedExposure
    ok = _unflagged(d)
    z = _arr(d.image.array)[ok] / np.sqrt(_arr(d.variance.array)[ok])
    assert z.std() == pytest.approx(1.0, abs=0.05)
    assert abs(z.mean()) < 0.05


# ---------------------------------------------------------------------------------------------
# item 1: a statistic that cannot be computed raises a typed error naming image and plane
# ---------------------------------------------------------------------------------------------


def _plain_task(**zogy):
    task = ZogyImagePsfMatchTask()
    task.config.zogyConfig.scaleByCalibration = False
    for k, v in zogy.items():
        setattr(task.config.zogyConfig, k, v)
    return task


def _with_planes(exposure, image=None, variance=None, mask=None):
    e = exposure.clone()
    mi = e.getMaskedImage()
    if image is not None:
        mi.image.array = np.broadcast_to(image, mi.image.array.shape).astype(mi.image.array.dtype)
    if variance is not None:
        mi.variance.array = np.broadcast_to(variance, mi.variance.array.shape).astype(mi.variance.array.dtype)
    if mask is not None:
        mi.mask.array = mi.mask.array | mi.mask.getPlaneBitMask(mask)
    return e


@pytest.mark.parametrize(
    "which, planes, image, plane",
    [
        ("science", dict(variance=0.0), "science", "variance"),
        ("template", dict(variance=np.nan), "template", "variance"),
        ("science", dict(variance=-1.0), "science", "variance"),
        ("template", dict(image=np.nan), "template", "image"),
        ("science", dict(mask="BAD"), "science", "image"),  # fully masked (filled plane)
        ("template", dict(mask="DETECTED"), "template", "image"),  # fully masked (ignoreMaskPlanes)
    ],
)
@pytest.mark.parametrize(
    "config", [{}, {"correctBackground": True, "doScaleVariance": True}, {"doSpatialGrid": True}]
)
def test_unusable_plane_raises_typed_error(pairs, which, planes, image, plane, config):
    pair = pairs["sky+sources"]
    sci, tmp = pair.science, pair.template
    if which == "science":
        sci = _with_planes(sci, **planes)
    else:
        tmp = _with_planes(tmp, **planes)
    with pytest.raises(ImageStatisticsError, match=f"of the {image} {plane} plane") as info:
        _plain_task(**config).run(sci, tmp)
    err = info.value
    assert isinstance(err, AlgorithmError)
    assert (err.image, err.plane) == (image, plane)
    assert err.metadata["image"] == image and err.metadata["plane"] == plane
    assert err.metadata["nUsable"] < 2


def test_few_usable_pixels_still_work(pairs):
    """Not an error: a plane with only a 20 x 20 patch unmasked gives that patch's statistics."""
    pair = pairs["constant"]
    sci = pair.science.clone()
    m = sci.mask.array.copy()
    m[:] |= sci.mask.getPlaneBitMask("DETECTED")
    m[40:60, 40:60] = 0
    sci.getMaskedImage().mask.array = m
    task = _plain_task()
    task.run(sci, pair.template)
    assert task.metadata["zogy.scienceNoiseVariance"] == pytest.approx(100.0, rel=1e-6)


def test_al_detection_on_unusable_template_raises_typed_error(float_dtype):
    """AL: a template without one usable pixel for the detection threshold names template/image."""
    p = simulate_pair(9, (128, 128), n_stars=20, dtype=float_dtype)
    t = _with_planes(p.template, mask="SAT")
    with pytest.raises(ImageStatisticsError, match="of the template image plane") as info:
        ImagePsfMatchTask().subtractExposures(t, p.science)
    assert (info.value.image, info.value.plane) == ("template", "image")
    cfg = ImagePsfMatchTask.ConfigClass()
    cfg.kernel.active.detectionConfig.detOnTemplate = False
    s = _with_planes(p.science, image=np.nan)
    with pytest.raises(ImageStatisticsError, match="of the science image plane"):
        ImagePsfMatchTask(config=cfg).makeCandidateList(p.template, s, 21)


def test_al_decorrelation_noise_level_raises_typed_error(float_dtype):
    """The DMTN-021 noise level needs two positive finite variance pixels; one is not enough."""
    from jaxdiff.tasks.image_psf_match import _meanVariance

    p = simulate_pair(9, (64, 64), n_stars=5, dtype=float_dtype)
    var = np.zeros((64, 64))
    var[10, 10] = 5.0
    e = _with_planes(p.template, variance=var)
    with pytest.raises(ImageStatisticsError, match="of the template variance plane") as info:
        _meanVariance(e, "template")
    assert info.value.metadata["nUsable"] == 1
    var[11, 10] = 5.0
    assert _meanVariance(_with_planes(p.template, variance=var), "template") == pytest.approx(5.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# item 4: every output variance plane describes its image's noise after the calibrations applied
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def understated_pair(float_dtype):
    """A star field whose variance planes are half the true pixel variance."""
    pair = simulate_pair(
        jax.random.key(31), (256, 256), n_stars=80, flux_range=(500.0, 5e4), dtype=float_dtype
    )
    out = []
    for e in (pair.science, pair.template):
        e = e.clone()
        e.getMaskedImage().variance.array = (np.asarray(e.variance.array) * 0.5).astype(float_dtype)
        out.append(e)
    return out


def test_output_variances_tell_the_truth_simulated(understated_pair):
    sci, tmp = understated_pair
    raw = _plain_task().run(sci, tmp)
    # without calibration the planes are the (wrong) propagated inputs: the test can tell
    assert _noise_ratio_std(raw.subtractedExposure) == pytest.approx(np.sqrt(2.0), rel=0.05)
    task = _plain_task(doScaleVariance=True, doNormalizeScore=True)
    res = task.run(sci, tmp)
    assert res.scienceVarianceScale == pytest.approx(2.0, rel=0.05)
    assert res.templateVarianceScale == pytest.approx(2.0, rel=0.05)
    assert res.differenceVarianceScale == pytest.approx(1.0, abs=0.05)  # inputs fixed: D already right
    assert task.metadata["zogy.differenceVarianceScale"] == pytest.approx(res.differenceVarianceScale)
    for name, tol in (("subtractedExposure", 0.03), ("scoreExposure", 0.03), ("scoreCorrExposure", 0.03)):
        assert _noise_ratio_std(getattr(res, name)) == pytest.approx(1.0, abs=tol), name
    # S / sqrt(var S) = S_corr (no astrometric term): var S carries norm**2
    ok = _unflagged(res.scoreExposure)
    s = _arr(res.scoreExposure.image.array)[ok] / np.sqrt(_arr(res.scoreExposure.variance.array)[ok])
    np.testing.assert_allclose(s, _arr(res.scoreCorrExposure.image.array)[ok], rtol=1e-3, atol=1e-4)
    # and var S is the unnormalised one times norm**2 exactly
    unnorm = _plain_task(doScaleVariance=True).run(sci, tmp)
    np.testing.assert_allclose(
        _arr(res.scoreExposure.variance.array)[ok],
        res.scoreNormalizationFactor**2 * _arr(unnorm.scoreExposure.variance.array)[ok],
        rtol=1e-5,
    )
    # the S image itself is not rescaled (only its variance is); the two runs compile different
    # programs, so they agree to rounding, not bit for bit
    eps = np.finfo(np.asarray(res.scoreExposure.image.array).dtype).eps  # the computation's dtype
    scale = np.abs(_arr(unnorm.scoreExposure.image.array)).max()
    np.testing.assert_allclose(
        _arr(res.scoreExposure.image.array), _arr(unnorm.scoreExposure.image.array), rtol=64 * eps, atol=64 * eps * scale
    )


@pytest.fixture(scope="module")
def nircam_cutout(shared_dir):
    """A 256 x 256 cutout of the JWST NIRCam pair (resampled i2d images: correlated noise)."""
    from jaxdiff.cli import load_nircam_pair

    sci, ref = load_nircam_pair(shared_dir / "data")
    box = Box2I((322, 322), (256, 256))
    return sci.subset(box), ref.subset(box)


def test_output_variances_tell_the_truth_nircam(nircam_cutout):
    """Correlated noise: per-pixel propagation understates S's noise (~1.5x) and, after the inputs'
    rescaling, overstates D's; the calibrations make all three planes describe the noise."""
    # Run last in a long session: free the compiled programs of the earlier tests first.  Without
    # this, compiling the task's input program for this cutout aborted inside XLA:CPU after ~700
    # tests in one process (twice in the full float64 suite; never when run alone).
    import gc

    jax.clear_caches()
    gc.collect()
    sci, ref = nircam_cutout
    raw = _plain_task().run(sci, ref)
    assert _noise_ratio_std(raw.scoreExposure) > 1.3  # what the calibrations must fix
    task = _plain_task(doScaleVariance=True, doNormalizeScore=True)
    res = task.run(sci, ref)
    assert res.scienceVarianceScale > 1.1 and res.templateVarianceScale > 1.1
    assert res.differenceVarianceScale < 0.9  # the rescaled inputs overstate D's noise
    assert res.scoreNormalizationFactor > 1.1
    for name in ("subtractedExposure", "scoreExposure", "scoreCorrExposure"):
        assert _noise_ratio_std(getattr(res, name)) == pytest.approx(1.0, abs=0.03), name
