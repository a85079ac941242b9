"""Independent float64 numpy ZOGY (Zackay, Ofek & Gal-Yam 2016), used only as a test oracle.

Written straight from the paper / ip_diffim formulas with full complex ``fft2``; it shares
no code with ``jaxdiff``.  Padding convention (must match ``jaxdiff.core.zogy.zogy``): the image
sits at offset ``(fft - n) // 2`` of the FFT grid, extended by ``numpy.pad(mode=pad_mode)``;
with ``"constant"`` images get zeros and variance maps the scalar noise level.  PSFs are
normalised to sum 1 and their centre pixel ``k // 2`` is placed at index 0 (wrap-around).
"""

import numpy as np

TINY = 100 * np.finfo(np.float64).tiny
#: The floor added to both normalised PSF transforms (jaxdiff.core.zogy.PSF_TRANSFORM_FLOOR, restated).
PSF_FLOOR = 1e-12


def _mag(z):
    return np.maximum(np.abs(z.real), np.abs(z.imag))


def _origin_indices(k, n):
    return (np.arange(k) - k // 2) % n


def zogy_reference(new, ref, new_psf, ref_psf, new_var, ref_var, *, new_noise_var, ref_noise_var,
                   f_new=1.0, f_ref=1.0, sigma_new=(0.0, 0.0), sigma_ref=(0.0, 0.0), fft_shape,
                   pad_mode="reflect"):  # fmt: skip
    """Return a dict with the fields of ``jaxdiff.core.zogy.ZogyResult`` (all float64 numpy)."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    (h, w), (fh, fw) = new.shape, fft_shape
    y0, x0 = (fh - h) // 2, (fw - w) // 2
    pads = ((y0, fh - h - y0), (x0, fw - w - x0))

    def pad(a, fill):
        a = np.broadcast_to(np.asarray(a, np.float64), (h, w))
        if pad_mode == "constant":
            return np.pad(a, pads, mode="constant", constant_values=fill)
        return np.pad(a, pads, mode=pad_mode)

    def crop(a):
        return a[y0 : y0 + h, x0 : x0 + w]

    def otf(psf):
        psf = np.asarray(psf, np.float64)
        big = np.zeros(fft_shape)
        big[np.ix_(_origin_indices(psf.shape[0], fh), _origin_indices(psf.shape[1], fw))] = psf / psf.sum()
        return np.fft.fft2(big)

    def stamp(a_hat):
        s = np.fft.ifft2(a_hat).real[np.ix_(_origin_indices(new_psf.shape[0], fh),
                                            _origin_indices(new_psf.shape[1], fw))]  # fmt: skip
        return s / s.sum()

    def ifft(a_hat):
        return np.fft.ifft2(a_hat).real

    def sq(k_hat):  # DFT of the squared real-space kernel
        return np.fft.fft2(ifft(k_hat) ** 2)

    N, R = np.fft.fft2(pad(new, 0.0)), np.fft.fft2(pad(ref, 0.0))
    V1, V2 = np.fft.fft2(pad(new_var, new_noise_var)), np.fft.fft2(pad(ref_var, ref_noise_var))
    Pn, Pr = otf(new_psf), otf(ref_psf)
    a1, a2 = new_noise_var * f_ref**2, ref_noise_var * f_new**2
    fd_denom = np.sqrt(a1 + a2)
    F_D = f_new * f_ref / fd_denom
    # documented rule (jaxdiff.core.zogy, "Undetermined frequencies"): both transforms get the floor
    # TAU added before the ratios; where both are below it D is the plain scaled difference
    Qn, Qr = Pn + PSF_FLOOR, Pr + PSF_FLOOR
    s_den = a1 * np.abs(Qr) ** 2 + a2 * np.abs(Qn) ** 2  # eq. 12-13 denominator
    zero = s_den < TINY
    s_den = np.where(zero, 1.0, s_den)
    undetermined = np.maximum(_mag(Pn), _mag(Pr)) < PSF_FLOOR

    c1 = np.where(zero, f_ref / fd_denom, f_ref * Qr / np.sqrt(s_den))  # eq. 13
    c2 = np.where(zero, f_new / fd_denom, f_new * Qn / np.sqrt(s_den))
    D = crop(ifft(c1 * N - c2 * R)) / F_D
    var_D = crop(ifft(sq(c1) * V1 + sq(c2) * V2)) / F_D**2
    Pd_hat = np.where(zero, 0.0, fd_denom * Pn * Pr / np.sqrt(s_den))  # eq. 14

    # eq. 12 (S = F_D D ⊛ reversed P_D, eq. 17), with the floor in the D factor
    k1 = np.where(zero, 0.0, f_new * f_ref**2 * np.conj(Pn) * np.conj(Pr) * Qr / s_den)
    k2 = np.where(zero, 0.0, f_ref * f_new**2 * np.conj(Pr) * np.conj(Pn) * Qn / s_den)
    S_N, S_R = ifft(k1 * N), ifft(k2 * R)
    S = crop(S_N - S_R)
    var_S = crop(ifft(sq(k1) * V1 + sq(k2) * V2))

    def dx(a):  # d/dcolumn, central difference, periodic grid
        return (np.roll(a, -1, axis=1) - np.roll(a, 1, axis=1)) / 2

    def dy(a):  # d/drow
        return (np.roll(a, -1, axis=0) - np.roll(a, 1, axis=0)) / 2

    V_ast = crop(sigma_new[0] ** 2 * dx(S_N) ** 2 + sigma_new[1] ** 2 * dy(S_N) ** 2  # eqs. 30-33
                 + sigma_ref[0] ** 2 * dx(S_R) ** 2 + sigma_ref[1] ** 2 * dy(S_R) ** 2)  # fmt: skip
    total = var_S + V_ast
    S_corr = np.where(total > TINY, S / np.sqrt(np.where(total > TINY, total, 1.0)), 0.0)
    return {
        "difference": D,
        "difference_variance": var_D,
        "difference_psf": stamp(Pd_hat),
        "flux_zero_point": F_D,
        "score": S,
        "score_variance": var_S,
        "astrometric_variance": V_ast,
        "score_corr": S_corr,
        "score_psf": stamp(np.abs(Pd_hat) ** 2),  # eq. 17
        "n_degenerate": int(undetermined.sum()),
    }
