"""Command-line interface: ``jaxdiff demo`` and ``jaxdiff zogy``.

``jaxdiff demo`` runs ZOGY (``ZogyImagePsfMatchTask``) on a simulated star field with injected
transients and, when the project's ``shared/data`` folder is found, on the real JWST NIRCam pair;
it writes D and S_corr as FITS files and a PNG panel, and prints the detections.

``jaxdiff zogy SCIENCE TEMPLATE`` runs ZOGY on two registered Exposure FITS files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "run_demo", "find_shared_data"]

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


def _detect(scoreCorrExposure, threshold, max_peaks=50):
    """Positive and negative peaks of S_corr above ``threshold`` sigma, strongest first."""
    from .detection import find_peaks, peaks_to_table

    arr = scoreCorrExposure.image.array
    mask = scoreCorrExposure.mask
    ok = (mask.array & mask.getPlaneBitMask(["EDGE", "NO_DATA", "BAD", "SAT"])) == 0
    pos = peaks_to_table(find_peaks(arr, threshold, ok, max_peaks=max_peaks))
    neg = peaks_to_table(find_peaks(-arr, threshold, ok, max_peaks=max_peaks), sign=-1)
    return sorted(pos + neg, key=lambda p: -abs(p["value"]))


def _panel(path, science, template, diff, scorr, detections, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("  (matplotlib not installed: no PNG panel; pip install 'jaxdiff[demo]')")
        return None
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), constrained_layout=True)
    for ax, arr, name in zip(axes, (science, template, diff, scorr),
                             ("science", "template", "difference D", "S_corr (sigma)")):
        a = np.asarray(arr, dtype=np.float64)
        if name.startswith("S_corr"):
            vmin, vmax = -6, 6
        else:
            lo, hi = np.nanpercentile(a, [1, 99.5])
            vmin, vmax = lo, hi
        ax.imshow(a, origin="lower", cmap="gray" if not name.startswith("S") else "RdBu_r", vmin=vmin, vmax=vmax)
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

    from .tasks import ZogyImagePsfMatchTask

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

    from .sim import simulate_pair

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
    tx = np.asarray(pair.truth.transient_x)
    ty = np.asarray(pair.truth.transient_y)
    found = 0
    _log(f"[sim] detections at |S_corr| > {threshold}:")
    for d in dets:
        dist = np.hypot(tx - d["x"], ty - d["y"]) if len(tx) else np.array([np.inf])
        match = bool(dist.min() < 3) if len(dist) else False
        found += match
        _log(f"   x={d['x']:5d} y={d['y']:5d} S_corr={d['value']:+8.2f} {'(injected transient)' if match else ''}")
    _log(f"[sim] {found} of {len(tx)} injected transients recovered, {len(dets) - found} other detections")
    dpath, spath = _write_outputs(outdir, "sim", res)
    png = _panel(outdir / "sim_panel.png", pair.science.image.array, pair.template.image.array,
                 res.subtractedExposure.image.array, res.scoreCorrExposure.image.array, dets,
                 f"jaxdiff ZOGY on a simulated {size}x{size} pair")
    _log(f"[sim] wrote {dpath}, {spath}" + (f", {png}" if png else ""))
    return dict(found=found, n_transients=len(tx), detections=dets)


def load_nircam_pair(datadir):
    """The JWST NIRCam F200W pair of ``shared/data`` as Exposures (noise maps, WebbPSF models)."""
    from .fits import exposureFromFits, readImageArray
    from .psf import ImagePsf

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


def run_demo(outdir="jaxdiff-demo-output", *, size=512, seed=0, threshold=5.0, real=True, data=None):
    """Run the demo; returns a dict of results (used by the tests)."""
    outdir = Path(outdir)
    out = {"sim": demo_simulated(outdir, size=size, seed=seed, threshold=threshold)}
    if real:
        datadir = find_shared_data(data)
        if datadir is None:
            _log("[nircam] shared/data not found (set JAXDIFF_SHARED or --data): skipping the real pair")
        else:
            out["nircam"] = demo_nircam(outdir, datadir, threshold=threshold)
    return out


def _cmd_zogy(args):
    from .image import Exposure

    science = Exposure.readFits(args.science)
    template = Exposure.readFits(args.template)
    _, res, dt = _run_zogy(science, template, normalize=args.normalize_score, scale_variance=args.scale_variance,
                           grid=args.grid)
    out = Path(args.output)
    dpath, spath = _write_outputs(out, "zogy", res)
    _log(f"ZOGY took {dt:.2f} s; wrote {dpath} and {spath}")
    for d in _detect(res.scoreCorrExposure, args.threshold):
        _log(f"x={d['x']} y={d['y']} S_corr={d['value']:+.2f}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="jaxdiff", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="ZOGY on a simulated pair and on the real NIRCam pair (if found)")
    p.add_argument("--output", default="jaxdiff-demo-output", help="output folder (default %(default)s)")
    p.add_argument("--size", type=int, default=512, help="simulated image size (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=5.0, help="|S_corr| detection threshold")
    p.add_argument("--no-real", action="store_true", help="skip the real-data part")
    p.add_argument("--data", default=None, help="path to shared/data")
    p.add_argument("--float64", action="store_true", help="compute in float64 (enables jax_enable_x64)")
    z = sub.add_parser("zogy", help="ZOGY on two registered Exposure FITS files")
    z.add_argument("science")
    z.add_argument("template")
    z.add_argument("--output", default="jaxdiff-zogy-output")
    z.add_argument("--threshold", type=float, default=5.0)
    z.add_argument("--grid", action="store_true", help="spatially varying PSFs: grid of cells")
    z.add_argument("--no-scale-variance", dest="scale_variance", action="store_false")
    z.add_argument("--no-normalize-score", dest="normalize_score", action="store_false")
    z.add_argument("--float64", action="store_true")
    args = parser.parse_args(argv)
    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)  # the user's explicit choice, at run time
    if args.command == "demo":
        run_demo(args.output, size=args.size, seed=args.seed, threshold=args.threshold,
                 real=not args.no_real, data=args.data)
        return 0
    return _cmd_zogy(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
