"""jaxdiff: astronomical image differencing (ZOGY, Alard-Lupton) in JAX, with LSST's task API.

The pure, jit/vmap/grad-able core lives in modules such as :mod:`jaxdiff.zogy`; the image model
(:class:`Exposure`, :class:`MaskedImage`, ...) in :mod:`jaxdiff.image`; PSF models in
:mod:`jaxdiff.psf`; FITS I/O in :mod:`jaxdiff.fits`; the scene simulator in :mod:`jaxdiff.sim`;
the LSST task shell (``ZogyImagePsfMatchTask`` and friends) in :mod:`jaxdiff.tasks`.

jaxdiff never changes JAX's global configuration.  For float64 work (LSST parity) call
``jax.config.update("jax_enable_x64", True)`` yourself before creating arrays.
"""

from .image import (
    DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES,
    Box2I as Box2I,
    Exposure as Exposure,
    FilterLabel as FilterLabel,
    Image as Image,
    Mask as Mask,
    MaskedImage as MaskedImage,
    PhotoCalib as PhotoCalib,
)
from .psf import (
    GaussianPsf as GaussianPsf,
    GridPsf as GridPsf,
    ImagePsf as ImagePsf,
    MoffatPsf as MoffatPsf,
)

__version__ = "0.1.0"

# Task-shell names are loaded lazily so that ``import jaxdiff`` stays light.
_LAZY = {
    "Struct": "jaxdiff.tasks._base",
    "Task": "jaxdiff.tasks._base",
    "ZogyImagePsfMatchTask": "jaxdiff.tasks",
    "ZogyImagePsfMatchConfig": "jaxdiff.tasks",
    "ImagePsfMatchTask": "jaxdiff.tasks",
    "ImagePsfMatchConfig": "jaxdiff.tasks",
    "ZogyConfig": "jaxdiff.tasks",
    "readExposure": "jaxdiff.fits",
    "writeExposure": "jaxdiff.fits",
    "exposureFromFits": "jaxdiff.fits",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
