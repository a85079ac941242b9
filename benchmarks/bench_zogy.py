#!/usr/bin/env python
"""Benchmark ``jaxdiff.core.zogy`` against the FFT floor, a float64 numpy oracle and peer codes.

Usage (full run, ~15-25 minutes on a 2-core machine)::

    python benchmarks/bench_zogy.py --sizes 1024 2048 4096 --dtypes float32 float64 --repeats 3
        --peers properimage,pyzogy,oracle,numpyref --peer-timeout 400 --max-load 1.0 --max-wait 120
        --profile --tuned-malloc --write-readme      (one command line)

Every measurement runs in a child process, so the driver's own memory and caches never
interfere: one "jax" worker per (size, dtype) times the FFT floor, jaxdiff (per-pixel and
scalar variances), the oracle and the tests' numpy reference in that one process; one fresh
"mem" worker per (size, dtype, variant) measures the peak RSS increase of one call; peers
run in their own virtual environment (``--peer-python``), one fresh process per (peer, size).
See benchmarks/README.md for what is measured and the caveats.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402  (after the sys.path insert that makes _common importable)
    PeakMemory,
    environment,
    load_pair,
    make_pair,
    package_versions,
    save_pair,
    scorr_quality,
    timed,
    wait_for_load,
    write_results_block,
    write_results_json,
)

README = HERE / "README.md"
ZOGY_PACKAGES = ("jax", "jaxlib", "numpy", "scipy", "astropy", "properimage", "mirar", "pyFFTW", "sep")
RESULTS_START = "<!-- RESULTS START (written by bench_zogy.py --write-readme) -->"
RESULTS_END = "<!-- RESULTS END -->"
PEERS_MD = {  # median seconds per call from the project survey of peer codes (peers.md, outside this repository) (NOT this run)
    1024: {"oracle": 0.16, "vreeswijk": 1.64, "mirar": 1.54, "pyzogy_dguevel": 6.2, "properimage": 9.8},
    2048: {"oracle": 0.93, "vreeswijk": 4.5, "mirar": 7.3, "pyzogy_dguevel": 28.7, "properimage": 43.0},
    4096: {"oracle": 4.96, "vreeswijk": 41.4, "mirar": 43.9, "pyzogy_dguevel": 118.0, "properimage": 226.0},
}
PEER_NAMES = ("properimage", "pyzogy")
ALL_PEERS = ("properimage", "pyzogy", "oracle", "numpyref")


# ======================================================================================
# the oracle: the paper's equations, float64, scipy.fft (2 workers), full complex fft2


def zogy_oracle(new, ref, psf_new, psf_ref, var_new, var_ref, *, noise_new, noise_ref, f_new, f_ref, fft_shape,
                workers=2):  # fmt: skip
    """Plain ZOGY (Zackay, Ofek & Gal-Yam 2016), per-pixel variance, no astrometric term.

    Same padding as ``jaxdiff.core.zogy`` (reflect, image at offset (fft - n) // 2); PSF centre
    pixel at the grid origin.  Returns D, V_D, S, V_S, S_corr (all float64).  18 full fft2.
    """
    import scipy.fft as sfft

    fft, ifft = functools.partial(sfft.fft2, workers=workers), functools.partial(sfft.ifft2, workers=workers)
    (h, w), (fh, fw) = new.shape, fft_shape
    y0, x0 = (fh - h) // 2, (fw - w) // 2
    pad = functools.partial(np.pad, pad_width=((y0, fh - h - y0), (x0, fw - w - x0)), mode="reflect")

    def crop(a):
        return a[y0 : y0 + h, x0 : x0 + w]

    def real_ifft(a):
        return ifft(a).real

    def otf(p):
        big = np.zeros(fft_shape)
        big[np.ix_((np.arange(p.shape[0]) - p.shape[0] // 2) % fh, (np.arange(p.shape[1]) - p.shape[1] // 2) % fw)] = p / p.sum()
        return fft(big)

    N, R, Vn, Vr = (fft(pad(np.asarray(a, np.float64))) for a in (new, ref, var_new, var_ref))
    Pn, Pr = otf(psf_new), otf(psf_ref)
    den = noise_new * f_ref**2 * np.abs(Pr) ** 2 + noise_ref * f_new**2 * np.abs(Pn) ** 2  # eqs. 12-13
    f_d = f_new * f_ref / np.sqrt(noise_new * f_ref**2 + noise_ref * f_new**2)  # eq. 15
    c1, c2 = f_ref * Pr / np.sqrt(den), f_new * Pn / np.sqrt(den)  # eq. 13
    k1 = f_new * f_ref**2 * np.conj(Pn) * np.abs(Pr) ** 2 / den  # eq. 12 (and 28-29)
    k2 = f_ref * f_new**2 * np.conj(Pr) * np.abs(Pn) ** 2 / den
    D = crop(real_ifft(c1 * N - c2 * R)) / f_d
    S = crop(real_ifft(k1 * N - k2 * R))
    V_D = crop(real_ifft(fft(real_ifft(c1) ** 2) * Vn + fft(real_ifft(c2) ** 2) * Vr)) / f_d**2  # eq. 26, maps
    V_S = crop(real_ifft(fft(real_ifft(k1) ** 2) * Vn + fft(real_ifft(k2) ** 2) * Vr))
    return D, V_D, S, V_S, S / np.sqrt(V_S)  # eq. 25


def oracle_fft_shape(image_shape, psf_shape):
    """Same grid as jaxdiff's default (imported lazily so peers' venv needs no jaxdiff)."""
    sys.path.insert(0, str(REPO))
    from jaxdiff.core.zogy import default_fft_shape

    return default_fft_shape(image_shape, psf_shape, psf_shape)


def _oracle_call(a, meta, fft_shape):
    return zogy_oracle(a["new"], a["ref"], a["psf_new"], a["psf_ref"], a["var_new"], a["var_ref"],
                       noise_new=meta["sky_var_new"], noise_ref=meta["sky_var_ref"], f_new=meta["flux_ratio"],
                       f_ref=1.0, fft_shape=fft_shape)  # fmt: skip


def _numpyref_call(a, meta, fft_shape):
    sys.path.insert(0, str(REPO))
    from tests.reference.zogy_numpy import zogy_reference

    return zogy_reference(a["new"], a["ref"], a["psf_new"], a["psf_ref"], a["var_new"], a["var_ref"],
                          new_noise_var=meta["sky_var_new"], ref_noise_var=meta["sky_var_ref"],
                          f_new=meta["flux_ratio"], f_ref=1.0, fft_shape=fft_shape)  # fmt: skip


def _cpu_s():
    """CPU seconds (user + system, all threads) used by this process so far."""
    return time.process_time()


def _median(ts):
    return float(np.median(ts)) if ts else None


def _run_blocking(fn, *args, **kwargs):
    """Call ``fn`` and wait for its JAX results (bind with ``functools.partial`` for ``timed``)."""
    import jax

    return jax.block_until_ready(fn(*args, **kwargs))


def _interior_rms(a, b, border):
    d = np.asarray(a, np.float64)[border:-border, border:-border] - np.asarray(b, np.float64)[border:-border, border:-border]
    return float(np.sqrt(np.mean(d**2)))


# ======================================================================================
# workers (each runs in its own process; results go to --out as JSON)


def tune_malloc():
    """NOT the default: make glibc keep and reuse freed memory (one arena, no mmap, no trim).

    XLA's CPU runtime allocates every large temporary with malloc; glibc serves blocks
    > 32 MiB with a fresh mmap and unmaps them on free, so every call pays page faults
    for every temporary.  Uses the library's opt-in helper (what the ``jaxdiff`` command does).
    """
    sys.path.insert(0, str(REPO))
    from jaxdiff.cli import tune_host_malloc

    return tune_host_malloc()


def fft_chain(n, r, vn, vr, *, fft_shape, per_pixel, full_grid=False):
    """The full-size FFTs that jaxdiff's ZOGY needs, with nothing but scalar glue between them.

    Inputs already on the FFT grid.  Scalar variances: 2 forward (N, R) and 2 inverse (D, S).
    Per-pixel variance maps add 2 forward (V_n, V_r) and 2 inverse (V_D, V_S): 8 with compact
    box kernels (the default path when the kernels fit their box).  ``full_grid=True``: the
    path for kernels that are not compact, which adds 4 x (inverse, square, forward) to
    square the four kernels on the full grid: 16.
    """
    import jax.numpy as jnp

    def inv(a):
        return jnp.fft.irfft2(a, s=fft_shape)

    nh, rh = jnp.fft.rfft2(n), jnp.fft.rfft2(r)
    d, s = inv(nh - 0.9 * rh), inv(0.8 * nh - 0.7 * rh)
    if not per_pixel:
        return d, s
    vnh, vrh = jnp.fft.rfft2(vn), jnp.fft.rfft2(vr)
    if full_grid:
        k = [jnp.fft.rfft2(inv(c * nh - rh) ** 2) for c in (0.5, 0.6, 0.7, 0.8)]
    else:
        k = [c * vnh for c in (0.5, 0.6, 0.7, 0.8)]
    return d, s, inv(k[0] * vnh + k[1] * vrh), inv(k[2] * vnh + k[3] * vrh)


def _jax_setup(dtype):
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, str(REPO))
    return jax


def _zogy_images(zogy, psf_new, psf_ref, new, ref, var_new, var_ref, **kw):
    return zogy(new, ref, psf_new, psf_ref, var_new, var_ref, **kw)


def _zogy_args(jax, dev, meta, variant):
    vn, vr = (dev["var_new"], dev["var_ref"]) if variant == "pixel" else (meta["sky_var_new"], meta["sky_var_ref"])
    kw = dict(new_noise_var=meta["sky_var_new"], ref_noise_var=meta["sky_var_ref"], f_new=meta["flux_ratio"], f_ref=1.0)
    return (dev["new"], dev["ref"], dev["psf_new"], dev["psf_ref"], vn, vr), kw


def _hlo_summary(text, dtype, grid=None):
    """FFT ops in the optimised (compiled) HLO (transforms counted with their batch size), and
    whether f64 / c128 buffers appear in float32 mode."""
    import re

    counts = {}
    for dims, kind, length in re.findall(r"\[([\d,]*)\][^\s]* fft\(.*?fft_type=(\w+), fft_length=\{([\d,]+)\}", text):
        shape = [int(v) for v in dims.split(",") if v]
        batch = int(np.prod(shape[: -len(length.split(","))])) if len(shape) > len(length.split(",")) else 1
        key = f"{kind} {length.replace(',', 'x')}"
        counts[key] = counts.get(key, 0) + batch
    out = {"fft_ops": counts, "n_fft_ops": sum(counts.values())}
    if grid is not None:
        full = "x".join(str(g) for g in grid)
        out["n_full_grid_fft"] = sum(v for k, v in counts.items() if k.split()[1] == full)
    if dtype == "float32":
        out["f64_or_c128_buffers"] = len(re.findall(r"\b(?:f64|c128)\[", text))
    return out


def worker_jax(args):
    tuned = tune_malloc() if args.mallopt else None
    jax = _jax_setup(args.dtype)
    import jax.numpy as jnp
    import scipy.fft as sfft

    from jaxdiff.core.zogy import default_fft_shape, zogy

    dtype = np.dtype(args.dtype)
    a, meta = load_pair(args.data, dtype)
    rep = args.repeats
    res = {"size": meta["size"], "dtype": args.dtype, "backend": jax.default_backend(), "loadavg_start": os.getloadavg(),
           "device": str(jax.devices()[0]), "x64": bool(jax.config.jax_enable_x64), "mallopt": tuned}  # fmt: skip
    fft_shape = default_fft_shape(a["new"].shape, a["psf_new"].shape, a["psf_ref"].shape)
    res["fft_shape"] = list(fft_shape)

    # (1) FFT floor: one rfft2 of the image size, and of the padded grid zogy uses
    rfft = jax.jit(jnp.fft.rfft2)
    for label, shape in (("", a["new"].shape), ("_grid", fft_shape)):
        x = jnp.asarray(np.resize(a["new"], shape) if shape != a["new"].shape else a["new"])
        _run_blocking(rfft, x)
        c0 = _cpu_s()
        ts = timed(functools.partial(_run_blocking, rfft, x), args.floor_repeats)
        res[f"rfft2_jnp{label}_cpu_s"] = (_cpu_s() - c0) / args.floor_repeats
        res[f"rfft2_jnp{label}_s"], res[f"rfft2_jnp{label}_min_s"] = _median(ts), min(ts)
        del x
    # (1b) the FFT chain of the exact algorithm alone, on zogy's grid, with the cheapest glue
    grid_img = [jnp.asarray(np.resize(a[k], fft_shape)) for k in ("new", "ref", "var_new", "var_ref")]
    for variant, full_grid in (("pixel", False), ("scalar", False), ("pixelfull", True)):
        chain = jax.jit(functools.partial(fft_chain, fft_shape=fft_shape, per_pixel=variant != "scalar",
                                          full_grid=full_grid))  # fmt: skip
        run_chain = functools.partial(_run_blocking, chain, *grid_img)
        run_chain()
        c0 = _cpu_s()
        ts = timed(run_chain, rep)
        res[f"fft_chain_{variant}_cpu_s"] = (_cpu_s() - c0) / rep
        res[f"fft_chain_{variant}_s"] = _median(ts)
        hlo = chain.lower(*grid_img).compile().as_text()
        res[f"fft_chain_{variant}_n_fft"] = _hlo_summary(hlo, args.dtype)["n_fft_ops"]
    grid_img = None  # free the four grid-size arrays
    sfft.rfft2(a["new"], workers=2)
    res["rfft2_scipy_s"] = _median(timed(lambda: sfft.rfft2(a["new"], workers=2), args.floor_repeats))

    # (2) jaxdiff zogy, per-pixel and scalar variances.  Images on the device; the PSF stamps stay
    # float64 numpy, as a PSF model gives them (zogy keeps their float64 precision in float32 too)
    dev = {k: jax.device_put(v) for k, v in a.items() if k not in ("sky", "psf_new", "psf_ref")}
    jax.block_until_ready(dev)
    for k in ("psf_new", "psf_ref"):
        dev[k] = np.load(Path(args.data) / f"{k}.npy").astype(np.float64)
    scorr = {}
    for variant in ("pixel", "scalar"):
        zargs, kw = _zogy_args(jax, dev, meta, variant)
        call = functools.partial(_run_blocking, zogy, *zargs, **kw)
        probe = zogy(*zargs, **kw)  # the kernel path zogy chooses for these PSFs (box or full grid)
        mode = "full" if bool(probe.full_grid) else "box"
        del probe
        jax.clear_caches()
        # compile time and HLO of that path, with the images traced and the PSFs as constants
        wrapped = jax.jit(functools.partial(_zogy_images, zogy, zargs[2], zargs[3], kernel_mode=mode, **kw))
        zimg = (zargs[0], zargs[1], zargs[4], zargs[5])
        t0 = time.perf_counter()
        lowered = wrapped.lower(*zimg)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        res[f"{variant}_trace_s"], res[f"{variant}_compile_s"] = t1 - t0, t2 - t1
        res[f"{variant}_hlo"] = _hlo_summary(compiled.as_text(), args.dtype, fft_shape)
        del lowered, wrapped, compiled
        jax.clear_caches()
        t0 = time.perf_counter()
        out = call()
        res[f"{variant}_first_call_s"] = time.perf_counter() - t0
        call()  # one more warm-up
        c0 = _cpu_s()
        ts = timed(call, rep)
        res[f"{variant}_cpu_s"] = (_cpu_s() - c0) / rep
        res[f"{variant}_warm_s"], res[f"{variant}_warm_all_s"] = _median(ts), ts
        res[f"{variant}_over_rfft2"] = res[f"{variant}_warm_s"] / res["rfft2_jnp_s"]
        out = call()
        res[f"{variant}_full_grid"], res[f"{variant}_kernel_tail"] = bool(out.full_grid), float(out.kernel_tail)
        scorr[variant] = np.asarray(out.score_corr, np.float64)
        res[f"{variant}_quality"] = scorr_quality(scorr[variant], a["sky"], meta)
        res[f"{variant}_out_dtype"] = str(out.score_corr.dtype)
        del out
    if args.profile:
        res["profile"] = _profile_jax(jax, jnp, zogy, dev, meta, rep)
    if args.task:
        res["task"] = _time_task(jax, a, meta, rep)
    del dev

    # (4) oracle and (5) the tests' numpy reference, float64, same process
    a64, _ = load_pair(args.data, np.float64)
    border = 3 * meta["psf_size"]
    ofile = Path(args.data) / "oracle_scorr.npy"
    if args.oracle:
        out = _oracle_call(a64, meta, fft_shape)
        ts = timed(lambda: _oracle_call(a64, meta, fft_shape), rep)
        res["oracle_warm_s"], res["oracle_warm_all_s"] = _median(ts), ts
        res["oracle_quality"] = scorr_quality(out[4], a64["sky"], meta)
        np.save(ofile, out[4])
        del out
    if ofile.exists():
        o = np.load(ofile)
        for variant in scorr:
            res[f"{variant}_scorr_rms_vs_oracle"] = _interior_rms(scorr[variant], o, border)
        del o
    if args.numpyref:
        t0 = time.perf_counter()
        out = _numpyref_call(a64, meta, fft_shape)
        res["numpyref_s"] = time.perf_counter() - t0
        res["numpyref_quality"] = scorr_quality(out["score_corr"], a64["sky"], meta)
        res["pixel_scorr_rms_vs_numpyref"] = _interior_rms(scorr["pixel"], out["score_corr"], border)
    res["loadavg_end"] = os.getloadavg()
    return res


def _profile_jax(jax, jnp, zogy, dev, meta, rep):
    """Extra timings that help locate cost: no score, and FFT counts in the compiled HLO."""
    out = {}
    for variant in ("pixel", "scalar"):
        zargs, kw = _zogy_args(jax, dev, meta, variant)
        call = functools.partial(_run_blocking, zogy, *zargs, calculate_score=False, **kw)
        call()
        out[f"{variant}_noscore_warm_s"] = _median(timed(call, rep))
    return out


def _time_task(jax, a, meta, rep):
    """``ZogyImagePsfMatchTask.run`` on the same pair as Exposures (per-pixel variance planes, default
    config without calibration scaling, no warping): first call and warm median."""
    from jaxdiff.image.image import Exposure, Image, MaskedImage
    from jaxdiff.image.psf import ImagePsf
    from jaxdiff.tasks import ZogyImagePsfMatchTask

    def exposure(img, var, psf, ratio):
        return Exposure(MaskedImage(Image(img), variance=Image(var)), psf=ImagePsf(np.asarray(psf) / ratio))

    sci = exposure(a["new"] / meta["flux_ratio"], a["var_new"] / meta["flux_ratio"] ** 2, a["psf_new"], 1.0)
    tmpl = exposure(a["ref"], a["var_ref"], a["psf_ref"], 1.0)
    task = ZogyImagePsfMatchTask()
    task.config.zogyConfig.scaleByCalibration = False

    def call():
        out = task.run(sci, tmpl, doWarping=False)
        jax.block_until_ready((out.subtractedExposure.image.array, out.scoreCorrExposure.image.array))

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    call()
    return {"first_call_s": first, "warm_s": _median(timed(call, rep))}


def worker_mem(args):
    """Peak RSS increase of ONE call in a fresh process (inputs already on the device, compiled AOT)."""
    res = {"variant": args.variant, "dtype": args.dtype}
    if args.variant == "oracle":
        a, meta = load_pair(args.data, np.float64)
        fft_shape = oracle_fft_shape(a["new"].shape, a["psf_new"].shape)
        with PeakMemory() as pm:
            out = _oracle_call(a, meta, fft_shape)
        del out
    else:
        jax = _jax_setup(args.dtype)
        from jaxdiff.core.zogy import zogy

        a, meta = load_pair(args.data, np.dtype(args.dtype))
        dev = {k: jax.device_put(v) for k, v in a.items() if k not in ("sky", "psf_new", "psf_ref")}
        jax.block_until_ready(dev)
        for k in ("psf_new", "psf_ref"):  # float64 numpy stamps, as in the jax worker
            dev[k] = np.load(Path(args.data) / f"{k}.npy").astype(np.float64)
        del a  # the device copies are the inputs
        zargs, kw = _zogy_args(jax, dev, meta, args.variant)
        compiled = jax.jit(functools.partial(zogy, **kw)).lower(*zargs).compile()
        with PeakMemory() as pm:
            out = jax.block_until_ready(compiled(*zargs))
        res["output_bytes"] = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(out)))
        del out
    res.update(start_rss=pm.start, peak_rss=pm.peak, increase=pm.increase, reset_ok=pm.reset_ok)
    return res


def worker_peer(args):
    """One peer, one size, fresh process; runs in the peer venv (numpy/scipy only here)."""
    import logging

    logging.disable(logging.WARNING)
    a, meta = load_pair(args.data, np.float64)
    fr = meta["flux_ratio"]
    res = {"peer": args.peer, "size": meta["size"]}
    if args.peer == "pyzogy":
        import importlib.util

        import mirar

        path = os.path.join(os.path.dirname(mirar.__file__), "processors", "zogy", "pyzogy.py")
        spec = importlib.util.spec_from_file_location("mirar_pyzogy", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # the module only; mirar's package __init__ pulls in pandas, torch, ...
        res["version"] = getattr(mirar, "__version__", None) or _dist_version("mirar")
        # pyzogy expects gain-matched images: divide the new image and its sigma by F_n/F_r
        inputs = (a["new"] / fr, a["ref"], a["psf_new"], a["psf_ref"], np.sqrt(a["var_new"]) / fr,
                  np.sqrt(a["var_ref"]), np.sqrt(meta["sky_var_new"]) / fr, np.sqrt(meta["sky_var_ref"]))  # fmt: skip

        def run():
            args_ = [x.copy() if isinstance(x, np.ndarray) else x for x in inputs]  # it edits inputs in place
            return mod.pyzogy(*args_, dx=0.0, dy=0.0)[2]
    elif args.peer == "properimage":
        from properimage import operations
        from properimage.single_image import SingleImage

        res["version"] = _dist_version("properimage")

        class GivenPSF(SingleImage):
            """SingleImage whose PSF is given (properimage only estimates PSFs; this overrides
            the one method subtract() asks for the PSF, returning the true stamp)."""

            def __init__(self, img, psf, **kw):
                self._given_psf = np.asarray(psf, np.float64)
                super().__init__(img, **kw)

            def get_variable_psf(self, inf_loss=None, shape=None):
                return [[None], [self._given_psf.copy()]]

        def run():  # defaults: fits beta (flux ratio) and shift; uses its own V = data + 1
            ref, new = GivenPSF(a["ref"], a["psf_ref"]), GivenPSF(a["new"], a["psf_new"])
            try:
                return operations.subtract(ref=ref, new=new, fitted_psf=False)[2]
            finally:
                for si in (ref, new):
                    try:
                        si._clean()
                    except Exception:  # noqa: BLE001
                        pass
    else:
        raise SystemExit(f"unknown peer {args.peer}")
    ts = []
    for i in range(args.repeats):
        if i == 0:
            with PeakMemory() as pm:
                t0 = time.perf_counter()
                s = run()
                ts.append(time.perf_counter() - t0)
            res.update(mem_increase=pm.increase, mem_reset_ok=pm.reset_ok)
        else:
            t0 = time.perf_counter()
            s = run()
            ts.append(time.perf_counter() - t0)
    res["times_s"] = ts
    res["median_s"] = _median(ts)
    res["quality"] = scorr_quality(np.real(s), a["sky"], meta)
    return res


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


# ======================================================================================
# driver


def _run_child(argv, python, timeout, label):
    """Run one worker; return its JSON dict, or {'error': ...} / {'error': 'timeout'}."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [python, str(Path(__file__).resolve()), *argv, "--out", out]
    t0 = time.perf_counter()
    print(f"  [{label}] ...", end="", flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        print(f" timeout after {timeout:.0f} s", flush=True)
        return {"error": "timeout", "timeout_s": timeout}
    dt = time.perf_counter() - t0
    try:
        res = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        print(f" FAILED rc={p.returncode}: {' | '.join(tail)}", flush=True)
        return {"error": f"rc={p.returncode}: {' | '.join(tail)}"}
    finally:
        Path(out).unlink(missing_ok=True)
    print(f" {dt:.1f} s", flush=True)
    return res


def _fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}" if x >= 0.01 else f"{x:.4f}"


