"""Small nonlinear least-squares fits: Levenberg–Marquardt, or any optax optimiser, with Hessian errors.

Written for one problem (one star stamp, one parameter vector) and ``vmap``-ped over many: fixed
iteration counts (``lax.scan``), no Python loops over data, no host transfers, a fixed-arity
:class:`FitResult` whose ``status`` follows the core's failure convention
(:class:`jaxdiff.core._results.Status`).

The objective is ``chi² = sum(r(p)²)`` of a weighted residual vector ``r`` (e.g.
``(data - model) / sigma``).  Errors are those of the Gauss–Newton Hessian at the solution:
``C = (J^T J)^-1`` with ``J = dr/dp`` (the inverse of half the Hessian of chi²; Press et al.,
*Numerical Recipes*, 3rd ed., sec. 15.5), which is the parameter covariance when the residuals
are normalised by their true standard deviations.

Convergence test: the Gauss–Newton decrement ``g^T C g`` (``g = J^T r``), the chi² decrease that
one more Newton step would give, equivalently the squared length of that step in units of the
parameter errors, must be below ``tol`` (:func:`default_tol`: 1e-6 in float64, 1e-4 in float32)
at the end; else ``Status.not_converged``.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._numerics import PRECISION
from .._results import Status, flag

__all__ = ["FitResult", "default_tol", "fit_result_at", "levenberg_marquardt", "minimize_optax"]


def default_tol(dtype) -> float:
    """Default convergence threshold on the Gauss–Newton decrement: 1e-6 (float64), 1e-4 (float32).

    The decrement is the squared Newton step in units of the parameter errors; float32 sums of a
    few hundred chi² terms round at about 1e-5 of chi², which sets its floor there.
    """
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-4


class FitResult(NamedTuple):
    """Result of a least-squares fit (a NamedTuple, hence a pytree; batched under ``vmap``).

    Attributes
    ----------
    params : (P,)
        Best-fit parameters.
    errors : (P,)
        Standard errors ``sqrt(diag(covariance))`` (inf where the Hessian is singular).
    covariance : (P, P)
        ``(J^T J)^-1`` at ``params``.
    chi2 : ()
        ``sum(r²)`` at ``params``.
    dof : () int32
        Residuals with non-zero weight minus the number of parameters.
    loss_history : (n_iter,)
        chi² after each iteration (Levenberg–Marquardt: of the accepted parameters; after an
        early stop the final value repeats).
    decrement : ()
        Gauss–Newton decrement ``g^T C g`` at ``params`` (the convergence measure).
    status : () int32
        :class:`~jaxdiff.core._results.Status` flags: ``not_converged``, ``singular``,
        ``too_few_pixels``, ``nonfinite_input``.
    """

    params: Float[Array, " P"]
    errors: Float[Array, " P"]
    covariance: Float[Array, "P P"]
    chi2: Float[Array, ""]
    dof: Int[Array, ""]
    loss_history: Float[Array, " n"]
    decrement: Float[Array, ""]
    status: Int[Array, ""]


def _gn_system(residual_fn, p):
    r = residual_fn(p).reshape(-1)
    jac = jax.jacfwd(lambda q: residual_fn(q).reshape(-1))(p)
    mm = functools.partial(jnp.matmul, precision=PRECISION)
    return r, mm(jac.T, r), mm(jac.T, jac)


def fit_result_at(
    residual_fn: Callable[[Array], Array], params: Float[ArrayLike, " P"], loss_history: Float[ArrayLike, " n"], *,
    n_data: Int[ArrayLike, ""] | None = None, tol: float | None = None,
) -> FitResult:  # fmt: skip
    """Return the :class:`FitResult` of ``residual_fn`` at ``params`` (errors, chi², status).

    Parameters
    ----------
    residual_fn : callable
        ``p -> r``, the weighted residuals (any shape).
    params : array_like, shape (P,)
        The solution.
    loss_history : array_like
        The fit's loss per iteration (stored as given).
    n_data : int, optional, keyword-only
        Number of residuals that carry weight (default: all of them), for ``dof``.
    tol : float, optional, keyword-only
        Convergence threshold on the Gauss–Newton decrement; default :func:`default_tol`.

    Returns
    -------
    FitResult
    """
    p = jnp.asarray(params)
    tol = default_tol(p.dtype) if tol is None else tol
    r, g, h = _gn_system(residual_fn, p)
    n_par = p.shape[0]
    finite_in = jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(h))
    h_safe = jnp.where(finite_in, h, jnp.eye(n_par, dtype=h.dtype))
    cov = jnp.linalg.inv(h_safe)
    diag = jnp.diagonal(cov)
    ok = finite_in & jnp.all(jnp.isfinite(cov)) & jnp.all(diag > 0)
    cov = jnp.where(ok, cov, jnp.inf)
    errors = jnp.where(ok, jnp.sqrt(jnp.where(ok, diag, 1)), jnp.inf)
    dec = jnp.where(ok, jnp.sum(g * jnp.sum(jnp.where(ok, cov, 0) * g[None, :], axis=1)), jnp.inf)  # g^T C g
    n = r.shape[0] if n_data is None else n_data
    dof = (jnp.asarray(n) - n_par).astype(jnp.int32)
    status = (flag(~finite_in, Status.nonfinite_input) | flag(finite_in & ~ok, Status.singular)
              | flag(ok & ~(dec <= tol), Status.not_converged) | flag(dof < 1, Status.too_few_pixels))  # fmt: skip
    return FitResult(p, errors, cov, jnp.sum(r * r), dof, jnp.asarray(loss_history), dec, status)


def levenberg_marquardt(
    residual_fn: Callable[[Array], Array],
    p0: Float[ArrayLike, " P"],
    *,
    n_iter: int = 50,
    damping: float = 1e-3,
    n_data: Int[ArrayLike, ""] | None = None,
    tol: float | None = None,
) -> FitResult:
    """Minimise ``sum(residual_fn(p)²)`` by damped Gauss–Newton (Levenberg–Marquardt).

    Each iteration solves ``(J^T J + lambda diag(J^T J)) delta = -J^T r`` (Marquardt 1963), accepts
    the step when chi² does not increase (then ``lambda /= 3``) and otherwise keeps the parameters
    and doubles ``lambda``.  Stops after an accepted step whose predicted chi² decrease is below
    ``tol / 10``, or after ``n_iter`` iterations (static); under ``vmap`` the batch runs until
    every member has stopped (members that stopped keep their values).

    Parameters
    ----------
    residual_fn : callable
        ``p -> r`` (any shape), weighted residuals; traced.
    p0 : array_like, shape (P,)
        Starting parameters.
    n_iter : int, keyword-only
        Iterations (static).
    damping : float, keyword-only
        Initial ``lambda``.
    n_data : int, optional, keyword-only
        Number of residuals with non-zero weight (for ``dof``; default all).
    tol : float, optional, keyword-only
        Convergence threshold on the Gauss–Newton decrement (see the module docstring); default
        :func:`default_tol`.

    Returns
    -------
    FitResult
    """
    p0 = jnp.asarray(p0)
    dtype = p0.dtype
    n_par = p0.shape[0]
    eye = jnp.eye(n_par, dtype=dtype)
    tiny = jnp.finfo(dtype).tiny ** 0.5

    def chi2_of(p):
        r = residual_fn(p)
        return jnp.sum(r * r)

    stop = 0.1 * (default_tol(dtype) if tol is None else tol)

    def step(carry):
        i, p, lam, chi2, history, _ = carry
        _, g, h = _gn_system(residual_fn, p)
        a = h + lam * jnp.diag(jnp.diagonal(h)) + tiny * eye
        delta = -jnp.linalg.solve(a, g)
        p_new = p + delta
        chi2_new = chi2_of(p_new)
        accept = jnp.isfinite(chi2_new) & (chi2_new <= chi2) & jnp.all(jnp.isfinite(p_new))
        # predicted chi2 decrease of the step (2 g.delta + delta.H.delta, with g = J^T r): tiny -> done
        predicted = -(2 * jnp.sum(g * delta) + jnp.sum(delta * jnp.sum(h * delta[None, :], axis=1)))
        done = accept & (predicted < stop)
        p = jnp.where(accept, p_new, p)
        chi2 = jnp.where(accept, chi2_new, chi2)
        lam = jnp.clip(jnp.where(accept, lam / 3, lam * 2), 1e-12, 1e12)
        history = history.at[i].set(chi2)
        return i + 1, p, lam, chi2, history, done

    def cond(carry):
        i, *_, done = carry
        return (i < n_iter) & ~done

    chi2_0 = chi2_of(p0)
    init = (jnp.int32(0), p0, jnp.asarray(damping, dtype), chi2_0, jnp.zeros(n_iter, chi2_0.dtype),
            jnp.asarray(False))  # fmt: skip
    n_done, p, _, chi2, history, _ = jax.lax.while_loop(cond, step, init)
    history = jnp.where(jnp.arange(n_iter) < n_done, history, chi2)  # converged early: the final value
    return fit_result_at(residual_fn, p, history, n_data=n_data, tol=tol)


def minimize_optax(
    residual_fn: Callable[[Array], Array],
    p0: Float[ArrayLike, " P"],
    optimizer,
    *,
    n_iter: int = 500,
    n_data: Int[ArrayLike, ""] | None = None,
    tol: float | None = None,
) -> FitResult:
    """Minimise ``sum(residual_fn(p)²)`` with an ``optax.GradientTransformation``.

    ``n_iter`` gradient steps in a ``lax.scan`` (static); the errors and the convergence test are
    those of :func:`fit_result_at` at the final parameters.

    Parameters
    ----------
    residual_fn : callable
        ``p -> r``, weighted residuals.
    p0 : array_like, shape (P,)
        Starting parameters.
    optimizer : optax.GradientTransformation
        E.g. ``optax.adam(0.1)``.  The parameters are optimised in units of their Gauss–Newton
        errors at ``p0`` (``p = p0 + sigma0 * z``), so the learning rate is in those units.
    n_iter : int, keyword-only
        Steps (static).
    n_data, tol : keyword-only
        As in :func:`levenberg_marquardt`.

    Returns
    -------
    FitResult
    """
    import optax

    p0 = jnp.asarray(p0)
    # optimise z with p = p0 + scale * z, scale = the Gauss-Newton errors at p0, so that one
    # learning rate suits parameters of any units (flux in e-, centroids in pixels, ...)
    _, _, h0 = _gn_system(residual_fn, p0)
    d0 = jnp.diagonal(h0)
    good = jnp.isfinite(d0) & (d0 > 0)
    scale = jnp.where(good, jax.lax.rsqrt(jnp.where(good, d0, 1)), 1)

    def loss(z):
        r = residual_fn(p0 + scale * z)
        return jnp.sum(r * r)

    def step(carry, _):
        z, state = carry
        value, grad = jax.value_and_grad(loss)(z)
        updates, state = optimizer.update(grad, state, z)
        return (optax.apply_updates(z, updates), state), value

    z0 = jnp.zeros_like(p0)
    (z, _), history = jax.lax.scan(step, (z0, optimizer.init(z0)), None, length=n_iter)
    return fit_result_at(residual_fn, p0 + scale * z, history, n_data=n_data, tol=tol)
