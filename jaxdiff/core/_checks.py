"""Argument validators shared by the core's public functions (static, outside ``jit``).

Every validator raises :class:`ValueError` with a message that names the argument and says what
is wrong with it; the ones that convert return the converted value.  They look at shapes,
dtypes and Python values only, never at array contents, so they work on tracers too.

* dtypes: :func:`float_array` (float32/float64 only, or cast to a given dtype),
  :func:`working_dtype` (the float dtype of a computation, integers promote);
* shapes: :func:`check_2d`, :func:`check_shape`, :func:`check_scalar`,
  :func:`check_scalar_or_shape`, :func:`check_odd_stamp`, :func:`check_fft_shape`;
* options: :func:`check_choice`.

This module imports nothing else of jaxdiff but :mod:`jaxdiff.core._numerics`.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ._numerics import float_dtype

__all__ = [
    "check_2d",
    "check_choice",
    "check_fft_shape",
    "check_odd_stamp",
    "check_scalar",
    "check_scalar_or_shape",
    "check_shape",
    "float_array",
    "working_dtype",
]


def float_array(a, name: str, dtype=None):
    """Return ``a`` as a jax array of a floating dtype, rejecting integer and other dtypes.

    Parameters
    ----------
    a : array_like
        The argument.
    name : str
        Its name, for the error message.
    dtype : dtype-like, optional
        ``None``: ``a`` must be float32 or float64 and keeps its dtype.  Otherwise ``a`` may be of
        any floating dtype and is cast to ``dtype``.

    Returns
    -------
    jax.Array

    Raises
    ------
    ValueError
        If ``a`` is not float32/float64 (``dtype=None``) or not floating (``dtype`` given).

    Examples
    --------
    >>> float_array(np.ones(2, np.float16), "kernel", np.float32).dtype
    dtype('float32')
    """
    a = jnp.asarray(a)
    if dtype is None and a.dtype not in (jnp.float32, jnp.float64):
        msg = (
            f"{name} must be float32 or float64, got dtype {a.dtype}; "
            f"convert it first, e.g. {name}.astype(np.float32)"
        )
        raise ValueError(msg)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        msg = f"{name} must be a floating-point array, got dtype {a.dtype}; convert it first with .astype()"
        raise ValueError(msg)
    return a if dtype is None else a.astype(dtype)


def working_dtype(a, name: str) -> np.dtype:
    """Return :func:`~jaxdiff.core._numerics.float_dtype` of ``a``, with an error naming ``name``.

    Integer and boolean inputs promote to JAX's default float; float16, bfloat16 and complex
    inputs are rejected.

    Parameters
    ----------
    a : array_like
        The argument that sets the dtype of the computation.
    name : str
        Its name, for the error message.

    Returns
    -------
    numpy.dtype
        ``float32`` or ``float64``.

    Raises
    ------
    ValueError
        For other floating or complex dtypes.

    Examples
    --------
    >>> working_dtype(np.ones(2, np.float32), "image")
    dtype('float32')
    """
    try:
        return float_dtype(a)
    except ValueError:
        msg = f"{name} must be float32 or float64, got dtype {jnp.result_type(a)}; convert it with .astype"
        raise ValueError(msg) from None


def check_2d(a, name: str, what: str = "(H, W)") -> None:
    """Require a 2-D array (batches go through ``jax.vmap``).

    Parameters
    ----------
    a : array
        The argument (anything with ``ndim`` and ``shape``).
    name : str
        Its name, for the error message.
    what : str
        The expected layout, e.g. ``"(H, W)"`` or ``"(Kh, Kw)"``.

    Raises
    ------
    ValueError
        If ``a.ndim != 2``; the message points to ``jax.vmap`` for stacks.
    """
    if a.ndim != 2:
        msg = (
            f"{name} must be 2-D {what}, got shape {a.shape}; "
            "for stacks of images or kernels use jax.vmap over the leading axis"
        )
        raise ValueError(msg)


def check_shape(a, name: str, shape: Sequence[int], other: str = "image") -> None:
    """Require ``a.shape == shape``, the shape of another argument (by default the image).

    Parameters
    ----------
    a : array
        The argument.
    name : str
        Its name, for the error message.
    shape : sequence of int
        The required shape.
    other : str
        What ``shape`` is the shape of, for the error message.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    shape = tuple(shape)
    if a.shape != shape:
        msg = f"{name} shape {a.shape} must equal the {other} shape {shape}"
        raise ValueError(msg)


