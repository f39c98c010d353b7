"""Stage wiring on the smoke profile: the "more SFT" control of EI's ReST-EM reading."""
from __future__ import annotations

import json

import pytest

from rlreason import stages


@pytest.fixture()
def smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    return stages.setup("smoke")


def test_sft_control_trains_the_given_steps_from_the_base_on_the_references(smoke):
    control = stages.sft_control(smoke, 0, steps=3)
    assert control.name == "sft-control-3steps-seed0" and control.checkpoint.name == "final"
    assert (control.checkpoint / "config.json").exists() and (control.run_dir / "DONE").exists()
    steps = [r["step"] for r in control.rows if "loss" in r]
    assert steps[-1] == 3
    config = json.loads((control.run_dir / "config.json").read_text())["config"]
    assert config["base"] == str(stages.base(smoke, 0))
    assert config["sft"]["max_steps"] == config["sft"]["schedule_steps"] == 3
    assert stages.sft_control(smoke, 0, steps=3).rows == control.rows  # reused, not retrained
    assert stages.sft(smoke, 0).checkpoint.name == f"epoch_{smoke.sft.epochs:02d}"  # default unchanged
    with pytest.raises(ValueError, match="sft_control: steps = 0; expected a positive number"):
        stages.sft_control(smoke, 0, steps=0)  # a student that never trained has no control


def test_the_cli_takes_a_local_base_model(policy_dir, tmp_path, monkeypatch):
    from rlreason.__main__ import parse, run

    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    args = parse(["base", "--profile", "smoke", "--base-model", str(policy_dir)])
    assert run(args) == {"stage": "base", "checkpoint": str(policy_dir)}  # named, not trained
    assert run(parse(["base", "--profile", "smoke"]))["checkpoint"] != str(policy_dir)
