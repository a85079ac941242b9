"""``jaxdiff demo`` end to end at a small size (the README's main job)."""

import numpy as np
import pytest

from jaxdiff import Exposure
from jaxdiff.cli import _main as cli
from jaxdiff.cli import main, run_demo

# the command runs as users run it: in JAX's default precision (float32), so in the float32 run only
pytestmark = pytest.mark.once_in_float32


def test_demo_simulated_and_real(tmp_path, shared_dir, capsys):
    out = run_demo(tmp_path, size=256, seed=0, threshold=5.0, real=True, data=shared_dir / "data")
    assert out["sim"]["n_transients"] == 10
    assert out["sim"]["found"] >= 9
    printed = capsys.readouterr().out
    assert "injected transients recovered" in printed and "[nircam]" in printed
    for name in ("sim_diff.fits", "sim_scorr.fits", "nircam_diff.fits", "nircam_scorr.fits",
                 "sim_panel.png", "nircam_panel.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    d = Exposure.readFits(str(tmp_path / "sim_diff.fits"))
    assert d.getDimensions() == (256, 256) and np.all(np.isfinite(np.asarray(d.image.array)))
    assert d.getPsf() is not None
    # the strongest NIRCam residual is the known PSF-mismatch artefact at [643, 280]
    top = out["nircam"]["detections"][0]
    assert abs(top["y"] - 643) < 15 and abs(top["x"] - 280) < 15


def test_zogy_command_on_fits_files(tmp_path, capsys):
    import jax

    from jaxdiff.testing.sim import simulate_pair

    pair = simulate_pair(jax.random.key(5), (128, 128), n_stars=20, n_transients=1, transient_snr=30.0)
    pair.science.writeFits(str(tmp_path / "sci.fits"))
    pair.template.writeFits(str(tmp_path / "tmp.fits"))
    assert main(["zogy", str(tmp_path / "sci.fits"), str(tmp_path / "tmp.fits"), "--output", str(tmp_path / "o"),
                 "--no-scale-variance", "--no-normalize-score"]) == 0
    printed = capsys.readouterr().out
    x, y = float(pair.truth.transient_x[0]), float(pair.truth.transient_y[0])
    lines = [ln for ln in printed.splitlines() if ln.startswith("x=")]
    assert lines, printed
    first = dict(kv.split("=") for kv in lines[0].split())
    assert abs(int(first["x"]) - x) <= 2 and abs(int(first["y"]) - y) <= 2
    assert (tmp_path / "o" / "zogy_scorr.fits").exists()


def test_cli_needs_a_command():
    with pytest.raises(SystemExit):
        main([])


def test_console_entry_tunes_the_process_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "tune_host_malloc", lambda: calls.append("malloc"))
    monkeypatch.setattr(cli, "enable_compilation_cache", lambda: calls.append("cache"))
    monkeypatch.setattr(cli, "main", lambda: 7)
    for malloc_env, cache_env, expected in (("", "", ["malloc", "cache"]), ("1", "", ["cache"]), ("0", "1", ["malloc"])):
        calls.clear()
        monkeypatch.setenv("JAXDIFF_DEFAULT_MALLOC", malloc_env)
        monkeypatch.setenv("JAXDIFF_NO_COMPILE_CACHE", cache_env)
        with pytest.raises(SystemExit) as exc:
            cli.console_main()
        assert exc.value.code == 7 and calls == expected


