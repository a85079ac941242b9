r"""Alard-Lupton kernel least squares, batched over stamps with ``jax.vmap``.

Per-stamp normal equations, solves, residual statistics and the spatial model.

Model (Alard & Lupton 1998, ApJ 503, 325, eq. 2; Alard 2000, A&AS 144, 363, eqs. 2-4):

.. math::

    I(x) \approx \sum_k a_k(x) \, (B_k \star T)(x) + b(x),

with ``T`` the image to convolve (the template), ``I`` the image matched to (the science image),
``B_k`` basis kernels, ``\star`` afw's *correlation* (``lsst.afw.math.convolve``:
``out(X, Y) = sum_{u,v} K(u, v) in(X+u, Y+v)``), ``a_k`` spatial polynomials and ``b`` the
differential background.  The steps follow ip_diffim's ``PsfMatchTask``:

* one stamp (ip_diffim ``KernelCandidate.build`` / ``StaticKernelSolution``): design matrix
  ``C_k = (B_k \star T)`` over the stamp's good region (the stamp shrunk by the kernel half-width),
  an optional column of ones for the background, weights ``1/V`` with ``V`` the median of
  ``V_I + V_T`` (``constantVarianceWeighting``) or per pixel; normal equations ``M = C^T W C``,
  ``b = C^T W I``;
* the solves return a :class:`~jaxdiff.core._results.Status` instead of raising (singular,
  non-finite, ill-conditioned), which the task shell turns into a typed exception or a BAD
  candidate;
* residual statistics of ``D/sigma`` (ip_diffim ``BuildSingleKernelVisitor``) for single-stamp and
  spatial kernels;
* the spatial system ``sum_c A_c^T M_c A_c`` with a constant first term for Alard-Lupton bases
  (ip_diffim ``BuildSpatialKernelVisitor`` / ``SpatialKernelSolution``; Alard 2000).

Everything is written for one stamp and ``jax.vmap``-ed; shapes are fixed (candidates padded to
buckets with a validity mask) so that rejecting candidates never recompiles.  Every matrix product
that builds or solves the normal equations passes ``precision=PRECISION``
(:data:`jaxdiff.core._numerics.PRECISION`).

For Gaussian x polynomial bases (separable) the design matrix is computed with 1-D passes as
matrix products (``(B_k \star T) = F_y^T T F_x`` with Toeplitz factors), then the linear
renormalisation of the basis is applied; other bases (delta functions, PCA) use stamp-sized FFTs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._numerics import PRECISION, safe_divide
from ._results import Status, flag
from .spatial import n_spatial_terms, spatial_basis

__all__ = [
    "STATUS_BAD_VARIANCE",
    "STATUS_ILL_CONDITIONED",
    "STATUS_MESSAGES",
    "STATUS_NONFINITE",
    "STATUS_OK",
    "STATUS_SINGULAR",
    "FitBasis",
    "LinearSolution",
    "ResidualStats",
    "SpatialSolution",
    "StampFit",
    "Status",
    "extract_stamps",
    "fit_stamp",
    "fit_stamps",
    "kernel_images_at",
    "make_fit_basis",
    "regularization_root",
    "residual_stats",
    "solve_normal_equations",
    "solve_spatial",
    "solve_triangular_system",
    "spatial_system",
    "stamp_design",
    "stamp_difference",
    "stamp_residual_stats",
    "term_kernels",
]

# Names of the former status bits, kept for the task shell (``status & STATUS_SINGULAR`` etc.).
STATUS_OK = Status.successful
STATUS_BAD_VARIANCE = Status.bad_variance
STATUS_SINGULAR = Status.singular
#: Either kind of non-finite failure (input or solution).
STATUS_NONFINITE = Status.nonfinite_input | Status.nonfinite_solution
STATUS_ILL_CONDITIONED = Status.ill_conditioned

#: ``{flag: message}`` for every single :class:`Status` flag (and see
#: :func:`~jaxdiff.core._results.status_message`).
STATUS_MESSAGES = {member: member.message for member in Status if member}


class FitBasis(NamedTuple):
    """A kernel basis prepared for fitting.

    Attributes
    ----------
    images : array, shape (n_basis, w, w)
        The basis kernel images (afw orientation: index ``[v + hw, u + hw]``).
    fx, fy : array, shape (n_raw, w) or None
        1-D factors of a separable raw basis (Gaussian x polynomial).
    transform : array, shape (n_basis, n_raw) or None
        ``images[k] = sum_r transform[k, r] * outer(fy[r], fx[r])``.
    """

    images: jax.Array
    fx: jax.Array | None = None
    fy: jax.Array | None = None
    transform: jax.Array | None = None

    @property
    def n_basis(self):
        """Number of basis kernels."""
        return self.images.shape[0]

    @property
    def width(self):
        """Width (= height) of the basis kernels."""
        return self.images.shape[-1]


def make_fit_basis(images, separable=None, *, dtype=None) -> FitBasis:
    """Wrap basis images (and optionally a :class:`jaxdiff.core.kernel_basis.SeparableBasis`) for the fit.

    The separable factors are checked against the images (they must reproduce them to 1e-10 of
    the largest pixel) so that the fast path can never silently fit a different basis.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] % 2 != 1:
        raise ValueError(f"basis images must have shape (n, w, w) with odd w, got {images.shape}")
    dtype = dtype or jnp.result_type(float)
    if separable is None:
        return FitBasis(jnp.asarray(images, dtype))
    fx, fy, tr = (np.asarray(a, np.float64) for a in separable[:3])
    rebuilt = np.einsum("kr,rj,ri->kji", tr, fy, fx)
    if rebuilt.shape != images.shape or not np.allclose(rebuilt, images, rtol=0, atol=1e-10 * np.abs(images).max()):
        raise ValueError("the separable factors do not reproduce the basis images")
    return FitBasis(jnp.asarray(images, dtype), jnp.asarray(fx, dtype), jnp.asarray(fy, dtype), jnp.asarray(tr, dtype))


