"""Scene simulator: science/template pairs of star fields with known truth.

The entry point, and its companion module:

* :func:`simulate_pair` builds a science and a template :class:`~jaxdiff.image.Exposure` of the same
  star field, deterministically from a ``jax.random`` key: pixel-integrated Gaussian or Moffat PSFs
  (optionally varying across the science image), Poisson + read noise with matching variance planes,
  a differential background, a flux ratio and a sub-pixel shift between the images, transients,
  saturated stars, bad columns and cosmic rays.  It returns the two exposures and a
  :class:`SimulationTruth` holding every input that went in (positions, fluxes, noise-free images,
  PSF parameters ...).
* :func:`~jaxdiff.testing.lsst_scenes.make_lsst_zogy_test_images` (in
  :mod:`jaxdiff.testing.lsst_scenes`) replicates ``makeFakeImages`` from ip_diffim's
  ``tests/test_zogy.py``, for the LSST cross-check tests.

The renderers underneath are jitted pure functions of arrays:
:func:`render_gaussian_stars`, :func:`render_moffat_stars`, and the kernels
:func:`gaussian_pixel_kernel` and :func:`moffat_pixel_kernel` that the attached PSF models are
built from.

Conventions
-----------
* Arrays are indexed ``[y, x]``; ``x`` is the column.  A pixel's integer position is its centre and
  the pixel covers ``[i - 1/2, i + 1/2]``.  Positions in :class:`SimulationTruth` are PARENT pixel
  coordinates (``xy0`` added); the ``render_*`` functions take array (LOCAL) coordinates.
* Units: image values are counts ("ADU"); with the default ``gain = 1`` these are electrons.
  Fluxes (total counts of a star) and sky levels are in the same units; ``read_noise`` is in
  electrons and ``gain`` in electrons per ADU.
* Every PSF attached to an exposure is built from the *same* kernel function that drew the stars,
  so ``exposure.getPsf().computeKernelArray(position)`` is what a star at ``position`` (at a pixel
  centre) looks like in the noise-free image, normalised to sum 1.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import erf, erfc

from ..core._numerics import PRECISION
from ..image.calib import PhotoCalib
from ..image.image import DEFAULT_MASK_PLANES, Exposure, Image, Mask, MaskedImage
from ..image.psf import FWHM_PER_SIGMA, GridPsf, ImagePsf

__all__ = [
    "SimulatedPair",
    "SimulationTruth",
    "flux_for_snr",
    "gaussian_pixel_kernel",
    "moffat_pixel_kernel",
    "render_gaussian_stars",
    "render_moffat_stars",
    "simulate_pair",
]

_DEFAULT_TEMPLATE_PSF = {"kind": "gaussian", "sigma": 1.5}
_DEFAULT_SCIENCE_PSF = {"kind": "gaussian", "sigma": 2.2}

# Independent random streams: each component folds its own constant into the key, so changing one
# option (say ``n_cosmic_rays``) never changes the draws of another (say the star positions).
_STREAM = {
    "star_xy": 1,
    "star_flux": 2,
    "transient_xy": 3,
    "science_noise": 4,
    "template_noise": 5,
    "bad_columns": 6,
    "cosmic_rays": 7,
}


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _default_float():
    """float64 when JAX's x64 mode is on, else float32."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def _resolve_dtype(dtype):
    if dtype is None:
        return _default_float()
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dt}")
    if dt.itemsize > _default_float().itemsize:
        msg = (
            f"dtype {dt} needs JAX's x64 mode; enable it with "
            f"jax.config.update('jax_enable_x64', True) or pass dtype=None"
        )
        raise ValueError(msg)
    return dt


def _check_shape(shape, what="shape"):
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be (height, width), got {shape!r}") from exc
    if h < 1 or w < 1 or (h, w) != tuple(shape):
        raise ValueError(f"{what} must be two positive integers (height, width), got {shape!r}")
    return (h, w)


def _check_odd_size(size, what):
    if int(size) != size or size < 1 or int(size) % 2 == 0:
        raise ValueError(f"{what} must be a positive odd integer, got {size!r}")
    return int(size)


def _is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def _as_star_arrays(dtype, *arrays):
    """Flatten position/flux/shape arguments to 1-D arrays of one length ``n`` and one float dtype."""
    arrs = [jnp.ravel(jnp.asarray(a)) for a in arrays]
    if dtype is None:
        dtype = arrs[2].dtype if jnp.issubdtype(arrs[2].dtype, jnp.floating) else _default_float()
    else:
        dtype = _resolve_dtype(dtype)
    n = max(a.shape[0] for a in arrs[:3])
    out = []
    for a in arrs:
        if a.shape[0] not in (1, n):
            lengths = [b.shape[0] for b in arrs]
            raise ValueError(f"star arrays must have one length (or length 1), got lengths {lengths}")
        out.append(jnp.broadcast_to(a.astype(dtype), (n,)))
    return out


# ----------------------------------------------------------------------------------------------
# Pure kernels and renderers
# ----------------------------------------------------------------------------------------------


def _gauss_pixel_profile(centres, sigma, n):
    """Pixel-integrated 1-D Gaussian, ``(k,)`` centres and sigmas -> ``(k, n)``.

    Element ``[j, i]`` is the integral of ``N(centres[j], sigma[j]^2)`` over ``[i - 1/2, i + 1/2]``,
    written with ``erfc`` on the tails so that float32 keeps its relative accuracy far from the star
    (no cancellation of ``erf`` values close to 1) and the profile is exactly 0 where it underflows.
    """
    dtype = centres.dtype
    i = jnp.arange(n, dtype=dtype)[None, :]
    scale = (math.sqrt(2.0) * sigma)[:, None]
    lo = (i - 0.5 - centres[:, None]) / scale
    hi = (i + 0.5 - centres[:, None]) / scale
    right = 0.5 * (erfc(lo) - erfc(hi))  # accurate for lo >= 0
    left = 0.5 * (erfc(-hi) - erfc(-lo))  # accurate for hi <= 0
    mid = 0.5 * (erf(hi) - erf(lo))
    return jnp.where(lo >= 0, right, jnp.where(hi <= 0, left, mid))


@functools.partial(jax.jit, static_argnames=("shape", "chunk_size"))
def _render_gaussian(x, y, flux, sigma, *, shape, chunk_size):
    h, w = shape
    n = x.shape[0]
    if n == 0:
        return jnp.zeros(shape, x.dtype)

    def chunk(xc, yc, fc, sc):
        gx = _gauss_pixel_profile(xc, sc, w)  # (c, W)
        gy = _gauss_pixel_profile(yc, sc, h)  # (c, H)
        # sum_k f_k gy_k(row) gx_k(col) = Gy^T diag(f) Gx
        return jnp.matmul(gy.T, fc[:, None] * gx, precision=PRECISION)  # no TF32 on GPUs

    if n <= chunk_size:
        return chunk(x, y, flux, sigma)
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n

    def padded(a, value):
        return jnp.concatenate([a, jnp.full((pad,), value, a.dtype)]).reshape(n_chunks, chunk_size)

    stacks = (padded(x, 0.0), padded(y, 0.0), padded(flux, 0.0), padded(sigma, 1.0))

    def body(acc, args):
        return acc + chunk(*args), None

    img, _ = lax.scan(body, jnp.zeros(shape, x.dtype), stacks)
    return img