def test_compilation_cache_is_written_and_reused(tmp_path):
    """In a child process (it changes JAX's global config): programs land in the cache folder."""
    import os
    import subprocess
    import sys

    code = (
        "import jax, jax.numpy as jnp; from jaxdiff.cli import enable_compilation_cache as e; "
        "print(e()); jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "JAXDIFF_CACHE_DIR": "", "JAX_COMPILATION_CACHE_DIR": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    folder = tmp_path / "jaxdiff" / "xla"
    assert out.stdout.strip() == str(folder)
    assert any(folder.iterdir()), "no compiled program was cached"


def test_tune_host_malloc():
    import platform
    import subprocess
    import sys

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":  # in a child: not this process's allocator
        code = "import jaxdiff.cli as c; print(c.tune_host_malloc())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.strip() == "True"
    with pytest.MonkeyPatch.context() as mp:  # anywhere else it declines without touching the process
        mp.setattr(platform, "libc_ver", lambda: ("musl", ""))
        assert cli.tune_host_malloc() is False


# ---------------------------------------------------------------------------------------------
# Alard-Lupton: `jaxdiff demo --method al` and `jaxdiff al`


def jax_key(seed):
    import jax

    return jax.random.key(seed)


def _star_free(truth, science_variance):
    """Pixels whose noise-free star light is below 0.2 sigma (from the simulation's truth)."""
    stars = np.asarray(truth.science_model) - np.asarray(truth.background)
    return stars < 0.2 * np.sqrt(np.asarray(science_variance))


def _noise_ratios(diff, sky):
    """std of D / sqrt(V) and var(D) / mean(V) over ``sky`` pixels that are finite and unmasked."""
    d = np.asarray(diff.image.array, np.float64)
    v = np.asarray(diff.variance.array, np.float64)
    bad = diff.mask.getPlaneBitMask(["NO_DATA", "EDGE", "SAT", "BAD", "CR"])
    ok = sky & np.isfinite(d) & (v > 0) & ((np.asarray(diff.mask.array) & bad) == 0)
    assert ok.mean() > 0.3
    return float(np.std(d[ok] / np.sqrt(v[ok]))), float(np.var(d[ok]) / np.mean(v[ok]))


def _printed_kernel_sum(printed):
    line = next(ln for ln in printed.splitlines() if "kernel sum = " in ln)
    return float(line.split("kernel sum = ")[1].split()[0])


def test_demo_al_simulated(tmp_path, capsys):
    out = run_demo(tmp_path, size=256, seed=0, threshold=5.0, real=False, method="al")["sim"]
    printed = capsys.readouterr().out
    assert "error" not in out, printed
    for name in ("sim_al_diff.fits", "sim_al_score.fits", "sim_al_panel.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    # the printed kernel sum is the photometric scale: the simulated flux ratio 1.1
    assert abs(_printed_kernel_sum(printed) / 1.1 - 1) < 0.02
    assert abs(out["kernel_sum"] / 1.1 - 1) < 0.02
    assert "background at the image centre" in printed and abs(out["background"] - 10.0) < 1.5
    # the difference read back from its FITS file has the noise its variance plane says
    diff = Exposure.readFits(str(tmp_path / "sim_al_diff.fits"))
    assert diff.getDimensions() == (256, 256) and diff.getPsf() is not None
    z_std, var_ratio = _noise_ratios(diff, _star_free(out["truth"], diff.variance.array))
    assert abs(z_std - 1) < 0.1 and abs(var_ratio - 1) < 0.1
    score = Exposure.readFits(str(tmp_path / "sim_al_score.fits"))
    assert np.isfinite(np.asarray(score.image.array)).all()
    assert out["n_transients"] == 10 and out["found"] >= 8
    assert len(out["detections"]) - out["found"] <= 2
    assert "injected transients recovered" in printed


def test_demo_al_reports_a_typed_failure_and_continues(tmp_path, monkeypatch, capsys):
    from jaxdiff.cli import _main as cli
    from jaxdiff.tasks.errors import PsfMatchingError
    from jaxdiff.testing.sim import simulate_pair

    pair = simulate_pair(jax_key(1), (64, 64), n_stars=3)
    monkeypatch.setattr(cli, "load_nircam_pair", lambda datadir: (pair.science, pair.template))

    def fail(*args, **kwargs):
        raise PsfMatchingError("spatial system unusable")

    monkeypatch.setattr(cli, "_run_al", fail)
    out = cli.demo_nircam_al(tmp_path, tmp_path, threshold=5.0)
    printed = capsys.readouterr().out
    assert isinstance(out["error"], PsfMatchingError)
    assert "[nircam-al] Alard-Lupton failed: PsfMatchingError: spatial system unusable" in printed
    assert not list(tmp_path.glob("nircam_al_*"))


def test_al_command_on_plain_fits_files(tmp_path, capsys):
    from astropy.io import fits

    from jaxdiff.testing.sim import simulate_pair

    pair = simulate_pair(jax_key(5), (256, 256), n_stars=90, flux_ratio=1.1, background_offset=5.0,
                         n_transients=1, transient_snr=30.0)
    files = {}
    for which, exp in (("sci", pair.science), ("tmp", pair.template)):
        files[which] = str(tmp_path / f"{which}.fits")
        files[which + "_noise"] = str(tmp_path / f"{which}_noise.fits")
        fits.PrimaryHDU(np.asarray(exp.image.array)).writeto(files[which])
        fits.PrimaryHDU(np.sqrt(np.asarray(exp.variance.array))).writeto(files[which + "_noise"])
    psf = pair.science.getPsf().computeKernelImage(pair.science.getBBox().getCenter())
    fits.PrimaryHDU(np.asarray(psf)).writeto(tmp_path / "sci_psf.fits")
    outdir = tmp_path / "out"
    rc = main(["al", files["sci"], files["tmp"], "--output", str(outdir),
               "--science-noise", files["sci_noise"], "--template-noise", files["tmp_noise"],
               "--science-psf", str(tmp_path / "sci_psf.fits"), "--template-fwhm", f"{1.5 * 2.3548:.4f}",
               "--fit-background", "--decorrelate", "--spatial-order", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert abs(_printed_kernel_sum(printed) / 1.1 - 1) < 0.02
    bg = float(printed.split("background at the image centre = ")[1].split()[0])
    assert abs(bg - 5.0) < 1.5
    diff = Exposure.readFits(str(outdir / "al_diff.fits"))
    assert diff.getDimensions() == (256, 256)
    z_std, var_ratio = _noise_ratios(diff, _star_free(pair.truth, pair.science.variance.array))
    assert abs(z_std - 1) < 0.1 and abs(var_ratio - 1) < 0.1
    assert (outdir / "al_score.fits").stat().st_size > 0
    lines = [ln for ln in printed.splitlines() if ln.startswith("x=")]
    assert lines, printed
    first = dict(kv.split("=") for kv in lines[0].split())
    x, y = float(pair.truth.transient_x[0]), float(pair.truth.transient_y[0])
    assert abs(int(first["x"]) - x) <= 2 and abs(int(first["y"]) - y) <= 2


def test_al_command_on_exposure_files(tmp_path, capsys):
    from jaxdiff.testing.sim import simulate_pair

    pair = simulate_pair(jax_key(6), (128, 128), n_stars=40, flux_ratio=0.9)
    sci, tmp = str(tmp_path / "sci.fits"), str(tmp_path / "tmp.fits")
    pair.science.writeFits(sci)  # LSST-style files carry their PSFs
    pair.template.writeFits(tmp)
    # one 128-pixel cell gives 3 candidates: too few for the default spatial order 2 -> a clean, typed failure
    assert main(["al", sci, tmp, "--output", str(tmp_path / "a")]) == 1
    printed = capsys.readouterr().out
    assert "Alard-Lupton failed: InsufficientKernelSourcesError" in printed
    assert not (tmp_path / "a" / "al_diff.fits").exists()
    assert main(["al", sci, tmp, "--output", str(tmp_path / "b"), "--spatial-order", "0"]) == 0
    printed = capsys.readouterr().out
    assert abs(_printed_kernel_sum(printed) / 0.9 - 1) < 0.02
    assert "no background fitted" in printed and "add --decorrelate" in printed
    diff = Exposure.readFits(str(tmp_path / "b" / "al_diff.fits"))
    assert np.isfinite(np.asarray(diff.image.array)[20:-20, 20:-20]).all()
    assert not (tmp_path / "b" / "al_score.fits").exists()


def test_al_command_input_errors(tmp_path, capsys):
    from astropy.io import fits

    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones((32, 32), np.float32)).writeto(plain)
    with pytest.raises(SystemExit):
        main(["al", str(plain), str(plain)])  # no noise model for a plain image
    assert "--gain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["al", str(plain), str(plain), "--gain", "1"])  # no PSF
    assert "--science-fwhm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--method", "hotpants"])
