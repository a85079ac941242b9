#!/usr/bin/env python
"""Benchmark jaxdiff's Alard-Lupton subtraction (``ImagePsfMatchTask.subtractExposures``) against
the FFT floor and the PyPI peers that run here (SFFT with its numpy backend, OIS), in one run.

Usage::

    python benchmarks/bench_al.py --sizes 1024 2048 4096 --orders 1 2 --peers sfft ois --write-readme
    python benchmarks/bench_al.py --quick          # 512² smoke run, short peer timeout

Every measurement runs in a child process: a "gen" worker simulates one pair per size with
``jaxdiff.testing.sim.simulate_pair`` (the peers.md scene) and saves it as .npy (+ FITS for SFFT); one
fresh "jax" worker per (size, spatial order, precision) times the first call (trace + compile +
run), the warm calls, the FFT floor and the peak RSS; one fresh "peer" worker per (peer, size,
order) runs in the peer virtual environment (``--peer-python``, no jax there) under a timeout and
an RSS guard.  HOTPANTS is not installable here: its figures are quoted from peers.md.
See benchmarks/README.md ("Alard–Lupton") for what is measured and the caveats.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402  (after the sys.path insert that makes _common importable)
    PeakMemory,
    al_expected_variance,
    al_quality,
    environment,
    package_versions,
    rss_bytes,
    timed,
    trim_heap,
    wait_for_load,
    write_results_block,
    write_results_json,
)

README = HERE / "README.md"
RESULTS_START = "<!-- AL-RESULTS:BEGIN -->"
RESULTS_END = "<!-- AL-RESULTS:END -->"
# the project survey of peer codes (peers.md, outside this repository; quoted in README.md), AL section (NOT measured in this run; 2-core machine, FITS I/O included)
PEERS_MD = {
    1024: {"oracle": "0.08 s", "hotpants": 2.0, "hotpants_txt": "1.4–2.0 s, 86 MB", "sfft": "20 s, 3.1 GB", "ois": "11–18 s"},
    2048: {"oracle": "0.51 s", "hotpants": 5.1, "hotpants_txt": "5.1 s, 164 MB", "sfft": "70–111 s, 11.5 GB", "ois": "59 s"},
    4096: {"oracle": "2.2 s", "hotpants": 23.0, "hotpants_txt": "23 s, 500 MB", "sfft": "does not fit in 24 GB", "ois": "221 s"},
}
PEERS = ("sfft", "ois_al", "ois_adaptive")
PEER_LABEL = {"sfft": "SFFT crowded (numpy)", "ois_al": "OIS AL (1 Gaussian, constant kernel)",
              "ois_adaptive": "OIS AdaptiveBramich"}  # fmt: skip
ORDER_FREE_PEERS = ("ois_al",)  # no spatial variation: run once per size, at the first order
# the scene (peers.md): Gaussian PSFs, template sigma 1.5, science sigma 2.2 x (1 +- 10 %), flux ratio 1.1
SIGMA_T, SIGMA_S, PSF_VAR, FLUX_RATIO, BG = 1.5, 2.2, 0.1, 1.1, 10.0
KERNEL_SIZE, BG_ORDER = 21, 1


# ======================================================================================
# gen worker (dev venv): simulate and save one pair


def worker_gen(args):
    import jax  # noqa: F401  (JAX loaded first with its defaults, float32 and x64 off)

    sys.path.insert(0, str(REPO))
    from jaxdiff.testing.sim import simulate_pair

    n = args.size
    t0 = time.perf_counter()
    n_stars = int(round(args.stars_per_mpix * n * n / 1e6))
    pair = simulate_pair(args.seed, (n, n), n_stars=n_stars, template_psf=SIGMA_T, science_psf=SIGMA_S,
                         psf_variation=PSF_VAR, flux_ratio=FLUX_RATIO, background_offset=BG, n_transients=10,
                         transient_snr=20.0, dtype=np.float32)  # fmt: skip
    gen_s = time.perf_counter() - t0
    sci, tmp, tr = pair.science, pair.template, pair.truth
    out = Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "sci": sci.image.array, "sci_var": sci.variance.array, "sci_mask": sci.mask.array,
        "tmp": tmp.image.array, "tmp_var": tmp.variance.array, "tmp_mask": tmp.mask.array,
        "sci_psf_images": np.asarray(sci.getPsf().images), "sci_psf_x": sci.getPsf().xCenters,
        "sci_psf_y": sci.getPsf().yCenters, "tmp_psf": np.asarray(tmp.getPsf().array),
    }  # fmt: skip
    # truth for the quality numbers: expected variance of an ideal difference, sky and bright-star pixels
    yy, xx = np.mgrid[0:n, 0:n]
    sig_map = SIGMA_S * tr.psf_scale_at(xx, yy)
    arrays["var_expected"] = al_expected_variance(sci.variance.array, tmp.variance.array, sig_map, SIGMA_T,
                                                  FLUX_RATIO).astype(np.float32)  # fmt: skip
    del sig_map
    thr_s, thr_t = 0.01 * np.sqrt(tr.sky_science), 0.01 * np.sqrt(tr.sky_template)
    sky = (tr.template_model < thr_t) & (tr.science_model - tr.background < thr_s)
    border = 2 * KERNEL_SIZE
    sky[:border], sky[-border:], sky[:, :border], sky[:, -border:] = False, False, False, False
    for x, y in zip(tr.transient_x, tr.transient_y, strict=True):
        xi, yi = int(round(x)), int(round(y))
        sky[max(yi - 15, 0) : yi + 16, max(xi - 15, 0) : xi + 16] = False
    stars = np.zeros((n, n), bool)
    bright = (tr.flux_template >= 1e4) & (tr.x > border) & (tr.x < n - border) & (tr.y > border) & (tr.y < n - border)
    r = 4
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = dx**2 + dy**2 <= r * r
    for x, y in zip(tr.x[bright], tr.y[bright], strict=True):
        xi, yi = int(round(x)), int(round(y))
        stars[yi - r : yi + r + 1, xi - r : xi + r + 1] |= disk
    arrays["sky"], arrays["stars"] = sky, stars
    for k, v in arrays.items():
        np.save(out / f"{k}.npy", np.asarray(v))
    from astropy.io import fits  # astropy is a jaxdiff dependency

    for k in ("sci", "tmp"):
        fits.PrimaryHDU(np.asarray(arrays[k], np.float32)).writeto(out / f"{k}.fits", overwrite=True)
    meta = {"size": n, "seed": args.seed, "n_stars": n_stars, "n_bright_stars": int(bright.sum()),
            "n_transients": int(len(tr.transient_x)), "psf_size": int(tr.psf_size), "flux_ratio": FLUX_RATIO,
            "sky_science": tr.sky_science, "sky_template": tr.sky_template, "read_noise": tr.read_noise,
            "background_offset": BG, "n_sky": int(sky.sum()), "n_star_pixels": int(stars.sum()),
            "tmp_psf_avg": list(tmp.getPsf().getAveragePosition()), "gen_s": gen_s}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


def _load(data, names):
    return {k: np.load(Path(data) / f"{k}.npy") for k in names}


def _quality(d, diff, *, kernel_sum, var_plane=None):
    return al_quality(diff, d["var_expected"].astype(np.float64), d["sky"], d["stars"], kernel_sum=kernel_sum,
                      flux_ratio=FLUX_RATIO, var_plane=var_plane)  # fmt: skip


def _cpu_s():
    return time.process_time()


def _ru_maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ======================================================================================
# jax worker (dev venv): jaxdiff at one (size, order, precision)


def worker_jax(args):
    import jax

    if args.precision == "x64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO))
    from jaxdiff.image.image import Exposure, Image, Mask, MaskedImage
    from jaxdiff.image.psf import GridPsf, ImagePsf
    from jaxdiff.tasks.image_psf_match import ImagePsfMatchTask

    compile_events = {"trace": 0.0, "lower": 0.0, "compile": 0.0, "n_compiles": 0}
    names = {"/jax/core/compile/jaxpr_trace_duration": "trace", "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
             "/jax/core/compile/backend_compile_duration": "compile"}  # fmt: skip

    def on_event(event, duration, **kw):
        key = names.get(event)
        if key:
            compile_events[key] += float(duration)
            compile_events["n_compiles"] += key == "compile"

    jax.monitoring.register_event_duration_secs_listener(on_event)

    def compile_snapshot():
        return dict(compile_events)

    def compile_delta(before):
        return {k: compile_events[k] - before[k] for k in compile_events}

    meta = json.loads((Path(args.data) / "meta.json").read_text())
    d = _load(args.data, ("sci", "sci_var", "sci_mask", "tmp", "tmp_var", "tmp_mask", "sci_psf_images", "sci_psf_x",
                          "sci_psf_y", "tmp_psf"))  # fmt: skip
    sci_psf = GridPsf(d["sci_psf_images"], d["sci_psf_x"], d["sci_psf_y"])
    tmp_psf = ImagePsf(d["tmp_psf"], averagePosition=tuple(meta["tmp_psf_avg"]))

    def exposures():
        """Fresh exposures (copies) for every call: the task may edit mask planes in place."""
        def mk(p, psf):
            return Exposure(MaskedImage(Image(d[p].copy()), Mask(d[p + "_mask"].copy()), Image(d[p + "_var"].copy())),
                            psf=psf)

        return mk("tmp", tmp_psf), mk("sci", sci_psf)

    res = {"size": meta["size"], "order": args.order, "precision": args.precision, "backend": jax.default_backend(),
           "device": str(jax.devices()[0]), "x64": bool(jax.config.jax_enable_x64), "loadavg_start": os.getloadavg(),
           "n_stars": meta["n_stars"]}  # fmt: skip
    cfg = ImagePsfMatchTask.ConfigClass()
    k = cfg.kernel.active
    k.fitForBackground = True
    k.spatialKernelOrder = args.order
    k.spatialBgOrder = BG_ORDER
    task = ImagePsfMatchTask(config=cfg)
    res["kernel_basis"] = k.kernelBasisSet
    template, science = exposures()
    gc.collect()
    trim_heap()
    rss_inputs = rss_bytes()  # libraries + the input exposures (one copy) + the numpy arrays they came from
    res["rss_inputs"] = rss_inputs

    out = None

    def call():
        nonlocal out
        out = None
        gc.collect()
        tm, sc = exposures()
        t0 = time.perf_counter()
        r = task.subtractExposures(tm, sc)  # host numpy outputs: the task has blocked already
        dt = time.perf_counter() - t0
        out = r
        return dt

    # (a) first call: trace + compile + run
    c = compile_snapshot()
    try:
        t0 = time.perf_counter()
        c0 = _cpu_s()
        res["first_call_s"] = call()
        res["first_call_cpu_s"] = _cpu_s() - c0
        res["first_compile"] = compile_delta(c)
        res["peak_after_first"] = _ru_maxrss()
        # (b) warm calls, same shapes (same pair, fresh exposures); (c) the peak of one warm call
        ts, cpu, comp = [], [], compile_snapshot()
        for i in range(args.repeats):
            if i == 0:
                out = None
                gc.collect()
                tm, sc = exposures()
                with PeakMemory() as pm:
                    t0 = time.perf_counter()
                    c0 = _cpu_s()
                    out = task.subtractExposures(tm, sc)
                    ts.append(time.perf_counter() - t0)
                    cpu.append(_cpu_s() - c0)
                del tm, sc
                res.update(warm_call_peak_increase=pm.increase, warm_call_reset_ok=pm.reset_ok)
            else:
                c0 = _cpu_s()
                ts.append(call())
                cpu.append(_cpu_s() - c0)
        res["warm_all_s"], res["warm_s"] = ts, float(np.median(ts))
        res["warm_cpu_s"] = float(np.median(cpu))
        res["warm_compile"] = compile_delta(comp)
        res["peak_total"] = _ru_maxrss()
        res["peak_increase"] = res["peak_total"] - rss_inputs
        md = task.metadata
        res["metadata"] = {key: md[key] for key in ("nGoodCandidates", "nBadCandidates", "nCandidatesUsed",
                                                    "spatialConditionNum", "nSpatialIterations") if key in md}  # fmt: skip
        sub = out.subtractedExposure
        res["kernel_dims"] = list(np.shape(out.psfMatchingKernel.computeKernelImage(sub.getBBox().getCenter())))
        res["quality"] = _quality(_load(args.data, ("var_expected", "sky", "stars")), sub.image.array,
                                  kernel_sum=out.psfMatchingKernel.getKernelSum(), var_plane=sub.variance.array)
        res["out_dtype"] = str(sub.image.array.dtype)
    except Exception as e:  # noqa: BLE001  (record the failure; the floor is still measured)
        res["error"] = f"{type(e).__name__}: {e}"
        res["error_after_s"] = time.perf_counter() - t0
        res["peak_total"] = _ru_maxrss()
        res["peak_increase"] = res["peak_total"] - rss_inputs
    out = None
    gc.collect()

    # FFT floor (after the memory numbers): one jitted rfft2 of N² (float32), and a fixed-kernel FFT
    # convolution of the image (rfft2 of image and kernel, product, irfft2)
    img = jnp.asarray(d["tmp"], jnp.float32)
    yy, xx = np.mgrid[-10:11, -10:11]
    s2 = SIGMA_S**2 - SIGMA_T**2
    kern = jnp.asarray(FLUX_RATIO * np.exp(-(xx**2 + yy**2) / (2 * s2)) / (2 * np.pi * s2), jnp.float32)
    rfft = jax.jit(jnp.fft.rfft2)
    conv = jax.jit(lambda a, kk: jnp.fft.irfft2(jnp.fft.rfft2(a) * jnp.fft.rfft2(kk, s=a.shape), s=a.shape))
    for name, fn in (("rfft2", lambda: rfft(img).block_until_ready()),
                     ("fft_conv", lambda: conv(img, kern).block_until_ready())):  # fmt: skip
        fn()
        res[f"{name}_s"] = float(np.median(timed(fn, args.floor_repeats)))
    res["loadavg_end"] = os.getloadavg()
    return res


# ======================================================================================
# peer worker (peer venv: numpy, scipy, astropy, sfft, ois; no jax)


def _sfft_run(data, order, threads, state):
    """SFFT crowded flavour, numpy backend, the Customized_Packet path (what ``Customized_Packet.CP``
    does, inlined to time SFFT's numba compilation separately and read the flux scaling)."""
    from astropy.io import fits
    from sfft.sfftcore.SFFTConfigure import SingleSFFTConfigure
    from sfft.sfftcore.SFFTSubtract import GeneralSFFTSubtract
    from sfft.utils.SFFTSolutionReader import Realize_FluxScaling

    t = {}
    t0 = time.perf_counter()
    ref = np.ascontiguousarray(fits.getdata(Path(data) / "tmp.fits").T, np.float64)  # SFFT's (x, y) layout
    sci = np.ascontiguousarray(fits.getdata(Path(data) / "sci.fits").T, np.float64)
    t["read_s"] = time.perf_counter() - t0
    if state.get("config") is None:
        t0 = time.perf_counter()
        state["config"] = SingleSFFTConfigure.SSC(NX=ref.shape[0], NY=ref.shape[1], KerHW=KERNEL_SIZE // 2,
                                                  KerPolyOrder=order, BGPolyOrder=BG_ORDER, ConstPhotRatio=True,
                                                  BACKEND_4SUBTRACT="Numpy", NUM_CPU_THREADS_4SUBTRACT=threads,
                                                  NUMBA_CACHE=False, VERBOSE_LEVEL=0)  # fmt: skip
        t["compile_s"] = time.perf_counter() - t0
    cfg = state["config"]
    t0 = time.perf_counter()
    # no saturated pixels and no NaN in this scene: the crowded flavour's masked images equal the inputs
    solution, diff = GeneralSFFTSubtract.GSS(PixA_I=ref, PixA_J=sci, PixA_mI=ref, PixA_mJ=sci, SFFTConfig=cfg,
                                             ContamMask_I=None, BACKEND_4SUBTRACT="Numpy",
                                             NUM_CPU_THREADS_4SUBTRACT=threads, VERBOSE_LEVEL=0)[:2]  # fmt: skip
    t["subtract_s"] = time.perf_counter() - t0
    p = cfg[0]
    xy = np.array([[p["N0"] / 2.0, p["N1"] / 2.0]]) + 0.5
    ksum = float(Realize_FluxScaling(XY_q=xy).FromArray(Solution=solution, N0=p["N0"], N1=p["N1"], L0=p["L0"],
                                                         L1=p["L1"], DK=p["DK"], Fpq=p["Fpq"])[0])  # fmt: skip
    return np.asarray(diff).T, ksum, t


def _ois_run(data, method, order):
    import ois

    sci, tmp = np.load(Path(data) / "sci.npy").astype(np.float64), np.load(Path(data) / "tmp.npy").astype(np.float64)
    h, w = sci.shape
    if method == "ois_al":
        sk = float(np.sqrt(SIGMA_S**2 - SIGMA_T**2))  # the matching kernel's width at the centre
        diff, _, kern, _ = ois.optimal_system(sci, tmp, kernelshape=(KERNEL_SIZE, KERNEL_SIZE), bkgdegree=BG_ORDER,
                                              method="Alard-Lupton",
                                              gausslist=[{"sx": sk, "sy": sk, "modPolyDeg": 2}])  # fmt: skip
        ksum = float(np.sum(kern))
    else:
        diff, _, kern, _ = ois.optimal_system(sci, tmp, kernelshape=(KERNEL_SIZE, KERNEL_SIZE), bkgdegree=BG_ORDER,
                                              method="AdaptiveBramich", poly_degree=order)  # fmt: skip
        ksum = float(np.sum(ois.eval_adpative_kernel(kern, 0.5 * (w - 1), 0.5 * (h - 1))))
    return np.asarray(diff), ksum, {}


def worker_peer(args):
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    res = {"peer": args.peer, "size": meta["size"], "order": args.order, "loadavg_start": os.getloadavg()}
    state = {}
    if args.peer == "sfft":
        run = functools.partial(_sfft_run, args.data, args.order, args.threads, state)
    elif args.peer in ("ois_al", "ois_adaptive"):
        run = functools.partial(_ois_run, args.data, args.peer, args.order)
    else:
        raise SystemExit(f"unknown peer {args.peer}")
    gc.collect()
    rss0 = rss_bytes()
    res["rss_start"] = rss0
    calls = []
    diff = ksum = None
    for i in range(args.repeats):
        diff = None
        gc.collect()
        if i == 0:
            with PeakMemory() as pm:
                t0 = time.perf_counter()
                c0 = _cpu_s()
                diff, ksum, t = run()
                t["total_s"] = time.perf_counter() - t0
                t["cpu_s"] = _cpu_s() - c0
            res.update(first_call_peak_increase=pm.increase, reset_ok=pm.reset_ok)
        else:
            t0 = time.perf_counter()
            c0 = _cpu_s()
            diff, ksum, t = run()
            t["total_s"] = time.perf_counter() - t0
            t["cpu_s"] = _cpu_s() - c0
        calls.append(t)
    res["calls"] = calls
    res["first_s"] = calls[0]["total_s"]
    res["warm_s"] = float(np.median([c["total_s"] for c in calls[1:]])) if len(calls) > 1 else None
    res["peak_total"] = _ru_maxrss()
    res["peak_increase"] = res["peak_total"] - rss0
    res["quality"] = _quality(_load(args.data, ("var_expected", "sky", "stars")), diff, kernel_sum=ksum)
    res["loadavg_end"] = os.getloadavg()
    return res


# ======================================================================================
# driver


def _tree_rss(pid):
    """RSS (bytes) of a process and its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


def _run_child(argv, python, timeout, label, workdir, mem_limit):
    """Run one worker under a wall-clock timeout and an RSS guard; return its JSON dict or {'error': ...}."""
    out = Path(workdir) / f"result_{os.getpid()}_{time.monotonic_ns()}.json"
    cmd = [python, str(Path(__file__).resolve()), *argv, "--out", str(out)]
    print(f"  [{label}] ...", end="", flush=True)
    t0 = time.perf_counter()
    err = open(Path(workdir) / "last_child_stderr.txt", "w")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=str(REPO))
    max_rss, killed = 0, None
    while p.poll() is None:
        time.sleep(0.25)
        r = _tree_rss(p.pid)
        max_rss = max(max_rss, r)
        if mem_limit and r > mem_limit:
            killed = f"OOM guard: RSS {r / 2**30:.1f} GiB > {mem_limit / 2**30:.1f} GiB after {time.perf_counter() - t0:.0f} s"
        elif time.perf_counter() - t0 > timeout:
            killed = f"timeout after {timeout:.0f} s"
        if killed:
            p.kill()
            p.wait()
            break
    err.close()
    dt = time.perf_counter() - t0
    if killed:
        print(f" {killed}", flush=True)
        out.unlink(missing_ok=True)
        return {"error": killed, "kind": "oom" if killed.startswith("OOM") else "timeout", "sampled_max_rss": max_rss}
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        tail = (Path(workdir) / "last_child_stderr.txt").read_text().strip().splitlines()[-3:]
        print(f" FAILED rc={p.returncode}: {' | '.join(tail)}", flush=True)
        return {"error": f"rc={p.returncode}: {' | '.join(tail)}", "kind": "crash", "sampled_max_rss": max_rss}
    finally:
        out.unlink(missing_ok=True)
    res["sampled_max_rss"], res["child_wall_s"] = max_rss, dt
    print(f" {dt:.1f} s", flush=True)
    return res


def _git_state():
    """Commit of the repository and whether jaxdiff/ has uncommitted changes (the code measured)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(REPO),
                              timeout=30).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "jaxdiff"], capture_output=True, text=True,
                               cwd=str(REPO), timeout=30).stdout.strip()  # fmt: skip
        return f"{head}{' + uncommitted changes in jaxdiff/' if dirty else ''}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _f(x, nd=3):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}" if x >= 0.01 else f"{x:.4f}"


