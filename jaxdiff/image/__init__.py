"""The image model in LSST's vocabulary, on top of the core.

Containers (:class:`Box2I`, :class:`Image`, :class:`Mask`, :class:`MaskedImage`,
:class:`Exposure`, :class:`PhotoCalib`, :class:`FilterLabel`) in :mod:`~jaxdiff.image.image`;
PSF models in :mod:`~jaxdiff.image.psf`; FITS I/O in :mod:`~jaxdiff.image.fits`; Exposure-level
warping in :mod:`~jaxdiff.image.warp`.  Imports only :mod:`jaxdiff.core`.
"""

from .fits import exposureFromFits as exposureFromFits
from .fits import readExposure as readExposure
from .fits import readImageArray as readImageArray
from .fits import writeExposure as writeExposure
from .image import DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES
from .image import MASK_DTYPE as MASK_DTYPE
from .image import Box2I as Box2I
from .image import Exposure as Exposure
from .image import FilterLabel as FilterLabel
from .image import Image as Image
from .image import Mask as Mask
from .image import MaskedImage as MaskedImage
from .image import PhotoCalib as PhotoCalib
from .psf import FWHM_PER_SIGMA as FWHM_PER_SIGMA
from .psf import GaussianPsf as GaussianPsf
from .psf import GridPsf as GridPsf
from .psf import ImagePsf as ImagePsf
from .psf import MoffatPsf as MoffatPsf
from .warp import warp_coordinates as warp_coordinates
from .warp import warp_exposure as warp_exposure
from .warp import warp_psf as warp_psf
