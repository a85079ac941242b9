"""FITS input/output for :class:`~jaxdiff.image.Exposure`, in LSST's multi-extension layout.

File layout written by :func:`writeExposure` (and read by :func:`readExposure`)::

    HDU 0  PRIMARY   no data; the exposure metadata cards, plus
                     FILTER / BAND                (FilterLabel physical / band name)
                     HIERARCH PHOTOCALIB_MEAN / HIERARCH PHOTOCALIB_ERR   (PhotoCalib)
    HDU 1  IMAGE     image plane (float32 or float64, dtype kept)
    HDU 2  MASK      int32 mask; one ``MP_<NAME> = bit`` card per mask plane
    HDU 3  VARIANCE  variance plane (dtype kept)
    HDU 4  PSF       (only with a PSF) kernel image(s), ``PSFTYPE`` and parameter cards
    HDU 5  PSF_GRID  (only for GridPsf) binary table with the grid centres

Conventions
-----------
* Every image HDU carries ``EXTNAME`` and ``EXTTYPE`` (as afw writes them).
* ``xy0``: afw's cards ``LTV1 = -x0``, ``LTV2 = -y0`` and the ``A`` (PARENT) linear WCS
  ``CTYPEnA = 'LINEAR'``, ``CRPIXnA = 1``, ``CRVAL1A = x0``, ``CRVAL2A = y0``.  On read, ``LTV1/2``
  win; without them the ``A`` WCS is used; without either xy0 is ``(0, 0)``.
* WCS: ``Exposure.wcs`` refers to PARENT pixel coordinates (0-based, ``x = x0 + col``), i.e.
  ``exposure.wcs.pixel_to_world(x0 + col, y0 + row)`` is the sky position of array pixel
  ``[row, col]``.  The FITS header WCS refers to the array grid, as FITS requires, so it is
  written as ``wcs.to_header(relax=True)`` with ``CRPIX1 -= x0``, ``CRPIX2 -= y0``, and the
  shift is undone on read.  (CRPIX is the only pixel-origin term; SIP polynomials are relative
  to CRPIX, so they are unaffected.)  wcslib prints about 14 significant digits, so WCS values
  round-trip to ~1e-12 relative, not bit-exactly.  Lookup-table distortions are not supported.
* PhotoCalib is stored as two primary-header cards (LSST uses an archive binary table).
* Float parameter cards (PhotoCalib, PSF parameters) are written with Python's shortest
  round-trip ``repr`` in FITS free format, so they read back bit-exactly.
* Metadata: the exposure's metadata cards (astropy ``Header`` or ``dict``) go into the primary
  header, less structural keywords (``SIMPLE``, ``BITPIX``, ``NAXISn``, ``BZERO``, ...).  On read
  the primary header, less structural and the managed cards above, becomes an astropy Header.
  ``FILTER``/``BAND`` and ``PHOTOCALIB_*`` are managed: the FilterLabel/PhotoCalib overrides
  metadata cards of those names on write, and on read they become the FilterLabel/PhotoCalib
  (so a metadata ``FILTER`` card of an exposure without FilterLabel comes back as its label).
* PSFs: GaussianPsf, MoffatPsf, ImagePsf and GridPsf are stored exactly; any other PSF class
  is written (with a warning) as an ImagePsf of its kernel at its average position.
* All writes are atomic: a temporary file in the target's directory is written, flushed,
  fsync'ed and renamed over the target with :func:`os.replace`.

Files written by afw (``MaskedImage.writeFits``/``Exposure.writeFits``) are read too: the planes
are found by ``EXTNAME`` or ``EXTTYPE``; failing both, the first three image HDUs are taken as
image, mask and variance.  LSST's archive tables (PSF, PhotoCalib, ...) are not decoded.
"""

import os
import re
import secrets
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from . import image as _image_module
from .calib import FilterLabel, PhotoCalib
from .image import DEFAULT_MASK_PLANES, MASK_DTYPE, Exposure, Image, Mask, MaskedImage
from .psf import GaussianPsf, GridPsf, ImagePsf, MoffatPsf

