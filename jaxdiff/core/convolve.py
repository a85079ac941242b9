"""Fixed and spatially varying image convolution with LSST afw conventions.

afw "convolution" (``lsst.afw.math.convolve``) is a **cross-correlation**: the kernel image is not
flipped (afw ``Kernel`` images and ``lsst.afw.math.convolve``)::

    out(X, Y) = sum_{u, v} K(u, v) * in(X + u, Y + v)

where kernel pixel ``[j, i]`` (arrays are indexed ``[y, x]``) holds the offset
``(u, v) = (i - ctrX, j - ctrY)`` with ``ctrX = Kw // 2``, ``ctrY = Kh // 2`` (also for even sizes).
Output pixels whose footprint leaves the image form the *edge band*: ``ctrX`` columns on the left,
``Kw - 1 - ctrX`` on the right, ``ctrY`` rows at the bottom (low row index) and ``Kh - 1 - ctrY`` at
the top.  The remaining *good region* is what :func:`correlate_valid` returns.

Functions
---------
* :func:`correlate_valid`, :func:`correlate_same`, :func:`good_box_slices`: fixed kernel, direct
  (an unrolled sum of shifted slices or ``lax.conv_general_dilated``) or real-FFT evaluation,
  chosen by :func:`choose_method` (a calibrated cost model) or explicitly with ``method=``.
* :func:`spatially_varying_correlate`, :func:`spatially_varying_correlate_variance`: a
  linear-combination kernel ``K(X, Y) = sum_s phi_s(X, Y) K_s`` with afw spatial functions
  ``phi_s`` (:mod:`jaxdiff.core.spatial`), applied exactly per pixel.
* :func:`grow_mask`: bitwise OR of a mask over a kernel footprint.
* :func:`convolve_masked_image`, :func:`spatially_varying_convolve_masked_image`: afw
  ``convolve(out, in, kernel, ConvolutionControl(doNormalize=False, doCopyEdge=False))`` on an
  (image, variance, mask) triple, returning :class:`MaskedConvolution`.

All functions take one 2-D image; batches go through ``jax.vmap``.

Modules
-------
This module gathers the public names of four modules and adds no code of its own:

* :mod:`jaxdiff.core.convolve_fixed`: fixed kernels (method choice, the direct, FFT, shift-add
  and ``lax.conv`` paths, :func:`correlate_valid`, :func:`correlate_same`, :func:`good_box_slices`);
* :mod:`jaxdiff.core.convolve_spatial`: spatially varying kernels (term weights, square mixing,
  :func:`spatially_varying_correlate` and its variance);
* :mod:`jaxdiff.core.masks`: :func:`grow_mask`;
* :mod:`jaxdiff.core.convolve_masked`: masked images (edge band, NO_DATA, non-finite inputs).

The private helpers of the four modules stay reachable as attributes of this one (e.g.
``convolve._valid``), and setting such an attribute (``monkeypatch.setattr(convolve, "_valid",
...)``) rebinds it in every one of the four modules that holds the same object, so that patching
this module reaches the code that calls the helper, as when it was one module.
"""

import sys
import types

from . import convolve_fixed, convolve_masked, convolve_spatial, masks
from .convolve_fixed import (
    AUTO_DIRECT_MAX_AREA,
    METHODS,
    SHIFT_ADD_MAX_AREA,
    choose_method,
    correlate_same,
    correlate_valid,
    good_box_slices,
)
from .convolve_masked import MaskedConvolution, convolve_masked_image, spatially_varying_convolve_masked_image
from .convolve_spatial import spatially_varying_correlate, spatially_varying_correlate_variance
from .masks import grow_mask

__all__ = [
    "AUTO_DIRECT_MAX_AREA",
    "METHODS",
    "SHIFT_ADD_MAX_AREA",
    "MaskedConvolution",
    "choose_method",
    "convolve_masked_image",
    "correlate_same",
    "correlate_valid",
    "good_box_slices",
    "grow_mask",
    "spatially_varying_convolve_masked_image",
    "spatially_varying_correlate",
    "spatially_varying_correlate_variance",
]

#: The modules behind this one; their other (private) names are attributes here too, the first
#: module that defines a name wins.
_PARTS = (convolve_fixed, convolve_spatial, masks, convolve_masked)

for _part in _PARTS:
    for _name, _value in vars(_part).items():
        if not _name.startswith("__"):
            globals().setdefault(_name, _value)
del _part, _name, _value


class _Facade(types.ModuleType):
    """Module type of :mod:`jaxdiff.core.convolve`: setting a name rebinds it in the parts too."""

    def __setattr__(self, name, value):
        if name in vars(self) and not name.startswith("__"):
            old = vars(self)[name]
            for part in _PARTS:
                if name in vars(part) and vars(part)[name] is old:
                    setattr(part, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade
