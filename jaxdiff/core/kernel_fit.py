"""Alard-Lupton kernel least squares: per-stamp normal equations, solves, residual statistics and
the spatial model, as batched (vmapped) JAX computations.

Model (Alard & Lupton 1998, ApJ 503, 325, eq. 2; Alard 2000, A&AS 144, 363, eqs. 2-4):

.. math::

    I(x) \\approx \\sum_k a_k(x) \\, (B_k \\star T)(x) + b(x),

with ``T`` the image to convolve (the template), ``I`` the image matched to (the science image),
``B_k`` basis kernels, ``\\star`` afw's *correlation* (``out(X, Y) = sum_{u,v} K(u, v) in(X+u, Y+v)``,
spec ``research/lsst_ip_diffim.md`` section 2.3), ``a_k`` spatial polynomials and ``b`` the
differential background. Everything here follows spec section 4.4-4.8:

* one stamp: design matrix ``C_k = (B_k \\star T)`` over the stamp's good region (the stamp shrunk
  by the kernel half-width), an optional column of ones for the background, weights ``1/V`` with
  ``V`` the median of ``V_I + V_T`` (``constantVarianceWeighting``) or per pixel; normal equations
  ``M = C^T W C``, ``b = C^T W I`` (section 4.4);
* the solve returns a status instead of raising (singular, non-finite, ill-conditioned) that the
  task shell turns into a typed exception or a BAD candidate;
* residual statistics of ``D/sigma`` (section 4.5) for single-stamp and spatial kernels;
* the spatial system ``sum_c A_c^T M_c A_c`` with a constant first term for Alard-Lupton bases
  (section 4.7).

Everything is written for one stamp and ``jax.vmap``-ed; shapes are fixed (candidates padded to
buckets with a validity mask) so that rejecting candidates never recompiles.

For Gaussian x polynomial bases (separable) the design matrix is computed with 1-D passes as
matrix products (``(B_k \\star T) = F_y^T T F_x`` with Toeplitz factors), then the linear
renormalisation of the basis is applied; other bases (delta functions, PCA) use stamp-sized FFTs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .spatial import n_spatial_terms, spatial_basis

__all__ = [
    "STATUS_OK",
    "STATUS_BAD_VARIANCE",
    "STATUS_SINGULAR",
    "STATUS_NONFINITE",
    "STATUS_ILL_CONDITIONED",
    "STATUS_MESSAGES",
    "FitBasis",
    "StampFit",
    "ResidualStats",
    "SpatialSolution",
    "make_fit_basis",
    "stamp_design",
    "solve_normal_equations",
    "fit_stamp",
    "fit_stamps",
    "stamp_difference",
    "residual_stats",
    "stamp_residual_stats",
    "spatial_system",
    "solve_spatial",
    "solve_triangular_system",
    "regularization_root",
    "term_kernels",
    "kernel_images_at",
    "extract_stamps",
]

#: Status codes returned by the solvers (combine with bitwise OR).
STATUS_OK = 0
STATUS_BAD_VARIANCE = 1
STATUS_SINGULAR = 2
STATUS_NONFINITE = 4
STATUS_ILL_CONDITIONED = 8

STATUS_MESSAGES = {
    STATUS_BAD_VARIANCE: "variance <= 0 in the stamp (cannot inverse-variance weight)",
    STATUS_SINGULAR: "singular normal equations (the pseudo-inverse was used)",
    STATUS_NONFINITE: "non-finite values in the normal equations or solution",
    STATUS_ILL_CONDITIONED: "condition number above maxConditionNumber",
}


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
        return self.images.shape[0]

    @property
    def width(self):
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


class StampFit(NamedTuple):
    """Single-stamp solution (spec section 4.4).

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
    status : () int32 status bits (``STATUS_*``).
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
    """Statistics of ``z = D / sqrt(var_D)`` over usable stamp pixels (spec section 4.5)."""

    mean: jax.Array
    rms: jax.Array
    npix: jax.Array


