"""``ImagePsfMatchTask``: the Alard-Lupton half of the seed API (LSST ``lsst.ip.diffim``).

This module carries the task's identity (name ``psfMatch``, config class, warping of the template
onto the science image with :func:`jaxdiff.warp.warp_exposure`) and the methods whose behaviour does not depend on the Alard-Lupton
machinery (``getFwhmPix``).  The kernel-fitting methods (``makeKernelBasisList``,
``getSelectSources``, ``makeCandidateList``, ``matchExposures``, ``matchMaskedImages``,
``subtractExposures``, ``subtractMaskedImages``) belong to the Alard-Lupton issue and raise a
clear ``NotImplementedError`` naming it until it lands.
"""

from __future__ import annotations

from ..psf import FWHM_PER_SIGMA
from ._base import Task
from ._exposure import wcs_mismatch_pixels
from .config import ImagePsfMatchConfig

__all__ = ["ImagePsfMatchTask", "NOT_REGISTERED_MESSAGE"]

#: Text of LSST's error when the WCSs differ and ``doWarping`` is False.
NOT_REGISTERED_MESSAGE = "Input images are not registered. Consider setting doWarping=True."

_AL_PENDING = (
    "ImagePsfMatchTask.{name} is part of the Alard-Lupton PSF-matching feature "
    "(issue 'Alard-Lupton PSF matching and subtraction'), which is not implemented yet; "
    "use ZogyImagePsfMatchTask.run for a ZOGY difference image meanwhile."
)



class ImagePsfMatchTask(Task):
    """PSF-match images to reference images (LSST ``lsst.ip.diffim.ImagePsfMatchTask``).

    Parameters
    ----------
    config : ImagePsfMatchConfig, optional
    name, parentTask, log :
        As for :class:`jaxdiff.tasks.Task`.

    Notes
    -----
    ``self.kConfig`` is ``config.kernel.active`` (the AL or DF kernel config), as in LSST.
    """

    ConfigClass = ImagePsfMatchConfig
    _DefaultName = "psfMatch"

    #: WCSs closer than this (pixels, anywhere on the science bbox) count as registered.
    wcsTolerancePixels = 1e-3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kConfig = self.config.kernel.active

    # --------------------------------------------------------------------------------------
    def getFwhmPix(self, psf, position=None):
        """Return the FWHM in pixels of a Psf.

        Parameters
        ----------
        psf : PSF model
            Anything with ``computeShape(position).getDeterminantRadius()``.
        position : tuple of float, optional
            PARENT position; ``None`` uses the PSF's average position.

        Returns
        -------
        float
            ``2 sqrt(2 ln 2)`` times the determinant radius of the PSF's adaptive moments.
        """
        if position is None:
            position = psf.getAveragePosition()
        sigPix = psf.computeShape(position).getDeterminantRadius()
        return float(sigPix * FWHM_PER_SIGMA)

    def _validateWcs(self, templateExposure, scienceExposure):
        """True if the two exposures share a pixel grid (same dimensions and sky mapping)."""
        if templateExposure.getDimensions() != scienceExposure.getDimensions():
            return False
        if templateExposure.getXY0() != scienceExposure.getXY0() and (
            templateExposure.getWcs() is None or scienceExposure.getWcs() is None
        ):
            return False
        return wcs_mismatch_pixels(scienceExposure, templateExposure) <= self.wcsTolerancePixels

    def _registerTemplate(self, templateExposure, scienceExposure, doWarping):
        """Return the template on the science pixel grid, warping it when needed and allowed.

        Warping uses :func:`jaxdiff.warp.warp_exposure` with ``kConfig.warpingConfig``
        (``warpingKernelName``, ``maskWarpingKernelName``, ``interpLength``, ``growFullMask``).
        """
        if self._validateWcs(templateExposure, scienceExposure):
            return templateExposure
        if not doWarping:
            raise RuntimeError(NOT_REGISTERED_MESSAGE)
        if templateExposure.getWcs() is None or scienceExposure.getWcs() is None:
            msg = (
                "The template and science exposures have different dimensions or origins "
                f"({templateExposure.getBBox()} vs {scienceExposure.getBBox()}) and at least one has "
                "no WCS, so the template cannot be warped; attach WCSs or cut both to one bbox."
            )
            raise ValueError(msg)
        from ..warp import warp_exposure

        warpConfig = getattr(self.kConfig, "warpingConfig", None)
        kernel, maskKernel, interpLength, growFullMask = "lanczos3", "bilinear", 10, None
        if warpConfig is not None:
            kernel = warpConfig.warpingKernelName
            maskKernel = warpConfig.maskWarpingKernelName or kernel
            interpLength = warpConfig.interpLength
            growFullMask = warpConfig.growFullMask
        self.log.info(
            "Warping the template onto the science WCS and bbox (%s, mask %s; WCSs differ by %.3g pixels)",
            kernel, maskKernel, wcs_mismatch_pixels(scienceExposure, templateExposure),
        )
        return warp_exposure(
            templateExposure, scienceExposure.getWcs(), scienceExposure.getBBox(),
            kernel=kernel, mask_kernel=maskKernel, interp_length=interpLength, grow_full_mask=growFullMask,
        )

    # --------------------------------------------------------------------------------------
    # Alard-Lupton methods: seed signatures, pending the AL issue.
    def makeKernelBasisList(self, targetFwhmPix=None, referenceFwhmPix=None, basisDegGauss=None,
                            basisSigmaGauss=None, metadata=None):
        """Wrapper to set log messages for ``makeKernelBasisList`` (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="makeKernelBasisList"))

    def getSelectSources(self, exposure, sigma=None, doSmooth=True, idFactory=None):
        """Get sources to use for Psf-matching (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="getSelectSources"))

    def makeCandidateList(self, templateExposure, scienceExposure, kernelSize, candidateList=None):
        """Make a list of acceptable KernelCandidates (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="makeCandidateList"))

    def matchExposures(self, templateExposure, scienceExposure, templateFwhmPix=None, scienceFwhmPix=None,
                       candidateList=None, doWarping=True, convolveTemplate=True):
        """Warp and PSF-match an exposure to the reference (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="matchExposures"))

    def matchMaskedImages(self, templateMaskedImage, scienceMaskedImage, candidateList,
                          templateFwhmPix=None, scienceFwhmPix=None):
        """PSF-match a MaskedImage to a reference MaskedImage (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="matchMaskedImages"))

    def subtractExposures(self, templateExposure, scienceExposure, *args, **kwargs):
        """Register, PSF-match and subtract two Exposures (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="subtractExposures"))

    def subtractMaskedImages(self, templateExposure, scienceExposure, *args, **kwargs):
        """PSF-match and subtract two MaskedImages (Alard-Lupton issue)."""
        raise NotImplementedError(_AL_PENDING.format(name="subtractMaskedImages"))