def render_gaussian_stars(x, y, flux, sigma, shape, *, chunk_size=256, dtype=None):
    """Render circular Gaussian stars, exactly integrated over each pixel.

    Parameters
    ----------
    x, y : array_like, shape (N,)
        Star centres in array coordinates (pixels): ``x`` is the column, ``y`` the row, pixel
        centres at integers.  Stars may lie partly or wholly outside the image.
    flux : array_like, shape (N,) or scalar
        Total flux of each star (image units) over the infinite plane.  Any sign is allowed (the
        renderer is linear).
    sigma : array_like, shape (N,) or scalar
        Gaussian sigma of each star in pixels, > 0 (per star, for spatially varying PSFs).
    shape : tuple of int
        ``(height, width)`` of the output image.
    chunk_size : int, optional
        Stars per matrix product; bounds memory at ``chunk_size * (H + W)`` values.
    dtype : dtype, optional
        Output dtype; default ``flux``'s floating dtype, else JAX's default float.

    Returns
    -------
    jax.Array, shape (H, W)
        ``sum_k flux_k * gy_k(row) * gx_k(col)``, where ``gx_k(i)`` is the integral of the normal
        density ``N(x_k, sigma_k^2)`` over ``[i - 1/2, i + 1/2]`` (``jax.scipy.special.erf``).

    Notes
    -----
    The 2-D Gaussian is separable, so the image is the matrix product ``Gy^T diag(f) Gx`` with
    ``Gy`` of shape (N, H) and ``Gx`` of shape (N, W): exact (no stamp truncation), and summed in
    chunks of ``chunk_size`` stars under ``lax.scan``.  Cost ``O(N H W)``.

    JAX: ``shape`` and ``chunk_size`` are static (one compilation per shape and star count); the
    output is differentiable in ``x``, ``y``, ``flux`` and ``sigma``.
    """
    shape = _check_shape(shape)
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    x, y, flux, sigma = _as_star_arrays(dtype, x, y, flux, sigma)
    if _is_concrete(sigma) and sigma.shape[0] and not bool(jnp.all(sigma > 0)):
        raise ValueError("Gaussian sigma must be positive for every star")
    return _render_gaussian(x, y, flux, sigma, shape=shape, chunk_size=chunk_size)


def gaussian_pixel_kernel(sigma, size, *, dx=0.0, dy=0.0, dtype=None):
    """Pixel-integrated circular Gaussian on an odd ``size x size`` box, normalised to sum 1.

    Parameters
    ----------
    sigma : float or scalar array
        Gaussian sigma in pixels.
    size : int
        Odd box size in pixels; the centre pixel is at index ``size // 2``.
    dx, dy : float, optional
        Offset of the Gaussian's centre from the centre pixel (pixels).
    dtype : dtype, optional
        Default JAX's default float.

    Returns
    -------
    jax.Array, shape (size, size)
        The star image :func:`render_gaussian_stars` draws, cut to the box and normalised.  This is
        the PSF kernel :func:`simulate_pair` attaches (as an :class:`~jaxdiff.image.psf.ImagePsf`).
    """
    size = _check_odd_size(size, "size")
    dtype = _resolve_dtype(dtype)
    return _gauss_kernel(*(jnp.asarray(v).astype(dtype) for v in (sigma, dx, dy)), size=size)


@functools.partial(jax.jit, static_argnames=("size",))
def _gauss_kernel(sigma, dx, dy, *, size):
    half = size // 2
    sig = jnp.reshape(sigma, (1,))
    gx = _gauss_pixel_profile(jnp.reshape(half + dx, (1,)), sig, size)[0]
    gy = _gauss_pixel_profile(jnp.reshape(half + dy, (1,)), sig, size)[0]
    k = gy[:, None] * gx[None, :]
    return k / jnp.sum(k)


def _moffat_stamp(dx, dy, fwhm, beta, *, size, oversample):
    """Moffat profile offset by (dx, dy) from the centre of an odd box, pixel-averaged, sum 1."""
    dtype = dx.dtype
    half = size // 2
    alpha = fwhm / (2.0 * jnp.sqrt(2.0 ** (1.0 / beta) - 1.0))
    inv_alpha2 = 1.0 / (alpha * alpha)
    u = jnp.arange(size, dtype=dtype) - half - dx
    v = jnp.arange(size, dtype=dtype) - half - dy
    offsets = [(k + 0.5) / oversample - 0.5 for k in range(oversample)]
    acc = jnp.zeros((size, size), dtype)
    for ob in offsets:  # static, small: XLA fuses the oversample^2 terms into one pass
        vv = (v + ob) ** 2
        for oa in offsets:
            uu = (u + oa) ** 2
            acc = acc + (1.0 + (vv[:, None] + uu[None, :]) * inv_alpha2) ** (-beta)
    return acc / jnp.sum(acc)


@functools.partial(jax.jit, static_argnames=("shape", "stamp_size", "oversample"))
def _render_moffat(x, y, flux, fwhm, beta, *, shape, stamp_size, oversample):
    h, w = shape
    n = x.shape[0]
    if n == 0:
        return jnp.zeros(shape, x.dtype)
    s = stamp_size
    half = s // 2
    ixf = jnp.floor(x + 0.5)
    iyf = jnp.floor(y + 0.5)
    stamp = functools.partial(_moffat_stamp, size=s, oversample=oversample)
    stamps = jax.vmap(stamp)(x - ixf, y - iyf, fwhm, beta) * flux[:, None, None]
    # Scatter-add onto a canvas padded by `half` on every side: LOCAL row r is canvas row r + half,
    # so stamp row j of a star at row iy lands on canvas row iy + j.  Indices outside the canvas are
    # sent to an out-of-bounds value and dropped (never wrapped).
    hp, wp = h + 2 * half, w + 2 * half
    ix = jnp.clip(ixf, -2 * s, w + 2 * s).astype(jnp.int32)
    iy = jnp.clip(iyf, -2 * s, h + 2 * s).astype(jnp.int32)
    ar = jnp.arange(s, dtype=jnp.int32)
    rows = iy[:, None] + ar[None, :]
    cols = ix[:, None] + ar[None, :]
    rows = jnp.where((rows >= 0) & (rows < hp), rows, hp)
    cols = jnp.where((cols >= 0) & (cols < wp), cols, wp)
    canvas = jnp.zeros((hp, wp), x.dtype)
    canvas = canvas.at[rows[:, :, None], cols[:, None, :]].add(stamps, mode="drop")
    return canvas[half : half + h, half : half + w]


def render_moffat_stars(x, y, flux, fwhm, beta, shape, *, stamp_size, oversample=5, dtype=None):
    """Render circular Moffat stars on fixed-size stamps (sub-pixel sampled) and scatter-add them.

    Parameters
    ----------
    x, y : array_like, shape (N,)
        Star centres in array coordinates (``x`` = column), pixel centres at integers.
    flux : array_like, shape (N,) or scalar
        Total flux of each star inside its stamp (image units).
    fwhm : array_like, shape (N,) or scalar
        Moffat FWHM in pixels (per star for spatially varying PSFs).
    beta : array_like, shape (N,) or scalar
        Moffat index, > 1.
    shape : tuple of int
        ``(height, width)`` of the output image.
    stamp_size : int
        Odd stamp size; each star is drawn on the ``stamp_size``-square box centred on its nearest
        pixel and is zero outside it.
    oversample : int, optional
        Sub-pixel samples per axis (midpoint rule on an ``oversample x oversample`` grid per pixel;
        default 5).
    dtype : dtype, optional
        Output dtype; default ``flux``'s floating dtype, else JAX's default float.

    Returns
    -------
    jax.Array, shape (H, W)

    Notes
    -----
    The profile is ``(1 + r^2/alpha^2)^-beta`` with ``alpha = fwhm / (2 sqrt(2^(1/beta) - 1))``.
    Each pixel value is the mean of the profile on an ``oversample x oversample`` grid of sub-pixel
    points (an approximation of the pixel integral, error ``O(1/oversample^2)`` of the local
    curvature).  Each star is **truncated to its stamp and normalised inside it**, so the stamp sums
    exactly to ``flux`` and a star centred on a pixel is ``flux`` times :func:`moffat_pixel_kernel`
    (the PSF attached by :func:`simulate_pair`).  Moffat wings beyond the stamp are not drawn; use a
    larger ``stamp_size`` for more of them.

    JAX: ``shape``, ``stamp_size`` and ``oversample`` are static; the stars are rendered with
    ``vmap`` and accumulated with one ``.at[].add`` scatter.  Differentiable in ``flux``, ``fwhm``,
    ``beta`` and (piecewise, within a pixel) in ``x``, ``y``.
    """
    shape = _check_shape(shape)
    stamp_size = _check_odd_size(stamp_size, "stamp_size")
    oversample = int(oversample)
    if oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample}")
    x, y, flux, fwhm, beta = _as_star_arrays(dtype, x, y, flux, fwhm, beta)
    if _is_concrete(fwhm) and fwhm.shape[0]:
        if not bool(jnp.all(fwhm > 0)) or not bool(jnp.all(beta > 1)):
            raise ValueError("Moffat stars need fwhm > 0 and beta > 1")
    return _render_moffat(x, y, flux, fwhm, beta, shape=shape, stamp_size=stamp_size, oversample=oversample)