class LinearSolution(NamedTuple):
    """Result of :func:`solve_normal_equations` and :func:`solve_triangular_system`.

    Attributes
    ----------
    solution : (n,) the (minimum-norm) least-squares solution; 0 when the inputs were not finite.
    condition : () condition number of the normal matrix (``inf`` when singular).
    status : () int32 :class:`Status` flags (``singular``, ``nonfinite_input``,
        ``nonfinite_solution``, ``ill_conditioned``).
    inverse : (n, n) the (pseudo-)inverse of the normal matrix: the parameter covariance for
        unit-variance weights.  Under ``jit`` it is computed only if used.
    """

    solution: jax.Array
    condition: jax.Array
    status: jax.Array
    inverse: jax.Array


class StampFit(NamedTuple):
    """Single-stamp solution (ip_diffim ``KernelCandidate.build`` / ``StaticKernelSolution``).

    Attributes
    ----------
    coefficients : (n_basis,) kernel basis coefficients ``a_k``.
    background : () background coefficient (0 when not fitted).
    kernel_sum : () sum of the kernel image.
    kernel : (w, w) the kernel image ``sum_k a_k B_k``.
    normal_matrix : (n, n) ``M`` (n = n_basis + 1 with a background column), without regularisation.
    normal_vector : (n,) ``b``.
    weight_variance : () the constant variance used as weight (median of V_I + V_T) or NaN (per pixel).
    condition : () ratio of the largest to the smallest eigenvalue of the solved matrix.
    status : () int32 :class:`Status` flags (``bad_variance``, ``singular``, ``nonfinite_input``,
        ``nonfinite_solution``, ``ill_conditioned``).
    r_factor : (n, n) upper-triangular QR factor of the weighted design (``M = R^T R``).
    r_rhs : (n,) ``Q^T W^{1/2} I`` (``b = R^T r_rhs``).
    """

    coefficients: jax.Array
    background: jax.Array
    kernel_sum: jax.Array
    kernel: jax.Array
    normal_matrix: jax.Array
    normal_vector: jax.Array
    weight_variance: jax.Array
    condition: jax.Array
    status: jax.Array
    r_factor: jax.Array
    r_rhs: jax.Array


class ResidualStats(NamedTuple):
    """Statistics of ``z = D / sqrt(var_D)`` over usable stamp pixels.

    As ip_diffim's ``BuildSingleKernelVisitor`` computes them for candidate rejection.

    Attributes
    ----------
    mean : () mean of ``z`` (NaN without usable pixel).
    rms : () unbiased standard deviation of ``z`` (NaN with fewer than two usable pixels).
    npix : () number of usable pixels.
    status : () int32 :class:`Status`: ``too_few_pixels`` when ``npix < 2``.
    """

    mean: jax.Array
    rms: jax.Array
    npix: jax.Array
    status: jax.Array


class SpatialSolution(NamedTuple):
    """Spatial kernel and background (ip_diffim ``SpatialKernelSolution``).

    Attributes
    ----------
    kernel_coeffs : (n_basis, n_kernel_terms) spatial parameters per basis kernel (afw order);
        with a constant first term, row 0 is ``[a_0, 0, ..., 0]``.
    background_coeffs : (n_bg_terms,) background function parameters (``[0]`` when not fitted).
    condition : () eigenvalue condition number of the spatial system.
    status : () int32 :class:`Status` flags (as :class:`LinearSolution`, plus ``no_valid_stamps``).
    n_used : () number of candidates in the fit.
    covariance : (nt, nt) inverse of the spatial normal matrix: the parameter covariance if the
        weights are inverse variances and the pixels independent (a lower bound otherwise); NaN
        when the system is singular or not finite.
    """

    kernel_coeffs: jax.Array
    background_coeffs: jax.Array
    condition: jax.Array
    status: jax.Array
    n_used: jax.Array
    covariance: jax.Array


# ------------------------------------------------------------------------------------------
# Design matrix of one stamp
def _toeplitz(f, size):
    """``A[c + i, c] = f[i]``: right-multiplying a row vector by ``A`` correlates it with ``f``."""
    w = f.shape[-1]
    g = size - w + 1
    offs = jnp.arange(size)[:, None] - jnp.arange(g)[None, :]
    ok = (offs >= 0) & (offs < w)
    return jnp.where(ok, f[..., jnp.clip(offs, 0, w - 1)], 0)


