"""Alard-Lupton bookkeeping for the task shell: candidates, cells, the clipping loop, result objects.

The numerics (stamp fits, residual statistics, the spatial system) are the jitted, vmapped
functions of :mod:`jaxdiff.core.kernel_fit`; this module only decides which candidates enter which fit,
following LSST's ``PsfMatchTask._solve`` loop (``ip_diffim`` ``psfMatch.py``: candidate
selection, single-kernel and kernel-sum clipping, spatial fit and assessment). All single-stamp fits are computed once for every candidate (one batched call);
LSST's "visit the first ``nStarPerCell`` non-BAD candidates of every cell" then becomes a selection
on small host arrays, so rejecting candidates never recompiles anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core import kernel_fit as kf
from ..core.spatial import SpatialRange, n_spatial_terms, spatial_basis
from ..core.stats import clipped_stats
from ..image.geometry import Box2I
from .errors import InsufficientKernelSourcesError, NoKernelCandidatesError, PsfMatchingError

__all__ = [
    "CandidateSource",
    "Footprint",
    "KernelCandidate",
    "KernelCellSet",
    "SpatialKernel",
    "BackgroundModel",
]

GOOD, BAD, UNKNOWN = "GOOD", "BAD", "UNKNOWN"


# ------------------------------------------------------------------------------------------
# Candidate inputs
class CandidateSource:
    """A minimal source record (what LSST's ``SourceRecord`` offers to PSF matching).

    Parameters
    ----------
    x, y : float
        PARENT centroid.
    id : int
    flux, snr : float, optional
        PSF flux and its signal-to-noise ratio (informational).
    """

    def __init__(self, x, y, id=0, flux=float("nan"), snr=float("nan")):
        self.x, self.y, self.id, self.flux, self.snr = float(x), float(y), int(id), float(flux), float(snr)

    def getX(self):
        return self.x

    def getY(self):
        return self.y

    def getCentroid(self):
        return (self.x, self.y)

    def getId(self):
        return self.id

    def getPsfInstFlux(self):
        return self.flux

    def __repr__(self):
        return f"CandidateSource(id={self.id}, x={self.x:.2f}, y={self.y:.2f})"


class Footprint:
    """A rectangular footprint: the kernel-candidate stamp box (PARENT, inclusive ``Box2I``)."""

    def __init__(self, bbox):
        self._bbox = bbox

    def getBBox(self):
        return self._bbox

    def __repr__(self):
        return f"Footprint({self._bbox!r})"


def _source_xy(source):
    if hasattr(source, "getX") and hasattr(source, "getY"):
        return float(source.getX()), float(source.getY())
    if hasattr(source, "getCentroid"):
        c = source.getCentroid()
        return float(c[0]), float(c[1])
    if isinstance(source, (tuple, list, np.ndarray)) and len(source) == 2:
        return float(source[0]), float(source[1])
    raise TypeError(
        f"cannot read a position from kernel candidate source {source!r}: give an object with getX()/getY(), "
        "or an (x, y) pair"
    )


def _footprint_box(footprint):
    if footprint is None:
        return None
    if hasattr(footprint, "getBBox"):
        return footprint.getBBox()
    if isinstance(footprint, Box2I):
        return footprint
    if isinstance(footprint, (tuple, list, np.ndarray)) and len(footprint) == 4:
        x0, y0, x1, y1 = (int(v) for v in footprint)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"footprint box {tuple(footprint)} is empty; give (minX, minY, maxX, maxY), inclusive")
        return Box2I.fromMinMax((x0, y0), (x1, y1))
    raise TypeError(
        f"cannot read a box from footprint {footprint!r}: give an object with getBBox() or a "
        "(minX, minY, maxX, maxY) inclusive tuple"
    )


def normalize_candidates(candidateList):
    """Turn the accepted candidate-list forms into ``[(source, box_or_None)]``.

    Accepted: a list of dicts with ``source`` and ``footprint``; objects with ``getSource()``; an
    astropy Table with ``x`` and ``y`` columns; a list of ``(x, y)`` pairs or source records.
    """
    if candidateList is None:
        return None
    try:
        from astropy.table import Table
    except ImportError:  # pragma: no cover - astropy is a dependency
        Table = ()
    if isinstance(candidateList, Table):
        for col in ("x", "y"):
            if col not in candidateList.colnames:
                raise ValueError(f"candidate table needs 'x' and 'y' columns (PARENT pixels); it has {candidateList.colnames}")
        ids = candidateList["id"] if "id" in candidateList.colnames else range(1, len(candidateList) + 1)
        return [(CandidateSource(x, y, int(i)), None) for x, y, i in zip(candidateList["x"], candidateList["y"], ids, strict=True)]
    out = []
    kinds = set()
    for i, item in enumerate(candidateList):
        if isinstance(item, dict):
            kinds.add("dict")
            if "source" not in item:
                raise ValueError(f"candidate {i} is a dict without a 'source' entry: {item!r}")
            src = item["source"]
            box = _footprint_box(item.get("footprint"))
        elif hasattr(item, "getSource"):
            kinds.add("wrapped")
            src, box = item.getSource(), None
        else:
            kinds.add("source")
            src, box = item, None
        x, y = _source_xy(src)
        if not isinstance(src, CandidateSource) and not hasattr(src, "getX"):
            src = CandidateSource(x, y, i + 1)
        out.append((src, box))
    if len(kinds) > 1:
        raise RuntimeError(f"candidate list mixes element types {sorted(kinds)}; use one kind throughout")
    return out


# ------------------------------------------------------------------------------------------
# Results
@dataclass
class KernelCandidate:
    """One kernel candidate (LSST ``KernelCandidate`` bookkeeping).

    Attributes are PARENT positions, the stamp box, its cell, its rating, the single-stamp kernel
    sum/background/residual statistics, the residual statistics under the spatial model, and a
    status (``"GOOD"``, ``"BAD"``, ``"UNKNOWN"`` if never visited) with the reason for a rejection.
    """

    id: int
    x: float
    y: float
    bbox: Box2I
    cell: int
    rating: float
    kernelSum: float = float("nan")
    background: float = float("nan")
    residualMean: float = float("nan")
    residualRms: float = float("nan")
    spatialResidualMean: float = float("nan")
    spatialResidualRms: float = float("nan")
    status: str = UNKNOWN
    reason: str = ""
    usedInSpatialFit: bool = False

    def getId(self):
        return self.id

    def getStatus(self):
        return self.status

    def getXCenter(self):
        return self.x

    def getYCenter(self):
        return self.y

    def getCandidateRating(self):
        return self.rating

    def getKsum(self):
        return self.kernelSum

    def getBackground(self):
        return self.background

    def isGood(self):
        return self.status == GOOD


@dataclass
class KernelCellSet:
    """The candidates, their cells and statuses (an equivalent of afw's ``SpatialCellSet``).

    Attributes
    ----------
    bbox : Box2I
        Region split into cells of ``sizeX x sizeY`` (row-major from the lower left).
    candidates : list of KernelCandidate
    """

    bbox: Box2I
    sizeX: int
    sizeY: int
    candidates: list = field(default_factory=list)

    @property
    def nx(self):
        return max(1, math.ceil(self.bbox.getWidth() / self.sizeX))

    @property
    def ny(self):
        return max(1, math.ceil(self.bbox.getHeight() / self.sizeY))

    def getBBox(self):
        return self.bbox

    def getCellList(self):
        """Candidates grouped per cell (list of lists, sorted by descending rating)."""
        cells = [[] for _ in range(self.nx * self.ny)]
        for c in self.candidates:
            cells[c.cell].append(c)
        return [sorted(cl, key=lambda c: -c.rating if np.isfinite(c.rating) else np.inf) for cl in cells]

    def nGood(self):
        return sum(c.status == GOOD for c in self.candidates)

    def nBad(self):
        return sum(c.status == BAD for c in self.candidates)

    def __len__(self):
        return len(self.candidates)

    def __iter__(self):
        return iter(self.candidates)

    def toTable(self):
        """Return an astropy Table with one row per candidate."""
        from astropy.table import Table

        names = ["id", "x", "y", "cell", "rating", "status", "kernelSum", "background", "residualMean",
                 "residualRms", "spatialResidualMean", "spatialResidualRms", "usedInSpatialFit", "reason"]
        rows = [[getattr(c, n) for n in names] for c in self.candidates]
        if not rows:
            return Table(names=names)
        return Table(rows=rows, names=names)


class SpatialKernel:
    """The PSF-matching kernel: basis kernels with spatially varying coefficients.

    ``K(x, y) = sum_k f_k(x, y) B_k`` with ``f_k = spatial_basis(x, y, order) @ kernelCoeffs[k]``
    (afw ``LinearCombinationKernel`` with Chebyshev/polynomial spatial functions; afw ``math::Kernel``,
    ``SpatialFunction``). Positions are PARENT pixels. Orientation: afw's correlation convention (afw ``convolve``): the
    matched image is ``sum_{u,v} K(u, v) T(X + u, Y + v)`` with ``K`` indexed ``[v + ctr, u + ctr]``.
    """

    def __init__(self, basis, kernelCoeffs, order, model, xyRange, defaultPosition=(0.0, 0.0)):
        self.basis = np.asarray(basis)
        self.kernelCoeffs = np.asarray(kernelCoeffs, dtype=np.float64)
        self.order = int(order)
        self.model = model
        self.xyRange = None if xyRange is None else SpatialRange(*xyRange)
        self.defaultPosition = tuple(float(v) for v in defaultPosition)

    # LSST-like accessors
    def getWidth(self):
        return self.basis.shape[2]

    def getHeight(self):
        return self.basis.shape[1]

    def getDimensions(self):
        return (self.getWidth(), self.getHeight())

    def getCtr(self):
        return (self.getWidth() // 2, self.getHeight() // 2)

    def getNBasisKernels(self):
        return self.basis.shape[0]

    def getNSpatialParameters(self):
        return self.kernelCoeffs.shape[1]

    def getNKernelParameters(self):
        return self.kernelCoeffs.shape[0]

    def isSpatiallyVarying(self):
        return self.kernelCoeffs.shape[1] > 1

    def getSpatialParameters(self):
        """Per basis kernel, its spatial-function parameters (afw order)."""
        return [list(map(float, row)) for row in self.kernelCoeffs]

    def getKernelList(self):
        return [self.basis[i] for i in range(self.basis.shape[0])]

    def getKernelParameters(self, position=None):
        """Basis coefficients at ``position`` (PARENT; default the image centre)."""
        x, y = self._position(position)
        phi = np.asarray(spatial_basis(np.float64(x), np.float64(y), self.order, model=self.model,
                                       xy_range=self.xyRange), np.float64)
        return self.kernelCoeffs @ phi

    def termKernels(self):
        """Kernel image of each spatial term (n_terms, h, w): ``K(x, y) = sum_s phi_s(x, y) termKernels[s]``."""
        return np.einsum("ks,kji->sji", self.kernelCoeffs, self.basis)

    def _position(self, position):
        if position is None:
            return self.defaultPosition
        if hasattr(position, "getX"):
            return float(position.getX()), float(position.getY())
        return float(position[0]), float(position[1])

    def computeKernelImage(self, position=None):
        """Kernel image at PARENT ``position`` ``(x, y)`` (default: the image centre); not normalised.

        Its sum is the local photometric scale (science flux / template flux).
        """
        return np.tensordot(self.getKernelParameters(position), self.basis, axes=1)

    def computeImage(self, doNormalize=False, x=0.0, y=0.0):
        """afw-style ``(image, sum)`` at ``(x, y)`` (default (0, 0) as afw); normalised if asked."""
        img = self.computeKernelImage((x, y))
        s = float(img.sum())
        return (img / s if doNormalize else img), s

    def getKernelSum(self, position=None):
        """Kernel sum at ``position`` (default the image centre; for Alard-Lupton bases it is constant)."""
        return float(self.computeKernelImage(position).sum())

    def getKernelSumUncertainty(self, position=None):
        """1-sigma uncertainty of :meth:`getKernelSum` from the spatial fit's covariance.

        The covariance assumes independent pixels with the fit's weights (``1 / (V_I + V_T)``); stamps
        that overlap or correlated noise make it a lower bound. NaN when unavailable.
        """
        unc = getattr(self, "_uncertainty", None)
        if unc is None:
            return float("nan")
        return unc.kernelSum(*self._position(position))

    def __repr__(self):
        return (f"SpatialKernel({self.getWidth()}x{self.getHeight()}, {self.getNBasisKernels()} bases, "
                f"{self.model} order {self.order})")


class BackgroundModel:
    """Differential background ``b(x, y)`` (afw ``Chebyshev1Function2`` / ``PolynomialFunction2``).

    Call it on PARENT pixel positions: ``backgroundModel(x, y)``; arrays broadcast.
    """

    def __init__(self, coeffs, order, model, xyRange):
        self.coeffs = np.asarray(coeffs, dtype=np.float64)
        self.order = int(order)
        self.model = model
        self.xyRange = None if xyRange is None else SpatialRange(*xyRange)

    def __call__(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        phi = np.asarray(spatial_basis(x, y, self.order, model=self.model, xy_range=self.xyRange), np.float64)
        out = phi @ self.coeffs
        return float(out) if out.ndim == 0 else out

    def getParameters(self):
        return list(map(float, self.coeffs))

    def getUncertainty(self, x, y):
        """1-sigma uncertainty of the background at ``(x, y)`` (see ``SpatialKernel.getKernelSumUncertainty``)."""
        unc = getattr(self, "_uncertainty", None)
        return float("nan") if unc is None else unc.background(float(x), float(y))

    def getNParameters(self):
        return self.coeffs.size

    def getOrder(self):
        return self.order

    def image(self, bbox, dtype=np.float64):
        """Evaluate the background on every pixel of ``bbox`` (array ``[y, x]``).

        Evaluated separably (every term is ``f(x) g(y)``), so memory stays at one output image.
        """
        from ..core.spatial import spatial_exponents

        ys = np.arange(bbox.getMinY(), bbox.getMaxY() + 1, dtype=np.float64)
        xs = np.arange(bbox.getMinX(), bbox.getMaxX() + 1, dtype=np.float64)
        order = self.order
        # 1-D tables: column k of tx is the x-factor of a term whose x power is k (likewise y)
        tx = np.asarray(spatial_basis(xs, np.zeros_like(xs), order, model=self.model, xy_range=self.xyRange))
        ty = np.asarray(spatial_basis(np.zeros_like(ys), ys, order, model=self.model, xy_range=self.xyRange))
        exps = spatial_exponents(order)
        colx = {i: exps.index((i, 0)) for i in range(order + 1)}
        coly = {j: exps.index((0, j)) for j in range(order + 1)}
        # the (i, 0) term at y = 0 is f_i(x) g_0(0); divide out g_0(0) (and f_0(0)) to get pure 1-D tables
        gx0 = ty[0, coly[0]] if ty.shape[0] else 1.0
        fx = {i: tx[:, colx[i]] for i in range(order + 1)}
        gy = {j: ty[:, coly[j]] for j in range(order + 1)}
        norm = tx[0, colx[0]] if tx.shape[0] else 1.0
        out = np.zeros((ys.size, xs.size), dtype=dtype)
        for c, (i, j) in zip(self.coeffs, exps, strict=False):
            if c == 0:
                continue
            out += (c / (gx0 * norm)) * np.outer(gy[j] * 1.0, fx[i]).astype(dtype)
        return out

    def __repr__(self):
        return f"BackgroundModel({self.model} order {self.order}, parameters={self.getParameters()})"


# ------------------------------------------------------------------------------------------
def cell_index(x, y, bbox, sizeX, sizeY):
    """Afw ``positionToIndex``: cell of ``Point2I(round-half-up(x), round-half-up(y))``, row-major."""
    nx = max(1, math.ceil(bbox.getWidth() / sizeX))
    ny = max(1, math.ceil(bbox.getHeight() / sizeY))
    ix = math.floor(x + 0.5) - bbox.getMinX()
    iy = math.floor(y + 0.5) - bbox.getMinY()
    if not (0 <= ix < bbox.getWidth() and 0 <= iy < bbox.getHeight()):
        raise ValueError(f"kernel candidate at ({x:.2f}, {y:.2f}) lies outside the cell-set region {bbox}")
    cx = min(ix // sizeX, nx - 1)
    cy = min(iy // sizeY, ny - 1)
    return cy * nx + cx


def _bucket(n):
    """Return the padded candidate count: next power of two >= 16 (few compiles for many counts)."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _pad(arr, n, value=0):
    if arr.shape[0] == n:
        return arr
    pad = np.full((n - arr.shape[0],) + arr.shape[1:], value, dtype=arr.dtype)
    return np.concatenate([arr, pad], axis=0)


class StampSet:
    """Stamps of all candidates, grouped by stamp shape, padded to a bucketed count.

    Stamps are cut on the host (``sliding_window_view`` + fancy indexing) so that no full-image
    device copy is made; non-finite pixels are zeroed in the stamps (they are in ``bad``).
    """

    def __init__(self, template, science, tvar, svar, bad, boxes, xy0, dtype):
        self.groups = []
        shapes = {}
        for i, b in enumerate(boxes):
            shapes.setdefault((b.getHeight(), b.getWidth()), []).append(i)
        self.n = len(boxes)
        x0, y0 = xy0
        for shape, idx in shapes.items():
            rows = np.array([boxes[i].getMinY() - y0 for i in idx])
            cols = np.array([boxes[i].getMinX() - x0 for i in idx])
            nb = _bucket(len(idx))
            rows, cols = _pad(rows, nb, 0), _pad(cols, nb, 0)
            valid = np.zeros(nb, bool)
            valid[: len(idx)] = True

            def cut(a, fill=None, shape=shape, rows=rows, cols=cols, valid=valid):
                st = np.lib.stride_tricks.sliding_window_view(a, shape)[rows, cols]
                if fill is not None:
                    st = np.where(valid[:, None, None], st, fill)
                return st

            badst = cut(bad)
            cutouts = []
            for a, fill in ((template, None), (science, None), (tvar, 1.0), (svar, 1.0)):
                st = cut(a, fill).astype(dtype, copy=False)
                st = np.where(np.isfinite(st), st, 0).astype(dtype, copy=False)
                cutouts.append(jnp.asarray(st))
            self.groups.append(dict(index=np.array(idx), shape=shape, stamps=cutouts, bad=jnp.asarray(badst),
                                    valid=valid))


def candidate_ratings(stamp_set, core_radius):
    """LSST's rating: mean of ``I / sqrt(var)`` of the science stamp over the central core box."""
    ratings = np.full(stamp_set.n, np.nan)
    for g in stamp_set.groups:
        h, w = g["shape"]
        r = core_radius
        sl = (slice(None), slice(h // 2 - r, h // 2 + r + 1), slice(w // 2 - r, w // 2 + r + 1))
        s = np.asarray(g["stamps"][1][sl], np.float64)
        v = np.asarray(g["stamps"][3][sl], np.float64)
        bad = np.asarray(g["bad"][sl])
        with np.errstate(divide="ignore", invalid="ignore"):
            z = s / np.sqrt(v)
        ok = ~bad & np.isfinite(z)
        n = ok.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            val = np.where(n > 0, np.where(ok, z, 0).sum(axis=(1, 2)) / n, np.nan)
        ratings[g["index"]] = val[: len(g["index"])]
    return ratings


class SingleFits:
    """Per-candidate single-stamp solutions and residual statistics (host arrays, candidate order)."""

    def __init__(self, n, nb):
        self.coeffs = np.zeros((n, nb))
        self.background = np.zeros(n)
        self.ksum = np.full(n, np.nan)
        self.kernels = None
        self.matrices = None
        self.vectors = None
        self.status = np.zeros(n, np.int32)
        self.mean = np.full(n, np.nan)
        self.rms = np.full(n, np.nan)


def fit_all(stamp_set, basis, kConfig, regularization=None, reg_lambda=0.0, reg_relative=False):
    """Single-stamp fits and residual statistics for every candidate (one batched call per stamp shape)."""
    nb = basis.n_basis
    out = SingleFits(stamp_set.n, nb)
    w = basis.width
    n_sys = nb + (1 if kConfig.fitForBackground else 0)
    out.kernels = np.zeros((stamp_set.n, w, w))
    out.matrices = np.zeros((stamp_set.n, n_sys, n_sys))
    out.vectors = np.zeros((stamp_set.n, n_sys))
    out.factors = np.zeros((stamp_set.n, n_sys, n_sys))
    out.rhs = np.zeros((stamp_set.n, n_sys))
    max_cond = float(kConfig.maxConditionNumber) if kConfig.checkConditionNumber else None
    core = int(kConfig.candidateCoreRadius) if kConfig.useCoreStats else None
    for g in stamp_set.groups:
        t, s, vt, vs = g["stamps"]
        if min(g["shape"]) < w + 2:
            raise ValueError(
                f"kernel-candidate stamps of shape {g['shape']} are too small for a {w}x{w} kernel; stamps must "
                f"be at least {w + 2} pixels on a side (grow the footprints)"
            )
        fits = kf.fit_stamps(
            t, s, vt, vs, basis, None if regularization is None else jnp.asarray(regularization, t.dtype),
            reg_lambda, fit_background=bool(kConfig.fitForBackground),
            constant_variance=bool(kConfig.constantVarianceWeighting), max_condition=max_cond,
            reg_relative=reg_relative, batch_size=64,
        )
        stats = kf.stamp_residual_stats(t, s, vt, vs, g["bad"], fits.kernel, fits.background, core_radius=core)
        idx = g["index"]
        k = len(idx)
        fits, stats = jax.device_get((fits, stats))
        out.coeffs[idx] = fits.coefficients[:k]
        out.background[idx] = fits.background[:k]
        out.ksum[idx] = fits.kernel_sum[:k]
        out.kernels[idx] = fits.kernel[:k]
        out.matrices[idx] = fits.normal_matrix[:k]
        out.vectors[idx] = fits.normal_vector[:k]
        out.factors[idx] = fits.r_factor[:k]
        out.rhs[idx] = fits.r_rhs[:k]
        out.status[idx] = fits.status[:k]
        out.mean[idx] = stats.mean[:k]
        out.rms[idx] = stats.rms[:k]
    return out


def _status_text(code):
    return "; ".join(msg for bit, msg in kf.STATUS_MESSAGES.items() if code & bit) or "ok"


def spatial_stats(stamp_set, sk_basis, kcoeffs, bcoeffs, xs, ys, kConfig, order, bg_order, model, xy_range):
    """Residual statistics of every candidate under the spatial kernel and background."""
    n = stamp_set.n
    mean = np.full(n, np.nan)
    rms = np.full(n, np.nan)
    core = int(kConfig.candidateCoreRadius) if kConfig.useCoreStats else None
    for g in stamp_set.groups:
        idx = g["index"]
        nbk = len(g["valid"])
        px = _pad(xs[idx], nbk, xs[idx][0])
        py = _pad(ys[idx], nbk, ys[idx][0])
        t, s, vt, vs = g["stamps"]
        dtype = t.dtype
        kims = kf.kernel_images_at(jnp.asarray(sk_basis, dtype), jnp.asarray(kcoeffs, dtype), jnp.asarray(px, dtype),
                                   jnp.asarray(py, dtype), order=order, model=model, xy_range=xy_range)
        phi = spatial_basis(jnp.asarray(px, dtype), jnp.asarray(py, dtype), bg_order, model=model, xy_range=xy_range)
        bg = phi @ jnp.asarray(bcoeffs, dtype)
        st = jax.device_get(kf.stamp_residual_stats(t, s, vt, vs, g["bad"], kims, bg, core_radius=core))
        mean[idx] = st.mean[: len(idx)]
        rms[idx] = st.rms[: len(idx)]
    return mean, rms


def select_per_cell(cells, ratings, bad, n_per_cell):
    """Return the indices of the first ``n_per_cell`` non-BAD candidates of each cell, by rating."""
    order = np.lexsort((-np.nan_to_num(ratings, nan=-np.inf), cells))
    chosen = np.zeros(len(cells), bool)
    counts = {}
    for i in order:
        if bad[i]:
            continue
        c = cells[i]
        if n_per_cell < 0 or counts.get(c, 0) < n_per_cell:
            counts[c] = counts.get(c, 0) + 1
            chosen[i] = True
    return chosen


# ------------------------------------------------------------------------------------------
class SolveResult:
    """What :func:`solve_psf_matching` returns to the task."""

    def __init__(self, kernel, background, cellSet, solution, nIterations):
        self.kernel = kernel
        self.background = background
        self.cellSet = cellSet
        self.solution = solution
        self.nIterations = nIterations


def _regularization(kConfig, width):
    """``(L, lambda, relative)`` (``H = L^T L``) for delta-function bases with regularisation, else ``(None, 0, False)``."""
    if kConfig.kernelBasisSet != "delta-function" or not getattr(kConfig, "useRegularization", False):
        return None, 0.0, False
    from ._basis_config import regularization_matrix_from_config

    h = kf.regularization_root(regularization_matrix_from_config(kConfig, width, bool(kConfig.fitForBackground)))
    if kConfig.lambdaType == "absolute":
        return h, float(kConfig.lambdaValue), False
    if kConfig.lambdaType == "relative":
        return h, float(kConfig.lambdaScaling), True
    raise NotImplementedError(
        f"lambdaType={kConfig.lambdaType!r} is not supported: LSST's risk-minimising lambda scans read config "
        "fields that do not exist (an ip_diffim ``PsfMatchConfig`` quirk); use lambdaType='absolute' or 'relative'"
    )


@dataclass
class _Candidates:
    """The candidates of one solve: stamps, positions, ratings, cells and the clipping state.

    ``isBad`` and ``initialized`` (visited by the single-kernel pass) are updated in place by the
    clipping stages, together with the statuses of the records in ``cellSet``.
    """

    stamps: StampSet
    xs: np.ndarray
    ys: np.ndarray
    ratings: np.ndarray
    cells: np.ndarray
    cellSet: KernelCellSet
    isBad: np.ndarray
    initialized: np.ndarray


class _SpatialModel(NamedTuple):
    """The spatial variation of the kernel and background (from the config and the image bbox)."""

    order: int
    bg_order: int
    model: str
    xy_range: SpatialRange
    centre: tuple
    use_pca: bool
    constant_first: bool
    n_terms: int


class _SpatialSolution(NamedTuple):
    """The outcome of the clipping loop: the spatial solution, its basis and the iteration count."""

    solution: kf.SpatialSolution
    basis: np.ndarray
    separable: object
    n_iterations: int


def _build_candidates(templateMI, scienceMI, candidates, kConfig, dtype):
    """Cut, rate and place every candidate stamp; candidates with a non-finite rating start BAD.

    Parameters
    ----------
    templateMI, scienceMI : MaskedImage
        Image to convolve and image matched to (same bbox).
    candidates : list of (source, Box2I)
    kConfig : PsfMatchConfig
    dtype : floating dtype of the stamps

    Returns
    -------
    _Candidates
    """
    from ._exposure import mask_bits

    bbox = templateMI.getBBox()
    xy0 = templateMI.getXY0()
    tmask = np.asarray(templateMI.mask.array)
    smask = np.asarray(scienceMI.mask.array)
    badBits = mask_bits(templateMI.mask, kConfig.badMaskPlanes) | mask_bits(scienceMI.mask, kConfig.badMaskPlanes)
    planes = [np.asarray(a) for a in (templateMI.image.array, scienceMI.image.array,
                                      templateMI.variance.array, scienceMI.variance.array)]
    bad = ((tmask | smask) & badBits) != 0
    for a in planes:
        bad |= ~np.isfinite(a)
    boxes = [b for _, b in candidates]
    xs = np.array([_source_xy(s)[0] for s, _ in candidates])
    ys = np.array([_source_xy(s)[1] for s, _ in candidates])
    stamps = StampSet(*planes, bad, boxes, xy0, np.dtype(dtype))
    del bad
    ratings = candidate_ratings(stamps, int(kConfig.candidateCoreRadius))
    cells = np.array([cell_index(x, y, bbox, kConfig.sizeCellX, kConfig.sizeCellY)
                      for x, y in zip(xs, ys, strict=True)])
    cellSet = KernelCellSet(bbox, int(kConfig.sizeCellX), int(kConfig.sizeCellY))
    for i, ((src, box), r, c) in enumerate(zip(candidates, ratings, cells, strict=False)):
        cid = src.getId() if hasattr(src, "getId") else i + 1
        cellSet.candidates.append(KernelCandidate(int(cid), xs[i], ys[i], box, int(c), float(r)))
    isBad = ~np.isfinite(ratings)
    for i in np.nonzero(isBad)[0]:
        cellSet.candidates[i].status = BAD
        cellSet.candidates[i].reason = "non-finite rating (masked or zero-variance core)"
    return _Candidates(stamps, xs, ys, ratings, cells, cellSet, isBad, np.zeros(len(candidates), bool))


def _fit_single_kernels(cands, basisImages, separable, kConfig, dtype):
    """Fit every stamp with the full basis (regularised if configured) and record the fits on the candidates.

    Parameters
    ----------
    cands : _Candidates
    basisImages : array (n_basis, w, w); separable : SeparableBasis or None
    kConfig : PsfMatchConfig
    dtype : floating dtype of the computation

    Returns
    -------
    SingleFits
    """
    width = basisImages.shape[-1]
    basis = kf.make_fit_basis(basisImages, separable, dtype=dtype)
    reg, lam, relative = _regularization(kConfig, width)
    fits = fit_all(cands.stamps, basis, kConfig, reg, lam, relative)
    for c, k, b, m, r in zip(cands.cellSet.candidates, fits.ksum, fits.background, fits.mean, fits.rms, strict=False):
        c.kernelSum, c.background, c.residualMean, c.residualRms = float(k), float(b), float(m), float(r)
    return fits


def _spatial_model(kConfig, bbox):
    """Return the `_SpatialModel` of the config over ``bbox`` (the range spans the pixel edges)."""
    order = int(kConfig.spatialKernelOrder)
    usePca = bool(kConfig.usePcaForSpatialKernel)
    return _SpatialModel(
        order=order,
        bg_order=int(kConfig.spatialBgOrder) if kConfig.fitForBackground else 0,
        model=kConfig.spatialModelType,
        xy_range=SpatialRange(bbox.getMinX() - 0.5, bbox.getMinY() - 0.5, bbox.getMaxX() + 0.5, bbox.getMaxY() + 0.5),
        centre=bbox.getCenter(),
        use_pca=usePca,
        constant_first=kConfig.kernelBasisSet == "alard-lupton" or usePca,
        n_terms=n_spatial_terms(order),
    )


def _reject(cands, i, why):
    """Mark candidate ``i`` BAD with the reason ``why``."""
    cands.isBad[i] = True
    cands.cellSet.candidates[i].status = BAD
    cands.cellSet.candidates[i].reason = why


def _judge(cands, kConfig, i, mean, rms, status, clipping, what):
    """Single-kernel / spatial visitor verdict for candidate ``i``: mark it GOOD or BAD.

    A singular stamp system is not a failure (LSST solves it with the pseudo-inverse and judges
    the residuals); non-positive variances, non-finite values and (with checkConditionNumber)
    ill-conditioning are.

    Returns
    -------
    bool
        True if the candidate was rejected.
    """
    meanMax, stdMax = float(kConfig.candidateResidualMeanMax), float(kConfig.candidateResidualStdMax)
    status = status & ~kf.STATUS_SINGULAR
    if status:
        _reject(cands, i, f"{what}: {_status_text(status)}")
        return True
    if not (np.isfinite(mean) and np.isfinite(rms)):
        _reject(cands, i, f"{what}: non-finite residual statistics")
        return True
    if clipping and abs(mean) > meanMax:
        _reject(cands, i, f"{what}: |residual mean| {abs(mean):.3g} > candidateResidualMeanMax {meanMax}")
        return True
    if clipping and rms > stdMax:
        _reject(cands, i, f"{what}: residual rms {rms:.3g} > candidateResidualStdMax {stdMax}")
        return True
    cands.cellSet.candidates[i].status = GOOD
    return False


def _judge_fits(cands, indices, fits, kConfig, what):
    """Judge the single-stamp ``fits`` of the candidates ``indices``; return the number rejected."""
    nrej = 0
    for i in indices:
        nrej += _judge(cands, kConfig, i, fits.mean[i], fits.rms[i], int(fits.status[i]),
                       bool(kConfig.singleKernelClipping), what)
    return nrej


def _single_kernel_pass(cands, fits, kConfig):
    """Visit the first ``nStarPerCell`` non-BAD candidates of every cell until a pass rejects none.

    Each candidate is judged on its single-kernel fit the first time it is visited.

    Returns
    -------
    ndarray of bool
        The candidates chosen for the kernel-sum and spatial stages.
    """
    nPerCell = int(kConfig.nStarPerCell)
    while True:
        chosen = select_per_cell(cands.cells, cands.ratings, cands.isBad, nPerCell)
        new = chosen & ~cands.initialized
        cands.initialized[new] = True
        if _judge_fits(cands, np.nonzero(new)[0], fits, kConfig, "single kernel") == 0:
            return select_per_cell(cands.cells, cands.ratings, cands.isBad, nPerCell)


def _clip_kernel_sums(cands, fits, chosen, kConfig, log):
    """Kernel-sum clipping (ip_diffim ``KernelSumVisitor``) over the chosen candidates.

    Returns
    -------
    int
        The number of candidates rejected (always 0 without ``kernelSumClipping``).
    """
    sums = fits.ksum[chosen]
    if sums.size == 0:
        raise NoKernelCandidatesError(
            "No kernel candidates survived the single-kernel fits: every stamp was masked, singular or failed "
            "the residual limits (candidateResidualMeanMax/StdMax). Check badMaskPlanes and the inputs."
        )
    if sums.size == 1:
        kmean, kstd = float(sums[0]), 0.0
    else:
        st = clipped_stats(jnp.asarray(sums, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
        kmean, kstd = float(st.mean), float(np.sqrt(st.variance))
    if not np.isfinite(kmean) or not np.isfinite(kstd):
        raise PsfMatchingError("The kernel-sum distribution of the candidates is not finite.")
    nrej = 0
    if kConfig.kernelSumClipping:
        dmax = float(kConfig.maxKsumSigma) * kstd
        for i in np.nonzero(chosen)[0]:
            if abs(fits.ksum[i] - kmean) > dmax:
                _reject(cands, i, f"kernel sum {fits.ksum[i]:.4g} more than maxKsumSigma from the mean {kmean:.4g}")
                nrej += 1
    log.debug("Kernel sums: mean %.5g, std %.3g, %d rejected", kmean, kstd, nrej)
    return nrej


def _pca_refit(cands, fits, chosen, kConfig, dtype):
    """PCA basis of the chosen candidates' normalised kernels, and every stamp refitted with it.

    Returns
    -------
    basis : ndarray (n_components, w, w)
    fits : SingleFits
    """
    from ..core.kernel_basis import pca_kernel_basis

    kimgs = fits.kernels[chosen] / fits.ksum[chosen][:, None, None]
    basis = np.asarray(pca_kernel_basis(kimgs, n_components=int(kConfig.numPrincipalComponents),
                                        subtract_mean=bool(kConfig.subtractMeanForPca)))
    return basis, fit_all(cands.stamps, kf.make_fit_basis(basis, dtype=dtype), kConfig)


def _fit_spatial(cands, chosen, fits, spBasis, spatial, kConfig, log, dtype):
    """Solve the spatial kernel and background from the chosen candidates' stamp systems.

    Raises
    ------
    NoKernelCandidatesError, InsufficientKernelSourcesError
        No candidates, or fewer than the spatial terms per basis.
    PsfMatchingError
        A non-finite solution or a non-positive kernel sum at the image centre.

    Returns
    -------
    kf.SpatialSolution
        On the host.
    """
    nUsed = int(chosen.sum())
    if nUsed == 0:
        raise NoKernelCandidatesError("No kernel candidates for spatial fit: every candidate was rejected.")
    if nUsed < spatial.n_terms:
        raise InsufficientKernelSourcesError(
            f"Cannot compute PSF matching kernel: too few sources selected ({nUsed} usable candidates for a "
            f"spatial kernel of order {spatial.order}, which has {spatial.n_terms} terms per basis). Lower "
            "spatialKernelOrder, lower the detection threshold, or supply more candidates.",
            metadata={"nSources": nUsed, "nRequired": spatial.n_terms},
        )
    for c, u in zip(cands.cellSet.candidates, chosen, strict=False):
        c.usedInSpatialFit = bool(u)
    use = np.nonzero(chosen)[0]  # only the visited candidates enter (padded to a bucket)
    nbk = _bucket(use.size)
    sol = kf.solve_spatial(
        jnp.asarray(_pad(fits.factors[use], nbk), dtype), jnp.asarray(_pad(fits.rhs[use], nbk), dtype),
        jnp.asarray(_pad(cands.xs[use], nbk), dtype), jnp.asarray(_pad(cands.ys[use], nbk), dtype),
        jnp.asarray(_pad(np.ones(use.size, bool), nbk, False)),
        n_basis=spBasis.shape[0], kernel_order=spatial.order, bg_order=spatial.bg_order,
        fit_background=bool(kConfig.fitForBackground), constant_first_term=spatial.constant_first,
        model=spatial.model, xy_range=spatial.xy_range,
    )
    sol = jax.device_get(sol)
    if sol.status & kf.STATUS_SINGULAR:
        log.warning("The spatial kernel system is singular (condition number %.3g); the minimum-norm "
                    "pseudo-inverse solution is used", float(sol.condition))
    kcoeffs = np.asarray(sol.kernel_coeffs, np.float64)
    phiCentre = spatial_basis(np.float64(spatial.centre[0]), np.float64(spatial.centre[1]), spatial.order,
                              model=spatial.model, xy_range=spatial.xy_range)
    centreSum = float(np.asarray(spBasis, np.float64).reshape(spBasis.shape[0], -1).sum(axis=1)
                      @ kcoeffs @ np.asarray(phiCentre, np.float64))
    if sol.status & kf.STATUS_NONFINITE or not np.isfinite(centreSum) or centreSum <= 0:
        raise PsfMatchingError(
            f"The spatial kernel solution is unusable ({_status_text(int(sol.status))}; kernel sum {centreSum:.3g} "
            f"at the image centre from {nUsed} candidates, condition number {float(sol.condition):.3g}). Check that "
            "the candidate stamps contain sources in both images, reduce spatialKernelOrder/spatialBgOrder or "
            "supply more candidates spread over the image.",
            metadata={"spatialConditionNum": float(sol.condition), "nCandidates": nUsed},
        )
    if float(sol.condition) > float(kConfig.maxSpatialConditionNumber):
        log.warning("Spatial kernel condition number %.3g exceeds maxSpatialConditionNumber %.3g",
                    float(sol.condition), float(kConfig.maxSpatialConditionNumber))
    return sol


def _assess_spatial(cands, chosen, sol, spBasis, spatial, kConfig, log, iteration):
    """Judge the chosen candidates' residuals under the spatial model (LSST's spatial assessment).

    Returns
    -------
    bool
        True if no candidate was rejected (the loop has converged).
    """
    mean, rms = spatial_stats(cands.stamps, spBasis, sol.kernel_coeffs, sol.background_coeffs, cands.xs, cands.ys,
                              kConfig, spatial.order, spatial.bg_order, spatial.model, spatial.xy_range)
    nGood = nRej = 0
    for i in np.nonzero(chosen)[0]:
        c = cands.cellSet.candidates[i]
        c.spatialResidualMean, c.spatialResidualRms = float(mean[i]), float(rms[i])
        if _judge(cands, kConfig, i, mean[i], rms[i], 0, bool(kConfig.spatialKernelClipping), "spatial kernel"):
            nRej += 1
        else:
            nGood += 1
    log.debug("Spatial iteration %d: %d good, %d rejected", iteration, nGood, nRej)
    if nGood == 0 and nRej == 0:
        raise NoKernelCandidatesError("No kernel candidates for spatial fit")
    return nRej == 0


def _clip_and_solve(cands, orig, basisImages, separable, spatial, kConfig, log, dtype):
    """LSST's clipping loop: single-kernel pass, kernel-sum clipping, (PCA), spatial fit and assessment.

    A pass that rejects candidates in the kernel-sum or PCA stage starts over without counting an
    iteration; after ``maxSpatialIterations`` unconverged spatial assessments the survivors are
    fitted once more without assessment.

    Returns
    -------
    _SpatialSolution
    """
    fits, spBasis, spSeparable = orig, np.asarray(basisImages), separable
    iteration = 0
    maxIter = int(kConfig.maxSpatialIterations)
    while iteration < maxIter:
        chosen = _single_kernel_pass(cands, orig, kConfig)
        if _clip_kernel_sums(cands, orig, chosen, kConfig, log):
            continue
        if spatial.use_pca:
            spBasis, fits = _pca_refit(cands, orig, chosen, kConfig, dtype)
            spSeparable = None
            if _judge_fits(cands, np.nonzero(chosen)[0], fits, kConfig, "PCA kernel"):
                continue
        sol = _fit_spatial(cands, chosen, fits, spBasis, spatial, kConfig, log, dtype)
        if _assess_spatial(cands, chosen, sol, spBasis, spatial, kConfig, log, iteration):
            return _SpatialSolution(sol, spBasis, spSeparable, iteration)
        iteration += 1
    chosen = _single_kernel_pass(cands, orig, kConfig)
    if spatial.use_pca:
        spBasis, fits = _pca_refit(cands, orig, chosen, kConfig, dtype)
    sol = _fit_spatial(cands, chosen, fits, spBasis, spatial, kConfig, log, dtype)
    return _SpatialSolution(sol, spBasis, spSeparable, iteration)


def _assemble_result(cands, solved, spatial, kConfig):
    """Wrap the spatial solution as the task's `SpatialKernel`, `BackgroundModel` and `SolveResult`."""
    sol, spBasis = solved.solution, solved.basis
    kernel = SpatialKernel(spBasis, sol.kernel_coeffs, spatial.order, spatial.model, spatial.xy_range,
                           defaultPosition=spatial.centre)
    kernel.separable = solved.separable
    background = BackgroundModel(sol.background_coeffs, spatial.bg_order, spatial.model, spatial.xy_range)
    cov = np.asarray(sol.covariance, np.float64)
    kernel._uncertainty = _Uncertainty(cov, spBasis.reshape(spBasis.shape[0], -1).sum(axis=1), spatial.order,
                                       spatial.bg_order, bool(kConfig.fitForBackground), spatial.constant_first,
                                       spatial.model, spatial.xy_range)
    background._uncertainty = kernel._uncertainty
    return SolveResult(kernel, background, cands.cellSet, sol, solved.n_iterations)


def solve_psf_matching(templateMI, scienceMI, candidates, basisImages, separable, kConfig, log, dtype):
    """LSST's ``PsfMatchTask._solve`` loop over precomputed single-stamp fits.

    Parameters
    ----------
    templateMI, scienceMI : MaskedImage
        Image to convolve and image matched to (same bbox).
    candidates : list of (source, Box2I)
    basisImages : array (n_basis, w, w); separable : SeparableBasis or None
    kConfig : PsfMatchConfig
    log : logger
    dtype : floating dtype of the computation

    Returns
    -------
    SolveResult
    """
    cands = _build_candidates(templateMI, scienceMI, candidates, kConfig, dtype)
    orig = _fit_single_kernels(cands, basisImages, separable, kConfig, dtype)
    spatial = _spatial_model(kConfig, cands.cellSet.getBBox())
    solved = _clip_and_solve(cands, orig, basisImages, separable, spatial, kConfig, log, dtype)
    return _assemble_result(cands, solved, spatial, kConfig)


class _Uncertainty:
    """Propagates the spatial-solution covariance to the kernel sum and the background at a position."""

    def __init__(self, cov, basisSums, order, bgOrder, fitBackground, constantFirst, model, xyRange):
        self.cov, self.sums = cov, np.asarray(basisSums, np.float64)
        self.order, self.bgOrder, self.fitBackground = order, bgOrder, fitBackground
        self.constantFirst, self.model, self.xyRange = constantFirst, model, xyRange

    def _phi(self, x, y, order):
        return np.asarray(spatial_basis(np.float64(x), np.float64(y), order, model=self.model, xy_range=self.xyRange),
                          np.float64)

    def _gradients(self, x, y):
        nb = self.sums.size
        p = self._phi(x, y, self.order)
        gk = []
        for m in range(nb):
            if m == 0 and self.constantFirst:
                gk.append([self.sums[0]])
            else:
                gk.append(self.sums[m] * p)
        gk = np.concatenate(gk)
        nbt = n_spatial_terms(self.bgOrder) if self.fitBackground else 0
        n = gk.size + nbt
        gsum = np.zeros(n)
        gsum[: gk.size] = gk
        gbg = np.zeros(n)
        if self.fitBackground:
            gbg[gk.size:] = self._phi(x, y, self.bgOrder)
        return gsum, gbg

    def kernelSum(self, x, y):
        g, _ = self._gradients(x, y)
        return float(np.sqrt(max(g @ self.cov @ g, 0.0)))

    def background(self, x, y):
        if not self.fitBackground:
            return 0.0
        _, g = self._gradients(x, y)
        return float(np.sqrt(max(g @ self.cov @ g, 0.0)))