__all__ = ["exposureFromFits", "readExposure", "readImageArray", "writeExposure"]

_PLANES = ("IMAGE", "MASK", "VARIANCE")
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "GROUPS", "BSCALE",
    "BZERO", "BLANK", "EXTNAME", "EXTVER", "EXTLEVEL", "EXTTYPE", "CHECKSUM", "DATASUM", "TFIELDS",
    "THEAP", "END",
}  # fmt: skip
_STRUCTURAL_RE = re.compile(r"^(NAXIS|TTYPE|TFORM|TUNIT|TNULL|TSCAL|TZERO|TDISP|TDIM)\d+$")
_MANAGED = {"FILTER", "BAND", "PHOTOCALIB_MEAN", "PHOTOCALIB_ERR"}
_STANDARD_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")


# ----------------------------------------------------------------------------------------------
# header helpers
# ----------------------------------------------------------------------------------------------


def _set(hdr, key, value, comment=None):
    """Set a card, using a HIERARCH card for keys that are not standard 8-character keywords."""
    if not _STANDARD_KEY.match(key):
        key = "HIERARCH " + key
    hdr[key] = (value, comment) if comment else value


def _set_float(hdr, key, value, comment=""):
    """Append a float card that reads back bit-exactly (shortest ``repr``, FITS free format)."""
    value = float(value)
    if not np.isfinite(value):  # FITS has no NaN/Inf literal: store the text
        return _set(hdr, key, repr(value), comment)
    name = f"{key:<8}= " if _STANDARD_KEY.match(key) else f"HIERARCH {key} = "
    text = f"{name}{repr(value).upper():>20}"
    if comment:
        text += f" / {comment}"
    hdr.remove(key, ignore_missing=True)
    hdr.append(fits.Card.fromstring(text[:80]))


def _is_structural(key):
    return key in _STRUCTURAL or bool(_STRUCTURAL_RE.match(key))


def _clean_header(hdr, drop=()):
    """Copy of ``hdr`` without structural keywords (and without the keys in ``drop``)."""
    out = hdr.copy()
    for key in set(out.keys()):
        if _is_structural(key) or key in drop:
            out.remove(key, remove_all=True)
    return out


def _metadata_header(metadata):
    """Primary-header cards from an astropy Header or a dict (structural keys skipped)."""
    hdr = fits.Header()
    if metadata is None:
        return hdr
    if isinstance(metadata, fits.Header):
        return _clean_header(metadata)
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be an astropy Header or a dict, got {type(metadata).__name__}")
    for key, value in metadata.items():
        key = str(key).upper() if _STANDARD_KEY.match(str(key).upper()) else str(key)
        if _is_structural(key):
            continue
        try:
            _set(hdr, key, value.item() if isinstance(value, np.generic) else value)
        except (ValueError, TypeError) as exc:
            msg = (
                f"metadata card {key!r} has a value FITS cannot store ({type(value).__name__}: "
                f"{value!r}); convert it to a number, bool or string"
            )
            raise TypeError(msg) from exc
    return hdr


def _xy0_cards(hdr, xy0):
    x0, y0 = xy0
    hdr["LTV1"] = (-x0, "-x0 (PARENT origin, afw convention)")
    hdr["LTV2"] = (-y0, "-y0 (PARENT origin, afw convention)")
    for i, v in ((1, x0), (2, y0)):
        hdr[f"CTYPE{i}A"] = "LINEAR"
        hdr[f"CRPIX{i}A"] = 1
        hdr[f"CRVAL{i}A"] = v
        hdr[f"CUNIT{i}A"] = "pixel"


def _read_xy0(hdr):
    if "LTV1" in hdr and "LTV2" in hdr:
        vals = (-hdr["LTV1"], -hdr["LTV2"])
    elif str(hdr.get("CTYPE1A", "")).strip() == "LINEAR" and "CRVAL1A" in hdr and "CRVAL2A" in hdr:
        vals = tuple(hdr[f"CRVAL{i}A"] - hdr.get(f"CRPIX{i}A", 1) + 1 for i in (1, 2))
    else:
        return (0, 0)
    if any(float(v) != int(v) for v in vals):
        raise ValueError(f"xy0 from the header must be integers, got {vals}")
    return tuple(int(v) for v in vals)