def stamp_design(template, basis: FitBasis):
    r"""Design matrix columns ``(B_k \star T)`` over the good region of one stamp.

    Parameters
    ----------
    template : array, shape (S, S2)
        Template stamp.
    basis : FitBasis

    Returns
    -------
    array, shape (G * G2, n_basis)
        With ``G = S - w + 1``; row-major pixels of the good region.
    """
    w = basis.width
    sy, sx = template.shape
    gy, gx = sy - w + 1, sx - w + 1
    if basis.fx is not None:
        ax = _toeplitz(basis.fx, sx)  # (n_raw, sx, gx)
        ay = _toeplitz(basis.fy, sy)  # (n_raw, sy, gy)
        xpass = jnp.einsum("yx,rxc->ryc", template, ax, precision=PRECISION)
        raw = jnp.einsum("rym,ryc->rmc", ay, xpass, precision=PRECISION)  # (n_raw, gy, gx)
        cols = jnp.einsum("kr,rmc->mck", basis.transform, raw, precision=PRECISION)
        return cols.reshape(gy * gx, basis.n_basis)
    cols = _fft_correlate_valid(template, basis.images)  # (n_basis, gy, gx)
    return cols.reshape(basis.n_basis, gy * gx).T


def _good(a, hw):
    return a[hw : a.shape[0] - hw, hw : a.shape[1] - hw]


# ------------------------------------------------------------------------------------------
# Solver
def _sanitize(a, v):
    """Non-finite inputs -> (identity, 0) so the solvers stay finite; returns (a, v, finite_in)."""
    n = a.shape[-1]
    finite_in = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(v))
    return jnp.where(finite_in, a, jnp.eye(n, dtype=a.dtype)), jnp.where(finite_in, v, 0), finite_in


def _finish_status(sol, singular, finite_in, condition, max_condition):
    """Zero a non-finite solution and combine the :class:`Status` flags."""
    finite_out = jnp.all(jnp.isfinite(sol))
    status = (
        flag(singular, Status.singular)
        | flag(~finite_in, Status.nonfinite_input)
        | flag(finite_in & ~finite_out, Status.nonfinite_solution)
    )
    if max_condition is not None:
        status = status | flag(condition > max_condition, Status.ill_conditioned)
    return jnp.where(finite_out, sol, 0), status


def solve_normal_equations(matrix, vector, *, max_condition=None, rcond=None) -> LinearSolution:
    """Solve ``M a = b`` for a symmetric positive semi-definite ``M``, returning a status.

    Parameters
    ----------
    matrix : array, shape (n, n)
        ``M``.
    vector : array, shape (n,)
        ``b``.
    max_condition : float, optional
        Flag ``Status.ill_conditioned`` when ``lambda_max / lambda_min`` exceeds it (LSST
        ``checkConditionNumber`` / ``maxConditionNumber``; EIGENVALUE and SVD types coincide for a
        symmetric PSD matrix). The condition number is that of the Jacobi-scaled matrix (unit
        diagonal), i.e. independent of the units of the basis columns; LSST measures the unscaled
        matrix, whose condition number is larger by the spread of the column norms.
    rcond : float, optional
        Eigenvalues below ``rcond * lambda_max`` count as zero (default ``n * eps``, Eigen's
        FullPivLU rank threshold).

    Returns
    -------
    LinearSolution
        ``solution``, ``condition``, ``status`` and the (pseudo-)inverse of ``M`` (from the same
        eigen-decomposition).

    Notes
    -----
    The system is first scaled to a unit diagonal (Jacobi; the solution is unchanged, the
    conditioning much better in float32). Like ip_diffim's ``KernelSolution::solve`` an invertible
    system is solved directly (LU) and a singular one with the eigen-decomposition pseudo-inverse;
    unlike LSST, eigenvalues below ``rcond * lambda_max`` are truncated (LSST divides by any
    non-zero eigenvalue, which amplifies rounding noise). The pseudo-inverse branch is evaluated
    with a stopped gradient on ``M`` so that gradients stay finite (double-``where`` pattern).

    **JAX.** Traceable, ``vmap``-able; ``max_condition`` and ``rcond`` are Python numbers.
    Differentiable in ``M`` and ``b`` through the direct solve; the pseudo-inverse branch
    differentiates through ``b`` only.
    """
    n = matrix.shape[-1]
    dtype = matrix.dtype
    if rcond is None:
        rcond = n * jnp.finfo(dtype).eps
    m_safe, v_safe, finite_in = _sanitize(matrix, vector)
    sym = 0.5 * (m_safe + m_safe.T)
    # Jacobi scaling (unit diagonal) before solving: same solution, far better conditioned in float32
    diag = jnp.diagonal(sym)
    d = safe_divide(1.0, jnp.sqrt(jnp.where(diag > 0, diag, 1.0)), fill=1.0, where=diag > 0)
    scaled = sym * d[:, None] * d[None, :]
    rhs = v_safe * d
    evals, evecs = jnp.linalg.eigh(jax.lax.stop_gradient(scaled))
    lmax = jnp.max(jnp.abs(evals))
    singular = ~(evals[0] > rcond * lmax)
    condition = jnp.where(evals[0] > 0, lmax / jnp.maximum(evals[0], jnp.finfo(dtype).tiny), jnp.inf)
    # direct solve on a well-posed copy (double where: the singular branch never feeds LU a singular matrix)
    direct_m = jnp.where(singular, jnp.eye(n, dtype=dtype), scaled)
    direct = jnp.linalg.solve(direct_m, rhs)
    keep = evals > rcond * lmax
    inv = safe_divide(1.0, evals, where=keep)
    pinv = jnp.matmul(evecs, inv * jnp.matmul(evecs.T, rhs, precision=PRECISION), precision=PRECISION)
    sol = jnp.where(singular, pinv, direct) * d
    sol, status = _finish_status(sol, singular, finite_in, condition, max_condition)
    # the inverse reuses the decomposition: XLA:CPU may run independent LAPACK calls concurrently,
    # which was seen to deadlock, so no second factorisation is started here
    inverse = jnp.matmul(evecs * inv[None, :], evecs.T, precision=PRECISION) * d[:, None] * d[None, :]
    return LinearSolution(sol, condition, status, inverse)


