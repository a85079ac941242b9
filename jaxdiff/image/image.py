"""Image containers in LSST's vocabulary: Image, Mask, MaskedImage, Exposure.

The containers mirror ``lsst.afw.image`` closely enough that LSST users can write the names they
know (``exposure.getMaskedImage().getVariance().getArray()``), while the arrays inside are ordinary
numpy or JAX arrays and every container is a registered JAX pytree: the arrays are leaves, the rest
(origin, mask-plane dictionary, WCS, PhotoCalib, filter, metadata) is static auxiliary data. So an
``Exposure`` can be passed straight through ``jax.jit`` and ``jax.vmap``.

Conventions (as in afw, see ``lsst.afw.image`` ``ImageBase``): arrays are indexed ``[y, x]``; an
image of width W and height H has shape ``(H, W)``; ``xy0`` and the inclusive :class:`Box2I` are
described in :mod:`jaxdiff.image.geometry`.

Arrays are stored as given (numpy arrays stay numpy and can be edited in place, as in afw; JAX
arrays stay JAX arrays).  Accessors return the stored arrays, which ``numpy.asarray`` accepts.

The geometry (:class:`Box2I`), calibration (:class:`PhotoCalib`, :class:`FilterLabel`) and the
static-data wrapper live in :mod:`~jaxdiff.image.geometry`, :mod:`~jaxdiff.image.calib` and
:mod:`~jaxdiff.image._static`; they are re-exported here, so ``from jaxdiff.image.image import
Box2I`` (and pickles naming this module) keep working.
"""

import copy as _copy

import jax
import numpy as np

from ._static import _Static as _Static
from ._static import _static_key as _static_key
from .calib import FilterLabel as FilterLabel
from .calib import PhotoCalib as PhotoCalib
from .geometry import Box2I as Box2I
from .geometry import _xy0 as _xy0

__all__ = [
    "Box2I",
    "Exposure",
    "FilterLabel",
    "Image",
    "Mask",
    "MaskedImage",
    "PhotoCalib",
    "DEFAULT_MASK_PLANES",
]

#: FITS readers/writers used by :meth:`Exposure.readFits` / :meth:`Exposure.writeFits`.  The FITS
#: module registers them when it is imported (``jaxdiff.image`` imports it), so this module does
#: not import the FITS module back (no import cycle).
_FITS_IO = {}

#: afw's default mask-plane dictionary (``src/image/detail/MaskDict.cc``): name -> bit index.
DEFAULT_MASK_PLANES = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}

#: The mask dtype.  afw's ``MaskPixel`` is a 32-bit integer; int32 keeps JAX happy without x64.
MASK_DTYPE = np.int32
_MAX_MASK_PLANES = 31


def _is_array(x):
    return isinstance(x, (np.ndarray, jax.Array)) or isinstance(x, jax.core.Tracer)


def _as_array(value, what):
    """Accept numpy/JAX arrays (kept as they are) and array-likes (converted to numpy)."""
    if hasattr(value, "getArray"):
        value = value.getArray()
    if _is_array(value):
        return value
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy's own message is good
        raise TypeError(f"{what} must be array-like, got {type(value).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{what} must be a numeric array, got an object array")
    return arr


def _check_2d(arr, what):
    if getattr(arr, "ndim", None) != 2:
        msg = f"{what} must be a 2-D array indexed [y, x], got shape {getattr(arr, 'shape', None)}"
        raise ValueError(msg)


def _check_float(arr, what):
    if not np.issubdtype(np.dtype(arr.dtype), np.floating):
        msg = (
            f"{what} must have a floating-point dtype, got {arr.dtype}; "
            f"convert it first, e.g. numpy.asarray(x, dtype=numpy.float32)"
        )
        raise TypeError(msg)


