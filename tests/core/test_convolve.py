"""Tests of ``jaxdiff.core.convolve``: afw-convention (cross-correlation) fixed and spatially varying kernels.

Every numerical check compares against an independent float64 reference written here: scipy's
``correlate2d``, or plain numpy loops over pixels / kernel offsets, and numpy Chebyshev polynomials
(``numpy.polynomial.chebyshev.chebval``) with the afw term ordering written out explicitly.
Float mode comes from ``tests/conftest.py`` (float64 unless ``--float32``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from jax.test_util import check_grads
from numpy.polynomial import chebyshev as npcheb

from jaxdiff.core import convolve as cv
from jaxdiff.core.spatial import SpatialRange, spatial_basis

NO_DATA = 8


@pytest.fixture(scope="module")
def tol():
    """Max error relative to the output scale (max |reference|)."""
    return 1e-10 if jax.config.jax_enable_x64 else 1e-5


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def rounded(a, dtype):
    """The values jaxdiff sees (rounded to ``dtype``), as float64 for the references."""
    return np.asarray(a, dtype).astype(np.float64)


def ref_valid(image, kernel):
    """Independent reference: scipy correlate2d in float64 (no kernel flip)."""
    return scipy.signal.correlate2d(
        np.asarray(image, np.float64), np.asarray(kernel, np.float64), mode="valid"
    )


def ref_band(kernel_shape):
    kh, kw = kernel_shape
    cy, cx = kh // 2, kw // 2
    return cy, kh - 1 - cy, cx, kw - 1 - cx  # bottom, top, left, right


def afw_terms(order):
    """afw term order: total degree d, then decreasing power of x: (d, 0), (d-1, 1), ..., (0, d)."""
    return [(d - j, j) for d in range(order + 1) for j in range(d + 1)]


def numpy_phi(x, y, order, model, xy_range):
    """Spatial term values at scalar position (x, y), numpy only."""
    if model == "chebyshev1":
        x_min, y_min, x_max, y_max = xy_range
        xs = (x - (x_min + x_max) / 2) * 2 / (x_max - x_min)
        ys = (y - (y_min + y_max) / 2) * 2 / (y_max - y_min)

        def t(n, v):
            return npcheb.chebval(v, [0] * n + [1])

        return np.array([t(i, xs) * t(j, ys) for i, j in afw_terms(order)])
    return np.array([float(x) ** i * float(y) ** j for i, j in afw_terms(order)])


def ref_spatial(image, term_kernels, order, model, xy_range, xy0, square=False):
    """Per-pixel loop: build K(X, Y) and correlate (or K^2 for variance); NaN in the edge band."""
    image, term_kernels = np.asarray(image, np.float64), np.asarray(term_kernels, np.float64)
    (h, w), (kh, kw) = image.shape, term_kernels.shape[1:]
    b, t, left, right = ref_band((kh, kw))
    out = np.full((h, w), np.nan)
    for r in range(b, h - t):
        for c in range(left, w - right):
            phi = numpy_phi(xy0[0] + c, xy0[1] + r, order, model, xy_range)
            k = np.tensordot(phi, term_kernels, axes=1)
            if square:
                k = k * k
            out[r, c] = np.sum(k * image[r - b : r - b + kh, c - left : c - left + kw])
    return out


def ref_grow(mask, footprint):
    """out(X, Y) = OR over footprint offsets of mask(X + u, Y + v), zero outside, numpy loop."""
    mask = np.asarray(mask, np.int64)
    (h, w), (kh, kw) = mask.shape, footprint.shape
    cy, cx = kh // 2, kw // 2
    out = np.zeros((h, w), np.int64)
    for j in range(kh):
        for i in range(kw):
            if not footprint[j, i]:
                continue
            v, u = j - cy, i - cx
            dst = out[max(0, -v) : h - max(0, v), max(0, -u) : w - max(0, u)]
            dst |= mask[max(0, v) : h - max(0, -v), max(0, u) : w - max(0, -u)]
    return out


def random_mask(rng, shape, p=0.02):
    bits = rng.integers(0, 11, size=shape)
    return np.where(rng.random(shape) < p, 1 << bits, 0).astype(np.int32)


# --------------------------------------------------------------------------------------
# fixed kernels
# --------------------------------------------------------------------------------------

SHAPES = [
    ((37, 53), (5, 5)),
    ((37, 53), (7, 9)),  # area 63: "direct" is the unrolled shift-and-add on CPU
    ((37, 53), (21, 21)),  # area 441: "direct" is lax.conv_general_dilated
    ((53, 37), (4, 6)),  # even kernel
    ((30, 41), (8, 3)),
    ((16, 9), (16, 9)),  # kernel = image: one output pixel
    ((12, 20), (1, 1)),
]


@pytest.mark.parametrize("method", ["direct", "fft", "auto", "shift_add", "lax_conv"])
@pytest.mark.parametrize(("image_shape", "kernel_shape"), SHAPES)
def test_correlate_valid_matches_scipy(method, image_shape, kernel_shape, float_dtype, tol):
    rng = np.random.default_rng(hash((image_shape, kernel_shape)) % 2**32)
    image = rng.normal(size=image_shape).astype(float_dtype)
    kernel = rng.normal(size=kernel_shape).astype(float_dtype)
    out = cv.correlate_valid(image, kernel, method=method)
    ref = ref_valid(rounded(image, float_dtype), rounded(kernel, float_dtype))
    assert (
        out.shape == ref.shape == (image_shape[0] - kernel_shape[0] + 1, image_shape[1] - kernel_shape[1] + 1)
    )
    assert out.dtype == float_dtype
    assert rel_err(out, ref) < tol


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize(("kernel_shape", "pos"), [((5, 5), (3, 4)), ((4, 6), (0, 5)), ((7, 3), (6, 0))])
def test_orientation_is_afw_correlation(method, kernel_shape, pos):
    """A single 1 at kernel pixel (j, i) = offset (u, v) = (i - ctrX, j - ctrY): out(X, Y) = in(X + u, Y + v)."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(23, 31)).astype(np.float32)
    kernel = np.zeros(kernel_shape, np.float32)
    kernel[pos] = 1.0
    v, u = pos[0] - kernel_shape[0] // 2, pos[1] - kernel_shape[1] // 2
    out = np.asarray(cv.correlate_same(image, kernel, method=method, fill=np.nan))
    b, t, left, right = ref_band(kernel_shape)
    for r in range(b, 23 - t):
        for c in range(left, 31 - right):
            assert out[r, c] == pytest.approx(image[r + v, c + u], abs=1e-5)
    # a convolution (flipped kernel) would give in(X - u, Y - v) instead: make sure that is not the case
    if (u, v) != (0, 0):
        r, c = 11, 15
        assert abs(out[r, c] - image[r - v, c - u]) > 1e-3


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("kernel_shape", [(4, 6), (2, 2), (3, 4), (6, 1)])
def test_correlate_same_edge_band(method, kernel_shape, float_dtype, tol):
    rng = np.random.default_rng(2)
    h, w = 19, 26
    image = rng.normal(size=(h, w)).astype(float_dtype)
    kernel = rng.normal(size=kernel_shape).astype(float_dtype)
    out = np.asarray(cv.correlate_same(image, kernel, method=method, fill=-7.5))
    b, t, left, right = ref_band(kernel_shape)
    band = np.ones((h, w), bool)
    band[b : h - t, left : w - right] = False
    assert np.all(out[band] == -7.5)
    good = out[b : h - t, left : w - right]
    assert rel_err(good, ref_valid(rounded(image, float_dtype), rounded(kernel, float_dtype))) < tol
    rows, cols = cv.good_box_slices((h, w), kernel_shape)
    assert (rows, cols) == (slice(b, h - t), slice(left, w - right))
    # NaN fill works and does not recompile (fill is traced)
    out_nan = np.asarray(cv.correlate_same(image, kernel, method=method, fill=np.nan))
    assert np.all(np.isnan(out_nan[band])) and np.all(np.isfinite(out_nan[~band]))


