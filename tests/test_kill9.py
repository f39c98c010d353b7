"""Every long stage survives SIGKILL at random points: resumed, it gives the uninterrupted numbers."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import kill9

pytestmark = pytest.mark.slow


def test_stages_resume_after_sigkill_with_the_same_numbers(tmp_path, capsys):
    code = kill9.main(["--kills", "2", "--seed", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    for stage in kill9.STAGES:
        assert f"{stage}: " in out and "same result" in out.split(f"{stage}: ")[1].splitlines()[0]
    delivered = int(out.split(" SIGKILLs delivered")[0].split()[-1])
    assert delivered >= len(kill9.STAGES), out  # most kills land before the stage finishes


def test_the_file_check_catches_a_torn_file(tmp_path):
    (tmp_path / "ok.json").write_text("{}")
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n{"a": ')
    assert [p.split(":")[0] for p in kill9.check_files(tmp_path)] == ["rows.jsonl"]
