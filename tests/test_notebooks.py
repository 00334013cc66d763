"""The notebooks in notebooks/ run top to bottom in a fresh python3 kernel (their cells assert
what they show), each well under a minute."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT_S = 120
BUDGET_S = 60  # whole notebook


@pytest.fixture(scope="session")
def kernel_name():
    """The python3 kernelspec, installed for this interpreter (``--user``) if Jupyter finds none."""
    from jupyter_client.kernelspec import KernelSpecManager
    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", KERNEL],
                       check=True, capture_output=True)
    assert KERNEL in KernelSpecManager().find_kernel_specs()
    return KERNEL


@pytest.mark.parametrize("name", ["wkv5_tir.ipynb", "convert_build_generate.ipynb"])
def test_notebook_runs(kernel_name, name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    elapsed = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    assert elapsed < BUDGET_S, f"{name} took {elapsed:.0f} s"