def _wcs_cards(wcs, xy0):
    """Header cards of ``wcs`` (PARENT pixels) referred to the array grid."""
    if any(getattr(wcs, a, None) is not None for a in ("cpdis1", "cpdis2", "det2im1", "det2im2")):
        msg = "writing a WCS with lookup-table distortions is not supported; use a SIP/TPV WCS instead"
        raise ValueError(msg)
    hdr = wcs.to_header(relax=True)
    for i, v in ((1, xy0[0]), (2, xy0[1])):
        hdr[f"CRPIX{i}"] = hdr.get(f"CRPIX{i}", 0.0) - v
    return hdr


def _wcs_from_header(hdr, xy0=(0, 0)):
    """Celestial WCS of ``hdr`` in PARENT pixels, or None (FITSFixedWarning silenced)."""
    if "CTYPE1" not in hdr and "CTYPE2" not in hdr:
        return None
    hdr = hdr.copy()
    for i, v in ((1, xy0[0]), (2, xy0[1])):
        if f"CRPIX{i}" in hdr:
            hdr[f"CRPIX{i}"] = hdr[f"CRPIX{i}"] + v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(hdr)
        except Exception as exc:  # a broken WCS should not make the pixels unreadable
            warnings.warn(f"ignoring the header WCS, which astropy cannot parse: {exc}", stacklevel=3)
            return None
        if not wcs.has_celestial:
            return None
        return wcs if wcs.naxis == 2 else wcs.celestial


def _native(arr):
    """Return a numpy copy in native byte order (FITS data are big-endian)."""
    arr = np.array(arr)
    return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder not in ("=", "|") else arr


def _float_image(arr):
    """float32 stays float32, float64 stays float64, everything else becomes float32."""
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)


def _mask_array(arr, what):
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer mask bits, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 4:
        return arr.astype(np.uint32).view(np.int32)  # keep bit 31
    return arr.astype(MASK_DTYPE)


# ----------------------------------------------------------------------------------------------
# PSF
# ----------------------------------------------------------------------------------------------


def _psf_hdus(psf):
    if psf is None:
        return []
    hdr = fits.Header()
    hdr["EXTNAME"] = "PSF"
    extra = []
    if isinstance(psf, GaussianPsf):
        hdr["PSFTYPE"] = "GaussianPsf"
        _set_float(hdr, "PSFSIGMA", psf.sigma, "Gaussian sigma [pixel]")
        data = np.asarray(psf.computeKernelArray(), dtype=np.float64)
    elif isinstance(psf, MoffatPsf):
        hdr["PSFTYPE"] = "MoffatPsf"
        _set_float(hdr, "PSFFWHM", psf._fwhm, "Moffat FWHM [pixel]")
        _set_float(hdr, "PSFBETA", psf._beta, "Moffat beta")
        data = np.asarray(psf.computeKernelArray(), dtype=np.float64)
    elif isinstance(psf, GridPsf):
        hdr["PSFTYPE"] = "GridPsf"
        data = np.asarray(psf.images)
        cols = [
            fits.Column("XCENTERS", f"{len(psf.xCenters)}D", array=psf.xCenters[None, :]),
            fits.Column("YCENTERS", f"{len(psf.yCenters)}D", array=psf.yCenters[None, :]),
        ]
        extra.append(fits.BinTableHDU.from_columns(cols, name="PSF_GRID"))
    else:
        avg = psf.getAveragePosition() if hasattr(psf, "getAveragePosition") else (0.0, 0.0)
        if isinstance(psf, ImagePsf):
            data = np.asarray(psf.array)
        else:
            msg = (
                f"{type(psf).__name__} has no FITS form; writing its kernel image at the average "
                f"position {avg} as an ImagePsf"
            )
            warnings.warn(msg, stacklevel=4)
            hdr["PSFORIG"] = (type(psf).__name__, "PSF class that was written as an ImagePsf")
            data = np.asarray(psf.computeKernelImage(avg), dtype=np.float64)
        hdr["PSFTYPE"] = "ImagePsf"
        _set_float(hdr, "PSFAVGX", avg[0], "average position x [PARENT pixel]")
        _set_float(hdr, "PSFAVGY", avg[1], "average position y [PARENT pixel]")
    hdr["PSFBOXW"] = (data.shape[-1], "kernel box width [pixel]")
    hdr["PSFBOXH"] = (data.shape[-2], "kernel box height [pixel]")
    return [fits.ImageHDU(data, header=hdr)] + extra


