"""Exposure-level warping onto a science pixel grid, like ``lsst.afw.math.warpExposure``.

The host-side pixel mapping :func:`warp_coordinates` (astropy WCSs, exact on a coarse grid,
bilinearly interpolated in between, as afw's ``interpLength``), :func:`warp_psf` and
:func:`warp_exposure`, which warps a whole :class:`~jaxdiff.image.Exposure` (image, variance,
mask and PSF) onto a science WCS and bbox.  The pure resampling kernels, conventions and flux
convention are documented in :mod:`jaxdiff.core.resample`.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ..core.resample import (
    _resample,
    _resample_jit,
    _resample_mask,
    _resample_variance,
    _support_mask,
    kernel_half_width,
)
from ..core.stats import masked_median

__all__ = ["warp_coordinates", "warp_exposure", "warp_psf"]


# ----------------------------------------------------------------------------------------------
# Pixel mapping (host side)
# ----------------------------------------------------------------------------------------------


def _map_pixels(science_wcs, template_wcs, x, y):
    """Template PARENT pixel positions of science PARENT positions (exact astropy chain)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sky = science_wcs.pixel_to_world(x.ravel(), y.ravel())
        tx, ty = template_wcs.world_to_pixel(sky)
    return np.asarray(tx, dtype=np.float64).reshape(x.shape), np.asarray(ty, dtype=np.float64).reshape(y.shape)


def _grid_nodes(size, step):
    if step <= 0 or step >= size:
        return np.unique(np.array([0, size - 1])) if step > 0 else np.arange(size)
    nodes = np.arange(0, size, step)
    if nodes[-1] != size - 1:
        nodes = np.append(nodes, size - 1)
    return nodes


def _interval(nodes, values):
    """Left node index and fraction of each value (for linear interpolation between nodes)."""
    if len(nodes) == 1:
        return np.zeros(values.shape, int), np.zeros(values.shape, int), np.zeros(values.shape)
    i = np.clip(np.searchsorted(nodes, values, side="right") - 1, 0, len(nodes) - 2)
    t = (values - nodes[i]) / (nodes[i + 1] - nodes[i])
    return i, i + 1, t


def _box_tuple(bbox):
    if hasattr(bbox, "getMinX"):
        return bbox.getMinX(), bbox.getMinY(), bbox.getWidth(), bbox.getHeight()
    x0, y0, w, h = bbox
    return int(x0), int(y0), int(w), int(h)


def _affine_fast_path(science_wcs, template_wcs, x0, y0, w, h, tolerance):
    """Affine fit of the mapping, or None if it deviates by more than ``tolerance`` pixels.

    The mapping is evaluated exactly on a 5 x 5 grid, fitted by an affine transform, and the fit
    is checked on an interleaved 6 x 6 grid (plus the corners): only ~60 WCS evaluations, instead
    of one every ``interp_length`` pixels.
    """
    def grid(n, inset):
        xs = x0 + inset * (w - 1) + np.linspace(0, 1, n) * (1 - 2 * inset) * (w - 1)
        ys = y0 + inset * (h - 1) + np.linspace(0, 1, n) * (1 - 2 * inset) * (h - 1)
        return [a.ravel() for a in np.meshgrid(xs, ys)]

    fx, fy = grid(5, 0.0)
    tx, ty = _map_pixels(science_wcs, template_wcs, fx, fy)
    if not (np.all(np.isfinite(tx)) and np.all(np.isfinite(ty))):
        return None
    design = np.stack([np.ones_like(fx), fx - x0, fy - y0], axis=1)
    cx, *_ = np.linalg.lstsq(design, tx, rcond=None)
    cy, *_ = np.linalg.lstsq(design, ty, rcond=None)
    vx, vy = grid(6, 0.05)
    ex, ey = _map_pixels(science_wcs, template_wcs, vx, vy)
    check = np.stack([np.ones_like(vx), vx - x0, vy - y0], axis=1)
    resid = np.hypot(check @ cx - ex, check @ cy - ey)
    if not np.all(np.isfinite(resid)) or resid.max() > tolerance or np.abs(design @ cx - tx).max() > tolerance:
        return None
    return cx, cy


