"""Image model: planes, accessors, pytree behaviour, PSFs, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS

import jaxdiff
from jaxdiff import Exposure, GaussianPsf, GridPsf, ImagePsf, Mask, MaskedImage, MoffatPsf, PhotoCalib
from jaxdiff.image.image import Box2I, Image
from jaxdiff.image.psf import FWHM_PER_SIGMA, adaptive_moments


def _tan_wcs(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


@pytest.fixture(scope="module")
def planes(float_dtype):
    rng = np.random.default_rng(5)
    img = rng.normal(size=(12, 9)).astype(float_dtype)
    var = rng.uniform(1, 2, size=(12, 9)).astype(float_dtype)
    msk = np.zeros((12, 9), np.int32)
    msk[3, 4] = 1 << 1
    return img, msk, var


def test_default_mask_planes_match_lsst():
    m = Mask(dimensions=(4, 3))
    expected = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5,
                "DETECTED_NEGATIVE": 6, "SUSPECT": 7, "NO_DATA": 8}
    assert m.getMaskPlaneDict() == expected
    assert m.getPlaneBitMask(["BAD", "NO_DATA"]) == (1 << 0) | (1 << 8)
    assert m.array.shape == (3, 4) and m.array.dtype == np.int32


def test_add_mask_plane_and_unknown_plane():
    m = Mask(dimensions=(5, 5))
    bit = m.addMaskPlane("STREAK")
    assert bit == 9
    assert m.addMaskPlane("STREAK") == 9  # idempotent
    assert m.getPlaneBitMask("STREAK") == 1 << 9
    m.setMaskPlaneValues(bit, 1, 3, 2)
    np.testing.assert_array_equal(m.isSet("STREAK")[2], [False, True, True, True, False])
    assert int(m.array.sum()) == 3 * (1 << 9)
    with pytest.raises(KeyError, match="unknown mask plane 'NOPE'.*addMaskPlane"):
        m.getPlaneBitMask("NOPE")
    m.removeAndClearMaskPlane("STREAK")
    assert "STREAK" not in m.getMaskPlaneDict() and int(m.array.sum()) == 0


def test_mask_or_merges_planes():
    a = Mask(np.array([[1, 0]], np.int32))
    b = Mask(np.array([[0, 4]], np.int32))
    b.addMaskPlane("CUSTOM")
    c = a | b
    np.testing.assert_array_equal(c.array, [[1, 4]])
    assert "CUSTOM" in c.getMaskPlaneDict()


def test_maskedimage_accessors(planes):
    img, msk, var = planes
    mi = MaskedImage(img, msk, var)
    assert mi.getImage().getArray() is img
    assert mi.image.array is img
    assert mi.getVariance().getArray() is var
    np.testing.assert_array_equal(mi.getMask().getArray(), msk)
    assert mi.getDimensions() == (9, 12)
    assert mi.getBBox() == Box2I((0, 0), (9, 12))
    # afw semantics: numpy arrays are views, editable in place
    mi.image.array[0, 0] = 42.0
    assert img[0, 0] == 42.0
    # defaults: mask 0, variance 0 (afw)
    bare = MaskedImage(img)
    assert float(np.abs(np.asarray(bare.variance)).sum()) == 0.0
    assert int(np.asarray(bare.mask).sum()) == 0


def test_maskedimage_arithmetic_follows_afw(planes):
    img, msk, var = planes
    a = MaskedImage(img, msk, var)
    b = MaskedImage(2 * img, np.full_like(msk, 1), 3 * var)
    d = a - b
    np.testing.assert_allclose(d.image.array, img - 2 * img)
    np.testing.assert_allclose(d.variance.array, var + 3 * var)  # variances add
    np.testing.assert_array_equal(d.mask.array, msk | 1)
    s = a * 3.0
    np.testing.assert_allclose(s.variance.array, 9.0 * var)


def test_exposure_accessors_and_clone(planes):
    img, msk, var = planes
    wcs = _tan_wcs(img.shape)
    psf = GaussianPsf(11, 11, 1.7)
    exp = Exposure(MaskedImage(img, msk, var), psf=psf, wcs=wcs, photoCalib=PhotoCalib(2.5))
    assert exp.getPsf() is psf and exp.psf is psf
    assert exp.getWcs() is wcs and exp.hasWcs()
    assert exp.getPhotoCalib().getCalibrationMean() == 2.5
    assert exp.getMaskedImage().getImage().getArray() is img
    assert exp.getXY0() == (0, 0)
    clone = exp.clone()
    clone.image.array[1, 1] = -999.0
    assert img[1, 1] != -999.0
    assert clone.getPsf() is psf
    exp2 = Exposure(img)
    assert exp2.getPsf() is None and exp2.getWcs() is None
    exp2.setPsf(ImagePsf(np.ones((3, 3))))
    np.testing.assert_allclose(exp2.psf.computeKernelImage().array.sum(), 1.0)


def test_subset_keeps_parent_coordinates(planes):
    img, msk, var = planes
    mi = MaskedImage(Image(img, xy0=(100, 200)), msk, var)
    sub = mi.subset(Box2I((102, 203), (4, 5)))
    assert sub.getXY0() == (102, 203)
    np.testing.assert_array_equal(sub.image.array, img[3:8, 2:6])
    with pytest.raises(ValueError, match="not inside"):
        mi.subset(Box2I((0, 0), (4, 4)))


def test_pytree_roundtrip_through_jit(planes):
    img, msk, var = planes
    exp = Exposure(MaskedImage(img, msk, var), psf=GaussianPsf(7, 7, 1.2),
                   wcs=_tan_wcs(img.shape), photoCalib=PhotoCalib(3.0))

    @jax.jit
    def scale(e):
        mi = e.maskedImage * 2.0
        return Exposure(mi, psf=e.psf, wcs=e.wcs, photoCalib=e.photoCalib)

    out = scale(exp)
    np.testing.assert_allclose(np.asarray(out.image.array), 2 * img, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.variance.array), 4 * var, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.mask.array), msk)
    assert out.getPhotoCalib() == PhotoCalib(3.0)
    assert out.getWcs().to_header_string() == exp.getWcs().to_header_string()
    assert float(out.psf.sigma) == pytest.approx(1.2)
    # flatten/unflatten identity
    leaves, tree = jax.tree_util.tree_flatten(exp)
    back = jax.tree_util.tree_unflatten(tree, leaves)
    np.testing.assert_array_equal(back.image.array, img)
    assert back.getMask().getMaskPlaneDict() == exp.getMask().getMaskPlaneDict()


def test_vmap_over_batched_maskedimages(planes, float_dtype):
    img, msk, var = planes
    mis = [MaskedImage(k * img, msk, var) for k in (1.0, 2.0, 3.0)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *mis)

    def total(mi):
        return jnp.sum(mi.image.array / mi.variance.array)

    got = jax.vmap(total)(stacked)
    want = np.array([np.sum(k * img / var) for k in (1.0, 2.0, 3.0)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_jit_does_not_recompile_for_same_wcs_content(planes):
    img, msk, var = planes
    traces = []

    @jax.jit
    def f(e):
        traces.append(1)
        return e.image.array.sum()

    f(Exposure(MaskedImage(img, msk, var), wcs=_tan_wcs(img.shape)))
    f(Exposure(MaskedImage(img + 1, msk, var), wcs=_tan_wcs(img.shape)))  # equal WCS, new object
    assert len(traces) == 1


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_mismatched_plane_shapes_raise(planes):
    img, msk, var = planes
    with pytest.raises(ValueError, match="share one shape.*variance"):
        MaskedImage(img, msk, var[:-1])
    with pytest.raises(ValueError, match="share one shape.*mask"):
        MaskedImage(img, msk[:, :-1], var)


def test_wrong_dtypes_raise(planes):
    img, msk, var = planes
    with pytest.raises(TypeError, match="floating-point"):
        MaskedImage(np.ones((3, 3), np.int16))
    with pytest.raises(TypeError, match="mask must have an integer dtype"):
        MaskedImage(img, msk.astype(np.float32), var)
    with pytest.raises(ValueError, match="2-D"):
        Image(np.ones(5))
    with pytest.raises(TypeError, match="astropy.wcs.WCS"):
        Exposure(MaskedImage(img), wcs="not a wcs")


def test_even_psf_box_raises():
    with pytest.raises(ValueError, match="odd dimensions"):
        GaussianPsf(10, 11, 2.0)
    with pytest.raises(ValueError, match="odd dimensions"):
        ImagePsf(np.ones((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        ImagePsf(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="positive"):
        GaussianPsf(11, 11, -1.0)


# ---------------------------------------------------------------------------------------------
# PSFs
# ---------------------------------------------------------------------------------------------


def test_gaussian_psf_kernel_and_sizes():
    psf = GaussianPsf(21, 17, 2.0)
    k = psf.computeKernelImage((10.0, 20.0))
    arr = np.asarray(k.array)
    assert arr.shape == (17, 21)
    assert k.getXY0() == (-10, -8)
    np.testing.assert_allclose(arr.sum(), 1.0, rtol=1e-12)
    assert np.unravel_index(np.argmax(arr), arr.shape) == (8, 10)
    yy, xx = np.mgrid[-8:9, -10:11]
    ref = np.exp(-0.5 * (xx**2 + yy**2) / 4.0)
    np.testing.assert_allclose(arr, ref / ref.sum(), rtol=1e-12, atol=1e-15)
    assert psf.getSigma() == 2.0
    assert psf.getFwhm() == pytest.approx(2.0 * 2.354820045, rel=1e-8)


def test_adaptive_moments_recover_gaussian_sigma():
    psf = GaussianPsf(41, 41, 2.7)
    q = adaptive_moments(np.asarray(psf.computeKernelArray()))
    assert q.getDeterminantRadius() == pytest.approx(2.7, rel=1e-4)
    # an elliptical Gaussian: determinant radius = sqrt(sx * sy)
    yy, xx = np.mgrid[-20:21, -20:21]
    ell = np.exp(-0.5 * (xx**2 / 3.0**2 + yy**2 / 1.5**2))
    assert ImagePsf(ell).getSigma() == pytest.approx(np.sqrt(3.0 * 1.5), rel=1e-4)


def test_moffat_psf_fwhm():
    psf = MoffatPsf(61, 61, 4.0, 3.0)
    arr = np.asarray(psf.computeKernelArray())
    # half maximum at r = FWHM/2 along a row (analytic profile)
    alpha = 4.0 / (2 * np.sqrt(2 ** (1 / 3.0) - 1))
    prof = (1 + (2.0 / alpha) ** 2) ** -3.0
    assert prof == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_allclose(arr[30, 32] / arr[30, 30], prof, rtol=1e-12)
    np.testing.assert_allclose(arr.sum(), 1.0, rtol=1e-12)


def test_grid_psf_interpolates():
    s1 = GaussianPsf(15, 15, 1.5).computeKernelArray()
    s2 = GaussianPsf(15, 15, 2.5).computeKernelArray()
    images = np.stack([np.stack([s1, s2])] * 2)  # ny=2, nx=2: sigma varies with x
    psf = GridPsf(images, xCenters=[0.0, 100.0], yCenters=[0.0, 100.0])
    np.testing.assert_allclose(psf.computeKernelArray((0.0, 50.0)), s1, rtol=1e-12)
    np.testing.assert_allclose(psf.computeKernelArray((100.0, 50.0)), s2, rtol=1e-12)
    mid = np.asarray(psf.computeKernelArray((25.0, 10.0)))
    np.testing.assert_allclose(mid, 0.75 * s1 + 0.25 * s2, rtol=1e-12)
    np.testing.assert_allclose(psf.computeKernelArray((-50.0, 500.0)), s1, rtol=1e-12)  # clamped
    assert psf.getSigma((0.0, 0.0)) < psf.getSigma((100.0, 0.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        GridPsf(images, xCenters=[1.0, 0.0], yCenters=[0.0, 1.0])


def test_psf_is_differentiable_through_exposure_pytree(x64):
    def loss(sigma):
        psf = GaussianPsf(15, 15, sigma)
        return jnp.sum(psf.computeKernelArray() ** 2)

    s = jnp.asarray(1.8)
    g = jax.grad(loss)(s)
    eps = 1e-6 if x64 else 1e-2
    fd = (loss(s + eps) - loss(s - eps)) / (2 * eps)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-5 if x64 else 2e-2)
    assert FWHM_PER_SIGMA == pytest.approx(2.3548200450309493)


def test_top_level_names_exported():
    for name in ["MaskedImage", "Exposure", "GaussianPsf", "ImagePsf", "PhotoCalib", "Struct"]:
        assert hasattr(jaxdiff, name), name