def solve_triangular_system(r, z, *, max_condition=None, rcond=None) -> LinearSolution:
    """Least-squares solution from a QR factor: minimise ``||R a - z||`` for square upper-triangular ``R``.

    The QR route (``C = Q R``) keeps the condition number of the design matrix ``C`` instead of
    squaring it as the normal equations ``C^T C`` do, which is what makes float32 fits accurate.
    Columns are scaled to unit norm first. A full-rank ``R`` is solved by back-substitution
    (differentiable); a numerically rank-deficient one with the truncated SVD pseudo-inverse
    (gradient through ``z`` only; double-``where`` so values and gradients stay finite).

    Parameters
    ----------
    r : array (n, n)
        Upper-triangular factor (from ``jnp.linalg.qr(..., mode="r")``).
    z : array (n,)
        ``Q^T y``.
    max_condition : float, optional
        Flag ``Status.ill_conditioned`` when the condition number of ``M = R^T R`` (of the
        column-scaled system) exceeds it.
    rcond : float, optional
        Singular values of the scaled ``R`` below ``rcond * s_max`` count as zero (default
        ``n * eps``).

    Returns
    -------
    LinearSolution
        ``condition`` is that of ``M = R^T R`` (the square of R's), as LSST reports it;
        ``inverse`` is ``(R^T R)^{-1}`` (the parameter covariance for unit-variance weights), with a
        stopped gradient.
    """
    n = r.shape[-1]
    dtype = r.dtype
    if rcond is None:
        rcond = n * jnp.finfo(dtype).eps
    r, z, finite_in = _sanitize(r, z)
    sumsq = jnp.sum(r * r, axis=0)
    dpos = sumsq > 0
    d = safe_divide(1.0, jnp.sqrt(jnp.where(dpos, sumsq, 1.0)), fill=1.0, where=dpos)
    rs = r * d[None, :]
    u, sv, vt = jnp.linalg.svd(jax.lax.stop_gradient(rs), full_matrices=False)
    smax = sv[0]
    smin = sv[-1]
    singular = ~(smin > rcond * smax)
    ratio = smax / jnp.maximum(smin, jnp.finfo(dtype).tiny)
    condition = jnp.where(smin > 0, ratio * ratio, jnp.inf)
    safe_r = jnp.where(singular, jnp.eye(n, dtype=dtype), rs)
    direct = jax.scipy.linalg.solve_triangular(safe_r, z, lower=False)
    keep = sv > rcond * smax
    inv = safe_divide(1.0, sv, where=keep)
    pinv = jnp.matmul(vt.T, inv * jnp.matmul(u.T, z, precision=PRECISION), precision=PRECISION)
    sol = jnp.where(singular, pinv, direct) * d
    sol, status = _finish_status(sol, singular, finite_in, condition, max_condition)
    vi = jax.lax.stop_gradient(vt.T * inv[None, :])
    inverse = jnp.matmul(vi, vi.T, precision=PRECISION) * d[:, None] * d[None, :]
    return LinearSolution(sol, condition, status, inverse)


def _householder_r(a):
    """``R`` of a QR factorisation by Householder reflections written in JAX (square ``(k, k)``).

    Written in XLA ops, no LAPACK: it vectorises across a ``vmap`` batch of small stamp systems, is
    much faster than a LAPACK ``geqrf`` call on the tall, narrow spatial system on CPU, and starts no
    LAPACK call that could run concurrently with another (see :func:`solve_normal_equations`).
    Backward stable like geqrf; the signs of R's rows may differ from LAPACK's (irrelevant for
    ``R^T R`` and for least squares).  The norms use guarded square roots so that gradients stay
    finite for zero columns (e.g. the zero rows of invalid candidates).
    """
    m, k = a.shape
    if m < k:
        a = jnp.concatenate([a, jnp.zeros((k - m, k), a.dtype)], axis=0)
        m = k
    rows = jnp.arange(m)

    def step(j, a):
        col = a[:, j]
        x = jnp.where(rows >= j, col, 0)
        sq = jnp.sum(x * x)
        normx = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0).astype(a.dtype)
        xj = col[j]
        alpha = -jnp.where(xj >= 0, 1.0, -1.0).astype(a.dtype) * normx
        v = x.at[j].add(-alpha)
        vn2 = jnp.sum(v * v)
        beta = safe_divide(2.0, vn2, where=vn2 > 0)
        w = jnp.matmul(v, a, precision=PRECISION)
        return a - beta * v[:, None] * w[None, :]

    a = jax.lax.fori_loop(0, k, step, a)
    return jnp.triu(a[:k, :k])


