"""PSF estimation for exposures that carry none: select stars, fit them, model the spatial variation.

:func:`estimate_psf` follows the recipe of PSFEx (Bertin 2011) and Piff (Jarvis et al. 2021, MNRAS
501, 1282): detect sources; keep bright, isolated, unmasked ones; fit each with an analytic model
(:func:`jaxdiff.core.fit.fit_psf_stamp`, vmapped); reject galaxies and blends by size (the
size–magnitude locus of stars is flat: a robust clip of the fitted FWHM) and by fit quality; hold a
random part of the stars in reserve; fit each shape parameter as a polynomial in position
(weighted least squares with iterative clipping); validate on the reserve stars (chi² per degree of
freedom with the shape fixed by the model and only flux, centroid and sky fitted).

The result's ``psf`` is a :class:`jaxdiff.image.psf.GridPsf` (or an ``ImagePsf`` for spatial order
0) that both tasks accept: the model rendered on a grid of positions across the image.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from ..core.fit import MODELS, fit_psf_stamp, levenberg_marquardt, model_stamp
from ..core.fit.least_squares import default_tol
from ..image.catalog import detect_sources_banded
from ..image.psf import FWHM_PER_SIGMA, GridPsf, ImagePsf

__all__ = ["DEFAULT_BAD_PLANES", "PsfEstimate", "PsfEstimationError", "estimate_psf"]

#: Mask planes whose pixels disqualify a star stamp.
DEFAULT_BAD_PLANES = ("BAD", "SAT", "CR", "EDGE", "NO_DATA", "INTRP", "SUSPECT")

#: Order in which the selection cuts are applied (keys of ``report["rejected"]``).
CUTS = ("snr", "edge", "isolation", "masked", "fit", "size", "spatial")


class PsfEstimationError(ValueError):
    """Too few usable stars for the requested PSF model.

    Attributes
    ----------
    n_found : int
        Sources detected.
    n_usable : int
        Stars left after every cut.
    n_needed : int
        Stars the spatial model needs.
    rejected : dict
        Stars removed by each cut, in the order applied.
    """

    def __init__(self, n_found, n_usable, n_needed, rejected):
        self.n_found, self.n_usable, self.n_needed, self.rejected = n_found, n_usable, n_needed, dict(rejected)
        worst = max(self.rejected, key=self.rejected.get) if self.rejected else "none"
        cuts = ", ".join(f"{k}: {v}" for k, v in self.rejected.items())
        super().__init__(
            f"PSF estimation: {n_usable} usable stars of {n_found} detected, {n_needed} needed "
            f"(removed by cut: {cuts}; most by '{worst}'). Lower snr_min, the spatial order or the "
            "reserve fraction, use a smaller stamp_size / isolation radius, or check the mask planes."
        )


class PsfEstimate(NamedTuple):
    """Result of :func:`estimate_psf`.

    Attributes
    ----------
    psf
        ``GridPsf`` (``ImagePsf`` for spatial order 0), normalised kernel images of the model.
    report : dict
        ``n_detected``, ``n_candidates``, ``rejected`` (per cut, see :data:`CUTS`), ``n_used``,
        ``n_reserve``, ``reserve_chi2_per_dof`` and ``used_chi2_per_dof`` (medians, shape fixed by
        the model), ``fwhm`` / ``e1`` / ``e2`` on the grid (``grid_x``, ``grid_y``, PARENT
        pixels; ``fwhm`` is the geometric mean of ``fwhm_major`` and ``fwhm_minor``, the FWHM
        along the principal axes), ``coefficients`` of the spatial model per parameter, ``model``,
        ``spatial_order``, ``stamp_size``, ``fwhm_guess``.
    stars : astropy.table.Table
        Every candidate star: PARENT ``x``, ``y``, detection ``snr``, fitted parameters and errors,
        ``chi2_per_dof``, ``status`` of the fit, ``reserve`` and ``used`` flags and the
        ``rejected_by`` cut ('' for kept stars).
    """

    psf: object
    report: dict
    stars: Table


def _bucket(n):
    """Batch sizes padded to 16, 32, 64 and then multiples of 64: one compilation per bucket."""
    for b in (16, 32, 64):
        if n <= b:
            return b
    return 64 * int(np.ceil(n / 64))


def _adaptive_sigma(stamps, n_iter=10):
    """Gaussian sigma of each stamp from adaptive (Gaussian-weighted) second moments (numpy, host).

    With the weight's sigma set to sqrt(2) times the measured one, the fixed point for a Gaussian
    source of width s is the measured width s (Bernstein & Jarvis 2002, sec. 3.1); the weight keeps
    noise and neighbours far from the centre out of the estimate.
    """
    n, size, _ = stamps.shape
    c = size // 2
    yy, xx = np.mgrid[:size, :size] - c
    r2 = (xx * xx + yy * yy)[None]
    border = np.concatenate([stamps[:, 0], stamps[:, -1], stamps[:, :, 0], stamps[:, :, -1]], axis=1)
    f = stamps - np.median(border, axis=1)[:, None, None]
    sw = np.full(n, 2.0)
    for _ in range(n_iter):
        wgt = np.exp(-0.5 * r2 / sw[:, None, None] ** 2) * f
        tot = wgt.sum(axis=(1, 2))
        m2 = np.where(tot > 0, (wgt * r2).sum(axis=(1, 2)) / np.where(tot > 0, tot, 1) / 2, 1.0)
        sm = np.sqrt(np.clip(m2, 0.09, c * c))
        sw = np.clip(np.sqrt(2) * sm, 0.5, c)
    return sm


def _fit_batch(stamps, variances, model, fit_sky):
    n = stamps.shape[0]
    b = _bucket(n)
    pad = ((0, b - n), (0, 0), (0, 0))
    s = np.pad(stamps, pad, mode="edge")
    v = np.pad(variances, pad, mode="edge")
    res = _vmapped_fit(jnp.asarray(s), jnp.asarray(v), model, fit_sky)
    res = jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], jax.device_get(res))
    if not fit_sky:  # a zero sky column keeps the parameter layout of the local-sky fits
        zero = np.zeros((n, 1), res.params.dtype)
        res = res._replace(params=np.concatenate([res.params, zero], 1), errors=np.concatenate([res.errors, zero], 1))
    return res


@functools.partial(jax.jit, static_argnums=(2, 3))
def _vmapped_fit(s, v, model, fit_sky):
    return jax.vmap(lambda a, b: fit_psf_stamp(a, b, model=model, fit_sky=fit_sky))(s, v)


def _poly_terms(u, v, order):
    return np.stack([u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)], axis=-1)


def _fit_spatial(u, v, values, errors, order, n_clip=3, k=4.0):
    """Weighted polynomial fit of ``values`` in (u, v) with iterative robust clipping; keep mask, coefficients."""
    keep = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    a = _poly_terms(u, v, order)
    coef = np.zeros(a.shape[1])
    for _ in range(n_clip + 1):
        resid = values - a @ coef
        if keep.sum() < a.shape[1]:
            break
        # intrinsic scatter floor: bright stars must not get all the weight
        scatter = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep]))) if coef.any() else 0.0
        w = 1 / np.sqrt(errors**2 + scatter**2)
        coef, *_ = np.linalg.lstsq(a[keep] * w[keep, None], values[keep] * w[keep], rcond=None)
        resid = values - a @ coef
        mad = 1.4826 * np.median(np.abs(resid[keep]))
        new = keep & (np.abs(resid) <= k * max(mad, 1e-12) + 3 * errors)
        if np.array_equal(new, keep):
            break
        keep = new
    return coef, keep


def _mask_neighbours(vstamps, idx, xs, ys, flux, ix, iy, half, radius):
    """Give zero weight (variance 0) to discs of ``radius`` around other detections inside each stamp.

    Only neighbours brighter than 1 % of the star count; ``vstamps`` is changed in place.  All
    (star, neighbour) pairs at once: a disc mask per pair, OR-ed into the star's stamp.
    """
    size = 2 * half + 1
    reach = half + radius
    near = ((np.abs(xs[None, :] - xs[idx, None]) < reach) & (np.abs(ys[None, :] - ys[idx, None]) < reach)
            & (flux[None, :] > 0.01 * flux[idx, None]))  # fmt: skip
    near[np.arange(idx.size), idx] = False
    k, j = np.nonzero(near)
    if k.size == 0:
        return
    dx = xs[j] - (ix[idx[k]] - half)
    dy = ys[j] - (iy[idx[k]] - half)
    yy, xx = np.mgrid[:size, :size]
    discs = (xx[None] - dx[:, None, None]) ** 2 + (yy[None] - dy[:, None, None]) ** 2 < radius**2
    hit = np.zeros((idx.size, size, size), bool)
    np.logical_or.at(hit, k, discs)
    vstamps[hit] = 0


def _any_in_boxes(bad, ys, xs, half):
    """Whether any pixel of ``bad`` lies in the (2 half + 1)² box around each (y, x): a summed-area table."""
    sat = np.zeros((bad.shape[0] + 1, bad.shape[1] + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(bad, axis=0, dtype=np.int64), axis=1)
    y0, y1, x0, x1 = ys - half, ys + half + 1, xs - half, xs + half + 1
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) > 0


def _stamps_at(arr, ys, xs, size):
    h = size // 2
    oy, ox = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1), indexing="ij")
    return arr[ys[:, None, None] + oy[None], xs[:, None, None] + ox[None]]


def estimate_psf(
    exposure,
    *,
    model: str = "moffat",
    spatial_order: int = 1,
    fwhm_guess: float | None = None,
    snr_min: float = 30.0,
    max_stars: int = 500,
    reserve_fraction: float = 0.1,
    stamp_size: int | None = None,
    isolation: float | None = None,
    bad_planes=DEFAULT_BAD_PLANES,
    grid: int = 5,
    local_sky: bool = True,
    seed: int = 0,
) -> PsfEstimate:
    """Estimate a spatially varying PSF model from the stars of an exposure.

    Parameters
    ----------
    exposure : Exposure
        Image with variance and mask planes (sky may still be in: a local sky is fitted per star).
    model : {"moffat", "gaussian"}, keyword-only
        Analytic profile (:mod:`jaxdiff.core.fit.psf_models`).
    spatial_order : int, keyword-only
        Total degree (0–2) of the polynomials in position for the shape parameters.
    fwhm_guess : float, optional, keyword-only
        FWHM in pixels for detection and stamp size; default: from the moments of the brightest
        sources.
    snr_min : float, keyword-only
        Minimum detection S/N of a star.
    max_stars : int, keyword-only
        At most this many stars (the highest S/N) are fitted.
    reserve_fraction : float, keyword-only
        Fraction of the selected stars held out to validate the model (at least one when ten or
        more stars remain).
    stamp_size : int, optional, keyword-only
        Odd stamp size; default ``odd(5 * FWHM)`` within [15, 51].
    isolation : float, optional, keyword-only
        A star with a detected neighbour brighter than 1 % of it within this radius (pixels) is
        rejected (a blend); default 2 FWHM.  Neighbours farther out but inside the stamp are
        masked (zero weight within 1.5 FWHM of them).
    bad_planes : sequence of str, keyword-only
        Mask planes that disqualify a stamp.
    grid : int, keyword-only
        Nodes per axis of the returned ``GridPsf`` (spatial order >= 1).
    local_sky : bool, keyword-only
        Fit a constant sky per star (default); else subtract the global background of the
        detection (median of the binned background) and fit no sky: the wings then stay in the
        profile, which is what a profile fit to stacked stars over a global background measures.
    seed : int, keyword-only
        Seed of the reserve-star draw.

    Returns
    -------
    PsfEstimate

    Raises
    ------
    PsfEstimationError
        Fewer usable stars than the spatial model needs; says how many each cut removed.
    ValueError
        Unknown model, bad spatial order or stamp size.
    """
    if model not in MODELS:
        msg = f"model must be one of {sorted(MODELS)}, got {model!r}"
        raise ValueError(msg)
    if spatial_order not in (0, 1, 2):
        msg = f"spatial_order must be 0, 1 or 2, got {spatial_order!r}"
        raise ValueError(msg)
    mi = exposure.getMaskedImage()
    image = np.asarray(mi.image.array, np.float64)
    variance = np.asarray(mi.variance.array, np.float64)
    mask = exposure.getMask()
    planes = mask.getMaskPlaneDict()
    bits = 0
    for name in bad_planes:
        if name in planes:
            bits |= 1 << planes[name]
    bad = ~np.isfinite(image) | ~np.isfinite(variance) | (variance <= 0) | ((np.asarray(mask.array) & bits) != 0)
    h, w = image.shape
    x0, y0 = exposure.getXY0()
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32

    sigma_det = (fwhm_guess if fwhm_guess else 3.0) / FWHM_PER_SIGMA
    det = detect_sources_banded(image.astype(dtype), variance.astype(dtype), bad, sigma=sigma_det, n_sigma=5.0,
                                max_sources=max(4 * max_stars, 2000))  # fmt: skip
    valid = np.asarray(det.valid)
    xs, ys, snr = (np.asarray(a, np.float64)[valid] for a in (det.x, det.y, det.snr))
    flux = np.asarray(det.flux, np.float64)[valid]
    n_detected = int(valid.sum())
    rejected = dict.fromkeys(CUTS, 0)

    if fwhm_guess is None:  # adaptive moments of the brightest sources
        order = np.argsort(-snr)[:64]
        s0 = 25
        inside = (xs[order] >= s0) & (xs[order] < w - s0) & (ys[order] >= s0) & (ys[order] < h - s0)
        order = order[inside]
        if order.size:
            st = _stamps_at(image, np.rint(ys[order]).astype(int), np.rint(xs[order]).astype(int), s0)
            fwhm_guess = float(np.median(_adaptive_sigma(st))) * FWHM_PER_SIGMA
        else:
            fwhm_guess = 3.0
    if stamp_size is None:
        stamp_size = int(np.clip(5 * fwhm_guess, 15, 51))
        stamp_size += 1 - stamp_size % 2
    if stamp_size % 2 == 0 or stamp_size < 7:
        msg = f"stamp_size must be odd and >= 7, got {stamp_size}"
        raise ValueError(msg)
    half = stamp_size // 2
    radius = isolation if isolation is not None else 2.0 * fwhm_guess

    ok = snr >= snr_min
    rejected["snr"] = int((~ok).sum())
    n_candidates = int(ok.sum())
    ix, iy = np.rint(xs).astype(int), np.rint(ys).astype(int)
    edge_ok = (ix >= half) & (ix < w - half) & (iy >= half) & (iy < h - half)
    rejected["edge"] = int((ok & ~edge_ok).sum())
    ok &= edge_ok
    # isolation against every detection (any S/N): a neighbour above 1 % of the star's flux
    d2 = (xs[:, None] - xs[None, :]) ** 2 + (ys[:, None] - ys[None, :]) ** 2 if xs.size <= 8000 else None
    if d2 is not None:
        np.fill_diagonal(d2, np.inf)
        crowded = np.any((d2 < radius**2) & (flux[None, :] > 0.01 * flux[:, None]), axis=1)
    else:
        crowded = np.zeros(xs.shape, bool)
    rejected["isolation"] = int((ok & crowded).sum())
    ok &= ~crowded
    idx = np.flatnonzero(ok)
    masked = _any_in_boxes(bad, iy[idx], ix[idx], half)
    rejected["masked"] = int(masked.sum())
    idx = idx[~masked]
    idx = idx[np.argsort(-snr[idx])][:max_stars]

    names = MODELS[model][1]
    n_model = len(names)
    stamps = _stamps_at(image, iy[idx], ix[idx], stamp_size).astype(dtype)
    vstamps = _stamps_at(variance, iy[idx], ix[idx], stamp_size).astype(dtype)
    _mask_neighbours(vstamps, idx, xs, ys, flux, ix, iy, half, 1.5 * fwhm_guess)
    if not local_sky:
        stamps = stamps - dtype(float(det.background))
    fits = _fit_batch(stamps, vstamps, model, local_sky) if idx.size else None
    size_name = "fwhm" if model == "moffat" else "sigma"
    si = names.index(size_name)
    n_terms = (spatial_order + 1) * (spatial_order + 2) // 2
    n_needed = max(3 * n_terms, 5)
    if fits is None:
        raise PsfEstimationError(n_detected, 0, n_needed, rejected)
    params, errors = fits.params, fits.errors
    chi2_dof = fits.chi2 / np.maximum(fits.dof, 1)
    good = (fits.status == 0) & np.all(np.isfinite(params), axis=1) & (params[:, si] > 0.3) & (params[:, si] < half)
    rejected["fit"] = int((~good).sum())
    # size-magnitude: stars share one size; galaxies and blends are larger (robust clip on size and chi2)
    sizes = params[:, si]
    keep = good.copy()
    for _ in range(5):
        med = np.median(sizes[keep]) if keep.any() else 0.0
        mad = 1.4826 * np.median(np.abs(sizes[keep] - med)) if keep.any() else 0.0
        cmed = np.median(chi2_dof[keep]) if keep.any() else 0.0
        cmad = 1.4826 * np.median(np.abs(chi2_dof[keep] - cmed)) if keep.any() else 0.0
        new = good & (np.abs(sizes - med) <= 3 * mad + 3 * errors[:, si]) & (chi2_dof <= cmed + 5 * cmad + 0.5)
        if np.array_equal(new, keep):
            break
        keep = new
    rejected["size"] = int((good & ~keep).sum())

    rng = np.random.default_rng(seed)
    kept = np.flatnonzero(keep)
    n_res = int(round(reserve_fraction * kept.size)) if kept.size >= 10 else 0
    if kept.size >= 10:
        n_res = max(n_res, 1)
    reserve = np.zeros(idx.size, bool)
    reserve[rng.choice(kept, n_res, replace=False) if n_res else []] = True
    train = keep & ~reserve
    if train.sum() < n_needed:
        raise PsfEstimationError(n_detected, int(train.sum()), n_needed, rejected)

    # spatial model of the shape parameters (flux, centroid and sky are per star)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    px, py = ix[idx] - half + params[:, 1], iy[idx] - half + params[:, 2]  # array coordinates
    u, v = (px - cx) / max(cx, 1), (py - cy) / max(cy, 1)
    shape_idx = [i for i, n in enumerate(names) if n not in ("flux", "x0", "y0")]
    coefs = {}
    used = train.copy()
    for i in shape_idx:
        coef, k = _fit_spatial(u[train], v[train], params[train, i], errors[train, i], spatial_order)
        coefs[names[i]] = coef
        sub = np.flatnonzero(train)
        used[sub[~k]] = False
    rejected["spatial"] = int((train & ~used).sum())
    if used.sum() < n_needed:
        raise PsfEstimationError(n_detected, int(used.sum()), n_needed, rejected)
    for i in shape_idx:  # refit on the stars that every parameter kept
        coefs[names[i]], _ = _fit_spatial(u[used], v[used], params[used, i], errors[used, i], spatial_order, n_clip=0)

    def shape_at(uu, vv):
        terms = _poly_terms(np.asarray(uu, float), np.asarray(vv, float), spatial_order)
        return {names[i]: terms @ coefs[names[i]] for i in shape_idx}

    # validation: flux, centroid and sky fitted with the shape fixed by the model
    chi_all = _fixed_shape_chi2(stamps, vstamps, params, shape_at(u, v), model, shape_idx)
    reserve_chi2 = float(np.median(chi_all[reserve])) if reserve.any() else float("nan")
    used_chi2 = float(np.median(chi_all[used]))

    # the PSF: the model rendered (flux 1, centred) on a grid of positions
    ng = 1 if spatial_order == 0 else int(grid)
    gx = np.linspace(0, w - 1, ng) if ng > 1 else np.array([cx])
    gy = np.linspace(0, h - 1, ng) if ng > 1 else np.array([cy])
    gu, gv = np.meshgrid((gx - cx) / max(cx, 1), (gy - cy) / max(cy, 1))
    shp = shape_at(gu.ravel(), gv.ravel())
    pgrid = np.zeros((gu.size, n_model))
    pgrid[:, 0] = 1.0
    pgrid[:, 1] = pgrid[:, 2] = half
    for i in shape_idx:
        pgrid[:, i] = shp[names[i]]
    kern = np.array(jax.vmap(lambda p: model_stamp(model, p, (stamp_size, stamp_size)))(jnp.asarray(pgrid)), float)
    kern /= kern.sum(axis=(1, 2), keepdims=True)
    if ng == 1:
        psf = ImagePsf(kern[0], averagePosition=(x0 + cx, y0 + cy))
    else:
        psf = GridPsf(kern.reshape(ng, ng, stamp_size, stamp_size), x0 + gx, y0 + gy)
    size_grid = shp[size_name].reshape(ng, ng) * (1.0 if model == "moffat" else FWHM_PER_SIGMA)
    # FWHM along the major and minor axes: the shape matrix has unit determinant and eigenvalues
    # (1 +- |e|) / sqrt(1 - |e|^2), so the axes scale by ((1 + |e|) / (1 - |e|))^(+-1/4)
    e_abs = np.clip(np.hypot(shp["e1"], shp["e2"]).reshape(ng, ng), 0, 0.99)
    axis = ((1 + e_abs) / (1 - e_abs)) ** 0.25

    rejected_by = np.full(idx.size, "", dtype=object)
    for name, mask_ in (("fit", ~good), ("size", good & ~keep), ("spatial", train & ~used)):
        rejected_by[mask_ & (rejected_by == "")] = name
    stars = Table({"x": x0 + px, "y": y0 + py, "snr": snr[idx], "chi2_per_dof": chi2_dof,
                   "chi2_per_dof_model": chi_all, "status": fits.status, "reserve": reserve, "used": used,
                   "rejected_by": rejected_by.astype(str)})  # fmt: skip
    for i, n in enumerate(names + (("sky",))):
        stars[n] = params[:, i]
        stars[n + "_err"] = errors[:, i]
    report = {
        "n_detected": n_detected, "n_candidates": n_candidates, "rejected": rejected, "n_fitted": int(idx.size),
        "n_used": int(used.sum()), "n_reserve": int(reserve.sum()), "reserve_chi2_per_dof": reserve_chi2,
        "used_chi2_per_dof": used_chi2, "grid_x": x0 + gx, "grid_y": y0 + gy, "fwhm": size_grid,
        "fwhm_major": size_grid * axis, "fwhm_minor": size_grid / axis,
        "e1": shp["e1"].reshape(ng, ng), "e2": shp["e2"].reshape(ng, ng),
        "coefficients": {k: v.tolist() for k, v in coefs.items()}, "model": model,
        "spatial_order": spatial_order, "stamp_size": stamp_size, "fwhm_guess": float(fwhm_guess),
    }  # fmt: skip
    return PsfEstimate(psf, report, stars)


def _fixed_shape_chi2(stamps, vstamps, params, shapes, model, shape_idx):
    """chi²/dof of each stamp with the shape parameters fixed; flux, x0, y0 and sky fitted."""
    names = MODELS[model][1]
    n = stamps.shape[0]
    b = _bucket(n)
    fixed = np.stack([shapes[names[i]] for i in shape_idx], axis=1)
    free0 = np.concatenate([params[:, :3], params[:, -1:]], axis=1)  # flux, x0, y0, sky
    pad = ((0, b - n), (0, 0))
    args = [np.pad(stamps, pad + ((0, 0),), mode="edge"), np.pad(vstamps, pad + ((0, 0),), mode="edge"),
            np.pad(free0, pad, mode="edge"), np.pad(fixed, pad, mode="edge")]  # fmt: skip
    dtype = stamps.dtype
    out = _fixed_fit_jit(*(jnp.asarray(a, dtype) for a in args), model, tuple(shape_idx))
    return np.asarray(out)[:n]


@functools.partial(jax.jit, static_argnums=(4, 5))
def _fixed_fit_jit(s, v, free0, fixed, model, shape_idx):
    n_model = len(MODELS[model][1])

    def one(stamp, var, f0, shape):
        ok = jnp.isfinite(stamp) & (var > 0)
        sw = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, var, 1)), 0)
        data = jnp.where(ok, stamp, 0)

        def full(q):
            p = jnp.zeros(n_model, stamp.dtype).at[:3].set(q[:3])
            return p.at[jnp.asarray(shape_idx)].set(shape)

        def residual(q):
            return (data - model_stamp(model, full(q), stamp.shape) - q[3]) * sw

        res = levenberg_marquardt(residual, f0, n_iter=15, n_data=jnp.sum(ok), tol=default_tol(stamp.dtype))
        return res.chi2 / jnp.maximum(res.dof, 1)

    return jax.vmap(one)(s, v, free0, fixed)