def _gib(b):
    return "—" if b is None else (f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB")


def _short_error(r):
    e = r.get("error", "")
    if r.get("kind") in ("oom", "timeout"):
        return e.split(" after")[0] if r["kind"] == "timeout" else "OOM guard"
    if r.get("kind") == "crash":
        return "crashed (" + e[:40].replace("|", "/") + ")"
    name = e.split(":")[0]
    return f"failed: {name} (spatial system singular)" if "singular" in e else f"failed: {name}"


def _jax_cell(r):
    if not r:
        return "—"
    if "error" in r:
        return _short_error(r)
    c = r["first_compile"]
    return (f"{_f(r['warm_s'])} [{_f(r['warm_cpu_s'], 2)} cpu-s] ({_f(r['first_call_s'])}, "
            f"{_f(c['compile'] + c['trace'] + c['lower'], 1)})")  # fmt: skip


def _peer_cell(r):
    if not r:
        return "—"
    if r.get("skipped"):
        return r["skipped"]
    if "error" in r:
        return _short_error(r)
    c0 = r["calls"][0]
    s = _f(r["first_s"])
    if r.get("warm_s") is not None:
        s += f" / {_f(r['warm_s'])}"
    if "compile_s" in c0:
        s += f" (compile {_f(c0['compile_s'], 1)})"
    return s


def _q(qd):
    if not qd:
        return ["—"] * 5
    ks = qd.get("kernel_sum")
    return [
        "—" if ks is None else f"{ks:.4f} ({100 * qd['kernel_sum_err']:+.2f} %)",
        "—" if qd.get("sky_mean") is None else f"{qd['sky_mean']:+.3f}",
        "—" if qd.get("sky_noise_ratio") is None else f"{qd['sky_noise_ratio']:.3f}",
        "—" if qd.get("star_chi2") is None else f"{qd['star_chi2']:.2f}",
        "—" if qd.get("sky_noise_ratio_own") is None else f"{qd['sky_noise_ratio_own']:.3f}",
    ]


def build_report(env, versions, peer_versions, results, args, argv):
    L = []
    L.append(f"Run {env['date']} — `python benchmarks/bench_al.py {' '.join(argv)}`\n")
    L.append(f"- CPU: {env['cpu']}, {env['cores']} cores, {env['ram_gib']} GiB RAM; {env['platform']}")
    L.append(f"- load average at start / end: {' '.join(f'{x:.2f}' for x in env['loadavg'])} / "
             f"{' '.join(f'{x:.2f}' for x in env['loadavg_end'])}")  # fmt: skip
    L.append(f"- jaxdiff commit {env.get('git', 'unknown')}; Python {env['python']}; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()))  # fmt: skip
    if peer_versions:
        L.append("- peer venv: " + ", ".join(f"{k} {v}" for k, v in peer_versions.items()))
    L.append(f"- jaxdiff on CPU, XLA_FLAGS={env['xla_flags'] or '(unset)'}; precisions {', '.join(args.precisions)} "
             f"(f32: JAX default, x64 off; x64: `jax_enable_x64`, same float32 images); warm = median of "
             f"{args.repeats} calls; peers {args.peer_repeats} call(s) below 2048², 1 from 2048², timeout "
             f"{args.peer_timeout:.0f} s per call, RSS guard {args.mem_limit_gib:.0f} GiB; total wall time "
             f"{env['wall_s'] / 60:.1f} min")  # fmt: skip
    sizes = sorted({k[0] for k in results})
    stars = {k[0]: v.get("n_stars") for k, v in results.items() if k[2] == "_gen" and v}
    L.append(f"- scene: `jaxdiff.testing.sim.simulate_pair`, {args.stars_per_mpix:g} stars/Mpix ("
             + ", ".join(f"{stars.get(n, '?')} at {n}²" for n in sizes)
             + "), σ_T 1.5 px, σ_S 2.2 px × (1 ± 10 %), flux ratio 1.1, +10 e⁻ background, Poisson + read noise, "
             "10 transients; kernel 21×21, background order 1\n")

    precs = args.precisions
    L.append("### Time (seconds)\n")
    head = "| N | order |" + "".join(f" jaxdiff {p} warm [cpu-s] (first call, compile) |" for p in precs)
    head += " rfft2 N² | FFT conv |" + "".join(f" {PEER_LABEL[p]} |" for p in PEERS if p in args._peers)
    head += " HOTPANTS (peers.md, not measured) |"
    L.append(head)
    L.append("|" + "---|" * (head.count("|") - 1))
    for n in sizes:
        for o in args.orders:
            j = [results.get((n, o, p)) for p in precs]
            fl = next((x for x in j if x and "rfft2_s" in x), {})
            row = f"| {n}² | {o} |" + "".join(f" {_jax_cell(x)} |" for x in j)
            row += f" {_f(fl.get('rfft2_s'))} | {_f(fl.get('fft_conv_s'))} |"
            for p in PEERS:
                if p in args._peers:
                    r = results.get((n, args.orders[0] if p in ORDER_FREE_PEERS else o, p))
                    row += f" {_peer_cell(r)} |"
            row += f" {PEERS_MD[n]['hotpants_txt'] if n in PEERS_MD and o == 2 else '—'} |"
            L.append(row)
    L.append("")
    L.append("jaxdiff: `ImagePsfMatchTask.subtractExposures` (AL basis, `fitForBackground`, spatial kernel order as "
             "listed, background order 1), warm = median of further calls with the same shapes (cpu-s: CPU seconds "
             "of the process per warm call, all threads, less sensitive to other jobs); first call = the "
             "first call in a fresh process (trace + compile + run); compile = the trace + lowering + XLA compile "
             "seconds inside it (`jax.monitoring` events). Floor: one jitted float32 `jnp.fft.rfft2` of N², and a "
             "fixed 21×21 kernel convolved by FFT (rfft2, product, irfft2). SFFT: first call / second call "
             "(compile = its numba `SingleSFFTConfigure.SSC`, paid again by every new process; the second call "
             "reuses the configuration). OIS AL has no spatial variation (one run per size, shown in every "
             "row). Peers read float64 copies of the same images (SFFT from FITS).\n")  # fmt: skip

    L.append("### Peak memory (RSS increase over the inputs in memory, fresh process)\n")
    head = "| N | order |" + "".join(f" jaxdiff {p}: one warm call / whole process (total RSS) |" for p in precs)
    head += "".join(f" {PEER_LABEL[p]}: first call (total) |" for p in PEERS if p in args._peers)
    head += " HOTPANTS (peers.md) |"
    L.append(head)
    L.append("|" + "---|" * (head.count("|") - 1))
    for n in sizes:
        for o in args.orders:
            row = f"| {n}² | {o} |"
            for p in precs:
                r = results.get((n, o, p)) or {}
                if "warm_call_peak_increase" in r:
                    row += f" {_gib(r['warm_call_peak_increase'])} / {_gib(r['peak_increase'])} ({_gib(r['peak_total'])}) |"
                elif r.get("peak_total"):
                    row += f" failed / {_gib(r['peak_increase'])} ({_gib(r['peak_total'])}) |"
                else:
                    row += " — |"
            for p in PEERS:
                if p in args._peers:
                    r = results.get((n, args.orders[0] if p in ORDER_FREE_PEERS else o, p)) or {}
                    if "first_call_peak_increase" in r:
                        row += f" {_gib(r['first_call_peak_increase'])} ({_gib(r['peak_total'])}) |"
                    elif r.get("kind") == "oom":
                        row += f" > {args.mem_limit_gib:.0f} GiB (killed) |"
                    elif r.get("sampled_max_rss"):
                        row += f" {_short_error(r) if 'error' in r else r.get('skipped', '—')} (≥ {_gib(r['sampled_max_rss'])} sampled) |"
                    else:
                        row += " — |"
            row += f" {PEERS_MD[n]['hotpants_txt'].split(', ')[-1] if n in PEERS_MD and o == 2 else '—'} |"
            L.append(row)
    L.append("")
    L.append("jaxdiff \"one warm call\": VmHWM reset before the call (`/proc/self/clear_refs`), peak minus the RSS "
             "before it (inputs, compiled programs and the previous outputs freed); \"whole process\": "
             "`getrusage` peak of the process minus its RSS once the inputs were loaded (includes compilation). "
             "Peers: the first call's peak over the RSS before it, and the process's total peak RSS.\n")  # fmt: skip

    L.append("### Quality (truth: kernel sum 1.1 at the centre; difference on source-free sky and on bright-star cores)\n")
    L.append("| N | order | code | kernel sum (vs 1.1) | sky mean (e⁻) | sky std / √V_ideal | star-core χ²/pix | sky std / √(own variance) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for o in args.orders:
            for p in precs:
                r = results.get((n, o, p))
                if r and "quality" in r:
                    L.append(f"| {n}² | {o} | jaxdiff {p} | " + " | ".join(_q(r["quality"])) + " |")
            for p in PEERS:
                if p in args._peers and not (p in ORDER_FREE_PEERS and o != args.orders[0]):
                    r = results.get((n, o, p))
                    if r and "quality" in r:
                        L.append(f"| {n}² | {o if p not in ORDER_FREE_PEERS else '0'} | {PEER_LABEL[p]} | "
                                 + " | ".join(_q(r["quality"])) + " |")  # fmt: skip
    L.append("")
    L.append("V_ideal = V_science + ΣK²·V_template with K the true (Gaussian, spatially varying) matching kernel; "
             "1.000 is ideal noise, star-core χ²/pix ≈ 1 a perfect kernel (pixels within 4 px of stars with "
             "template flux ≥ 1e4, away from the edges).\n")  # fmt: skip

    L.append("### Acceptance (spatial order 2; issue targets)\n")
    L += [f"- {v}" for v in acceptance(results, args, sizes)]
    L.append("")
    return "\n".join(L)


def acceptance(results, args, sizes):
    out = []
    if 2 not in args.orders:
        return ["NOT RUN: spatial order 2 not in --orders"]
    prec = "f32" if "f32" in args.precisions else args.precisions[0]
    for n in sizes:
        for p in args.precisions:
            j = results.get((n, 2, p))
            if not j:
                continue
            if "error" in j:
                out.append(f"FAIL ({n}², {p}): jaxdiff did not finish: {j['error'][:160]}")
                continue
            t = j["warm_s"]
            hp = PEERS_MD.get(n, {}).get("hotpants")
            if hp:
                out.append(f"{'PASS' if t < hp else 'FAIL'} ({n}², {p}): warm {t:.2f} s vs HOTPANTS {hp:g} s "
                           f"(peers.md, not measured here); first call {j['first_call_s']:.1f} s")  # fmt: skip
            for q in PEERS:
                r = results.get((n, args.orders[0] if q in ORDER_FREE_PEERS else 2, q))
                if r and "first_s" in r:
                    v, which = (r["warm_s"], "second call") if r.get("warm_s") is not None else (r["first_s"], "one call")
                    out.append(f"{'PASS' if t < v else 'FAIL'} ({n}², {p}): jaxdiff warm {t:.3g} s vs {PEER_LABEL[q]} "
                               f"{v:.3g} s ({which}; first call {r['first_s']:.3g} s) → "
                               + (f"{v / t:.2g}× faster" if v >= t else f"{t / v:.2g}× slower"))  # fmt: skip
                elif r and r.get("kind") in ("timeout", "oom"):
                    out.append(f"PASS ({n}², {p}): {PEER_LABEL[q]} did not finish ({r['error']})")
                elif r and r.get("skipped"):
                    out.append(f"PASS ({n}², {p}): {PEER_LABEL[q]} {r['skipped']}")
                elif r and "error" in r:
                    out.append(f"INFO ({n}², {p}): {PEER_LABEL[q]} failed ({r['error'][:120]})")
            if n == 4096 or n == max(sizes):
                inc = j.get("warm_call_peak_increase")
                tot = j.get("peak_total")
                verdict = "PASS" if inc is not None and inc < 2**30 else "FAIL"
                label = "target" if n == 4096 else "INFO only, target is at 4096²"
                out.append(f"{verdict if n == 4096 else 'INFO'} ({n}², {p}): peak memory of one call {_gib(inc)} "
                           f"(whole process incl. compile {_gib(j.get('peak_increase'))}, total RSS {_gib(tot)}); "
                           f"{label} < 1 GB")  # fmt: skip
    if not out:
        out.append(f"NOT RUN: no order-2 jaxdiff result ({prec})")
    return out


def write_readme(report: str):
    write_results_block(README, RESULTS_START, RESULTS_END, report, '## Alard–Lupton\n\n### Results')


def driver(args, argv):
    t_start = time.perf_counter()
    env = environment()
    env["git"] = _git_state()
    versions = package_versions(sys.executable, ("jax", "jaxlib", "numpy", "scipy", "astropy"))
    peers = []
    for p in args.peers:
        peers += ["ois_al"] if p == "ois" else [p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from sfft, ois (= ois_al), {PEERS}")
    peer_versions = {}
    if peers and not Path(args.peer_python).exists():
        print(f"peer python {args.peer_python} not found: peers skipped (see benchmarks/README.md for how to build it)")
        peers = []
    elif peers:
        peer_versions = package_versions(args.peer_python, ("numpy", "scipy", "astropy", "sfft", "ois", "numba", "pyFFTW", "sep"))
    args._peers = peers
    print(f"# environment: {json.dumps(env)}")
    print(f"# versions: {versions}")
    if peer_versions:
        print(f"# peer venv ({args.peer_python}): {peer_versions}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mem_limit = int(args.mem_limit_gib * 2**30)
    results: dict = {}
    failed_peers: dict = {}  # (peer, order) -> size at which it timed out / hit the RSS guard
    for n in args.sizes:
        ddir = workdir / f"al_pair_{n}_seed{args.seed}_spm{args.stars_per_mpix:g}"
        if (ddir / "meta.json").exists():
            meta = json.loads((ddir / "meta.json").read_text())
            print(f"== {n}²: using cached pair {ddir}", flush=True)
        else:
            meta = _run_child(["--worker", "gen", "--data", str(ddir), "--size", str(n), "--seed", str(args.seed),
                               "--stars-per-mpix", str(args.stars_per_mpix)], sys.executable, args.jax_timeout,
                              f"simulate {n}²", workdir, 0)  # fmt: skip
            if "error" in meta:
                raise SystemExit(f"simulating the {n}² pair failed: {meta['error']}")
            print(f"== {n}²: {meta['n_stars']} stars, simulated in {meta['gen_s']:.1f} s -> {ddir}", flush=True)
        results[(n, 0, "_gen")] = meta
        for o in args.orders:
            for prec in args.precisions:
                wait_for_load(args.max_load, args.max_wait)
                r = _run_child(["--worker", "jax", "--data", str(ddir), "--order", str(o), "--precision", prec,
                                "--repeats", str(args.repeats), "--floor-repeats", str(args.floor_repeats)],
                               sys.executable, args.jax_timeout, f"jaxdiff {n}² order {o} {prec}", workdir,
                               mem_limit)  # fmt: skip
                results[(n, o, prec)] = r
                if "error" in r and "warm_s" not in r:
                    print(f"    jaxdiff failed: {r['error'][:300]}", flush=True)
                if "warm_s" in r:
                    c = r["first_compile"]
                    print(f"    warm {r['warm_s']:.3f} s {[round(x, 3) for x in r['warm_all_s']]}, first call "
                          f"{r['first_call_s']:.2f} s (trace {c['trace']:.2f} + lower {c['lower']:.2f} + compile "
                          f"{c['compile']:.2f} s, {c['n_compiles']} programs; warm-call compiles "
                          f"{r['warm_compile']['n_compiles']}); cpu-s/warm call {r['warm_cpu_s']:.2f}; peak warm call "
                          f"{_gib(r['warm_call_peak_increase'])}, whole process {_gib(r['peak_increase'])} over inputs, "
                          f"total {_gib(r['peak_total'])}; rfft2 {r['rfft2_s']:.4f} s, fft conv {r['fft_conv_s']:.4f} s; "
                          f"load {r['loadavg_start'][0]:.2f}->{r['loadavg_end'][0]:.2f}", flush=True)  # fmt: skip
                    print(f"    quality {r['quality']}; {r.get('metadata')}", flush=True)
            for p in peers:
                if p in ORDER_FREE_PEERS and o != args.orders[0]:
                    continue
                key = (p, 0 if p in ORDER_FREE_PEERS else o)
                if key in failed_peers:
                    why, at = failed_peers[key]
                    results[(n, o, p)] = {"skipped": f"skipped ({why} at {at}²)"}
                    print(f"  [{p} {n}² order {o}] skipped: it did not finish at a smaller size", flush=True)
                    continue
                reps = args.peer_repeats if n < 2048 else 1
                r = _run_child(["--worker", "peer", "--peer", p, "--data", str(ddir), "--order", str(o), "--repeats",
                                str(reps), "--threads", str(args.peer_threads)], args.peer_python,
                               args.peer_timeout * reps + 60, f"{p} {n}² order {o}", workdir, mem_limit)  # fmt: skip
                results[(n, o, p)] = r
                if r.get("kind") in ("timeout", "oom"):
                    failed_peers[key] = ("timeout" if r["kind"] == "timeout" else "OOM guard", n)
                if "first_s" in r:
                    print(f"    {p}: {[round(c['total_s'], 2) for c in r['calls']]} s {r['calls'][0]}; peak first call "
                          f"{_gib(r['first_call_peak_increase'])} (total {_gib(r['peak_total'])}); quality {r['quality']}",
                          flush=True)  # fmt: skip
        if not args.keep_data:
            for f in ddir.iterdir():
                f.unlink()
            ddir.rmdir()
    env["loadavg_end"] = os.getloadavg()
    env["wall_s"] = time.perf_counter() - t_start
    report = build_report(env, versions, peer_versions, results, args, argv)
    print()
    print(report)
    if args.json:
        write_results_json(args.json, env, versions, peer_versions, results)
    if args.write_readme:
        write_readme(report)
        print(f"\nwrote the Alard–Lupton results block of {README}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2], help="spatial kernel orders")
    p.add_argument("--precisions", nargs="+", default=["f32", "x64"], choices=["f32", "x64"],
                   help="f32: JAX default (x64 off); x64: jax_enable_x64 (same float32 images)")  # fmt: skip
    p.add_argument("--peers", nargs="*", default=["sfft", "ois"],
                   help="sfft, ois (= ois_al), ois_adaptive (very slow: ~12 min at 512²); none: --peers")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run: 512², 2 warm calls, peer timeout 120 s")
    p.add_argument("--repeats", type=int, default=3, help="warm jaxdiff calls (median; at least 2)")
    p.add_argument("--floor-repeats", type=int, default=10)
    p.add_argument("--stars-per-mpix", type=float, default=500.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-python", default="/tmp/alpeervenv/bin/python", help="python of the peer venv")
    p.add_argument("--peer-repeats", type=int, default=2, help="calls per peer below 2048² (1 from 2048² up)")
    p.add_argument("--peer-timeout", type=float, default=600.0, help="seconds per peer call")
    p.add_argument("--peer-threads", type=int, default=max(len(os.sched_getaffinity(0)), 1),
                   help="SFFT's NUM_CPU_THREADS_4SUBTRACT")  # fmt: skip
    p.add_argument("--mem-limit-gib", type=float, default=14.0,
                   help="kill a worker whose RSS exceeds this (recorded as 'OOM guard'); 0: no limit")  # fmt: skip
    p.add_argument("--jax-timeout", type=float, default=1800.0, help="seconds per jax / gen worker")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="before each jax worker wait until the 1-min load average is below this (0: don't wait)")
    p.add_argument("--max-wait", type=float, default=120.0)
    p.add_argument("--workdir", default="/tmp/jaxdiff_bench_al", help="simulated pairs (.npy, FITS) and child results")
    p.add_argument("--keep-data", action="store_true", help="keep the simulated pairs in --workdir for the next run")
    p.add_argument("--json", help="also write all raw results to this JSON file")
    p.add_argument("--write-readme", action="store_true", help="rewrite the AL results block of benchmarks/README.md")
    # worker-only options
    p.add_argument("--worker", choices=["gen", "jax", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--order", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="f32", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = {"gen": worker_gen, "jax": worker_jax, "peer": worker_peer}[args.worker](args)
        Path(args.out).write_text(json.dumps(res, default=float))
        return
    if args.quick:
        args.sizes, args.repeats, args.floor_repeats = [512], 2, 5
        args.peer_timeout = min(args.peer_timeout, 120.0)
    args.repeats = max(args.repeats, 2)
    driver(args, argv)


if __name__ == "__main__":
    main()