def _tsqr_r(a, chunk_rows=2048):
    """``R`` of a tall matrix by a two-level (TSQR) Householder factorisation: chunks, then their Rs."""
    m, k = a.shape
    rows = max(chunk_rows, 2 * k)
    if m <= rows:
        return _householder_r(a)
    nch = -(-m // rows)
    a = jnp.concatenate([a, jnp.zeros((nch * rows - m, k), a.dtype)], axis=0)
    rs = jax.vmap(_householder_r)(a.reshape(nch, rows, k))
    return _householder_r(rs.reshape(nch * k, k))


# ------------------------------------------------------------------------------------------
# One stamp
def fit_stamp(template, science, template_variance, science_variance, basis: FitBasis, regularization=None,
              reg_lambda=0.0, *, fit_background=False, constant_variance=True, max_condition=None,
              reg_relative=False):
    """Solve the kernel (and background) of one stamp (ip_diffim ``KernelCandidate.build``).

    Parameters
    ----------
    template, science : array, shape (S, S2)
        Stamps of the image to convolve (T) and the image matched to (I).
    template_variance, science_variance : array, shape (S, S2)
        Their variance planes.
    basis : FitBasis
        The kernel basis (:func:`make_fit_basis`).
    regularization : array, shape (k, n), optional
        A root ``L`` of the regularisation matrix ``H = L^T L`` (delta-function bases, ip_diffim
        ``makeRegularizationMatrix``; :func:`regularization_root`): the fit minimises
        ``chi^2 + lambda a^T H a``, i.e. solves ``(M + lambda H) a = b``.
    reg_lambda : float, optional
        ``lambda`` (LSST ``lambdaValue`` for ``lambdaType="absolute"``, ``lambdaScaling`` for
        ``"relative"``: ``lambda = reg_lambda * trace(M) / trace(H)``).
    fit_background : bool, keyword-only
        Add a constant background column.
    constant_variance : bool, keyword-only
        Weight by the median of ``V_I + V_T`` over the stamp (LSST default) instead of per pixel.
    max_condition : float, optional, keyword-only
        See :func:`solve_normal_equations`.
    reg_relative : bool, keyword-only
        ``lambda = reg_lambda * trace(M) / trace(H)`` (LSST ``lambdaType="relative"``).

    Returns
    -------
    StampFit
        Its ``status`` carries ``Status.bad_variance`` (non-positive or non-finite weight variance)
        and the flags of :func:`solve_triangular_system`.

    Notes
    -----
    **JAX.** Written for one stamp (``jax.vmap`` it, or use :func:`fit_stamps`).  ``basis`` shapes,
    ``fit_background``, ``constant_variance``, ``max_condition`` and ``reg_relative`` are static;
    the stamps, ``regularization`` and ``reg_lambda`` are traced.  Differentiable in the stamps.
    """
    hw = basis.width // 2
    dtype = template.dtype
    cols = stamp_design(template, basis)
    if fit_background:
        cols = jnp.concatenate([cols, jnp.ones((cols.shape[0], 1), dtype)], axis=1)
    var = template_variance + science_variance
    if constant_variance:
        med = jnp.median(var)
        vconst = jnp.where(med > 0, med, jnp.ones((), dtype))
        bad_var = ~jnp.isfinite(vconst)
        w = jnp.full((cols.shape[0],), 1.0, dtype) / vconst
        weight_variance = vconst
    else:
        vgood = _good(var, hw).reshape(-1)
        bad_var = ~(jnp.min(vgood) > 0)
        w = 1.0 / jnp.where(vgood > 0, vgood, 1.0)
        weight_variance = jnp.asarray(jnp.nan, dtype)
    target = _good(science, hw).reshape(-1)
    sw = jnp.sqrt(w)
    # QR of the weighted design with the target appended: R[:n, :n] is the factor, R[:n, n] = Q^T y
    aug = jnp.concatenate([cols * sw[:, None], (target * sw)[:, None]], axis=1)
    n = cols.shape[1]
    r_full = _householder_r(aug)
    r, z = r_full[:n, :n], r_full[:n, n]
    m = jnp.matmul(r.T, r, precision=PRECISION)
    b = jnp.matmul(r.T, z, precision=PRECISION)
    if regularization is None:
        r_solve, z_solve = r, z
    else:
        # regularization = L with H = L^T L; solve min ||R a - z||^2 + lambda ||L a||^2 by a second QR
        lam = reg_lambda
        if reg_relative:
            lam = lam * jnp.trace(m) / jnp.sum(regularization * regularization)
        stacked = jnp.concatenate([
            jnp.concatenate([r, z[:, None]], axis=1),
            jnp.concatenate([jnp.sqrt(lam) * regularization, jnp.zeros((regularization.shape[0], 1), dtype)], axis=1),
        ], axis=0)
        r2 = _householder_r(stacked)
        r_solve, z_solve = r2[:n, :n], r2[:n, n]
    solved = solve_triangular_system(r_solve, z_solve, max_condition=max_condition)
    sol = solved.solution
    status = solved.status | flag(bad_var, Status.bad_variance)
    nb = basis.n_basis
    coeffs = sol[:nb]
    bg = sol[nb] if fit_background else jnp.zeros((), dtype)
    kernel = jnp.tensordot(coeffs, basis.images, axes=1, precision=PRECISION)
    return StampFit(coeffs, bg, jnp.sum(kernel), kernel, m, b, weight_variance, solved.condition, status, r, z)


@functools.partial(
    jax.jit,
    static_argnames=("fit_background", "constant_variance", "max_condition", "reg_relative", "batch_size"),
)
def fit_stamps(templates, sciences, template_variances, science_variances, basis: FitBasis, regularization=None,
               reg_lambda=0.0, *, fit_background=False, constant_variance=True, max_condition=None,
               reg_relative=False, batch_size=None):
    """Apply :func:`fit_stamp` to a batch of stamps (leading axis), one vmapped computation.

    ``batch_size`` (static) processes the stamps in vmapped chunks with ``lax.map`` to bound the
    memory of the intermediate design matrices (``None``: all at once).  Returns a
    :class:`StampFit` whose fields have a leading stamp axis.
    """
    fn = functools.partial(
        fit_stamp, basis=basis, regularization=regularization, reg_lambda=reg_lambda,
        fit_background=fit_background, constant_variance=constant_variance, max_condition=max_condition,
        reg_relative=reg_relative,
    )
    args = (templates, sciences, template_variances, science_variances)
    if batch_size is None or batch_size >= templates.shape[0]:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=batch_size)


