"""Calibration in LSST's vocabulary: :class:`PhotoCalib` and :class:`FilterLabel`.

Both are small values, hashable and compared by value, carried by an
:class:`~jaxdiff.image.Exposure` as static pytree data.
"""

import numpy as np

__all__ = ["FilterLabel", "PhotoCalib"]


class PhotoCalib:
    """Constant photometric calibration, like ``lsst.afw.image.PhotoCalib``.

    Parameters
    ----------
    calibrationMean : float
        nJy per count (instrumental flux unit).  ``PhotoCalib(1.0)`` is the identity.
    calibrationErr : float, optional
        Uncertainty of ``calibrationMean``.
    """

    __slots__ = ("_mean", "_err")

    def __init__(self, calibrationMean=1.0, calibrationErr=0.0):
        mean = float(calibrationMean)
        if not np.isfinite(mean) or mean <= 0:
            raise ValueError(f"calibrationMean must be a positive finite number, got {calibrationMean}")
        self._mean, self._err = mean, float(calibrationErr)

    def getCalibrationMean(self):
        """Return the calibration mean (nJy per count)."""
        return self._mean

    def getCalibrationErr(self):
        """Return the uncertainty of the calibration mean."""
        return self._err

    def instFluxToNanojansky(self, instFlux):
        """Convert an instrumental flux (counts) to nJy."""
        return instFlux * self._mean

    def calibrateImage(self, maskedImage):
        """Return ``maskedImage`` in nJy: image × mean, variance × mean², mask unchanged."""
        return maskedImage * self._mean

    def __eq__(self, other):
        return isinstance(other, PhotoCalib) and (self._mean, self._err) == (other._mean, other._err)

    def __hash__(self):
        return hash((self._mean, self._err))

    def __repr__(self):
        return f"PhotoCalib(calibrationMean={self._mean!r}, calibrationErr={self._err!r})"


class FilterLabel:
    """Band and physical filter names, like ``lsst.afw.image.FilterLabel``."""

    __slots__ = ("band", "physicalLabel")

    def __init__(self, band=None, physical=None):
        self.band, self.physicalLabel = band, physical

    def hasBandLabel(self):
        """Return True if a band name is set."""
        return self.band is not None

    def hasPhysicalLabel(self):
        """Return True if a physical filter name is set."""
        return self.physicalLabel is not None

    def __eq__(self, other):
        return isinstance(other, FilterLabel) and (self.band, self.physicalLabel) == (
            other.band,
            other.physicalLabel,
        )

    def __hash__(self):
        return hash((self.band, self.physicalLabel))

    def __repr__(self):
        return f"FilterLabel(band={self.band!r}, physical={self.physicalLabel!r})"
