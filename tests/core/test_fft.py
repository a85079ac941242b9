"""Tests of the FFT helpers (``jaxdiff.core.fft``) against numpy and brute-force references."""

import numpy as np
import pytest

from jaxdiff.core.fft import (
    FAST_FFT_MANTISSAS,
    centered_dft_matrix,
    crop_center_origin,
    fast_fft_shape,
    fast_fft_size,
    half_spectrum_weights,
    pad_center_origin,
    psf_to_otf,
    stamp_idft_matrices,
)
from jaxdiff.core.zogy import default_fft_shape


def as_input(a):
    """What jaxdiff sees (float32-rounded without x64), back as float64 numpy."""
    import jax.numpy as jnp

    return np.asarray(jnp.asarray(a)).astype(np.float64)


def origin_padded(a, shape):
    """Zero array of ``shape`` with stamp element k // 2 at index 0 (modular indexing)."""
    out = np.zeros(shape)
    out[np.ix_(*((np.arange(k) - k // 2) % n for k, n in zip(a.shape, shape, strict=True)))] = a
    return out


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def _brute_force_sizes(limit):
    """Every even m * 2**k (m in the mantissas, k any integer) in [8, limit], by enumeration."""
    out = set()
    for m in FAST_FFT_MANTISSAS:
        for k in range(-8, 20):
            num, den = (m * 2**k, 1) if k >= 0 else (m, 2**-k)
            if num % den == 0:
                n = num // den
                if n % 2 == 0 and 8 <= n <= limit:
                    out.add(n)
    return sorted(out)


def test_fast_fft_size_is_the_next_size_of_the_set():
    table = _brute_force_sizes(20000)
    for n in range(1, 9000):
        expected = next(s for s in table if s >= n)
        assert fast_fft_size(n) == expected, n
    big = np.array([s for s in table if s >= 64])
    assert np.max(big[1:] / big[:-1]) <= 1.125 + 1e-12  # at most 12.5 % padding per axis from 64 on
    for s in table:  # 5-smooth
        for p in (2, 3, 5):
            while s % p == 0:
                s //= p
        assert s == 1
    assert fast_fft_shape((63, 80)) == (64, 80)
    assert fast_fft_shape((63, 80), min_shape=(100, 10)) == (108, 80)
    assert default_fft_shape((4096, 4096), (25, 25), (21, 21)) == (4320, 4320)
    with pytest.raises(ValueError, match="positive"):
        fast_fft_size(0)


@pytest.mark.parametrize(("stamp", "target"), [((5, 7), (12, 16)), ((9, 3), (13, 15)), ((1, 1), (8, 9))])
def test_center_origin_layout_and_otf(stamp, target, rtol):
    a = np.random.default_rng(0).normal(size=stamp)
    expected = origin_padded(a, target)
    padded = pad_center_origin(as_input(a), target)
    np.testing.assert_array_equal(np.asarray(padded), as_input(expected))
    np.testing.assert_array_equal(np.asarray(crop_center_origin(padded, stamp)), as_input(a))
    same_size = np.asarray(pad_center_origin(as_input(a), stamp))
    np.testing.assert_array_equal(same_size, np.fft.ifftshift(as_input(a)))
    np.testing.assert_array_equal(np.asarray(crop_center_origin(same_size, stamp)), np.fft.fftshift(same_size))
    otf = psf_to_otf(as_input(a), target)
    assert rel_err(otf, np.fft.rfft2(as_input(expected))) < 10 * rtol
    assert not centered_dft_matrix(8, 3).flags.writeable


@pytest.mark.parametrize(("grid", "stamp"), [((16, 16), (5, 5)), ((15, 18), (7, 3)), ((40, 41), (9, 11))])
def test_stamp_idft_matrices_crop_the_inverse_transform(grid, stamp):
    """``Re(ey @ X @ ex)`` equals the centred crop of ``irfft2(X)`` for any half spectrum X."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=grid)
    half = np.fft.rfft2(real)
    ey, ex = stamp_idft_matrices(grid, stamp)
    got = (ey @ half @ ex).real
    full = np.fft.irfft2(half, s=grid)
    expected = full[np.ix_(*((np.arange(k) - k // 2) % n for k, n in zip(stamp, grid, strict=True)))]
    np.testing.assert_allclose(got, expected, atol=1e-12 * np.abs(full).max())


@pytest.mark.parametrize("width", [8, 9, 16, 17])
def test_half_spectrum_weights_count_the_full_grid(width):
    """Summing weights * |rfft|^2 over the half plane equals sum |fft|^2 over the full plane."""
    x = np.random.default_rng(2).normal(size=(6, width))
    w = half_spectrum_weights(width)
    assert w.shape == (width // 2 + 1,) and w[0] == 1 and (w[-1] == 1) == (width % 2 == 0)
    half = np.sum(w[None, :] * np.abs(np.fft.rfft2(x)) ** 2)
    np.testing.assert_allclose(half, np.sum(np.abs(np.fft.fft2(x)) ** 2), rtol=1e-12)


def test_centered_dft_matrix_quarter_turns_are_exact():
    """Phases at quarter turns are exactly 1, -i, -1, i (a 2-pixel box keeps an exact Nyquist zero)."""
    m = centered_dft_matrix(8, 3)
    phase = np.outer(np.arange(8), np.arange(3) - 1) % 8
    np.testing.assert_allclose(m, np.exp(-2j * np.pi * phase / 8), atol=1e-15)
    quarter = (4 * phase) % 8 == 0
    assert set(np.round(m[quarter], 15).tolist()) <= {1, -1, 1j, -1j}
    stamp = np.array([[0.0, 0.5, 0.5]])  # a 2-pixel box in an odd stamp
    otf = np.asarray(psf_to_otf(stamp, (1, 8)))
    assert otf[0, 4] == 0  # exact zero at Nyquist
