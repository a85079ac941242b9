"""Helpers shared by the benchmark scripts: synthetic scenes, quality metrics, memory probes.

Only the standard library, numpy and scipy are imported here, so this module also works in
the separate peer virtual environment (which has no jax).
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, special

# --------------------------------------------------------------------------------------
# synthetic pair


@dataclass
class PairMeta:
    size: int
    seed: int
    sigma_ref: float
    sigma_new: float
    psf_size: int
    flux_ratio: float  # F_new / F_ref
    sky_var_new: float
    sky_var_ref: float
    n_stars: int
    transients_yx: list  # [[y, x], ...] integer pixel positions
    transients_snr: list
    n_sky_pixels: int
    gen_seconds: float


def _pixel_profiles(centres: np.ndarray, sigma: float, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-integrated 1-D Gaussian profiles on a (2 half + 1)-pixel window per centre.

    Returns (first pixel index of each window, profiles of shape (n, 2 half + 1)).
    """
    start = np.rint(centres).astype(np.int64) - half
    edges = start[:, None] + np.arange(2 * half + 2)[None, :] - 0.5
    cdf = special.ndtr((edges - centres[:, None]) / sigma)
    return start, np.diff(cdf, axis=1)


def render_stars(shape, y, x, flux, sigma, half) -> np.ndarray:
    """Sum of pixel-integrated circular Gaussians (separable erf profiles), float64.

    Each star is the outer product of two 1-D profiles on a (2 half + 1)² window,
    accumulated with one ``np.bincount`` (fast: no Python loop over stars).
    """
    h, w = shape
    y0, py = _pixel_profiles(np.asarray(y, float), sigma, half)
    x0, px = _pixel_profiles(np.asarray(x, float), sigma, half)
    k = 2 * half + 1
    rows = y0[:, None, None] + np.arange(k)[None, :, None] + half  # offset into padded canvas
    cols = x0[:, None, None] + np.arange(k)[None, None, :] + half
    wts = flux[:, None, None] * py[:, :, None] * px[:, None, :]
    hp, wp = h + 2 * half, w + 2 * half
    canvas = np.bincount((rows * wp + cols).ravel(), weights=wts.ravel(), minlength=hp * wp)
    return canvas.reshape(hp, wp)[half : half + h, half : half + w]


def gaussian_psf_stamp(sigma: float, size: int) -> np.ndarray:
    """Centred pixel-integrated Gaussian stamp of odd ``size``, normalised to sum 1."""
    half = size // 2
    _, p = _pixel_profiles(np.array([float(half)]), sigma, half)
    stamp = np.outer(p[0], p[0])
    return stamp / stamp.sum()


