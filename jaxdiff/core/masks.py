"""Mask growth: bitwise OR of an integer bit-plane mask over a kernel footprint.

:func:`grow_mask` is afw's mask propagation through a convolution: every output pixel gets the OR
of the mask bits under the non-zero pixels of the kernel (the footprint), with the kernel centre
``K // 2`` and no kernel flip (afw's correlation convention, :mod:`jaxdiff.core.convolve_fixed`).
Box footprints take a separable window-doubling path, other footprints a row-by-row one.
Re-exported by :mod:`jaxdiff.core.convolve`.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Int

from ._checks import check_2d, check_shape
from .convolve_fixed import _band, good_box_slices

__all__ = ["grow_mask"]


def _or_window(a, before, after, axis):
    """``out[x] = OR_{u=-before}^{after} a[x + u]`` along ``axis`` (zeros outside), by doubling.

    ``ceil(log2(width))`` passes instead of ``width``: windows of width 1, 2, 4, ... are built by
    OR-ing shifted copies, and the final window is the OR of two overlapping power-of-two windows.
    """
    n, w = a.shape[axis], before + after + 1
    if w == 1:
        return a
    cfg = [(0, 0, 0)] * a.ndim
    cfg[axis] = (before, after, 0)
    p = lax.pad(a, jnp.zeros((), a.dtype), cfg)
    width = 1
    while 2 * width <= w:
        m = p.shape[axis]
        p = lax.slice_in_dim(p, 0, m - width, axis=axis) | lax.slice_in_dim(p, width, m, axis=axis)
        width *= 2
    return lax.slice_in_dim(p, 0, n, axis=axis) | lax.slice_in_dim(p, w - width, w - width + n, axis=axis)


def _grow_box(mask, kernel_shape):
    (b, t), (left, right) = _band(kernel_shape)
    return _or_window(_or_window(mask, left, right, axis=1), b, t, axis=0)


def _grow_general(mask, footprint):
    """Any footprint, one footprint row at a time.

    A footprint row that is all True costs one pass (a shifted copy of the x-window OR, computed
    once); in other rows each True pixel costs one shifted OR and False pixels are skipped.
    """
    (h, w), (kh, kw) = mask.shape, footprint.shape
    (b, t), (left, right) = _band(footprint.shape)
    padded_y = jnp.pad(mask, ((b, t), (0, 0)))
    padded = jnp.pad(padded_y, ((0, 0), (left, right)))
    row_or = _or_window(padded_y, left, right, axis=1)  # OR over a whole kernel row, (h + kh - 1, w)

    def row(j, acc):
        def full(acc):
            return acc | lax.dynamic_slice_in_dim(row_or, j, h, axis=0)

        def partial(acc):
            def pixel(i, acc):
                return lax.cond(
                    footprint[j, i], lambda a: a | lax.dynamic_slice(padded, (j, i), (h, w)), lambda a: a, acc
                )

            return lax.fori_loop(0, kw, pixel, acc)

        return lax.cond(jnp.all(footprint[j]), full, partial, acc)

    return lax.fori_loop(0, kh, row, jnp.zeros_like(mask))


def _grow(mask, footprint):
    return lax.cond(
        jnp.all(footprint),
        lambda m, f: _grow_box(m, f.shape),
        _grow_general,
        mask, footprint,
    )  # fmt: skip


_grow_mask_jit = jax.jit(_grow)


def _check_mask(mask, shape=None):
    mask = jnp.asarray(mask)
    check_2d(mask, "mask")
    if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
        msg = f"mask must be an integer (bit-plane) array, got dtype {mask.dtype}; use .astype(np.int32)"
        raise ValueError(msg)
    if shape is not None:
        check_shape(mask, "mask", shape)
    return mask.astype(jnp.int32)


def grow_mask(mask: Int[ArrayLike, "H W"], footprint: Bool[ArrayLike, "Kh Kw"]) -> Int[Array, "H W"]:
    """Bitwise OR of a mask over a kernel footprint (afw mask propagation through a convolution).

    ``out(X, Y) = OR_{(u, v): footprint[v + ctrY, u + ctrX]} mask(X + u, Y + v)`` with
    ``ctr = K // 2``; pixels outside the image contribute nothing.

    Parameters
    ----------
    mask : array_like, shape (H, W)
        Integer bit-plane mask (cast to int32; bool is accepted).
    footprint : array_like of bool, shape (Kh, Kw)
        Where the kernel is non-zero (e.g. ``kernel != 0``); no larger than the image.

    Returns
    -------
    jax.Array, shape (H, W), int32
        The grown mask, full size (no edge band here).

    Raises
    ------
    ValueError
        Wrong ndim, non-integer mask, footprint larger than the mask.

    Notes
    -----
    A full (all-True) footprint, the usual case, is separable: OR along x, then along y, each with
    ``ceil(log2(K))`` shifted ORs (window doubling).  Any other footprint goes row by row: one pass
    per all-True footprint row and one pass per True pixel of the other rows (False pixels are
    skipped), so a footprint whose every row is partial costs ``~Kh * Kw`` passes.

    **JAX.** Static: shapes.  The footprint is traced; the two paths are the branches of a
    ``lax.cond`` (under ``jax.vmap`` with a batched footprint both branches run).  Not differentiable
    (integers).

    Examples
    --------
    >>> m = jnp.zeros((3, 5), jnp.int32).at[1, 2].set(4)
    >>> grow_mask(m, jnp.array([[True, True, False]]))[1].tolist()  # offsets u = -1, 0
    [0, 0, 4, 4, 0]
    """
    mask = _check_mask(mask)
    footprint = jnp.asarray(footprint)
    check_2d(footprint, "footprint", "(Kh, Kw)")
    good_box_slices(mask.shape, footprint.shape)
    return _grow_mask_jit(mask, footprint.astype(bool))
