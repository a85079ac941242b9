"""jaxdiff: astronomical image differencing (ZOGY, Alard-Lupton) in JAX, with LSST's task API.

The package is layered; each folder imports only the ones below it:

* :mod:`jaxdiff.core` -- pure, jit/vmap/grad-able functions on arrays (ZOGY, Alard-Lupton
  fitting, convolution, decorrelation, statistics, detection, resampling, alignment);
* :mod:`jaxdiff.image` -- the image model in LSST's vocabulary (:class:`Exposure`,
  :class:`MaskedImage`, PSF models, FITS I/O, Exposure-level warping);
* :mod:`jaxdiff.tasks` -- the LSST task shell (``ZogyImagePsfMatchTask``,
  ``ImagePsfMatchTask``, configs, ``Struct`` results, typed errors);
* :mod:`jaxdiff.testing` -- scene simulators with truth; :mod:`jaxdiff.pipeline` -- real-frame
  and batch pipelines; :mod:`jaxdiff.cli` -- the ``jaxdiff`` command.

The main names are re-exported here.  jaxdiff never changes JAX's global configuration.  For
float64 work (LSST parity) call ``jax.config.update("jax_enable_x64", True)`` yourself before
creating arrays.
"""

from .core import ZogyResult as ZogyResult
from .core import clipped_stats as clipped_stats
from .core import refine_alignment as refine_alignment
from .core import zogy_cells as zogy_cells
from .core.zogy import zogy as zogy
from .image import DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES
from .image import Box2I as Box2I
from .image import Exposure as Exposure
from .image import FilterLabel as FilterLabel
from .image import GaussianPsf as GaussianPsf
from .image import GridPsf as GridPsf
from .image import Image as Image
from .image import ImagePsf as ImagePsf
from .image import Mask as Mask
from .image import MaskedImage as MaskedImage
from .image import MoffatPsf as MoffatPsf
from .image import PhotoCalib as PhotoCalib
from .image import exposureFromFits as exposureFromFits
from .image import readExposure as readExposure
from .image import warp_exposure as warp_exposure
from .image import writeExposure as writeExposure

__version__ = "0.1.0"

# Task-shell and simulator names are loaded lazily so that ``import jaxdiff`` stays light.
_LAZY = {
    "Struct": "jaxdiff.tasks._base",
    "Task": "jaxdiff.tasks._base",
    "ZogyImagePsfMatchTask": "jaxdiff.tasks",
    "ZogyImagePsfMatchConfig": "jaxdiff.tasks",
    "ImagePsfMatchTask": "jaxdiff.tasks",
    "ImagePsfMatchConfig": "jaxdiff.tasks",
    "ZogyConfig": "jaxdiff.tasks",
    "simulate_pair": "jaxdiff.testing.sim",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