def check_scalar(a, name: str) -> None:
    """Require a 0-d array.

    Parameters
    ----------
    a : array
        The argument.
    name : str
        Its name, for the error message.

    Raises
    ------
    ValueError
        If ``a.ndim != 0``.
    """
    if a.ndim != 0:
        msg = f"{name} must be a scalar, got shape {a.shape}"
        raise ValueError(msg)


def check_scalar_or_shape(a, name: str, shape: Sequence[int]) -> None:
    """Require a 0-d array or one of the image shape.

    Parameters
    ----------
    a : array
        The argument (e.g. a variance: a constant or a plane).
    name : str
        Its name, for the error message.
    shape : tuple of int
        The image shape.

    Raises
    ------
    ValueError
        For any other shape.
    """
    if a.shape not in ((), shape):
        msg = f"{name} must be a scalar or have the image shape {shape}, got {a.shape}"
        raise ValueError(msg)


def check_odd_stamp(a, name: str, max_shape: Sequence[int] | None = None) -> None:
    """Require a 2-D, odd-sized stamp (PSF or kernel image), optionally no larger than the image.

    Parameters
    ----------
    a : array
        The stamp.
    name : str
        Its name, for the error message.
    max_shape : (int, int), optional
        The image shape, an upper bound per axis.

    Raises
    ------
    ValueError
        If ``a`` is not 2-D, has an even size or is larger than ``max_shape``.
    """
    if a.ndim != 2 or any(n % 2 == 0 for n in a.shape):
        msg = f"{name} must be a 2-D odd-sized stamp, got shape {a.shape}"
        raise ValueError(msg)
    if max_shape is not None and any(n > m for n, m in zip(a.shape, max_shape, strict=True)):
        msg = f"{name} of shape {a.shape} is larger than the image {tuple(max_shape)}"
        raise ValueError(msg)


def check_fft_shape(fft_shape: Sequence[int], min_shape: Sequence[int], what: str = "") -> tuple[int, int]:
    """Return ``fft_shape`` as two Python ints, each at least ``min_shape`` (static).

    Parameters
    ----------
    fft_shape : sequence of int
        The DFT grid.
    min_shape : sequence of int
        The smallest allowed grid.
    what : str
        What ``min_shape`` is, for the error message (e.g. ``"image shape"``).

    Returns
    -------
    (int, int)

    Raises
    ------
    ValueError
        If ``fft_shape`` does not have two entries or is smaller than ``min_shape``.

    Examples
    --------
    >>> check_fft_shape(np.array([64, 72]), (60, 60))
    (64, 72)
    """
    fft_shape = tuple(int(s) for s in fft_shape)
    if len(fft_shape) != 2 or any(f < n for f, n in zip(fft_shape, min_shape, strict=True)):
        bound = f"the {what} {tuple(min_shape)}" if what else f"{tuple(min_shape)}"
        msg = f"fft_shape must be two ints >= {bound}, got {fft_shape}"
        raise ValueError(msg)
    return fft_shape


def check_choice(value, name: str, choices: Sequence) -> None:
    """Require one of a fixed set of option values.

    Parameters
    ----------
    value : object
        The argument.
    name : str
        Its name, for the error message.
    choices : tuple
        The accepted values.

    Raises
    ------
    ValueError
        If ``value not in choices``.
    """
    if value not in choices:
        msg = f"{name} must be one of {choices}, got {value!r}"
        raise ValueError(msg)
