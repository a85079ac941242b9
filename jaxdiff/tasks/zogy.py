"""ZOGY proper image subtraction tasks: ``ZogyTask`` and ``ZogyImagePsfMatchTask`` (seed API).

The numerical work is done by the pure core (:func:`jaxdiff.core.zogy_grid.zogy_cells`, which runs
:func:`jaxdiff.core.zogy.zogy` per cell, with :mod:`jaxdiff.core.zogy_prepare` before and after);
these classes only convert Exposures to arrays, apply the configuration, call the jitted core, and
wrap the arrays back into Exposures.

Conventions (Zackay, Ofek & Gal-Yam 2016, "ZOGY"): the difference is ``science - template``
(paper: N - R), in the photometric units of the (calibrated) science image; ``S`` is the proper
detection statistic (eq. 12), ``S_corr = S / sqrt(V_S + V_ast)`` its significance in sigma
(eqs. 25-33).

Deviations from LSST's ``ip_diffim`` (2021-2023 ``zogy.py``), each deliberate:

* ``run`` returns the seed's ``subtractedExposure`` (the D exposure) and ``warpedExposure``, plus
  ``scoreExposure`` (S and its variance), ``scoreCorrExposure`` (S_corr, variance 1) and LSST's own
  names ``diffExp``, ``scoreExp``, ``ftDiff`` as aliases.  LSST's code returned only
  ``diffExp``/``scoreExp``/``ftDiff``/``warpedExposure`` although its docstring (the seed) promised
  ``subtractedExposure``.
* ``scienceFluxScaling`` scales the science image and ``templateFluxScaling`` the template (LSST
  swapped them, a quirk that only matters with ``scaleByCalibration=False``).
* Images are padded by reflection, not with random noise (deterministic, no RNG; same statistics).
* ``run`` is timed (``runStartUtc`` ... ``runEnd...`` metadata) and writes diagnostics
  (noise levels, F_D, border size, cell count, the two calibration factors below); LSST's ZOGY run
  wrote no metadata.
* Pixels that are non-finite in either input are flagged ``NO_DATA`` in the output masks (LSST
  kept them unflagged), and the band of half a PSF box along the image edges is flagged ``EDGE``:
  sources there are truncated by the edge, differently in the two images, so their residuals are
  not noise (detection should skip EDGE pixels; the values are kept).
* ``subtractExposures`` / ``subtractMaskedImages`` are inherited from :class:`ImagePsfMatchTask`
  and do the Alard-Lupton subtraction the seed documents for them (LSST's ZOGY task raised
  NotImplementedError).
* Two optional noise calibrations, off by default for LSST parity.  ``doScaleVariance`` rescales each
  input variance plane to the measured pixel noise (the squared IQR-based standard deviation of
  image / sqrt(variance) over sky pixels, the pixel-based estimate of LSST's ScaleVarianceTask) and
  then the difference variance the same way (as LSST's later ``AlardLuptonSubtractTask`` does; the
  propagated variance assumes white input noise, which resampled images do not have).
  ``doNormalizeScore`` divides S_corr by its robust standard deviation and multiplies the variance
  of S by its square, so that S / sqrt(var S) = S_corr still holds.  Every output variance plane
  thus describes its image's noise after the calibrations applied.
* A statistic that cannot be computed (too few usable pixels in an image or variance plane, all
  masked, a zero variance plane) raises :class:`~jaxdiff.tasks.errors.ImageStatisticsError`, naming
  the image and the plane, instead of reaching the outputs as NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..core.stats import clipped_stats
from ..core.zogy_prepare import finish_difference_planes, finish_score_planes, prepare_zogy_input
from ..image.calib import PhotoCalib
from ..image.image import Exposure, Image, Mask, MaskedImage
from ..image.psf import GridPsf, ImagePsf
from ._base import Struct, Task, timeMethod
from ._exposure import check_exposure, kernel_array, mask_bits, psf_centroid
from .config import ZogyConfig, ZogyImagePsfMatchConfig
from .errors import ImageStatisticsError
from .image_psf_match import ImagePsfMatchTask

__all__ = ["ZogyTask", "ZogyImagePsfMatchTask"]

#: Mask planes whose pixels are filled before the transform (their values must not spread) and
#: whose S_corr is set to 0 with variance 1 afterwards.
_FILL_PLANES = ("BAD", "SAT", "CR", "NO_DATA")


def _grid_boxes(size, inner):
    """Return the number of cells and the inner cell size along one axis (LSST ``generateGrid`` rule)."""
    n = max(size // inner, 1)
    return n, -(-size // n)  # ceil so that n cells of equal size cover the axis


class ZogyTask(Task):
    """Compute the ZOGY difference and score images of two registered exposures.

    ``run(exposure1, exposure2)`` computes ``exposure1 - exposure2``; ZogyImagePsfMatchTask calls it
    as ``(science, template)``.  See the module docstring for conventions and deviations.
    """

    ConfigClass = ZogyConfig
    _DefaultName = "imageDifferenceZogy"

    # ------------------------------------------------------------------------------------------
    def _calibration(self, exposure, fluxScaling):
        """(pixel scale c, flux scaling F) after the photometric scaling rules of LSST."""
        if self.config.scaleByCalibration:
            calib = exposure.getPhotoCalib()
            if calib is None:
                raise ValueError(
                    "Photometric calibrations are not available for both exposures. "
                    "Attach a PhotoCalib to each, or set config.scaleByCalibration=False and give the "
                    "flux scalings."
                )
            return float(calib.getCalibrationMean()), 1.0
        return 1.0, float(fluxScaling)

    def _prepare(self, exposure, fluxScaling, what):
        mask = exposure.getMask()
        mi = exposure.getMaskedImage()
        scale, flux = self._calibration(exposure, fluxScaling)
        prep = prepare_zogy_input(
            mi.image.array, mi.variance.array, mask.array, scale,
            and_mask=mask_bits(mask, self.config.ignoreMaskPlanes), fill_bits=mask_bits(mask, _FILL_PLANES),
            correct_background=bool(self.config.correctBackground),
            scale_variance=bool(self.config.doScaleVariance),
        )  # fmt: skip
        return Struct(image=prep.image, variance=prep.variance, mask=prep.mask, bad=prep.bad, good=prep.good,
                      nonfinite=prep.nonfinite, flux=flux, varianceScale=prep.variance_scale,
                      noise=prep.noise_variance, stats=prep.stats, what=what)

    def _checkInputStatistics(self, *prepared):
        """Raise `ImageStatisticsError` if a statistic of `prepare_zogy_input` is not usable.

        One device-to-host transfer of the scalars of all inputs.  A plane without two usable
        pixels is named first (all masked: the image plane; no finite image pixel: the image
        plane; no positive finite variance: the variance plane); then the statistics are
        checked: the background (``correctBackground``), the clipped mean of the image (the
        fill value of bad pixels), the clipped mean of the variance (the noise level, > 0) and
        the variance rescaling factor (``doScaleVariance``, > 0).
        """
        checks = [{**stats._asdict(), "variance_scale": scale}
                  for stats, scale in jax.device_get([(p.stats, p.varianceScale) for p in prepared])]
        masked = ", ".join(dict.fromkeys([*self.config.ignoreMaskPlanes, *_FILL_PLANES]))
        for p, c in zip(prepared, checks, strict=True):
            image = p.what
            counts = (
                f"{int(c['n_unmasked'])} of {p.image.size} pixels are outside the masked planes ({masked}); "
                f"of those {int(c['n_finite_image'])} have a finite image value, "
                f"{int(c['n_usable_variance'])} a positive finite variance, {int(c['n_good'])} both."
            )
            fix = f"Fix the {image} exposure's planes or its mask, or mask fewer planes (ignoreMaskPlanes)."
            items = []
            if self.config.correctBackground:
                items.append(("image", "clipped mean (background, correctBackground)", "background",
                              "background_used", False))
            items.append(("image", "clipped mean (fill value of bad pixels)", "image_mean", "image_used",
                          False))
            items.append(("variance", "clipped mean (noise level)", "variance_mean", "variance_used", True))
            if self.config.doScaleVariance:
                items.append(("variance", "rescaling factor (doScaleVariance)", "variance_scale",
                              "variance_scale_used", True))
            # a plane that is unusable as a whole is named before the statistic that fails first
            if int(c["n_unmasked"]) < 2 or int(c["n_finite_image"]) < 2:
                items.insert(0, ("image", "clipped statistics", None, "n_finite_image", False))
            elif int(c["n_usable_variance"]) < 2:
                items.insert(0, ("variance", "clipped mean (noise level)", None, "n_usable_variance", True))
            for plane, statistic, key, nkey, positive in items:
                value = float("nan") if key is None else float(np.asarray(c[key]))
                if np.isfinite(value) and (value > 0 or not positive):
                    continue
                raise ImageStatisticsError(image=image, plane=plane, statistic=statistic,
                                           value=None if key is None else value, nUsable=int(c[nkey]),
                                           hint=f"{counts} {fix}")

    def _fitFluxRatioShift(self, p1, p2, psf1, psf2):
        """Fit beta = F_n/F_r and/or the science-template shift; update ``p1``/``p2`` in place."""
        from ..core.zogy_fit import fit_flux_ratio_shift, fourier_shift

        cfg = self.config
        noise1 = clipped_stats(p1.variance, p1.good).mean
        noise2 = clipped_stats(p2.variance, p2.good).mean
        fit = fit_flux_ratio_shift(p1.image, p2.image, jnp.asarray(psf1, p1.image.dtype),
                                   jnp.asarray(psf2, p1.image.dtype), noise1, noise2, p1.good & p2.good,
                                   fit_shift=bool(cfg.doFitShift), snr_min=float(cfg.fitSnrMin))
        fit, noise = jax.device_get((fit, (noise1, noise2)))
        for p, value in zip((p1, p2), noise, strict=True):
            if not (np.isfinite(value) and value > 0):
                raise ImageStatisticsError(image=p.what, plane="variance",
                                           statistic="clipped mean (noise level of the flux-ratio/shift fit)",
                                           value=float(value))
        if int(fit.n_used) == 0 or not np.isfinite(float(fit.flux_ratio)) or float(fit.flux_ratio) <= 0:
            msg = (
                f"flux-ratio/shift fit failed: {int(fit.n_used)} pixels above fitSnrMin={cfg.fitSnrMin} "
                f"(beta = {float(fit.flux_ratio)}); lower config.fitSnrMin, or give the flux scalings "
                "and switch doFitFluxRatio/doFitShift off"
            )
            raise ValueError(msg)
        out = {"fitNumPixels": int(fit.n_used)}
        if cfg.doFitFluxRatio:
            p1.flux, p2.flux = float(fit.flux_ratio), 1.0
            out.update(fittedFluxRatio=float(fit.flux_ratio), fittedFluxRatioErr=float(fit.flux_ratio_err))
        if cfg.doFitShift:
            shift = jnp.asarray(fit.shift, p2.image.dtype)
            p2.image = fourier_shift(p2.image, shift)
            p2.variance = jnp.maximum(fourier_shift(p2.variance, shift), 0)
            out.update(fittedShiftX=float(fit.shift[0]), fittedShiftY=float(fit.shift[1]),
                       fittedShiftXErr=float(fit.shift_err[0]), fittedShiftYErr=float(fit.shift_err[1]))
        self.log.info("ZOGY fit: %s", out)
        return out

    def _psfArrays(self, exposure, positions):
        return np.stack([kernel_array(exposure.getPsf(), pos) for pos in positions])

    # ------------------------------------------------------------------------------------------
    @timeMethod
    def run(self, exposure1, exposure2, calculateScore=True):
        """Compute the ZOGY difference ``exposure1 - exposure2`` and, optionally, the score.

        Parameters
        ----------
        exposure1, exposure2 : Exposure
            Registered exposures of equal dimensions with PSFs ("new"/science and
            "reference"/template in the paper).
        calculateScore : bool
            Also compute S, its variance and S_corr.

        Returns
        -------
        Struct
            ``diffExp`` (D / F_D, propagated variance, OR-ed mask, PSF P_D, PhotoCalib 1),
            ``scoreExp`` (S, var S, PSF P_S; ``None`` without the score), ``scoreCorrExp``
            (S_corr with variance 1), ``ftDiff`` (a Struct of scalar diagnostics and the
            uncropped P_D), and the noise-calibration factors ``scienceVarianceScale``,
            ``templateVarianceScale``, ``differenceVarianceScale`` (``doScaleVariance``; 1 when off)
            and ``scoreNormalizationFactor`` (``doNormalizeScore``: S_corr was divided by it and
            var S multiplied by its square).

        Raises
        ------
        ValueError
            Different dimensions, missing PSF/PhotoCalib, PSF centroids too far apart, or a PSF
            larger than the image.
        ImageStatisticsError
            A noise level, fill value, background or calibration factor cannot be computed (too
            few usable pixels in the named image and plane).
        """
        check_exposure(exposure1, "exposure1")
        check_exposure(exposure2, "exposure2")
        if exposure1.getDimensions() != exposure2.getDimensions():
            msg = (
                f"Exposures have different dimensions: {exposure1.getDimensions()} and "
                f"{exposure2.getDimensions()}; warp or cut the template to the science bbox first"
            )
            raise ValueError(msg)
        cfg = self.config
        width, height = exposure1.getDimensions()
        bbox = exposure1.getBBox()
        x0, y0 = bbox.getMin()

        # border from the PSFs at the image centre (ip_diffim ``ZogyTask``: max(10 sigma, PSF box sizes))
        centre = bbox.getCenter()
        sig1 = exposure1.getPsf().computeShape(centre).getDeterminantRadius()
        sig2 = exposure2.getPsf().computeShape(centre).getDeterminantRadius()
        p1c, p2c = kernel_array(exposure1.getPsf(), centre), kernel_array(exposure2.getPsf(), centre)
        border = int(max(10.0 * max(sig1, sig2), *p1c.shape, *p2c.shape))
        if max(p1c.shape[0], p2c.shape[0]) > height or max(p1c.shape[1], p2c.shape[1]) > width:
            msg = (
                f"PSF kernel images ({p1c.shape}, {p2c.shape}) are larger than the {width}x{height} image; "
                "use smaller PSF stamps (computeKernelImage) or a larger image"
            )
            raise ValueError(msg)

        # cells
        if cfg.doSpatialGrid:
            inner = max(int(border * cfg.gridInnerSize), 1)
            nx, cw = _grid_boxes(width, inner)
            ny, ch = _grid_boxes(height, inner)
        else:
            nx, ny, cw, ch = 1, 1, width, height
        centres = [
            (x0 + min(i * cw + 0.5 * (cw - 1), width - 1), y0 + min(j * ch + 0.5 * (ch - 1), height - 1))
            for j in range(ny) for i in range(nx)
        ]
        psf1 = self._psfArrays(exposure1, centres)
        psf2 = self._psfArrays(exposure2, centres)
        for k in range(len(centres)):
            (yc1, xc1), (yc2, xc2) = psf_centroid(psf1[k]), psf_centroid(psf2[k])
            if (yc2 - yc1) ** 2 + (xc2 - xc1) ** 2 > cfg.maxPsfCentroidDist**2:
                msg = (
                    f"PSF centroids are offset by more than {cfg.maxPsfCentroidDist:.2f} pixels "
                    f"(science {xc1:+.3f},{yc1:+.3f}; template {xc2:+.3f},{yc2:+.3f} at {centres[k]}); "
                    "recentre the PSF models or raise config.maxPsfCentroidDist"
                )
                raise ValueError(msg)

        # science is exposure1 (paper N), template exposure2 (paper R); see module docstring
        p1 = self._prepare(exposure1, cfg.scienceFluxScaling, "science")
        p2 = self._prepare(exposure2, cfg.templateFluxScaling, "template")
        self._checkInputStatistics(p1, p2)

        fitted = self._fitFluxRatioShift(p1, p2, p1c, p2c) if (cfg.doFitFluxRatio or cfg.doFitShift) else {}

        from ..core.zogy import psf_low_part
        from ..core.zogy_grid import cell_noise_variances, cells_kernel_mode, zogy_cells

        if (ny, nx) == (1, 1) and not fitted:  # the clipped variance mean of _prepare is that cell's
            noise1, noise2 = p1.noise.reshape(1, 1), p2.noise.reshape(1, 1)
        else:
            noise1 = cell_noise_variances(p1.variance, p1.good, cell_shape=(ch, cw), n_cells=(ny, nx))
            noise2 = cell_noise_variances(p2.variance, p2.good, cell_shape=(ch, cw), n_cells=(ny, nx))
        dtype = p1.image.dtype
        # float64 PSF models keep their precision in float32 (low parts for the PSF transforms)
        psfLowParts = {}
        for key, arr in (("new_psfs_lo", psf1), ("ref_psfs_lo", psf2)):
            low = psf_low_part(np.asarray(arr), dtype)
            if low is not None:
                psfLowParts[key] = jnp.asarray(low).reshape(ny, nx, *arr.shape[1:])
        psfs1 = jnp.asarray(psf1, dtype).reshape(ny, nx, *psf1.shape[1:])
        psfs2 = jnp.asarray(psf2, dtype).reshape(ny, nx, *psf2.shape[1:])
        # the kernel path (compact box kernels or the full grid) is chosen here, on the host, so
        # that the compiled program holds one path only
        kernelMode = cells_kernel_mode(psfs1, psfs2, noise1, noise2, f_new=p1.flux, f_ref=p2.flux,
                                       image_shape=(height, width), cell_shape=(ch, cw), border=border,
                                       **psfLowParts)
        res = zogy_cells(
            p1.image, p2.image, psfs1, psfs2, p1.variance, p2.variance, noise1, noise2,
            f_new=p1.flux, f_ref=p2.flux, **psfLowParts,
            cell_shape=(ch, cw), border=border, calculate_score=calculateScore, kernel_mode=kernelMode,
        )

        edge = (max(psf1.shape[1], psf2.shape[1]) // 2, max(psf1.shape[2], psf2.shape[2]) // 2)
        outDtype = np.dtype(exposure1.getMaskedImage().dtype)
        mask1 = exposure1.getMask()
        # sources within half a PSF box of the edge are truncated by it, differently in the two
        # images: their residuals are not noise, so that band is flagged EDGE (not done by LSST's ZOGY)
        andMask = mask_bits(mask1, cfg.ignoreMaskPlanes)
        planes = finish_difference_planes(
            res.difference, res.difference_variance, p1.bad, p2.bad, p1.mask, p2.mask, p1.nonfinite,
            p2.nonfinite, no_data=mask_bits(mask1, ["NO_DATA"]), edge_bits=mask_bits(mask1, ["EDGE"]),
            edge=edge, and_mask=andMask, scale_variance=bool(cfg.doScaleVariance), out_dtype=outDtype.name,
        )  # fmt: skip
        diff, diffVar, outMask = planes.difference, planes.difference_variance, planes.mask
        score = scoreVar = scoreCorr = None
        if calculateScore:
            scorePlanes = finish_score_planes(
                res.score, res.score_variance, res.score_corr, p1.bad | p2.bad, outMask, and_mask=andMask,
                normalize=bool(cfg.doNormalizeScore), out_dtype=outDtype.name,
            )  # fmt: skip
            score, scoreVar, scoreCorr = scorePlanes.score, scorePlanes.score_variance, scorePlanes.score_corr
        scalars = {"fluxZeroPoint": jnp.mean(res.flux_zero_point), "nDegenerate": jnp.sum(res.n_degenerate),
                   "scienceVarianceScale": p1.varianceScale, "templateVarianceScale": p2.varianceScale,
                   "scienceNoiseVariance": jnp.mean(noise1), "templateNoiseVariance": jnp.mean(noise2)}
        checks = {"scienceNoiseMin": jnp.min(noise1), "templateNoiseMin": jnp.min(noise2)}
        if cfg.doScaleVariance:
            scalars["differenceVarianceScale"] = planes.variance_scale
            checks["diffVarScaleUsed"] = planes.variance_scale_used
        if calculateScore:
            scalars["scoreNormalizationFactor"] = scorePlanes.norm
            if cfg.doNormalizeScore:
                checks["normUsed"] = scorePlanes.norm_used
        # the cell noise levels (a NaN one would only show as a NaN PSF of D) and the pixel counts
        # one device -> host transfer for everything small
        scalars, checks = jax.device_get((scalars, checks))
        scalars = {k: float(v) for k, v in scalars.items()}
        for image, p in (("science", p1), ("template", p2)):
            value = float(checks[f"{image}NoiseMin"])
            if not (np.isfinite(value) and value > 0):
                raise ImageStatisticsError(image=image, plane="variance",
                                           statistic="clipped mean of a cell (noise level of a grid cell)",
                                           value=value, nUsable=int(np.asarray(p.stats.n_positive)))
        for name, image, plane, statistic, nkey in (
            ("differenceVarianceScale", "difference", "variance", "rescaling factor (doScaleVariance)",
             "diffVarScaleUsed"),
            ("scoreNormalizationFactor", "score", "image",
             "robust standard deviation of S_corr (doNormalizeScore)", "normUsed"),
        ):
            if name in scalars and nkey in checks and not (np.isfinite(scalars[name]) and scalars[name] > 0):
                raise ImageStatisticsError(
                    image=image, plane=plane, statistic=statistic, value=scalars[name],
                    nUsable=int(checks[nkey]),
                    hint="Too few unmasked pixels; check the mask planes (ignoreMaskPlanes) or switch "
                    "doScaleVariance/doNormalizeScore off.",
                )

        # PSFs of D and S: one cell -> ImagePsf; a grid -> GridPsf on the cell centres
        def _psfModel(stack):
            arr = np.asarray(stack, dtype=np.float64)
            if ny * nx == 1:
                return ImagePsf(arr[0, 0], averagePosition=centres[0])
            xs = [c[0] for c in centres[:nx]]
            ys = [centres[j * nx][1] for j in range(ny)]
            return GridPsf(arr, xs, ys)

        outMaskObj = Mask(outMask, bbox.getMin(), planes=exposure1.getMask().getMaskPlaneDict())
        diffExp = Exposure(
            MaskedImage(Image(diff, bbox.getMin()), outMaskObj, Image(diffVar, bbox.getMin())),
            psf=_psfModel(res.difference_psf), wcs=exposure1.getWcs(), photoCalib=PhotoCalib(1.0),
            filterLabel=exposure1.getFilter(), metadata=exposure1.getMetadata(),
        )
        scoreExp = scoreCorrExp = None
        if calculateScore:
            scoreExp = Exposure(
                MaskedImage(Image(score.astype(outDtype), bbox.getMin()), outMaskObj.clone(),
                            Image(scoreVar.astype(outDtype), bbox.getMin())),
                psf=_psfModel(res.score_psf), wcs=exposure1.getWcs(), photoCalib=PhotoCalib(1.0),
                filterLabel=exposure1.getFilter(), metadata=exposure1.getMetadata(),
            )
            scoreCorrExp = Exposure(
                MaskedImage(Image(scoreCorr.astype(outDtype), bbox.getMin()), outMaskObj.clone(),
                            Image(jnp.ones_like(scoreCorr, dtype=outDtype), bbox.getMin())),
                psf=scoreExp.getPsf(), wcs=exposure1.getWcs(), photoCalib=PhotoCalib(1.0),
                filterLabel=exposure1.getFilter(), metadata=exposure1.getMetadata(),
            )

        for k, v in fitted.items():
            self.metadata[k] = v
        self.metadata["doScaleVariance"] = bool(cfg.doScaleVariance)
        self.metadata["doNormalizeScore"] = bool(cfg.doNormalizeScore)
        self.metadata["borderSize"] = border
        self.metadata["nCells"] = nx * ny
        for k, v in scalars.items():
            self.metadata[k] = v
        ftDiff = Struct(Fd=scalars["fluxZeroPoint"], Pd=res.difference_psf, Ps=res.score_psf,
                        borderSize=border, cellShape=(ch, cw), nCells=(ny, nx),
                        psfShape1=psf1.shape[1:], psfShape2=psf2.shape[1:],
                        nDegenerate=int(scalars["nDegenerate"]))
        return Struct(
            diffExp=diffExp, scoreExp=scoreExp, scoreCorrExp=scoreCorrExp, ftDiff=ftDiff,
            scienceVarianceScale=scalars["scienceVarianceScale"],
            templateVarianceScale=scalars["templateVarianceScale"],
            scoreNormalizationFactor=scalars.get("scoreNormalizationFactor", 1.0),
            differenceVarianceScale=scalars.get("differenceVarianceScale", 1.0),
        )


class ZogyImagePsfMatchTask(ImagePsfMatchTask):
    """Task to perform Zogy PSF matching and image subtraction (seed API).

    Inherits from :class:`ImagePsfMatchTask` for its name (``psfMatch``), warping and the
    Alard-Lupton methods; ``subtractExposures``/``subtractMaskedImages`` raise
    ``NotImplementedError`` as in LSST (use :meth:`run`).
    """

    ConfigClass = ZogyImagePsfMatchConfig

    @timeMethod
    def run(self, scienceExposure, templateExposure, doWarping=True):
        """Register, PSF-match, and subtract two Exposures, ``scienceExposure - templateExposure``.

        Parameters
        ----------
        scienceExposure : Exposure
            Reference exposure (its WCS, bbox and PSF define the output grid).
        templateExposure : Exposure
            Exposure to be warped to ``scienceExposure`` and subtracted.
        doWarping : bool
            If the WCSs differ: warp the template when True, raise ``RuntimeError`` when False.

        Returns
        -------
        Struct
            ``subtractedExposure`` (D: image, propagated variance, OR-ed mask, PSF P_D,
            PhotoCalib 1), ``warpedExposure`` (the template on the science grid),
            ``scoreExposure`` (S and its variance, PSF P_S), ``scoreCorrExposure`` (S_corr in
            sigma units), ``diffExp`` and ``scoreExp`` (LSST's names, aliases), ``ftDiff``
            (diagnostics), ``scienceVarianceScale``, ``templateVarianceScale``,
            ``differenceVarianceScale``, ``scoreNormalizationFactor`` (see :meth:`ZogyTask.run`).

        Raises
        ------
        RuntimeError
            "Input images are not registered. Consider setting doWarping=True." when the WCSs
            differ and ``doWarping`` is False.
        ImageStatisticsError
            A statistic of the science or template image or variance plane cannot be computed
            (see :meth:`ZogyTask.run`).
        """
        check_exposure(scienceExposure, "scienceExposure")
        check_exposure(templateExposure, "templateExposure")
        templateExposure = self._registerTemplate(templateExposure, scienceExposure, doWarping)
        zogyTask = ZogyTask(config=self.config.zogyConfig)
        results = zogyTask.run(scienceExposure, templateExposure, calculateScore=True)
        for key, value in zogyTask.metadata.to_dict().items():
            if not key.startswith("run") and key not in ("__version__", "nodeName"):
                self.metadata[f"zogy.{key}"] = value
        return Struct(
            subtractedExposure=results.diffExp,
            warpedExposure=templateExposure,
            scoreExposure=results.scoreExp,
            scoreCorrExposure=results.scoreCorrExp,
            diffExp=results.diffExp,
            scoreExp=results.scoreExp,
            ftDiff=results.ftDiff,
            scienceVarianceScale=results.scienceVarianceScale,
            templateVarianceScale=results.templateVarianceScale,
            scoreNormalizationFactor=results.scoreNormalizationFactor,
            differenceVarianceScale=results.differenceVarianceScale,
        )
