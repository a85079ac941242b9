"""Boundary helpers between Exposures (stateful, host side) and the pure array core."""

from __future__ import annotations

import warnings

import numpy as np

from ..image.image import Exposure

__all__ = [
    "check_exposure",
    "kernel_array",
    "mask_bits",
    "psf_centroid",
    "wcs_mismatch_pixels",
]


def check_exposure(exposure, what):
    """Raise a clear error unless ``exposure`` is a usable :class:`~jaxdiff.image.Exposure`."""
    if not isinstance(exposure, Exposure):
        msg = f"{what} must be a jaxdiff.Exposure, got {type(exposure).__name__}; wrap arrays with jaxdiff.Exposure(...)"
        raise TypeError(msg)
    if exposure.getPsf() is None:
        msg = f"{what} has no PSF; attach one with {what}.setPsf(jaxdiff.GaussianPsf(...)) or ImagePsf(array)"
        raise ValueError(msg)


def kernel_array(psf, position):
    """PSF kernel image (float64 numpy, sum 1, odd box) at a PARENT position."""
    arr = np.asarray(psf.computeKernelImage(position).getArray(), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] % 2 == 0 or arr.shape[1] % 2 == 0:
        raise ValueError(f"PSF kernel image must be 2-D with odd dimensions, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("PSF kernel image contains NaN or Inf values")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"PSF kernel image must have a positive sum, got {total}")
    return arr / total


def psf_centroid(arr):
    """Centroid ``(yc, xc)`` of an array relative to its geometric centre ``(n - 1)/2``."""
    a = np.asarray(arr, dtype=np.float64)
    if a.sum() == 0:
        a = np.abs(a)
    ny, nx = a.shape
    y = np.arange(ny) - (ny - 1) / 2
    x = np.arange(nx) - (nx - 1) / 2
    s = a.sum()
    return float((a.sum(axis=1) * y).sum() / s), float((a.sum(axis=0) * x).sum() / s)


def mask_bits(mask, names):
    """Bit mask of the planes in ``names`` that ``mask`` knows (unknown names are skipped)."""
    planes = mask.getMaskPlaneDict()
    value = 0
    for name in names:
        if name in planes:
            value |= 1 << planes[name]
    return value


def wcs_mismatch_pixels(science, template, n=5):
    """Largest distance (pixels) between science pixels and where the template WCS puts them.

    Compares the pixel-to-sky mappings on an ``n x n`` grid over the science bbox (LSST compares
    mappings, not header text).  Returns 0 when either exposure has no WCS, or both share the
    same grid (the case of identical WCS objects and equal xy0).
    """
    w1, w2 = science.getWcs(), template.getWcs()
    if w1 is None or w2 is None:
        return 0.0
    bbox = science.getBBox()
    xs = np.linspace(bbox.getMinX(), bbox.getMaxX(), n)
    ys = np.linspace(bbox.getMinY(), bbox.getMaxY(), n)
    xx, yy = np.meshgrid(xs, ys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sky = w1.pixel_to_world(xx.ravel(), yy.ravel())
        tx, ty = w2.world_to_pixel(sky)
    # the template pixel (tx, ty) is PARENT; the science pixel is PARENT too, and the two
    # images are aligned when the template pixel coordinates equal the science ones.
    return float(np.max(np.hypot(np.asarray(tx) - xx.ravel(), np.asarray(ty) - yy.ravel())))
