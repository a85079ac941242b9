"""The image model in LSST's vocabulary, on top of the core.

Containers (:class:`Image`, :class:`Mask`, :class:`MaskedImage`, :class:`Exposure`) in
:mod:`~jaxdiff.image.image`; :class:`Box2I` in :mod:`~jaxdiff.image.geometry`; :class:`PhotoCalib`
and :class:`FilterLabel` in :mod:`~jaxdiff.image.calib`; PSF models in :mod:`~jaxdiff.image.psf`;
FITS I/O in :mod:`~jaxdiff.image.fits`; Exposure-level warping in :mod:`~jaxdiff.image.warp`.
Imports only :mod:`jaxdiff.core`.
"""

from .calib import FilterLabel as FilterLabel
from .calib import PhotoCalib as PhotoCalib
from .fits import exposureFromFits as exposureFromFits
from .fits import readExposure as readExposure
from .fits import readImageArray as readImageArray
from .fits import writeExposure as writeExposure
from .geometry import Box2I as Box2I
from .image import DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES
from .image import MASK_DTYPE as MASK_DTYPE
from .image import Exposure as Exposure
from .image import Image as Image
from .image import Mask as Mask
from .image import MaskedImage as MaskedImage
from .psf import FWHM_PER_SIGMA as FWHM_PER_SIGMA
from .psf import GaussianPsf as GaussianPsf
from .psf import GridPsf as GridPsf
from .psf import ImagePsf as ImagePsf
from .psf import MoffatPsf as MoffatPsf
from .warp import warp_coordinates as warp_coordinates
from .warp import warp_exposure as warp_exposure
from .warp import warp_psf as warp_psf
