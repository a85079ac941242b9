"""LSST's ZOGY unit-test scenes (``ip_diffim`` ``makeFakeImages``), rebuilt for the tests and examples."""

import numpy as np

from ..image.image import Exposure, MaskedImage
from ..image.psf import ImagePsf
from .sim import _resolve_dtype

__all__ = ["make_lsst_zogy_test_images"]




def _single_gaussian_2d(x, y, xc, yc, sigma_x, sigma_y, theta):
    """ip_diffim's ``singleGaussian2d``: rotated Gaussian on the grid, normalised to sum 1 over it."""
    theta = (theta / 180.0) * np.pi
    cos2, sin2 = np.cos(theta) ** 2, np.sin(theta) ** 2
    sx2, sy2 = sigma_x**2, sigma_y**2
    a = cos2 / (2.0 * sx2) + sin2 / (2.0 * sy2)
    b = -np.sin(2.0 * theta) / (4.0 * sx2) + np.sin(2.0 * theta) / (4.0 * sy2)
    c = sin2 / (2.0 * sx2) + cos2 / (2.0 * sy2)
    xxc, yyc = x - xc, y - yc
    out = np.exp(-(a * xxc**2 + 2.0 * b * xxc * yyc + c * yyc**2))
    return out / out.sum()


def _lsst_test_wcs():
    """Return the SIN WCS of ip_diffim's ``test_zogy.py`` (``makeWcs(offset=0)``)."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.crval = [215.604025685476, 53.1595451514076]
    wcs.wcs.crpix = [1109.99981456774, 560.018167811613]
    wcs.wcs.cd = [
        [5.10808596133527e-05, 1.85579539217196e-07],  # CD1_1, CD1_2
        [-8.27440751733828e-07, -5.10281493481982e-05],  # CD2_1, CD2_2
    ]
    wcs.wcs.radesys = "FK5"
    wcs.wcs.equinox = 2000.0
    return wcs


def make_lsst_zogy_test_images(
    size=(256, 256),
    svar=0.04,
    tvar=0.04,
    psf1=3.3,
    psf2=2.2,
    offset=None,
    varSourceChange=1 / 50.0,
    n_sources=50,
    seed=66,
    *,
    psf_yvary_factor=0.0,
    theta1=0.0,
    theta2=0.0,
    dtype=None,
    with_wcs=True,
):
    """Science/template pair of ip_diffim's ``test_zogy.py::makeFakeImages`` (ip_diffim ``tests/test_zogy.py``).

    Replicates LSST's recipe step by step with ``numpy.random.default_rng(seed)``: Gaussian noise
    (science first), then ``n_sources`` fluxes ``U(50, 30000)``, x and y positions in that order,
    each source drawn as a Gaussian evaluated at pixel centres and normalised to sum 1 over the
    grid; the source closest to the grid origin is brighter by ``varSourceChange`` (a fraction) in
    the science image.  Index 1 is the science image, 2 the template.

    Parameters
    ----------
    size : tuple of int, optional
        ``(width, height)`` (LSST's order).  Grid coordinates run ``arange(-W//2, W//2)``.
    svar, tvar : float, optional
        Noise variance per pixel of the science and template (the constant variance planes).
    psf1, psf2 : float or (float, float), optional
        Gaussian sigmas ``(sigma_x, sigma_y)`` of the science and template PSFs, pixels.
    offset : (float, float), optional
        Astrometric offset of the science sources (and of the template PSF image), pixels.
    varSourceChange : float, optional
        Fractional flux increase of the variable source in the science image.
    n_sources : int, optional
    seed : int, optional
    psf_yvary_factor, theta1, theta2 : float, optional
        LSST's extra knobs: science sigma_y variation across y, and rotation angles (degrees).
    dtype : dtype, optional
        Image dtype; default float64 with x64 (LSST's ``ExposureD``), else float32.
    with_wcs : bool, optional
        Attach LSST's test SIN WCS (identical for both exposures).

    Returns
    -------
    science, template : Exposure
        bbox ``(0, 0)``-``(W-1, H-1)``, mask 0, constant variance ``svar``/``tvar``, an
        :class:`~jaxdiff.image.psf.ImagePsf` of the 25x25 window of the normalised PSF images centred on
        the grid origin, and no PhotoCalib.
    """
    dtype = _resolve_dtype(dtype)
    width, height = (int(v) for v in size)
    if width < 25 or height < 25:
        raise ValueError(f"size must be at least 25x25 for the 25x25 PSF window, got {size}")
    rng = np.random.default_rng(seed)
    psf1 = [float(psf1), float(psf1)] if np.ndim(psf1) == 0 else [float(v) for v in psf1]
    psf2 = [float(psf2), float(psf2)] if np.ndim(psf2) == 0 else [float(v) for v in psf2]
    offset = [0.0, 0.0] if offset is None else [float(v) for v in offset]
    xim = np.arange(-width // 2, width // 2, 1)
    yim = np.arange(-height // 2, height // 2, 1)
    x0im, y0im = np.meshgrid(xim, yim)

    im1 = rng.normal(scale=np.sqrt(svar), size=x0im.shape)
    im2 = rng.normal(scale=np.sqrt(tvar), size=x0im.shape)
    if n_sources > 0:
        fluxes = rng.uniform(50, 30000, n_sources)
        xposns = rng.uniform(xim.min() + 16, xim.max() - 5, n_sources)
        yposns = rng.uniform(yim.min() + 16, yim.max() - 5, n_sources)
        ind = np.argmin(xposns**2.0 + yposns**2.0)
        psf1_yvary = psf_yvary_factor * (yim.mean() - yposns) / yim.max()
        for i in range(n_sources):
            flux = fluxes[i]
            im2 += flux * _single_gaussian_2d(x0im, y0im, xposns[i], yposns[i], psf2[0], psf2[1], theta2)
            if i == ind:
                flux += flux * varSourceChange
            xc, yc = xposns[i] + offset[0], yposns[i] + offset[1]
            im1 += flux * _single_gaussian_2d(x0im, y0im, xc, yc, psf1[0], psf1[1] + psf1_yvary[i], theta1)
    im1_psf = _single_gaussian_2d(x0im, y0im, 0, 0, psf1[0], psf1[1], theta1)
    im2_psf = _single_gaussian_2d(x0im, y0im, offset[0], offset[1], psf2[0], psf2[1], theta2)
    cx, cy = -(-width // 2), -(-height // 2)  # array index of grid coordinate 0
    window = (slice(cy - 12, cy + 13), slice(cx - 12, cx + 13))
    wcs = _lsst_test_wcs() if with_wcs else None

    def exposure(img, psf, var):
        mi = MaskedImage(img.astype(dtype), variance=np.full(img.shape, var, dtype=dtype))
        return Exposure(mi, psf=ImagePsf(np.array(psf[window])), wcs=wcs)

    return exposure(im1, im1_psf, svar), exposure(im2, im2_psf, tvar)