class SpatialSolution(NamedTuple):
    """Spatial kernel and background (spec section 4.7).

    Attributes
    ----------
    kernel_coeffs : (n_basis, n_kernel_terms) spatial parameters per basis kernel (afw order);
        with a constant first term, row 0 is ``[a_0, 0, ..., 0]``.
    background_coeffs : (n_bg_terms,) background function parameters (``[0]`` when not fitted).
    condition : () eigenvalue condition number of the spatial system.
    status : () int32 status bits.
    n_used : () number of candidates in the fit.
    covariance : (nt, nt) inverse of the spatial normal matrix: the parameter covariance if the
        weights are inverse variances and the pixels independent (a lower bound otherwise).
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
    """Design matrix columns ``(B_k \\star T)`` over the good region of one stamp.

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
        hi = jax.lax.Precision.HIGHEST
        xpass = jnp.einsum("yx,rxc->ryc", template, ax, precision=hi)
        raw = jnp.einsum("rym,ryc->rmc", ay, xpass, precision=hi)  # (n_raw, gy, gx)
        cols = jnp.einsum("kr,rmc->mck", basis.transform, raw, precision=hi)
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
    """Zero a non-finite solution and combine the status bits."""
    finite_out = jnp.all(jnp.isfinite(sol))
    status = jnp.where(singular, STATUS_SINGULAR, STATUS_OK)
    status = status | jnp.where(finite_in & finite_out, 0, STATUS_NONFINITE)
    if max_condition is not None:
        status = status | jnp.where(condition > max_condition, STATUS_ILL_CONDITIONED, 0)
    return jnp.where(finite_out, sol, 0), status.astype(jnp.int32)


def solve_normal_equations(matrix, vector, *, max_condition=None, rcond=None, return_inverse=False):
    """Solve ``M a = b`` for a symmetric positive semi-definite ``M``, returning a status.

    Parameters
    ----------
    matrix : array, shape (n, n)
    vector : array, shape (n,)
    max_condition : float, optional
        Flag ``STATUS_ILL_CONDITIONED`` when ``lambda_max / lambda_min`` exceeds it (LSST
        ``checkConditionNumber`` / ``maxConditionNumber``; EIGENVALUE and SVD types coincide for a
        symmetric PSD matrix). The condition number is that of the Jacobi-scaled matrix (unit
        diagonal), i.e. independent of the units of the basis columns; LSST measures the unscaled
        matrix, whose condition number is larger by the spread of the column norms.
    rcond : float, optional
        Eigenvalues below ``rcond * lambda_max`` count as zero (default ``n * eps``, Eigen's
        FullPivLU rank threshold).

    return_inverse : bool, optional
        Also return the (pseudo-)inverse of ``M`` (from the same eigen-decomposition).

    Returns
    -------
    solution : array (n,)
    condition : array ()
    status : int32 array ()
    inverse : array (n, n), only with ``return_inverse``

    Notes
    -----
    The system is first scaled to a unit diagonal (Jacobi; the solution is unchanged, the
    conditioning much better in float32). Like LSST's ``KernelSolution::solve`` an invertible
    system is solved directly (LU) and a singular one with the eigen-decomposition pseudo-inverse;
    unlike LSST, eigenvalues below ``rcond * lambda_max`` are truncated (LSST divides by any non-zero eigenvalue, which amplifies
    rounding noise). The pseudo-inverse branch is evaluated with a stopped gradient on ``M`` so
    that gradients stay finite (double-``where`` pattern).
    """
    n = matrix.shape[-1]
    dtype = matrix.dtype
    if rcond is None:
        rcond = n * jnp.finfo(dtype).eps
    m_safe, v_safe, finite_in = _sanitize(matrix, vector)
    sym = 0.5 * (m_safe + m_safe.T)
    tiny = jnp.finfo(dtype).tiny
    # Jacobi scaling (unit diagonal) before solving: same solution, far better conditioned in float32
    diag = jnp.diagonal(sym)
    dpos = diag > 0
    d = jnp.where(dpos, 1.0 / jnp.sqrt(jnp.where(dpos, diag, 1.0)), 1.0)
    scaled = sym * d[:, None] * d[None, :]
    rhs = v_safe * d
    evals, evecs = jnp.linalg.eigh(jax.lax.stop_gradient(scaled))
    lmax = jnp.max(jnp.abs(evals))
    singular = ~(evals[0] > rcond * lmax)
    condition = jnp.where(evals[0] > 0, lmax / jnp.maximum(evals[0], tiny), jnp.inf)
    # direct solve on a well-posed copy (double where: the singular branch never feeds LU a singular matrix)
    direct_m = jnp.where(singular, jnp.eye(n, dtype=dtype), scaled)
    direct = jnp.linalg.solve(direct_m, rhs)
    keep = evals > rcond * lmax
    inv = jnp.where(keep, 1.0 / jnp.where(keep, evals, 1.0), 0.0)
    pinv = evecs @ (inv * (evecs.T @ rhs))
    sol = jnp.where(singular, pinv, direct) * d
    sol, status = _finish_status(sol, singular, finite_in, condition, max_condition)
    if return_inverse:
        # reuse the decomposition: XLA:CPU may run independent LAPACK calls concurrently, which
        # was seen to deadlock (jax 0.10.2), so no second factorisation is started here
        inverse = (evecs * inv[None, :]) @ evecs.T * d[:, None] * d[None, :]
        return sol, condition, status, inverse
    return sol, condition, status