def warp_coordinates(science_wcs, template_wcs, science_bbox, template_xy0=(0, 0), *, interp_length=10,
                     affine_tolerance=1e-4):
    """Template array coordinates of every science pixel.

    Parameters
    ----------
    science_wcs, template_wcs : astropy.wcs.WCS
        WCSs of the PARENT pixel grids (any astropy WCS: TAN, TAN-SIP, TPV, ...).
    science_bbox : Box2I or tuple
        The output grid: a :class:`~jaxdiff.image.Box2I` or ``(x0, y0, width, height)`` in
        science PARENT pixels.
    template_xy0 : tuple of int, optional
        PARENT origin of the template array; subtracted so that the result indexes it.
    interp_length : int, optional
        The mapping is evaluated exactly (``pixel_to_world`` then ``world_to_pixel``) every
        ``interp_length`` pixels along each axis, always including the last row and column, and
        bilinearly interpolated in between (afw's ``WarperConfig.interpLength``, default 10).
        ``0`` evaluates every pixel exactly.
    affine_tolerance : float, optional
        Fast path: if an affine transform reproduces the exact mapping to this many pixels on a
        probe grid (about 60 WCS evaluations), it is used for every pixel and no coarse grid is
        evaluated (shifts, rotations, scalings between TAN WCSs of ordinary fields).  ``0``
        disables the fast path.

    Returns
    -------
    x_src, y_src : numpy.ndarray of float64, shape (height, width)
        Template array coordinates (column, row) of the science pixel centres; NaN where the
        template WCS cannot place a sky position.

    Notes
    -----
    The interpolation error is about ``interp_length^2 / 8`` times the second derivative of the
    mapping: ``< 1e-3`` pixel for ordinary SIP distortions at the default 10.
    """
    x0, y0, w, h = _box_tuple(science_bbox)
    tx0, ty0 = (int(v) for v in template_xy0)
    step = int(interp_length)
    if step < 0:
        raise ValueError(f"interp_length must be >= 0, got {interp_length}")
    if affine_tolerance > 0 and step > 0:
        fit = _affine_fast_path(science_wcs, template_wcs, x0, y0, w, h, affine_tolerance)
        if fit is not None:
            (ax, bx, gx_), (ay, by, gy_) = fit
            cols = np.arange(w, dtype=np.float64)[None, :]
            rows = np.arange(h, dtype=np.float64)[:, None]
            return ax + bx * cols + gx_ * rows - tx0, ay + by * cols + gy_ * rows - ty0
    if step == 0:
        yy, xx = np.mgrid[0:h, 0:w]
        tx, ty = _map_pixels(science_wcs, template_wcs, xx + x0, yy + y0)
        return tx - tx0, ty - ty0
    gx, gy = _grid_nodes(w, step), _grid_nodes(h, step)
    gxx, gyy = np.meshgrid(gx + x0, gy + y0)
    ntx, nty = _map_pixels(science_wcs, template_wcs, gxx, gyy)
    ix0, ix1, tx_ = _interval(gx, np.arange(w, dtype=np.float64))
    iy0, iy1, ty_ = _interval(gy, np.arange(h, dtype=np.float64))
    tx_, ty_ = tx_[None, :], ty_[:, None]
    out = []
    for node in (ntx, nty):
        top = node[iy0][:, ix0] * (1 - tx_) + node[iy0][:, ix1] * tx_
        bot = node[iy1][:, ix0] * (1 - tx_) + node[iy1][:, ix1] * tx_
        out.append(top * (1 - ty_) + bot * ty_)
    return out[0] - tx0, out[1] - ty0


def _jacobian(science_wcs, template_wcs, x, y, step=1.0):
    """d(template pixel)/d(science pixel) at a PARENT science position (central differences)."""
    px = np.array([x + step, x - step, x, x])
    py = np.array([y, y, y + step, y - step])
    tx, ty = _map_pixels(science_wcs, template_wcs, px, py)
    return np.array(
        [[(tx[0] - tx[1]) / (2 * step), (tx[2] - tx[3]) / (2 * step)],
         [(ty[0] - ty[1]) / (2 * step), (ty[2] - ty[3]) / (2 * step)]]
    )


# ----------------------------------------------------------------------------------------------
# PSF
# ----------------------------------------------------------------------------------------------