def moffat_pixel_kernel(fwhm, beta, size, *, dx=0.0, dy=0.0, oversample=5, dtype=None):
    """Sub-pixel-sampled circular Moffat on an odd ``size x size`` box, normalised to sum 1.

    Exactly the stamp :func:`render_moffat_stars` draws for a star offset by ``(dx, dy)`` pixels
    from the centre pixel, divided by its flux.  See :func:`render_moffat_stars` for the profile.

    Returns
    -------
    jax.Array, shape (size, size)
    """
    size = _check_odd_size(size, "size")
    dtype = _resolve_dtype(dtype)

    oversample = int(oversample)
    if oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample}")
    args = (jnp.asarray(v).astype(dtype) for v in (dx, dy, fwhm, beta))
    return _moffat_kernel(*args, size=size, oversample=oversample)


_moffat_kernel = jax.jit(_moffat_stamp, static_argnames=("size", "oversample"))


def flux_for_snr(snr, kernel, variance):
    """Flux giving a target PSF-photometry signal-to-noise ratio on a background-limited image.

    ``flux = snr * sqrt(variance / sum(P^2))`` for a normalised PSF kernel ``P`` and a constant
    per-pixel variance (the optimal, PSF-weighted S/N ``F sqrt(sum P^2) / sigma`` solved for ``F``;
    the source's own photon noise is ignored).  For a Gaussian PSF of sigma ``s``,
    ``sum(P^2) ~ 1 / (4 pi s^2)`` and ``flux ~ snr * sqrt(4 pi s^2 variance)``.

    Parameters
    ----------
    snr : float or array_like
    kernel : array_like, shape (h, w)
        PSF kernel; normalised to sum 1 here.
    variance : float or array_like
        Per-pixel noise variance (image units squared), e.g. ``sky / gain + (read_noise / gain)**2``.

    Returns
    -------
    numpy.ndarray or float
    """
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.sum()
    return np.asarray(snr, dtype=np.float64) * np.sqrt(np.asarray(variance, dtype=np.float64) / np.sum(k * k))


@jax.jit
def _noisy(key, mean, gain, read_noise):
    """Poisson draw of ``mean * gain`` electrons, back to image units, plus Gaussian read noise."""
    kp, kg = jax.random.split(key)
    electrons = jax.random.poisson(kp, jnp.maximum(mean, 0.0) * gain, shape=mean.shape)
    rn = jax.random.normal(kg, mean.shape, mean.dtype) * read_noise
    return (electrons.astype(mean.dtype) + rn) / gain


# ----------------------------------------------------------------------------------------------
# simulate_pair
# ----------------------------------------------------------------------------------------------


class SimulationTruth(NamedTuple):
    """Everything that went into a :func:`simulate_pair` scene.

    Positions are PARENT pixel coordinates (``x`` = column); fluxes and images are in image units
    (counts; electrons for ``gain = 1``).

    Attributes
    ----------
    x, y : numpy.ndarray, shape (N,)
        Star positions in the template.
    x_science, y_science : numpy.ndarray, shape (N,)
        Star positions in the science image, ``x + shift[0]``, ``y + shift[1]``.
    flux_template, flux_science : numpy.ndarray, shape (N,)
        Star fluxes; ``flux_science = flux_ratio * flux_template``.
    science_psf_scale : numpy.ndarray, shape (N,)
        Science PSF width factor at each star (1 without ``psf_variation``); the star's Gaussian
        sigma (or Moffat FWHM) is ``science_psf[width] * science_psf_scale``.
    transient_x, transient_y : numpy.ndarray, shape (T,)
        Transient positions in science-image coordinates (a fading transient sits at
        ``transient_x - shift[0]``, ``transient_y - shift[1]`` in the template).
    transient_flux : numpy.ndarray, shape (T,)
        Transient fluxes, in the units of the image they appear in.
    transient_sign : numpy.ndarray of int, shape (T,)
        +1: in the science image only (new source); -1: in the template only (fading).
    science_model, template_model : numpy.ndarray, shape (H, W)
        Noise-free images: the expected value of the stored image planes (stars, transients and
        background; sky too when ``subtract_sky=False``), without defects (saturation, bad columns,
        cosmic rays).
    background : numpy.ndarray, shape (H, W)
        The differential background added to the science image.
    science_psf, template_psf : dict
        PSF parameters (``kind`` plus ``sigma`` or ``fwhm`` and ``beta``) at the reference position
        (image centre).
    psf_variation : tuple of float
        ``(px, py)``: science PSF width factor ``1 + px u_x + py u_y`` with
        ``u = 2 (position - centre) / (size - 1)`` in ``[-1, 1]``.
    psf_size : int
        Odd PSF kernel (and Moffat stamp) size.
    flux_ratio : float
    shift : tuple of float
        ``(dx, dy)`` science minus template positions, pixels.
    sky_science, sky_template, read_noise, gain : float
    saturation_level : float
        Saturation level in raw (sky-included) units, ``inf`` when nothing saturates; stored
        saturated pixels read ``saturation_level - sky`` when ``subtract_sky``.
    saturated : numpy.ndarray of bool, shape (N,)
        Stars whose noise-free science peak pixel reaches ``saturation_level``.
    bad_columns : numpy.ndarray of int
        PARENT x of the science image's bad columns.
    cosmic_ray_x, cosmic_ray_y : numpy.ndarray of int
        PARENT positions of the science pixels hit by cosmic rays.
    cosmic_ray_flux : numpy.ndarray
        Counts added to each of those pixels.
    bbox : tuple of int
        ``(x0, y0, width, height)`` of both images.
    """

    x: np.ndarray
    y: np.ndarray
    x_science: np.ndarray
    y_science: np.ndarray
    flux_template: np.ndarray
    flux_science: np.ndarray
    science_psf_scale: np.ndarray
    transient_x: np.ndarray
    transient_y: np.ndarray
    transient_flux: np.ndarray
    transient_sign: np.ndarray
    science_model: np.ndarray
    template_model: np.ndarray
    background: np.ndarray
    science_psf: dict
    template_psf: dict
    psf_variation: tuple
    psf_size: int
    flux_ratio: float
    shift: tuple
    sky_science: float
    sky_template: float
    read_noise: float
    gain: float
    saturation_level: float
    saturated: np.ndarray
    bad_columns: np.ndarray
    cosmic_ray_x: np.ndarray
    cosmic_ray_y: np.ndarray
    cosmic_ray_flux: np.ndarray
    bbox: tuple

    def psf_scale_at(self, x, y):
        """Science PSF width factor at PARENT positions ``(x, y)``."""
        return _width_scale(x, y, self.psf_variation, self.bbox)

    def science_psf_at(self, x, y):
        """Science PSF parameters (a dict) at one PARENT position."""
        return _scaled_spec(self.science_psf, float(self.psf_scale_at(x, y)))


class SimulatedPair(NamedTuple):
    """Result of :func:`simulate_pair`: two Exposures and the truth behind them."""

    science: Exposure
    template: Exposure
    truth: SimulationTruth


def _psf_spec(spec, what):
    """Validate a PSF description and return ``{"kind": ..., params}`` with float values."""
    if isinstance(spec, (int, float, np.integer, np.floating)):
        spec = {"kind": "gaussian", "sigma": float(spec)}
    if not isinstance(spec, dict):
        raise TypeError(f"{what} must be a dict such as dict(kind='gaussian', sigma=1.5), got {spec!r}")
    spec = dict(spec)
    kind = str(spec.pop("kind", "gaussian")).lower()
    if kind == "gaussian":
        allowed = {"sigma", "fwhm"}
        if set(spec) - allowed or len(spec) != 1:
            raise ValueError(f"{what}: a Gaussian PSF takes exactly one of sigma or fwhm, got {sorted(spec)}")
        sigma = float(spec["sigma"]) if "sigma" in spec else float(spec["fwhm"]) / FWHM_PER_SIGMA
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{what}: Gaussian sigma must be positive and finite, got {sigma}")
        return {"kind": "gaussian", "sigma": sigma}
    if kind == "moffat":
        if set(spec) != {"fwhm", "beta"}:
            raise ValueError(f"{what}: a Moffat PSF takes fwhm and beta, got {sorted(spec)}")
        fwhm, beta = float(spec["fwhm"]), float(spec["beta"])
        if not (np.isfinite(fwhm) and fwhm > 0 and np.isfinite(beta) and beta > 1):
            msg = f"{what}: a Moffat PSF needs fwhm > 0 and beta > 1, got fwhm={fwhm}, beta={beta}"
            raise ValueError(msg)
        return {"kind": "moffat", "fwhm": fwhm, "beta": beta}
    raise ValueError(f"{what}: kind must be 'gaussian' or 'moffat', got {kind!r}")