def test_good_box_slices_values():
    assert cv.good_box_slices((10, 12), (3, 4)) == (slice(1, 9), slice(2, 11))
    assert cv.good_box_slices((10, 12), (1, 1)) == (slice(0, 10), slice(0, 12))
    assert cv.good_box_slices((10, 12), (10, 12)) == (slice(5, 6), slice(6, 7))


def test_choose_method():
    # the cost model, resolved for an explicit backend (static, pure Python)
    assert cv.choose_method((256, 256), (3, 3), backend="cpu") == "shift_add"
    assert cv.choose_method((256, 256), (3, 3), backend="gpu") == "lax_conv"
    assert cv.choose_method((256, 256), (23, 23), backend="cpu") == "fft"
    assert cv.choose_method((256, 256), (23, 23), backend="gpu") == "fft"
    assert cv.choose_method((4096, 4096), (35, 35)) == "fft"
    # "direct": shift-and-add on CPU up to SHIFT_ADD_MAX_AREA pixels, lax.conv above and elsewhere
    assert cv.choose_method((64, 64), (15, 15), "direct", backend="cpu") == "shift_add"
    assert cv.choose_method((64, 64), (15, 17), "direct", backend="cpu") == "lax_conv"
    assert cv.choose_method((64, 64), (3, 3), "direct", backend="tpu") == "lax_conv"
    default = cv.choose_method((64, 64), (3, 3), "direct")
    assert default == cv.choose_method((64, 64), (3, 3), "direct", backend=jax.default_backend())
    # explicit implementations are kept, whatever the backend
    for method in ("shift_add", "lax_conv", "fft"):
        assert cv.choose_method((64, 64), (23, 23), method, backend="gpu") == method
    with pytest.raises(ValueError, match="method"):
        cv.choose_method((64, 64), (3, 3), "spectral")


