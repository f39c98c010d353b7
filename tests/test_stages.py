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


def parity_reward(problems, samples):
    """A reward that every sample gets, random model or not: its share of even token ids (on its
    last token), so that a different draw of samples gives a different mean."""
    from rlreason.rewards import Reward

    out = []
    for s in samples:
        n = len(s.token_ids)
        total = sum(t % 2 == 0 for t in s.token_ids) / n if n else 0.0
        out.append(Reward(total, [0.0] * (n - 1) + [total] if n else [], [total] if n else [],
                          [n - 1] if n else []))
    return out


@pytest.fixture()
def short_ppo(smoke, policy_dir, monkeypatch):
    """A real 3-update PPO run of the smoke profile from the tiny policy folder (update 1 trains
    only the value), with `parity_reward`; its final test evaluation cut to 4 questions."""
    import dataclasses
    import importlib

    stage = importlib.import_module("rlreason.stages.ppo")
    monkeypatch.setattr(stage, "init_checkpoint", lambda profile, init, seed: policy_dir)
    monkeypatch.setattr(stage, "reward_fn", lambda *a, **kw: parity_reward)
    profile = dataclasses.replace(smoke, n_test=4, eval=dataclasses.replace(smoke.eval, k=2))
    cfg = dataclasses.replace(profile.ppo, updates=3, value_warmup_updates=1, eval_every=3,
                              stop=("\n\n",))
    return profile, stages.ppo(profile, "sft", 0, "sparse", cfg, progress=False)


def test_start_rewards_replay_the_start_policy_on_each_updates_questions(short_ppo, monkeypatch):
    import dataclasses

    from rlreason.sampling import HFSampler
    from rlreason.stages.ppo import run_config

    profile, run = short_ppo
    start = stages.start_rewards(profile, run)
    logged = [row["reward"] for row in run.rows]
    assert len(start) == len(run.rows) == 3 and len(set(logged)) > 1  # the batches differ
    # Updates 1 and 2 sample the unchanged start policy (update 1 only trained the value): the same
    # questions and seeds give exactly the logged reward.
    assert start[:2] == logged[:2]
    assert run_config(json.loads(json.dumps(run.identity))) == run_config(run.identity)
    assert run_config(run.identity).stop == ("\n\n",)

    def no_sampling(self, prompts, params):
        raise AssertionError("sampled although the cache holds this run")

    shorter = dataclasses.replace(run, rows=run.rows[:1])  # another run than the cached one
    with monkeypatch.context() as m:
        m.setattr(HFSampler, "generate", no_sampling)
        assert stages.start_rewards(profile, run) == start  # read from start_rewards.json
        with pytest.raises(AssertionError, match="sampled although"):
            stages.start_rewards(profile, shorter)
    assert stages.start_rewards(profile, shorter) == start[:1]
    cached = json.loads((run.run_dir / "start_rewards.json").read_text())
    assert cached["key"]["updates"] == [1] and cached["rewards"] == start[:1]