def warp_psf(kernel_image, jacobian, *, kernel="lanczos3", size=None):
    """Transform a PSF kernel image by the local linear map of a warp.

    Parameters
    ----------
    kernel_image : array_like, shape (h, w), odd
        Template PSF image centred on its centre pixel.
    jacobian : array_like, shape (2, 2)
        ``d(template pixel) / d(science pixel)`` as ``[[dx_t/dx_s, dx_t/dy_s],
        [dy_t/dx_s, dy_t/dy_s]]``.
    kernel : str, optional
        Interpolation kernel for resampling the PSF image.
    size : int, optional
        Odd output box size; default: the input size scaled by the largest stretch of the
        inverse map (at least the input size).

    Returns
    -------
    numpy.ndarray, shape (size, size)
        ``P_s(d) = P_t(J d)`` sampled at integer offsets ``d`` from the centre and renormalised to
        sum 1 (surface-brightness convention, as for the image).
    """
    k = np.asarray(kernel_image, dtype=np.float64)
    jac = np.asarray(jacobian, dtype=np.float64)
    h, w = k.shape
    if size is None:
        stretch = float(np.linalg.svd(np.linalg.inv(jac), compute_uv=False).max())
        size = max(h, w, int(np.ceil(max(h, w) * stretch - 1e-6)))
        size += 1 - size % 2
    n = kernel_half_width(kernel)
    pad = np.pad(k, n + 1)
    cy, cx = h // 2 + n + 1, w // 2 + n + 1
    d = np.arange(size) - size // 2
    dx, dy = np.meshgrid(d, d)
    xs = cx + jac[0, 0] * dx + jac[0, 1] * dy
    ys = cy + jac[1, 0] * dx + jac[1, 1] * dy
    out = np.asarray(_resample_jit(pad, xs, ys, kernel=kernel), dtype=np.float64)
    inside = np.asarray(_support_mask(pad.shape, xs, ys, kernel))
    out = np.where(inside, out, 0.0)
    return out / out.sum()


