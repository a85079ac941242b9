"""Execute the notebooks at a small size (they must run top to bottom without errors)."""

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
