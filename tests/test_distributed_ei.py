"""Expert Iteration data-parallel: 2 CPU processes (gloo, `accelerate launch`) run a round as 1
process does: rank 0 alone samples, evaluates and writes, both fine-tune the student on the same
global batches, and a run stopped after training resumes where it stopped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import distributed_ei
from test_distributed import LAUNCH_ENV, LOSS_RTOL, free_port

from rlreason.io import read_jsonl

TIMINGS = ("sample_wall_s", "train_wall_s", "round_eval_wall_s", "eval_wall_s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """`distributed_ei.py` run as 2 processes by `accelerate launch`, and meanwhile the same round
    in this process, each from its own copy of the random init (round 0 evaluates it into its
    folder): the two output folders and the one-process rows."""
    two, one = tmp_path_factory.mktemp("ei-two-processes"), tmp_path_factory.mktemp("ei-one-process")
    inits = [distributed_ei.build_init(out / "init") for out in (two, one)]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(Path(distributed_ei.__file__)), "--init", str(inits[0]), "--out", str(two)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as launch:
        rows = distributed_ei.run(inits[1], one, [])
        printed, _ = launch.communicate(timeout=300)
    assert launch.returncode == 0, printed[-6000:]
    return two, one, rows


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(out / "ei" / "train_01" / "metrics.jsonl") if "loss" in r]


def test_rank_zero_samples_the_same_rollouts_and_keeps_the_same_data(runs):
    two, one, _ = runs
    for name in ("round_01.rollouts.jsonl", "round_01.data.jsonl"):
        assert (two / "ei" / name).read_bytes() == (one / "ei" / name).read_bytes(), name
    assert read_jsonl(one / "ei" / "round_01.data.jsonl")  # D_1 holds samples to learn


def test_both_ranks_train_the_student_as_one_process(runs):
    two, one, rows = runs
    assert len(losses(one)) == 6  # 2 epochs of 3 batches, the last one short
    assert losses(two) == pytest.approx(losses(one), rel=LOSS_RTOL)
    rank0, rank1 = ranks(two)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank1["rows"] == rank0["rows"]  # every rank returns the run's rows
    for got, want in zip(rank0["rows"], rows, strict=True):  # the resumed run's = one process's
        got, want = ({k: v for k, v in r.items() if k not in TIMINGS} for r in (got, want))
        assert got.pop("train_loss", 0.0) == pytest.approx(want.pop("train_loss", 0.0),
                                                           rel=LOSS_RTOL)
        assert got == want


def test_only_rank_zero_samples_and_writes(runs):
    two, one, _ = runs
    rank0, rank1 = ranks(two)
    events = [e for e in rank0["log"] if e.startswith("callback") or e == "interrupted"]
    assert rank1["log"] == events  # no write, no sampler; the callback ran on both ranks
    written = {e.split()[1] for e in rank0["log"] if e not in events and not e.startswith("make_")}
    run = two / "ei"
    assert {str(run / f) for f in ("round_00.json", "round_01.rollouts.jsonl",
                                   "round_01.data.jsonl", "round_01.json", "metrics.jsonl",
                                   "round_01", "train_01/metrics.jsonl")} <= written
    files = [sorted(p.relative_to(out / "ei").as_posix() for p in (out / "ei").rglob("*"))
             for out in (two, one)]
    assert files[0] == files[1]
    assert len(read_jsonl(run / "metrics.jsonl")) == 2  # rounds 0 and 1, none twice
    # Stopped after training, the resumed run samples and trains no more: it evaluates round 1.
    stop = rank0["log"].index("interrupted")
    assert rank0["log"][stop - 1] == "callback trained 1"
    resumed = rank0["log"][stop + 1:]
    assert not [e for e in resumed if e.endswith(".rollouts.jsonl") or "train_01" in e
                or e in (f"save_policy {run / 'round_01'}", f"make_sampler {two / 'init'}",
                         "callback train_start 1")]
    assert "callback evaluated 1" in resumed


def test_the_command_line_runs_ei_under_a_launch(monkeypatch, capsys):
    from rlreason.__main__ import parse

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse(["ei", "--profile", "smoke"]).stage == "ei"
    for argv in (["ei", "--reward", "orm"], ["ppo"]):  # the ORM stage, PPO: one process
        with pytest.raises(SystemExit):
            parse(argv)
    assert "does not run data-parallel" in capsys.readouterr().err