def _sci(x):
    return "—" if x is None else f"{x:.2g}"


def _peer_cell(r):
    if r is None:
        return "—"
    if "error" in r:
        return "timeout" if r["error"] == "timeout" else "failed"
    return _fmt(r["median_s"])


def build_report(env, versions, peer_versions, results, args) -> tuple[str, list[str]]:
    lines = []
    lines.append(f"Run {env['date']} — `{' '.join(['python benchmarks/bench_zogy.py', *sys.argv[1:]])}`\n")
    lines.append(f"- CPU: {env['cpu']}, {env['cores']} cores, {env['ram_gib']} GiB RAM; {env['platform']}")
    lines.append(f"- load average at start / end: {' '.join(f'{x:.2f}' for x in env['loadavg'])} / "
                 f"{' '.join(f'{x:.2f}' for x in env['loadavg_end'])}")  # fmt: skip
    lines.append(f"- Python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if peer_versions:
        lines.append("- peer venv: " + ", ".join(f"{k} {v}" for k, v in peer_versions.items()))
    j0 = next((r for r in results.values() if "jax" in r and "error" not in r["jax"]), None)
    if j0:
        j = j0["jax"]
        lines.append(f"- JAX backend {j['backend']}, device {j['device']}; x64 enabled only in the float64 workers; "
                     f"XLA_FLAGS={env['xla_flags'] or '(unset)'}")  # fmt: skip
    lines.append(f"- repeats {args.repeats} (median), peers {args.peer_repeats} call(s) per size, "
                 f"peer timeout {args.peer_timeout:.0f} s; total wall time {env['wall_s'] / 60:.1f} min\n")  # fmt: skip

    lines.append("### Time per call (seconds, median, warm)\n")
    lines.append("| N | dtype | fft grid | rfft2 jnp | rfft2 scipy (2 w) | jaxdiff per-pixel | ×rfft2 | jaxdiff scalar | ×rfft2 "
                 "| compile (pixel/scalar) | first call | oracle f64 | numpy ref | properimage | mirar pyzogy |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (n, dt), r in sorted(results.items()):
        if "jax" not in r:
            continue
        j = r["jax"]
        if "error" in j:
            lines.append(f"| {n}² | {dt} | failed: {j['error']} |" + " |" * 12)
            continue
        pe = results.get((n, "_peers"), {}) if dt == args.dtypes[0] else {}
        lines.append(
            f"| {n}² | {dt} | {j['fft_shape'][0]}² | {_fmt(j['rfft2_jnp_s'])} | {_fmt(j['rfft2_scipy_s'])} "
            f"| {_fmt(j['pixel_warm_s'])} | {j['pixel_over_rfft2']:.1f} | {_fmt(j['scalar_warm_s'])} "
            f"| {j['scalar_over_rfft2']:.1f} | {j['pixel_compile_s']:.1f} / {j['scalar_compile_s']:.1f} "
            f"| {j['pixel_first_call_s']:.1f} | {_fmt(j.get('oracle_warm_s'))} | {_fmt(j.get('numpyref_s'))} "
            f"| {_peer_cell(pe.get('properimage'))} | {_peer_cell(pe.get('pyzogy'))} |"
        )
    lines.append("")
    lines.append("\"×rfft2\": jaxdiff warm time over one jitted `jnp.fft.rfft2` of the image size (N², same dtype). "
                 "\"fft grid\": the padded grid jaxdiff's default `fft_shape` uses. Compile = `jax.jit(zogy).lower().compile()`; "
                 "first call = first `zogy` call after `jax.clear_caches()` (trace + compile + run). Oracle, numpy ref and "
                 "peers are float64 and dtype-independent (measured once per size, in the first dtype's process).\n")  # fmt: skip

    lines.append("### CPU time per call (user + system, all threads) and machine load during each worker\n")
    lines.append("CPU seconds are less sensitive than wall time to other processes on the machine; the load is the "
                 "1-minute load average when the worker started and ended (the worker itself adds up to 2).\n")  # fmt: skip
    lines.append("| N | dtype | load start → end | rfft2 jnp cpu-s | per-pixel cpu-s | ×rfft2 | scalar cpu-s | ×rfft2 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for (n, dt), r in sorted(results.items()):
        j = r.get("jax") if isinstance(r, dict) else None
        if not j or "error" in j or "pixel_cpu_s" not in j:
            continue
        c0 = max(j["rfft2_jnp_cpu_s"], 1e-9)
        lines.append(f"| {n}² | {dt} | {j['loadavg_start'][0]:.2f} → {j['loadavg_end'][0]:.2f} | {_fmt(c0)} "
                     f"| {_fmt(j['pixel_cpu_s'])} | {j['pixel_cpu_s'] / c0:.1f} | {_fmt(j['scalar_cpu_s'])} "
                     f"| {j['scalar_cpu_s'] / c0:.1f} |")  # fmt: skip
    lines.append("")

    chains = [(k, r["jax"]) for k, r in sorted(results.items())
              if isinstance(r, dict) and "fft_chain_pixel_s" in r.get("jax", {})]  # fmt: skip
    if chains:
        lines.append("### The FFT floor of the algorithm\n")
        lines.append("`fft_chain` in `bench_zogy.py`: only the full-grid FFTs that jaxdiff's ZOGY needs (scalar variances: "
                     "2 rfft2 + 2 irfft2; per-pixel maps with compact box kernels: 4 + 4; with kernels on the full grid, "
                     "for PSF pairs whose kernels are not compact: 8 + 8, four of each to square the four kernels), on "
                     "jaxdiff's grid, with nothing but scalar multiply-adds between them, timed in the same worker. On "
                     "XLA:CPU an irfft2 costs about 1.7 rfft2 and every full-size temporary is a fresh, page-faulted "
                     "mmap. The kernel path is the one `zogy` chose for the benchmark's PSFs.\n")  # fmt: skip
        lines.append("| N | dtype | rfft2 jnp | FFT chain scalar | ×rfft2 | jaxdiff scalar ÷ chain | FFT chain per-pixel | ×rfft2 "
                     "| jaxdiff per-pixel ÷ chain | full-grid chain per-pixel | ×rfft2 | kernel path (tail) |")  # fmt: skip
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (n, dt), j in chains:
            fl = j["rfft2_jnp_s"]
            full = j.get("fft_chain_pixelfull_s")
            path = "full grid" if j.get("pixel_full_grid") else "box"
            lines.append(f"| {n}² | {dt} | {_fmt(fl)} | {_fmt(j['fft_chain_scalar_s'])} ({j['fft_chain_scalar_n_fft']} FFTs) "
                         f"| {j['fft_chain_scalar_s'] / fl:.1f} | {j['scalar_warm_s'] / j['fft_chain_scalar_s']:.2f} "
                         f"| {_fmt(j['fft_chain_pixel_s'])} ({j['fft_chain_pixel_n_fft']} FFTs) | {j['fft_chain_pixel_s'] / fl:.1f} "
                         f"| {j['pixel_warm_s'] / j['fft_chain_pixel_s']:.2f} "
                         f"| {_fmt(full)} ({j.get('fft_chain_pixelfull_n_fft')} FFTs) | {(full or 0) / fl:.1f} "
                         f"| {path} ({j.get('pixel_kernel_tail', float('nan')):.1e}) |")  # fmt: skip
        lines.append("")

    tuned = {k[0]: v for k, v in results.items() if k[1] == "_tuned" and "error" not in v}
    if tuned:
        lines.append("### Allocator effect (informational; NOT the default configuration)\n")
        lines.append("Same worker, with glibc told to keep and reuse freed memory (`mallopt`: one arena, no mmap, "
                     "no trim — what `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` does). "
                     "By default every XLA temporary larger than 32 MiB is a fresh mmap, so each call pays page faults "
                     "for each one, and so does the rfft2 floor.\n")  # fmt: skip
        lines.append("| N | dtype | malloc | rfft2 jnp | jaxdiff per-pixel | ×rfft2 | jaxdiff scalar | ×rfft2 "
                     "| task run() warm | task ÷ core per-pixel |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for n, t in sorted(tuned.items()):
            d = results.get((n, t["dtype"]), {}).get("jax", {})
            for label, j in (("default", d), ("tuned", t)):
                if j and "error" not in j:
                    task = j.get("task", {}).get("warm_s")
                    task_cols = (f"{_fmt(task)} | {task / j['pixel_warm_s']:.2f}" if task else "— | —")
                    lines.append(f"| {n}² | {j['dtype']} | {label} | {_fmt(j['rfft2_jnp_s'])} | {_fmt(j['pixel_warm_s'])} "
                                 f"| {j['pixel_over_rfft2']:.1f} | {_fmt(j['scalar_warm_s'])} | {j['scalar_over_rfft2']:.1f} "
                                 f"| {task_cols} |")  # fmt: skip
        lines.append("")

    lines.append("### Peak memory of one call (fresh process, RSS increase over the inputs already in memory)\n")
    lines.append("| N | dtype | input pair (2 images) | jaxdiff per-pixel | ×pair | jaxdiff scalar | ×pair | outputs | oracle f64 | properimage | mirar pyzogy |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")

    def gb(b):
        return "—" if b is None else f"{b / 2**30:.2f} GiB"

    def ratio(m, pair):
        return "—" if "increase" not in m else f"{m['increase'] / pair:.1f}"

    for (n, dt), r in sorted(results.items()):
        if "jax" not in r:
            continue
        pair = 2 * n * n * np.dtype(dt).itemsize
        mp, ms = r.get("mem_pixel", {}), r.get("mem_scalar", {})
        first = dt == args.dtypes[0]
        pe = results.get((n, "_peers"), {}) if first else {}
        mo = results.get((n, "_oracle_mem"), {}) if first else {}
        lines.append(
            f"| {n}² | {dt} | {gb(pair)} | {gb(mp.get('increase'))} | {ratio(mp, pair)} | {gb(ms.get('increase'))} | {ratio(ms, pair)} "
            f"| {gb(mp.get('output_bytes'))} | {gb(mo.get('increase'))} "
            f"| {gb((pe.get('properimage') or {}).get('mem_increase'))} | {gb((pe.get('pyzogy') or {}).get('mem_increase'))} |"
        )
    lines.append("")

    lines.append("### Quality: S_corr on source-free sky (mean / std), transients found (of 10), false positives (|S_corr| > 5)\n")
    lines.append("| N | jaxdiff f32 per-pixel | jaxdiff f32 scalar | jaxdiff f64 per-pixel | oracle f64 | rms(jaxdiff f32 − oracle) | rms(f64 − oracle) | properimage | mirar pyzogy |")
    lines.append("|---|---|---|---|---|---|---|---|---|")

    def q(d):
        return "—" if not d else f"{d['sky_mean']:+.3f} / {d['sky_std']:.3f}, {d['transients_found']}, {d['false_positives']}"

    def pq(pe, p):
        return q((pe.get(p) or {}).get("quality"))

    for n in sorted({k[0] for k in results}):
        j32 = results.get((n, "float32"), {}).get("jax", {})
        j64 = results.get((n, "float64"), {}).get("jax", {})
        orc = j32.get("oracle_quality") or j64.get("oracle_quality")
        pe = results.get((n, "_peers"), {})
        lines.append(
            f"| {n}² | {q(j32.get('pixel_quality'))} | {q(j32.get('scalar_quality'))} | {q(j64.get('pixel_quality'))} "
            f"| {q(orc)} | {_sci(j32.get('pixel_scorr_rms_vs_oracle'))} | {_sci(j64.get('pixel_scorr_rms_vs_oracle'))} "
            f"| {pq(pe, 'properimage')} | {pq(pe, 'pyzogy')} |"
        )
    lines.append("")
    lines.append("The scalar-variance run uses the sky level as the variance everywhere, so its S_corr is not the "
                 "per-pixel one near stars (more false positives on bright stars are expected); properimage's S_corr "
                 "is on a different scale (~1e-3), as peers.md reports.\n")  # fmt: skip

    verdicts = acceptance(results, args)
    lines.append("### Acceptance (4096² float32)\n")
    lines += [f"- {v}" for v in verdicts]
    lines.append("")
    if args.profile:
        lines.append("### Profile details\n")
        for (n, dt), r in sorted(results.items()):
            j = r.get("jax", {})
            if "pixel_hlo" in j:
                p = j.get("profile", {})
                lines.append(f"- {n}² {dt}: grid {j['fft_shape']}, rfft2 on the grid {_fmt(j['rfft2_jnp_grid_s'])} s; "
                             f"transforms in the HLO per-pixel {j['pixel_hlo']['n_fft_ops']} (full grid "
                             f"{j['pixel_hlo'].get('n_full_grid_fft')}), scalar {j['scalar_hlo']['n_fft_ops']} (full grid "
                             f"{j['scalar_hlo'].get('n_full_grid_fft')}); "
                             f"({j['pixel_hlo']['fft_ops']}); f64/c128 buffers in float32 HLO "
                             f"{j['pixel_hlo'].get('f64_or_c128_buffers', '—')}; "
                             f"no-score warm pixel/scalar {_fmt(p.get('pixel_noscore_warm_s'))} / {_fmt(p.get('scalar_noscore_warm_s'))} s")  # fmt: skip
        lines.append("")
    return "\n".join(lines), verdicts


def acceptance(results, args):
    n, dt = 4096, "float32"
    r = results.get((n, dt))
    if not r or "jax" not in r or "error" in r["jax"]:
        return [f"NOT RUN: no {n}² {dt} jaxdiff result in this run"]
    j = r["jax"]
    out = []
    fl = j["rfft2_jnp_s"]
    for variant, lim in (("pixel", 20), ("scalar", 10)):
        ratio = j[f"{variant}_over_rfft2"]
        ok = "PASS" if ratio <= lim else "FAIL"
        path = "full-grid kernels" if j.get(f"{variant}_full_grid") else "box kernels"
        nfull = j.get(f"{variant}_hlo", {}).get("n_full_grid_fft")
        out.append(f"{ok}: {variant} variance warm {j[f'{variant}_warm_s']:.3f} s = {ratio:.1f} × rfft2 ({fl:.3f} s); "
                   f"target ≤ {lim}× ({path}; {nfull} full-grid FFTs in the compiled program)")  # fmt: skip
        if f"fft_chain_{variant}_s" in j:
            ch = j[f"fft_chain_{variant}_s"]
            out.append(f"INFO: the algorithm's {j[f'fft_chain_{variant}_n_fft']} full-grid FFTs alone (`fft_chain`) take "
                       f"{ch:.3f} s = {ch / fl:.1f} × rfft2 in this run; jaxdiff = {j[f'{variant}_warm_s'] / ch:.2f} × that floor")  # fmt: skip
    for size in (2048, 4096):
        jt = (results.get((size, dt)) or {}).get("jax", {})
        if "task" in jt:
            over = jt["task"]["warm_s"] / jt["pixel_warm_s"] - 1
            out.append(f"{'PASS' if over <= 0.5 else 'FAIL'}: {size}² `ZogyImagePsfMatchTask.run` warm {jt['task']['warm_s']:.3f} s "
                       f"vs core per-pixel {jt['pixel_warm_s']:.3f} s: +{100 * over:.0f} %; target ≤ +50 %")  # fmt: skip
        tt = results.get((size, "_tuned")) or {}
        if "task" in tt and tt.get("dtype") == dt:
            over = tt["task"]["warm_s"] / tt["pixel_warm_s"] - 1
            out.append(f"INFO: with the `jaxdiff` command's allocator (tuned malloc): {size}² task warm "
                       f"{tt['task']['warm_s']:.3f} s vs core per-pixel {tt['pixel_warm_s']:.3f} s: +{100 * over:.0f} %")  # fmt: skip
    t = j["pixel_warm_s"]
    pe = results.get((n, "_peers"), {})
    measured = {k: v["median_s"] for k, v in pe.items() if v and "median_s" in v}
    if measured:
        best = min(measured, key=measured.get)
        sp = measured[best] / t
        out.append(f"{'PASS' if sp >= 5 else 'FAIL'}: {sp:.1f}× faster than the fastest peer measured in this run "
                   f"({best} {measured[best]:.1f} s vs jaxdiff per-pixel {t:.3f} s); target ≥ 5×")  # fmt: skip
    else:
        out.append("NOT MEASURED: no peer completed at 4096² in this run")
    if j.get("oracle_warm_s"):
        out.append(f"INFO: {j['oracle_warm_s'] / t:.1f}× faster than the float64 oracle measured in this run ({j['oracle_warm_s']:.2f} s)")
    pm = PEERS_MD[n]
    fastest_md = min(v for k, v in pm.items() if k != "oracle")
    out.append(f"INFO (figures from peers.md, not this run): fastest peer there {fastest_md:.1f} s (Vreeswijk) → "
               f"{fastest_md / t:.0f}× ; oracle there {pm['oracle']:.2f} s → {pm['oracle'] / t:.1f}×")  # fmt: skip
    mp = r.get("mem_pixel", {})
    pair = 2 * n * n * 4
    if "increase" in mp:
        ratio = mp["increase"] / pair
        ok = "PASS" if ratio <= 12 else "FAIL"
        out.append(f"{ok}: peak memory of one per-pixel call {mp['increase'] / 2**30:.2f} GiB = {ratio:.1f} × the input pair "
                   f"({pair / 2**20:.0f} MiB); target ≤ 12×" + ("" if mp.get("reset_ok") else " (VmHWM reset failed: upper bound)"))  # fmt: skip
        ms = r.get("mem_scalar", {})
        if "increase" in ms:
            out.append(f"INFO: scalar-variance call peak {ms['increase'] / 2**30:.2f} GiB = {ms['increase'] / pair:.1f} × the pair")
    else:
        out.append("NOT MEASURED: peak memory")
    return out


def write_readme(report: str):
    write_results_block(README, RESULTS_START, RESULTS_END, report, '## Results')


def driver(args):
    t_start = time.perf_counter()
    env = environment()
    peers = {p.strip() for p in args.peers.split(",") if p.strip()} if args.peers else set()
    unknown = peers - set(ALL_PEERS)
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from {ALL_PEERS}")
    versions = package_versions(sys.executable, ZOGY_PACKAGES)
    peer_python = args.peer_python
    peer_versions = {}
    if peers & set(PEER_NAMES):
        if not Path(peer_python).exists():
            print(f"peer python {peer_python} not found: peers skipped (see README for how to build it)")
            peers -= set(PEER_NAMES)
        else:
            peer_versions = {k: v for k, v in package_versions(peer_python, ZOGY_PACKAGES).items() if k not in ("jax", "jaxlib")}
    print(f"# environment: {json.dumps(env)}")
    print(f"# versions: {versions}")
    if peer_versions:
        print(f"# peer venv ({peer_python}): {peer_versions}")

    workdir = Path(args.workdir)
    results: dict = {}
    for n in args.sizes:
        ddir = workdir / f"pair_{n}_seed{args.seed}"
        if not (ddir / "meta.json").exists():
            arrays, meta = make_pair(n, seed=args.seed)
            save_pair(ddir, arrays, meta)
            print(f"== {n}²: generated pair in {meta.gen_seconds:.1f} s ({meta.n_stars} stars) -> {ddir}", flush=True)
            del arrays
        else:
            print(f"== {n}²: using cached pair {ddir}", flush=True)
        (ddir / "oracle_scorr.npy").unlink(missing_ok=True)
        for i, dt in enumerate(args.dtypes):
            first = i == 0
            argv = ["--worker", "jax", "--data", str(ddir), "--dtype", dt, "--repeats", str(args.repeats),
                    "--floor-repeats", str(args.floor_repeats)]
            if first and "oracle" in peers:
                argv.append("--oracle")
            if first and "numpyref" in peers and (n <= args.numpyref_max):
                argv.append("--numpyref")
            if args.profile:
                argv.append("--profile")
            if args.task and n >= 2048:
                argv.append("--task")
            wait_for_load(args.max_load, args.max_wait)
            r = {"jax": _run_child(argv, sys.executable, args.jax_timeout, f"jax {n}² {dt}")}
            if not args.no_memory:
                for variant in ("pixel", "scalar"):
                    r[f"mem_{variant}"] = _run_child(["--worker", "mem", "--data", str(ddir), "--dtype", dt,
                                                      "--variant", variant], sys.executable, args.jax_timeout,
                                                     f"mem {n}² {dt} {variant}")  # fmt: skip
            results[(n, dt)] = r
            j = r["jax"]
            if "error" not in j:
                print(f"    rfft2 jnp {j['rfft2_jnp_s']:.4f} s, scipy {j['rfft2_scipy_s']:.4f} s; grid {j['fft_shape']}; "
                      f"pixel {j['pixel_warm_s']:.3f} s ({j['pixel_over_rfft2']:.1f}×), scalar {j['scalar_warm_s']:.3f} s "
                      f"({j['scalar_over_rfft2']:.1f}×); compile {j['pixel_compile_s']:.1f}/{j['scalar_compile_s']:.1f} s; "
                      f"cpu-s/call rfft2 {j['rfft2_jnp_cpu_s']:.4f} pixel {j['pixel_cpu_s']:.3f} scalar {j['scalar_cpu_s']:.3f}; "
                      f"load {j['loadavg_start'][0]:.2f}->{j['loadavg_end'][0]:.2f}",
                      flush=True)  # fmt: skip
                for k in ("pixel_quality", "scalar_quality", "oracle_quality", "numpyref_quality"):
                    if k in j:
                        print(f"    S_corr {k.replace('_quality', ''):8s}: {j[k]}", flush=True)
                for k in ("pixel_scorr_rms_vs_oracle", "scalar_scorr_rms_vs_oracle", "pixel_scorr_rms_vs_numpyref"):
                    if k in j:
                        print(f"    {k}: {j[k]:.3g}")
                if "oracle_warm_s" in j:
                    print(f"    oracle {j['oracle_warm_s']:.3f} s", flush=True)
        if args.tuned_malloc:
            results[(n, "_tuned")] = _run_child(["--worker", "jax", "--data", str(ddir), "--dtype", args.dtypes[0],
                                                 "--repeats", str(args.repeats), "--floor-repeats",
                                                 str(args.floor_repeats), "--mallopt",
                                                 *(["--task"] if args.task and n >= 2048 else [])], sys.executable,
                                                args.jax_timeout, f"jax {n}² {args.dtypes[0]} tuned malloc")  # fmt: skip
        if "oracle" in peers and not args.no_memory:
            results[(n, "_oracle_mem")] = _run_child(["--worker", "mem", "--data", str(ddir), "--dtype", "float64",
                                                      "--variant", "oracle"], sys.executable, args.jax_timeout,
                                                     f"mem {n}² oracle")  # fmt: skip
        pr = {}
        for peer in sorted(peers & set(PEER_NAMES)):
            reps = args.peer_repeats if n < 2048 else 1
            pr[peer] = _run_child(["--worker", "peer", "--peer", peer, "--data", str(ddir), "--repeats", str(reps)],
                                  peer_python, args.peer_timeout * reps + 60, f"{peer} {n}²")  # fmt: skip
            if "median_s" in pr[peer]:
                print(f"    {peer}: {pr[peer]['times_s']} s; S_corr {pr[peer]['quality']}", flush=True)
        results[(n, "_peers")] = pr
        if not args.keep_data:
            for f in ddir.glob("*.npy"):
                f.unlink()
            (ddir / "meta.json").unlink(missing_ok=True)

    env["loadavg_end"] = os.getloadavg()
    env["wall_s"] = time.perf_counter() - t_start
    report, verdicts = build_report(env, versions, peer_versions, results, args)
    print()
    print(report)
    if args.json:
        write_results_json(args.json, env, versions, peer_versions, results)
    if args.write_readme:
        write_readme(report)
        print(f"\nwrote results section of {README}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3, help="warm calls per jaxdiff/oracle timing (median)")
    p.add_argument("--floor-repeats", type=int, default=15, help="calls per rfft2 floor timing (median)")
    p.add_argument("--tuned-malloc", action="store_true",
                   help="also time jaxdiff (first dtype) with glibc tuned to reuse memory (informational, not default)")
    p.add_argument("--peers", default="properimage,pyzogy,oracle,numpyref",
                   help=f"comma list from {ALL_PEERS}; '' for none")  # fmt: skip
    p.add_argument("--peer-python", default="/tmp/peervenv/bin/python", help="python of the peer venv")
    p.add_argument("--peer-repeats", type=int, default=2, help="calls per peer below 2048² (1 from 2048² up)")
    p.add_argument("--peer-timeout", type=float, default=300.0, help="seconds per peer call")
    p.add_argument("--jax-timeout", type=float, default=900.0, help="seconds per jax/mem worker")
    p.add_argument("--numpyref-max", type=int, default=2048, help="largest size for the tests' numpy reference")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="before each jax worker wait until the 1-min load average is below this (0: don't wait)")
    p.add_argument("--max-wait", type=float, default=120.0, help="longest wait for --max-load, seconds")
    p.add_argument("--profile", action="store_true", help="extra timings (no score) and compiled-HLO counts")
    p.add_argument("--task", action="store_true",
                   help="also time ZogyImagePsfMatchTask.run on the same pair (2048² and up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "jaxdiff_bench"))
    p.add_argument("--keep-data", action="store_true", help="keep the generated .npy pairs in --workdir")
    p.add_argument("--json", help="also write all raw results to this JSON file")
    p.add_argument("--write-readme", action="store_true", help="rewrite the results section of benchmarks/README.md")
    # worker-only options
    p.add_argument("--worker", choices=["jax", "mem", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="pixel", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--oracle", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--numpyref", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = {"jax": worker_jax, "mem": worker_mem, "peer": worker_peer}[args.worker](args)
        Path(args.out).write_text(json.dumps(res, default=float))
        return
    driver(args)


if __name__ == "__main__":
    main()