# ------------------------------------------------------------------------------------------
# Residuals
def _fft_correlate_valid(image, kernels):
    """Valid-region afw correlation of one image with a stack of kernels, by FFT.

    ``kernels`` has shape (..., w, w); the result (..., G, G2) with ``G = S - w + 1``. A circular
    correlation of the stamp size has no wrap-around inside the valid region.
    """
    sy, sx = image.shape
    w = kernels.shape[-1]
    shape = (sy, sx)
    ti = jnp.fft.rfft2(image, s=shape)
    ki = jnp.fft.rfft2(kernels, s=shape)
    out = jnp.fft.irfft2(ti * jnp.conj(ki), s=shape)
    return out[..., : sy - w + 1, : sx - w + 1]


def stamp_difference(template, science, template_variance, science_variance, kernel, background):
    r"""Good-region difference ``D = I - K \star T - bg`` and its variance ``V_I + K^2 \star V_T``.

    Stamp-sized FFTs (no convolution primitive: a ``vmap`` over stamps with per-stamp kernels
    stays a batch of small FFTs).
    """
    hw = kernel.shape[0] // 2
    matched = _fft_correlate_valid(template, kernel)
    kvar = _fft_correlate_valid(template_variance, kernel * kernel)
    return _good(science, hw) - matched - background, _good(science_variance, hw) + kvar


