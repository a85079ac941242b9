"""``jaxdiff demo`` end to end at a small size (the README's main job)."""

import numpy as np
import pytest

from jaxdiff import Exposure
from jaxdiff.cli import main, run_demo


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

    from jaxdiff.sim import simulate_pair

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