def test_direct_implementations_agree_on_cpu(float_dtype, tol):
    """Both direct paths (CPU shift-and-add, the lax.conv path used on accelerators) run here and agree.

    ``test_correlate_valid_matches_scipy`` checks each against scipy for every shape; this adds the
    spatially varying path, which applies the direct sum once per term kernel.
    """
    rng = np.random.default_rng(54)
    image = rng.normal(size=(29, 34)).astype(float_dtype)
    kernel = rng.normal(size=(5, 4)).astype(float_dtype)
    a = cv.correlate_valid(image, kernel, method="shift_add")
    b = cv.correlate_valid(image, kernel, method="lax_conv")
    assert rel_err(a, b) < tol
    terms = rng.normal(size=(3, 5, 4)).astype(float_dtype)
    kw = dict(order=1, model="chebyshev1", xy_range=(0, 0, 40, 40), xy0=(1, 2), fill=np.nan)
    a = np.asarray(cv.spatially_varying_correlate(image, terms, method="shift_add", **kw))
    b = np.asarray(cv.spatially_varying_correlate(image, terms, method="lax_conv", **kw))
    ref = ref_spatial(rounded(image, float_dtype), rounded(terms, float_dtype), 1, "chebyshev1", (0, 0, 40, 40),
                      (1, 2))  # fmt: skip
    good = ~np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(a), ~good)
    assert rel_err(a[good], ref[good]) < tol and rel_err(b[good], ref[good]) < tol


# --------------------------------------------------------------------------------------
# spatially varying kernels
# --------------------------------------------------------------------------------------


def spatial_case(rng, order, model, kernel_shape, image_shape, xy0, dtype):
    h, w = image_shape
    xy_range = SpatialRange(xy0[0] - 0.5, xy0[1] - 0.5, xy0[0] + w - 0.5, xy0[1] + h - 0.5)
    n = (order + 1) * (order + 2) // 2
    kernels = rng.normal(size=(n, *kernel_shape))
    if model == "polynomial":  # keep every term's contribution O(1) at raw coordinates
        scale = [max(abs(x) ** i * abs(y) ** j for x in (xy0[0], xy0[0] + w) for y in (xy0[1], xy0[1] + h)) or 1
                 for i, j in afw_terms(order)]  # fmt: skip
        kernels /= np.asarray(scale)[:, None, None]
    image = rng.normal(size=image_shape) + 3.0
    return image.astype(dtype), kernels.astype(dtype), xy_range


SPATIAL = [
    (2, "chebyshev1", (5, 7), (29, 34), (100, -37)),
    (1, "chebyshev1", (4, 4), (25, 22), (-3, 12)),
    (2, "polynomial", (5, 5), (27, 30), (40, 17)),
    (3, "chebyshev1", (3, 5), (20, 24), (7, 5)),
    (1, "polynomial", (6, 3), (21, 26), (-10, -20)),
]


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize(("order", "model", "kernel_shape", "image_shape", "xy0"), SPATIAL)
def test_spatially_varying_matches_per_pixel_loop(method, order, model, kernel_shape, image_shape, xy0,
                                                   float_dtype, tol):  # fmt: skip
    rng = np.random.default_rng(order * 7 + len(model))
    image, kernels, xy_range = spatial_case(rng, order, model, kernel_shape, image_shape, xy0, float_dtype)
    kw = dict(order=order, model=model, xy_range=xy_range, xy0=xy0, method=method)
    out = np.asarray(cv.spatially_varying_correlate(image, kernels, fill=np.nan, **kw))
    ref = ref_spatial(rounded(image, float_dtype), rounded(kernels, float_dtype), order, model, xy_range, xy0)
    assert out.dtype == float_dtype
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    good = ~np.isnan(ref)
    assert rel_err(out[good], ref[good]) < tol

    variance = (1.0 + rng.random(image_shape)).astype(float_dtype)
    out_var = np.asarray(cv.spatially_varying_correlate_variance(variance, kernels, **kw))
    ref_var = ref_spatial(rounded(variance, float_dtype), rounded(kernels, float_dtype), order, model, xy_range,
                          xy0, square=True)  # fmt: skip
    assert np.all(np.isposinf(out_var[~good]))  # default fill: +inf
    assert rel_err(out_var[good], ref_var[good]) < tol


