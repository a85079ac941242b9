"""Command-line interface: ``jaxdiff demo``, ``jaxdiff zogy`` and ``jaxdiff al``.

``jaxdiff demo`` runs ZOGY (``ZogyImagePsfMatchTask``) on a simulated star field with injected
transients and, when the project's ``shared/data`` folder is found, on the real JWST NIRCam pair;
it writes D and S_corr as FITS files and a PNG panel, and prints the detections.
``jaxdiff demo --method al`` does the same with Alard-Lupton PSF matching (``ImagePsfMatchTask``)
on a pair with a spatially varying PSF, a flux ratio and a sky offset.

``jaxdiff zogy SCIENCE TEMPLATE`` and ``jaxdiff al SCIENCE TEMPLATE`` subtract two registered FITS
files: LSST-style Exposure files (image/mask/variance HDUs, PSF if stored) or plain images with a
noise model (``--gain``/``--read-noise`` or error maps) and PSFs from files or Gaussian FWHMs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "console_main", "run_demo", "find_shared_data", "load_nircam_pair", "tune_host_malloc",
           "enable_compilation_cache"]

NIRCAM_DIR = "sfft_nircam_a2744"
NIRCAM_REF = "jw01324001001-01324-o001_t001_nircam_clear-f200w_i2d_stamp"
NIRCAM_SCI = "jw02561001002-02561-o001_t003_nircam_clear-f200w_i2d_stamp"


def find_shared_data(explicit=None):
    """Locate the project's ``shared/data`` folder (``--data``, ``$JAXDIFF_SHARED``, or beside a checkout)."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("JAXDIFF_SHARED"):
        candidates.append(Path(os.environ["JAXDIFF_SHARED"]) / "data")
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        candidates.append(base / "shared" / "data")
        candidates.append(base.parent / "shared" / "data")
    pkg = Path(__file__).resolve().parents[1]
    candidates.append(pkg.parent / "shared" / "data")
    for c in candidates:
        if (c / NIRCAM_DIR).is_dir():
            return c
    return None


def _log(msg):
    print(msg, flush=True)


def _detect(score_exposure, threshold, max_peaks=50):
    """Return the positive and negative peaks of a score image above ``threshold`` sigma, strongest first."""
    from ..core.detection import find_peaks, peaks_to_table

    arr = score_exposure.image.array
    mask = score_exposure.mask
    ok = (mask.array & mask.getPlaneBitMask(["EDGE", "NO_DATA", "BAD", "SAT"])) == 0
    pos = peaks_to_table(find_peaks(arr, threshold, ok, max_peaks=max_peaks))
    neg = peaks_to_table(find_peaks(-arr, threshold, ok, max_peaks=max_peaks), sign=-1)
    return sorted(pos + neg, key=lambda p: -abs(p["value"]))


def _report_detections(prefix, name, dets, truth, threshold):
    """Log the detections of a simulated pair, marking those within 3 px of an injected transient.

    Returns the number of transients recovered and their x positions (the truth catalogue).
    """
    tx = np.asarray(truth.transient_x)
    ty = np.asarray(truth.transient_y)
    found = 0
    _log(f"{prefix} detections at |{name}| > {threshold}:")
    for d in dets:
        match = bool(len(tx)) and bool(np.hypot(tx - d["x"], ty - d["y"]).min() < 3)
        found += match
        _log(f"   x={d['x']:5d} y={d['y']:5d} {name}={d['value']:+8.2f} {'(injected transient)' if match else ''}")
    _log(f"{prefix} {found} of {len(tx)} injected transients recovered, {len(dets) - found} other detections")
    return found, tx


