"""ZOGY image differencing (Zackay, Ofek & Gal-Yam 2016, ApJ 830:27) as a pure JAX function.

Notation follows ip_diffim's ``ZogyTask``: "new" = science = exposure 1 = N, "ref" =
template = exposure 2 = R, and the difference is new − ref.  Hats are 2-D DFTs with the
numpy convention (unnormalised forward transform).
"""

import functools
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ._fft import fast_fft_shape, fast_fft_size, half_spectrum_weights, psf_to_otf, stamp_idft_matrices

__all__ = ["PAD_MODES", "ZogyResult", "default_fft_shape", "zogy"]

#: Accepted ``pad_mode`` values (passed to ``jnp.pad``; "constant" pads images with 0).
PAD_MODES = ("reflect", "symmetric", "wrap", "constant")


class ZogyResult(NamedTuple):
    """Outputs of :func:`zogy` (a NamedTuple, hence a pytree).

    Attributes
    ----------
    difference : (H, W)
        Proper difference image D / F_D (eq. 13 over eq. 15): photometric scale 1,
        i.e. in the flux units of ``new_image / f_new``; D = new − ref.
    difference_variance : (H, W)
        Per-pixel variance of ``difference``: (k1² ⊛ V_new + k2² ⊛ V_ref) / F_D², where k1,
        k2 are the real-space D kernels (eq. 26 generalised to variance maps).
    difference_psf : (Kh, Kw)
        PSF of D (eq. 14) on the stamp shape of ``new_psf``, normalised to sum 1.
    flux_zero_point : ()
        F_D (eq. 15).
    score : (H, W) or None
        Matched-filter score S (eqs. 12 and 17), *not* divided by F_D (ip_diffim convention).
    score_variance : (H, W) or None
        V_S = k̂1² ⊛ V_new + k̂2² ⊛ V_ref with k̂1, k̂2 the real-space score kernels.
    astrometric_variance : (H, W) or None
        V_ast (eqs. 30–33); zeros when all astrometric sigmas are static zeros.
    score_corr : (H, W) or None
        S_corr = S / sqrt(V_S + V_ast) (eq. 25 with per-pixel variance); 0 where the
        total variance is below ``100 * finfo(dtype).tiny``.
    score_psf : (Kh, Kw) or None
        PSF of S, inverse DFT of |P̂_D|² (eq. 17), normalised to sum 1.
    n_degenerate : () int32
        Number of frequencies of the full ``fft_shape`` DFT grid at which the eq. 12
        denominator was below ``100 * finfo(dtype).tiny``.

    The five score fields are ``None`` when ``calculate_score=False``.
    """

    difference: Float[Array, "H W"]
    difference_variance: Float[Array, "H W"]
    difference_psf: Float[Array, "Kh Kw"]
    flux_zero_point: Float[Array, ""]
    score: Float[Array, "H W"] | None
    score_variance: Float[Array, "H W"] | None
    astrometric_variance: Float[Array, "H W"] | None
    score_corr: Float[Array, "H W"] | None
    score_psf: Float[Array, "Kh Kw"] | None
    n_degenerate: Int[Array, ""]


def default_fft_shape(
    image_shape: Sequence[int], new_psf_shape: Sequence[int], ref_psf_shape: Sequence[int]
) -> tuple[int, int]:
    """FFT grid used by :func:`zogy` when ``fft_shape`` is not given.

    ``fast_fft_shape(image_shape + 2 * border)`` with ``border`` = the largest PSF stamp
    dimension (>= twice the largest PSF half-size, and >= the extent of the D kernels).

    Examples
    --------
    >>> default_fft_shape((256, 256), (25, 25), (25, 25))
    (320, 320)
    """
    border = max(*new_psf_shape, *ref_psf_shape)
    return fast_fft_shape([int(n) + 2 * border for n in image_shape])


