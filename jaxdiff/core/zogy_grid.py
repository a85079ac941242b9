"""ZOGY on a grid of cells with per-cell PSFs and noise levels (LSST's ``doSpatialGrid``).

The image is tiled by ``ny x nx`` inner cells of one shape ``(ch, cw)`` (the last row/column may
reach past the image; those pixels are dropped).  Each cell is processed on an outer box of
``border`` extra real pixels per side (reflected at the image edges), with the PSFs and noise
levels of that cell, by the single-cell core :func:`jaxdiff.core.zogy.zogy`; the inner boxes are pasted
back.  Because every outer box has the same shape, all cells go through one compiled function,
mapped over the cell axis in batches (``jax.lax.map(..., batch_size=...)``, a vmap of
``batch_size`` cells at a time, which bounds memory).

Seams: each inner box sees ``border`` pixels of real neighbouring data, with ``border`` at least
the extent of the ZOGY kernels, so D and S_corr are continuous across cell edges up to the change of
PSF between cells (LSST pastes inner boxes the same way).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .fft import fast_fft_shape
from .stats import clipped_stats
from .zogy import choose_kernel_mode, zogy

__all__ = ["CellResult", "cell_noise_variances", "cells_kernel_mode", "zogy_cells"]


class CellResult(NamedTuple):
    """Stitched outputs of :func:`zogy_cells` (fields as :class:`jaxdiff.core.zogy.ZogyResult`).

    ``difference_psf`` and ``score_psf`` are stacks ``(ny, nx, Kh, Kw)``, one per cell;
    ``flux_zero_point`` and ``n_degenerate`` are ``(ny, nx)``.
    """

    difference: jax.Array
    difference_variance: jax.Array
    difference_psf: jax.Array
    flux_zero_point: jax.Array
    score: jax.Array | None
    score_variance: jax.Array | None
    astrometric_variance: jax.Array | None
    score_corr: jax.Array | None
    score_psf: jax.Array | None
    n_degenerate: jax.Array


def _tile(a, cell_shape, n_cells, fill):
    """``(H, W)`` -> ``(ny*nx, ch, cw)`` cells, padding the far edges with ``fill``."""
    ch, cw = cell_shape
    ny, nx = n_cells
    h, w = a.shape
    a = jnp.pad(a, ((0, ny * ch - h), (0, nx * cw - w)), constant_values=fill)
    return a.reshape(ny, ch, nx, cw).transpose(0, 2, 1, 3).reshape(ny * nx, ch, cw)


def _untile(cells, n_cells, shape):
    """Inverse of :func:`_tile`, cropped to ``shape``."""
    ny, nx = n_cells
    _, ch, cw = cells.shape
    out = cells.reshape(ny, nx, ch, cw).transpose(0, 2, 1, 3).reshape(ny * ch, nx * cw)
    return out[: shape[0], : shape[1]]


@functools.partial(jax.jit, static_argnames=("cell_shape", "n_cells"))
def cell_noise_variances(variance, good, *, cell_shape, n_cells):
    """Per-cell scalar noise level: clipped mean of the variance plane over each inner cell.

    Follows ip_diffim's ``prepareSubExposure``: cells where the estimate is not positive (no
    usable pixels) fall back to the clipped mean of the whole plane.

    Returns
    -------
    array, shape (ny, nx)
    """
    good = good & (variance > 0) & jnp.isfinite(variance)
    cells_v = _tile(variance, cell_shape, n_cells, 0.0)
    cells_g = _tile(good, cell_shape, n_cells, False)
    per_cell = jax.vmap(lambda v, g: clipped_stats(v, g).mean)(cells_v, cells_g)
    if tuple(n_cells) == (1, 1):  # the one cell holds every pixel: the fallback is the same number
        return per_cell.reshape(n_cells)
    full = clipped_stats(variance, good).mean
    out = jnp.where(jnp.isfinite(per_cell) & (per_cell > 0), per_cell, full)
    return out.reshape(n_cells)


def _cells_fft_shape(image_shape, n_cells, cell_shape, border):
    """FFT grid of every cell in :func:`zogy_cells` (one cell: the whole image plus ``border``)."""
    if tuple(n_cells) == (1, 1):
        return fast_fft_shape((image_shape[0] + 2 * border, image_shape[1] + 2 * border))
    return fast_fft_shape((cell_shape[0] + 2 * border, cell_shape[1] + 2 * border))


def cells_kernel_mode(new_psfs, ref_psfs, new_noise_vars, ref_noise_vars, *, f_new=1.0, f_ref=1.0, image_shape,
                      cell_shape, border, new_psfs_lo=None, ref_psfs_lo=None) -> str:  # fmt: skip
    """Kernel path (``"box"`` or ``"full"``) for :func:`zogy_cells`, decided on the host.

    :func:`jaxdiff.core.zogy.choose_kernel_mode` over all cells (``"full"`` if any cell needs it),
    on the FFT grid that :func:`zogy_cells` gives each cell; arguments as there, with the
    ``image_shape``.  Pass the result as ``kernel_mode`` so that one path is compiled.
    """
    fft_shape = _cells_fft_shape(image_shape, new_psfs.shape[:2], cell_shape, border)
    return choose_kernel_mode(new_psfs, ref_psfs, new_noise_var=new_noise_vars, ref_noise_var=ref_noise_vars,
                              f_new=f_new, f_ref=f_ref, fft_shape=fft_shape, new_psf_lo=new_psfs_lo,
                              ref_psf_lo=ref_psfs_lo)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("cell_shape", "border", "calculate_score", "batch_size", "kernel_mode"))
def zogy_cells(new_image, ref_image, new_psfs, ref_psfs, new_variance, ref_variance, new_noise_vars,
               ref_noise_vars, *, f_new=1.0, f_ref=1.0, cell_shape, border, calculate_score=True,
               batch_size=16, new_psfs_lo=None, ref_psfs_lo=None, kernel_mode="auto"):
    """ZOGY with per-cell PSFs and noise levels, stitched into full-size outputs.

    Parameters
    ----------
    new_image, ref_image : array, shape (H, W)
        Registered science (new, N) and template (ref, R) images.
    new_psfs, ref_psfs : array, shape (ny, nx, Kh, Kw) and (ny, nx, Lh, Lw)
        PSF stamps at each cell (odd sizes, centred).
    new_variance, ref_variance : array, shape (H, W)
        Per-pixel variance maps.
    new_noise_vars, ref_noise_vars : array, shape (ny, nx)
        Scalar noise levels of each cell (see :func:`cell_noise_variances`).
    f_new, f_ref : float, keyword-only
        Flux scalings F_n, F_r.
    cell_shape : (int, int), keyword-only
        Inner cell shape ``(ch, cw)``; ``ny * ch >= H`` and ``nx * cw >= W``.  Static.
    border : int, keyword-only
        Extra pixels of real data on each side of a cell.  Static.
    calculate_score : bool, keyword-only
        Also compute S, V_S and S_corr.
    batch_size : int, keyword-only
        Cells processed together (memory vs. speed).
    new_psfs_lo, ref_psfs_lo : array, optional, keyword-only
        Low float32 parts of float64 PSF stacks (:func:`jaxdiff.core.zogy.psf_low_part`), so
        that the float32 path transforms the float64 PSFs; default zeros.
    kernel_mode : {"auto", "box", "full"}, keyword-only
        Kernel path of :func:`jaxdiff.core.zogy.zogy` (static).  Under this function's ``jit`` the
        PSFs are traced, so "auto" compiles both paths behind a ``lax.cond``; callers with
        concrete PSFs pass :func:`jaxdiff.core.zogy.choose_kernel_mode` (one path, faster).

    Returns
    -------
    CellResult

    Notes
    -----
    JAX: one compilation per (image shape, PSF shapes, ``cell_shape``, ``border``,
    ``calculate_score``, dtype).  Differentiable like :func:`jaxdiff.core.zogy.zogy`.  With a single
    cell (``ny = nx = 1``) it is exactly :func:`jaxdiff.core.zogy.zogy` on an FFT grid of the image plus
    ``border`` per side.
    """
    ny, nx = new_psfs.shape[:2]
    height, width = new_image.shape
    ch, cw = cell_shape
    if ny * ch < height or nx * cw < width:
        msg = f"{ny}x{nx} cells of {cell_shape} do not cover the image {new_image.shape}"
        raise ValueError(msg)
    dtype = new_image.dtype
    new_variance = jnp.broadcast_to(jnp.asarray(new_variance, dtype), new_image.shape)
    ref_variance = jnp.broadcast_to(jnp.asarray(ref_variance, dtype), new_image.shape)

    fft_shape = _cells_fft_shape((height, width), (ny, nx), cell_shape, border)
    if ny * nx == 1:
        lo = {} if new_psfs_lo is None else {"new_psf_lo": new_psfs_lo[0, 0]}
        lo.update({} if ref_psfs_lo is None else {"ref_psf_lo": ref_psfs_lo[0, 0]})
        r = zogy(new_image, ref_image, new_psfs[0, 0], ref_psfs[0, 0], new_variance, ref_variance, **lo,
                 new_noise_var=new_noise_vars[0, 0], ref_noise_var=ref_noise_vars[0, 0], f_new=f_new,
                 f_ref=f_ref, fft_shape=fft_shape, calculate_score=calculate_score, kernel_mode=kernel_mode)
        expand = (lambda a: None if a is None else a[None, None])  # noqa: E731
        return CellResult(
            r.difference, r.difference_variance, expand(r.difference_psf), expand(r.flux_zero_point),
            r.score, r.score_variance, r.astrometric_variance, r.score_corr, expand(r.score_psf),
            expand(r.n_degenerate),
        )

    outer = (ch + 2 * border, cw + 2 * border)
    pad = ((border, border + ny * ch - height), (border, border + nx * cw - width))

    def cells_of(a):
        padded = jnp.pad(a, pad, mode="reflect")
        ys = jnp.repeat(jnp.arange(ny) * ch, nx)
        xs = jnp.tile(jnp.arange(nx) * cw, ny)
        return jax.vmap(lambda y, x: jax.lax.dynamic_slice(padded, (y, x), outer))(ys, xs)

    xs = (
        cells_of(new_image), cells_of(ref_image),
        new_psfs.reshape(ny * nx, *new_psfs.shape[2:]), ref_psfs.reshape(ny * nx, *ref_psfs.shape[2:]),
        cells_of(new_variance), cells_of(ref_variance),
        new_noise_vars.reshape(-1).astype(dtype), ref_noise_vars.reshape(-1).astype(dtype),
        (jnp.zeros_like(new_psfs) if new_psfs_lo is None else new_psfs_lo).reshape(ny * nx, *new_psfs.shape[2:]),
        (jnp.zeros_like(ref_psfs) if ref_psfs_lo is None else ref_psfs_lo).reshape(ny * nx, *ref_psfs.shape[2:]),
    )

    def one_cell(args):
        n, r, pn, pr, vn, vr, sn, sr, pn_lo, pr_lo = args
        res = zogy(n, r, pn, pr, vn, vr, new_noise_var=sn, ref_noise_var=sr, f_new=f_new, f_ref=f_ref,
                   fft_shape=fft_shape, calculate_score=calculate_score, new_psf_lo=pn_lo, ref_psf_lo=pr_lo,
                   kernel_mode=kernel_mode)
        inner = (lambda a: None if a is None else a[border:border + ch, border:border + cw])  # noqa: E731
        return res._replace(
            difference=inner(res.difference), difference_variance=inner(res.difference_variance),
            score=inner(res.score), score_variance=inner(res.score_variance),
            astrometric_variance=inner(res.astrometric_variance), score_corr=inner(res.score_corr),
        )

    res = jax.lax.map(one_cell, xs, batch_size=min(batch_size, ny * nx))
    full = (lambda a: None if a is None else _untile(a, (ny, nx), (height, width)))  # noqa: E731
    grid = (lambda a: None if a is None else a.reshape(ny, nx, *a.shape[1:]))  # noqa: E731
    return CellResult(
        full(res.difference), full(res.difference_variance), grid(res.difference_psf),
        grid(res.flux_zero_point), full(res.score), full(res.score_variance),
        full(res.astrometric_variance), full(res.score_corr), grid(res.score_psf), grid(res.n_degenerate),
    )