def _sigma_equiv(spec):
    return spec["sigma"] if spec["kind"] == "gaussian" else spec["fwhm"] / FWHM_PER_SIGMA


def _scaled_spec(spec, scale):
    out = dict(spec)
    key = "sigma" if spec["kind"] == "gaussian" else "fwhm"
    out[key] = spec[key] * scale
    return out


def _variation(psf_variation):
    if np.ndim(psf_variation) == 0:
        p = float(psf_variation)
        return (0.5 * p, 0.5 * p)
    px, py = (float(v) for v in psf_variation)
    return (px, py)


def _unit_coords(x, y, bbox):
    """PARENT positions -> ``[-1, 1]`` across the image (0 for a 1-pixel axis)."""
    x0, y0, w, h = bbox
    ux = 2.0 * (np.asarray(x, np.float64) - (x0 + 0.5 * (w - 1))) / max(w - 1, 1)
    uy = 2.0 * (np.asarray(y, np.float64) - (y0 + 0.5 * (h - 1))) / max(h - 1, 1)
    return ux, uy


def _width_scale(x, y, variation, bbox):
    ux, uy = _unit_coords(x, y, bbox)
    return 1.0 + variation[0] * ux + variation[1] * uy


def _background_fn(background_offset, bbox):
    """Return ``f(x, y) -> counts`` (numpy float64) for a constant, callable or polynomial."""
    if callable(background_offset):

        def fn(x, y):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            return np.broadcast_to(np.asarray(background_offset(x, y), np.float64), x.shape)

        return fn
    coeffs = np.atleast_1d(np.asarray(background_offset, dtype=np.float64))
    if coeffs.ndim != 1 or not np.all(np.isfinite(coeffs)):
        msg = f"background_offset must be a number, callable or 1-D coefficients, got {background_offset!r}"
        raise ValueError(msg)
    n = coeffs.size
    order = int(round((math.sqrt(8 * n + 1) - 3) / 2))
    if (order + 1) * (order + 2) // 2 != n:
        msg = (
            f"background_offset polynomial needs (order+1)(order+2)/2 coefficients "
            f"(1, 3, 6, 10, ...), got {n}"
        )
        raise ValueError(msg)

    def fn(x, y):
        ux, uy = _unit_coords(x, y, bbox)
        out = np.zeros(np.broadcast(ux, uy).shape)
        i = 0
        for deg in range(order + 1):  # PolynomialFunction2 order: 1, x, y, x^2, xy, y^2, ...
            for py in range(deg + 1):
                out = out + coeffs[i] * ux ** (deg - py) * uy**py
                i += 1
        return out

    return fn


def _render(spec, x, y, flux, scale, shape, psf_size, oversample, dtype):
    """Render stars of one PSF family at LOCAL positions with per-star width factors."""
    if spec["kind"] == "gaussian":
        return render_gaussian_stars(x, y, flux, spec["sigma"] * scale, shape, dtype=dtype)
    return render_moffat_stars(
        x, y, flux, spec["fwhm"] * scale, spec["beta"], shape,
        stamp_size=psf_size, oversample=oversample, dtype=dtype,
    )


def _kernel(spec, scale, size, oversample, dtype):
    if spec["kind"] == "gaussian":
        k = gaussian_pixel_kernel(spec["sigma"] * scale, size, dtype=dtype)
    else:
        k = moffat_pixel_kernel(spec["fwhm"] * scale, spec["beta"], size, oversample=oversample, dtype=dtype)
    return np.asarray(k, dtype=np.float64)


def _through(values, dtype):
    """Round float64 values through ``dtype`` so the truth equals what the renderer used."""
    return np.asarray(np.asarray(values, np.float64).astype(dtype), np.float64)


def _key(key):
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    return key


def _uniform(key, n, lo, hi):
    u = np.asarray(jax.random.uniform(key, (n,), dtype=jnp.float32), np.float64)
    return lo + u * (hi - lo)


def _photo_calibs(photo_calib, flux_ratio):
    if photo_calib is None:
        return None, None
    if isinstance(photo_calib, str):
        if photo_calib != "auto":
            msg = f"photo_calib must be None, 'auto', a PhotoCalib/float or a pair, got {photo_calib!r}"
            raise ValueError(msg)
        return PhotoCalib(1.0 / flux_ratio), PhotoCalib(1.0)

    def one(pc):
        return pc if isinstance(pc, PhotoCalib) else PhotoCalib(float(pc))

    if isinstance(photo_calib, (tuple, list)):
        if len(photo_calib) != 2:
            raise ValueError("photo_calib as a sequence must be (science, template)")
        return one(photo_calib[0]), one(photo_calib[1])
    pc = one(photo_calib)
    return pc, pc


def _tan_wcs(centre_pixel, crval, pixel_scale):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(crval[0]), float(crval[1])]
    wcs.wcs.crpix = [float(centre_pixel[0]) + 1.0, float(centre_pixel[1]) + 1.0]  # FITS is 1-based
    scale = float(pixel_scale) / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.radesys = "ICRS"
    return wcs


def _positive_int(value, what, allow_zero=False):
    if int(value) != value or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else "positive"
        raise ValueError(f"{what} must be a {bound} integer, got {value!r}")
    return int(value)


def _psf_grid(psf_grid):
    nx, ny = (psf_grid, psf_grid) if np.ndim(psf_grid) == 0 else tuple(psf_grid)
    return (_positive_int(nx, "psf_grid"), _positive_int(ny, "psf_grid"))


def _default_psf_size(psf_size, tspec, sspec, variation, shape):
    h, w = shape
    if psf_size is None:
        max_scale = 1.0 + abs(variation[0]) + abs(variation[1])
        sigma_max = max(_sigma_equiv(tspec), _sigma_equiv(sspec) * max_scale)
        limit = min(h, w) if min(h, w) % 2 else min(h, w) - 1
        return max(min(2 * math.ceil(5.0 * sigma_max) + 1, limit), 1)
    psf_size = _check_odd_size(psf_size, "psf_size")
    if psf_size > min(h, w):
        msg = (
            f"image shape {(h, w)} is too small for psf_size {psf_size}; "
            f"use a larger shape or a smaller psf_size"
        )
        raise ValueError(msg)
    return psf_size


def _random_stars(stream, n_stars, flux_range, flux_slope, bbox):
    """Uniform positions over the image and power-law fluxes (inverse-CDF sampling)."""
    x0, y0, w, h = bbox
    n = _positive_int(n_stars, "n_stars", allow_zero=True)
    fmin, fmax = (float(v) for v in flux_range)
    if not (0 < fmin <= fmax and np.isfinite(fmax)):
        raise ValueError(f"flux_range must satisfy 0 < min <= max, got {flux_range}")
    kxy = jax.random.split(stream("star_xy"))
    x = _uniform(kxy[0], n, x0 - 0.5, x0 + w - 0.5)
    y = _uniform(kxy[1], n, y0 - 0.5, y0 + h - 0.5)
    u = _uniform(stream("star_flux"), n, 0.0, 1.0)
    a = 1.0 - float(flux_slope)
    if abs(a) < 1e-12:  # log-uniform
        flux = fmin * (fmax / fmin) ** u
    else:
        flux = (fmin**a + u * (fmax**a - fmin**a)) ** (1.0 / a)
    return x, y, np.clip(flux, fmin, fmax)


