"""Numerical conventions shared by the core: matmul precision, guarded divisions, dtypes.

* :data:`PRECISION` is passed to every matrix product, ``einsum`` and convolution that builds
  normal equations, applies a basis or forms a solver product.  On GPUs with TF32 (and on TPUs)
  the default precision of float32 products is reduced, which silently degrades least-squares fits.
* :func:`safe_divide` and :func:`safe_rsqrt` use the double-``where`` pattern: the operation
  itself only ever sees safe operands, so the values *and* the gradients stay finite where the
  denominator vanishes.  A single ``where`` after the division is not enough, because the
  gradient of the branch that is not selected is still evaluated (``0 * inf = nan``).
* :func:`float_dtype` and :func:`complex_dtype` resolve the dtype of a computation;
  :func:`result_float_dtype` is the permissive variant (any floating dtype is kept).

This module imports nothing else of jaxdiff.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool

__all__ = [
    "PRECISION",
    "complex_dtype",
    "float_dtype",
    "result_float_dtype",
    "safe_divide",
    "safe_rsqrt",
    "tiny",
]

#: Precision of every matrix product that builds normal equations, applies a basis or forms a
#: solver product in :mod:`jaxdiff.core`.
PRECISION = jax.lax.Precision.HIGHEST

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def tiny(dtype) -> float:
    """Return ``100 * finfo(dtype).tiny``, the threshold below which a denominator counts as zero.

    Parameters
    ----------
    dtype : dtype-like
        A floating (or complex) dtype.

    Returns
    -------
    float

    Examples
    --------
    >>> tiny(np.float32) == 100 * float(np.finfo(np.float32).tiny)
    True
    """
    return 100 * float(jnp.finfo(dtype).tiny)


def safe_divide(
    a: ArrayLike, b: ArrayLike, *, fill: ArrayLike = 0, where: Bool[ArrayLike, "..."] | None = None
) -> Array:
    """Compute ``a / b`` where the division is well defined and ``fill`` elsewhere.

    Parameters
    ----------
    a, b : array_like
        Numerator and denominator (broadcast together).
    fill : scalar or array_like, keyword-only
        Value where the division is not performed.
    where : bool array_like, optional, keyword-only
        Where to divide.  Default ``|b| > tiny(dtype)`` (:func:`tiny`).

    Returns
    -------
    jax.Array
        ``a / b`` where ``where`` holds, ``fill`` elsewhere; the dtype of ``a / b``.

    Notes
    -----
    Double ``where``: ``a`` and ``b`` are replaced by 0 and 1 outside ``where`` *before* the
    division, so neither the value nor the gradient with respect to ``a`` or ``b`` is NaN or
    infinite there (the gradient is 0 outside ``where``).

    **JAX.** Element-wise; differentiable in ``a``, ``b`` and ``fill``; works under ``jit`` and
    ``vmap``.

    Examples
    --------
    >>> safe_divide(jnp.array([1.0, 2.0]), jnp.array([2.0, 0.0]), fill=-1.0).tolist()
    [0.5, -1.0]
    >>> float(jax.grad(lambda b: safe_divide(1.0, b))(0.0))
    0.0
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    dtype = jnp.result_type(a, b, float)
    ok = jnp.abs(b) > tiny(dtype) if where is None else jnp.asarray(where, bool)
    a_safe = jnp.where(ok, a, 0)
    b_safe = jnp.where(ok, b, 1)
    return jnp.where(ok, a_safe / b_safe, jnp.asarray(fill, dtype))


def safe_rsqrt(x: ArrayLike, *, fill: ArrayLike = 0, where: Bool[ArrayLike, "..."] | None = None) -> Array:
    """Compute ``1 / sqrt(x)`` where it is well defined and ``fill`` elsewhere.

    Parameters
    ----------
    x : array_like
        Real input.
    fill : scalar or array_like, keyword-only
        Value where the reciprocal square root is not taken.
    where : bool array_like, optional, keyword-only
        Where to evaluate it.  Default ``x > tiny(dtype)`` (:func:`tiny`).

    Returns
    -------
    jax.Array

    Notes
    -----
    Double ``where``: ``x`` is replaced by 1 outside ``where`` before ``lax.rsqrt``, so values and
    gradients are finite everywhere (the gradient is 0 outside ``where``).

    **JAX.** Element-wise; differentiable; works under ``jit`` and ``vmap``.

    Examples
    --------
    >>> safe_rsqrt(jnp.array([4.0, 0.0, -1.0])).tolist()
    [0.5, 0.0, 0.0]
    """
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, float)
    x = x.astype(dtype)
    ok = x > tiny(dtype) if where is None else jnp.asarray(where, bool)
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, x, 1)), jnp.asarray(fill, dtype))


def float_dtype(*arrays) -> np.dtype:
    """Return the float dtype of a computation on ``arrays`` (float32 or float64).

    Integer and boolean inputs promote to JAX's default float (float64 with x64 enabled, float32
    otherwise); float64 inputs become float32 when x64 is disabled, as :func:`jax.numpy.asarray`
    does.

    Parameters
    ----------
    *arrays : array_like or dtype
        Inputs of the computation.

    Returns
    -------
    numpy.dtype
        ``float32`` or ``float64``.

    Raises
    ------
    ValueError
        If the inputs promote to another floating type (float16, bfloat16) or to a complex type.

    Examples
    --------
    >>> float_dtype(np.ones(3, np.float32), 2)
    dtype('float32')
    """
    dtype = jnp.result_type(*arrays) if arrays else jnp.result_type(float)
    if jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        dtype = jnp.result_type(float)
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS:
        msg = f"jaxdiff computes in float32 or float64, got inputs of dtype {dtype}; convert them with .astype"
        raise ValueError(msg)
    return dtype


def result_float_dtype(*arrays) -> np.dtype:
    """Return the promoted dtype of ``arrays`` if it is floating, else JAX's default float.

    Unlike :func:`float_dtype` nothing is rejected: float16 and bfloat16 are kept, and integer,
    boolean *and complex* inputs give the default float (float64 with x64 enabled, float32
    otherwise).  Callers that only support float32 and float64 check the result themselves.

    Parameters
    ----------
    *arrays : array_like or dtype
        Inputs of the computation (at least one).

    Returns
    -------
    numpy.dtype

    Examples
    --------
    >>> result_float_dtype(np.ones(3, np.float16)), result_float_dtype(np.ones(3, np.int32)) == jnp.result_type(float)
    (dtype('float16'), True)
    """
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def complex_dtype(dtype) -> np.dtype:
    """Return the complex dtype matching a float dtype (float32 -> complex64, float64 -> complex128).

    Parameters
    ----------
    dtype : dtype-like
        float32, float64 or an already complex dtype.

    Returns
    -------
    numpy.dtype

    Raises
    ------
    ValueError
        For other dtypes.

    Examples
    --------
    >>> complex_dtype(np.float32), complex_dtype(np.float64)
    (dtype('complex64'), dtype('complex128'))
    """
    dtype = np.dtype(dtype)
    table = {
        np.dtype(np.float32): np.dtype(np.complex64),
        np.dtype(np.float64): np.dtype(np.complex128),
        np.dtype(np.complex64): np.dtype(np.complex64),
        np.dtype(np.complex128): np.dtype(np.complex128),
    }
    if dtype not in table:
        msg = f"no complex counterpart for dtype {dtype}; use float32 or float64"
        raise ValueError(msg)
    return table[dtype]
