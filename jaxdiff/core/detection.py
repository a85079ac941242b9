"""Peak detection on score images (fixed-size output, jit-compatible)."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Peaks", "find_peaks", "peaks_to_table"]


class Peaks(NamedTuple):
    """Up to ``max_peaks`` local maxima, strongest first; ``valid`` marks the real entries."""

    x: jax.Array
    y: jax.Array
    value: jax.Array
    valid: jax.Array


@functools.partial(jax.jit, static_argnames=("max_peaks", "footprint"))
def find_peaks(image, threshold, valid=None, *, max_peaks=100, footprint=5):
    """Find the local maxima of ``image`` above ``threshold``, strongest first.

    Parameters
    ----------
    image : array, shape (H, W)
        E.g. S_corr (use ``-image`` for negative, fading sources).
    threshold : float
        Minimum peak value (e.g. 5 for 5 sigma in S_corr).
    valid : bool array, shape (H, W), optional
        Pixels allowed to host a peak (e.g. not masked).
    max_peaks : int, keyword-only
        Fixed output size (static); extra peaks beyond it are dropped, strongest kept.
    footprint : int, keyword-only
        Side of the square window within which a peak must be the maximum (static, odd).

    Returns
    -------
    Peaks
        ``x`` (column), ``y`` (row) array indices, ``value`` and ``valid``, sorted by value.

    Notes
    -----
    A pixel is a peak when it equals the maximum of the ``footprint x footprint`` window centred on
    it (pixels outside the image and non-finite pixels count as ``-inf``), exceeds ``threshold``
    and is ``valid``.  Ties (a flat plateau) give a peak at every tied pixel.

    JAX: ``max_peaks`` and ``footprint`` are static; one compilation per image shape, dtype and
    static pair.  The output has the fixed length ``min(max_peaks, H * W)``, with ``valid`` False
    (and ``value = -inf``) for the unused entries.  Not differentiable (an arg-max).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> img = jnp.zeros((7, 7)).at[2, 5].set(3.0).at[4, 1].set(9.0)
    >>> p = find_peaks(img, 1.0, max_peaks=3)
    >>> [(int(x), int(y)) for x, y, ok in zip(p.x, p.y, p.valid, strict=True) if ok]
    [(1, 4), (5, 2)]
    """
    image = jnp.asarray(image)
    finite = jnp.isfinite(image)
    img = jnp.where(finite, image, -jnp.inf)
    local_max = jax.lax.reduce_window(img, -jnp.inf, jax.lax.max, (footprint, footprint), (1, 1), "SAME")
    is_peak = (img == local_max) & (img > threshold) & finite
    if valid is not None:
        is_peak = is_peak & valid
    score = jnp.where(is_peak, img, -jnp.inf).ravel()
    k = min(max_peaks, score.size)
    values, idx = jax.lax.top_k(score, k)
    y, x = jnp.divmod(idx, image.shape[1])
    return Peaks(x=x, y=y, value=values, valid=jnp.isfinite(values))


def peaks_to_table(peaks, *, sign=1):
    """Return the valid peaks as a host-side list of dicts ``{"x", "y", "value"}``.

    Parameters
    ----------
    peaks : Peaks
        Output of :func:`find_peaks`.
    sign : int, keyword-only
        Factor applied to the values (``-1`` for peaks found on ``-image``).

    Returns
    -------
    list of dict
        ``x`` and ``y`` as Python ints (array indices), ``value`` as a float times ``sign``, in
        the order of ``peaks`` (strongest first).
    """
    p = jax.device_get(peaks)
    keep = np.asarray(p.valid)
    return [
        {"x": int(x), "y": int(y), "value": float(v) * sign}
        for x, y, v in zip(np.asarray(p.x)[keep], np.asarray(p.y)[keep], np.asarray(p.value)[keep], strict=True)
    ]