@pytest.mark.parametrize("model", ["chebyshev1", "polynomial"])
def test_spatial_terms_consistent_with_spatial_basis(model, float_dtype, tol):
    """A delta term kernel for term s alone gives phi_s(X, Y) * image: the same phi as jaxdiff.core.spatial."""
    order, (h, w), xy0 = 2, (9, 11), (5, -4)
    xy_range = SpatialRange(-2.5, -10.5, 30.5, 8.5)
    image = np.random.default_rng(3).normal(size=(h, w)).astype(float_dtype)
    ys, xs = np.mgrid[0:h, 0:w]
    phi = np.asarray(spatial_basis(xs + xy0[0], ys + xy0[1], order, model=model, xy_range=xy_range))
    for s in range(6):
        kernels = np.zeros((6, 3, 3), float_dtype)
        kernels[s, 1, 1] = 1.0
        out = cv.spatially_varying_correlate(
            image, kernels, order=order, model=model, xy_range=xy_range, xy0=xy0
        )
        expect = (phi[..., s] * rounded(image, float_dtype))[1:-1, 1:-1]
        assert rel_err(np.asarray(out)[1:-1, 1:-1], expect) < tol


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_one_term_reduces_to_fixed_kernel(method, float_dtype, tol):
    rng = np.random.default_rng(4)
    image = rng.normal(size=(31, 28)).astype(float_dtype)
    variance = (1 + rng.random((31, 28))).astype(float_dtype)
    kernel = rng.normal(size=(6, 5)).astype(float_dtype)
    kw = dict(order=0, model="chebyshev1", xy_range=(0, 0, 10, 10), xy0=(3, 3), method=method)
    a = cv.spatially_varying_correlate(image, kernel[None], **kw)
    b = cv.correlate_same(image, kernel, method=method)
    assert rel_err(a, b) < tol
    a = np.asarray(cv.spatially_varying_correlate_variance(variance, kernel[None], **kw))
    b = np.asarray(cv.correlate_same(variance, kernel * kernel, method=method, fill=np.inf))
    np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
    fin = np.isfinite(b)
    assert rel_err(a[fin], b[fin]) < tol
    kw.pop("method")
    polynomial = cv.spatially_varying_correlate(image, kernel[None], **{**kw, "model": "polynomial"})
    assert rel_err(polynomial, cv.correlate_same(image, kernel)) < tol


def test_spatial_xy0_shift_equals_subimage(float_dtype, tol):
    """A cutout with its PARENT xy0 reproduces the parent result on the cutout's good region."""
    rng = np.random.default_rng(5)
    image, kernels, xy_range = spatial_case(rng, 2, "chebyshev1", (5, 5), (40, 44), (10, 20), float_dtype)
    kw = dict(order=2, model="chebyshev1", xy_range=xy_range)
    full = np.asarray(cv.spatially_varying_correlate(image, kernels, xy0=(10, 20), **kw))
    sub = np.asarray(cv.spatially_varying_correlate(image[7:30, 5:33], kernels, xy0=(15, 27), **kw))
    assert rel_err(sub[2:-2, 2:-2], full[9:28, 7:31]) < tol


# --------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------

FOOTPRINTS = {
    "box5x7": np.ones((5, 7), bool),
    "even4x4": np.ones((4, 4), bool),
    "one": np.ones((1, 1), bool),
    "cross": np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool),
    "random6x5": np.random.default_rng(6).random((6, 5)) < 0.5,
    "empty": np.zeros((3, 3), bool),
    "no-corners6x5": np.pad(np.ones((4, 3), bool), 1, constant_values=True) & ~np.eye(6, 5, dtype=bool),
}


@pytest.mark.parametrize("name", list(FOOTPRINTS))
def test_grow_mask_matches_loop(name):
    footprint = FOOTPRINTS[name]
    mask = random_mask(np.random.default_rng(7), (33, 41))
    mask[0, 0] |= 1 << 30  # high bit
    mask[32, 40] = -(2**31)  # sign bit
    out = cv.grow_mask(mask, footprint)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(
        np.asarray(out, np.int64) & 0xFFFFFFFF, ref_grow(mask, footprint) & 0xFFFFFFFF
    )


