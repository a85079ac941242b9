"""One failure convention for the core: numerical failures are returned as a :class:`Status`.

The pure functions of :mod:`jaxdiff.core` never raise on data-dependent failures (they are traced,
and a batch of stamps may fail in some entries only).  Instead every result NamedTuple that can fail
carries a ``status`` field: an int32 array of :class:`Status` flags, 0 (``Status.successful``) when
nothing went wrong.  Flags combine with bitwise OR (a stamp may be both ``singular`` and
``bad_variance``), and each flag has a message that says how to fix the problem.  The task shell
turns statuses into typed exceptions or rejected candidates after the computation has finished,
like lineax's ``RESULTS`` / ``Solution.result``.

Static problems (wrong shapes, unknown modes) are still raised at trace time as ``ValueError``.
"""

import enum

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

__all__ = ["Status", "flag", "status_message"]


class Status(enum.IntFlag):
    """Failure flags of the core's results (combine with ``|``; 0 is success).

    Attributes
    ----------
    successful
        Nothing went wrong.
    bad_variance
        A variance used as a weight is zero, negative or not finite.
    singular
        The linear system is numerically rank-deficient; the minimum-norm (pseudo-inverse)
        solution was returned.
    nonfinite_input
        The inputs of a solve contain NaN or inf; the solve ran on a placeholder system and the
        solution was set to 0.
    ill_conditioned
        The condition number exceeds the requested maximum.
    no_valid_stamps
        No stamp (candidate) entered a fit that combines stamps.
    too_few_pixels
        Too few usable pixels for a statistic or fit.
    nonfinite_solution
        The solution of a finite system is not finite (overflow); it was set to 0.
    not_converged
        An iterative fit stopped at its iteration limit before its convergence test held.

    Examples
    --------
    >>> s = Status.singular | Status.bad_variance
    >>> bool(s & Status.singular), Status(0).name
    (True, 'successful')
    """

    successful = 0
    bad_variance = 1
    singular = 2
    nonfinite_input = 4
    ill_conditioned = 8
    no_valid_stamps = 16
    too_few_pixels = 32
    nonfinite_solution = 64
    not_converged = 128

    @property
    def message(self) -> str:
        """What went wrong and how to fix it (for a single flag or a combination)."""
        return status_message(int(self))


_MESSAGES = {
    Status.bad_variance: (
        "a variance used as weight is zero, negative or not finite, so inverse-variance weights are "
        "undefined; mask such pixels (badMaskPlanes) or give positive, finite variance planes"
    ),
    Status.singular: (
        "the normal equations are singular (numerically rank-deficient) and the minimum-norm "
        "pseudo-inverse solution was used; use fewer basis functions (lower degrees, fewer Gaussians), "
        "a lower spatial order, regularisation for delta-function bases, or stamps with more structure"
    ),
    Status.nonfinite_input: (
        "the inputs of the solve contain NaN or inf, so the solution was set to 0; mask or replace "
        "non-finite pixels (and their variances) before fitting"
    ),
    Status.ill_conditioned: (
        "the condition number exceeds maxConditionNumber; reduce the basis (fewer or lower-degree "
        "terms), use regularisation, or raise maxConditionNumber / turn checkConditionNumber off"
    ),
    Status.no_valid_stamps: (
        "no valid stamp entered the fit: every candidate was masked or rejected; supply more kernel "
        "candidates or relax the rejection limits (candidateResidualMeanMax/StdMax, maxKsumSigma)"
    ),
    Status.too_few_pixels: (
        "too few usable pixels for the statistic or fit; check the masks, enlarge the stamps, or lower "
        "the selection threshold"
    ),
    Status.nonfinite_solution: (
        "the solution is not finite (overflow) and was set to 0; rescale the images or compute in float64"
    ),
    Status.not_converged: (
        "the iterative fit reached its iteration limit before converging; raise n_iter, start closer "
        "to the solution (better initial parameters), or check that the model suits the data"
    ),
}


def flag(condition: Bool[ArrayLike, "..."], member: Status) -> Int[Array, "..."]:
    """Return ``member`` (int32) where ``condition`` holds and 0 elsewhere: ``status |= flag(...)``.

    Parameters
    ----------
    condition : bool array_like
        Where the failure occurred (traced).
    member : Status
        The flag to set.

    Returns
    -------
    jax.Array of int32, shape of ``condition``

    Examples
    --------
    >>> int(flag(jnp.array(True), Status.singular) | flag(jnp.array(False), Status.bad_variance))
    2
    """
    return jnp.where(condition, jnp.int32(int(member)), jnp.int32(0))


def _one(code: int) -> str:
    if code == 0:
        return "successful"
    parts = [msg for member, msg in _MESSAGES.items() if code & member]
    unknown = code & ~sum(int(m) for m in _MESSAGES)
    if unknown:
        parts.append(f"unknown status bits {unknown:#x}")
    return "; ".join(parts)


def status_message(status) -> str:
    """Human-readable message of a status (scalar or array; host side, not for use under ``jit``).

    Parameters
    ----------
    status : Status, int or array_like of int
        A status scalar, or the status array of a batch of results.

    Returns
    -------
    str
        For a scalar: ``"successful"`` or the messages of its flags joined by ``"; "``.  For an
        array: ``"successful"`` when every entry is 0, else one ``"<count> of <n>: <flag message>"``
        line per flag that occurs.

    Examples
    --------
    >>> status_message(0)
    'successful'
    >>> status_message(np.array([0, 2, 2])).startswith("2 of 3: the normal equations are singular")
    True
    """
    codes = np.asarray(status).astype(np.int64)
    if codes.ndim == 0:
        return _one(int(codes))
    codes = codes.ravel()
    if not np.any(codes):
        return "successful"
    lines = []
    for member, msg in _MESSAGES.items():
        count = int(np.count_nonzero(codes & int(member)))
        if count:
            lines.append(f"{count} of {codes.size}: {msg}")
    unknown = np.bitwise_or.reduce(codes & ~sum(int(m) for m in _MESSAGES))
    if unknown:
        lines.append(f"unknown status bits {int(unknown):#x}")
    return "\n".join(lines)
