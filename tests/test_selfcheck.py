"""The grading self-check (`python -m rlreason.selfcheck`): its table, its GSM8K check, its CLI."""

import math
import os
import subprocess
import sys

import pytest

import rlreason.selfcheck as selfcheck
from rlreason.data import DATA_DIR_ENV
from rlreason.grading import NO_ANSWER, extract_answer
from rlreason.problems import Problem
from rlreason.selfcheck import SOLUTIONS, Solution, check_references, check_solutions, main


def test_the_shipped_solutions_are_graded_as_expected():
    assert len(SOLUTIONS) >= 20
    assert len({s.name for s in SOLUTIONS}) == len(SOLUTIONS)
    assert check_solutions() == []


def test_a_wrong_verdict_is_reported_by_name():
    wrong = Solution("claims-correct", "#### 73", 72, strict=True, flexible=False)
    (strict,) = check_solutions([wrong])
    assert "'claims-correct'" in strict and "strict read 73" in strict


def test_the_table_catches_a_tolerant_grader(monkeypatch):
    # The grader of main before issue 15 compared with rel_tol=1e-6: the table must notice.
    def tolerant(text, reference, mode="strict"):
        answer = extract_answer(text, mode)
        return answer is not NO_ANSWER and math.isclose(answer, reference, rel_tol=1e-6)

    monkeypatch.setattr(selfcheck, "is_correct", tolerant)
    failures = check_solutions()
    assert any("'million-plus-one'" in f for f in failures)
    assert any("'gsm8k-1450000-plus-one'" in f for f in failures)


def test_references_are_checked_in_both_modes():
    good = Problem("p-0", "q", "2+2 = <<2+2=4>>4\n#### 4", 4.0)
    misread = Problem("p-1", "q", "#### 4\nthen 5 more", 4.0)  # flexible reads 5
    assert check_references([good]) == []
    (failure,) = check_references([good, misread])
    assert failure.startswith("p-1: flexible read 5.0")


def test_references_catch_a_tolerant_grader(monkeypatch):
    def tolerant(text, reference, mode="strict"):
        answer = extract_answer(text, mode)
        return answer is not NO_ANSWER and math.isclose(answer, reference, rel_tol=1e-6)

    monkeypatch.setattr(selfcheck, "is_correct", tolerant)
    large = Problem("p-big", "q", "#### 1,450,000", 1_450_000.0)
    small = Problem("p-small", "q", "#### 72", 72.0)
    assert check_references([small]) == []
    (failure,) = check_references([large, small])[:1]
    assert failure == "p-big: strict grades '#### 1450001' correct for 1450000"


def test_cli_without_data_skips_the_references_and_says_so(monkeypatch, capsys):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert main([]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("rlreason selfcheck ok:") and "skipped" in line
    assert main(["--require-data"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_exits_non_zero_on_a_failure(monkeypatch, capsys):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(selfcheck, "SOLUTIONS", (Solution("bad", "#### 1", 2, True, True),))
    assert main([]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("rlreason selfcheck FAILED (2 failures)")
    assert out[0].startswith("solution 'bad': strict read 1.0")


@pytest.mark.data
@pytest.mark.skipif(not os.environ.get(DATA_DIR_ENV), reason=f"set {DATA_DIR_ENV} (GSM8K files)")
def test_every_gsm8k_reference_reads_as_its_answer():
    # As a user runs it: a fresh interpreter, the one-line summary, exit status 0.
    run = subprocess.run([sys.executable, "-m", "rlreason.selfcheck", "--require-data"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == (
        f"rlreason selfcheck ok: {len(SOLUTIONS)} solutions x 2 modes; "
        "8,792 GSM8K references x 2 modes"
    )