# ----------------------------------------------------------------------------------------------
# Image, Mask
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class Image:
    """A 2-D floating-point pixel array with a PARENT origin ``xy0``, like ``lsst.afw.image.Image``.

    Parameters
    ----------
    array : array_like, shape (H, W)
        Pixel values, floating point.  numpy and JAX arrays are kept as they are.
    xy0 : tuple of int, optional
        PARENT position ``(x0, y0)`` of array element ``[0, 0]``.
    dtype : dtype, optional
        Convert the array to this dtype.
    """

    _what = "image"

    def __init__(self, array, xy0=(0, 0), dtype=None):
        arr = _as_array(array, self._what)
        if dtype is not None:
            arr = arr.astype(dtype)
        if not isinstance(arr, jax.core.Tracer):
            _check_2d(arr, self._what)
            self._check_dtype(arr)
        self._array = arr
        self._xy0 = _xy0(xy0)

    def _check_dtype(self, arr):
        _check_float(arr, self._what)

    # pytree ------------------------------------------------------------------------------
    def tree_flatten(self):
        """Split into the array leaf and the static ``xy0`` (JAX pytree protocol)."""
        return (self._array,), (self._xy0,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Rebuild from static data and leaves (JAX pytree protocol)."""
        obj = object.__new__(cls)
        obj._array = children[0]
        obj._xy0 = aux[0]
        return obj

    # access ------------------------------------------------------------------------------
    @property
    def array(self):
        """The pixel array ``[y, x]`` (a view: edit numpy arrays in place as in afw)."""
        return self._array

    @array.setter
    def array(self, value):
        value = _as_array(value, self._what)
        if tuple(value.shape) != tuple(self._array.shape):
            msg = f"cannot set a {self._what} array of shape {value.shape} into shape {self._array.shape}"
            raise ValueError(msg)
        self._check_dtype(value)
        self._array = value

    def getArray(self):
        """Return the pixel array ``[y, x]`` (the stored array, not a copy)."""
        return self._array

    def __array__(self, dtype=None, copy=None):
        arr = np.asarray(self._array)
        return arr if dtype is None else arr.astype(dtype)

    @property
    def shape(self):
        """Array shape ``(H, W)``."""
        return tuple(self._array.shape)

    @property
    def dtype(self):
        """Array dtype."""
        return self._array.dtype

    def getWidth(self):
        """Return the width W in pixels."""
        return int(self._array.shape[1])

    def getHeight(self):
        """Return the height H in pixels."""
        return int(self._array.shape[0])

    def getDimensions(self):
        """Return ``(width, height)``."""
        return (self.getWidth(), self.getHeight())

    def getXY0(self):
        """Return the PARENT origin ``(x0, y0)`` of array element ``[0, 0]``."""
        return self._xy0

    def setXY0(self, xy0):
        """Set the PARENT origin ``(x0, y0)`` (pixels are not moved)."""
        self._xy0 = _xy0(xy0)

    def getX0(self):
        """Return the PARENT x of array column 0."""
        return self._xy0[0]

    def getY0(self):
        """Return the PARENT y of array row 0."""
        return self._xy0[1]

    def getBBox(self):
        """Return the PARENT bounding box."""
        return Box2I(self._xy0, self.getDimensions())

    def clone(self):
        """Deep copy (numpy arrays are copied; JAX arrays are immutable and shared)."""
        new = _copy.copy(self)
        if isinstance(self._array, np.ndarray):
            new._array = self._array.copy()
        return new

    def subset(self, bbox):
        """Sub-image over a PARENT ``Box2I`` (a view for numpy arrays), keeping PARENT xy0."""
        if not self.getBBox().contains(bbox):
            raise ValueError(f"{bbox} is not inside the {self._what} bbox {self.getBBox()}")
        new = _copy.copy(self)
        new._array = self._array[bbox.slices(self._xy0)]
        new._xy0 = bbox.getMin()
        return new

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, xy0={self._xy0})"


@jax.tree_util.register_pytree_node_class
class Mask(Image):
    """Integer bit-mask plane with named planes, like ``lsst.afw.image.Mask``.

    Parameters
    ----------
    array : array_like of int, shape (H, W), optional
        Mask bits.  ``None`` needs ``dimensions``.
    xy0 : tuple of int, optional
        PARENT origin.
    planes : dict, optional
        Mask-plane dictionary ``{name: bit index}``; defaults to LSST's default planes
        (BAD 0, SAT 1, INTRP 2, CR 3, EDGE 4, DETECTED 5, DETECTED_NEGATIVE 6, SUSPECT 7, NO_DATA 8).
    dimensions : tuple of int, optional
        ``(width, height)`` of an all-zero mask, when ``array`` is None.

    Notes
    -----
    Unlike afw, where one plane dictionary is shared process-wide, each Mask carries its own
    dictionary (static pytree data); masks combined with ``|`` merge their dictionaries and raise
    if the same name has different bits.
    """

    _what = "mask"

    def __init__(self, array=None, xy0=(0, 0), planes=None, dimensions=None):
        if array is None:
            if dimensions is None:
                raise ValueError("Mask needs an array or dimensions=(width, height)")
            array = np.zeros((dimensions[1], dimensions[0]), dtype=MASK_DTYPE)
        super().__init__(array, xy0)
        self._planes = _freeze_planes(DEFAULT_MASK_PLANES if planes is None else planes)

    def _check_dtype(self, arr):
        if not np.issubdtype(np.dtype(arr.dtype), np.integer):
            msg = (
                f"mask must have an integer dtype, got {arr.dtype}; "
                f"use e.g. numpy.asarray(mask, dtype=numpy.int32)"
            )
            raise TypeError(msg)

    def tree_flatten(self):
        """Split into the array leaf and static ``xy0`` and planes (JAX pytree protocol)."""
        return (self._array,), (self._xy0, self._planes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Rebuild from static data and leaves (JAX pytree protocol)."""
        obj = object.__new__(cls)
        obj._array = children[0]
        obj._xy0, obj._planes = aux
        return obj

    # planes ------------------------------------------------------------------------------
    def getMaskPlaneDict(self):
        """Return ``{name: bit index}`` of the planes this mask knows."""
        return dict(self._planes)

    def getMaskPlane(self, name):
        """Bit index of plane ``name``."""
        planes = dict(self._planes)
        if name not in planes:
            msg = (
                f"unknown mask plane {name!r}; known planes are {sorted(planes)}; "
                f"add it with mask.addMaskPlane({name!r})"
            )
            raise KeyError(msg)
        return planes[name]

    def getPlaneBitMask(self, names):
        """Bit mask (an int) of one plane name or a list of names."""
        if isinstance(names, str):
            names = [names]
        value = 0
        for name in names:
            value |= 1 << self.getMaskPlane(name)
        return value

    def addMaskPlane(self, name):
        """Add a plane (if new) and return its bit index."""
        planes = dict(self._planes)
        if name in planes:
            return planes[name]
        used = set(planes.values())
        bit = next(b for b in range(_MAX_MASK_PLANES + 1) if b not in used)
        if bit > _MAX_MASK_PLANES:  # pragma: no cover - 32 planes
            raise ValueError("no free mask bit left (at most 32 planes)")
        planes[name] = bit
        self._planes = _freeze_planes(planes)
        return bit

    def removeAndClearMaskPlane(self, name):
        """Clear plane ``name`` everywhere and remove it from this mask's dictionary."""
        self.clearMaskPlane(self.getMaskPlane(name))
        self._planes = _freeze_planes({k: v for k, v in self._planes if k != name})

    def clearMaskPlane(self, bit):
        """Clear one bit (by index) everywhere."""
        self._set_array(self._array & ~(1 << int(bit)))

    def clearAllMaskPlanes(self):
        """Clear every bit of every pixel (the plane dictionary is kept)."""
        self._set_array(self._array * 0)

    def setMaskPlaneValues(self, bit, x0, x1, y):
        """Set bit ``bit`` on row ``y`` for columns x0..x1 inclusive (LOCAL coordinates)."""
        arr = self._array
        if isinstance(arr, np.ndarray):
            arr[y, x0 : x1 + 1] |= 1 << int(bit)
        else:
            self._array = arr.at[y, x0 : x1 + 1].set(arr[y, x0 : x1 + 1] | (1 << int(bit)))

    def _set_array(self, arr):
        if isinstance(self._array, np.ndarray):
            self._array[...] = arr
        else:
            self._array = arr

    def isSet(self, names):
        """Boolean array: pixels where any of the named planes is set."""
        return (self._array & self.getPlaneBitMask(names)) != 0

    def __or__(self, other):
        if not isinstance(other, Mask):
            return Mask(self._array | other, self._xy0, dict(self._planes))
        return Mask(self._array | other._array, self._xy0, _merge_planes(self._planes, other._planes))

    def __ior__(self, other):
        if isinstance(other, Mask):
            self._planes = _freeze_planes(_merge_planes(self._planes, other._planes))
            other = other._array
        self._set_array(self._array | other)
        return self


def _freeze_planes(planes):
    items = tuple(sorted(((str(k), int(v)) for k, v in dict(planes).items()), key=lambda kv: kv[1]))
    bits = [b for _, b in items]
    if len(set(bits)) != len(bits):
        raise ValueError(f"mask planes must have distinct bits, got {dict(items)}")
    if any(b < 0 or b > _MAX_MASK_PLANES for b in bits):
        raise ValueError(f"mask plane bits must be in 0..{_MAX_MASK_PLANES}, got {dict(items)}")
    return items


def _merge_planes(a, b):
    merged = dict(a)
    for name, bit in dict(b).items():
        if name in merged and merged[name] != bit:
            msg = f"mask plane {name!r} has bit {merged[name]} in one mask and {bit} in the other"
            raise ValueError(msg)
        merged[name] = bit
    return merged


# ----------------------------------------------------------------------------------------------
# MaskedImage
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class MaskedImage:
    """Image, mask and variance planes of one shape, like ``lsst.afw.image.MaskedImage``.

    Parameters
    ----------
    image : array_like or Image, shape (H, W)
        Pixel values (floating point).
    mask : array_like of int or Mask, optional
        Mask bits; all zero if omitted.
    variance : array_like or Image, optional
        Per-pixel variance; all zero if omitted (as in afw).
    xy0 : tuple of int, optional
        PARENT origin, used when ``image`` is a bare array.

    Raises
    ------
    ValueError
        If the planes' shapes differ.
    TypeError
        If the image or variance is not floating point or the mask not integer.
    """

    def __init__(self, image, mask=None, variance=None, xy0=None):
        if not isinstance(image, Image) or isinstance(image, Mask):
            image = Image(image, xy0=(0, 0) if xy0 is None else xy0)
        elif xy0 is not None:
            image = Image(image.array, xy0)
        xy0 = image.getXY0()
        shape = image.shape
        if mask is None:
            mask = Mask(np.zeros(shape, dtype=MASK_DTYPE), xy0)
        elif not isinstance(mask, Mask):
            mask = Mask(mask, xy0)
        else:
            mask = Mask(mask.array, xy0, planes=mask.getMaskPlaneDict())
        if variance is None:
            zeros = np.zeros(shape, dtype=np.dtype(image.dtype))
            variance = Image(zeros, xy0)
        elif not isinstance(variance, Image) or isinstance(variance, Mask):
            variance = Image(_as_array(variance, "variance"), xy0)
        else:
            variance = Image(variance.array, xy0)
        for name, plane in (("mask", mask), ("variance", variance)):
            if plane.shape != shape:
                msg = (
                    f"MaskedImage planes must share one shape: image is {shape} but {name} is "
                    f"{plane.shape}; cut or pad the planes to the same (height, width)"
                )
                raise ValueError(msg)
        self._image, self._mask, self._variance = image, mask, variance

    def tree_flatten(self):
        """Split into the three plane leaves (JAX pytree protocol)."""
        return (self._image, self._mask, self._variance), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Rebuild from the three planes (JAX pytree protocol)."""
        obj = object.__new__(cls)
        obj._image, obj._mask, obj._variance = children
        return obj

    # properties and LSST accessors --------------------------------------------------------
    @property
    def image(self):
        """Image plane (:class:`Image`); assigning copies the pixels in."""
        return self._image

    @image.setter
    def image(self, value):
        self._image.array = value.array if isinstance(value, Image) else value

    @property
    def mask(self):
        """Mask plane (:class:`Mask`); assigning copies the bits in."""
        return self._mask

    @mask.setter
    def mask(self, value):
        self._mask.array = value.array if isinstance(value, Image) else value

    @property
    def variance(self):
        """Variance plane (:class:`Image`); assigning copies the pixels in."""
        return self._variance

    @variance.setter
    def variance(self, value):
        self._variance.array = value.array if isinstance(value, Image) else value

    def getImage(self):
        """Return the image plane."""
        return self._image

    def getMask(self):
        """Return the mask plane."""
        return self._mask

    def getVariance(self):
        """Return the variance plane."""
        return self._variance

    def getArrays(self):
        """Return the ``(image, mask, variance)`` arrays."""
        return self._image.array, self._mask.array, self._variance.array

    @property
    def shape(self):
        """Array shape ``(H, W)`` shared by the planes."""
        return self._image.shape

    @property
    def dtype(self):
        """Dtype of the image plane."""
        return self._image.dtype

    def getWidth(self):
        """Return the width W in pixels."""
        return self._image.getWidth()

    def getHeight(self):
        """Return the height H in pixels."""
        return self._image.getHeight()

    def getDimensions(self):
        """Return ``(width, height)``."""
        return self._image.getDimensions()

    def getXY0(self):
        """Return the PARENT origin ``(x0, y0)``."""
        return self._image.getXY0()

    def setXY0(self, xy0):
        """Set the PARENT origin of all three planes."""
        for plane in (self._image, self._mask, self._variance):
            plane.setXY0(xy0)

    def getBBox(self):
        """Return the PARENT bounding box."""
        return self._image.getBBox()

    def clone(self):
        """Return a deep copy of the three planes (numpy arrays are copied)."""
        new = object.__new__(MaskedImage)
        new._image, new._mask, new._variance = (
            self._image.clone(),
            self._mask.clone(),
            self._variance.clone(),
        )
        return new

    def subset(self, bbox):
        """Return the MaskedImage over a PARENT ``Box2I`` (views for numpy arrays)."""
        new = object.__new__(MaskedImage)
        new._image = self._image.subset(bbox)
        new._mask = self._mask.subset(bbox)
        new._variance = self._variance.subset(bbox)
        return new

    def __getitem__(self, bbox):
        if not isinstance(bbox, Box2I):
            raise TypeError("index a MaskedImage with a PARENT Box2I")
        return self.subset(bbox)

    # arithmetic (afw ``MaskedImage`` operator rules: variances add, masks OR) ---------------------
    def _combine(self, other, sign):
        if isinstance(other, MaskedImage):
            if other.shape != self.shape:
                raise ValueError(f"cannot combine MaskedImages of shapes {self.shape} and {other.shape}")
            image = self._image.array + sign * other._image.array
            variance = self._variance.array + other._variance.array
            mask = self._mask | other._mask
            return MaskedImage(Image(image, self.getXY0()), mask, Image(variance, self.getXY0()))
        image = self._image.array + sign * other
        return MaskedImage(
            Image(image, self.getXY0()), self._mask.clone(), self._variance.clone()
        )

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __mul__(self, scale):
        if isinstance(scale, MaskedImage):
            raise TypeError("multiply a MaskedImage by a scalar")
        return MaskedImage(
            Image(self._image.array * scale, self.getXY0()),
            self._mask.clone(),
            Image(self._variance.array * (scale * scale), self.getXY0()),
        )

    __rmul__ = __mul__

    def __truediv__(self, scale):
        return self * (1.0 / scale)

    def __repr__(self):
        return f"MaskedImage(shape={self.shape}, dtype={self.dtype}, xy0={self.getXY0()})"


# ----------------------------------------------------------------------------------------------
# Exposure
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class Exposure:
    """A MaskedImage with PSF, WCS, PhotoCalib, filter and header, like ``lsst.afw.image.Exposure``.

    Parameters
    ----------
    maskedImage : MaskedImage, Image or array_like
        The pixels; a bare array becomes the image plane (mask 0, variance 0).
    psf : PSF model, optional
        Any object with ``computeKernelImage(position)`` (see :mod:`jaxdiff.image.psf`).
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the PARENT pixel grid.  (FITS headers count pixels from 1 and from the
        array origin; :mod:`jaxdiff.image.fits` handles the ``xy0`` offset on read and write.)
    photoCalib : PhotoCalib, optional
    filterLabel : FilterLabel, optional
    metadata : astropy.io.fits.Header or dict, optional
        Free-form header cards carried along.

    Notes
    -----
    Pytree layout: leaves are the three planes and the PSF's array parameters (a PSF that is
    itself a pytree); WCS, PhotoCalib, filter and metadata are static.
    """

    def __init__(self, maskedImage, psf=None, wcs=None, photoCalib=None, filterLabel=None, metadata=None):
        if not isinstance(maskedImage, MaskedImage):
            maskedImage = MaskedImage(maskedImage)
        if wcs is not None and not hasattr(wcs, "pixel_to_world"):
            raise TypeError(f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}")
        if photoCalib is not None and not isinstance(photoCalib, PhotoCalib):
            raise TypeError(f"photoCalib must be a jaxdiff.PhotoCalib, got {type(photoCalib).__name__}")
        if psf is not None and not hasattr(psf, "computeKernelImage"):
            raise TypeError(f"psf must provide computeKernelImage(position), got {type(psf).__name__}")
        self._maskedImage = maskedImage
        self._psf = psf
        self._wcs = _Static(wcs)
        self._photoCalib = photoCalib
        self._filter = filterLabel
        self._metadata = _Static(metadata if metadata is not None else {})

    def tree_flatten(self):
        """Split into leaves (planes, PSF) and static data (JAX pytree protocol)."""
        return (self._maskedImage, self._psf), (self._wcs, self._photoCalib, self._filter, self._metadata)

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Rebuild from static data and leaves (JAX pytree protocol)."""
        obj = object.__new__(cls)
        obj._maskedImage, obj._psf = children
        obj._wcs, obj._photoCalib, obj._filter, obj._metadata = aux
        return obj

    # properties ----------------------------------------------------------------------------
    @property
    def maskedImage(self):
        """The :class:`MaskedImage`; a replacement must have the same shape."""
        return self._maskedImage

    @maskedImage.setter
    def maskedImage(self, value):
        if not isinstance(value, MaskedImage) or value.shape != self._maskedImage.shape:
            raise ValueError("maskedImage must be a MaskedImage of the same shape")
        self._maskedImage = value

    @property
    def image(self):
        """Image plane of the masked image."""
        return self._maskedImage.image

    @property
    def mask(self):
        """Mask plane of the masked image."""
        return self._maskedImage.mask

    @property
    def variance(self):
        """Variance plane of the masked image."""
        return self._maskedImage.variance

    @property
    def psf(self):
        """PSF model, or None."""
        return self._psf

    @psf.setter
    def psf(self, value):
        self.setPsf(value)

    @property
    def wcs(self):
        """Celestial WCS (astropy), or None."""
        return self._wcs.value

    @wcs.setter
    def wcs(self, value):
        self.setWcs(value)

    @property
    def photoCalib(self):
        """Photometric calibration, or None."""
        return self._photoCalib

    @photoCalib.setter
    def photoCalib(self, value):
        self.setPhotoCalib(value)

    @property
    def filter(self):
        """Filter label, or None."""
        return self._filter

    @property
    def metadata(self):
        """Header cards carried along (astropy Header or dict)."""
        return self._metadata.value

    @property
    def shape(self):
        """Array shape ``(H, W)``."""
        return self._maskedImage.shape

    @property
    def dtype(self):
        """Dtype of the image plane."""
        return self._maskedImage.dtype

    # LSST accessors ------------------------------------------------------------------------
    def getMaskedImage(self):
        """Return the :class:`MaskedImage`."""
        return self._maskedImage

    def setMaskedImage(self, maskedImage):
        """Replace the :class:`MaskedImage` (same shape)."""
        self.maskedImage = maskedImage

    def getImage(self):
        """Return the image plane."""
        return self._maskedImage.image

    def getMask(self):
        """Return the mask plane."""
        return self._maskedImage.mask

    def getVariance(self):
        """Return the variance plane."""
        return self._maskedImage.variance

    def getPsf(self):
        """Return the PSF model, or None."""
        return self._psf

    def setPsf(self, psf):
        """Set the PSF model (anything with ``computeKernelImage``), or None."""
        if psf is not None and not hasattr(psf, "computeKernelImage"):
            raise TypeError(f"psf must provide computeKernelImage(position), got {type(psf).__name__}")
        self._psf = psf

    def hasPsf(self):
        """Return True if a PSF is attached."""
        return self._psf is not None

    def getWcs(self):
        """Return the celestial WCS, or None."""
        return self._wcs.value

    def setWcs(self, wcs):
        """Set the celestial WCS (an astropy WCS), or None."""
        if wcs is not None and not hasattr(wcs, "pixel_to_world"):
            raise TypeError(f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}")
        self._wcs = _Static(wcs)

    def hasWcs(self):
        """Return True if a WCS is attached."""
        return self._wcs.value is not None

    def getPhotoCalib(self):
        """Return the photometric calibration, or None."""
        return self._photoCalib

    def setPhotoCalib(self, photoCalib):
        """Set the photometric calibration (a :class:`PhotoCalib`), or None."""
        if photoCalib is not None and not isinstance(photoCalib, PhotoCalib):
            raise TypeError(f"photoCalib must be a jaxdiff.PhotoCalib, got {type(photoCalib).__name__}")
        self._photoCalib = photoCalib

    def getFilter(self):
        """Return the filter label, or None."""
        return self._filter

    def setFilter(self, filterLabel):
        """Set the filter label."""
        self._filter = filterLabel

    def getMetadata(self):
        """Return the header cards."""
        return self._metadata.value

    def setMetadata(self, metadata):
        """Set the header cards (astropy Header or dict)."""
        self._metadata = _Static(metadata)

    def getBBox(self):
        """Return the PARENT bounding box."""
        return self._maskedImage.getBBox()

    def getXY0(self):
        """Return the PARENT origin ``(x0, y0)``."""
        return self._maskedImage.getXY0()

    def setXY0(self, xy0):
        """Set the PARENT origin of all planes."""
        self._maskedImage.setXY0(xy0)

    def getDimensions(self):
        """Return ``(width, height)``."""
        return self._maskedImage.getDimensions()

    def getWidth(self):
        """Return the width W in pixels."""
        return self._maskedImage.getWidth()

    def getHeight(self):
        """Return the height H in pixels."""
        return self._maskedImage.getHeight()

    def clone(self):
        """Deep copy of the pixels; PSF, WCS, PhotoCalib, filter and header are shared (immutable)."""
        new = object.__new__(Exposure)
        new._maskedImage = self._maskedImage.clone()
        new._psf, new._wcs, new._photoCalib = self._psf, self._wcs, self._photoCalib
        new._filter = self._filter
        meta = self._metadata.value
        new._metadata = _Static(meta.copy() if hasattr(meta, "copy") else meta)
        return new

    def subset(self, bbox):
        """Exposure over a PARENT ``Box2I`` sharing pixels (numpy) and metadata."""
        new = object.__new__(Exposure)
        new._maskedImage = self._maskedImage.subset(bbox)
        new._psf, new._wcs, new._photoCalib = self._psf, self._wcs, self._photoCalib
        new._filter, new._metadata = self._filter, self._metadata
        return new

    def __getitem__(self, bbox):
        return self.subset(bbox)

    @classmethod
    def readFits(cls, path):
        """Read an Exposure written in LSST's multi-extension layout (see :mod:`jaxdiff.image.fits`)."""
        return _FITS_IO["read"](path)

    def writeFits(self, path):
        """Write this Exposure atomically in LSST's multi-extension layout (see :mod:`jaxdiff.image.fits`)."""
        _FITS_IO["write"](self, path)

    def __repr__(self):
        return (
            f"Exposure(shape={self.shape}, dtype={self.dtype}, xy0={self.getXY0()}, "
            f"psf={type(self._psf).__name__ if self._psf is not None else None}, "
            f"wcs={'yes' if self.hasWcs() else None}, photoCalib={self._photoCalib})"
        )