def make_pair(
    size: int,
    *,
    seed: int = 0,
    sigma_ref: float = 1.5,
    sigma_new: float = 2.2,
    psf_size: int = 25,
    stars_per_mpix: float = 400.0,
    flux_ratio: float = 1.1,
    sky_var_new: float = 200.0,
    sky_var_ref: float = 100.0,
    n_transients: int = 10,
    snr_range: tuple[float, float] = (7.0, 50.0),
) -> tuple[dict, PairMeta]:
    """Synthetic registered, background-subtracted pair (float64 numpy arrays).

    Reference (template) flux scale F_ref = 1, new (science) F_new = ``flux_ratio``.
    Per-pixel variance = sky + source (gain 1).  Star fluxes are log-uniform in
    [1e2, 1e5] e⁻ (reference scale).  ``n_transients`` point sources appear in the new
    image only, with optimal S/N log-uniform in ``snr_range`` against the new image's sky
    noise, at least 60 px from the edges.  ``sky`` is a boolean mask of pixels free of
    source light (both noiseless models below 1% of the sky sigma), at least 3 PSF stamps
    from the edges and 20 px from any transient: used for S_corr mean/std.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    shape = (size, size)
    half = psf_size // 2
    n_stars = int(round(stars_per_mpix * size * size / 1e6))
    ys, xs = rng.uniform(-0.5, size - 0.5, (2, n_stars))
    flux = 10 ** rng.uniform(2.0, 5.0, n_stars)
    model_ref = render_stars(shape, ys, xs, flux, sigma_ref, half)
    model_new = flux_ratio * render_stars(shape, ys, xs, flux, sigma_new, half)

    psf_ref = gaussian_psf_stamp(sigma_ref, psf_size)
    psf_new = gaussian_psf_stamp(sigma_new, psf_size)
    ty, tx = rng.integers(60, size - 60, (2, n_transients))
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n_transients))
    t_flux = snr * np.sqrt(sky_var_new) / np.sqrt(np.sum(psf_new**2))  # optimal S/N, sky-limited
    model_new = model_new + render_stars(shape, ty.astype(float), tx.astype(float), t_flux, sigma_new, half)

    var_ref = sky_var_ref + model_ref
    var_new = sky_var_new + model_new
    ref = model_ref + np.sqrt(var_ref) * rng.standard_normal(shape)
    new = model_new + np.sqrt(var_new) * rng.standard_normal(shape)

    sky = (model_ref < 0.01 * np.sqrt(sky_var_ref)) & (model_new < 0.01 * np.sqrt(sky_var_new))
    m = 3 * psf_size
    sky[:m, :] = sky[-m:, :] = sky[:, :m] = sky[:, -m:] = False
    for y, x in zip(ty, tx, strict=True):
        sky[max(y - 20, 0) : y + 21, max(x - 20, 0) : x + 21] = False

    arrays = dict(new=new, ref=ref, var_new=var_new, var_ref=var_ref, psf_new=psf_new, psf_ref=psf_ref, sky=sky)
    meta = PairMeta(size, seed, sigma_ref, sigma_new, psf_size, flux_ratio, sky_var_new, sky_var_ref, n_stars,
                    [[int(y), int(x)] for y, x in zip(ty, tx, strict=True)], [float(s) for s in snr], int(sky.sum()),
                    time.perf_counter() - t0)  # fmt: skip
    return arrays, meta


def save_pair(directory: Path, arrays: dict, meta: PairMeta) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(directory / f"{k}.npy", v)
    (directory / "meta.json").write_text(json.dumps(asdict(meta)))


def load_pair(directory: Path, dtype=np.float64) -> tuple[dict, dict]:
    meta = json.loads((Path(directory) / "meta.json").read_text())
    arrays = {}
    for k in ("new", "ref", "var_new", "var_ref", "psf_new", "psf_ref", "sky"):
        a = np.load(Path(directory) / f"{k}.npy")
        arrays[k] = a if k == "sky" else np.ascontiguousarray(a, dtype=dtype)
    return arrays, meta


# --------------------------------------------------------------------------------------
# quality


def scorr_quality(scorr, sky, meta, *, threshold: float = 5.0, match_radius: float = 3.0) -> dict:
    """Sky mean/std of S_corr, transients recovered and false positives (|S_corr| > threshold).

    Detections are connected regions of |S_corr| > threshold (both signs, so fading
    residuals count), located at their |S_corr| maximum, ignoring a border of 3 PSF
    stamps.  A transient is found when a detection lies within ``match_radius`` pixels.
    """
    scorr = np.asarray(scorr, np.float64)
    finite = np.isfinite(scorr)
    vals = scorr[sky & finite]
    out = {"sky_mean": float(vals.mean()), "sky_std": float(vals.std()), "n_nonfinite": int((~finite).sum())}
    a = np.where(finite, np.abs(scorr), 0.0)
    m = 3 * meta["psf_size"]
    a[:m, :] = a[-m:, :] = a[:, :m] = a[:, -m:] = 0
    lab, n = ndimage.label(a > threshold)
    pos = np.array(ndimage.maximum_position(a, lab, range(1, n + 1)), float).reshape(-1, 2)
    tr = np.array(meta["transients_yx"], float).reshape(-1, 2)
    if n and len(tr):
        d = np.hypot(pos[:, None, 0] - tr[None, :, 0], pos[:, None, 1] - tr[None, :, 1])
        found = int((d.min(axis=0) <= match_radius).sum())
        fp = int((d.min(axis=1) > match_radius).sum())
    else:
        found, fp = 0, n
    out.update(transients_found=found, n_transients=len(tr), false_positives=fp)
    return out


# --------------------------------------------------------------------------------------
# memory probes (Linux /proc)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def hwm_bytes() -> int:
    """Peak resident set size since start or the last :func:`reset_peak` (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so RSS reflects live data."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return hwm_bytes() <= rss_bytes() + (1 << 20)


class PeakMemory:
    """Context manager: peak RSS increase over the RSS at entry (bytes), in ``.increase``."""

    def __enter__(self):
        import gc

        gc.collect()
        trim_heap()
        self.start = rss_bytes()
        self.reset_ok = reset_peak()
        return self

    def __exit__(self, *exc):
        self.peak = hwm_bytes()
        self.increase = self.peak - self.start
        return False


# --------------------------------------------------------------------------------------
# environment


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"MemTotal:\s+(\d+)", f.read())
            return int(m.group(1)) / 2**20
    except (OSError, AttributeError):
        return float("nan")