def _warped_psf(psf, science_wcs, template_wcs, bbox, kernel, psf_grid):
    """ImagePsf (or GridPsf when the PSF or the Jacobian varies) of the template PSF on the science grid."""
    from .psf import GridPsf, ImagePsf

    x0, y0, w, h = bbox
    nx = ny = max(int(psf_grid), 1)
    xs = np.linspace(x0, x0 + w - 1, nx) if nx > 1 else np.array([x0 + (w - 1) / 2])
    ys = np.linspace(y0, y0 + h - 1, ny) if ny > 1 else np.array([y0 + (h - 1) / 2])
    images = []
    for yc in ys:
        row = []
        for xc in xs:
            tx, ty = _map_pixels(science_wcs, template_wcs, np.array([xc]), np.array([yc]))
            karr = np.asarray(psf.computeKernelImage((float(tx[0]), float(ty[0]))).getArray())
            jac = _jacobian(science_wcs, template_wcs, xc, yc)
            row.append(karr if np.allclose(jac, np.eye(2), atol=1e-12) else warp_psf(karr, jac, kernel=kernel))
        images.append(row)
    sizes = {im.shape for row in images for im in row}
    size = max(max(s) for s in sizes)
    images = np.array([[np.pad(im, ((size - im.shape[0]) // 2, (size - im.shape[1]) // 2)) for im in row]
                       for row in images])
    images /= images.sum(axis=(2, 3), keepdims=True)
    centre = (x0 + (w - 1) / 2, y0 + (h - 1) / 2)
    if len(xs) == 1 and len(ys) == 1 or np.max(np.abs(images - images[0, 0])) < 1e-7 * images.max():
        # constant PSF: one image (the one at the node nearest the centre)
        return ImagePsf(images[len(ys) // 2, len(xs) // 2], averagePosition=centre)
    return GridPsf(images, xs, ys)


# ----------------------------------------------------------------------------------------------
# Exposure
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("kernel", "mask_kernel", "grow_bits", "no_data_bits"))
def _warp_planes(image, variance, mask, x_src, y_src, *, kernel, mask_kernel, grow_bits, no_data_bits):
    finite = jnp.isfinite(image) & jnp.isfinite(variance)
    image = jnp.where(finite, image, 0.0)
    variance = jnp.where(finite, variance, 0.0)
    x_src = x_src.astype(image.dtype)
    y_src = y_src.astype(image.dtype)
    img = _resample(image, x_src, y_src, kernel)
    var = _resample_variance(variance, x_src, y_src, kernel)
    msk = _resample_mask(mask & ~grow_bits, x_src, y_src, mask_kernel)
    # afw growFullMask: these bits spread over the full image-kernel footprint (non-zero weights);
    # so does NO_DATA from non-finite template pixels (replaced by 0, which the image kernel spreads)
    full = (mask & grow_bits) | jnp.where(finite, 0, no_data_bits).astype(mask.dtype)
    msk = msk | _resample_mask(full, x_src, y_src, kernel)
    valid = _support_mask(image.shape, x_src, y_src, kernel) & _support_mask(image.shape, x_src, y_src, mask_kernel)
    fill_var = masked_median(var, valid)  # no sort: XLA:CPU sorts single-threaded
    fill_var = jnp.where(jnp.isfinite(fill_var), fill_var, 0.0)
    img = jnp.where(valid, img, 0.0)
    var = jnp.where(valid, var, fill_var)
    msk = jnp.where(valid, msk, msk | no_data_bits)
    return img, var, msk, valid


def warp_exposure(template, science_wcs, science_bbox, *, kernel="lanczos3", mask_kernel="bilinear",
                  interp_length=10, grow_full_mask=None, no_data_planes=("NO_DATA", "EDGE"), psf_grid=3):
    """Warp an Exposure onto another WCS and bbox (afw ``Warper.warpExposure``).

    Parameters
    ----------
    template : Exposure
        The exposure to resample; needs a WCS.
    science_wcs : astropy.wcs.WCS
        WCS of the destination PARENT grid.
    science_bbox : Box2I or tuple
        Destination bbox (PARENT; ``(x0, y0, width, height)`` also accepted).
    kernel : str, optional
        Image kernel (default ``"lanczos3"``); the variance uses its squared weights.
    mask_kernel : str, optional
        Mask kernel (default ``"bilinear"``; ``""`` or None: same as ``kernel``).
    interp_length : int, optional
        See :func:`warp_coordinates`.
    grow_full_mask : int, optional
        Mask bits OR-ed over the image kernel's footprint (pixels with non-zero image-kernel
        weight) instead of the mask kernel's (afw ``growFullMask``); default: the template's
        ``EDGE`` bit.
    no_data_planes : tuple of str, optional
        Planes set where the output pixel has no complete data (default ``NO_DATA`` and ``EDGE``).
    psf_grid : int, optional
        Nodes per axis at which the warped PSF is computed; a constant result becomes an
        :class:`~jaxdiff.image.psf.ImagePsf`, a varying one a :class:`~jaxdiff.image.psf.GridPsf`.

    Returns
    -------
    Exposure
        On ``science_bbox`` with ``science_wcs``; the template's dtype, PhotoCalib, filter and
        metadata.  Pixels outside the template footprint (or whose kernel runs off it) get
        image 0, variance = the median variance of the valid output pixels, and the
        ``no_data_planes`` bits, so that no invented value looks like data and nothing
        non-finite reaches FFT-based code (LSST's warper writes NaN / inf and NO_DATA instead).
        Non-finite template pixels are treated as 0 (variance 0), and every output pixel to which
        they contribute (non-zero image-kernel weight) is flagged with ``no_data_planes``.  The PSF is the template PSF transformed by the local Jacobian of the
        science-to-template pixel map (:func:`warp_psf`).

    Raises
    ------
    ValueError
        If the template has no WCS or a kernel name is unknown.
    """
    from .image import Exposure, Mask, MaskedImage

    if template.getWcs() is None:
        raise ValueError("the template has no WCS, so it cannot be warped; attach one with setWcs")
    mask_kernel = mask_kernel or kernel
    kernel_half_width(kernel)
    kernel_half_width(mask_kernel)
    bbox = _box_tuple(science_bbox)
    x0, y0, w, h = bbox
    tmask = template.getMask()
    planes = tmask.getMaskPlaneDict()
    if grow_full_mask is None:
        grow_full_mask = (1 << planes["EDGE"]) if "EDGE" in planes else 0
    no_data = 0
    for name in no_data_planes:
        if name in planes:
            no_data |= 1 << planes[name]
    xs, ys = warp_coordinates(science_wcs, template.getWcs(), bbox, template.getXY0(),
                              interp_length=interp_length)
    mi = template.getMaskedImage()
    dtype = np.dtype(mi.dtype)
    img, var, msk, _ = _warp_planes(
        jnp.asarray(mi.getImage().getArray()), jnp.asarray(mi.getVariance().getArray()),
        jnp.asarray(tmask.getArray()), jnp.asarray(xs), jnp.asarray(ys),
        kernel=kernel, mask_kernel=mask_kernel, grow_bits=int(grow_full_mask), no_data_bits=int(no_data),
    )
    out_mi = MaskedImage(
        np.asarray(img, dtype=dtype),
        Mask(np.asarray(msk, dtype=tmask.getArray().dtype), (x0, y0), planes=planes),
        np.asarray(var, dtype=dtype),
        xy0=(x0, y0),
    )
    psf = template.getPsf()
    if psf is not None:
        psf = _warped_psf(psf, science_wcs, template.getWcs(), bbox, kernel, psf_grid)
    meta = template.getMetadata()
    return Exposure(out_mi, psf=psf, wcs=science_wcs, photoCalib=template.getPhotoCalib(),
                    filterLabel=template.getFilter(),
                    metadata=meta.copy() if hasattr(meta, "copy") else meta)

