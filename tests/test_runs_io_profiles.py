"""Run folders, atomic writes, JSONL, seeding and profiles."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from rlreason.config import SFTConfig
from rlreason.io import append_jsonl, atomic_write_text, read_jsonl, write_jsonl
from rlreason.profiles import PROFILE_NAMES, get_profile
from rlreason.runs import config_changed, git_hash, make_run_dir, set_seed


def test_atomic_write_leaves_no_temp_files_and_keeps_old_content_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a" / "file.txt"
    atomic_write_text(path, "first")
    assert path.read_text() == "first"
    import os

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "second")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_jsonl_round_trip_and_malformed_line(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}])
    append_jsonl(path, {"b": 2})
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n{"b": 2}\nnot json\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:3: malformed JSON line"):
        read_jsonl(path)


def test_run_dir_writes_config_seed_and_git_hash(tmp_path):
    run = make_run_dir(tmp_path, "sft-seed3", {"sft": SFTConfig(epochs=2)}, seed=3)
    meta = json.loads((run / "config.json").read_text())
    assert meta["seed"] == 3 and meta["config"]["sft"]["epochs"] == 2
    assert meta["git"] == git_hash() and meta["git"] != ""
    assert run.name == "sft-seed3"  # named after what it is, no timestamp


def test_config_changed_compares_with_the_written_config(tmp_path):
    config = {"sft": SFTConfig(epochs=2), "init": tmp_path / "base"}
    assert not config_changed(tmp_path / "run", config)  # nothing written yet
    make_run_dir(tmp_path, "run", config, seed=0)
    assert not config_changed(tmp_path / "run", config)  # a Path is compared as written (str)
    assert config_changed(tmp_path / "run", {**config, "sft": SFTConfig(epochs=3)})


def test_set_seed_reproduces_python_numpy_and_torch():
    import torch

    set_seed(5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_seed(5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_profiles_and_unknown_profile():
    for name in PROFILE_NAMES:
        p = get_profile(name)
        assert p.name == name and p.eval.k >= 1
    assert get_profile("paper").eval.k == 96 and get_profile("paper").base_model.startswith("meta-llama/")
    assert get_profile("smoke").world.n_sft < get_profile("tiny").world.n_sft
    with pytest.raises(ValueError, match="unknown profile 'huge'; expected one of tiny, smoke, paper"):
        get_profile("huge")
    assert get_profile("tiny", n_test=10).n_test == 10


def test_output_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    p = get_profile("smoke")
    assert p.figures_dir == tmp_path / "smoke" and p.runs_dir == tmp_path / "smoke" / "runs"


def test_floor_modules_do_not_import_torch():
    code = ("import sys, rlreason.grading, rlreason.steps, rlreason.metrics, rlreason.data, "
            "rlreason.world, rlreason.config, rlreason.profiles, rlreason.runs, rlreason.io, "
            "rlreason.problems; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
