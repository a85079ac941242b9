"""The array preparation and finishing of ZOGY (``jaxdiff.core.zogy_prepare``) against numpy.

The reference recomputes afw's clipped statistics (``afw.math.makeStatistics`` MEANCLIP: median
start, 3 sigma from the IQR, three iterations) and the IQR standard deviation in float64 numpy.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core.zogy_prepare import finish_difference_planes, finish_score_planes, prepare_zogy_input

IQR_TO_SIGMA = 0.741301109252802
BAD, SAT, IGNORED, NO_DATA, EDGE = 1, 2, 4, 8, 16


def _clip(values, n_sigma=3.0, n_iter=3):
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    q1, centre, q3 = np.percentile(x, [25, 50, 75])
    half = n_sigma * IQR_TO_SIGMA * (q3 - q1)
    median = centre
    for _ in range(n_iter):
        kept = x[np.abs(x - centre) <= half]
        centre, var = kept.mean(), kept.var(ddof=1)
        half = n_sigma * np.sqrt(var)
    return centre, var, median


def _iqr_std(values):
    x = np.asarray(values, np.float64)
    q1, q3 = np.percentile(x[np.isfinite(x)], [25, 75])
    return IQR_TO_SIGMA * (q3 - q1)


@pytest.fixture
def planes(float_dtype):
    rng = np.random.default_rng(7)
    shape = (48, 56)
    var = rng.uniform(3.0, 5.0, shape)
    image = 10.0 + rng.normal(size=shape) * np.sqrt(var) * 1.3  # noise 1.3x the variance plane's
    mask = np.zeros(shape, np.int32)
    mask[5:8, 9:12] |= SAT
    mask[20, :] |= IGNORED
    image[30, 31] = np.nan
    var[2, 3] = np.inf
    return image.astype(float_dtype), var.astype(float_dtype), mask


def _tol(x64):
    return {"rtol": 1e-10, "atol": 1e-10} if x64 else {"rtol": 2e-4, "atol": 2e-4}


def test_prepare_fills_bad_pixels_with_clipped_means(planes, x64):
    image, var, mask = planes
    out = prepare_zogy_input(image, var, mask, 2.0, and_mask=IGNORED, fill_bits=SAT | BAD,
                             correct_background=False, scale_variance=False)  # fmt: skip
    im, va = 2.0 * image.astype(np.float64), 4.0 * var.astype(np.float64)
    nonfinite = ~(np.isfinite(im) & np.isfinite(va))
    bad = nonfinite | ((mask & SAT) != 0)
    good = ~bad & ((mask & IGNORED) == 0)
    np.testing.assert_array_equal(np.asarray(out.nonfinite), nonfinite)
    np.testing.assert_array_equal(np.asarray(out.bad), bad)
    np.testing.assert_array_equal(np.asarray(out.good), good)
    im_mean, _, _ = _clip(im[good])
    var_mean, _, _ = _clip(va[good & (va > 0)])
    np.testing.assert_allclose(np.asarray(out.image)[bad], im_mean, **_tol(x64))
    np.testing.assert_allclose(np.asarray(out.image)[~bad], im[~bad], rtol=1e-6 if not x64 else 1e-15)
    np.testing.assert_allclose(np.asarray(out.variance)[bad], var_mean, **_tol(x64))
    assert float(out.variance_scale) == 1.0
    np.testing.assert_allclose(float(out.noise_variance), var_mean, **_tol(x64))
    st = out.stats
    unmasked = (mask & (SAT | BAD | IGNORED)) == 0
    assert int(st.n_good) == good.sum() and int(st.n_unmasked) == unmasked.sum()
    assert int(st.n_finite_image) == (unmasked & np.isfinite(im)).sum()
    assert int(st.n_usable_variance) == (unmasked & np.isfinite(va) & (va > 0)).sum()
    assert int(st.background_used) == 0 and float(st.background) == 0.0
    np.testing.assert_allclose(float(st.image_mean), im_mean, **_tol(x64))


def test_prepare_background_and_variance_scale(planes, x64):
    image, var, mask = planes
    out = prepare_zogy_input(image, var, mask, 1.0, and_mask=IGNORED, fill_bits=SAT,
                             correct_background=True, scale_variance=True)  # fmt: skip
    im, va = image.astype(np.float64), var.astype(np.float64)
    bad = ~(np.isfinite(im) & np.isfinite(va)) | ((mask & SAT) != 0)
    good = ~bad & ((mask & IGNORED) == 0)
    bg, _, _ = _clip(im[good])
    im = im - bg
    im_mean, _, im_median = _clip(im[good])
    positive = good & (va > 0)
    var_mean, var_var, _ = _clip(va[positive])
    np.testing.assert_allclose(float(out.stats.background), bg, **_tol(x64))
    filled = np.where(bad, im_mean, im)
    va = np.where(bad, var_mean, va)
    sky = positive & (va <= var_mean * (1 + 1e-6) + 3 * np.sqrt(var_var))
    factor = _iqr_std(((filled - im_median) / np.sqrt(va))[sky]) ** 2
    assert factor == pytest.approx(1.69, rel=0.1)  # the noise was made 1.3x the variance plane's
    np.testing.assert_allclose(float(out.variance_scale), factor, **_tol(x64))
    np.testing.assert_allclose(np.asarray(out.variance), va * factor, rtol=1e-9 if x64 else 5e-4)
    np.testing.assert_allclose(np.asarray(out.image), filled, **_tol(x64))
    assert int(out.stats.variance_scale_used) == sky.sum()


def test_finish_difference_planes(float_dtype, x64):
    rng = np.random.default_rng(3)
    shape = (40, 50)
    diff_var = rng.uniform(1.0, 2.0, shape)
    diff = (rng.normal(size=shape) * np.sqrt(diff_var) * 0.8).astype(float_dtype)
    diff_var = diff_var.astype(float_dtype)
    mask1, mask2 = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    mask1[10, 10], mask2[11, 12] = SAT, IGNORED
    bad1, bad2 = np.zeros(shape, bool), np.zeros(shape, bool)
    bad1[10, 10] = bad2[20, 20] = True
    nf1, nf2 = np.zeros(shape, bool), np.zeros(shape, bool)
    nf2[20, 20] = True
    out = finish_difference_planes(diff, diff_var, bad1, bad2, mask1, mask2, nf1, nf2, no_data=NO_DATA,
                                   edge_bits=EDGE, edge=(3, 4), and_mask=IGNORED, scale_variance=True,
                                   out_dtype=np.dtype(float_dtype).name)  # fmt: skip
    expect = mask1 | mask2
    expect[20, 20] |= NO_DATA
    rows, cols = np.indices(shape)
    expect[(rows < 3) | (rows >= shape[0] - 3) | (cols < 4) | (cols >= shape[1] - 4)] |= EDGE
    np.testing.assert_array_equal(np.asarray(out.mask), expect)
    d, v = diff.astype(np.float64), diff_var.astype(np.float64)
    ok = ~(bad1 | bad2) & ((expect & IGNORED) == 0)
    v_mean, v_var, _ = _clip(v[ok])
    sky = ok & (v <= v_mean * (1 + 1e-6) + 3 * np.sqrt(v_var))
    factor = _iqr_std((d / np.sqrt(v))[sky]) ** 2
    np.testing.assert_allclose(float(out.variance_scale), factor, **_tol(x64))
    assert int(out.variance_scale_used) == sky.sum()
    np.testing.assert_allclose(np.asarray(out.difference_variance), v * factor, rtol=1e-9 if x64 else 5e-4)
    assert out.difference.dtype == float_dtype


@pytest.mark.parametrize("normalize", [False, True])
def test_finish_score_planes(float_dtype, x64, normalize):
    rng = np.random.default_rng(5)
    shape = (36, 44)
    score_var = rng.uniform(1.0, 3.0, shape)
    score_var[4, 5] = 0.0  # no variance: flagged
    score = rng.normal(size=shape) * np.sqrt(score_var)
    corr = 1.7 * rng.normal(size=shape)
    bad = np.zeros(shape, bool)
    bad[7, 8] = True
    out_mask = np.zeros(shape, np.int32)
    out_mask[9, :] = IGNORED
    args = [a.astype(float_dtype) for a in (score, score_var, corr)]
    out = finish_score_planes(*args, bad, out_mask, and_mask=IGNORED, normalize=normalize,
                              out_dtype=np.dtype(float_dtype).name)  # fmt: skip
    flagged = bad | (score_var == 0)
    s, sv, c = (a.astype(np.float64) for a in args)
    s, sv, c = np.where(flagged, 0, s), np.where(flagged, 1, sv), np.where(flagged, 0, c)
    norm = _iqr_std(c[~flagged & (out_mask == 0)]) if normalize else 1.0
    np.testing.assert_allclose(float(out.norm), norm, **_tol(x64))
    np.testing.assert_allclose(np.asarray(out.score), s, **_tol(x64))
    np.testing.assert_allclose(np.asarray(out.score_corr), c / norm, **_tol(x64))
    np.testing.assert_allclose(np.asarray(out.score_variance), np.where(flagged, 1, sv * norm**2), **_tol(x64))
    assert int(out.norm_used) == ((~flagged & (out_mask == 0)).sum() if normalize else 0)
    assert jnp.asarray(out.score).dtype == float_dtype
