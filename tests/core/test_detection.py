"""Peak finding (``jaxdiff.core.detection``) against ``scipy.ndimage.maximum_filter``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, maximum_filter

from jaxdiff.core.detection import Peaks, find_peaks, peaks_to_table


def _reference_peaks(image, threshold, valid=None, *, footprint=5):
    """``(y, x, value)`` of every local maximum, strongest first (scipy, independent of jaxdiff)."""
    img = np.where(np.isfinite(image), image, -np.inf)
    local_max = maximum_filter(img, size=footprint, mode="constant", cval=-np.inf)
    is_peak = (img == local_max) & (img > threshold)
    if valid is not None:
        is_peak &= valid
    y, x = np.nonzero(is_peak)
    order = np.argsort(-img[y, x], kind="stable")
    return y[order], x[order], img[y, x][order]


@pytest.fixture(scope="module")
def smooth_field(float_dtype):
    """A non-square smooth random field (no ties between pixels), 48 x 64."""
    rng = np.random.default_rng(7)
    return gaussian_filter(rng.normal(size=(48, 64)), 1.5).astype(float_dtype)


def _as_sets(y, x):
    return sorted(zip(np.asarray(y).tolist(), np.asarray(x).tolist(), strict=True))


@pytest.mark.parametrize("footprint", [3, 5, 9])
def test_find_peaks_matches_scipy_maximum_filter(smooth_field, footprint):
    threshold = 0.05
    ry, rx, rv = _reference_peaks(smooth_field, threshold, footprint=footprint)
    assert len(ry) >= 5  # the field has enough peaks for the comparison to mean something
    p = find_peaks(jnp.asarray(smooth_field), threshold, max_peaks=200, footprint=footprint)
    ok = np.asarray(p.valid)
    assert ok.sum() == len(ry)
    # same pixels, same order (strongest first), same values (no arithmetic: exact)
    np.testing.assert_array_equal(np.asarray(p.y)[ok], ry)
    np.testing.assert_array_equal(np.asarray(p.x)[ok], rx)
    np.testing.assert_array_equal(np.asarray(p.value)[ok], rv)
    # the unused entries are flagged and carry -inf
    assert np.all(np.isneginf(np.asarray(p.value)[~ok]))


def test_valid_mask_and_nonfinite_pixels(smooth_field):
    img = smooth_field.copy()
    ry, rx, _ = _reference_peaks(img, 0.05)
    # a NaN on the strongest peak: that pixel is no peak, and it does not hide its neighbours
    img[ry[0], rx[0]] = np.nan
    valid = np.ones(img.shape, bool)
    valid[:, :20] = False  # peaks may not sit in the left columns
    ref_y, ref_x, ref_v = _reference_peaks(img, 0.05, valid)
    p = find_peaks(jnp.asarray(img), 0.05, jnp.asarray(valid), max_peaks=200)
    ok = np.asarray(p.valid)
    assert _as_sets(np.asarray(p.y)[ok], np.asarray(p.x)[ok]) == _as_sets(ref_y, ref_x)
    np.testing.assert_array_equal(np.asarray(p.value)[ok], ref_v)
    assert np.all(np.asarray(p.x)[ok] >= 20)
    assert (int(ry[0]), int(rx[0])) not in _as_sets(np.asarray(p.y)[ok], np.asarray(p.x)[ok])


def test_max_peaks_keeps_the_strongest(smooth_field):
    ry, rx, rv = _reference_peaks(smooth_field, -np.inf)
    k = 4
    assert len(ry) > k
    p = find_peaks(jnp.asarray(smooth_field), -np.inf, max_peaks=k)
    assert p.x.shape == (k,)
    assert bool(np.all(np.asarray(p.valid)))
    np.testing.assert_array_equal(np.asarray(p.y), ry[:k])
    np.testing.assert_array_equal(np.asarray(p.x), rx[:k])
    np.testing.assert_array_equal(np.asarray(p.value), rv[:k])


def test_border_peaks_and_plateaus(float_dtype):
    img = np.zeros((9, 11), float_dtype)
    img[0, 10] = 4.0  # a corner pixel: outside the image counts as -inf, so this is a peak
    img[5, 3] = img[5, 4] = 2.0  # a two-pixel plateau: both pixels equal the window maximum
    img[8, 0] = 0.5  # below the threshold
    p = find_peaks(jnp.asarray(img), 1.0, max_peaks=10, footprint=3)
    ok = np.asarray(p.valid)
    got = [(int(y), int(x), float(v)) for y, x, v in zip(p.y[ok], p.x[ok], p.value[ok], strict=True)]
    assert got[0] == (0, 10, 4.0)
    assert sorted(got[1:]) == [(5, 3, 2.0), (5, 4, 2.0)]


def test_peaks_to_table_and_sign(smooth_field):
    ry, rx, rv = _reference_peaks(-smooth_field, 0.05)
    p = find_peaks(-jnp.asarray(smooth_field), 0.05, max_peaks=200)
    table = peaks_to_table(p, sign=-1)
    assert [(d["y"], d["x"]) for d in table] == list(zip(ry.tolist(), rx.tolist(), strict=True))
    np.testing.assert_allclose([d["value"] for d in table], -rv, rtol=0, atol=0)
    assert all(isinstance(d["x"], int) and isinstance(d["value"], float) for d in table)


def test_jit_vmap_and_trace_count(smooth_field):
    stack = np.stack([smooth_field, smooth_field[::-1], -smooth_field])
    batched = jax.vmap(lambda im: find_peaks(im, 0.05, max_peaks=30))(jnp.asarray(stack))
    assert isinstance(batched, Peaks)
    for i, im in enumerate(stack):
        single = find_peaks(jnp.asarray(im), 0.05, max_peaks=30)
        for name in ("x", "y", "value", "valid"):
            np.testing.assert_array_equal(np.asarray(getattr(batched, name)[i]), np.asarray(getattr(single, name)))

    # one trace for same-shape calls: the counter runs only while JAX traces ``count_and_find``
    traces = []

    @jax.jit
    def count_and_find(im, thr):
        traces.append(1)
        return find_peaks(im, thr, max_peaks=30)

    for thr in (0.05, 0.1, 0.2):
        out = count_and_find(jnp.asarray(smooth_field), thr)
        ry, _, _ = _reference_peaks(smooth_field, thr)
        assert int(np.asarray(out.valid).sum()) == min(len(ry), 30)
    assert len(traces) == 1