def test_grow_mask_zero_kernel_pixels_do_not_smear():
    kernel = np.ones((3, 3))
    kernel[:, 2] = 0.0  # offsets u = +1 are zero
    mask = np.zeros((7, 7), np.int32)
    mask[3, 3] = 1
    out = np.asarray(cv.grow_mask(mask, kernel != 0))
    # out(X, Y) |= mask(X + u, Y + v) for u in {-1, 0}: the bit spreads to X = 3, 4 only
    expect = np.zeros((7, 7), np.int32)
    expect[2:5, 3:5] = 1
    np.testing.assert_array_equal(out, expect)


def test_grow_mask_accepts_bool_and_uint16():
    mask = np.zeros((6, 6), np.uint16)
    mask[2, 2] = 1 << 9
    np.testing.assert_array_equal(
        cv.grow_mask(mask, np.ones((3, 3), bool)), ref_grow(mask, np.ones((3, 3), bool))
    )
    np.testing.assert_array_equal(cv.grow_mask(mask > 0, np.ones((1, 3), bool)),
                                  ref_grow((mask > 0).astype(int), np.ones((1, 3), bool)))  # fmt: skip


# --------------------------------------------------------------------------------------
# masked images
# --------------------------------------------------------------------------------------


def check_masked_result(res, image, variance, mask, kernel_field, footprint, kernel_shape, tol, ref_image,
                        ref_variance):  # fmt: skip
    h, w = image.shape
    b, t, left, right = ref_band(kernel_shape)
    band = np.ones((h, w), bool)
    band[b : h - t, left : w - right] = False
    out_image, out_var, out_mask = (np.asarray(a) for a in res)
    assert np.all(np.isnan(out_image[band]))
    assert np.all(np.isposinf(out_var[band]))
    assert np.all(out_mask[band] == 1 << NO_DATA)  # NO_DATA only, input bits not OR'ed in
    assert rel_err(out_image[~band], ref_image[~band]) < tol
    assert rel_err(out_var[~band], ref_variance[~band]) < tol
    np.testing.assert_array_equal(out_mask[~band], ref_grow(mask, footprint)[~band])


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_convolve_masked_image(method, float_dtype, tol):
    rng = np.random.default_rng(8)
    h, w = 34, 39
    image = rng.normal(size=(h, w)).astype(float_dtype)
    variance = (1 + rng.random((h, w))).astype(float_dtype)
    mask = random_mask(rng, (h, w), p=0.05)
    mask[0, :] |= 1 << 3  # bits inside the edge band must not survive there
    kernel = rng.normal(size=(5, 6)).astype(float_dtype)
    kernel[1, :] = 0.0
    kernel[:, 4] = 0.0
    res = cv.convolve_masked_image(image, variance, mask, kernel, no_data_bit=NO_DATA, method=method)
    assert isinstance(res, cv.MaskedConvolution)
    assert (
        res.image.dtype == float_dtype and res.variance.dtype == float_dtype and res.mask.dtype == jnp.int32
    )
    k64 = rounded(kernel, float_dtype)
    b, t, left, right = ref_band(kernel.shape)
    ref_image = np.zeros((h, w))
    ref_image[b : h - t, left : w - right] = ref_valid(rounded(image, float_dtype), k64)
    ref_var = np.zeros((h, w))
    ref_var[b : h - t, left : w - right] = ref_valid(rounded(variance, float_dtype), k64**2)
    check_masked_result(
        res, image, variance, mask, kernel, kernel != 0, kernel.shape, tol, ref_image, ref_var
    )


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_convolve_masked_image_nonfinite_pixels(method, float_dtype, tol):
    """NaN/inf inputs spoil only outputs whose footprint (kernel != 0) touches them, whatever the method."""
    rng = np.random.default_rng(9)
    h, w = 30, 32
    image = rng.normal(size=(h, w)).astype(float_dtype)
    variance = (1 + rng.random((h, w))).astype(float_dtype)
    kernel = rng.normal(size=(5, 5)).astype(float_dtype)
    kernel[:, 4] = 0.0
    image[10, 12] = np.nan
    image[20, 5] = np.inf
    variance[15, 20] = np.inf
    variance[25, 25] = np.nan
    res = cv.convolve_masked_image(image, variance, np.zeros((h, w), np.int32), kernel, no_data_bit=NO_DATA,
                                   method=method)  # fmt: skip
    fp = kernel != 0

    def touched(r, c):
        return ref_grow(np.pad(np.ones((1, 1), np.int64), ((r, h - r - 1), (c, w - c - 1))), fp).astype(bool)

    img_bad = touched(10, 12) | touched(20, 5)
    var_inf, var_nan = touched(15, 20), touched(25, 25)
    k64 = rounded(kernel, float_dtype)
    ref_image = np.full((h, w), np.nan)
    ref_image[2:-2, 2:-2] = ref_valid(np.where(np.isfinite(image), rounded(image, float_dtype), 0), k64)
    ref_var = np.full((h, w), np.inf)
    ref_var[2:-2, 2:-2] = ref_valid(
        np.where(np.isfinite(variance), rounded(variance, float_dtype), 0), k64**2
    )
    out_image, out_var = np.asarray(res.image), np.asarray(res.variance)
    good = np.zeros((h, w), bool)
    good[2:-2, 2:-2] = True
    np.testing.assert_array_equal(np.isnan(out_image), ~good | img_bad)
    np.testing.assert_array_equal(np.isnan(out_var), good & var_nan)
    np.testing.assert_array_equal(np.isposinf(out_var), ~good | (var_inf & ~var_nan))
    ok_image, ok_var = good & ~img_bad, good & ~var_inf & ~var_nan
    assert rel_err(out_image[ok_image], ref_image[ok_image]) < tol
    assert rel_err(out_var[ok_var], ref_var[ok_var]) < tol


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_spatially_varying_convolve_masked_image(method, float_dtype, tol):
    rng = np.random.default_rng(10)
    order, model, xy0 = 1, "chebyshev1", (12, 30)
    image, kernels, xy_range = spatial_case(rng, order, model, (5, 3), (26, 23), xy0, float_dtype)
    kernels[:, 0, :] = 0.0  # a kernel row that is zero in every term: no smearing from v = -2
    kernels[1:, 4, 2] = 0.0
    kernels[0, 4, 2] = 0.0 * kernels[0, 4, 2]  # zero in all terms too
    kernels[0, 3, 0] = 0.0  # zero in one term only: still in the footprint
    variance = (1 + rng.random(image.shape)).astype(float_dtype)
    mask = random_mask(rng, image.shape, p=0.05)
    res = cv.spatially_varying_convolve_masked_image(
        image, variance, mask, kernels, order=order, model=model, xy_range=xy_range, xy0=xy0,
        no_data_bit=NO_DATA, method=method,
    )  # fmt: skip
    k64 = rounded(kernels, float_dtype)
    ref_image = ref_spatial(rounded(image, float_dtype), k64, order, model, xy_range, xy0)
    ref_var = ref_spatial(rounded(variance, float_dtype), k64, order, model, xy_range, xy0, square=True)
    footprint = np.any(kernels != 0, axis=0)
    assert not footprint[0].any() and not footprint[4, 2] and footprint[3, 0]
    check_masked_result(res, image, variance, mask, kernels, footprint, kernels.shape[1:], tol,
                        np.nan_to_num(ref_image), np.nan_to_num(ref_var))  # fmt: skip


