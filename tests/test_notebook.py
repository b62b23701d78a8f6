"""The teaching notebook examples/explore.ipynb runs from top to bottom (on a generated
Fashion-MNIST, with the shipped models) and is stored without outputs."""

from pathlib import Path

import pytest

import fakedata

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "explore.ipynb"


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow  # about 10 s: a kernel starts and imports torch and matplotlib
def test_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' for nbclient")
    pytest.importorskip("ipykernel")
    # a generated Fashion-MNIST in $TORCH_VAE_DATA, found before Debian's copy; uncompressed,
    # as unpacked copies are (their content is checked structurally, not by the MD5 of the .gz)
    data = tmp_path / "data"
    fakedata.write_mnist(data / "fashion-mnist", gz=False)
    fakedata.write_mnist_labels(data / "fashion-mnist", gz=False)
    monkeypatch.setenv("TORCH_VAE_DATA", str(data))
    monkeypatch.setenv("TORCH_VAE_MODELS", str(ROOT / "models" / "fashion-mnist"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "data" in o]
    assert sum("image/png" in o["data"] for o in images) >= 8  # every figure was drawn