def residual_stats(diff, var, usable, *, core_radius=None):
    """Mean and unbiased rms of ``z = D / sqrt(var)`` over usable pixels.

    The residual statistics of ip_diffim's ``BuildSingleKernelVisitor``.

    ``usable`` pixels must also have a finite, positive ``1/var``; ``core_radius`` restricts the
    statistics to the central ``(2r + 1)^2`` box. With no usable pixel the mean is NaN, with fewer
    than two the rms is NaN, and ``status`` is ``Status.too_few_pixels``.  Values and gradients are
    finite at masked and zero-variance pixels (double ``where``).
    """
    if core_radius is not None:
        h, w = diff.shape
        r = int(core_radius)
        rows = jnp.arange(h)[:, None]
        cols = jnp.arange(w)[None, :]
        usable = usable & (jnp.abs(rows - h // 2) <= r) & (jnp.abs(cols - w // 2) <= r)
    ok = usable & (var > 0) & jnp.isfinite(var) & jnp.isfinite(diff)
    ivar = safe_divide(1.0, var, fill=1.0, where=ok)
    z = jnp.where(ok, jnp.where(ok, diff, 0) * jnp.sqrt(ivar), 0)
    n = jnp.sum(ok)
    nf = n.astype(diff.dtype)
    mean = jnp.sum(z) / jnp.maximum(nf, 1)
    var_z = (jnp.sum(z * z) / jnp.maximum(nf, 1) - mean * mean) * nf / jnp.maximum(nf - 1, 1)
    mean = jnp.where(n > 0, mean, jnp.nan)
    rms = jnp.where(n > 1, jnp.sqrt(jnp.maximum(var_z, 0)), jnp.nan)
    return ResidualStats(mean, rms, n, flag(n < 2, Status.too_few_pixels))


@functools.partial(jax.jit, static_argnames=("core_radius", "batch_size"))
def stamp_residual_stats(templates, sciences, template_variances, science_variances, bad, kernels, backgrounds,
                         *, core_radius=None, batch_size=32):
    """Residual statistics of a batch of stamps, each with its own kernel image and background.

    ``bad`` (N, S, S2) marks stamp pixels excluded from the statistics (``badMaskPlanes`` bits);
    only the good region (stamp shrunk by the kernel half-width) is used, as afw's NaN edge band is
    excluded by LSST. ``batch_size`` (static) bounds the memory of the window matrices.
    """

    def one(t, s, vt, vs, bd, k, bg):
        d, v = stamp_difference(t, s, vt, vs, k, bg)
        hw = k.shape[0] // 2
        return residual_stats(d, v, ~_good(bd, hw), core_radius=core_radius)

    args = (templates, sciences, template_variances, science_variances, bad, kernels, backgrounds)
    if batch_size is None or batch_size >= templates.shape[0]:
        return jax.vmap(one)(*args)
    return jax.lax.map(lambda a: one(*a), args, batch_size=batch_size)


# ------------------------------------------------------------------------------------------
# Spatial model
def _spatial_layout(n_basis, n_kt, n_bt, fit_background, constant_first_term):
    """Return static (row, col, source) triplets of the map A from the spatial unknowns to one stamp's unknowns.

    Source index into ``[1, p_1..p_nkt, q_1..q_nbt]``.
    """
    rows, cols, src = [], [], []
    col = 0
    for m in range(n_basis):
        if m == 0 and constant_first_term:
            rows.append(0)
            cols.append(col)
            src.append(0)
            col += 1
            continue
        for s in range(n_kt):
            rows.append(m)
            cols.append(col + s)
            src.append(1 + s)
        col += n_kt
    if fit_background:
        for s in range(n_bt):
            rows.append(n_basis)
            cols.append(col + s)
            src.append(1 + n_kt + s)
        col += n_bt
    return np.array(rows), np.array(cols), np.array(src), col


@functools.partial(
    jax.jit,
    static_argnames=("n_basis", "kernel_order", "bg_order", "fit_background", "constant_first_term", "model", "xy_range"),
)
def spatial_system(matrices, vectors, x, y, valid, *, n_basis, kernel_order, bg_order, fit_background,
                   constant_first_term, model, xy_range):
    """Accumulate ``sum_c A_c^T M_c A_c`` and ``sum_c A_c^T b_c`` over valid candidates.

    The spatial normal equations of ip_diffim's ``SpatialKernelSolution`` (Alard 2000, eqs. 2-4),
    ``A_c`` mapping the spatial unknowns to candidate ``c``'s basis coefficients.

    Parameters
    ----------
    matrices : (N, n, n), vectors : (N, n)
        Single-stamp normal equations (n = n_basis + 1 with a background column).
    x, y : (N,)
        Candidate centres (PARENT pixels).
    valid : (N,) bool
        Candidates that enter the fit.
    n_basis, kernel_order, bg_order, fit_background, constant_first_term, model, xy_range :
        Static layout (``xy_range`` a hashable tuple for Chebyshev models).

    Returns
    -------
    matrix : (nt, nt), vector : (nt,)
    """
    n_kt = n_spatial_terms(kernel_order)
    n_bt = n_spatial_terms(bg_order) if fit_background else 0
    rows, cols, src, nt = _spatial_layout(n_basis, n_kt, n_bt, fit_background, constant_first_term)
    order_ = np.argsort(cols)
    r, s = rows[order_], src[order_]
    p = spatial_basis(x, y, kernel_order, model=model, xy_range=xy_range)
    parts = [jnp.ones_like(p[:, :1]), p]
    if fit_background:
        parts.append(spatial_basis(x, y, bg_order, model=model, xy_range=xy_range))
    pf = jnp.concatenate(parts, axis=1).astype(matrices.dtype)  # (N, L): [1, p, q]
    mm = jnp.where(valid[:, None, None], matrices, 0)
    vv = jnp.where(valid[:, None], vectors, 0)
    # M_sp[u, v] = sum_c M_c[r_u, r_v] pf_c[s_u] pf_c[s_v]  (A_c^T M_c A_c without forming A_c)
    big = jnp.einsum("cij,ca,cb->iajb", mm, pf, pf, precision=PRECISION)
    msp = big[r[:, None], s[:, None], r[None, :], s[None, :]]
    bsp = jnp.einsum("ci,ca->ia", vv, pf, precision=PRECISION)[r, s]
    return msp, bsp


@functools.partial(
    jax.jit,
    static_argnames=("n_basis", "kernel_order", "bg_order", "fit_background", "constant_first_term", "model",
                     "xy_range", "max_condition"),
)
def solve_spatial(factors, rhs, x, y, valid, *, n_basis, kernel_order, bg_order, fit_background,
                  constant_first_term, model, xy_range, max_condition=None):
    """Spatial kernel and background solution from single-stamp QR factors.

    The solution of ip_diffim's ``SpatialKernelSolution``.

    Solves ``min sum_c ||R_c A_c theta - z_c||^2`` (the same normal equations as
    :func:`spatial_system`, ``sum_c A_c^T M_c A_c`` with ``M_c = R_c^T R_c``) by one QR
    factorisation of the stacked rows, which keeps float32 solutions accurate.

    Parameters
    ----------
    factors : (N, n, n)
        ``StampFit.r_factor`` of each candidate (n = n_basis + 1 with a background column).
    rhs : (N, n)
        ``StampFit.r_rhs``.
    x, y : (N,) candidate centres (PARENT pixels); valid : (N,) bool.
    n_basis, kernel_order, bg_order, fit_background, constant_first_term, model, xy_range, max_condition :
        Static layout, see :func:`spatial_system`.

    Returns
    -------
    SpatialSolution
        ``status``: the flags of :func:`solve_triangular_system`, plus ``Status.no_valid_stamps``
        when no candidate is valid (the system is then also singular).

    Notes
    -----
    **JAX.** jit-compiled; the layout arguments and ``max_condition`` are static, the candidate
    arrays traced (pad them to a few bucket sizes with ``valid=False`` to avoid recompiles).
    """
    n_kt = n_spatial_terms(kernel_order)
    n_bt = n_spatial_terms(bg_order) if fit_background else 0
    rows, cols, src, nt = _spatial_layout(n_basis, n_kt, n_bt, fit_background, constant_first_term)
    order_ = np.argsort(cols)
    r_idx, s_idx = rows[order_], src[order_]
    dtype = factors.dtype
    p = spatial_basis(x, y, kernel_order, model=model, xy_range=xy_range)
    parts = [jnp.ones_like(p[:, :1]), p]
    if fit_background:
        parts.append(spatial_basis(x, y, bg_order, model=model, xy_range=xy_range))
    pf = jnp.concatenate(parts, axis=1).astype(dtype)
    sel = np.zeros((factors.shape[-1], nt), np.float32)
    sel[r_idx, np.arange(nt)] = 1.0
    ra = jnp.matmul(factors, jnp.asarray(sel, dtype), precision=PRECISION)
    ra = ra * pf[:, s_idx][:, None, :]  # (N, n, nt): R_c A_c
    block = jnp.concatenate([ra, rhs[:, :, None]], axis=2)
    block = jnp.where(valid[:, None, None], block, 0)
    rr = _tsqr_r(block.reshape(-1, nt + 1))
    solved = solve_triangular_system(rr[:nt, :nt], rr[:nt, nt], max_condition=max_condition)
    sol = solved.solution
    kcoeffs, bcoeffs = unpack_spatial_parameters(sol, n_basis=n_basis, kernel_order=kernel_order,
                                                 fit_background=fit_background,
                                                 constant_first_term=constant_first_term)  # fmt: skip
    n_used = jnp.sum(valid)
    status = solved.status | flag(n_used == 0, Status.no_valid_stamps) | flag(n_used == 0, Status.singular)
    unusable = Status.singular | Status.nonfinite_input | Status.nonfinite_solution | Status.no_valid_stamps
    cov = jnp.where((status & int(unusable)) == 0, solved.inverse, jnp.nan)
    return SpatialSolution(kcoeffs, bcoeffs, solved.condition, status, n_used, cov)


def unpack_spatial_parameters(theta, *, n_basis, kernel_order, fit_background, constant_first_term):
    """Split a spatial parameter vector (the layout of :func:`solve_spatial`) into its parts.

    Returns kernel coefficients (n_basis, n_kernel_terms) — with ``constant_first_term`` the first
    basis kernel has the one constant ``theta[0]`` — and background coefficients (the rest of
    ``theta``; ``zeros(1)`` without a background).
    """
    n_kt = n_spatial_terms(kernel_order)
    if constant_first_term:
        first = jnp.zeros((1, n_kt), theta.dtype).at[0, 0].set(theta[0])
        rest = theta[1 : 1 + (n_basis - 1) * n_kt].reshape(n_basis - 1, n_kt)
        kcoeffs = jnp.concatenate([first, rest], axis=0)
        off = 1 + (n_basis - 1) * n_kt
    else:
        kcoeffs = theta[: n_basis * n_kt].reshape(n_basis, n_kt)
        off = n_basis * n_kt
    bcoeffs = theta[off:] if fit_background else jnp.zeros((1,), theta.dtype)
    return kcoeffs, bcoeffs


def regularization_root(h):
    """Return a root ``L`` with ``L^T L = H`` of a symmetric PSD regularisation matrix (host, float64)."""
    h = np.asarray(h, np.float64)
    evals, evecs = np.linalg.eigh(0.5 * (h + h.T))
    keep = evals > evals.max() * h.shape[0] * np.finfo(np.float64).eps
    return (np.sqrt(evals[keep])[:, None] * evecs[:, keep].T)


def term_kernels(basis_images, kernel_coeffs):
    """Kernel of each spatial term: ``K_s = sum_k kernel_coeffs[k, s] B_k``, shape (n_terms, w, w)."""
    return jnp.einsum("ks,kji->sji", kernel_coeffs, basis_images, precision=PRECISION)


def kernel_images_at(basis_images, kernel_coeffs, x, y, *, order, model, xy_range=None):
    """Kernel images of a spatial solution at positions ``(x, y)`` (any shape), shape ``x.shape + (w, w)``."""
    phi = spatial_basis(x, y, order, model=model, xy_range=xy_range)
    return jnp.einsum("...s,sji->...ji", phi, term_kernels(basis_images, kernel_coeffs), precision=PRECISION)


# ------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("size",))
def extract_stamps(image, corners, *, size):
    """Cut ``(N, size[0], size[1])`` stamps whose lower-left array corners are ``corners`` (N, 2) = (row, col)."""

    def one(c):
        return jax.lax.dynamic_slice(image, (c[0], c[1]), size)

    return jax.vmap(one)(corners)