def _panel(path, science, template, diff, scorr, detections, title,
           labels=("science", "template", "difference D", "S_corr (sigma)")):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("  (matplotlib not installed: no PNG panel; pip install 'jaxdiff[demo]')")
        return None
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), constrained_layout=True)
    for i, (ax, arr, name) in enumerate(zip(axes, (science, template, diff, scorr), labels, strict=True)):
        a = np.asarray(arr, dtype=np.float64)
        is_score = i == 3
        if is_score:
            vmin, vmax = -6, 6
        else:
            lo, hi = np.nanpercentile(a, [1, 99.5])
            vmin, vmax = lo, hi
        ax.imshow(a, origin="lower", cmap="RdBu_r" if is_score else "gray", vmin=vmin, vmax=vmax)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for det in detections:
        color = "lime" if det["value"] > 0 else "magenta"
        for ax in axes[2:]:
            ax.add_patch(plt.Circle((det["x"], det["y"]), 8, fill=False, color=color, lw=1.2))
    fig.suptitle(title)
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _run_zogy(science, template, *, normalize, scale_variance, grid=False):
    import jax

    from ..tasks import ZogyImagePsfMatchTask

    task = ZogyImagePsfMatchTask()
    zc = task.config.zogyConfig
    zc.scaleByCalibration = science.getPhotoCalib() is not None and template.getPhotoCalib() is not None
    zc.doScaleVariance = scale_variance
    zc.doNormalizeScore = normalize
    zc.doSpatialGrid = grid
    t0 = time.perf_counter()
    res = task.run(science, template, doWarping=False)
    jax.block_until_ready(res.scoreCorrExposure.image.array)
    return task, res, time.perf_counter() - t0


def _write_outputs(outdir, stem, res):
    outdir.mkdir(parents=True, exist_ok=True)
    dpath = outdir / f"{stem}_diff.fits"
    spath = outdir / f"{stem}_scorr.fits"
    res.subtractedExposure.writeFits(str(dpath))
    res.scoreCorrExposure.writeFits(str(spath))
    return dpath, spath


def demo_simulated(outdir, *, size, seed, threshold):
    import jax

    from ..testing.sim import simulate_pair

    _log(f"[sim] simulating a {size}x{size} star field with 10 transients (seed {seed}) ...")
    pair = simulate_pair(
        jax.random.key(seed), (size, size), n_stars=int(400 * (size / 1024) ** 2) + 20,
        n_transients=10, transient_snr=12.0,
        template_psf=dict(kind="gaussian", sigma=1.5), science_psf=dict(kind="gaussian", sigma=2.2),
    )
    task, res, dt = _run_zogy(pair.science, pair.template, normalize=False, scale_variance=False)
    _log(f"[sim] ZOGY ({size}x{size}, first call incl. compile) took {dt:.2f} s")
    _, res, dt = _run_zogy(pair.science, pair.template, normalize=False, scale_variance=False)
    _log(f"[sim] ZOGY warm call took {dt:.3f} s")
    dets = _detect(res.scoreCorrExposure, threshold)
    found, tx = _report_detections("[sim]", "S_corr", dets, pair.truth, threshold)
    dpath, spath = _write_outputs(outdir, "sim", res)
    png = _panel(outdir / "sim_panel.png", pair.science.image.array, pair.template.image.array,
                 res.subtractedExposure.image.array, res.scoreCorrExposure.image.array, dets,
                 f"jaxdiff ZOGY on a simulated {size}x{size} pair")
    _log(f"[sim] wrote {dpath}, {spath}" + (f", {png}" if png else ""))
    return dict(found=found, n_transients=len(tx), detections=dets)


def load_nircam_pair(datadir):
    """Load the JWST NIRCam F200W pair of ``shared/data`` as Exposures (noise maps, WebbPSF models)."""
    from ..image.fits import exposureFromFits, readImageArray
    from ..image.psf import ImagePsf

    d = Path(datadir) / NIRCAM_DIR
    exps = []
    for stem in (NIRCAM_SCI, NIRCAM_REF):
        psf = np.asarray(readImageArray(str(d / f"{stem}.WebbPSF.fits")), dtype=np.float64)
        exps.append(exposureFromFits(str(d / f"{stem}.fits"), noise=str(d / f"{stem}.noise.fits"),
                                     psf=ImagePsf(psf / psf.sum())))
    return exps[0], exps[1]


