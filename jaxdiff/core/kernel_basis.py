"""Kernel bases for Alard-Lupton PSF matching, and the delta-function regularisation matrix.

Gaussian-times-polynomial (Alard & Lupton 1998), delta-function and PCA bases (ip_diffim
``makeKernelBasisList``, ``makeAlardLuptonBasisList``, ``makeDeltaFunctionBasisList``, ``KernelPca``)
and the regularisation of delta-function kernels (ip_diffim ``makeRegularizationMatrix``; Becker et
al. 2012).

The model of Alard & Lupton (1998) writes the matching kernel as a linear combination of fixed basis
images, ``K = sum_i a_i B_i``.  Bases are small (at most a few hundred 35 x 35 images) and depend only on
static numbers (PSF widths, kernel size), so everything here runs on the host in float64 numpy, outside
``jit``; callers cast the result (``jnp.asarray(basis, dtype)``) and pass it to the jitted fit.

Conventions (afw ``Kernel`` images): a kernel of width ``w = 2 * half_width + 1`` is stored as an array
``[row, col]`` = ``[v + half_width, u + half_width]``, where ``(u, v)`` is the (x, y) offset from the
centre pixel; x runs along columns.

Basis order follows LSST ``makeAlardLuptonBasisList``: Gaussian by Gaussian, and for each Gaussian the
terms of afw's ``PolynomialFunction2``, ``1, x, y, x^2, x y, y^2, x^3, ...`` (total degree, then
decreasing power of x).

Everything here takes plain keyword arguments and knows nothing of the task shell's configs; the
adapters that read LSST ``PsfMatchConfig`` fields live in :mod:`jaxdiff.tasks._basis_config`.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Float

__all__ = [
    "BASIS_MODES",
    "FLT_EPSILON",
    "LAMBDA_TYPES",
    "REGULARIZATION_TYPES",
    "SIGMA_TO_FWHM",
    "BasisParams",
    "SeparableBasis",
    "make_basis",
    "regularization_strength",
    "alard_lupton_basis",
    "alard_lupton_basis_params",
    "alard_lupton_n_terms",
    "alard_lupton_separable",
    "delta_function_basis",
    "pca_kernel_basis",
    "regularization_matrix",
    "renormalize_kernel_list",
]

#: FWHM / sigma of a Gaussian, ``2 sqrt(2 ln 2)`` (as ip_diffim's ``sigma2fwhm``).
SIGMA_TO_FWHM = float(2.0 * np.sqrt(2.0 * np.log(2.0)))

#: ``std::numeric_limits<float>::epsilon()``: kernels whose sum is at most this are treated as
#: sum-zero by :func:`renormalize_kernel_list` (LSST uses the float limit on double images).
FLT_EPSILON = float(np.finfo(np.float32).eps)

#: Values of :attr:`BasisParams.mode`.
BASIS_MODES = ("config", "convolution", "deconvolution")

#: Accepted ``kind`` values of :func:`regularization_matrix` (LSST ``regularizationType``).
REGULARIZATION_TYPES = ("centralDifference", "forwardDifference")

#: LSST ``lambdaType`` values (see :func:`regularization_lambda`).
LAMBDA_TYPES = ("absolute", "relative", "minimizeBiasedRisk", "minimizeUnbiasedRisk")


class BasisParams(NamedTuple):
    """Static description of an Alard-Lupton basis (hashable: usable as a static ``jit`` argument).

    Attributes
    ----------
    sigmas : tuple of float
        Gaussian sigmas in pixels, in basis order.
    degrees : tuple of int
        Polynomial degree of each Gaussian.
    kernel_size : int
        Width (= height) of the basis images; odd.
    mode : {"config", "convolution", "deconvolution"}
        How the sigmas were chosen (LSST metadata ``ALBasisMode``).
    """

    sigmas: tuple[float, ...]
    degrees: tuple[int, ...]
    kernel_size: int
    mode: str

    @property
    def half_width(self) -> int:
        """``kernel_size // 2``."""
        return self.kernel_size // 2

    @property
    def n_basis(self) -> int:
        """Number of basis images, ``sum_g (d_g + 1)(d_g + 2) / 2``."""
        return alard_lupton_n_terms(self.degrees)


class SeparableBasis(NamedTuple):
    """An Alard-Lupton basis as separable raw kernels plus a linear renormalisation.

    ``basis[k] = sum_r transform[k, r] * np.outer(fy[r], fx[r])`` reproduces
    :func:`alard_lupton_basis` to rounding (~1e-16).

    Attributes
    ----------
    fx : ndarray, shape (n_raw, w)
        x (column) factor of raw kernel r: normalised 1-D Gaussian times ``x**p``.
    fy : ndarray, shape (n_raw, w)
        y (row) factor of raw kernel r: normalised 1-D Gaussian times ``y**q``.
    transform : ndarray, shape (n_basis, n_raw)
        The renormalisation of :func:`renormalize_kernel_list` as a matrix (``n_basis == n_raw``);
        row 0 has one non-zero entry, every other row at most two (its own column and column 0).
    """

    fx: Float[np.ndarray, "R K"]
    fy: Float[np.ndarray, "R K"]
    transform: Float[np.ndarray, "B R"]


# ---------------------------------------------------------------------------------------------------
# Basis parameters (ip_diffim generateAlardLuptonBasisList)
# ---------------------------------------------------------------------------------------------------


