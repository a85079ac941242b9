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
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int

from ._checks import check_choice, check_fft_shape, check_odd_stamp, check_scalar, check_scalar_or_shape
from ._numerics import PRECISION, result_float_dtype, tiny
from .fft import (
    centered_dft_matrix,
    crop_center_origin,
    fast_fft_shape,
    fast_fft_size,
    half_spectrum_weights,
    psf_to_otf,
    stamp_idft_matrices,
)

__all__ = [
    "KERNEL_MODES",
    "KERNEL_TAIL_TOLERANCE",
    "PAD_MODES",
    "PSF_TRANSFORM_FLOOR",
    "ZogyResult",
    "ZogyWeights",
    "choose_kernel_mode",
    "default_fft_shape",
    "kernel_box_shape",
    "precise_otf",
    "psf_low_part",
    "zogy",
    "zogy_weights",
]

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
        Number of frequencies of the ``fft_shape`` half-plane DFT grid at which both PSF
        transforms are below :data:`PSF_TRANSFORM_FLOOR` (D is set by the rule there, not by
        the PSFs); estimated from the small kernel grid when box kernels are used.
    kernel_tail : ()
        Largest fraction of the energy (sum of squares) of the D / S kernels that lies outside
        the kernel box (:func:`kernel_box_shape`), measured on the small kernel grid.
    full_grid : () bool
        True when the kernels were evaluated on the full FFT grid (``kernel_mode="full"``, a
        small FFT grid, or ``kernel_tail`` above :data:`KERNEL_TAIL_TOLERANCE`), False when
        the compact box kernels were used.

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
    kernel_tail: Float[Array, ""]
    full_grid: Bool[Array, ""]


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


def psf_low_part(psf: Float[ArrayLike, "... Kh Kw"], dtype=jnp.float32) -> np.ndarray | None:
    """Low float32 part of a float64 PSF stamp (or stack): ``float32(p - float32(p))``.

    ``float32(p) + psf_low_part(p)`` holds the stamp to about 48 bits, so the float32 path of
    :func:`zogy` (:func:`precise_otf`) transforms the float64 PSF, not its float32 rounding
    (whose rounding noise, ~1e-8 of the peak, would decide the ZOGY weights wherever both
    transforms are below that).

    Parameters
    ----------
    psf : array_like
        Stamp(s); only float64 numpy (host) arrays have a low part.
    dtype : dtype
        The working precision; only float32 needs a low part.

    Returns
    -------
    numpy.ndarray or None
        float32 array of the stamp's shape, or None when there is nothing to keep.
    """
    if dtype != jnp.float32 or isinstance(psf, (jax.Array, jax.core.Tracer)):
        return None
    p = np.asarray(psf)
    if p.dtype != np.float64:
        return None
    return (p - p.astype(np.float32)).astype(np.float32)


