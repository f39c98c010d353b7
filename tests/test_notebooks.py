"""The notebooks: thin and committed without outputs (fast checks), and end to end under papermill
on the seconds-scale `smoke` profile, in order, into one output folder as `make reproduce` does
(slow): every notebook runs, the results table holds every algorithm, notebook 07's claims table
holds C1-C6, and every figure exists as PNG and PDF."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CODE_LINES = 40
FIGURES = [
    "fig00_pretraining_loss", "fig01_sft_loss", "fig01_sft_epochs_sweep", "fig01_sft_train_test_gap", "fig01_pass_at_k",
    "fig02_orm_loss", "fig02_orm_reliability", "fig02_rerank_vs_k",
    "fig03_ei_rounds", "fig03_ei_rollouts", "fig03_ei_k_sweep", "fig03_ei_rewards",
    "fig04_ppo_diagnostics", "fig04_ppo_rollouts", "fig04_ppo_vs_ei_rollouts", "fig04_ppo_final",
    "fig05_rcrl_rollouts", "fig05_rcrl_label_likelihood", "fig05_rcrl_label_gap",
    "fig06_pass_at_k", "fig06_maj1_vs_passK", "fig06_diversity", "fig06_coverage_beyond_sft",
    "fig06_ei_rounds", "fig07_algorithms",
]
"""Every figure the notebooks save (as `<name>.png` and `<name>.pdf`)."""


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def code_lines(notebook: Path) -> int:
    """Non-blank, non-comment lines of a notebook's code cells."""
    return sum(1 for c in cells(notebook) if c["cell_type"] == "code"
               for line in "".join(c["source"]).splitlines()
               if line.strip() and not line.strip().startswith("#"))


def test_there_are_notebooks():
    assert [n.name[:2] for n in NOTEBOOKS] == [f"{i:02d}" for i in range(8)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_is_thin_and_clean(notebook):
    """A parameters cell first among the code cells, calls to `rlreason.report`, under
    `MAX_CODE_LINES` code lines, no outputs, nothing cited from outside the repository."""
    code = [c for c in cells(notebook) if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert "".join(code[0]["source"]).split() == ["PROFILE", "=", '"tiny"', "SEED", "=", "0"]
    assert code_lines(notebook) < MAX_CODE_LINES
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    text = notebook.read_text()
    assert "PAPER.md" not in text and "../shared" not in text
    imports = [line for c in code for line in "".join(c["source"]).splitlines()
               if line.startswith(("import ", "from "))]
    assert set(imports) <= {"from rlreason import report", "from rlreason import plots, report"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every notebook rendered on the smoke profile, in order, into one output folder; the first
    failure stops the rest. Returns (output folder, {notebook name: papermill's stderr tail})."""
    pytest.importorskip("papermill")
    out = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "RLREASON_OUTPUT_DIR": str(out), "MPLBACKEND": "Agg"}
    failed: dict[str, str] = {}
    for notebook in NOTEBOOKS:
        if failed:
            failed[notebook.name] = "not run: an earlier notebook failed"
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "papermill", "--no-progress-bar", "-k", "python3", "--cwd",
             str(REPO / "notebooks"), "-p", "PROFILE", "smoke", str(notebook),
             str(out / notebook.name)], env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not (out / notebook.name).exists():
            failed[notebook.name] = proc.stderr[-4000:]
    return out / "smoke", failed


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs_on_smoke_profile(notebook, smoke):
    _, failed = smoke
    assert notebook.name not in failed, f"{notebook.name} failed under papermill:\n{failed[notebook.name]}"


@pytest.mark.slow
def test_results_table_has_every_algorithm(smoke):
    out, _ = smoke
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
    assert {r["algorithm"] for r in rows} >= {"base", "sft", "ei", "ppo", "rcrl"}
    assert all(r["dataset"].startswith("tiny-") and r["run"] for r in rows)


@pytest.mark.slow
def test_claims_table_has_every_claim(smoke):
    out, _ = smoke
    claims = pd.read_csv(out / "tables" / "claims.csv")
    assert list(claims["claim"]) == [f"C{i}" for i in range(1, 7)]
    assert claims["verdict"].notna().all() and claims["measured here"].notna().all()
    assert (out / "tables" / "claims.md").read_text().startswith("| claim |")


@pytest.mark.slow
def test_every_figure_exists_as_png_and_pdf(smoke):
    out, _ = smoke
    missing = [f"{name}{ext}" for name in FIGURES for ext in (".png", ".pdf")
               if not (out / "figures" / f"{name}{ext}").is_file()]
    assert not missing, f"figures not written: {missing}"