def demo_nircam(outdir, datadir, *, threshold):
    _log(f"[nircam] JWST NIRCam F200W Abell 2744 pair from {datadir / NIRCAM_DIR}")
    science, template = load_nircam_pair(datadir)
    task, res, dt = _run_zogy(science, template, normalize=True, scale_variance=True)
    _log(f"[nircam] ZOGY ({science.getWidth()}x{science.getHeight()}, PSF 205x205) took {dt:.2f} s "
         f"incl. compile")
    _log(f"[nircam] variance rescaling: science x{res.scienceVarianceScale:.3f}, "
         f"template x{res.templateVarianceScale:.3f}; S_corr normalisation / {res.scoreNormalizationFactor:.3f}")
    dets = _detect(res.scoreCorrExposure, threshold)
    _log(f"[nircam] strongest residuals at |S_corr| > {threshold} (array [row, col]):")
    for d in dets[:10]:
        note = " <- PSF-mismatch residual of the bright compact source" if (
            abs(d["y"] - 643) < 15 and abs(d["x"] - 280) < 15) else ""
        _log(f"   [{d['y']:4d}, {d['x']:4d}] S_corr={d['value']:+9.2f}{note}")
    dpath, spath = _write_outputs(outdir, "nircam", res)
    png = _panel(outdir / "nircam_panel.png", science.image.array, template.image.array,
                 res.subtractedExposure.image.array, res.scoreCorrExposure.image.array, dets[:20],
                 "jaxdiff ZOGY on JWST NIRCam F200W (Abell 2744), noise calibration on")
    _log(f"[nircam] wrote {dpath}, {spath}" + (f", {png}" if png else ""))
    return dict(detections=dets, task=task, result=res)


# ------------------------------------------------------------------------------------------
# Alard-Lupton
def _run_al(science, template, *, fit_background, decorrelate, spatial_order=None, cell_size=None):
    """Run ``ImagePsfMatchTask.subtractExposures(template, science)``; return (task, result, seconds)."""
    import jax

    from ..tasks import ImagePsfMatchTask

    config = ImagePsfMatchTask.ConfigClass()
    kconfig = config.kernel.active
    kconfig.fitForBackground = bool(fit_background)
    if spatial_order is not None:
        kconfig.spatialKernelOrder = int(spatial_order)
    if cell_size is not None:
        kconfig.sizeCellX = kconfig.sizeCellY = int(cell_size)
    config.doDecorrelation = bool(decorrelate)
    task = ImagePsfMatchTask(config=config)
    t0 = time.perf_counter()
    res = task.subtractExposures(template, science, doWarping=False)
    jax.block_until_ready(res.subtractedExposure.image.array)
    return task, res, time.perf_counter() - t0


def _al_failure(prefix, exc):
    """Report a typed Alard-Lupton failure (an ``AlgorithmError``) in one or two lines."""
    import jax

    _log(f"{prefix}Alard-Lupton failed: {type(exc).__name__}: {exc}")
    if not jax.config.jax_enable_x64:
        _log(f"{prefix}(computed in float32; the Alard-Lupton spatial fit is better conditioned in float64: "
             "rerun with --float64)")


def _pm(err, digits):
    """`` +- err``, or a note when the fit gave no uncertainty (NaN)."""
    return f" +- {err:.{digits}f}" if np.isfinite(err) else " (uncertainty unavailable)"


def _al_summary(prefix, task, res, *, truth=None):
    """Print the kernel, kernel sum and background; return them as a dict."""
    kernel, bg, cells = res.psfMatchingKernel, res.backgroundModel, res.kernelCellSet
    bbox = res.subtractedExposure.getBBox()
    cx, cy = bbox.getCenter()
    out = dict(kernel_sum=kernel.getKernelSum((cx, cy)), kernel_sum_err=kernel.getKernelSumUncertainty((cx, cy)),
               background=bg(cx, cy), background_err=bg.getUncertainty(cx, cy))
    used = sum(c.usedInSpatialFit for c in cells.candidates)
    _log(f"{prefix}kernel {kernel.getWidth()}x{kernel.getHeight()}, {kernel.getNBasisKernels()} bases, spatial order "
         f"{task.kConfig.spatialKernelOrder}; {used} of {len(cells)} candidates used "
         f"({cells.nGood()} good, {cells.nBad()} rejected)")
    note = f" (simulated flux ratio {truth.flux_ratio:g})" if truth is not None else ""
    _log(f"{prefix}kernel sum = {out['kernel_sum']:.5f}{_pm(out['kernel_sum_err'], 5)} at the image centre "
         f"(photometric scale science/template){note}")
    if task.kConfig.fitForBackground:
        note = ""
        if truth is not None:
            x0, y0 = bbox.getMin()
            note = f" (simulated {float(np.asarray(truth.background)[int(cy) - y0, int(cx) - x0]):.3f})"
        _log(f"{prefix}background at the image centre = {out['background']:.3f}{_pm(out['background_err'], 3)}{note}")
    else:
        _log(f"{prefix}no background fitted (use --fit-background when the sky levels differ)")
    return out