def _explicit_sources(sources, what, allow_zero):
    try:
        x, y, f = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in sources)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be (x, y, flux) arrays") from exc
    if not (x.shape == y.shape == f.shape and x.ndim == 1):
        raise ValueError(f"{what}=(x, y, flux) need equal 1-D lengths, got {x.shape}, {y.shape}, {f.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.isfinite(f))):
        raise ValueError(f"{what}=(x, y, flux) must be finite")
    if np.any(f < 0) or (not allow_zero and np.any(f == 0)):
        bound = ">= 0" if allow_zero else "> 0 (use transient_sign for fading ones)"
        raise ValueError(f"{what} fluxes must be {bound}, got min {f.min()}")
    return x, y, f


def _add_cosmic_rays(key, n_cr, flux_range, raw, mask, bit):
    """Add single/double-pixel hits to ``raw`` in place and flag them; return LOCAL x, y, counts."""
    if n_cr == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cmin, cmax = (float(v) for v in flux_range)
    if not (0 < cmin <= cmax):
        raise ValueError(f"cosmic_ray_flux must satisfy 0 < min <= max, got {flux_range}")
    h, w = raw.shape
    kc = jax.random.split(key, 5)
    cx = np.asarray(jax.random.randint(kc[0], (n_cr,), 0, w), dtype=np.int64)
    cy = np.asarray(jax.random.randint(kc[1], (n_cr,), 0, h), dtype=np.int64)
    double = np.asarray(jax.random.bernoulli(kc[2], 0.5, (n_cr,)))
    step = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)])[np.asarray(jax.random.randint(kc[3], (n_cr,), 0, 4))]
    lx = np.concatenate([cx, np.clip(cx + step[:, 0], 0, w - 1)[double]])
    ly = np.concatenate([cy, np.clip(cy + step[:, 1], 0, h - 1)[double]])
    flat = np.unique(ly * w + lx)  # a pixel hit twice counts once
    ly, lx = np.divmod(flat, w)
    counts = _through(_uniform(kc[4], flat.size, cmin, cmax), raw.dtype)
    raw[ly, lx] += counts.astype(raw.dtype)
    mask[ly, lx] |= bit
    return lx, ly, counts


def _peaks(image, x, y):
    """Value of ``image`` at the pixel containing each LOCAL position (-inf outside the image)."""
    h, w = image.shape
    ix = np.floor(np.asarray(x) + 0.5).astype(np.int64)
    iy = np.floor(np.asarray(y) + 0.5).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.full(ix.shape, -np.inf)
    out[inside] = image[iy[inside], ix[inside]]
    return out


def _saturation_for(n_sat, mean, x, y):
    """Return a level between the n-th and (n+1)-th brightest noise-free peak (geometric mean)."""
    peaks = np.sort(_peaks(mean, x, y))[::-1]
    peaks = peaks[np.isfinite(peaks)]
    if peaks.size < n_sat:
        raise ValueError(f"only {peaks.size} stars lie inside the image; cannot saturate {n_sat}")
    level = float(np.sqrt(peaks[n_sat - 1] * peaks[n_sat])) if n_sat < peaks.size else 0.5 * float(peaks[-1])
    if level <= float(mean.min()):
        raise ValueError("the stars to saturate are too faint to saturate above the sky")
    return level


def simulate_pair(
    key,
    shape=(256, 256),
    *,
    n_stars=200,
    flux_range=(500.0, 5e5),
    flux_slope=1.0,
    stars=None,
    template_psf=None,
    science_psf=None,
    psf_variation=0.0,
    psf_grid=5,
    psf_size=None,
    oversample=5,
    sky_science=100.0,
    sky_template=100.0,
    read_noise=5.0,
    gain=1.0,
    flux_ratio=1.0,
    background_offset=0.0,
    shift=(0.0, 0.0),
    n_transients=0,
    transient_flux=None,
    transient_snr=None,
    transient_sign=1,
    transients=None,
    n_saturated=0,
    saturation_level=None,
    n_bad_columns=0,
    bad_column_value=0.0,
    n_cosmic_rays=0,
    cosmic_ray_flux=(1000.0, 10000.0),
    noise=True,
    subtract_sky=True,
    dtype=None,
    xy0=(0, 0),
    with_wcs=False,
    wcs_offset=None,
    wcs_center=(150.0, 2.2),
    pixel_scale=0.2,
    photo_calib=None,
):
    """Simulate a science/template pair of one star field, deterministically from a PRNG key.

    Parameters
    ----------
    key : jax.random key or int
        Seed of every random draw (an int is turned into ``jax.random.PRNGKey(key)``).  Each
        component (positions, fluxes, transients, each image's noise, bad columns, cosmic rays) uses
        its own stream, so changing one option leaves the other draws unchanged.
    shape : tuple of int or int, optional
        ``(height, width)`` of both images, pixels.
    n_stars : int, optional
        Number of random constant stars, uniform over the image (ignored when ``stars`` is given).
    flux_range : tuple of float, optional
        ``(min, max)`` template flux of the random stars (image units; > 0).
    flux_slope : float, optional
        Power-law index of the flux distribution, ``dN/dF ~ F^-flux_slope``: 1 (default) is
        log-uniform, 2.5 a Euclidean source count.
    stars : tuple of array_like, optional
        ``(x, y, flux)``: explicit template positions (PARENT pixels) and template fluxes (>= 0)
        used instead of random stars.
    template_psf, science_psf : dict or float, optional
        ``dict(kind="gaussian", sigma=...)`` (or ``fwhm=``) or ``dict(kind="moffat", fwhm=...,
        beta=...)``, widths in pixels; a bare number is a Gaussian sigma.  Defaults: Gaussian sigma
        1.5 (template) and 2.2 (science).
    psf_variation : float or tuple of float, optional
        Linear change of the science PSF width across the field.  ``(px, py)`` scales the width
        (Gaussian sigma, Moffat FWHM) by ``1 + px u_x + py u_y`` where ``u_x, u_y`` run from -1 at
        the left/bottom edge to +1 at the right/top edge.  A number ``p`` means ``(p/2, p/2)``:
        the width is ``1 - p`` times nominal at the bottom-left corner, ``1 + p`` at the top-right
        corner and nominal at the centre (``0.1``: +-10 %).  When non-zero the science exposure gets
        a :class:`~jaxdiff.image.psf.GridPsf`.
    psf_grid : int or tuple of int, optional
        ``n`` or ``(nx, ny)`` GridPsf nodes per axis, spread evenly from edge to edge.
    psf_size : int, optional
        Odd size of the PSF kernels (and of the Moffat stamps).  Default
        ``2 ceil(5 sigma_max) + 1`` (``sigma_max``: the largest Gaussian(-equivalent,
        ``fwhm / 2.3548``) sigma of both PSFs, including the variation), clipped to the image.
    oversample : int, optional
        Sub-pixel samples per axis for Moffat rendering (default 5; Gaussians are integrated
        exactly).
    sky_science, sky_template : float, optional
        Sky level per pixel (image units), added before the noise.
    read_noise : float, optional
        Read noise in electrons.
    gain : float, optional
        Electrons per image unit.
    flux_ratio : float, optional
        Science flux / template flux of the constant stars (> 0).
    background_offset : float, callable or sequence of float, optional
        Differential background added to the science image only: a constant; a callable
        ``f(x, y)`` of PARENT pixel coordinate arrays; or polynomial coefficients in
        ``PolynomialFunction2`` order ``1, x, y, x^2, xy, y^2, ...`` of the normalised coordinates
        ``u_x, u_y`` in ``[-1, 1]`` (see ``psf_variation``).  It is part of the Poisson mean and of
        the variance, like real background light.
    shift : tuple of float, optional
        ``(dx, dy)``: science star positions minus template positions, pixels.
    n_transients : int, optional
        Number of random transients, uniform over the image at least ``psf_size // 2`` pixels from
        the edges (ignored when ``transients`` is given).
    transient_flux : float or array_like, optional
        Transient flux in the units of the image it appears in.
    transient_snr : float or array_like, optional
        Instead of ``transient_flux``: the background-limited PSF-photometry S/N of each transient
        in the image it appears in, ``flux = snr * sqrt(V / sum(P^2))`` with ``P`` the (normalised)
        PSF kernel at its position and ``V = (sky + background) / gain + (read_noise / gain)^2``
        (see :func:`flux_for_snr`; for a Gaussian, ``flux ~ snr * sqrt(4 pi sigma^2 V)``).  Default
        10 when neither is given.
    transient_sign : int or array_like of int, optional
        +1: new source, in the science image only; -1: fading source, in the template only.
    transients : tuple of array_like, optional
        ``(x, y, flux)`` explicit transients (science-frame PARENT positions, fluxes > 0).
    n_saturated : int, optional
        Saturate the ``n_saturated`` stars with the brightest science peaks: the saturation level
        is set between the n-th and (n+1)-th brightest noise-free science peak (sky included).
        Pixels of either image whose raw value reaches the level are clipped to it and flagged SAT.
    saturation_level : float, optional
        Explicit saturation level in raw (sky-included) units, overriding ``n_saturated``.
    n_bad_columns : int, optional
        Science columns (random, distinct) set to ``bad_column_value`` and flagged BAD.
    bad_column_value : float, optional
        Stored value of bad-column pixels (default 0).
    n_cosmic_rays : int, optional
        Cosmic rays in the science image: single pixels or (half of them, at random) two adjacent
        pixels, each given counts uniform in ``cosmic_ray_flux`` and flagged CR.
    cosmic_ray_flux : tuple of float, optional
        ``(min, max)`` counts added per cosmic-ray pixel.
    noise : bool, optional
        Add Poisson and read noise (the variance plane is the same either way).
    subtract_sky : bool, optional
        Store images with the constant sky subtracted, like LSST calexps (variance still includes
        the sky).
    dtype : dtype, optional
        Image dtype; default float64 when JAX's x64 mode is on, else float32.
    xy0 : tuple of int, optional
        PARENT origin of both images.
    with_wcs : bool, optional
        Attach TAN WCSs (``wcs_center`` (RA, Dec) in degrees at the image centre, ``pixel_scale``
        arcsec/pixel, north up, east left).
    wcs_offset : tuple of float, optional
        Template ``CRPIX`` minus science ``CRPIX``, pixels.  Default ``-shift``: the WCSs describe
        the true geometry (a star's sky position maps to its pixel in each image).
    wcs_center, pixel_scale : optional
        See ``with_wcs``.
    photo_calib : None, "auto", PhotoCalib, float or (science, template), optional
        PhotoCalibs to attach.  ``"auto"``: ``PhotoCalib(1 / flux_ratio)`` for the science and
        ``PhotoCalib(1)`` for the template, so calibrated fluxes agree.  Default: none.

    Returns
    -------
    SimulatedPair
        ``(science, template, truth)``.  The exposures hold numpy arrays (editable in place, as in
        afw); the mask uses LSST's default planes with SAT, BAD and CR set where applied.

    Raises
    ------
    ValueError
        For an image smaller than the PSF kernel, negative fluxes, non-positive widths, a negative
        Poisson mean (sky plus background below 0), an x64 dtype without x64, or inconsistent
        options.

    Notes
    -----
    Rendering: Gaussian stars are integrated exactly over each pixel (separable ``erf`` profiles,
    :func:`render_gaussian_stars`); Moffat stars are averaged on an ``oversample x oversample``
    sub-pixel grid on a ``psf_size`` stamp and normalised inside it (:func:`render_moffat_stars`).
    With ``psf_variation`` every star gets the exact width at its position.

    PSFs: each exposure gets an :class:`~jaxdiff.image.psf.ImagePsf` of the pixel-integrated kernel
    (:func:`gaussian_pixel_kernel` / :func:`moffat_pixel_kernel`) on a ``psf_size`` box, i.e. the
    noise-free image of a star centred on a pixel, normalised to sum 1.  (A ``GaussianPsf`` samples
    the Gaussian at pixel centres, which is narrower by the pixel's ``1/12`` pixel^2 of variance.)
    With ``psf_variation`` the science PSF is a :class:`~jaxdiff.image.psf.GridPsf` of these kernels at
    the grid nodes, bilinearly interpolated between them.

    Noise: ``raw = Poisson(gain * mu) / gain + N(0, read_noise^2) / gain`` with
    ``mu = model + background + sky``; the variance plane is
    ``mu / gain + (read_noise / gain)^2``, from the noise-free ``mu`` (what LSST's variance planes
    approximate).  Cosmic rays, saturation and bad columns are applied, in this order, to the noisy
    image, then the sky is subtracted.
    """
    cfg = _resolve_options(
        shape=shape, dtype=dtype, xy0=xy0, template_psf=template_psf, science_psf=science_psf,
        psf_variation=psf_variation, psf_grid=psf_grid, psf_size=psf_size, oversample=oversample,
        sky_science=sky_science, sky_template=sky_template, read_noise=read_noise, gain=gain,
        flux_ratio=flux_ratio, background_offset=background_offset, shift=shift,
        n_saturated=n_saturated, n_bad_columns=n_bad_columns, n_cosmic_rays=n_cosmic_rays,
        transient_flux=transient_flux, transient_snr=transient_snr,
    )
    stream = _streams(_key(key))
    stars = _draw_stars(cfg, stream, n_stars=n_stars, flux_range=flux_range, flux_slope=flux_slope, stars=stars)
    trans = _draw_transients(
        cfg, stream, n_transients=n_transients, transients=transients, transient_sign=transient_sign,
        transient_flux=transient_flux, transient_snr=transient_snr,
    )
    scene = _render_scene(cfg, stars, trans, noise=noise, subtract_sky=subtract_sky)
    sci = _noisy_planes(cfg, scene.science_mu, stream("science_noise") if noise else None)
    tmp = _noisy_planes(cfg, scene.template_mu, stream("template_noise") if noise else None)
    defects = _apply_defects(
        cfg, stream, stars, scene, sci, tmp, saturation_level=saturation_level,
        bad_column_value=bad_column_value, cosmic_ray_flux=cosmic_ray_flux, subtract_sky=subtract_sky,
    )
    sci_psf, tmp_psf = _build_psfs(cfg)
    sci_wcs, tmp_wcs = _build_wcs(cfg, with_wcs, wcs_offset, wcs_center, pixel_scale)
    sci_pc, tmp_pc = _photo_calibs(photo_calib, flux_ratio)
    science = _exposure(sci, sci_psf, sci_wcs, sci_pc, cfg.bbox)
    template = _exposure(tmp, tmp_psf, tmp_wcs, tmp_pc, cfg.bbox)
    return SimulatedPair(science, template, _truth(cfg, stars, trans, scene, defects))