def _read_psf(hdul):
    if "PSF" not in hdul:
        return None
    hdu = hdul["PSF"]
    hdr, kind = hdu.header, str(hdu.header.get("PSFTYPE", "ImagePsf")).strip()
    w, h = hdr.get("PSFBOXW"), hdr.get("PSFBOXH")
    if kind == "GaussianPsf":
        return GaussianPsf(w, h, float(hdr["PSFSIGMA"]))
    if kind == "MoffatPsf":
        return MoffatPsf(w, h, float(hdr["PSFFWHM"]), float(hdr["PSFBETA"]))
    if kind == "ImagePsf":
        avg = (float(hdr.get("PSFAVGX", 0.0)), float(hdr.get("PSFAVGY", 0.0)))
        return ImagePsf(_native(hdu.data), averagePosition=avg)
    if kind == "GridPsf":
        if "PSF_GRID" not in hdul:
            raise ValueError("GridPsf needs the PSF_GRID table of grid centres, which the file lacks")
        row = hdul["PSF_GRID"].data[0]
        return GridPsf(_native(hdu.data), _native(row["XCENTERS"]), _native(row["YCENTERS"]))
    raise ValueError(f"unknown PSFTYPE {kind!r}; expected GaussianPsf, MoffatPsf, ImagePsf or GridPsf")


# ----------------------------------------------------------------------------------------------
# write
# ----------------------------------------------------------------------------------------------


def _build_hdulist(exposure):
    mi = exposure.getMaskedImage()
    xy0 = mi.getXY0()
    wcs = exposure.getWcs()
    wcs_hdr = _wcs_cards(wcs, xy0) if wcs is not None else None

    primary = fits.PrimaryHDU(header=_metadata_header(exposure.getMetadata()))
    phdr = primary.header
    flt = exposure.getFilter()
    if flt is not None:
        for key in ("FILTER", "BAND"):
            phdr.remove(key, ignore_missing=True)
        if flt.physicalLabel is not None:
            phdr["FILTER"] = (str(flt.physicalLabel), "physical filter (FilterLabel)")
        if flt.band is not None:
            phdr["BAND"] = (str(flt.band), "band (FilterLabel)")
    pc = exposure.getPhotoCalib()
    if pc is not None:
        _set_float(phdr, "PHOTOCALIB_MEAN", pc.getCalibrationMean(), "nJy per count")
        _set_float(phdr, "PHOTOCALIB_ERR", pc.getCalibrationErr(), "error of PHOTOCALIB_MEAN")

    hdus = [primary]
    for name, plane in zip(_PLANES, (mi.getImage(), mi.getMask(), mi.getVariance()), strict=True):
        hdr = fits.Header()
        hdr["EXTNAME"] = name
        hdr["EXTTYPE"] = name
        if wcs_hdr is not None:
            hdr.extend(wcs_hdr)
        _xy0_cards(hdr, xy0)
        if name == "MASK":
            for plane_name, bit in sorted(plane.getMaskPlaneDict().items(), key=lambda kv: kv[1]):
                _set(hdr, "MP_" + plane_name, bit)
            data = np.asarray(plane.array).astype(MASK_DTYPE, copy=False)
        else:
            data = np.asarray(plane.array)
        hdus.append(fits.ImageHDU(data, header=hdr))
    hdus += _psf_hdus(exposure.getPsf())
    return fits.HDUList(hdus)