# --------------------------------------------------------------------------------------
# transformations: vmap, jit, gradients, compile counts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_vmap_equals_loop(method, float_dtype, tol):
    rng = np.random.default_rng(11)
    images = rng.normal(size=(3, 20, 25)).astype(float_dtype)
    kernels = rng.normal(size=(3, 5, 4)).astype(float_dtype)

    def f(im, k):
        return cv.correlate_valid(im, k, method=method)

    for in_axes in [(0, None), (None, 0), (0, 0)]:
        im_arg = images if in_axes[0] == 0 else images[0]
        k_arg = kernels if in_axes[1] == 0 else kernels[0]
        out = jax.vmap(f, in_axes=in_axes)(im_arg, k_arg)
        for n in range(3):
            im_n = images[n] if in_axes[0] == 0 else images[0]
            k_n = kernels[n] if in_axes[1] == 0 else kernels[0]
            assert rel_err(out[n], ref_valid(rounded(im_n, float_dtype), rounded(k_n, float_dtype))) < tol

    term_kernels = rng.normal(size=(3, 3, 5, 5)).astype(float_dtype)
    kw = dict(order=1, model="chebyshev1", xy_range=(0, 0, 30, 30), xy0=(2, 1), method=method)
    out = jax.vmap(lambda im, k: cv.spatially_varying_correlate(im, k, **kw))(images, term_kernels)
    for n in range(3):
        assert rel_err(out[n], cv.spatially_varying_correlate(images[n], term_kernels[n], **kw)) < tol
    # batched xy0 is traced too
    xy0s = jnp.asarray([[0, 0], [5, 3], [-4, 9]], float_dtype)
    kw.pop("xy0")
    out = jax.vmap(lambda im, p: cv.spatially_varying_correlate(im, term_kernels[0], xy0=p, **kw))(
        images, xy0s
    )
    for n in range(3):
        ref = ref_spatial(rounded(images[n], float_dtype), rounded(term_kernels[0], float_dtype), 1, "chebyshev1",
                          (0, 0, 30, 30), np.asarray(xy0s[n], np.float64))  # fmt: skip
        assert rel_err(np.asarray(out[n])[2:-2, 2:-2], ref[2:-2, 2:-2]) < tol