def solve_triangular_system(r, z, *, max_condition=None, rcond=None, return_inverse=False):
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
        Flag ``STATUS_ILL_CONDITIONED`` when the condition number of ``M = R^T R`` (of the
        column-scaled system) exceeds it.
    rcond : float, optional
        Singular values of the scaled ``R`` below ``rcond * s_max`` count as zero (default
        ``n * eps``).
    return_inverse : bool, optional
        Also return ``(R^T R)^{-1}`` (the parameter covariance for unit-variance weights).

    Returns
    -------
    solution, condition, status[, inverse]
        ``condition`` is that of ``M = R^T R`` (the square of R's), as LSST reports it.
    """
    n = r.shape[-1]
    dtype = r.dtype
    if rcond is None:
        rcond = n * jnp.finfo(dtype).eps
    r, z, finite_in = _sanitize(r, z)
    norms = jnp.sqrt(jnp.sum(r * r, axis=0))
    dpos = norms > 0
    d = jnp.where(dpos, 1.0 / jnp.where(dpos, norms, 1.0), 1.0)
    rs = r * d[None, :]
    u, sv, vt = jnp.linalg.svd(jax.lax.stop_gradient(rs), full_matrices=False)
    smax = sv[0]
    smin = sv[-1]
    singular = ~(smin > rcond * smax)
    tiny = jnp.finfo(dtype).tiny
    ratio = smax / jnp.maximum(smin, tiny)
    condition = jnp.where(smin > 0, ratio * ratio, jnp.inf)
    safe_r = jnp.where(singular, jnp.eye(n, dtype=dtype), rs)
    direct = jax.scipy.linalg.solve_triangular(safe_r, z, lower=False)
    keep = sv > rcond * smax
    inv = jnp.where(keep, 1.0 / jnp.where(keep, sv, 1.0), 0.0)
    pinv = vt.T @ (inv * (u.T @ z))
    sol = jnp.where(singular, pinv, direct) * d
    sol, status = _finish_status(sol, singular, finite_in, condition, max_condition)
    if return_inverse:
        vi = jax.lax.stop_gradient(vt.T * inv[None, :])
        inverse = (vi @ vi.T) * d[:, None] * d[None, :]
        return sol, condition, status, inverse
    return sol, condition, status


def _householder_r(a):
    """``R`` of a QR factorisation by Householder reflections written in JAX (square ``(k, k)``).

    Written in XLA ops, no LAPACK: it vectorises across a ``vmap`` batch of small stamp systems and
    is also far faster than OpenBLAS geqrf on the tall spatial system here (0.03 s against 2.2 s
    for 7168 x 162 in float32 on 2 cores); starting no LAPACK call also avoids concurrent LAPACK
    calls (see :func:`solve_normal_equations`).
    Backward stable like geqrf; the signs of R's rows may differ from LAPACK's (irrelevant for
    ``R^T R`` and for least squares).
    """
    m, k = a.shape
    if m < k:
        a = jnp.concatenate([a, jnp.zeros((k - m, k), a.dtype)], axis=0)
        m = k
    rows = jnp.arange(m)

    def step(j, a):
        col = a[:, j]
        x = jnp.where(rows >= j, col, 0)
        normx = jnp.sqrt(jnp.sum(x * x))
        xj = col[j]
        alpha = -jnp.where(xj >= 0, 1.0, -1.0).astype(a.dtype) * normx
        v = x.at[j].add(-alpha)
        vn2 = jnp.sum(v * v)
        beta = jnp.where(vn2 > 0, 2.0 / jnp.where(vn2 > 0, vn2, 1.0), 0.0)
        w = jnp.matmul(v, a, precision=jax.lax.Precision.HIGHEST)
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
    """Solve the kernel (and background) of one stamp (spec section 4.4).

    Parameters
    ----------
    template, science : array, shape (S, S2)
        Stamps of the image to convolve (T) and the image matched to (I).
    template_variance, science_variance : array, shape (S, S2)
        Their variance planes.
    basis : FitBasis
    regularization : array, shape (k, n), optional
        A root ``L`` of the regularisation matrix ``H = L^T L`` (delta-function bases, spec
        4.2.4; :func:`regularization_root`): the fit minimises ``chi^2 + lambda a^T H a``, i.e.
        solves ``(M + lambda H) a = b``.
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
    hi = jax.lax.Precision.HIGHEST
    sw = jnp.sqrt(w)
    # QR of the weighted design with the target appended: R[:n, :n] is the factor, R[:n, n] = Q^T y
    aug = jnp.concatenate([cols * sw[:, None], (target * sw)[:, None]], axis=1)
    n = cols.shape[1]
    r_full = _householder_r(aug)
    r, z = r_full[:n, :n], r_full[:n, n]
    m = jnp.matmul(r.T, r, precision=hi)
    b = jnp.matmul(r.T, z, precision=hi)
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
    sol, cond, status = solve_triangular_system(r_solve, z_solve, max_condition=max_condition)
    status = status | jnp.where(bad_var, STATUS_BAD_VARIANCE, 0).astype(jnp.int32)
    nb = basis.n_basis
    coeffs = sol[:nb]
    bg = sol[nb] if fit_background else jnp.zeros((), dtype)
    kernel = jnp.tensordot(coeffs, basis.images, axes=1)
    return StampFit(coeffs, bg, jnp.sum(kernel), kernel, m, b, weight_variance, cond, status, r, z)


@functools.partial(
    jax.jit,
    static_argnames=("fit_background", "constant_variance", "max_condition", "reg_relative", "batch_size"),
)
def fit_stamps(templates, sciences, template_variances, science_variances, basis: FitBasis, regularization=None,
               reg_lambda=0.0, *, fit_background=False, constant_variance=True, max_condition=None,
               reg_relative=False, batch_size=None):
    """:func:`fit_stamp` for a batch of stamps (leading axis), one vmapped computation.

    ``batch_size`` (static) processes the stamps in vmapped chunks with ``lax.map`` to bound the
    memory of the intermediate design matrices (``None``: all at once).
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
    """Good-region difference ``D = I - K \\star T - bg`` and its variance ``V_I + K^2 \\star V_T``.

    Stamp-sized FFTs (no convolution primitive: a ``vmap`` over stamps with per-stamp kernels
    stays a batch of small FFTs).
    """
    hw = kernel.shape[0] // 2
    matched = _fft_correlate_valid(template, kernel)
    kvar = _fft_correlate_valid(template_variance, kernel * kernel)
    return _good(science, hw) - matched - background, _good(science_variance, hw) + kvar


def residual_stats(diff, var, usable, *, core_radius=None):
    """Mean and unbiased rms of ``z = D / sqrt(var)`` over usable pixels (spec section 4.5).

    ``usable`` pixels must also have a finite, positive ``1/var``; ``core_radius`` restricts the
    statistics to the central ``(2r + 1)^2`` box. With no usable pixel mean and rms are NaN.
    """
    if core_radius is not None:
        h, w = diff.shape
        r = int(core_radius)
        rows = jnp.arange(h)[:, None]
        cols = jnp.arange(w)[None, :]
        usable = usable & (jnp.abs(rows - h // 2) <= r) & (jnp.abs(cols - w // 2) <= r)
    ivar = 1.0 / jnp.where(var > 0, var, 1.0)
    ok = usable & (var > 0) & jnp.isfinite(var) & jnp.isfinite(diff)
    z = jnp.where(ok, diff * jnp.sqrt(ivar), 0)
    n = jnp.sum(ok)
    nf = n.astype(diff.dtype)
    mean = jnp.sum(z) / jnp.maximum(nf, 1)
    var_z = (jnp.sum(z * z) / jnp.maximum(nf, 1) - mean * mean) * nf / jnp.maximum(nf - 1, 1)
    mean = jnp.where(n > 0, mean, jnp.nan)
    rms = jnp.where(n > 1, jnp.sqrt(jnp.maximum(var_z, 0)), jnp.nan)
    return ResidualStats(mean, rms, n)


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
    """Static (row, col, source) triplets of the map A from the spatial unknowns to one stamp's unknowns.

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
    """Accumulate ``sum_c A_c^T M_c A_c`` and ``sum_c A_c^T b_c`` over valid candidates (spec 4.7).

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
    hi = jax.lax.Precision.HIGHEST
    # M_sp[u, v] = sum_c M_c[r_u, r_v] pf_c[s_u] pf_c[s_v]  (A_c^T M_c A_c without forming A_c)
    big = jnp.einsum("cij,ca,cb->iajb", mm, pf, pf, precision=hi)
    msp = big[r[:, None], s[:, None], r[None, :], s[None, :]]
    bsp = jnp.einsum("ci,ca->ia", vv, pf, precision=hi)[r, s]
    return msp, bsp


@functools.partial(
    jax.jit,
    static_argnames=("n_basis", "kernel_order", "bg_order", "fit_background", "constant_first_term", "model",
                     "xy_range", "max_condition"),
)
def solve_spatial(factors, rhs, x, y, valid, *, n_basis, kernel_order, bg_order, fit_background,
                  constant_first_term, model, xy_range, max_condition=None):
    """Spatial kernel and background solution from single-stamp QR factors (spec 4.7).

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
    ra = jnp.matmul(factors, jnp.asarray(sel, dtype), precision=jax.lax.Precision.HIGHEST)
    ra = ra * pf[:, s_idx][:, None, :]  # (N, n, nt): R_c A_c
    block = jnp.concatenate([ra, rhs[:, :, None]], axis=2)
    block = jnp.where(valid[:, None, None], block, 0)
    rr = _tsqr_r(block.reshape(-1, nt + 1))
    sol, cond, status, inverse = solve_triangular_system(rr[:nt, :nt], rr[:nt, nt], max_condition=max_condition,
                                                         return_inverse=True)
    if constant_first_term:
        first = jnp.zeros((1, n_kt), dtype).at[0, 0].set(sol[0])
        rest = sol[1 : 1 + (n_basis - 1) * n_kt].reshape(n_basis - 1, n_kt)
        kcoeffs = jnp.concatenate([first, rest], axis=0)
        off = 1 + (n_basis - 1) * n_kt
    else:
        kcoeffs = sol[: n_basis * n_kt].reshape(n_basis, n_kt)
        off = n_basis * n_kt
    bcoeffs = sol[off:] if fit_background else jnp.zeros((1,), dtype)
    n_used = jnp.sum(valid)
    status = status | jnp.where(n_used > 0, 0, STATUS_SINGULAR).astype(jnp.int32)
    cov = jnp.where((status & (STATUS_SINGULAR | STATUS_NONFINITE)) == 0, inverse, jnp.nan)
    return SpatialSolution(kcoeffs, bcoeffs, cond, status, n_used, cov)


def regularization_root(h):
    """A root ``L`` with ``L^T L = H`` of a symmetric PSD regularisation matrix (host, float64)."""
    h = np.asarray(h, np.float64)
    evals, evecs = np.linalg.eigh(0.5 * (h + h.T))
    keep = evals > evals.max() * h.shape[0] * np.finfo(np.float64).eps
    return (np.sqrt(evals[keep])[:, None] * evecs[:, keep].T)


def term_kernels(basis_images, kernel_coeffs):
    """Kernel of each spatial term: ``K_s = sum_k kernel_coeffs[k, s] B_k``, shape (n_terms, w, w)."""
    return jnp.einsum("ks,kji->sji", kernel_coeffs, basis_images, precision=jax.lax.Precision.HIGHEST)


def kernel_images_at(basis_images, kernel_coeffs, x, y, *, order, model, xy_range=None):
    """Kernel images of a spatial solution at positions ``(x, y)`` (any shape), shape ``x.shape + (w, w)``."""
    phi = spatial_basis(x, y, order, model=model, xy_range=xy_range)
    return jnp.einsum("...s,sji->...ji", phi, term_kernels(basis_images, kernel_coeffs),
                      precision=jax.lax.Precision.HIGHEST)


# ------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("size",))
def extract_stamps(image, corners, *, size):
    """Cut ``(N, size[0], size[1])`` stamps whose lower-left array corners are ``corners`` (N, 2) = (row, col)."""

    def one(c):
        return jax.lax.dynamic_slice(image, (c[0], c[1]), size)

    return jax.vmap(one)(corners)