def alard_lupton_n_terms(degrees: Sequence[int]) -> int:
    """Return the number of Alard-Lupton basis images for polynomial ``degrees``: ``sum (d + 1)(d + 2) / 2``.

    Examples
    --------
    >>> alard_lupton_n_terms((4, 2, 2))
    27
    """
    return sum((int(d) + 1) * (int(d) + 2) // 2 for d in _check_degrees(degrees))


def _scaled_kernel_size(sigma_last, scaling, size_min, size_max):
    """``int(scaling * sigma_last)``, made odd, clamped to ``[size_min, size_max]``."""
    size = int(scaling * sigma_last)
    if size % 2 == 0:
        size += 1
    return min(int(size_max), max(size, int(size_min)))


def _sigma_progression(sigma_k, n_gauss, beta, min_sig, *, single_special_case):
    """Sigmas ``[sigma_k / beta, sigma_k]`` (if ``sigma_k / beta > min_sig``) or ``[sigma_k]``, then x beta."""
    if single_special_case and n_gauss == 1:
        sigmas = [sigma_k]
    elif sigma_k / beta > min_sig:
        sigmas = [sigma_k / beta, sigma_k]
    else:
        sigmas = [sigma_k]
    for _ in range(len(sigmas), n_gauss):
        sigmas.append(sigmas[-1] * beta)
    return sigmas


def alard_lupton_basis_params(
    *,
    target_fwhm: float | None = None,
    reference_fwhm: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
    basis_sigma_gauss: Sequence[float] | None = None,
    n_gauss: int = 3,
    deg_gauss: Sequence[int] = (4, 2, 2),
    sig_gauss: Sequence[float] = (0.7, 1.5, 3.0),
    gauss_beta: float = 2.0,
    min_sig: float = 0.7,
    n_gauss_deconv: int = 3,
    deg_gauss_deconv: int = 3,
    min_sig_deconv: float = 0.4,
    kernel_size: int = 21,
    scale_by_fwhm: bool = True,
    kernel_size_fwhm_scaling: float = 6.0,
    kernel_size_min: int = 21,
    kernel_size_max: int = 35,
) -> BasisParams:
    r"""Compute the Gaussian sigmas, degrees and kernel size of an Alard-Lupton basis.

    ip_diffim ``generateAlardLuptonBasisList``.

    The "target" is the image that gets convolved (the template) and the "reference" the image it is
    matched to (the science image).  With ``s = 2 sqrt(2 ln 2)``, ``σ_t = target_fwhm / s`` and
    ``σ_r = reference_fwhm / s``:

    * **config** — either FWHM is None, ``scale_by_fwhm`` is False, or ``σ_t == σ_r`` exactly: sigmas =
      ``basis_sigma_gauss`` (default ``sig_gauss``), degrees = ``basis_deg_gauss`` (default
      ``deg_gauss``), size = ``kernel_size`` (not clamped).
    * **convolution** (``σ_r > σ_t``): ``σ_K = max(sqrt(σ_r² − σ_t²), min_sig)``; sigmas
      ``[σ_K]`` if ``n_gauss == 1``, else ``[σ_K/β, σ_K]`` if ``σ_K/β > min_sig`` else ``[σ_K]``,
      continued by factors β = ``gauss_beta`` up to ``n_gauss`` entries; degrees as in config mode.
      Size ``int(kernel_size_fwhm_scaling · σ_last)``, made odd (+1), clamped to
      ``[kernel_size_min, kernel_size_max]``.
    * **deconvolution** (``σ_t > σ_r``): the same progression (without the single-Gaussian case) from
      ``σ_K = max(sqrt(σ_t² − σ_r²), min_sig_deconv)`` with ``n_gauss_deconv`` entries, size from its
      last sigma; then, with its first three sigmas ``s0, s1, s2``, the sigmas are replaced by
      ``σ_{n,j} = sqrt((n − j) s1² + j s2² − (n + 1) s0²)`` for ``n = 1, 2``, ``j = 0 .. n−1``
      (Ulmer 2010, eq. 40), sorted ascending, each with degree ``deg_gauss_deconv``.

    Parameters
    ----------
    target_fwhm, reference_fwhm : float or None, keyword-only
        PSF FWHMs in pixels of the image to convolve and of the image to match.
    basis_deg_gauss : sequence of int, optional
        Degrees overriding ``deg_gauss`` (config and convolution modes).
    basis_sigma_gauss : sequence of float, optional
        Sigmas overriding ``sig_gauss`` (config mode only; the scaled modes compute their own).
    n_gauss, deg_gauss, sig_gauss, gauss_beta, min_sig : keyword-only
        ``PsfMatchConfigAL`` fields ``alardNGauss``, ``alardDegGauss``, ``alardSigGauss``,
        ``alardGaussBeta``, ``alardMinSig`` (same defaults).
    n_gauss_deconv, deg_gauss_deconv, min_sig_deconv : keyword-only
        ``alardNGaussDeconv``, ``alardDegGaussDeconv``, ``alardMinSigDeconv``.
    kernel_size, scale_by_fwhm, kernel_size_fwhm_scaling, kernel_size_min, kernel_size_max : keyword-only
        ``PsfMatchConfig`` fields ``kernelSize``, ``scaleByFwhm``, ``kernelSizeFwhmScaling``,
        ``kernelSizeMin``, ``kernelSizeMax``.

    Returns
    -------
    BasisParams
        ``kernel_size`` is the width of the basis that gets built, ``2 * (size // 2) + 1``; this equals
        LSST's ``ALKernelSize`` unless an even ``kernel_size_min``/``kernel_size_max`` clamps the size to
        an even number, in which case LSST still builds the ``size + 1`` basis and we report that width.

    Raises
    ------
    ValueError
        If ``len(degrees) != n_gauss`` or ``len(sig_gauss or basis_sigma_gauss) != n_gauss`` (checked in
        every mode, as LSST), if ``kernel_size`` is even (checked even when scaling overrides it), if a
        FWHM is not finite and positive, if ``n_gauss_deconv < 3`` in deconvolution mode (LSST fails
        with an IndexError), or if an eq. 40 radicand is not positive (LSST returns NaN sigmas; this
        happens for ``gauss_beta <= sqrt(2)``).

    References
    ----------
    Alard, C. & Lupton, R. H. 1998, ApJ 503, 325.
    Alard, C. 2000, A&AS 144, 363.
    Ulmer, W. 2010, Inverse Problems 26, 085002, eq. 40 (deconvolution sigmas).

    Examples
    --------
    >>> p = alard_lupton_basis_params(target_fwhm=2.0, reference_fwhm=3.0)
    >>> [round(s, 4) for s in p.sigmas], p.degrees, p.kernel_size, p.mode
    ([0.9496, 1.8991, 3.7983], (4, 2, 2), 23, 'convolution')
    """
    n_gauss = int(n_gauss)
    if n_gauss < 1:
        msg = f"n_gauss must be >= 1, got {n_gauss}"
        raise ValueError(msg)
    degrees = tuple(_check_degrees(deg_gauss if basis_deg_gauss is None else basis_deg_gauss))
    sigmas = tuple(float(s) for s in (sig_gauss if basis_sigma_gauss is None else basis_sigma_gauss))
    if len(degrees) != n_gauss:
        msg = f"len(basis degrees) != n_gauss: {len(degrees)} vs {n_gauss}; give one degree per Gaussian"
        raise ValueError(msg)
    if len(sigmas) != n_gauss:
        msg = f"len(basis sigmas) != n_gauss: {len(sigmas)} vs {n_gauss}; give one sigma per Gaussian"
        raise ValueError(msg)
    kernel_size = int(kernel_size)
    if kernel_size % 2 != 1:
        msg = f"only odd-sized Alard-Lupton bases are allowed, got kernel_size={kernel_size}"
        raise ValueError(msg)

    if target_fwhm is None or reference_fwhm is None or not scale_by_fwhm:
        return BasisParams(sigmas, degrees, kernel_size, "config")
    target_fwhm, reference_fwhm = float(target_fwhm), float(reference_fwhm)
    for name, value in (("target_fwhm", target_fwhm), ("reference_fwhm", reference_fwhm)):
        if not (math.isfinite(value) and value > 0):
            msg = f"{name} must be finite and > 0, got {value}"
            raise ValueError(msg)
    sigma_t = target_fwhm / SIGMA_TO_FWHM
    sigma_r = reference_fwhm / SIGMA_TO_FWHM
    beta = float(gauss_beta)

    if sigma_t == sigma_r:
        return BasisParams(sigmas, degrees, kernel_size, "config")

    if sigma_r > sigma_t:
        sigma_k = max(float(np.sqrt(sigma_r**2 - sigma_t**2)), float(min_sig))
        new_sigmas = _sigma_progression(sigma_k, n_gauss, beta, float(min_sig), single_special_case=True)
        size = _scaled_kernel_size(new_sigmas[-1], kernel_size_fwhm_scaling, kernel_size_min, kernel_size_max)
        return BasisParams(tuple(new_sigmas), degrees, 2 * (size // 2) + 1, "convolution")

    n_deconv = int(n_gauss_deconv)
    if n_deconv < 3:
        msg = (
            f"deconvolution bases need n_gauss_deconv >= 3 (Ulmer 2010 eq. 40 uses three sigmas), "
            f"got {n_deconv}"
        )
        raise ValueError(msg)
    min_sig_deconv = float(min_sig_deconv)
    sigma_k = max(float(np.sqrt(sigma_t**2 - sigma_r**2)), min_sig_deconv)
    progression = _sigma_progression(sigma_k, n_deconv, beta, min_sig_deconv, single_special_case=False)
    size = _scaled_kernel_size(progression[-1], kernel_size_fwhm_scaling, kernel_size_min, kernel_size_max)
    s0, s1, s2 = progression[:3]
    new_sigmas = []
    for n in range(1, 3):
        for j in range(n):
            radicand = (n - j) * s1**2 + j * s2**2 - (n + 1) * s0**2
            if not radicand > 0:
                msg = (
                    f"deconvolution sigma (n={n}, j={j}) has radicand {radicand:.6g} <= 0 for sigmas "
                    f"{s0:.6g}, {s1:.6g}, {s2:.6g}; use gauss_beta > sqrt(2) (got {beta})"
                )
                raise ValueError(msg)
            new_sigmas.append(float(np.sqrt(radicand)))
    new_sigmas.sort()
    deg = _check_degrees([deg_gauss_deconv])[0]
    return BasisParams(tuple(new_sigmas), (deg,) * len(new_sigmas), 2 * (size // 2) + 1, "deconvolution")


# ---------------------------------------------------------------------------------------------------
# Basis images
# ---------------------------------------------------------------------------------------------------


def _check_degrees(degrees):
    out = []
    for d in degrees:
        if isinstance(d, bool) or int(d) != d or int(d) < 0:
            msg = f"polynomial degrees must be integers >= 0, got {tuple(degrees)}"
            raise ValueError(msg)
        out.append(int(d))
    return out


def _polynomial_exponents(degree):
    """``(p, q)`` powers of x and y of afw's ``PolynomialFunction2(degree)`` terms, in parameter order."""
    return [(d - k, k) for d in range(degree + 1) for k in range(d + 1)]


def _renormalize(kernels):
    """Renormalised kernels and the matrix ``T`` with ``out = T @ kernels`` (flattened)."""
    n = kernels.shape[0]
    out = np.empty_like(kernels)
    transform = np.zeros((n, n))
    if n == 0:
        return out, transform
    s0 = kernels[0].sum()
    if not (np.isfinite(s0) and s0 != 0):
        msg = f"the first kernel must have a finite non-zero sum to be normalised, got {s0}"
        raise ValueError(msg)
    out[0] = kernels[0] / s0
    transform[0, 0] = 1.0 / s0
    for i in range(1, n):
        image = kernels[i]
        s = image.sum()
        has_sum = abs(s) > FLT_EPSILON
        if has_sum:
            image = image / s - out[0]
        norm = np.sqrt(np.sum(image * image))
        if not (np.isfinite(norm) and norm > 0):
            msg = (
                f"kernel {i} cannot be normalised: its L2 norm (after subtracting the first kernel when "
                f"its sum is non-zero) is {norm}; it is zero, non-finite or a multiple of kernel 0"
            )
            raise ValueError(msg)
        out[i] = image / norm
        if has_sum:
            transform[i, i] = 1.0 / (s * norm)
            transform[i, 0] = -1.0 / (s0 * norm)
        else:
            transform[i, i] = 1.0 / norm
    return out, transform


def renormalize_kernel_list(kernels: Float[np.ndarray, "N Kh Kw"]) -> Float[np.ndarray, "N Kh Kw"]:
    r"""Put all the flux in the first kernel (ip_diffim ``renormalizeKernelList``).

    * ``B_0 = K_0 / ΣK_0`` (sum 1);
    * for ``i >= 1``, with ``s_i = ΣK_i``: ``B_i = K_i / s_i − B_0`` if ``|s_i| > FLT_EPSILON``
      (about 1.19e-7), else ``B_i = K_i``; then ``B_i ← B_i / ‖B_i‖₂``.

    Afterwards ``ΣB_0 = 1``, ``ΣB_i = 0`` and ``ΣB_i² = 1`` for ``i >= 1``, so the kernel sum of
    ``Σ a_i B_i`` is ``a_0`` (Alard 2000 flux conservation).

    Parameters
    ----------
    kernels : array_like, shape (N, Kh, Kw)
        Kernel images (any normalisation); ``N`` may be 0.

    Returns
    -------
    ndarray, shape (N, Kh, Kw), float64

    Raises
    ------
    ValueError
        If ``kernels`` is not 3-D, if the first kernel sums to 0 (LSST: "cannot normalise"), or if a
        later kernel has zero norm after the subtraction (LSST would produce NaN or inf).

    References
    ----------
    Alard, C. 2000, A&AS 144, 363 (kernel-sum conservation with a spatially constant first term).

    Examples
    --------
    >>> b = renormalize_kernel_list(np.array([[[0.0, 2.0, 0.0]], [[1.0, 1.0, 1.0]]]))
    >>> np.round(b, 6).tolist()
    [[[0.0, 1.0, 0.0]], [[0.408248, -0.816497, 0.408248]]]
    """
    kernels = np.array(kernels, dtype=np.float64)
    if kernels.ndim != 3:
        msg = f"kernels must have shape (N, Kh, Kw), got {kernels.shape}"
        raise ValueError(msg)
    return _renormalize(kernels)[0]


def _alard_lupton_raw(half_width, sigmas, degrees):
    """Separable factors ``(fx, fy)`` of the raw (un-renormalised) Alard-Lupton kernels."""
    if isinstance(half_width, bool) or int(half_width) != half_width or int(half_width) < 1:
        msg = f"half_width must be an integer >= 1, got {half_width!r}"
        raise ValueError(msg)
    half_width = int(half_width)
    sigmas = [float(s) for s in sigmas]
    degrees = _check_degrees(degrees)
    if len(sigmas) != len(degrees):
        msg = f"need one degree per sigma, got {len(sigmas)} sigmas and {len(degrees)} degrees"
        raise ValueError(msg)
    if len(sigmas) == 0:
        msg = "need at least one Gaussian"
        raise ValueError(msg)
    if not all(math.isfinite(s) and s > 0 for s in sigmas):
        msg = f"Gaussian sigmas must be finite and > 0, got {tuple(sigmas)}"
        raise ValueError(msg)
    offsets = np.arange(-half_width, half_width + 1, dtype=np.float64)
    t = offsets / half_width  # polynomial coordinate in [-1, 1]
    fx, fy = [], []
    for sigma, degree in zip(sigmas, degrees, strict=True):
        g = np.exp(-(offsets**2) / (2.0 * sigma**2))
        g = g / g.sum()  # outer(g, g) is the 2-D Gaussian normalised to sum 1
        for p, q in _polynomial_exponents(degree):
            fx.append(g * t**p)
            fy.append(g * t**q)
    return np.stack(fx), np.stack(fy)


def alard_lupton_separable(
    half_width: int, sigmas: Sequence[float], degrees: Sequence[int]
) -> SeparableBasis:
    r"""Return the Alard-Lupton basis as separable raw kernels and a linear renormalisation matrix.

    Raw kernel ``r`` (Gaussian ``g``, polynomial term ``x^p y^q``) is ``np.outer(fy[r], fx[r])`` with
    ``fx[r] = G_g(u) x^p``, ``fy[r] = G_g(v) y^q``, ``G_g`` the 1-D Gaussian of sigma ``σ_g`` normalised
    to sum 1 over ``u = −half_width .. half_width``, and ``x = u / half_width``, ``y = v / half_width``.
    The renormalisation of :func:`renormalize_kernel_list` is linear in the raw kernels:
    ``B_0 = R_0 / s_0`` and, for ``i >= 1``, ``B_i = (R_i / s_i − R_0 / s_0) / n_i`` if
    ``|s_i| > FLT_EPSILON`` else ``R_i / n_i`` (``s`` the sums, ``n_i`` the L2 norms before the final
    scaling), so ``basis = transform @ raw``.

    This lets a design matrix be built from 1-D passes: correlate an image with ``fx[r]`` along x and
    ``fy[r]`` along y (cost ``2 w`` per pixel instead of ``w²``), then mix with ``transform``.

    Parameters
    ----------
    half_width : int
        Kernel half-width (>= 1); images are ``w = 2 * half_width + 1`` wide.
    sigmas : sequence of float
        Gaussian sigmas in pixels (> 0).
    degrees : sequence of int
        Polynomial degree per Gaussian (>= 0).

    Returns
    -------
    SeparableBasis
        ``fx``, ``fy`` of shape ``(n_raw, w)`` and ``transform`` of shape ``(n_raw, n_raw)``, float64.

    Raises
    ------
    ValueError
        For ``half_width < 1``, mismatched lengths, non-positive sigmas or negative degrees.

    See Also
    --------
    alard_lupton_basis : the same basis as images.

    Examples
    --------
    >>> sep = alard_lupton_separable(3, [1.0], [1])
    >>> sep.fx.shape, sep.transform.shape
    ((3, 7), (3, 3))
    >>> basis = np.einsum("kr,rv,ru->kvu", sep.transform, sep.fy, sep.fx)
    >>> bool(np.allclose(basis, alard_lupton_basis(3, [1.0], [1]), rtol=0, atol=1e-15))
    True
    """
    fx, fy = _alard_lupton_raw(half_width, sigmas, degrees)
    raw = fy[:, :, None] * fx[:, None, :]
    transform = _renormalize(raw)[1]
    return SeparableBasis(fx, fy, transform)


def alard_lupton_basis(
    half_width: int, sigmas: Sequence[float], degrees: Sequence[int]
) -> Float[np.ndarray, "B K K"]:
    r"""Alard-Lupton basis images (ip_diffim ``makeAlardLuptonBasisList``).

    For each Gaussian ``g`` (in order) and each term ``x^p y^q`` of a degree-``d_g`` polynomial in afw
    order (``1, x, y, x², xy, y², ...``), the raw kernel is
    ``G_g(u, v) · x^p y^q`` with ``G_g ∝ exp(−(u² + v²) / (2 σ_g²))`` normalised to sum 1 on the
    ``w × w`` grid and ``(x, y) = (u, v) / half_width`` in ``[−1, 1]``; the list is then passed through
    :func:`renormalize_kernel_list`.  ``ΣB_0 = 1``; every other image sums to 0 and has unit L2 norm
    (terms odd in x or y sum to ~1e-17 and are only L2-normalised).

    Parameters
    ----------
    half_width : int
        Kernel half-width (>= 1); images are ``w = 2 * half_width + 1`` wide.
    sigmas : sequence of float
        Gaussian sigmas in pixels (> 0).
    degrees : sequence of int
        Polynomial degree per Gaussian (>= 0).

    Returns
    -------
    ndarray, shape (sum_g (d_g + 1)(d_g + 2) / 2, w, w), float64
        Indexed ``[k, row, col]`` with ``row = v + half_width``, ``col = u + half_width``.

    Raises
    ------
    ValueError
        For ``half_width < 1``, mismatched lengths, non-positive sigmas or negative degrees.

    Notes
    -----
    Computed as ``transform @ raw`` from :func:`alard_lupton_separable`'s factors with the same sums and
    norms that :func:`renormalize_kernel_list` computes, so the two agree to ~1e-16.  Host numpy, float64;
    cast with ``jnp.asarray(basis, dtype)`` for the jitted fit.

    References
    ----------
    Alard, C. & Lupton, R. H. 1998, ApJ 503, 325 (Gaussian-times-polynomial basis).
    Alard, C. 2000, A&AS 144, 363 (flux-conserving renormalisation).

    Examples
    --------
    >>> b = alard_lupton_basis(10, (0.7, 1.5, 3.0), (4, 2, 2))
    >>> b.shape, round(float(b[0].sum()), 12), round(float(np.sum(b[5] ** 2)), 12)
    ((27, 21, 21), 1.0, 1.0)
    """
    fx, fy = _alard_lupton_raw(half_width, sigmas, degrees)
    raw = fy[:, :, None] * fx[:, None, :]
    return _renormalize(raw)[0]


def delta_function_basis(size: int) -> Float[np.ndarray, "B K K"]:
    """Delta-function basis (ip_diffim ``makeDeltaFunctionBasisList``).

    Parameters
    ----------
    size : int
        Kernel width and height (>= 1).

    Returns
    -------
    ndarray, shape (size * size, size, size), float64
        Kernel ``n = row * size + col`` is 1 at ``[row, col]`` and 0 elsewhere (row-major order).

    Examples
    --------
    >>> b = delta_function_basis(3)
    >>> b.shape, b[5].tolist()
    ((9, 3, 3), [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    """
    if isinstance(size, bool) or int(size) != size or int(size) < 1:
        msg = f"size must be an integer >= 1, got {size!r}"
        raise ValueError(msg)
    size = int(size)
    return np.eye(size * size).reshape(size * size, size, size)


def make_basis(
    basis_set: str,
    *,
    kernel_size: int,
    target_fwhm: float | None = None,
    reference_fwhm: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
    basis_sigma_gauss: Sequence[float] | None = None,
    **al_options,
) -> tuple[Float[np.ndarray, "B K K"], BasisParams | None]:
    """Build the kernel basis of ``basis_set`` (the logic of ip_diffim ``makeKernelBasisList``).

    Parameters
    ----------
    basis_set : {"alard-lupton", "delta-function"}
        LSST ``kernelBasisSet``.
    kernel_size : int, keyword-only
        LSST ``kernelSize``: the delta-function kernel size, and the Alard-Lupton size unless
        scaled by the FWHMs (see :func:`alard_lupton_basis_params`).
    target_fwhm, reference_fwhm : float, optional, keyword-only
        PSF FWHMs (pixels) of the image to convolve (template) and of the image to match (science);
        used by the Alard-Lupton basis only.
    basis_deg_gauss, basis_sigma_gauss : sequence, optional, keyword-only
        Overrides for the Alard-Lupton degrees and (config-mode) sigmas.
    **al_options
        The other keyword arguments of :func:`alard_lupton_basis_params` (``n_gauss``,
        ``deg_gauss``, ``sig_gauss``, ``gauss_beta``, ``min_sig``, ``n_gauss_deconv``,
        ``deg_gauss_deconv``, ``min_sig_deconv``, ``scale_by_fwhm``, ``kernel_size_fwhm_scaling``,
        ``kernel_size_min``, ``kernel_size_max``); ignored for delta functions.

    Returns
    -------
    basis : ndarray, shape (B, K, K), float64
    params : BasisParams or None
        The Alard-Lupton parameters (what LSST writes as ``ALBasis*`` metadata); None for delta functions.

    Raises
    ------
    ValueError
        For an unknown ``basis_set`` or invalid Alard-Lupton parameters.

    Examples
    --------
    >>> basis, params = make_basis("alard-lupton", kernel_size=21)
    >>> basis.shape, params.mode
    ((27, 21, 21), 'config')
    >>> make_basis("delta-function", kernel_size=5)[0].shape
    (25, 5, 5)
    """
    if basis_set == "alard-lupton":
        params = alard_lupton_basis_params(
            target_fwhm=target_fwhm,
            reference_fwhm=reference_fwhm,
            basis_deg_gauss=basis_deg_gauss,
            basis_sigma_gauss=basis_sigma_gauss,
            kernel_size=kernel_size,
            **al_options,
        )
        return alard_lupton_basis(params.half_width, params.sigmas, params.degrees), params
    if basis_set == "delta-function":
        return delta_function_basis(kernel_size), None
    msg = f"cannot generate a {basis_set!r} basis; kernelBasisSet must be 'alard-lupton' or 'delta-function'"
    raise ValueError(msg)


# ---------------------------------------------------------------------------------------------------
# Regularisation of delta-function kernels (Becker et al. 2012)
# ---------------------------------------------------------------------------------------------------


def _float32(value):
    """LSST stores stencil coefficients and the border penalty in C++ ``float``: round like it does."""
    return np.asarray(value, dtype=np.float64).astype(np.float32).astype(np.float64)


#: Central (Laplacian) stencils indexed ``[dy + 1, dx + 1]`` (symmetric), float32-rounded as LSST.
_CENTRAL_STENCILS = {
    5: _float32([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),
    9: _float32(np.array([[1.0, 4.0, 1.0], [4.0, -20.0, 4.0], [1.0, 4.0, 1.0]]) / 6.0),
}

#: Forward-difference coefficients by order (order 0 is the border penalty).
_FORWARD_COEFFS = {1: (-1.0, 1.0), 2: (-1.0, 2.0, -1.0), 3: (-1.0, 3.0, -3.0, 1.0)}


def _check_regularization_args(size, kind, stencil, orders, border_penalty):
    if isinstance(size, bool) or int(size) != size or int(size) < 1:
        msg = f"size must be an integer >= 1, got {size!r}"
        raise ValueError(msg)
    if kind not in REGULARIZATION_TYPES:
        msg = f"regularization kind must be one of {REGULARIZATION_TYPES}, got {kind!r}"
        raise ValueError(msg)
    if isinstance(stencil, bool) or stencil not in (5, 9):
        msg = f"only 5- or 9-point Laplacian stencils are allowed, got stencil={stencil!r}"
        raise ValueError(msg)
    orders = tuple(orders)
    for order in orders:
        if isinstance(order, bool) or order not in (1, 2, 3):
            msg = f"forward-difference orders must each be 1, 2 or 3, got {orders}"
            raise ValueError(msg)
    border_penalty = float(border_penalty)
    if not (math.isfinite(border_penalty) and border_penalty >= 0):
        msg = f"border_penalty must be finite and >= 0, got {border_penalty}"
        raise ValueError(msg)
    return int(size), tuple(int(o) for o in orders), border_penalty


def regularization_matrix(
    size: int,
    *,
    kind: str = "centralDifference",
    stencil: int = 9,
    orders: Sequence[int] = (1, 2),
    border_penalty: float = 3.0,
    fit_background: bool = False,
) -> Float[np.ndarray, "M M"]:
    r"""Regularisation matrix ``H = Bᵀ B`` of a delta-function kernel (Becker et al. 2012).

    ip_diffim ``makeRegularizationMatrix``.

    The kernel pixel ``(x, y)`` of a ``size × size`` kernel is unknown ``i = y · size + x`` (the order of
    :func:`delta_function_basis`); ``fit_background`` appends one background unknown whose row and
    column of ``H`` stay zero.  ``B`` is a finite-difference operator:

    * ``"centralDifference"``: row ``i`` of an interior pixel holds the Laplacian stencil centred on
      ``i`` — 5-point ``[[0, 1, 0], [1, −4, 1], [0, 1, 0]]`` or 9-point
      ``[[1, 4, 1], [4, −20, 4], [1, 4, 1]] / 6``; a pixel on the kernel border has
      ``B[i, i] = border_penalty`` only.
    * ``"forwardDifference"``: for each order ``o`` in ``orders`` an x and a y operator with forward
      coefficients ``(−1, 1)``, ``(−1, 2, −1)``, ``(−1, 3, −3, 1)`` for orders 1, 2, 3 starting at the
      pixel; near the right (top) edge the order is tapered to the distance to the edge, and order 0
      puts ``border_penalty`` on the diagonal.  ``B`` is the **sum** of all these operators (over
      orders and both axes), then ``H = BᵀB``, as LSST does.

    Parameters
    ----------
    size : int
        Kernel width and height.
    kind : {"centralDifference", "forwardDifference"}, keyword-only
        LSST ``regularizationType``.
    stencil : {5, 9}, keyword-only
        LSST ``centralRegularizationStencil`` (validated even for ``"forwardDifference"``).
    orders : sequence of int in 1..3, keyword-only
        LSST ``forwardRegularizationOrders`` (validated even for ``"centralDifference"``); empty gives
        ``H = 0`` for ``"forwardDifference"``, as LSST.
    border_penalty : float >= 0, keyword-only
        LSST ``regularizationBorderPenalty``.
    fit_background : bool, keyword-only
        Append a background unknown (LSST ``fitForBackground``).

    Returns
    -------
    ndarray, shape (size² + nbg, size² + nbg), float64
        Symmetric positive semi-definite; ``nbg = 1 if fit_background else 0``.

    Raises
    ------
    ValueError
        For an unknown ``kind``, a stencil other than 5 or 9, an order outside 1..3, a negative or
        non-finite ``border_penalty``, or ``size < 1``.

    Notes
    -----
    LSST holds the stencil coefficients and the border penalty in single precision (C++ ``float``) before
    building the double-precision ``B``; we round them the same way, so the 9-point coefficients are
    ``float32(1/6)`` etc. and the stencil sums to ~1.8e-7 rather than 0.  The forward operators are
    tapered only at the right and top edges, also as in LSST.

    Host numpy: build ``H`` once per kernel size and cast it for the jitted solve.

    References
    ----------
    Becker, A. C. et al. 2012, MNRAS 425, 1341 (regularised delta-function kernels).

    Examples
    --------
    >>> h = regularization_matrix(3, stencil=5, border_penalty=1.0)
    >>> h.shape, float(h[4, 4]), float(h[0, 0])
    ((9, 9), 16.0, 1.0)
    """
    size, orders, border_penalty = _check_regularization_args(size, kind, stencil, orders, border_penalty)
    penalty = float(_float32(border_penalty))
    n_pix = size * size
    n_total = n_pix + (1 if fit_background else 0)
    index = np.arange(n_pix).reshape(size, size)  # [y, x]
    b = np.zeros((n_total, n_total))

    if kind == "centralDifference":
        coeffs = _CENTRAL_STENCILS[stencil]
        interior = index[1:-1, 1:-1].ravel()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if coeffs[dy + 1, dx + 1] != 0.0:
                    b[interior, interior + dx + dy * size] += coeffs[dy + 1, dx + 1]
        border = np.ones((size, size), dtype=bool)
        border[1:-1, 1:-1] = False
        rows = index[border]
        b[rows, rows] = penalty
    else:
        table = {0: (penalty,), **_FORWARD_COEFFS}
        distance = size - 1 - np.arange(size)  # distance to the right (top) edge
        for order in orders:
            use = np.minimum(distance, order)
            for u in range(order + 1):
                # x operator: pixels in columns with tapered order u; y operator: rows with order u.
                for rows, step in ((index[:, use == u].ravel(), 1), (index[use == u, :].ravel(), size)):
                    for j, c in enumerate(table[u]):
                        b[rows, rows + j * step] += c
    return b.T @ b


def regularization_strength(
    normal_matrix: Float[np.ndarray, "N N"],
    regularization: Float[np.ndarray, "N N"],
    *,
    lambda_type: str,
    lambda_value: float = 0.2,
    lambda_scaling: float = 1e-4,
) -> float:
    r"""Regularisation strength λ of the solve ``(M + λ H) a = b`` (LSST ``lambdaType``).

    * ``"absolute"``: ``λ = lambda_value``;
    * ``"relative"``: ``λ = lambda_scaling · trace(M) / trace(H)``.

    Parameters
    ----------
    normal_matrix : array_like, shape (n, n)
        ``M``, the normal matrix of the unregularised fit (only its trace is used).
    regularization : array_like, shape (n, n)
        ``H``, the regularisation matrix (:func:`regularization_matrix`).
    lambda_type : {"absolute", "relative", "minimizeBiasedRisk", "minimizeUnbiasedRisk"}, keyword-only
        LSST ``lambdaType``.
    lambda_value : float, keyword-only
        LSST ``lambdaValue`` (absolute mode).
    lambda_scaling : float, keyword-only
        LSST ``lambdaScaling`` (relative mode).

    Returns
    -------
    float

    Raises
    ------
    NotImplementedError
        For ``"minimizeBiasedRisk"`` and ``"minimizeUnbiasedRisk"``: LSST's risk scan reads
        ``lambdaLogMin/Max/Step`` (or ``lambdaLinMin/Max/Step``), which are not config fields
        (the config has ``lambdaMin/Max/Step``), so these modes fail in LSST too; a scan also needs the
        right-hand side ``b``, which this function does not take.
    ValueError
        For an unknown ``lambda_type``, non-square or mismatched matrices, or ``trace(H) == 0`` in
        relative mode.

    References
    ----------
    Becker, A. C. et al. 2012, MNRAS 425, 1341.

    Examples
    --------
    >>> regularization_strength(np.eye(3) * 4, np.eye(3), lambda_type="relative", lambda_scaling=0.5)
    2.0
    """
    if lambda_type == "absolute":
        return float(lambda_value)
    if lambda_type in ("minimizeBiasedRisk", "minimizeUnbiasedRisk"):
        msg = (
            f"lambdaType={lambda_type!r} is not implemented: ip_diffim's risk scan reads "
            "lambdaLogMin/lambdaLogMax/lambdaLogStep (or lambdaLin*), which are not config fields "
            "(the config has lambdaMin/lambdaMax/lambdaStep), so this mode fails in LSST as well; "
            "use 'absolute' or 'relative'"
        )
        raise NotImplementedError(msg)
    if lambda_type != "relative":
        msg = f"lambdaType must be one of {LAMBDA_TYPES}, got {lambda_type!r}"
        raise ValueError(msg)
    m = np.asarray(normal_matrix, dtype=np.float64)
    h = np.asarray(regularization, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or h.shape != m.shape:
        msg = f"M and H must be square matrices of the same shape, got {m.shape} and {h.shape}"
        raise ValueError(msg)
    trace_h = float(np.trace(h))
    if trace_h == 0.0:
        msg = "trace(H) is 0: relative lambda is undefined (empty regularisation?)"
        raise ValueError(msg)
    return float(lambda_scaling) * float(np.trace(m)) / trace_h


# ---------------------------------------------------------------------------------------------------
# PCA basis (ip_diffim KernelPcaVisitor / KernelPca + PsfMatchTask._createPcaBasis)
# ---------------------------------------------------------------------------------------------------


def pca_kernel_basis(
    kernel_images: Float[np.ndarray, "N Kh Kw"],
    *,
    n_components: int,
    subtract_mean: bool = True,
    normalize_sums: bool = True,
) -> Float[np.ndarray, "B Kh Kw"]:
    r"""Karhunen-Loève (PCA) basis from fitted kernel images (ip_diffim ``KernelPca``).

    1. Each image is divided by its sum (``normalize_sums``; LSST divides every candidate kernel by its
       kernel sum and gives them equal weight); images with non-finite pixels (or a zero sum) are dropped.
    2. If ``subtract_mean``, the mean image is subtracted from every image.
    3. PCA of the ``N`` images (equal weights; afw ``ImagePca``): eigen-images in order of decreasing
       eigenvalue (``λ = s² / N`` from the SVD), each divided by its signed extreme value (the pixel of
       largest ``|value|``, so that pixel becomes +1; ``KernelPca.analyze``).
    4. Candidate list = ``[mean] + eigen-images`` (mean only if subtracted); the first
       ``min(n_components, N)`` are kept — **the mean counts as one of the components**, as in LSST — and
       any containing NaN are dropped.
    5. :func:`renormalize_kernel_list`: the mean keeps sum 1, the eigen-kernels get unit L2 norm.

    Parameters
    ----------
    kernel_images : array_like, shape (N, Kh, Kw)
        Kernel images of the candidates.
    n_components : int, keyword-only
        LSST ``numPrincipalComponents`` (>= 1).
    subtract_mean : bool, keyword-only
        LSST ``subtractMeanForPca``.
    normalize_sums : bool, keyword-only
        Divide each image by its sum first (idempotent for unit-sum kernels).

    Returns
    -------
    ndarray, shape (B, Kh, Kw), float64, ``B <= n_components``

    Raises
    ------
    ValueError
        If no finite image remains, if the eigenvalues sum to 0 (LSST: RuntimeError "Eigenvalues sum to
        zero"), if ``n_components < 1``, or if the renormalisation fails.

    Notes
    -----
    Components beyond the rank of the data (e.g. more than ``N − 1`` eigen-kernels after subtracting the
    mean, or more than the number of distinct kernel shapes) are numerical noise; LSST keeps them as
    well, so choose ``n_components`` accordingly.  A single image gives eigenvalue 1 (afw's special
    case).  With ``N`` above the number of pixels, only ``Kh·Kw`` eigen-images exist.

    References
    ----------
    Becker, A. C. et al. 2012, MNRAS 425, 1341 (PCA bases for delta-function kernels).

    Examples
    --------
    >>> g = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    >>> a, c = np.outer(g, g), np.outer(g, g**0.5)
    >>> kernels = [w * a / a.sum() + (1 - w) * c / c.sum() for w in (0.1, 0.5, 0.8)]
    >>> pca_kernel_basis(kernels, n_components=2).shape
    (2, 7, 7)
    """
    n_components = int(n_components)
    if n_components < 1:
        msg = f"n_components must be >= 1, got {n_components}"
        raise ValueError(msg)
    images = np.array(kernel_images, dtype=np.float64)
    if images.ndim != 3:
        msg = f"kernel_images must have shape (N, Kh, Kw), got {images.shape}"
        raise ValueError(msg)
    shape = images.shape[1:]
    if normalize_sums:
        with np.errstate(divide="ignore", invalid="ignore"):
            images = images / images.sum(axis=(1, 2), keepdims=True)
    images = images[np.all(np.isfinite(images), axis=(1, 2))]
    n_images = images.shape[0]
    if n_images == 0:
        msg = "no kernel image with finite pixels (and, with normalize_sums, a non-zero sum) to analyse"
        raise ValueError(msg)
    x = images.reshape(n_images, -1)
    candidates = []
    if subtract_mean:
        mean = x.mean(axis=0)
        x = x - mean
        candidates.append(mean)
    if n_images == 1:  # afw ImagePca: the image itself, eigenvalue 1
        eigenvalues = np.ones(1)
        eigen_images = x
    else:
        _, singular, vt = np.linalg.svd(x, full_matrices=False)
        eigenvalues = singular**2 / n_images
        eigen_images = singular[:, None] * vt
    if np.sum(eigenvalues) == 0.0:
        msg = "PCA eigenvalues sum to zero: the kernel images are all identical (after the mean subtraction)"
        raise ValueError(msg)
    for image in eigen_images:
        lo, hi = image.min(), image.max()
        extreme = lo if abs(lo) > hi else hi
        candidates.append(image / extreme if extreme != 0.0 else image)
    keep = [c for c in candidates[: min(n_components, len(eigenvalues))] if not np.any(np.isnan(c))]
    return renormalize_kernel_list(np.array(keep).reshape(len(keep), *shape))
