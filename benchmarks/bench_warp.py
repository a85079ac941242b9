#!/usr/bin/env python
"""Benchmark ``jaxdiff.image.warp`` against ``reproject.reproject_interp`` on the same data.

Usage::

    python benchmarks/bench_warp.py --sizes 2048 4096 --repeats 3

The driver makes one float32 template per size (stars on a smooth background, numpy only),
a TAN WCS for it and a science TAN WCS shifted by a fraction of a pixel and rotated by 0.2 deg,
and saves them as ``.npy`` + FITS headers under ``--workdir``.  Then, for each size:

* one *jax* child process (this script, ``--worker jax``; the dev venv) times
  ``jaxdiff.image.warp.warp_exposure`` (image + variance + mask + PSF, the default ``lanczos3``
  kernel, and ``bilinear``): compile time of the jitted plane warp, first call, warm calls;
  plus ``resample`` alone on precomputed coordinates (compile and warm), and the host-side
  ``warp_coordinates``;
* one *reproject* child process (``--worker reproject``, run with ``--peer-python``, a venv
  with numpy/scipy/astropy/reproject and no jax) times ``reproject_interp`` with
  ``order="bilinear"`` and ``order="bicubic"`` (image only; first and warm calls).

It prints an environment header and a Markdown table, a PASS/FAIL line for the target
(at the largest size, the warm ``warp_exposure`` with ``lanczos3`` is faster than the warm
``reproject_interp`` bilinear, measured in the same run), and the RMS difference between the
jaxdiff and reproject images on the common valid area as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

PIXEL_SCALE = 0.2 / 3600.0
SHIFT = (0.37, -0.21)  # science reference pixel offset, pixels
ROTATION_DEG = 0.2


def _headers(size):
    from astropy.wcs import WCS

    def tan(crpix, cd):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.2]
        w.wcs.crpix = list(crpix)
        w.wcs.cd = cd
        return w

    c = (size + 1) / 2.0
    cd_t = PIXEL_SCALE * np.diag([-1.0, 1.0])
    t = np.deg2rad(ROTATION_DEG)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    tmpl = tan([c, c], cd_t)
    sci = tan([c + SHIFT[0], c + SHIFT[1]], cd_t @ rot)
    return sci.to_header_string(), tmpl.to_header_string()


def make_data(size, workdir, seed=0):
    from _common import render_stars
    from scipy import ndimage

    d = Path(workdir) / f"n{size}"
    d.mkdir(parents=True, exist_ok=True)
    if (d / "template.npy").exists():
        return d
    rng = np.random.default_rng(seed)
    n = int(400 * size * size / 1e6)
    y, x = rng.uniform(1, size - 2, n), rng.uniform(1, size - 2, n)
    flux = np.exp(rng.uniform(np.log(1e2), np.log(1e5), n))
    img = render_stars((size, size), y, x, flux, 1.6, 12)
    img += ndimage.gaussian_filter(rng.normal(size=(size, size)), 30) * 300 + 100.0
    img += rng.normal(scale=10.0, size=img.shape)
    np.save(d / "template.npy", img.astype(np.float32))
    sci_h, tmpl_h = _headers(size)
    (d / "science.hdr").write_text(sci_h)
    (d / "template.hdr").write_text(tmpl_h)
    return d


def _med(ts):
    return float(np.median(ts))


def worker_jax(d, repeats, out):
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp
    from astropy.io import fits
    from astropy.wcs import WCS

    import jaxdiff
    from jaxdiff import Exposure, GaussianPsf, MaskedImage
    from jaxdiff.core.resample import resample
    from jaxdiff.image.warp import _warp_planes, warp_coordinates, warp_exposure

    img = np.load(d / "template.npy")
    size = img.shape[0]
    sci_wcs = WCS(fits.Header.fromstring((d / "science.hdr").read_text()))
    tmpl_wcs = WCS(fits.Header.fromstring((d / "template.hdr").read_text()))
    var = np.full_like(img, 100.0)
    mi = MaskedImage(img, variance=var)
    template = Exposure(mi, psf=GaussianPsf(25, 25, 1.6), wcs=tmpl_wcs)
    bbox = (0, 0, size, size)
    res = {"size": size, "jax": jax.__version__, "backend": jax.default_backend(),
           "device": str(jax.devices()[0]), "jaxdiff": getattr(jaxdiff, "__version__", "?")}

    t0 = time.perf_counter()
    xs, ys = warp_coordinates(sci_wcs, tmpl_wcs, bbox)
    res["coords_s"] = time.perf_counter() - t0

    for kernel in ("lanczos3", "bilinear", "lanczos3_linear"):
        mask = template.getMask()
        args = (jnp.asarray(img), jnp.asarray(var), jnp.asarray(mask.getArray()), jnp.asarray(xs), jnp.asarray(ys))
        planes = mask.getMaskPlaneDict()
        bit = {p: (1 << planes[p]) if p in planes else 0 for p in ("EDGE", "NO_DATA")}
        kw = dict(kernel=kernel, mask_kernel="bilinear", grow_bits=bit["EDGE"],
                  no_data_bits=bit["NO_DATA"] | bit["EDGE"])
        t0 = time.perf_counter()
        _warp_planes.lower(*args, **kw).compile()
        res[f"{kernel}_compile_s"] = time.perf_counter() - t0
        jax.clear_caches()
        t0 = time.perf_counter()
        w = warp_exposure(template, sci_wcs, bbox, kernel=kernel)
        res[f"{kernel}_first_s"] = time.perf_counter() - t0
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            w = warp_exposure(template, sci_wcs, bbox, kernel=kernel)
            ts.append(time.perf_counter() - t0)
        res[f"{kernel}_warm_s"] = _med(ts)
        if kernel in ("lanczos3", "bilinear"):
            np.save(d / f"jax_{kernel}.npy", np.asarray(w.image.array))
        # resample alone on precomputed device coordinates (float32)
        ximg = jnp.asarray(img)
        xj, yj = jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32)
        t0 = time.perf_counter()
        resample.jitted.lower(ximg, xj, yj, kernel=kernel).compile()
        res[f"{kernel}_resample_compile_s"] = time.perf_counter() - t0
        resample(ximg, xj, yj, kernel=kernel).block_until_ready()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            resample(ximg, xj, yj, kernel=kernel).block_until_ready()
            ts.append(time.perf_counter() - t0)
        res[f"{kernel}_resample_warm_s"] = _med(ts)
        del w
    Path(out).write_text(json.dumps(res))


def worker_reproject(d, repeats, out):
    import astropy
    import reproject
    from astropy.io import fits
    from astropy.wcs import WCS
    from reproject import reproject_interp

    img = np.load(d / "template.npy")
    size = img.shape[0]
    sci_h = fits.Header.fromstring((d / "science.hdr").read_text())
    tmpl_wcs = WCS(fits.Header.fromstring((d / "template.hdr").read_text()))
    res = {"size": size, "reproject": reproject.__version__, "astropy": astropy.__version__,
           "numpy": np.__version__}
    for order in ("bilinear", "bicubic"):
        t0 = time.perf_counter()
        arr, _ = reproject_interp((img, tmpl_wcs), sci_h, shape_out=(size, size), order=order)
        res[f"{order}_first_s"] = time.perf_counter() - t0
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            arr, _ = reproject_interp((img, tmpl_wcs), sci_h, shape_out=(size, size), order=order)
            ts.append(time.perf_counter() - t0)
        res[f"{order}_warm_s"] = _med(ts)
        res["out_dtype"] = str(arr.dtype)
        np.save(d / f"reproject_{order}.npy", np.asarray(arr, np.float32))
    Path(out).write_text(json.dumps(res))


def _run(cmd, timeout):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
        return False
    return True


def _rms_diff(d, a, b, margin=8):
    x = np.load(d / a).astype(np.float64)[margin:-margin, margin:-margin]
    y = np.load(d / b).astype(np.float64)[margin:-margin, margin:-margin]
    ok = np.isfinite(x) & np.isfinite(y) & (x != 0)
    return float(np.sqrt(np.mean((x[ok] - y[ok]) ** 2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/jaxdiff_bench_warp")
    ap.add_argument("--peer-python", default="/tmp/warpvenv/bin/python")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--json", help="write all raw numbers to this file")
    ap.add_argument("--worker", choices=["jax", "reproject"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "jax":
        return worker_jax(Path(a.dir), a.repeats, a.out)
    if a.worker == "reproject":
        return worker_reproject(Path(a.dir), a.repeats, a.out)

    from _common import environment

    env = environment()
    print("## Environment\n")
    for k, v in env.items():
        print(f"- {k}: {v}")
    results = []
    for size in a.sizes:
        d = make_data(size, a.workdir)
        jout, rout = d / "jax.json", d / "reproject.json"
        for f in (jout, rout):
            f.unlink(missing_ok=True)
        _run([sys.executable, __file__, "--worker", "jax", "--dir", str(d), "--out", str(jout),
              "--repeats", str(a.repeats)], a.timeout)
        have_peer = Path(a.peer_python).exists()
        if have_peer:
            _run([a.peer_python, __file__, "--worker", "reproject", "--dir", str(d), "--out", str(rout),
                  "--repeats", str(a.repeats)], a.timeout)
        j = json.loads(jout.read_text()) if jout.exists() else {}
        r = json.loads(rout.read_text()) if rout.exists() else {}
        if j and r:
            ref_scale = float(np.std(np.load(d / "template.npy")))
            j["rms_lanczos3_vs_bicubic_rel"] = _rms_diff(d, "jax_lanczos3.npy", "reproject_bicubic.npy") / ref_scale
            j["rms_bilinear_vs_bilinear_rel"] = _rms_diff(d, "jax_bilinear.npy", "reproject_bilinear.npy") / ref_scale
        results.append({"size": size, "jax": j, "reproject": r})

    first = next((x for x in results if x["jax"]), {"jax": {}})["jax"]
    peer = next((x for x in results if x["reproject"]), {"reproject": {}})["reproject"]
    print(f"- jax {first.get('jax')} ({first.get('backend')}: {first.get('device')}); reproject "
          f"{peer.get('reproject')} with numpy {peer.get('numpy')}, astropy {peer.get('astropy')}")
    print(f"- float32 template, TAN -> TAN, shift {SHIFT} px + rotation {ROTATION_DEG} deg; "
          f"median of {a.repeats} warm calls\n")
    print("| size | jaxdiff warp_exposure lanczos3 warm (compile, first) | bilinear warm | "
          "lanczos3_linear warm | resample only lanczos3 / bilinear (warm) | warp_coordinates | "
          "reproject bilinear warm (first) | reproject bicubic warm (first) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")

    def f(x, k):
        v = x.get(k)
        return f"{v:.3g} s" if v is not None else "n/a"

    for x in results:
        j, r = x["jax"], x["reproject"]
        print(f"| {x['size']}² | {f(j, 'lanczos3_warm_s')} ({f(j, 'lanczos3_compile_s')}, {f(j, 'lanczos3_first_s')}) "
              f"| {f(j, 'bilinear_warm_s')} | {f(j, 'lanczos3_linear_warm_s')} "
              f"| {f(j, 'lanczos3_resample_warm_s')} / {f(j, 'bilinear_resample_warm_s')} | {f(j, 'coords_s')} "
              f"| {f(r, 'bilinear_warm_s')} ({f(r, 'bilinear_first_s')}) "
              f"| {f(r, 'bicubic_warm_s')} ({f(r, 'bicubic_first_s')}) |")
    print()
    for x in results:
        j = x["jax"]
        if "rms_lanczos3_vs_bicubic_rel" in j:
            print(f"- {x['size']}²: RMS(jaxdiff lanczos3 - reproject bicubic) / std(image) = "
                  f"{j['rms_lanczos3_vs_bicubic_rel']:.2e}; RMS(bilinear - bilinear) / std = "
                  f"{j['rms_bilinear_vs_bilinear_rel']:.2e}")
    big = max(results, key=lambda x: x["size"])
    jt, rt = big["jax"].get("lanczos3_warm_s"), big["reproject"].get("bilinear_warm_s")
    if jt is None or rt is None:
        print(f"\nTARGET: n/a (missing measurement at {big['size']}²)")
    else:
        verdict = "PASS" if jt < rt else "FAIL"
        print(f"\nTARGET {verdict}: at {big['size']}², jaxdiff warp_exposure (lanczos3, warm) {jt:.2f} s "
              f"vs reproject_interp (bilinear, warm) {rt:.2f} s in the same run ({rt / jt:.1f}x)")
    if a.json:
        Path(a.json).write_text(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