def _static_zero(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == 0


def zogy(
    new_image: Float[ArrayLike, "H W"],
    ref_image: Float[ArrayLike, "H W"],
    new_psf: Float[ArrayLike, "Kh Kw"],
    ref_psf: Float[ArrayLike, "Lh Lw"],
    new_variance: Float[ArrayLike, "H W"] | Float[ArrayLike, ""],
    ref_variance: Float[ArrayLike, "H W"] | Float[ArrayLike, ""],
    *,
    new_noise_var: Float[ArrayLike, ""],
    ref_noise_var: Float[ArrayLike, ""],
    f_new: Float[ArrayLike, ""] = 1.0,
    f_ref: Float[ArrayLike, ""] = 1.0,
    astrometric_sigma_new: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 0.0),
    astrometric_sigma_ref: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 0.0),
    fft_shape: tuple[int, int] | None = None,
    calculate_score: bool = True,
    pad_mode: str = "reflect",
) -> ZogyResult:
    r"""ZOGY proper image difference, score image and their variances.

    With 1 = new (N), 2 = ref (R), σ_k² the scalar noise levels and F_k the flux scalings,
    all products element-wise on the DFT grid (Zackay, Ofek & Gal-Yam 2016):

    * S_den = σ_n² F_r² |P̂_r|² + σ_r² F_n² |P̂_n|²  (denominator of eqs. 12–13);
    * D̂ = ĉ1 N̂ − ĉ2 R̂ with ĉ1 = F_r P̂_r / √S_den, ĉ2 = F_n P̂_n / √S_den  (eq. 13);
    * P̂_D = F_Ddenom P̂_n P̂_r / √S_den, F_Ddenom = √(σ_n² F_r² + σ_r² F_n²)  (eq. 14);
    * F_D = F_n F_r / F_Ddenom  (eq. 15);
    * Ŝ = k̂1 N̂ − k̂2 R̂ with k̂1 = F_n F_r² P̂_n* |P̂_r|² / S_den and
      k̂2 = F_r F_n² P̂_r* |P̂_n|² / S_den  (eq. 12; Ŝ = F_D D̂ P̂_D*, eq. 17);
    * per-pixel variances from the real-space kernels k = IDFT(ĉ) etc.:
      V_D = (k1² ⊛ V_n + k2² ⊛ V_r) / F_D², V_S = k̂1² ⊛ V_n + k̂2² ⊛ V_r
      (eq. 26 generalised);
    * V_ast = σ_{n,x}² (∂_x S_N)² + σ_{n,y}² (∂_y S_N)²
      + σ_{r,x}² (∂_x S_R)² + σ_{r,y}² (∂_y S_R)² with S_N = IDFT(k̂1 N̂), S_R = IDFT(k̂2 R̂)
      (eqs. 30–33), x = columns, y = rows, ∂ = central difference on the periodic grid;
    * S_corr = S / √(V_S + V_ast)  (eq. 25).

    Parameters
    ----------
    new_image, ref_image : array_like, shape (H, W)
        Registered science (new) and template (ref) images; any shape, odd or even.
    new_psf, ref_psf : array_like, shapes (Kh, Kw) and (Lh, Lw)
        PSF stamps, odd-sized, centred on pixel ``(K // 2)``, no larger than the image;
        any normalisation (normalised to sum 1 here).  Stamp shapes may differ.
    new_variance, ref_variance : array_like, shape (H, W) or scalar
        Per-pixel variance maps.  When both are scalars (Python or 0-d), a fast path
        computes V_D and V_S as constants (Parseval) with no variance FFTs.
    new_noise_var, ref_noise_var : float or 0-d array, keyword-only
        Scalar noise levels σ_n², σ_r² used in the Fourier denominators (the caller
        chooses them, e.g. the clipped mean of the variance planes as ip_diffim does).
    f_new, f_ref : float or 0-d array, keyword-only
        Flux-zero-point scalings F_n, F_r (default 1).
    astrometric_sigma_new, astrometric_sigma_ref : (float, float), keyword-only
        Astrometric registration noise (σ_x, σ_y) in pixels of each image, x = columns.
        If all four are Python zeros (the default) V_ast is skipped (zeros returned).
    fft_shape : (int, int), optional, keyword-only
        FFT grid, >= the image shape.  Default :func:`default_fft_shape`: image plus a
        border of the largest PSF stamp dimension per side, rounded up by
        :func:`~jaxdiff._fft.fast_fft_shape`.
    calculate_score : bool, keyword-only
        Compute the score fields (default True); else they are ``None``.
    pad_mode : {"reflect", "symmetric", "wrap", "constant"}, keyword-only
        How images are extended to ``fft_shape`` (``jnp.pad`` modes; the image sits at
        offset ``(fft - n) // 2``).  Variance maps are extended with the same mode, except
        for "constant", where images are zero-padded and variance maps padded with the
        scalar noise level.  ip_diffim instead fills the border with Gaussian noise of the
        noise level; we avoid a random-number dependence and, with the default "reflect",
        also the edge discontinuity of zero padding, while keeping the local noise level.
        Pixels within about a PSF width of the edge differ between these choices.

    Returns
    -------
    ZogyResult
        See :class:`ZogyResult`; arrays have the floating dtype of ``new_image``.

    Raises
    ------
    ValueError
        For inconsistent shapes, even-sized or too-large PSFs, a too-small ``fft_shape``,
        an unknown ``pad_mode`` or an unsupported dtype.

    Notes
    -----
    Frequencies where S_den < ``100 * finfo(dtype).tiny`` are degenerate: there ĉ1 =
    F_r / F_Ddenom, ĉ2 = F_n / F_Ddenom (as ip_diffim), and P̂_D, k̂1, k̂2 are 0.  The
    division uses the double-``where`` pattern, so values and gradients stay finite.

    Cost, in full-size real FFTs of ``fft_shape``: 2 forward (images) + 2 inverse (D, S)
    with scalar variances; per-pixel variance maps add 2 forward (maps), 4 × (inverse +
    forward) to square the four kernels, and 2 inverse (V_D, V_S): 16 in total.  A non-zero
    astrometric term adds 1 inverse (S_N and S_R separately); ``calculate_score=False``
    needs 3 (scalar) or 10 (per-pixel).  The PSF transfer functions are computed with
    skinny matrix products (separable DFTs restricted to the stamp), not full-size FFTs;
    the P_D / P_S stamps come from their spectra on a small grid of about 64 stamp sizes
    (or ``fft_shape`` when that is smaller), so they do not depend on the image size.
    On XLA:CPU an ``irfft2`` costs about 1.8 ``rfft2``, and these FFTs alone set the speed:
    at 4096² float32 on a 2-core CPU the 16 (4) transforms with nothing between them take
    23–33× (7.5–10×) one image-size ``rfft2``, and this function about 1.1–1.5× (1.6–2×)
    that (``benchmarks/README.md``, "The FFT floor of the algorithm").  In a command-line or
    batch process, :func:`jaxdiff.cli.tune_host_malloc` roughly halves the time at that size.

    Conditioning: where *both* PSF transfer functions fall to rounding level (|P̂| ≲ 1e-7 in
    float32, ≲ 1e-16 in float64; for Gaussians σ ≳ 1.5 px resp. ≳ 3 px), ĉ1 and ĉ2 are
    ratios of rounding errors.  D and V_D then differ between implementations and
    precisions at those frequencies, although the noise normalisation of D (eq. 13) holds
    exactly; S, V_S, S_corr and the PSFs carry |P̂|² factors and are unaffected.

    **JAX.** The heavy lifting is one ``jax.jit``-compiled function.  Static (a change
    recompiles): the shapes of all inputs, ``fft_shape``, ``calculate_score``,
    ``pad_mode``, whether each variance is a scalar, the dtype, and whether all
    astrometric sigmas are Python zeros.  Traced: images, PSFs, variances, noise levels,
    flux scalings and astrometric sigmas; all outputs except ``n_degenerate`` are
    differentiable with respect to all of them (forward and reverse mode).  The function
    can be wrapped in ``jax.jit``, ``jax.vmap`` (batches of pairs) and ``jax.grad``.
    float32 stays float32 and float64 stays float64; nothing touches ``jax.config``.

    References
    ----------
    Zackay, B., Ofek, E. O. & Gal-Yam, A. 2016, ApJ 830, 27 ("ZOGY"), eqs. 12–17, 25–33.

    Examples
    --------
    >>> import numpy as np
    >>> from jaxdiff._psf_images import gaussian_psf_image
    >>> rng = np.random.default_rng(0)
    >>> n, r = rng.normal(size=(2, 32, 32))
    >>> psf = gaussian_psf_image(1.0, (11, 11))
    >>> res = zogy(n, r, psf, psf, 1.0, 1.0, new_noise_var=1.0, ref_noise_var=1.0)
    >>> bool(jnp.allclose(res.difference, n - r, atol=1e-4))  # identical PSFs: D = N - R
    True
    >>> round(float(res.difference_variance[0, 0]), 4)
    2.0
    """
    dtype = jnp.result_type(new_image)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    if dtype not in (jnp.float32, jnp.float64):
        msg = f"zogy supports float32 and float64 images, got {dtype}"
        raise ValueError(msg)
    as_arr = functools.partial(jnp.asarray, dtype=dtype)
    new_image, ref_image, new_psf, ref_psf = map(as_arr, (new_image, ref_image, new_psf, ref_psf))
    new_variance, ref_variance, new_noise_var, ref_noise_var, f_new, f_ref = map(
        as_arr, (new_variance, ref_variance, new_noise_var, ref_noise_var, f_new, f_ref)
    )

    shape = new_image.shape
    if len(shape) != 2 or ref_image.shape != shape:
        msg = f"images must be 2-D with equal shapes, got {shape} and {ref_image.shape}"
        raise ValueError(msg)
    for name, psf in (("new_psf", new_psf), ("ref_psf", ref_psf)):
        if psf.ndim != 2 or any(k % 2 == 0 or k > n for k, n in zip(psf.shape, shape)):
            msg = f"{name} must be 2-D, odd-sized and no larger than the image {shape}, got {psf.shape}"
            raise ValueError(msg)
    for name, var in (("new_variance", new_variance), ("ref_variance", ref_variance)):
        if var.shape not in ((), shape):
            msg = f"{name} must be a scalar or have the image shape {shape}, got {var.shape}"
            raise ValueError(msg)
    for name, val in (("new_noise_var", new_noise_var), ("ref_noise_var", ref_noise_var), ("f_new", f_new),
                      ("f_ref", f_ref)):  # fmt: skip
        if val.ndim != 0:
            msg = f"{name} must be a scalar, got shape {val.shape}"
            raise ValueError(msg)
    if fft_shape is None:
        fft_shape = default_fft_shape(shape, new_psf.shape, ref_psf.shape)
    fft_shape = tuple(int(s) for s in fft_shape)
    if len(fft_shape) != 2 or any(f < n for f, n in zip(fft_shape, shape)):
        msg = f"fft_shape must be two ints >= the image shape {shape}, got {fft_shape}"
        raise ValueError(msg)
    if pad_mode not in PAD_MODES:
        msg = f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}"
        raise ValueError(msg)

    sigmas = (*astrometric_sigma_new, *astrometric_sigma_ref)
    if len(sigmas) != 4:
        msg = f"astrometric sigmas must be (sigma_x, sigma_y) pairs, got {len(sigmas)} values in total"
        raise ValueError(msg)
    use_ast = bool(calculate_score) and not all(_static_zero(s) for s in sigmas)
    sigmas = tuple(map(as_arr, sigmas)) if use_ast else None
    return _zogy_jit(
        new_image, ref_image, new_psf, ref_psf, new_variance, ref_variance, new_noise_var, ref_noise_var,
        f_new, f_ref, sigmas, fft_shape=fft_shape, calculate_score=bool(calculate_score), pad_mode=pad_mode,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("fft_shape", "calculate_score", "pad_mode"))
