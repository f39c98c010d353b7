"""End to end: every numbered notebook runs under papermill on the seconds-scale `smoke` profile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs_on_smoke_profile(notebook, smoke_output):
    """Notebooks run in order and share one output folder, as under `make reproduce`."""
    papermill = pytest.importorskip("papermill")
    env = {**os.environ, "RLREASON_OUTPUT_DIR": str(smoke_output), "MPLBACKEND": "Agg"}
    rendered = smoke_output / notebook.name
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "--no-progress-bar", "-k", "python3", "--cwd",
         str(REPO / "notebooks"), "-p", "PROFILE", "smoke", str(notebook), str(rendered)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{notebook.name} failed under papermill:\n{proc.stderr[-4000:]}"
    assert rendered.exists()
    assert papermill is not None
