"""Execute the notebooks at a small size (they must run top to bottom without errors)."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch, x64):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if not x64:
        pytest.skip("notebooks choose their own precision; executed once, in the float64 run")
    monkeypatch.setenv("JAXDIFF_NB_SIZE", "256")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    repo = str(path.parents[1])  # the kernel imports this checkout's jaxdiff, installed or not
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("JAXDIFF_SHARED", os.environ.get("JAXDIFF_SHARED", str(path.parents[2] / "shared")))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Traceback" not in outputs
    if path.name == "zogy_quickstart.ipynb":
        assert "transients found" in outputs
        assert "fitted science PSF sigma" in outputs
        fitted = float(outputs.split("fitted science PSF sigma = ")[1].split()[0])
        assert abs(fitted - 2.2) < 0.1
    if path.name == "alard_lupton.ipynb":
        # the notebook prints the numbers it computed as one JSON line; check them against the simulation's truth
        line = [ln for ln in outputs.splitlines() if ln.startswith("RESULTS ")]
        assert len(line) == 1, outputs[-2000:]
        res = json.loads(line[0][len("RESULTS "):])
        assert res["size"] == 256
        assert abs(res["kernel_sum"] / 1.1 - 1) < 0.02  # kernel sum = simulated flux ratio
        assert abs(res["z_std"] - 1) < 0.1  # D / sqrt(V) on star-free pixels
        assert abs(res["var_ratio"] - 1) < 0.1  # var(D) / mean(V)
        assert abs(res["background_centre"] - res["background_centre_true"]) < 1.0  # counts (pixel noise ~10)
        assert res["kernel_sigma_max_error_inner"] < 0.15  # px, vs the ideal Gaussian kernel
        assert res["lag1_after"] < res["lag1_before"]  # decorrelation whitens the difference
        assert res["n_found"] >= res["n_transients"] - 1
        assert res["zogy_n_found"] >= res["n_transients"] - 1
    if path.name == "gradient_fitting.ipynb":
        line = [ln for ln in outputs.splitlines() if ln.startswith("RESULTS ")]
        assert len(line) == 1, outputs[-2000:]
        res = json.loads(line[0][len("RESULTS "):])
        assert res["size"] == 256
        assert abs(res["moffat_fwhm"] / 3.3 - 1) < 0.02  # simulated Moffat field, FWHM 3.3
        assert res["moffat_psf_max_diff"] < 0.01  # estimated PSF image vs the true one, of the peak
        assert 0.7 < res["reserve_chi2"] < 1.4
        assert abs(res["beta"] / 1.1 - 1) < 0.01  # ZOGY nuisances: beta 1.1, shift (0.3, -0.2)
        assert abs(res["shift"][0] - 0.3) < 0.02 and abs(res["shift"][1] + 0.2) < 0.02
        assert res["kernel_grad_vs_ls"] < 1e-4  # AL kernel by gradient vs least squares
        assert abs(res["kernel_sum"] / 1.2 - 1) < 0.01
        assert abs(res["zogy_sigma_fit"] / res["zogy_sigma_true"] - 1) < 0.01  # PSF through ZOGY, from 10 % off
