"""Differentiable analytic PSF stamps (used by tests, examples and gradient-based fits)."""

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["gaussian_psf_image"]


def gaussian_psf_image(
    sigma: Float[ArrayLike, ""], shape: Sequence[int], *, dtype: jnp.dtype | None = None
) -> Float[Array, "Kh Kw"]:
    """Circular Gaussian PSF stamp sampled at pixel centres and normalised to sum 1.

    ``psf[i, j] ∝ exp(-((i - Kh // 2)**2 + (j - Kw // 2)**2) / (2 sigma**2))``, i.e. the
    centre pixel is ``(Kh // 2, Kw // 2)``, the convention of ip_diffim PSF kernel images
    and of ``makeFakeImages`` in ip_diffim's ZOGY tests.

    Parameters
    ----------
    sigma : float or 0-d array
        Gaussian width in pixels (> 0).  Traced: the stamp is differentiable in ``sigma``.
    shape : (int, int)
        Stamp shape ``(Kh, Kw)`` (static).
    dtype : dtype, optional
        Floating dtype of the result; default: that of ``sigma`` if it is a floating array,
        else JAX's default float dtype (float64 only with ``jax_enable_x64``).

    Returns
    -------
    jax.Array, shape (Kh, Kw)
        The normalised stamp.

    Notes
    -----
    **JAX**: ``shape`` and ``dtype`` are static (a new shape retraces an enclosing jit);
    the output is differentiable with respect to ``sigma``.

    Examples
    --------
    >>> psf = gaussian_psf_image(1.5, (7, 9))
    >>> psf.shape, bool(jnp.isclose(psf.sum(), 1.0)), int(psf.argmax())
    ((7, 9), True, 31)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        msg = f"shape must be two positive ints, got {shape}"
        raise ValueError(msg)
    if dtype is None:
        dt = jnp.result_type(sigma)
        dtype = dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)
    sigma = jnp.asarray(sigma, dtype)
    y = jnp.arange(shape[0], dtype=dtype) - shape[0] // 2
    x = jnp.arange(shape[1], dtype=dtype) - shape[1] // 2
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    g = jnp.exp(-r2 / (2 * sigma**2))
    return g / jnp.sum(g)