def test_vmap_masked_and_grow_equal_loop(float_dtype, tol):
    rng = np.random.default_rng(15)
    images = rng.normal(size=(2, 16, 18)).astype(float_dtype)
    variances = (1 + rng.random((2, 16, 18))).astype(float_dtype)
    masks = np.stack([random_mask(rng, (16, 18), p=0.1) for _ in range(2)])
    kernel = rng.normal(size=(3, 5)).astype(float_dtype)
    kernel[0, 0] = 0.0
    res = jax.vmap(lambda i, v, m: cv.convolve_masked_image(i, v, m, kernel, no_data_bit=NO_DATA))(
        images, variances, masks
    )
    for n in range(2):
        one = cv.convolve_masked_image(images[n], variances[n], masks[n], kernel, no_data_bit=NO_DATA)
        for a, b in zip(res, one, strict=True):
            np.testing.assert_allclose(np.asarray(a[n]), np.asarray(b), rtol=tol, atol=0)
    footprints = np.stack([kernel != 0, np.ones((3, 5), bool)])
    grown = jax.vmap(cv.grow_mask)(masks, footprints)  # batched footprint: lax.cond becomes a select
    for n in range(2):
        np.testing.assert_array_equal(grown[n], ref_grow(masks[n], footprints[n]))


def test_works_under_user_jit(float_dtype, tol):
    rng = np.random.default_rng(12)
    image = rng.normal(size=(18, 21)).astype(float_dtype)
    variance = (1 + rng.random((18, 21))).astype(float_dtype)
    kernel = rng.normal(size=(3, 5)).astype(float_dtype)

    @jax.jit
    def f(im, var, k):
        return cv.convolve_masked_image(im, var, jnp.zeros(im.shape, jnp.int32), k, no_data_bit=NO_DATA)

    res = f(image, variance, kernel)
    assert rel_err(np.asarray(res.image)[1:-1, 2:-2], ref_valid(rounded(image, float_dtype),
                                                                rounded(kernel, float_dtype))) < tol  # fmt: skip
    assert np.all(np.asarray(res.mask)[0] == 1 << NO_DATA)


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_gradients(method, x64):
    if not x64:
        pytest.skip("finite-difference gradient checks need float64")
    rng = np.random.default_rng(13)
    image = jnp.asarray(rng.normal(size=(9, 11)))
    kernel = jnp.asarray(rng.normal(size=(3, 4)))
    check_grads(lambda im, k: cv.correlate_valid(im, k, method=method), (image, kernel), order=1,
                modes=("fwd", "rev"))  # fmt: skip
    terms = jnp.asarray(rng.normal(size=(3, 3, 3)))
    kw = dict(order=1, model="chebyshev1", xy_range=(-0.5, -0.5, 10.5, 8.5), xy0=(1, 2), method=method)
    check_grads(lambda im, k: cv.spatially_varying_correlate(im, k, **kw), (image, terms), order=1,
                modes=("fwd", "rev"))  # fmt: skip
    check_grads(lambda v, k: cv.spatially_varying_correlate_variance(v, k, fill=0.0, **kw), (image**2, terms),
                order=1, modes=("rev",))  # fmt: skip


def test_gradient_of_masked_image_is_finite_with_nan_inputs(float_dtype):
    image = np.ones((12, 12), float_dtype)
    image[5, 5] = np.nan
    kernel = jnp.ones((3, 3), float_dtype) / 9

    def loss(k):
        res = cv.convolve_masked_image(image, np.ones_like(image), np.zeros((12, 12), np.int32), k,
                                       no_data_bit=NO_DATA, method="fft")  # fmt: skip
        return jnp.nansum(res.image) + jnp.sum(jnp.where(jnp.isfinite(res.variance), res.variance, 0))

    g = jax.grad(loss)(kernel)
    assert np.all(np.isfinite(np.asarray(g)))