# ----------------------------------------------------------------------------------------------
# simulate_pair stages, in the order simulate_pair calls them
# ----------------------------------------------------------------------------------------------


class _Options(NamedTuple):
    """The validated options of one :func:`simulate_pair` call.

    ``sky_science``, ``sky_template``, ``read_noise``, ``gain``, ``flux_ratio`` and
    ``background_offset`` are kept exactly as passed (no conversion), so the arithmetic with them is
    the caller's.
    """

    dtype: np.dtype
    bbox: tuple  # (x0, y0, w, h)
    template_psf: dict
    science_psf: dict
    variation: tuple  # (px, py)
    shift: tuple  # (dx, dy), floats
    psf_size: int
    psf_grid: tuple  # (nx, ny)
    oversample: int
    sky_science: object
    sky_template: object
    read_noise: object
    gain: object
    flux_ratio: object
    background: object  # f(x, y) -> counts, from _background_fn
    n_saturated: int
    n_bad_columns: int
    n_cosmic_rays: int

    @property
    def shape(self):
        """``(height, width)``."""
        return (self.bbox[3], self.bbox[2])

    @property
    def read_variance(self):
        """Read-noise variance in image units, ``(read_noise / gain)^2``."""
        return (self.read_noise / self.gain) ** 2


def _resolve_options(
    *, shape, dtype, xy0, template_psf, science_psf, psf_variation, psf_grid, psf_size, oversample,
    sky_science, sky_template, read_noise, gain, flux_ratio, background_offset, shift,
    n_saturated, n_bad_columns, n_cosmic_rays, transient_flux, transient_snr,
):
    """Validate the options that need no random draw (all before any work) into an :class:`_Options`."""
    dtype = _resolve_dtype(dtype)
    h, w = _check_shape(shape)
    x0, y0 = (int(v) for v in xy0)
    bbox = (x0, y0, w, h)
    tspec = _psf_spec(_DEFAULT_TEMPLATE_PSF if template_psf is None else template_psf, "template_psf")
    sspec = _psf_spec(_DEFAULT_SCIENCE_PSF if science_psf is None else science_psf, "science_psf")
    variation = _variation(psf_variation)
    if abs(variation[0]) + abs(variation[1]) >= 1.0:
        raise ValueError(f"psf_variation {psf_variation!r} would make the PSF width non-positive somewhere")
    _check_levels(sky_science, sky_template, read_noise, gain, flux_ratio)
    dx, dy = (float(v) for v in shift)
    oversample = _positive_int(oversample, "oversample")
    n_cr = _positive_int(n_cosmic_rays, "n_cosmic_rays", allow_zero=True)
    n_bad = _positive_int(n_bad_columns, "n_bad_columns", allow_zero=True)
    if n_bad > w:
        raise ValueError(f"n_bad_columns must be at most the width {w}, got {n_bad}")
    n_sat = _positive_int(n_saturated, "n_saturated", allow_zero=True)
    if transient_flux is not None and transient_snr is not None:
        raise ValueError("give transient_flux or transient_snr, not both")
    grid = _psf_grid(psf_grid)
    psf_size = _default_psf_size(psf_size, tspec, sspec, variation, (h, w))
    background = _background_fn(background_offset, bbox)
    return _Options(
        dtype=dtype, bbox=bbox, template_psf=tspec, science_psf=sspec, variation=variation,
        shift=(dx, dy), psf_size=psf_size, psf_grid=grid, oversample=oversample,
        sky_science=sky_science, sky_template=sky_template, read_noise=read_noise, gain=gain,
        flux_ratio=flux_ratio, background=background,
        n_saturated=n_sat, n_bad_columns=n_bad, n_cosmic_rays=n_cr,
    )