def environment() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": cores,
        "ram_gib": round(mem_total_gib(), 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def timed(fn, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` (the caller warms up first)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------
# Alard-Lupton benchmark (bench_al.py): quality of a difference image against the truth


def al_expected_variance(var_sci, var_tmp, sigma_sci_map, sigma_tmp: float, flux_ratio: float) -> np.ndarray:
    """Variance of an ideal difference ``D = I - K (x) T - B``: ``V_I + sum(K^2) V_T``.

    ``K`` is the true matching kernel, a Gaussian of variance ``sigma_sci^2 - sigma_tmp^2``
    and sum ``flux_ratio``, so ``sum(K^2) = flux_ratio^2 / (4 pi (sigma_sci^2 - sigma_tmp^2))``
    (continuous approximation; the template variance term is a few % of the total here).
    ``sigma_sci_map`` is the science PSF sigma at each pixel (spatially varying PSF).
    """
    s2 = np.maximum(np.asarray(sigma_sci_map, np.float64) ** 2 - sigma_tmp**2, 0.25)
    return np.asarray(var_sci, np.float64) + flux_ratio**2 / (4 * np.pi * s2) * np.asarray(var_tmp, np.float64)


def al_quality(diff, var_expected, sky, star_pixels, *, kernel_sum=None, flux_ratio=None, var_plane=None) -> dict:
    """Quality numbers of an AL difference image (any code), all float64.

    * ``sky_mean``: mean of the difference on source-free sky pixels (e-; 0 ideally: the
      fitted background absorbed the +10 e- offset);
    * ``sky_noise_ratio``: std(D / sqrt(V_expected)) on those pixels (1 ideally; > 1 means
      extra noise or residual structure);
    * ``star_chi2``: mean(D^2 / V_expected) on the cores of bright stars (1 ideally: the
      kernel matched the PSFs; > 1 means star residuals);
    * ``kernel_sum`` and ``kernel_sum_err`` (relative to the true flux ratio);
    * ``sky_noise_ratio_own``: std(D / sqrt(V_plane)) with the code's own variance plane, when
      it has one;
    * ``n_nonfinite``: non-finite pixels (edge bands).
    """
    d = np.asarray(diff, np.float64)
    fin = np.isfinite(d)
    out = {"n_nonfinite": int((~fin).sum())}
    s = sky & fin
    z = d[s] / np.sqrt(var_expected[s])
    out["n_sky"] = int(s.sum())
    out["sky_mean"] = float(d[s].mean()) if s.any() else None
    out["sky_noise_ratio"] = float(z.std()) if s.any() else None
    st = star_pixels & fin
    out["n_star_pixels"] = int(st.sum())
    out["star_chi2"] = float(np.mean(d[st] ** 2 / var_expected[st])) if st.any() else None
    if var_plane is not None:
        v = np.asarray(var_plane, np.float64)
        ok = s & np.isfinite(v) & (v > 0)
        out["sky_noise_ratio_own"] = float((d[ok] / np.sqrt(v[ok])).std()) if ok.any() else None
    if kernel_sum is not None:
        out["kernel_sum"] = float(kernel_sum)
        if flux_ratio:
            out["kernel_sum_err"] = float(kernel_sum / flux_ratio - 1.0)
    return out


def wait_for_load(max_load: float, max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until the 1-minute load average is below ``max_load`` (0: don't wait)."""
    if not max_load:
        return
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= max_load and time.perf_counter() - t0 < max_wait:
        time.sleep(10)
    if os.getloadavg()[0] >= max_load:
        print(f"  (load {os.getloadavg()[0]:.2f} still >= {max_load} after {max_wait:.0f} s; going on)", flush=True)


def package_versions(python: str, names) -> dict:
    """Installed versions of the distributions ``names`` in the environment of interpreter ``python``."""
    code = ("import json,importlib.metadata as m\nout={}\n"
            f"for n in {tuple(names)!r}:\n"
            "    try: out[n]=m.version(n)\n    except Exception: pass\nprint(json.dumps(out))")  # fmt: skip
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def write_results_block(readme: Path, start: str, end: str, report: str, heading: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``readme`` with ``report``, atomically.

    Without the markers the block is appended under ``heading``; the file keeps its permissions.
    """
    text = readme.read_text() if readme.exists() else ""
    block = f"{start}\n\n{report}\n{end}"
    if start in text and end in text:
        new = text.split(start)[0] + block + text.split(end, 1)[1]
    else:
        new = text.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    mode = readme.stat().st_mode & 0o777 if readme.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=str(readme.parent), prefix=".README.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, mode if mode & 0o044 else 0o644)  # mkstemp makes 0600 files
    os.replace(tmp, readme)


def write_results_json(path, env: dict, versions: dict, peer_versions: dict, results: dict) -> None:
    """All raw numbers of a run as JSON; result keys (tuples) joined with "/"."""
    payload = {"env": env, "versions": versions, "peer_versions": peer_versions,
               "results": {"/".join(map(str, k)): v for k, v in results.items()}}  # fmt: skip
    Path(path).write_text(json.dumps(payload, indent=1, default=str))