def writeExposure(exposure, path, *, overwrite=True):
    """Write an Exposure atomically to a FITS file in LSST's multi-extension layout.

    Parameters
    ----------
    exposure : Exposure
        The exposure to write (image, mask, variance, xy0, PSF, WCS, PhotoCalib, filter, metadata).
    path : str or os.PathLike
        Target file.  Written to a temporary file in the same directory first, then renamed.
    overwrite : bool, optional
        If False and ``path`` exists, raise :class:`FileExistsError` and write nothing.

    Raises
    ------
    FileExistsError
        ``overwrite=False`` and the file exists.
    TypeError
        ``exposure`` is not an Exposure, or a metadata value cannot be stored in FITS.

    Notes
    -----
    The layout and header conventions are described in the :mod:`jaxdiff.image.fits` docstring.  On
    any error the temporary file is removed and an existing target is left untouched.
    """
    if not isinstance(exposure, Exposure):
        raise TypeError(f"writeExposure needs a jaxdiff Exposure, got {type(exposure).__name__}")
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    hdul = _build_hdulist(exposure)  # build first: errors here leave no file behind
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:  # mode 0o666 & ~umask, as for an ordinary file
            hdul.writeto(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------------------------------------
# read
# ----------------------------------------------------------------------------------------------


def _is_image_hdu(hdu):
    return hdu.is_image and _as_2d(hdu.data) is not None


def _find_planes(hdul, path):
    """Return the indices of the image, mask and variance HDUs."""
    found = {}
    for i, hdu in enumerate(hdul):
        for key in ("EXTNAME", "EXTTYPE"):
            value = str(hdu.header.get(key, "")).strip().upper()
            if value in _PLANES and value not in found and hdu.is_image:
                found[value] = i
    if "IMAGE" in found:
        missing = [p for p in _PLANES if p not in found]
        if missing:
            msg = (
                f"{path} has an IMAGE HDU but no {'/'.join(missing)} HDU; "
                f"use exposureFromFits() for a plain image"
            )
            raise ValueError(msg)
        return [found[p] for p in _PLANES]
    images = [i for i, hdu in enumerate(hdul) if _is_image_hdu(hdu)]
    if not images:
        raise ValueError(f"{path} has no image HDU (no HDU with 2-D image data)")
    if len(images) < 3:
        msg = (
            f"{path} has {len(images)} image HDU(s) and no EXTNAMEs, but an Exposure file needs three "
            f"(image, mask, variance); use exposureFromFits() for a plain image"
        )
        raise ValueError(msg)
    return images[:3]


def readExposure(path):
    """Read an Exposure from a FITS file written by :func:`writeExposure` or by LSST afw.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file with image, mask and variance HDUs.

    Returns
    -------
    Exposure
        Arrays in native byte order: image and variance keep their float dtype (integer data
        becomes float32), the mask is int32.  Mask planes are the file's ``MP_*`` cards plus
        the LSST default planes whose names and bits are free.  ``metadata`` is an astropy
        Header; ``wcs`` is in PARENT pixels (see the module docstring).

    Raises
    ------
    ValueError
        The file has no image HDU, or lacks a mask or variance plane, or the planes disagree in
        shape.
    """
    path = os.fspath(path)
    with fits.open(path, memmap=False) as hdul:
        idx = _find_planes(hdul, path)
        img_hdu, msk_hdu, var_hdu = (hdul[i] for i in idx)
        arrays = [_as_2d(hdul[i].data) for i in idx]
        shapes = [getattr(a, "shape", None) for a in arrays]
        if None in shapes or len(set(shapes)) != 1:
            msg = f"{path}: image, mask and variance HDUs {idx} must be 2-D of one shape, got {shapes}"
            raise ValueError(msg)
        xy0 = _read_xy0(img_hdu.header)
        image, variance = (_float_image(_native(a)) for a in arrays[::2])
        mask = _mask_array(_native(arrays[1]), f"{path} HDU {idx[1]} (mask)")

        planes = {k[3:]: int(v) for k, v in msk_hdu.header.items() if k.startswith("MP_")}
        for name, bit in DEFAULT_MASK_PLANES.items():
            if name not in planes and bit not in planes.values():
                planes[name] = bit

        phdr = hdul[0].header
        flt = None
        if "FILTER" in phdr or "BAND" in phdr:
            band, physical = (str(phdr[k]).strip() if k in phdr else None for k in ("BAND", "FILTER"))
            flt = FilterLabel(band=band, physical=physical)
        pc = None
        if "PHOTOCALIB_MEAN" in phdr:
            pc = PhotoCalib(float(phdr["PHOTOCALIB_MEAN"]), float(phdr.get("PHOTOCALIB_ERR", 0.0)))
        metadata = _clean_header(phdr, drop=_MANAGED)
        psf = _read_psf(hdul)
        wcs = _wcs_from_header(img_hdu.header, xy0)

    mi = MaskedImage(Image(image, xy0), Mask(mask, xy0, planes=planes), Image(variance, xy0))
    return Exposure(mi, psf=psf, wcs=wcs, photoCalib=pc, filterLabel=flt, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# plain FITS images
# ----------------------------------------------------------------------------------------------


def _as_2d(data):
    """Return ``data`` as a 2-D array if it is an image with at most trivial leading axes, else None."""
    if data is None or getattr(data, "ndim", 0) < 2 or int(np.prod(data.shape[:-2])) != 1:
        return None
    return data.reshape(data.shape[-2:])


def _open_image(hdul, path, hdu=None):
    """``(array, merged header)`` of HDU ``hdu`` or of the first HDU with 2-D image data."""
    if hdu is None:
        index = next((i for i, h in enumerate(hdul) if h.is_image and _as_2d(h.data) is not None), None)
        if index is None:
            raise ValueError(f"{path} has no image HDU (no HDU with 2-D image data)")
    else:
        index = hdu
    try:
        h = hdul[index]
    except (KeyError, IndexError) as exc:
        raise ValueError(f"{path} has no HDU {hdu!r} (it has {len(hdul)} HDUs)") from exc
    arr = _as_2d(h.data) if h.is_image else None
    if arr is None:
        raise ValueError(f"HDU {index!r} of {path} holds no 2-D image data; pass hdu= of an image HDU")
    header = h.header.copy()
    if h is not hdul[0]:  # inherit the primary cards the extension lacks (INHERIT convention)
        for card in hdul[0].header.cards:
            key = card.keyword
            if key not in header and not _is_structural(key) and key not in ("COMMENT", "HISTORY", ""):
                header.append(card)
    return _native(arr), header


def readImageArray(path, hdu=None):
    """Pixel array of a FITS image: HDU ``hdu`` (index or EXTNAME) or the first 2-D image HDU.

    Returns a numpy array in native byte order with the file's (scaled) dtype, shape ``(H, W)``.
    Raises ValueError if there is no such image.
    """
    path = os.fspath(path)
    with fits.open(path, memmap=False) as hdul:
        return _open_image(hdul, path, hdu)[0]


def _header_number(header, keys):
    for key in keys:
        if key in header and isinstance(header[key], (int, float)) and not isinstance(header[key], bool):
            return float(header[key])
    return None


def _plane(value, shape, what):
    arr = readImageArray(value) if isinstance(value, (str, os.PathLike)) else np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{what} has shape {arr.shape} but the image has shape {shape}")
    return arr.astype(np.float64)


def exposureFromFits(
    path,
    *,
    gain=None,
    readNoise=None,
    hdu=None,
    psf=None,
    photoCalib=None,
    variance=None,
    noise=None,
    saturation=None,
):
    """Build an Exposure from a plain single-image FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file; the image is HDU ``hdu`` or the first HDU with 2-D image data.
    gain : float, optional
        Gain in e-/ADU.  Falls back to the header ``GAIN`` card.
    readNoise : float, optional
        Read noise in electrons.  Falls back to ``RDNOISE``, ``RON`` or ``READNOIS``; 0 if none.
    hdu : int or str, optional
        HDU index or EXTNAME of the image.
    psf : PSF model, optional
    photoCalib : PhotoCalib, optional
    variance : array_like or path, optional
        Variance map (image units squared), same shape as the image.
    noise : array_like or path, optional
        1-sigma error map (image units), squared to make the variance.
    saturation : float, optional
        Pixels ``>= saturation`` are flagged SAT.  Falls back to the header ``SATURATE`` card.

    Returns
    -------
    Exposure
        xy0 = (0, 0); image float32 (float32 and integer files) or float64 (float64 files);
        variance of the same dtype; mask with LSST's default planes; WCS from the header when it
        has a celestial WCS, else None; metadata = the header (structural cards removed; an
        extension inherits the primary header's other cards).

    Raises
    ------
    ValueError
        No image in the file, no noise model, conflicting noise models, or shape mismatch.

    Notes
    -----
    The variance comes from, in this order of precedence, ``variance``, ``noise**2``, or the CCD
    model with signal ``S`` in ADU::

        variance [ADU^2] = max(S, 0) / gain + readNoise**2 / gain**2

    (this counts the bias level as signal, if it is still in the image).  Pixels whose image or
    variance is NaN/Inf (or variance negative) are flagged ``NO_DATA`` and ``BAD``; there the
    image is set to 0 and the variance to the median of the good variance, so every plane is
    finite for JAX code (honour the mask downstream).
    """
    path = os.fspath(path)
    with fits.open(path, memmap=False) as hdul:
        raw, header = _open_image(hdul, path, hdu)
    image = _float_image(raw)
    shape = image.shape
    if variance is not None and noise is not None:
        raise ValueError("give either variance= or noise= (a 1-sigma map), not both")
    if (variance is not None or noise is not None) and (gain is not None or readNoise is not None):
        raise ValueError("give either a variance/noise map or gain/readNoise, not both")

    if variance is not None:
        var = _plane(variance, shape, "variance")
    elif noise is not None:
        var = _plane(noise, shape, "noise") ** 2
    else:
        gain = gain if gain is not None else _header_number(header, ("GAIN",))
        if gain is None:
            msg = (
                f"{path}: a noise model is needed to build the variance plane: pass gain= (e-/ADU) "
                f"and readNoise= (e-), or variance=, or noise= (a 1-sigma map); the header has no GAIN card"
            )
            raise ValueError(msg)
        if not np.isfinite(gain) or gain <= 0:
            raise ValueError(f"gain must be a positive number of e-/ADU, got {gain}")
        if readNoise is None:
            readNoise = _header_number(header, ("RDNOISE", "RON", "READNOIS")) or 0.0
        signal = np.where(np.isfinite(image), image, 0).astype(np.float64)
        var = np.maximum(signal, 0.0) / gain + readNoise**2 / gain**2

    mask = Mask(dimensions=(shape[1], shape[0]))
    bad = ~np.isfinite(image) | ~np.isfinite(var) | (var < 0)
    if bad.any():
        mask.array[bad] |= mask.getPlaneBitMask(["NO_DATA", "BAD"])
        image = np.where(bad, 0, image).astype(image.dtype)
        good = var[~bad]
        var = np.where(bad, np.median(good) if good.size else 0.0, var)
    saturation = saturation if saturation is not None else _header_number(header, ("SATURATE",))
    if saturation is not None:
        mask.array[(image >= saturation) & ~bad] |= mask.getPlaneBitMask("SAT")

    mi = MaskedImage(Image(image), mask, Image(var.astype(image.dtype)))
    metadata = _clean_header(header)
    wcs = _wcs_from_header(header)
    return Exposure(mi, psf=psf, wcs=wcs, photoCalib=photoCalib, metadata=metadata)


_image_module._FITS_IO.update(read=readExposure, write=writeExposure)