def test_no_recompilation_for_same_shapes(float_dtype, monkeypatch):
    """Traced arguments (fill, xy0, values) never retrace: count traces with a Python counter.

    The jitted functions call these module-level helpers only while they are being traced, so
    wrapping them with a counter counts traces (no private JAX cache counters).
    """
    traces = []
    for name in ("_valid", "_sv_image_valid", "_sv_variance_valid", "_grow_box", "_pad_band"):
        original = getattr(cv, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            traces.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cv, name, counting)
    rng = np.random.default_rng(14)  # shapes used by no other test: the first calls trace
    image = rng.normal(size=(19, 37)).astype(float_dtype)
    kernel = rng.normal(size=(5, 5)).astype(float_dtype)
    terms = rng.normal(size=(6, 5, 5)).astype(float_dtype)
    cases = [
        lambda fill, xy0: cv.correlate_valid(image, kernel, method="fft"),
        lambda fill, xy0: cv.correlate_same(image, kernel, method="direct", fill=fill),
        lambda fill, xy0: cv.correlate_same(image, kernel, method="lax_conv", fill=fill),
        lambda fill, xy0: cv.spatially_varying_correlate(
            image, terms, order=2, xy_range=(0, 0, 30, 30), xy0=xy0, fill=fill, method="fft"),
        lambda fill, xy0: cv.grow_mask(np.zeros((19, 37), np.int32), kernel != 0),
        lambda fill, xy0: cv.spatially_varying_convolve_masked_image(
            image, image**2, np.zeros((19, 37), np.int32), terms, order=2, xy_range=(0, 0, 30, 30), xy0=xy0,
            no_data_bit=NO_DATA, method="fft"),
    ]  # fmt: skip
    for call in cases:
        traces.clear()
        call(np.nan, (0, 0))
        assert traces  # the first call with these shapes may trace: the counter sees it
        traces.clear()
        call(np.nan, (5, -3))  # same shapes; NaN fill (NaN != NaN would defeat a static cache) and new xy0
        call(1.0, (7.5, 2))
        jax.block_until_ready(call(0.0, (0, 0)))
        assert traces == []


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def test_input_checks():
    img = np.zeros((10, 12), np.float32)
    k = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match="2-D.*vmap"):
        cv.correlate_valid(np.zeros((2, 10, 12), np.float32), k)
    with pytest.raises(ValueError, match="vmap"):
        cv.correlate_valid(img, np.ones((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="no larger than the image"):
        cv.correlate_same(img, np.ones((11, 3), np.float32))
    with pytest.raises(ValueError, match="float32 or float64.*astype"):
        cv.correlate_valid(np.zeros((10, 12), np.int32), k)
    with pytest.raises(ValueError, match="floating-point"):
        cv.correlate_valid(img, np.ones((3, 3), np.int32))
    with pytest.raises(ValueError, match="method"):
        cv.correlate_valid(img, k, method="overlap-add")
    terms = np.ones((6, 3, 3), np.float32)
    with pytest.raises(ValueError, match="6 term kernels but spatial order 1 has 3"):
        cv.spatially_varying_correlate(img, terms, order=1, xy_range=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="needs xy_range"):
        cv.spatially_varying_correlate(img, terms, order=2)
    with pytest.raises(ValueError, match="empty"):
        cv.spatially_varying_correlate(img, terms, order=2, xy_range=(0, 0, 0, 1))
    with pytest.raises(ValueError, match="unknown spatial model"):
        cv.spatially_varying_correlate(img, terms, order=2, model="legendre", xy_range=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="xy0"):
        cv.spatially_varying_correlate(img, terms, order=2, xy_range=(0, 0, 1, 1), xy0=(1, 2, 3))
    with pytest.raises(ValueError, match=r"\(n_terms, Kh, Kw\)"):
        cv.spatially_varying_correlate(img, k, order=0, model="polynomial")
    m = np.zeros((10, 12), np.int32)
    with pytest.raises(ValueError, match="mask shape"):
        cv.convolve_masked_image(img, img, np.zeros((10, 11), np.int32), k, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="integer"):
        cv.convolve_masked_image(img, img, img, k, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="variance"):
        cv.convolve_masked_image(img, np.zeros((10, 11), np.float32), m, k, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="no_data_bit"):
        cv.convolve_masked_image(img, img, m, k, no_data_bit=32)
    with pytest.raises(ValueError, match="footprint"):
        cv.grow_mask(m, np.ones(3, bool))
    # even kernels are fine (centre K // 2)
    assert cv.correlate_same(img, np.ones((2, 4), np.float32)).shape == (10, 12)
