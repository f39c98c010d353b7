"""Run folders, atomic writes, JSONL, seeding and profiles."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from rlreason.config import EIConfig, EvalConfig, ORMConfig, PPOConfig, RCRLConfig, SFTConfig
from rlreason.io import append_jsonl, atomic_write_text, read_jsonl, write_jsonl
from rlreason.profiles import PROFILE_NAMES, get_profile
from rlreason.runs import git_hash, make_run_dir, set_seed


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


def test_open_run_compares_with_the_written_config(tmp_path):
    from rlreason.runs import open_run

    config = {"sft": SFTConfig(epochs=2), "init": tmp_path / "base"}
    open_run(tmp_path, "run", config, seed=0).mark_done()  # nothing written yet: a new run
    assert open_run(tmp_path, "run", config, seed=0).done  # a Path is compared as written (str)
    assert not open_run(tmp_path, "run", {**config, "sft": SFTConfig(epochs=3)}, seed=0).done
    assert (tmp_path / ".previous" / "run" / "DONE").exists()


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
    smollm, gpu = get_profile("smollm"), get_profile("smollm-gpu")
    assert smollm.dataset == gpu.dataset == "gsm8k" and smollm.lora and gpu.lora
    assert smollm.n_train < 1000 and gpu.n_train is None and gpu.n_test is None  # all of GSM8K
    assert smollm.base_shots > 0 and "\nQuestion:" in smollm.eval.stop and gpu.sampler == "vllm"
    with pytest.raises(ValueError, match="unknown profile 'huge'; expected one of tiny, smoke, "
                                         "smollm, smollm-gpu, paper"):
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


# ---- run folders: one behaviour for a folder written under another config --------------------------


def test_open_run_reuses_a_folder_of_the_same_identity(tmp_path):
    from rlreason.runs import open_run

    run = open_run(tmp_path, "ei-x-seed0", {"k": 4, "sft": {"lr": 1e-4}}, seed=0)
    (run.dir / "round_01.json").write_text("{}")
    run.mark_done()
    again = open_run(tmp_path, "ei-x-seed0", {"k": 4, "sft": {"lr": 1e-4}}, seed=0)
    assert again.done and (again.dir / "round_01.json").exists()
    saved = json.loads((again.dir / "config.json").read_text())
    assert saved["seed"] == 0 and saved["git"] and saved["machine"]["cores"] >= 1


def test_open_run_moves_a_changed_run_aside_and_names_the_keys(tmp_path, capsys):
    from rlreason.runs import open_run

    run = open_run(tmp_path, "r", {"k": 4, "sft": {"lr": 1e-4, "epochs": 2}}, seed=0)
    (run.dir / "old.txt").write_text("kept")
    run.mark_done()
    new = open_run(tmp_path, "r", {"k": 8, "sft": {"lr": 1e-4, "epochs": 3}}, seed=0)
    line = capsys.readouterr().out
    assert "changed: k, sft.epochs" in line and ".previous" in line
    assert not new.done and not (new.dir / "old.txt").exists()
    assert (tmp_path / ".previous" / "r" / "old.txt").read_text() == "kept"  # nothing is lost
    open_run(tmp_path, "r", {"k": 8, "sft": {"lr": 1e-4, "epochs": 3}}, seed=0, recompute=True)
    assert json.loads((tmp_path / ".previous" / "r" / "config.json").read_text())["config"]["k"] == 8


def test_round_seeds_are_fixed_and_distinct():
    from rlreason.runs import round_seed

    assert round_seed(0, 1) == round_seed(0, 1) != round_seed(0, 2) != round_seed(1, 1)
    assert round_seed(0, 1) != round_seed(0, 1, 7)


# ---- configs reject bad values with one line naming the field --------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: EvalConfig(k=0), "EvalConfig.k = 0; expected an integer >= 1"),
    (lambda: EvalConfig(temperature=-0.5), "EvalConfig.temperature = -0.5; expected a number >= 0"),
    (lambda: EIConfig(k=0), "EIConfig.k = 0"),
    (lambda: EIConfig(k_sweep=(1, 0)), "EIConfig.k_sweep = 0"),
    (lambda: PPOConfig(kl_estimator="k2"), "PPOConfig.kl_estimator = 'k2'; expected one of 'k1', 'k3'"),
    (lambda: PPOConfig(mixed_precision="bf8"), "PPOConfig.mixed_precision = 'bf8'"),
    (lambda: ORMConfig(balance="equal"), "ORMConfig.balance = 'equal'"),
    (lambda: RCRLConfig(temperature=-1), "RCRLConfig.temperature = -1"),
    (lambda: get_profile("smoke", sampler="vlm"), "Profile.sampler = 'vlm'"),
    (lambda: get_profile("smoke", seeds=(0, -1)), "Profile.seeds = (0, -1)"),
    (lambda: get_profile("tny"), "unknown profile 'tny'"),
], ids=["k0", "temperature", "ei-k", "ei-sweep", "kl-estimator", "precision", "balance", "rcrl-t",
        "sampler", "seeds", "profile"])
def test_bad_config_values_are_one_line_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        make()
    assert "\n" not in str(err.value)


def test_lora_alpha_has_one_rule():
    from rlreason.config import LoraSettings

    assert LoraSettings(r=8).alpha == 16 and LoraSettings(r=8, alpha=4).alpha == 4
    assert get_profile("paper").lora.alpha == get_profile("paper").orm.lora.alpha == 128


def test_a_torn_last_line_is_skipped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')  # what a process killed mid-append leaves
    with pytest.warns(RuntimeWarning, match="unfinished last line"):
        assert read_jsonl(path) == [{"step": 1}]
    append_jsonl(path, {"step": 2})
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with open(path, "a") as f:
        f.write('{"bad": \n{"step": 3}\n')  # a malformed line in the middle is an error
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: malformed JSON line"):
        read_jsonl(path)


def test_a_failed_write_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "config.json"
    atomic_write_text(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*config.json: No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_seeds_must_be_non_negative_integers():
    from rlreason.runs import check_seed, round_seed

    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(ValueError, match="expected a non-negative integer"):
            check_seed(bad)
        with pytest.raises(ValueError):
            set_seed(bad)
    with pytest.raises(ValueError):
        round_seed("7", 0)


def test_a_new_field_at_its_neutral_value_is_not_a_change():
    from rlreason.runs import changed_keys

    old = {"ppo": {"lr": 1e-5}, "sft": {"epochs": 2}}
    assert changed_keys(old, {"ppo": {"lr": 1e-5, "stop": ()}, "sft": {"epochs": 2, "group_by_length": False}}) == []
    assert changed_keys(old, {"ppo": {"lr": 1e-5, "stop": []}, "sft": {"epochs": 2}}) == []  # as JSON
    assert changed_keys(old, {"ppo": {"lr": 1e-5, "stop": ["\nQuestion:"]}, "sft": {"epochs": 2}}) == ["ppo.stop"]
    assert changed_keys(old, {"ppo": {"lr": 2e-5}, "sft": {"epochs": 2}}) == ["ppo.lr"]