def _write_al_outputs(outdir, stem, res):
    outdir.mkdir(parents=True, exist_ok=True)
    dpath = outdir / f"{stem}_diff.fits"
    res.subtractedExposure.writeFits(str(dpath))
    paths = [dpath]
    if getattr(res, "scoreExposure", None) is not None:
        spath = outdir / f"{stem}_score.fits"
        res.scoreExposure.writeFits(str(spath))
        paths.append(spath)
    return paths


def _normalize_score(score_exposure):
    """Divide the score by its robust standard deviation (1.4826 MAD over unmasked pixels); return the factor."""
    arr = np.asarray(score_exposure.image.array)
    mask = score_exposure.mask
    ok = ((np.asarray(mask.array) & mask.getPlaneBitMask(["EDGE", "NO_DATA", "BAD", "SAT"])) == 0) & np.isfinite(arr)
    factor = float(1.4826 * np.median(np.abs(arr[ok] - np.median(arr[ok])))) if ok.any() else 1.0
    if factor > 0:
        score_exposure.image.array = (arr / factor).astype(arr.dtype)
    return factor


def demo_simulated_al(outdir, *, size, seed, threshold):
    from ..tasks.errors import AlgorithmError
    from ..testing.sim import simulate_pair

    _log(f"[sim-al] simulating a {size}x{size} star field with 10 transients (seed {seed}): science PSF sigma 2.2 "
         "+-10% across the field, template 1.5; flux ratio 1.1; sky offset 10 counts ...")
    pair = simulate_pair(
        _key(seed), (size, size), n_stars=int(500 * (size / 1024) ** 2) + 40,
        n_transients=10, transient_snr=12.0, psf_variation=0.1, flux_ratio=1.1, background_offset=10.0,
        template_psf=dict(kind="gaussian", sigma=1.5), science_psf=dict(kind="gaussian", sigma=2.2),
    )
    # LSST's 128-pixel kernel cells (nStarPerCell = 3 each) give a small image too few candidates for the
    # spatial fit: use at least 4 x 4 cells
    cell = max(32, min(128, size // 4))
    if cell != 128:
        _log(f"[sim-al] kernel candidate cells {cell}x{cell} pixels (LSST default 128: too few for this image size)")
    run = dict(fit_background=True, decorrelate=True, cell_size=cell)
    try:
        task, res, dt = _run_al(pair.science, pair.template, **run)
        _log(f"[sim-al] Alard-Lupton ({size}x{size}, first call incl. compile) took {dt:.2f} s")
        task, res, dt = _run_al(pair.science, pair.template, **run)
        _log(f"[sim-al] Alard-Lupton warm call took {dt:.3f} s")
    except AlgorithmError as exc:
        _al_failure("[sim-al] ", exc)
        return dict(error=exc, truth=pair.truth)
    out = _al_summary("[sim-al] ", task, res, truth=pair.truth)
    # noise check on star-free pixels (the truth tells where the stars are)
    diff = res.subtractedExposure
    d = np.asarray(diff.image.array, np.float64)
    v = np.asarray(diff.variance.array, np.float64)
    stars = np.asarray(pair.truth.science_model) - np.asarray(pair.truth.background)
    sky = (stars < 0.2 * np.sqrt(np.asarray(pair.science.variance.array))) & np.isfinite(d) & (v > 0)
    sky &= (np.asarray(diff.mask.array) & diff.mask.getPlaneBitMask(["NO_DATA", "EDGE", "SAT", "BAD", "CR"])) == 0
    z = d[sky] / np.sqrt(v[sky])
    out["z_std"] = float(z.std())
    _log(f"[sim-al] decorrelated difference / sqrt(variance) on star-free pixels: std {out['z_std']:.3f} (ideal 1)")
    dets = _detect(res.scoreExposure, threshold)
    found, tx = _report_detections("[sim-al]", "score", dets, pair.truth, threshold)
    paths = _write_al_outputs(outdir, "sim_al", res)
    png = _panel(outdir / "sim_al_panel.png", pair.science.image.array, pair.template.image.array,
                 diff.image.array, res.scoreExposure.image.array, dets,
                 f"jaxdiff Alard-Lupton on a simulated {size}x{size} pair (spatially varying PSF)",
                 labels=("science", "template", "decorrelated difference", "score (sigma)"))
    _log(f"[sim-al] wrote {', '.join(map(str, paths))}" + (f", {png}" if png else ""))
    out.update(found=found, n_transients=len(tx), detections=dets, truth=pair.truth, seconds=dt)
    return out


def demo_nircam_al(outdir, datadir, *, threshold):
    from ..tasks.errors import AlgorithmError

    _log(f"[nircam-al] JWST NIRCam F200W Abell 2744 pair from {Path(datadir) / NIRCAM_DIR}")
    science, template = load_nircam_pair(datadir)
    try:
        task, res, dt = _run_al(science, template, fit_background=True, decorrelate=True)
    except AlgorithmError as exc:
        _al_failure("[nircam-al] ", exc)
        return dict(error=exc)
    _log(f"[nircam-al] Alard-Lupton ({science.getWidth()}x{science.getHeight()}) took {dt:.2f} s incl. compile")
    out = _al_summary("[nircam-al] ", task, res)
    factor = _normalize_score(res.scoreExposure)
    _log(f"[nircam-al] score divided by its robust standard deviation {factor:.3f} (the i2d error maps "
         "underestimate the pixel noise, as in the ZOGY demo)")
    dets = _detect(res.scoreExposure, threshold)
    _log(f"[nircam-al] strongest residuals at |score| > {threshold} (array [row, col]):")
    for d in dets[:10]:
        note = " <- bright compact source (PSF-mismatch residual in ZOGY too)" if (
            abs(d["y"] - 643) < 15 and abs(d["x"] - 280) < 15) else ""
        _log(f"   [{d['y']:4d}, {d['x']:4d}] score={d['value']:+9.2f}{note}")
    paths = _write_al_outputs(outdir, "nircam_al", res)
    png = _panel(outdir / "nircam_al_panel.png", science.image.array, template.image.array,
                 res.subtractedExposure.image.array, res.scoreExposure.image.array, dets[:20],
                 "jaxdiff Alard-Lupton on JWST NIRCam F200W (Abell 2744), score normalised",
                 labels=("science", "template", "decorrelated difference", "score (sigma)"))
    _log(f"[nircam-al] wrote {', '.join(map(str, paths))}" + (f", {png}" if png else ""))
    out.update(detections=dets, score_normalization=factor, task=task, result=res)
    return out


def _key(seed):
    import jax

    return jax.random.key(seed)


def run_demo(outdir="jaxdiff-demo-output", *, size=512, seed=0, threshold=5.0, real=True, data=None,
             method="zogy"):
    """Run the demo with ``method`` "zogy" or "al"; returns a dict of results (used by the tests)."""
    if method not in ("zogy", "al"):
        raise ValueError(f"method must be 'zogy' or 'al', got {method!r}")
    outdir = Path(outdir)
    simulated, nircam = (demo_simulated, demo_nircam) if method == "zogy" else (demo_simulated_al, demo_nircam_al)
    out = {"sim": simulated(outdir, size=size, seed=seed, threshold=threshold)}
    if real:
        datadir = find_shared_data(data)
        if datadir is None:
            _log("[nircam] shared/data not found (set JAXDIFF_SHARED or --data): skipping the real pair")
        else:
            out["nircam"] = nircam(outdir, datadir, threshold=threshold)
    return out


class _CliError(Exception):
    """A problem with the command's inputs, reported as a usage error."""


def _add_input_options(parser):
    """Options shared by ``jaxdiff zogy`` and ``jaxdiff al``: PSFs and noise models of the two inputs."""
    g = parser.add_argument_group(
        "inputs", "SCIENCE and TEMPLATE are Exposure FITS files (image, mask and variance HDUs, as written by "
        "jaxdiff or LSST) or plain FITS images with a noise model (--gain/--read-noise, error maps, or the "
        "GAIN/RDNOISE header cards). Both must be on the same pixel grid.")
    for which in ("science", "template"):
        g.add_argument(f"--{which}-psf", metavar="FITS", help=f"{which} PSF kernel image (normalised to sum 1)")
        g.add_argument(f"--{which}-fwhm", type=float, metavar="PIX", help=f"{which} PSF: a Gaussian of this FWHM")
        g.add_argument(f"--{which}-noise", metavar="FITS", help=f"{which} 1-sigma error map (plain FITS input)")
    g.add_argument("--gain", type=float, help="gain in e-/ADU for plain FITS images (variance from the signal)")
    g.add_argument("--read-noise", type=float, help="read noise in electrons for plain FITS images")


def _load_input(args, which):
    """Load the ``which`` ("science"/"template") Exposure named on the command line, with its PSF."""
    from ..image.fits import exposureFromFits, readExposure, readImageArray
    from ..image.psf import FWHM_PER_SIGMA, GaussianPsf, ImagePsf

    path = getattr(args, which)
    noise = getattr(args, f"{which}_noise")
    plain = noise is not None or args.gain is not None or args.read_noise is not None
    exposure = None
    if not plain:
        try:
            exposure = readExposure(path)
        except ValueError as exc:
            if "exposureFromFits" not in str(exc):
                raise _CliError(f"{which} {path}: {exc}") from exc
    if exposure is None:
        try:
            exposure = exposureFromFits(path, gain=args.gain, readNoise=args.read_noise, noise=noise)
        except ValueError as exc:
            raise _CliError(f"{which} {path} is a plain image: {exc} (give --gain and --read-noise, or "
                            f"--{which}-noise)") from exc
    psf_file, fwhm = getattr(args, f"{which}_psf"), getattr(args, f"{which}_fwhm")
    if psf_file is not None and fwhm is not None:
        raise _CliError(f"give --{which}-psf or --{which}-fwhm, not both")
    if psf_file is not None:
        arr = np.asarray(readImageArray(psf_file), dtype=np.float64)
        if arr.shape[0] % 2 == 0 or arr.shape[1] % 2 == 0 or not np.isfinite(arr).all() or arr.sum() <= 0:
            raise _CliError(f"--{which}-psf {psf_file}: need an odd-sized, finite PSF image with a positive sum, "
                            f"got shape {arr.shape}")
        exposure.setPsf(ImagePsf(arr / arr.sum()))
    elif fwhm is not None:
        if not fwhm > 0:
            raise _CliError(f"--{which}-fwhm must be positive, got {fwhm}")
        sigma = fwhm / FWHM_PER_SIGMA
        size = 2 * int(np.ceil(4 * sigma)) + 1
        exposure.setPsf(GaussianPsf(size, size, sigma))
    if exposure.getPsf() is None:
        raise _CliError(f"{which} {path} carries no PSF: give --{which}-psf FITS or --{which}-fwhm PIX")
    return exposure


def _cmd_zogy(args):
    science = _load_input(args, "science")
    template = _load_input(args, "template")
    _, res, dt = _run_zogy(science, template, normalize=args.normalize_score, scale_variance=args.scale_variance,
                           grid=args.grid)
    out = Path(args.output)
    dpath, spath = _write_outputs(out, "zogy", res)
    _log(f"ZOGY took {dt:.2f} s; wrote {dpath} and {spath}")
    for d in _detect(res.scoreCorrExposure, args.threshold):
        _log(f"x={d['x']} y={d['y']} S_corr={d['value']:+.2f}")
    return 0


def _cmd_al(args):
    from ..tasks.errors import AlgorithmError

    science = _load_input(args, "science")
    template = _load_input(args, "template")
    try:
        task, res, dt = _run_al(science, template, fit_background=args.fit_background, decorrelate=args.decorrelate,
                                spatial_order=args.spatial_order)
    except AlgorithmError as exc:
        _al_failure("", exc)
        return 1
    _log(f"Alard-Lupton took {dt:.2f} s")
    _al_summary("", task, res)
    paths = _write_al_outputs(Path(args.output), "al", res)
    _log(f"wrote {' and '.join(map(str, paths))}")
    if getattr(res, "scoreExposure", None) is None:
        _log("no score image: add --decorrelate to whiten the difference and detect sources")
        return 0
    for d in _detect(res.scoreExposure, args.threshold):
        _log(f"x={d['x']} y={d['y']} score={d['value']:+.2f}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="jaxdiff", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="ZOGY (or Alard-Lupton) on a simulated pair and on the real NIRCam pair (if found)")
    p.add_argument("--output", default="jaxdiff-demo-output", help="output folder (default %(default)s)")
    p.add_argument("--size", type=int, default=512, help="simulated image size (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=5.0, help="|S_corr| detection threshold")
    p.add_argument("--no-real", action="store_true", help="skip the real-data part")
    p.add_argument("--data", default=None, help="path to shared/data")
    p.add_argument("--method", choices=("zogy", "al"), default="zogy",
                   help="zogy (default) or al (Alard-Lupton PSF matching, fitted background, decorrelation)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (enables jax_enable_x64)")
    z = sub.add_parser("zogy", help="ZOGY on two registered FITS images")
    z.add_argument("science")
    z.add_argument("template")
    z.add_argument("--output", default="jaxdiff-zogy-output")
    z.add_argument("--threshold", type=float, default=5.0)
    z.add_argument("--grid", action="store_true", help="spatially varying PSFs: grid of cells")
    z.add_argument("--no-scale-variance", dest="scale_variance", action="store_false")
    z.add_argument("--no-normalize-score", dest="normalize_score", action="store_false")
    z.add_argument("--float64", action="store_true")
    _add_input_options(z)
    a = sub.add_parser("al", help="Alard-Lupton PSF matching and subtraction of two registered FITS images")
    a.add_argument("science")
    a.add_argument("template")
    a.add_argument("--output", default="jaxdiff-al-output", help="output folder (default %(default)s)")
    a.add_argument("--threshold", type=float, default=5.0, help="|score| detection threshold (with --decorrelate)")
    a.add_argument("--fit-background", action="store_true",
                   help="fit a differential sky background with the kernel (LSST default: off)")
    a.add_argument("--decorrelate", action="store_true",
                   help="whiten the difference (DMTN-021), write the score image and print detections")
    a.add_argument("--spatial-order", type=int, default=None, metavar="N",
                   help="Chebyshev order of the kernel's spatial variation (default 2, as LSST)")
    a.add_argument("--float64", action="store_true", help="compute in float64 (enables jax_enable_x64)")
    _add_input_options(a)
    args = parser.parse_args(argv)
    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)  # the user's explicit choice, at run time
    if args.command == "demo":
        run_demo(args.output, size=args.size, seed=args.seed, threshold=args.threshold,
                 real=not args.no_real, data=args.data, method=args.method)
        return 0
    try:
        return _cmd_zogy(args) if args.command == "zogy" else _cmd_al(args)
    except _CliError as exc:
        parser.error(str(exc))


def tune_host_malloc() -> bool:
    """Tell glibc to keep and reuse freed memory in this process; ``True`` if it took effect.

    XLA's CPU runtime allocates every temporary with ``malloc``.  glibc serves blocks above its
    mmap threshold (32 MiB at most, smaller than one large image) with a fresh ``mmap`` and unmaps
    them on ``free``, so each call pays a page fault for every page of every temporary.  This
    sets one malloc arena, no mmap and no trimming (``mallopt``; what
    ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` do), so freed
    blocks are reused (measured in ``benchmarks/README.md``, "Allocator effect").  The price is
    that the process keeps its peak memory until it exits, which suits a command-line run.

    The ``jaxdiff`` command calls this at start-up (set ``JAXDIFF_DEFAULT_MALLOC=1`` to skip it).
    The library never does: the allocator belongs to the application.  Does nothing (returns
    ``False``) where the C library is not glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # <malloc.h>
    settings = ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1))
    return all(libc.mallopt(key, value) == 1 for key, value in settings)


def enable_compilation_cache(path=None):
    """Keep compiled XLA programs on disk, so that later runs skip most compilation; return the folder.

    A run of the ``jaxdiff`` command compiles dozens of programs, which at moderate image sizes
    takes longer than the computation; with JAX's persistent compilation cache a second run with
    the same image shapes loads them instead.  The folder is ``path``, else
    ``$JAXDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxdiff/xla`` (``~/.cache/jaxdiff/xla``).  If
    a cache folder is already configured (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config``), it is kept and returned.  Every program is cached, however quick to compile.

    This changes JAX's global configuration, so the library never calls it; the ``jaxdiff``
    command does at start-up (``JAXDIFF_NO_COMPILE_CACHE=1`` skips it).
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if path is None:
        path = os.environ.get("JAXDIFF_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "jaxdiff", "xla")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)


def console_main():
    """Entry point of the ``jaxdiff`` command.

    Before :func:`main`, it tunes the allocator (:func:`tune_host_malloc`; skip with
    ``JAXDIFF_DEFAULT_MALLOC=1``) and turns on the on-disk compilation cache
    (:func:`enable_compilation_cache`; skip with ``JAXDIFF_NO_COMPILE_CACHE=1``).
    """
    if os.environ.get("JAXDIFF_DEFAULT_MALLOC", "") in ("", "0"):
        tune_host_malloc()
    if os.environ.get("JAXDIFF_NO_COMPILE_CACHE", "") in ("", "0"):
        enable_compilation_cache()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