def _zogy_jit(
    new_image, ref_image, new_psf, ref_psf, new_variance, ref_variance, new_noise_var, ref_noise_var,
    f_new, f_ref, sigmas, *, fft_shape, calculate_score, pad_mode,
):  # fmt: skip
    dtype = new_image.dtype
    cdtype = jnp.complex64 if dtype == jnp.float32 else jnp.complex128
    tiny = 100 * float(jnp.finfo(dtype).tiny)
    (h, w), (fh, fw) = new_image.shape, fft_shape
    y0, x0 = (fh - h) // 2, (fw - w) // 2
    pads = ((y0, fh - h - y0), (x0, fw - w - x0))
    if pad_mode != "constant":  # static gather indices: much faster than jnp.pad's slicing on CPU
        rows, cols = (np.pad(np.arange(n), p, mode=pad_mode) for n, p in zip((h, w), pads))

    def pad(a, fill):
        if (fh, fw) == (h, w):  # no padding: the FFT grid is the image (periodic boundaries)
            return a
        if pad_mode == "constant":
            return jnp.pad(a, pads, constant_values=fill)
        return jnp.take(jnp.take(a, rows, axis=0), cols, axis=1)

    def crop(a):
        return a if (fh, fw) == (h, w) else a[y0 : y0 + h, x0 : x0 + w]

    def inv(a):
        return jnp.fft.irfft2(a, s=fft_shape)

    def cx(a):
        return a.astype(cdtype)

    weights = half_spectrum_weights(fw)[None, :]

    def full_sum(half):
        """Sum of a real function of frequency over the full DFT grid, given the half plane."""
        per_row = jnp.sum(jnp.asarray(weights, half.dtype) * half, axis=1, dtype=half.dtype)
        return jnp.sum(per_row, dtype=half.dtype)  # two stages: accurate float32 sums

    n_hat = jnp.fft.rfft2(pad(new_image, 0))
    r_hat = jnp.fft.rfft2(pad(ref_image, 0))
    pn_norm, pr_norm = new_psf / jnp.sum(new_psf), ref_psf / jnp.sum(ref_psf)

    a1 = new_noise_var * f_ref**2
    a2 = ref_noise_var * f_new**2
    fd_denom = jnp.sqrt(a1 + a2)
    f_d = f_new * f_ref / fd_denom

    def spectra(grid):
        """Fourier-space ZOGY quantities (half spectra) on an FFT grid ``grid``."""
        pn = psf_to_otf(pn_norm, grid)
        pr = psf_to_otf(pr_norm, grid)
        pn2 = pn.real**2 + pn.imag**2
        pr2 = pr.real**2 + pr.imag**2
        s_den = a1 * pr2 + a2 * pn2
        degenerate = s_den < tiny
        # double where: the unused branch sees 1, so values and fwd/rev gradients stay finite
        inv_den = jnp.where(degenerate, 0, jax.lax.rsqrt(jnp.where(degenerate, 1, s_den)))  # 1/sqrt(S_den)
        inv_s = inv_den**2
        deg_c = jnp.where(degenerate, 1 / fd_denom, 0)  # eq. 13 kernels at degenerate frequencies
        q = dict(pn2=pn2, pr2=pr2, inv_s=inv_s, deg_c=deg_c, degenerate=degenerate)
        # D kernels (eq. 13): c1 = f_ref (P_r inv_den + deg_c), c2 = f_new (P_n inv_den + deg_c)
        q["c1"] = cx(f_ref * inv_den) * pr + cx(f_ref * deg_c)
        q["c2"] = cx(f_new * inv_den) * pn + cx(f_new * deg_c)
        q["pd_hat"] = cx(fd_denom * inv_den) * pn * pr  # eq. 14
        # score kernels (eq. 12): k1 = F_n F_r² P_n* |P_r|² / S_den, k2 = F_r F_n² P_r* |P_n|² / S_den
        q["g1"] = f_new * f_ref**2 * pr2 * inv_s
        q["g2"] = f_ref * f_new**2 * pn2 * inv_s
        q["k1"] = cx(q["g1"]) * jnp.conj(pn)
        q["k2"] = cx(q["g2"]) * jnp.conj(pr)
        q["ps_hat"] = cx(fd_denom**2 * pn2 * pr2 * inv_s)  # eq. 17
        return q

    full = spectra(fft_shape)
    n_degenerate = full_sum(full["degenerate"].astype(jnp.int32))
    difference = crop(inv(full["c1"] * n_hat - full["c2"] * r_hat)) / f_d

    # P_D and P_S stamps from the spectra on a small grid (>= 64 stamp sizes; the full grid when
    # that is not smaller) instead of matrix products over the full-size half spectra.  Their
    # real-space kernels decay within a few stamp sizes; the full-grid stamps themselves depend
    # on the grid size at the level of the aliased tails (up to ~1e-8 relative in float64 for
    # broad, truncated stamps), and the 64x grid stays within that level.
    kmax = [max(a, b) for a, b in zip(new_psf.shape, ref_psf.shape)]
    small_shape = tuple(min(fast_fft_size(64 * k), f) for k, f in zip(kmax, fft_shape))
    small = full if small_shape == fft_shape else spectra(small_shape)
    stamp_mats = [jnp.asarray(m, cdtype) for m in stamp_idft_matrices(small_shape, new_psf.shape)]

    def stamps(*spectra_):  # normalised PSF stamps from half spectra, without full-size inverse FFTs
        mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        out = [mm(stamp_mats[0], mm(spec, stamp_mats[1])).real for spec in spectra_]
        return [o / jnp.sum(o) for o in out]

    scalar_var = new_variance.ndim == 0 and ref_variance.ndim == 0
    if not scalar_var:
        v1_hat = jnp.fft.rfft2(pad(jnp.broadcast_to(new_variance, (h, w)), new_noise_var))
        v2_hat = jnp.fft.rfft2(pad(jnp.broadcast_to(ref_variance, (h, w)), ref_noise_var))

    def propagate(k1, k2, k1_sq, k2_sq):
        """k1² ⊛ V_new + k2² ⊛ V_ref for kernels named k1, k2 (|k̂|² given too)."""
        if scalar_var:  # Parseval: sum_x k(x)^2 = sum_f |k̂(f)|^2 / (H W)
            var = full_sum(new_variance * k1_sq + ref_variance * k2_sq) / (fh * fw)
            return jnp.full((h, w), var, dtype)
        # full grid: where both OTFs are at rounding level the D kernels need not decay
        k1_sq_hat = jnp.fft.rfft2(inv(full[k1]) ** 2)
        k2_sq_hat = jnp.fft.rfft2(inv(full[k2]) ** 2)
        return crop(inv(k1_sq_hat * v1_hat + k2_sq_hat * v2_hat))

    inv_s, deg_c, pn2, pr2 = full["inv_s"], full["deg_c"], full["pn2"], full["pr2"]
    c1_sq = f_ref**2 * (inv_s * pr2 + deg_c**2)
    c2_sq = f_new**2 * (inv_s * pn2 + deg_c**2)
    difference_variance = propagate("c1", "c2", c1_sq, c2_sq) / f_d**2
    if not calculate_score:
        (difference_psf,) = stamps(small["pd_hat"])
        return ZogyResult(difference, difference_variance, difference_psf, f_d, None, None, None, None, None,
                          n_degenerate)  # fmt: skip

    k1, k2, g1, g2 = full["k1"], full["k2"], full["g1"], full["g2"]
    if sigmas is None:
        score = crop(inv(k1 * n_hat - k2 * r_hat))
        astrometric_variance = jnp.zeros((h, w), dtype)
    else:
        s_new, s_ref = inv(k1 * n_hat), inv(k2 * r_hat)
        score = crop(s_new - s_ref)

        def grad2(a, axis):  # squared central difference on the periodic FFT grid
            return ((jnp.roll(a, -1, axis) - jnp.roll(a, 1, axis)) / 2) ** 2

        sxn, syn, sxr, syr = sigmas
        new_term = sxn**2 * grad2(s_new, 1) + syn**2 * grad2(s_new, 0)  # x = columns (axis 1), y = rows
        ref_term = sxr**2 * grad2(s_ref, 1) + syr**2 * grad2(s_ref, 0)
        astrometric_variance = crop(new_term + ref_term)  # eqs. 30-33
    score_variance = propagate("k1", "k2", g1**2 * pn2, g2**2 * pr2)
    difference_psf, score_psf = stamps(small["pd_hat"], small["ps_hat"])  # eqs. 14, 17
    total = score_variance + astrometric_variance
    ok = total > tiny
    score_corr = jnp.where(ok, score / jnp.sqrt(jnp.where(ok, total, 1)), 0)
    return ZogyResult(difference, difference_variance, difference_psf, f_d, score, score_variance,
                      astrometric_variance, score_corr, score_psf, n_degenerate)  # fmt: skip