def _check_levels(sky_science, sky_template, read_noise, gain, flux_ratio):
    """Check that sky levels and read noise are finite and >= 0, gain and flux ratio finite and > 0."""
    levels = (("sky_science", sky_science), ("sky_template", sky_template), ("read_noise", read_noise))
    for name, value in levels:
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be positive, got {gain}")
    if not (np.isfinite(flux_ratio) and flux_ratio > 0):
        raise ValueError(f"flux_ratio must be positive, got {flux_ratio}")


def _streams(key):
    """Return ``stream(name)``: the independent key of one random component (see ``_STREAM``)."""

    def stream(name):
        return jax.random.fold_in(key, _STREAM[name])

    return stream


class _Stars(NamedTuple):
    """The constant stars, PARENT positions, rounded through the image dtype (float64 arrays)."""

    x: np.ndarray  # template
    y: np.ndarray
    flux: np.ndarray  # template flux
    x_science: np.ndarray
    y_science: np.ndarray
    flux_science: np.ndarray
    science_scale: np.ndarray  # science PSF width factor at each star


def _draw_stars(cfg, stream, *, n_stars, flux_range, flux_slope, stars):
    """Draw the random (or take the explicit) constant stars of both images."""
    if stars is None:
        sx, sy, sf = _random_stars(stream, n_stars, flux_range, flux_slope, cfg.bbox)
    else:
        sx, sy, sf = _explicit_sources(stars, "stars", allow_zero=True)
    if cfg.n_saturated > sx.size:
        raise ValueError(f"n_saturated must be at most the number of stars ({sx.size}), got {cfg.n_saturated}")
    dtype, (dx, dy) = cfg.dtype, cfg.shift
    sx, sy, sf = _through(sx, dtype), _through(sy, dtype), _through(sf, dtype)
    sxs, sys_ = _through(sx + dx, dtype), _through(sy + dy, dtype)
    sfs = _through(cfg.flux_ratio * sf, dtype)
    scale = _through(_width_scale(sxs, sys_, cfg.variation, cfg.bbox), dtype)
    return _Stars(sx, sy, sf, sxs, sys_, sfs, scale)


class _Transients(NamedTuple):
    """Transients: science-frame PARENT positions, fluxes and signs (+1 new, -1 fading)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    sign: np.ndarray


def _draw_transients(cfg, stream, *, n_transients, transients, transient_sign, transient_flux, transient_snr):
    """Draw the random (or take the explicit) transients and set their fluxes (given, or from a S/N)."""
    if transients is None:
        tx, ty = _random_transient_positions(cfg, stream, n_transients)
        tf = None
    else:
        tx, ty, tf = _explicit_sources(transients, "transients", allow_zero=False)
    n_tr = tx.size
    tsign = np.broadcast_to(np.asarray(transient_sign, dtype=np.int64), (n_tr,)).copy()
    if not np.all(np.isin(tsign, (-1, 1))):
        raise ValueError(f"transient_sign must be +1 or -1, got {transient_sign!r}")
    tx, ty = _through(tx, cfg.dtype), _through(ty, cfg.dtype)
    if tf is None and transient_flux is not None:
        tf = np.broadcast_to(np.asarray(transient_flux, dtype=np.float64), (n_tr,)).copy()
        if np.any(~(tf > 0)) or np.any(~np.isfinite(tf)):
            raise ValueError(f"transient_flux must be positive and finite, got {transient_flux!r}")
    elif tf is None:
        tf = _transient_fluxes_for_snr(cfg, tx, ty, tsign, transient_snr)
    return _Transients(tx, ty, _through(tf, cfg.dtype), tsign)


def _random_transient_positions(cfg, stream, n_transients):
    """Draw uniform PARENT positions at least ``psf_size // 2`` pixels from the edges."""
    n_tr = _positive_int(n_transients, "n_transients", allow_zero=True)
    x0, y0, w, h = cfg.bbox
    half = cfg.psf_size // 2
    if n_tr and (w - 1 < 2 * half or h - 1 < 2 * half):
        raise ValueError(f"image shape {(h, w)} leaves no room for transients away from the edges")
    kt = jax.random.split(stream("transient_xy"))
    tx = _uniform(kt[0], n_tr, x0 + half, x0 + w - 1 - half)
    ty = _uniform(kt[1], n_tr, y0 + half, y0 + h - 1 - half)
    return tx, ty


def _transient_fluxes_for_snr(cfg, tx, ty, tsign, transient_snr):
    """Return the fluxes of the PSF-photometry S/N (default 10) in the image each transient appears in."""
    n_tr = tx.size
    snr = 10.0 if transient_snr is None else transient_snr
    snr = np.broadcast_to(np.asarray(snr, np.float64), (n_tr,))
    if np.any(~(snr > 0)):
        raise ValueError(f"transient_snr must be positive, got {transient_snr!r}")
    rn2, gain = cfg.read_variance, cfg.gain
    tf = np.empty(n_tr)
    for i in range(n_tr):
        if tsign[i] > 0:
            scale = float(_width_scale(tx[i], ty[i], cfg.variation, cfg.bbox))
            kern = _kernel(cfg.science_psf, scale, cfg.psf_size, cfg.oversample, cfg.dtype)
            var = (cfg.sky_science + float(cfg.background(tx[i], ty[i]))) / gain + rn2
        else:
            kern = _kernel(cfg.template_psf, 1.0, cfg.psf_size, cfg.oversample, cfg.dtype)
            var = cfg.sky_template / gain + rn2
        tf[i] = flux_for_snr(snr[i], kern, var)
    return tf


class _Scene(NamedTuple):
    """Noise-free images: Poisson means (jax, image dtype) and truth models (numpy float64)."""

    science_mu: jax.Array  # stars + transients + background + sky
    template_mu: jax.Array
    science_model: np.ndarray  # as stored: without the sky when subtract_sky
    template_model: np.ndarray
    background: np.ndarray


def _render_scene(cfg, stars, trans, *, noise, subtract_sky):
    """Render stars, transients, background and sky into the Poisson means and the truth models."""
    x0, y0, w, h = cfg.bbox
    dtype, (dx, dy) = cfg.dtype, cfg.shift
    sspec, tspec = cfg.science_psf, cfg.template_psf
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    bkg = np.asarray(cfg.background(xx, yy), np.float64)
    sci = _render_parent(cfg, sspec, stars.x_science, stars.y_science, stars.flux_science, stars.science_scale)
    tmp = _render_parent(cfg, tspec, stars.x, stars.y, stars.flux, np.ones_like(stars.x))
    tx, ty, tf = trans.x, trans.y, trans.flux
    new, fade = trans.sign > 0, trans.sign < 0
    if np.any(new):
        scale = _through(_width_scale(tx[new], ty[new], cfg.variation, cfg.bbox), dtype)
        sci = sci + _render_parent(cfg, sspec, tx[new], ty[new], tf[new], scale)
    if np.any(fade):
        ones = np.ones(int(fade.sum()))
        tmp = tmp + _render_parent(cfg, tspec, tx[fade] - dx, ty[fade] - dy, tf[fade], ones)
    sci_mu = sci + jnp.asarray(bkg.astype(dtype)) + jnp.asarray(cfg.sky_science, dtype)  # Poisson means
    tmp_mu = tmp + jnp.asarray(cfg.sky_template, dtype)
    if noise and (float(jnp.min(sci_mu)) < 0 or float(jnp.min(tmp_mu)) < 0):
        raise ValueError("sky + background is negative somewhere: the Poisson mean must be >= 0")
    # truth in float64 from the rendered stars (no float32 rounding of the sky level)
    sci_model = np.asarray(sci, dtype=np.float64) + bkg
    tmp_model = np.array(tmp, dtype=np.float64)
    if not subtract_sky:
        sci_model += cfg.sky_science
        tmp_model += cfg.sky_template
    return _Scene(sci_mu, tmp_mu, sci_model, tmp_model, bkg)