_low_part = psf_low_part


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
    kernel_mode: str = "auto",
    new_psf_lo: Float[ArrayLike, "Kh Kw"] | None = None,
    ref_psf_lo: Float[ArrayLike, "Lh Lw"] | None = None,
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
        :func:`~jaxdiff.core.fft.fast_fft_shape`.
    calculate_score : bool, keyword-only
        Compute the score fields (default True); else they are ``None``.
    new_psf_lo, ref_psf_lo : array_like, optional, keyword-only
        Low parts of float64 PSF stamps split into float32 ``hi + lo`` (:func:`psf_low_part`),
        for callers that pass the stamps as float32 arrays (e.g. under ``jit``).  By default
        a float64 numpy stamp in float32 mode is split here, and other stamps have none.
    kernel_mode : {"auto", "box", "full"}, keyword-only
        "auto" (default): compact box kernels when their tails allow (see Notes), else the
        full grid; "box" / "full" force one path (static).
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
    **Stable form (float32 = float64).**  The PSF transforms are computed to float64 accuracy in
    both precisions (:func:`precise_otf`; in float32 on the host from the stamp), and every ratio
    is formed after dividing by ``m = max(|P̂_n|, |P̂_r|)`` (:func:`zogy_weights`): D̂ =
    w_n N̂/F_n − w_r R̂/F_r, P̂_D, Ŝ = F_D² P̂_D* D̂ and the variance kernels are products of
    O(1) numbers, so nothing underflows where both transforms are 1e-20, and float32 D
    agrees with a float64 computation of the same formulas (correlation > 0.9999 for Gaussian
    PSFs of σ 1–3.5 px and Moffat PSFs of β 2.5–4.5, ``tests/core/test_zogy_precision.py``).

    **Undetermined frequencies (documented limit).**  Where both normalised transforms are
    below τ = :data:`PSF_TRANSFORM_FLOOR` (1e-12 of their zero-frequency value) the PSFs do not
    determine D: a float64 transform carries rounding errors of ~1e-17 there, and a PSF model
    is never known to that level.  The rule: τ is added to both transforms before the ratios,
    so the weights pass continuously to w_n = w_r = 1 (per noise weight), i.e. D̂ = N̂/F_n −
    R̂/F_r there — ip_diffim's choice where its denominator vanishes — and D stays white with
    unit variance; S, V_S, S_corr and the PSFs carry |P̂|² factors and are unaffected.  Only
    well-contained broad stamps reach τ (e.g. a Gaussian of σ ≳ 2 px sampled to < 1e-13 at the
    stamp edge); truncated or float32-rounded stamps ring above it.  ``n_degenerate`` counts
    these frequencies.  The exact-zero case (e.g. a 2-pixel box PSF at Nyquist) is the same
    rule.  Double ``where`` keeps values and gradients finite.

    **Kernels and cost.**  The D and S kernels (w_n, w_r, P_D and w·P_D*) are evaluated on a
    small grid (4× the kernel box :func:`kernel_box_shape`, 2K − 1 per axis) and cropped to the
    box; when their energy outside the box is below :data:`KERNEL_TAIL_TOLERANCE`
    (``kernel_mode="auto"``), the box kernels and their squares reach the full grid by matrix
    DFTs, and the only full-size FFTs are 2 forward (images) + 2 inverse (D, S) with scalar
    variances, plus 2 forward (variance maps) + 2 inverse (V_D, V_S) with per-pixel maps: 4 or
    8 (a non-zero astrometric term adds 1 inverse).  Kernels that are not compact (truncated
    stamps whose transforms ring, e.g. Gaussians of σ ≳ 2 px on 25-pixel stamps) use the full
    grid instead: full-grid transforms, and 4 × (inverse + forward) FFTs to square the
    kernels: 16 with per-pixel maps.  With concrete PSFs the choice is made before compiling
    (one path in the program); under an outer ``jit`` it is a ``lax.cond`` (under ``vmap``
    both paths run).  ``kernel_tail`` and ``full_grid`` in the result report it.  The P_D / P_S
    stamps come from a grid of about 64 stamp sizes.  Timings are in ``benchmarks/README.md``.

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
    >>> from jaxdiff.core.psf_images import gaussian_psf_image
    >>> rng = np.random.default_rng(0)
    >>> n, r = rng.normal(size=(2, 32, 32))
    >>> psf = gaussian_psf_image(1.0, (11, 11))
    >>> res = zogy(n, r, psf, psf, 1.0, 1.0, new_noise_var=1.0, ref_noise_var=1.0)
    >>> bool(jnp.allclose(res.difference, n - r, atol=1e-4))  # identical PSFs: D = N - R
    True
    >>> round(float(res.difference_variance[0, 0]), 4)
    2.0
    """
    dtype = result_float_dtype(new_image)
    if dtype not in (jnp.float32, jnp.float64):
        msg = f"zogy supports float32 and float64 images, got {dtype}"
        raise ValueError(msg)
    as_arr = functools.partial(jnp.asarray, dtype=dtype)
    if new_psf_lo is None:
        new_psf_lo = _low_part(new_psf, dtype)
    if ref_psf_lo is None:
        ref_psf_lo = _low_part(ref_psf, dtype)
    new_image, ref_image, new_psf, ref_psf = map(as_arr, (new_image, ref_image, new_psf, ref_psf))
    new_psf_lo, ref_psf_lo = (jnp.zeros_like(p) if lo is None else as_arr(lo)
                              for p, lo in ((new_psf, new_psf_lo), (ref_psf, ref_psf_lo)))  # fmt: skip
    new_variance, ref_variance, new_noise_var, ref_noise_var, f_new, f_ref = map(
        as_arr, (new_variance, ref_variance, new_noise_var, ref_noise_var, f_new, f_ref)
    )

    shape = new_image.shape
    if len(shape) != 2 or ref_image.shape != shape:
        msg = f"images must be 2-D with equal shapes, got {shape} and {ref_image.shape}"
        raise ValueError(msg)
    check_odd_stamp(new_psf, "new_psf", shape)
    check_odd_stamp(ref_psf, "ref_psf", shape)
    check_scalar_or_shape(new_variance, "new_variance", shape)
    check_scalar_or_shape(ref_variance, "ref_variance", shape)
    for name, val in (("new_noise_var", new_noise_var), ("ref_noise_var", ref_noise_var), ("f_new", f_new),
                      ("f_ref", f_ref)):  # fmt: skip
        check_scalar(val, name)
    if fft_shape is None:
        fft_shape = default_fft_shape(shape, new_psf.shape, ref_psf.shape)
    fft_shape = check_fft_shape(fft_shape, shape, "image shape")
    check_choice(pad_mode, "pad_mode", PAD_MODES)
    check_choice(kernel_mode, "kernel_mode", KERNEL_MODES)
    box = kernel_box_shape(new_psf.shape, ref_psf.shape, fft_shape)
    small = _small_grid(box, fft_shape)
    concrete = not any(isinstance(a, jax.core.Tracer) for a in (new_psf, ref_psf, new_psf_lo, ref_psf_lo,
                                                                  new_noise_var, ref_noise_var, f_new, f_ref))  # fmt: skip
    if kernel_mode == "auto" and small != fft_shape and concrete:
        # decide here, on the host, so that the compiled program holds one kernel path only
        kernel_mode = choose_kernel_mode(new_psf, ref_psf, new_noise_var=new_noise_var, ref_noise_var=ref_noise_var,
                                         f_new=f_new, f_ref=f_ref, fft_shape=fft_shape, new_psf_lo=new_psf_lo,
                                         ref_psf_lo=ref_psf_lo)  # fmt: skip

    sigmas = (*astrometric_sigma_new, *astrometric_sigma_ref)
    if len(sigmas) != 4:
        msg = f"astrometric sigmas must be (sigma_x, sigma_y) pairs, got {len(sigmas)} values in total"
        raise ValueError(msg)
    use_ast = bool(calculate_score) and not all(_static_zero(s) for s in sigmas)
    sigmas = tuple(map(as_arr, sigmas)) if use_ast else None
    return _zogy_jit(
        new_image, ref_image, (new_psf, new_psf_lo), (ref_psf, ref_psf_lo), new_variance, ref_variance, new_noise_var, ref_noise_var,
        f_new, f_ref, sigmas, fft_shape=fft_shape, calculate_score=bool(calculate_score), pad_mode=pad_mode,
        kernel_mode=kernel_mode,
    )  # fmt: skip


#: Floor added to both normalised PSF transfer functions (their zero-frequency value is 1) before
#: the ZOGY ratios are formed.  Where both transforms are below it, the PSFs do not determine D
#: (see :func:`zogy`, "Undetermined frequencies").  It lies far above the rounding level of the
#: transforms, which are computed to float64 accuracy in both precisions, so float32 and float64
#: follow the same rule at the same frequencies.
PSF_TRANSFORM_FLOOR = 1e-12

#: Largest fraction of a D or S kernel's energy (sum of squares) allowed outside the kernel box
#: before :func:`zogy` falls back from box kernels to full-grid kernels (``kernel_mode="auto"``).
KERNEL_TAIL_TOLERANCE = 1e-6

KERNEL_MODES = ("auto", "box", "full")


def _host_otf(psf, lo, *, grid):
    """Transform centred stamp(s) ``psf + lo`` in float64 numpy (half plane, sum 1), as complex64.

    Row transforms of the stamp rows, then column transforms (numpy's FFT: no BLAS threads,
    which contend with XLA's inside a callback).
    """
    psf = np.asarray(psf, np.float64) + np.asarray(lo, np.float64)
    (fh, fw), (kh, kw) = grid, psf.shape[-2:]
    rows = np.zeros((*psf.shape[:-1], fw))
    rows[..., (np.arange(kw) - kw // 2) % fw] = psf
    spec = np.zeros((*psf.shape[:-2], fh, fw // 2 + 1), np.complex128)
    spec[..., (np.arange(kh) - kh // 2) % fh, :] = np.fft.rfft(rows, axis=-1)
    spec = np.fft.fft(spec, axis=-2)
    return np.asarray(spec / np.sum(psf, axis=(-2, -1))[..., None, None], np.complex64)


def precise_otf(
    psf: Float[ArrayLike, "Kh Kw"], grid: tuple[int, int], psf_lo: Float[ArrayLike, "Kh Kw"] | None = None
) -> Complex[Array, "H Wr"]:
    """Half-plane transfer function of a centred PSF stamp normalised to sum 1, to float64 accuracy.

    Equals ``psf_to_otf(p, grid) / sum(p)`` (:func:`~jaxdiff.core.fft.psf_to_otf`) for the stamp
    ``p = psf + psf_lo`` mathematically, and is that in float64.  In float32 the values come
    from a float64 computation on the host (``jax.pure_callback``: stamp-sized input, one
    pruned FFT, the normalisation included) and are stored as complex64, so each value
    carries float32 *relative* precision even where the transform is 1e-10 of its peak; a
    float32 DFT only reaches about 1e-7 of the peak in *absolute* terms, and normalising the
    stamp in float32 first would already perturb it at that level.  The ratios of two PSF
    transforms in ZOGY need the former (Zackay et al. 2016, eq. 13).

    Parameters
    ----------
    psf : array_like, shape (Kh, Kw)
        Centred stamp (float32 or float64), any normalisation (sum != 0).
    grid : (int, int)
        FFT grid (static).
    psf_lo : array_like, shape (Kh, Kw), optional
        Low part of a float64 stamp split as ``hi + lo`` into two float32 arrays (``hi =
        float32(p)``, ``lo = float32(p - hi)``): the float32 path then transforms the float64
        stamp.  :func:`zogy` does this for float64 numpy PSFs.  Default zeros.

    Returns
    -------
    jax.Array, shape (grid[0], grid[1] // 2 + 1), complex
        complex64 for float32 input, complex128 for float64; 1 at zero frequency.

    Notes
    -----
    Differentiable (forward and reverse) in ``psf`` and ``psf_lo``: the tangent
    ``(P̂(dp) − P̂ Σdp) / Σp`` is evaluated in the working precision.  Works under ``jit`` and
    ``vmap`` (the callback receives the whole batch).
    """
    psf = jnp.asarray(psf)
    lo = jnp.zeros_like(psf) if psf_lo is None else jnp.asarray(psf_lo, psf.dtype)
    return _precise_otf(psf, lo, tuple(int(g) for g in grid))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _precise_otf(psf, lo, grid):
    if psf.dtype == jnp.float64:
        p = psf + lo
        return psf_to_otf(p, grid) / jnp.sum(p)
    out = jax.ShapeDtypeStruct((*psf.shape[:-2], grid[0], grid[1] // 2 + 1), jnp.complex64)
    return jax.pure_callback(functools.partial(_host_otf, grid=grid), out, psf, lo, vmap_method="expand_dims")


@_precise_otf.defjvp
def _precise_otf_jvp(grid, primals, tangents):
    (psf, lo), (dpsf, dlo) = primals, tangents
    otf = _precise_otf(psf, lo, grid)
    dp = dpsf + dlo
    return otf, (psf_to_otf(dp, grid) - otf * jnp.sum(dp)) / jnp.sum(psf + lo)


class ZogyWeights(NamedTuple):
    """Dimensionless ZOGY Fourier weights on one grid (see :func:`zogy_weights`)."""

    w_new: Complex[Array, "H Wr"]
    w_ref: Complex[Array, "H Wr"]
    psf_d: Complex[Array, "H Wr"]
    undetermined: Bool[Array, "H Wr"]


def zogy_weights(
    new_otf: Complex[Array, "H Wr"], ref_otf: Complex[Array, "H Wr"], alpha_new: Float[ArrayLike, ""],
    alpha_ref: Float[ArrayLike, ""],
) -> ZogyWeights:
    r"""Form the ZOGY ratios of PSF transforms stably (Zackay et al. 2016, eqs. 13–14).

    With ``P̃ = P̂ + τ`` (τ = :data:`PSF_TRANSFORM_FLOOR`) for both normalised transfer
    functions, ``m = max(|Re|, |Im|)`` over both, and ``α_n = σ_n² F_r² / (σ_n² F_r² + σ_r² F_n²)``,
    ``α_r = 1 − α_n``::

        den  = sqrt(α_n |P̃_r/m|² + α_r |P̃_n/m|²)
        w_n  = (P̃_r / m) / den,   w_r = (P̃_n / m) / den        (D̂ = w_n N̂/F_n − w_r R̂/F_r)
        P̂_D = (P̂_n / m) P̂_r / den                               (eq. 14, normalised: P̂_D(0) = 1)

    Dividing by ``m`` first keeps every square and product within range in float32 (no
    underflow where both transforms are 1e-20), and ``α_n |w_n|² + α_r |w_r|² = 1`` holds at
    every frequency: D is white with unit variance per unit of F_D-scaled noise.

    Parameters
    ----------
    new_otf, ref_otf : complex arrays
        Transfer functions of the normalised PSFs on one grid (from :func:`precise_otf`).
    alpha_new, alpha_ref : float
        The noise weights above, each in [0, 1], summing to 1.

    Returns
    -------
    ZogyWeights
        ``w_new``, ``w_ref``, ``psf_d`` and ``undetermined`` (both ``max(|Re|, |Im|)`` < τ).

    Notes
    -----
    Where both transforms are below τ, ``w_n → 1``, ``w_r → 1`` (times the noise weights):
    D is the plain flux-scaled difference there, the rule ip_diffim applies where the
    denominator vanishes, reached continuously.  Double ``where`` at ``m = 0`` and ``den = 0``
    keeps values and gradients finite.
    """
    tau = PSF_TRANSFORM_FLOOR

    def mag(z):
        return jnp.maximum(jnp.abs(z.real), jnp.abs(z.imag))

    def abs2(z):
        return z.real**2 + z.imag**2

    undetermined = jnp.maximum(mag(new_otf), mag(ref_otf)) < tau
    qn, qr = new_otf + tau, ref_otf + tau
    m = jnp.maximum(mag(qn), mag(qr))
    ok = m > 0
    inv_m = jnp.where(ok, 1 / jnp.where(ok, m, 1), 0)
    un, ur = qn * inv_m, qr * inv_m
    den2 = alpha_new * abs2(ur) + alpha_ref * abs2(un)
    okd = den2 > 0
    inv_den = jnp.where(okd, jax.lax.rsqrt(jnp.where(okd, den2, 1)), 0)
    return ZogyWeights(ur * inv_den, un * inv_den, (new_otf * inv_m) * ref_otf * inv_den, undetermined)


def _stamps_to_half_spectra(stamps, grid):
    """``rfft2(pad_center_origin(k, grid))`` for a stack of centred stamps, without the zero rows.

    The row transforms of the ``Kh`` non-zero rows are a skinny matrix product (stamp DFT
    matrix); the column transforms are one batched FFT along the first grid axis.  On XLA:CPU
    this is about 1.3x cheaper than padding and ``rfft2``, and cheaper than a second matrix
    product over the full grid.
    """
    (fh, fw), (kh, kw) = grid, stamps.shape[-2:]
    cdtype = jnp.complex64 if stamps.dtype == jnp.float32 else jnp.complex128
    ex = jnp.asarray(centered_dft_matrix(fw, kw)[: fw // 2 + 1].T, cdtype)
    rows = jnp.matmul(stamps.astype(cdtype), ex, precision=PRECISION)  # (..., Kh, W//2+1)
    h = kh // 2  # centre row to index 0, rows before it wrap to the end, zeros between
    gap = jnp.zeros((*rows.shape[:-2], fh - kh, rows.shape[-1]), rows.dtype)
    return jnp.fft.fft(jnp.concatenate([rows[..., h:, :], gap, rows[..., :h, :]], axis=-2), axis=-2)


def kernel_box_shape(new_psf_shape: Sequence[int], ref_psf_shape: Sequence[int],
                     fft_shape: Sequence[int]) -> tuple[int, int]:
    """Return the box of the real-space D and S kernels in :func:`zogy`.

    ``2 K − 1`` per axis (K the larger stamp size), odd, at most the FFT grid.
    """
    out = []
    for a, b, f in zip(new_psf_shape, ref_psf_shape, fft_shape, strict=False):
        n = min(2 * max(a, b) - 1, f)
        out.append(n if n % 2 else n - 1)
    return tuple(out)


def _small_grid(box, fft_shape):
    """Grid on which the box kernels are computed (4x the box, rounded; never above ``fft_shape``)."""
    return tuple(min(fast_fft_size(4 * b), f) for b, f in zip(box, fft_shape, strict=False))


def _noise_weights(new_noise_var, ref_noise_var, f_new, f_ref):
    a1 = new_noise_var * f_ref**2  # multiplies |P_r|^2 in S_den
    a2 = ref_noise_var * f_new**2
    total = a1 + a2
    ok = total > 0
    inv = jnp.where(ok, 1 / jnp.where(ok, total, 1), 0)
    return a1 * inv, a2 * inv, total


def _small_grid_kernels(pn, pr, alpha_new, alpha_ref, *, box, small):
    """Real-space box kernels (w_new, w_ref, P_D, g_new, g_ref), their tails, small-grid weights.

    ``pn``, ``pr``: (stamp, low part) pairs.
    """
    weights = zogy_weights(precise_otf(pn[0], small, pn[1]), precise_otf(pr[0], small, pr[1]), alpha_new, alpha_ref)
    conj_pd = jnp.conj(weights.psf_d)
    spectra = jnp.stack([weights.w_new, weights.w_ref, weights.psf_d, conj_pd * weights.w_new,
                         conj_pd * weights.w_ref])  # fmt: skip
    real = jnp.fft.irfft2(spectra, s=small)
    boxes = jax.vmap(lambda k: crop_center_origin(k, box))(real)
    outside_mask = np.ones(small, bool)  # static: True outside the origin-centred box
    outside_mask[np.ix_(*((np.arange(b) - b // 2) % n for b, n in zip(box, small, strict=False)))] = False
    total = jnp.sum(real**2, axis=(1, 2))
    outside = jnp.sum(jnp.where(outside_mask, real**2, 0), axis=(1, 2))  # no 1 - inside/total cancellation
    ok = total > 0
    tails = jnp.where(ok, outside / jnp.where(ok, total, 1), 0)
    return boxes, jnp.max(tails), weights


@functools.partial(jax.jit, static_argnames=("box", "small"))
def _kernel_tail(new_psf, ref_psf, new_lo, ref_lo, new_noise_var, ref_noise_var, f_new, f_ref, *, box, small):
    alpha_new, alpha_ref, _ = _noise_weights(new_noise_var, ref_noise_var, f_new, f_ref)
    return _small_grid_kernels((new_psf, new_lo), (ref_psf, ref_lo), alpha_new, alpha_ref, box=box, small=small)[1]


def choose_kernel_mode(
    new_psf: Float[ArrayLike, "... Kh Kw"],
    ref_psf: Float[ArrayLike, "... Lh Lw"],
    *,
    new_noise_var: Float[ArrayLike, "..."],
    ref_noise_var: Float[ArrayLike, "..."],
    f_new: Float[ArrayLike, ""] = 1.0,
    f_ref: Float[ArrayLike, ""] = 1.0,
    fft_shape: tuple[int, int],
    new_psf_lo: Float[ArrayLike, "... Kh Kw"] | None = None,
    ref_psf_lo: Float[ArrayLike, "... Lh Lw"] | None = None,
) -> str:
    """Return the kernel path ``"box"`` or ``"full"`` that ``kernel_mode="auto"`` of :func:`zogy` takes.

    For concrete (not traced) PSFs, on the host, so that a caller that jits :func:`zogy` itself
    (e.g. :func:`jaxdiff.core.zogy_grid.zogy_cells`) can pass the answer as the static
    ``kernel_mode`` and compile one kernel path instead of a ``lax.cond`` over both.  Stacks of
    PSFs (leading axes, with noise levels of those leading shapes) give ``"full"`` when any pair
    needs the full grid.

    Parameters
    ----------
    new_psf, ref_psf
        PSF stamps or stacks of stamps.
    new_noise_var, ref_noise_var
        Scalar noise levels (one per pair of a stack).
    f_new, f_ref
        Flux scalings.
    fft_shape
        The FFT grid :func:`zogy` will use.
    new_psf_lo, ref_psf_lo
        Low parts of float64 stamps in float32 (:func:`psf_low_part`); default zeros.

    Returns
    -------
    str
        ``"full"`` when a kernel's energy outside its box exceeds :data:`KERNEL_TAIL_TOLERANCE`
        or the small kernel grid is the FFT grid itself, else ``"box"``.
    """
    new_psf, ref_psf = jnp.asarray(new_psf), jnp.asarray(ref_psf)
    dtype = new_psf.dtype
    box = kernel_box_shape(new_psf.shape[-2:], ref_psf.shape[-2:], fft_shape)
    small = _small_grid(box, tuple(fft_shape))
    if small == tuple(fft_shape):
        return "full"
    lead = new_psf.shape[:-2]
    new_lo = jnp.zeros_like(new_psf) if new_psf_lo is None else jnp.asarray(new_psf_lo, dtype)
    ref_lo = jnp.zeros_like(ref_psf) if ref_psf_lo is None else jnp.asarray(ref_psf_lo, dtype)
    flat = [a.reshape(-1, *a.shape[len(lead):]) for a in (new_psf, ref_psf, new_lo, ref_lo)]
    noise = [jnp.broadcast_to(jnp.asarray(v, dtype), lead).reshape(-1) for v in (new_noise_var, ref_noise_var)]
    tails = jax.vmap(functools.partial(_kernel_tail, box=box, small=small), in_axes=(0, 0, 0, 0, 0, 0, None, None))(
        *flat, *noise, jnp.asarray(f_new, dtype), jnp.asarray(f_ref, dtype))  # fmt: skip
    return "full" if float(jnp.max(tails)) > KERNEL_TAIL_TOLERANCE else "box"


@functools.partial(jax.jit, static_argnames=("fft_shape", "calculate_score", "pad_mode", "kernel_mode"))
def _zogy_jit(
    new_image, ref_image, new_psf, ref_psf, new_variance, ref_variance, new_noise_var, ref_noise_var,
    f_new, f_ref, sigmas, *, fft_shape, calculate_score, pad_mode, kernel_mode,
):  # fmt: skip
    dtype = new_image.dtype
    pn_norm, pr_norm = new_psf, ref_psf  # (stamp, low part); precise_otf normalises
    new_psf, ref_psf = new_psf[0], ref_psf[0]
    (h, w), (fh, fw) = new_image.shape, fft_shape
    y0, x0 = (fh - h) // 2, (fw - w) // 2
    pads = ((y0, fh - h - y0), (x0, fw - w - x0))
    if pad_mode != "constant":  # static gather indices: much faster than jnp.pad's slicing on CPU
        rows, cols = (np.pad(np.arange(n), p, mode=pad_mode) for n, p in zip((h, w), pads, strict=False))

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

    weights = jnp.asarray(half_spectrum_weights(fw)[None, :], dtype)

    def full_sum(half):
        """Sum of a real function of frequency over the full DFT grid, given the half plane."""
        per_row = jnp.sum(weights * half, axis=-1, dtype=half.dtype)
        return jnp.sum(per_row, axis=-1, dtype=half.dtype)  # two stages: accurate float32 sums

    alpha_new, alpha_ref, a_total = _noise_weights(new_noise_var, ref_noise_var, f_new, f_ref)
    f_d = f_new * f_ref * jax.lax.rsqrt(a_total)  # eq. 15
    scalar_var = new_variance.ndim == 0 and ref_variance.ndim == 0

    box = kernel_box_shape(new_psf.shape, ref_psf.shape, fft_shape)
    small = _small_grid(box, fft_shape)
    boxes, kernel_tail, small_w = _small_grid_kernels(pn_norm, pr_norm, alpha_new, alpha_ref, box=box,
                                                      small=small)  # fmt: skip
    n_small = small[0] * (small[1] // 2 + 1)

    def box_branch(_):
        """Full-size spectra from the compact box kernels (no full-size FFT)."""
        sq = jnp.stack([boxes[0], boxes[1], boxes[3], boxes[4]]) ** 2
        stack = boxes[:3] if scalar_var else jnp.concatenate([boxes[:3], sq])
        spectra = _stamps_to_half_spectra(stack, fft_shape)
        sums = jnp.sum(sq, axis=(1, 2))  # sum_x k(x)^2 of the kernels as applied
        sq_hat = None if scalar_var else spectra[3:]
        undetermined = jnp.sum(small_w.undetermined) * (fh * (fw // 2 + 1)) / n_small
        return spectra[0], spectra[1], spectra[2], sq_hat, sums, undetermined.astype(jnp.int32)

    def full_branch(_):
        """Kernels on the full FFT grid (for PSF pairs whose kernels are not compact)."""
        if small == fft_shape:
            wf = small_w
        else:
            wf = zogy_weights(precise_otf(pn_norm[0], fft_shape, pn_norm[1]), precise_otf(pr_norm[0], fft_shape, pr_norm[1]), alpha_new,
                              alpha_ref)  # fmt: skip
        conj_pd = jnp.conj(wf.psf_d)
        kern = jnp.stack([wf.w_new, wf.w_ref, conj_pd * wf.w_new, conj_pd * wf.w_ref])
        sums = full_sum(kern.real**2 + kern.imag**2) / (fh * fw)  # Parseval
        sq_hat = None if scalar_var else jnp.fft.rfft2(inv(kern) ** 2)
        undetermined = full_sum(wf.undetermined.astype(jnp.int32))
        return wf.w_new, wf.w_ref, wf.psf_d, sq_hat, sums, undetermined

    if kernel_mode == "box" and small != fft_shape:
        branch = box_branch(None)
    elif kernel_mode == "full" or small == fft_shape:
        branch = full_branch(None)
    else:
        branch = jax.lax.cond(kernel_tail > KERNEL_TAIL_TOLERANCE, full_branch, box_branch, None)
    w_new, w_ref, psf_d_hat, sq_hat, sums, n_degenerate = branch
    if kernel_mode == "auto" and small != fft_shape:
        full_grid = kernel_tail > KERNEL_TAIL_TOLERANCE
    else:
        full_grid = jnp.asarray(small == fft_shape or kernel_mode == "full")

    n_hat = jnp.fft.rfft2(pad(new_image, 0)) / f_new
    r_hat = jnp.fft.rfft2(pad(ref_image, 0)) / f_ref
    d_hat = w_new * n_hat - w_ref * r_hat  # eq. 13 over eq. 15
    difference = crop(inv(d_hat))

    if not scalar_var:
        v1_hat = jnp.fft.rfft2(pad(jnp.broadcast_to(new_variance, (h, w)), new_noise_var)) / f_new**2
        v2_hat = jnp.fft.rfft2(pad(jnp.broadcast_to(ref_variance, (h, w)), ref_noise_var)) / f_ref**2

    def propagate(i):
        """k_i^2 ⊛ V_new / F_n^2 + k_j^2 ⊛ V_ref / F_r^2 for the kernel pair (i, j = i + 1)."""
        if scalar_var:
            var = sums[i] * new_variance / f_new**2 + sums[i + 1] * ref_variance / f_ref**2
            return jnp.full((h, w), var, dtype)
        return crop(inv(sq_hat[i] * v1_hat + sq_hat[i + 1] * v2_hat))

    difference_variance = propagate(0)
    # P_D and P_S stamps from their spectra on a grid of about 64 stamp sizes (the full grid when
    # that is not smaller): P_D need not be compact for truncated stamps, and this grid keeps the
    # aliased tails at the level of the full-grid result without full-size inverse FFTs.
    stamp_grid = tuple(min(fast_fft_size(64 * max(a, b)), f)
                       for a, b, f in zip(new_psf.shape, ref_psf.shape, fft_shape, strict=False))  # fmt: skip
    if kernel_mode == "box" and small != fft_shape:  # P_D is compact (its tail was checked): small grid
        stamp_grid = small
    if stamp_grid == small:
        pd_small = small_w.psf_d
    else:
        pd_small = zogy_weights(precise_otf(pn_norm[0], stamp_grid, pn_norm[1]), precise_otf(pr_norm[0], stamp_grid, pr_norm[1]), alpha_new,
                                alpha_ref).psf_d  # fmt: skip
    mats = [jnp.asarray(m, pd_small.dtype) for m in stamp_idft_matrices(stamp_grid, new_psf.shape)]

    def stamps(*spectra_):  # normalised stamps from half spectra on the small grid
        mm = functools.partial(jnp.matmul, precision=PRECISION)
        out = [mm(mats[0], mm(spec, mats[1])).real for spec in spectra_]
        return [o / jnp.sum(o) for o in out]

    extra = (kernel_tail, full_grid)
    if not calculate_score:
        (difference_psf,) = stamps(pd_small)
        return ZogyResult(difference, difference_variance, difference_psf, f_d, None, None, None, None, None,
                          n_degenerate, *extra)  # fmt: skip

    s_kernel = f_d**2 * jnp.conj(psf_d_hat)  # eq. 17: S = F_D^2 D ⊛ reversed P_D (D scaled to F_D = 1)
    if sigmas is None:
        score = crop(inv(s_kernel * d_hat))
        astrometric_variance = jnp.zeros((h, w), dtype)
    else:
        s_new, s_ref = inv(s_kernel * w_new * n_hat), inv(s_kernel * w_ref * r_hat)
        score = crop(s_new - s_ref)

        def grad2(a, axis):  # squared central difference on the periodic FFT grid
            return ((jnp.roll(a, -1, axis) - jnp.roll(a, 1, axis)) / 2) ** 2

        sxn, syn, sxr, syr = sigmas
        new_term = sxn**2 * grad2(s_new, 1) + syn**2 * grad2(s_new, 0)  # x = columns (axis 1), y = rows
        ref_term = sxr**2 * grad2(s_ref, 1) + syr**2 * grad2(s_ref, 0)
        astrometric_variance = crop(new_term + ref_term)  # eqs. 30-33
    score_variance = f_d**4 * propagate(2)
    ps_small = jnp.abs(pd_small) ** 2
    difference_psf, score_psf = stamps(pd_small, ps_small.astype(pd_small.dtype))  # eqs. 14, 17
    total = score_variance + astrometric_variance
    ok = total > tiny(dtype)
    score_corr = jnp.where(ok, score / jnp.sqrt(jnp.where(ok, total, 1)), 0)
    return ZogyResult(difference, difference_variance, difference_psf, f_d, score, score_variance,
                      astrometric_variance, score_corr, score_psf, n_degenerate, *extra)  # fmt: skip