def _render_parent(cfg, spec, x, y, flux, scale):
    """Apply :func:`_render` to PARENT positions, on the image of ``cfg``."""
    x0, y0 = cfg.bbox[:2]
    return _render(spec, x - x0, y - y0, flux, scale, cfg.shape, cfg.psf_size, cfg.oversample, cfg.dtype)


class _Planes(NamedTuple):
    """The three (numpy, editable in place) planes of one exposure."""

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray


def _noisy_planes(cfg, mu, key):
    """Make the planes of one image of Poisson means ``mu``: noisy image, zero mask, variance.

    The noise is drawn with ``key``; without a key (``noise=False``) the image is ``mu`` itself.
    """
    gain, dtype = cfg.gain, cfg.dtype
    var = np.array(mu / gain + cfg.read_variance, dtype=dtype)
    if key is None:
        raw = np.array(mu, dtype=dtype)
    else:
        raw = np.array(_noisy(key, mu, gain, cfg.read_noise), dtype=dtype)
    return _Planes(raw, np.zeros(cfg.shape, dtype=np.int32), var)


class _Defects(NamedTuple):
    """What :func:`_apply_defects` did (LOCAL pixel positions)."""

    cosmic_ray_x: np.ndarray
    cosmic_ray_y: np.ndarray
    cosmic_ray_flux: np.ndarray
    saturation_level: float
    saturated: np.ndarray
    bad_columns: np.ndarray


def _apply_defects(
    cfg, stream, stars, scene, sci, tmp, *, saturation_level, bad_column_value, cosmic_ray_flux, subtract_sky
):
    """Add cosmic rays, saturation and bad columns, then subtract the sky, in place on the planes."""
    bits = {p: 1 << DEFAULT_MASK_PLANES[p] for p in ("SAT", "BAD", "CR")}
    cr_x, cr_y, cr_f = _add_cosmic_rays(
        stream("cosmic_rays"), cfg.n_cosmic_rays, cosmic_ray_flux, sci.image, sci.mask, bits["CR"]
    )
    level, saturated = _saturate(cfg, stars, scene, (sci, tmp), saturation_level, bits["SAT"])
    sky = cfg.sky_science if subtract_sky else 0.0
    bad_cols = _add_bad_columns(cfg, stream("bad_columns"), sci, bad_column_value, sky, bits["BAD"])
    if subtract_sky:
        sci.image[...] -= np.asarray(cfg.sky_science, cfg.dtype)
        tmp.image[...] -= np.asarray(cfg.sky_template, cfg.dtype)
    return _Defects(cr_x, cr_y, cr_f, level, saturated, bad_cols)


def _saturate(cfg, stars, scene, planes, saturation_level, bit):
    """Clip and flag both images at the explicit (or ``n_saturated``) level.

    Return the level (``inf`` when nothing saturates) and which stars saturate.
    """
    x0, y0 = cfg.bbox[:2]
    sci_mu = np.asarray(scene.science_mu, dtype=np.float64)
    lx, ly = stars.x_science - x0, stars.y_science - y0
    if saturation_level is None and cfg.n_saturated:
        saturation_level = _saturation_for(cfg.n_saturated, sci_mu, lx, ly)
    if saturation_level is None:
        return float("inf"), np.zeros(stars.x.size, dtype=bool)
    level = float(saturation_level)
    for p in planes:
        hit = p.image >= level
        p.image[hit] = level
        p.mask[hit] |= bit
    return level, _peaks(sci_mu, lx, ly) >= level


def _add_bad_columns(cfg, key, planes, value, sky, bit):
    """Set ``n_bad_columns`` distinct random columns to ``value + sky`` and flag them; return LOCAL x."""
    n_bad = cfg.n_bad_columns
    bad_cols = np.sort(np.asarray(jax.random.permutation(key, cfg.shape[1]))[:n_bad]).astype(np.int64)
    if n_bad:
        planes.image[:, bad_cols] = value + sky
        planes.mask[:, bad_cols] |= bit
    return bad_cols


def _centre(bbox):
    """Return the PARENT position of the image centre."""
    x0, y0, w, h = bbox
    return (x0 + 0.5 * (w - 1), y0 + 0.5 * (h - 1))


def _build_psfs(cfg):
    """Build the science (GridPsf with ``psf_variation``, else ImagePsf) and template (ImagePsf) PSFs."""
    x0, y0, w, h = cfg.bbox
    centre = _centre(cfg.bbox)
    size, oversample, dtype = cfg.psf_size, cfg.oversample, cfg.dtype
    tmp_psf = ImagePsf(_kernel(cfg.template_psf, 1.0, size, oversample, dtype), averagePosition=centre)
    if cfg.variation != (0.0, 0.0):
        xc = np.unique(np.linspace(x0, x0 + w - 1, cfg.psf_grid[0]))
        yc = np.unique(np.linspace(y0, y0 + h - 1, cfg.psf_grid[1]))
        scales = _width_scale(xc[None, :], yc[:, None], cfg.variation, cfg.bbox)  # (ny, nx)
        images = [[_kernel(cfg.science_psf, float(sc), size, oversample, dtype) for sc in row] for row in scales]
        sci_psf = GridPsf(np.asarray(images), xc, yc)
    else:
        sci_psf = ImagePsf(_kernel(cfg.science_psf, 1.0, size, oversample, dtype), averagePosition=centre)
    return sci_psf, tmp_psf


def _build_wcs(cfg, with_wcs, wcs_offset, wcs_center, pixel_scale):
    """Build the science and template TAN WCSs (``None, None`` without ``with_wcs``)."""
    if not with_wcs:
        return None, None
    dx, dy = cfg.shift
    centre = _centre(cfg.bbox)
    off = (-dx, -dy) if wcs_offset is None else tuple(float(v) for v in wcs_offset)
    sci_wcs = _tan_wcs(centre, wcs_center, pixel_scale)
    tmp_wcs = _tan_wcs((centre[0] + off[0], centre[1] + off[1]), wcs_center, pixel_scale)
    return sci_wcs, tmp_wcs


def _exposure(planes, psf, wcs, photo_calib, bbox):
    """Wrap the planes in an :class:`~jaxdiff.image.Exposure` at the bbox's origin."""
    xy0 = bbox[:2]
    mi = MaskedImage(Image(planes.image, xy0), Mask(planes.mask, xy0), Image(planes.variance, xy0))
    return Exposure(mi, psf=psf, wcs=wcs, photoCalib=photo_calib)


def _truth(cfg, stars, trans, scene, defects):
    """Collect the :class:`SimulationTruth` (PARENT positions)."""
    x0, y0 = cfg.bbox[:2]
    return SimulationTruth(
        x=stars.x,
        y=stars.y,
        x_science=stars.x_science,
        y_science=stars.y_science,
        flux_template=stars.flux,
        flux_science=stars.flux_science,
        science_psf_scale=stars.science_scale,
        transient_x=trans.x,
        transient_y=trans.y,
        transient_flux=trans.flux,
        transient_sign=trans.sign,
        science_model=scene.science_model,
        template_model=scene.template_model,
        background=scene.background,
        science_psf=cfg.science_psf,
        template_psf=cfg.template_psf,
        psf_variation=cfg.variation,
        psf_size=cfg.psf_size,
        flux_ratio=float(cfg.flux_ratio),
        shift=cfg.shift,
        sky_science=float(cfg.sky_science),
        sky_template=float(cfg.sky_template),
        read_noise=float(cfg.read_noise),
        gain=float(cfg.gain),
        saturation_level=defects.saturation_level,
        saturated=defects.saturated,
        bad_columns=defects.bad_columns + x0,
        cosmic_ray_x=defects.cosmic_ray_x + x0,
        cosmic_ray_y=defects.cosmic_ray_y + y0,
        cosmic_ray_flux=defects.cosmic_ray_flux,
        bbox=cfg.bbox,
    )
