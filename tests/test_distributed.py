"""Data parallelism: 2 CPU processes (gloo, `accelerate launch`) train as 1 process with the same
global batch, and only rank 0 writes; the helpers are trivial without a launch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import distributed_sft

from rlreason import distributed, models
from rlreason.models import default_device_dtype, load_policy
from rlreason.training import RankShard, shard

LOSS_RTOL = 1e-5
"""Measured: the 2-process losses are within 5e-7 (absolute, on losses ~5) of the 1-process ones;
the gradients' all-reduce sums in another order than one process does."""
PARAM_ATOL = 1e-5
"""Measured: the final parameters differ by at most 3e-7 after 6 and 10 steps."""
LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, dict]:
    """`distributed_sft.py` run as 2 processes by `accelerate launch`, and meanwhile the same
    training in this process: the two output folders and the one-process results."""
    two, one = tmp_path_factory.mktemp("two-processes"), tmp_path_factory.mktemp("one-process")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(Path(distributed_sft.__file__)),
               "--out", str(two)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as launch:
        results = distributed_sft.train_all(one)
        printed, _ = launch.communicate(timeout=300)
    assert launch.returncode == 0, printed[-6000:]
    return two, one, results


@pytest.fixture(scope="module")
def launched(runs) -> Path:
    return runs[0]


@pytest.fixture(scope="module")
def alone(runs) -> tuple[Path, dict]:
    return runs[1], runs[2]


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_processes_log_the_losses_of_one(launched, alone):
    rank0, rank1 = ranks(launched)
    assert rank0["world_size"] == rank1["world_size"] == 2
    for name, result in alone[1].items():
        one = [r for r in result["rows"] if "loss" in r]
        two = [r for r in rank0["rows"][name] if "loss" in r]
        assert [(r["step"], r["epoch"], r["tokens"]) for r in two] == \
               [(r["step"], r["epoch"], r["tokens"]) for r in one]  # the same batches and steps
        assert [r["lr"] for r in two] == [r["lr"] for r in one]  # the scheduler steps once a step
        assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=LOSS_RTOL)
        assert rank1["rows"][name] == rank0["rows"][name]  # every rank returns the same rows


def test_two_processes_end_at_the_parameters_of_one(launched, alone):
    two = torch.load(launched / "params.pt")
    for name, result in alone[1].items():
        for key, value in result["params"].items():
            assert torch.allclose(two[name][key], value, rtol=0, atol=PARAM_ATOL), (name, key)


def test_only_rank_zero_writes_and_runs_the_callback(launched, alone):
    rank0, rank1 = ranks(launched)
    assert rank1["writes"] == []
    written = {line.split()[1] for line in rank0["writes"]}
    for name in distributed_sft.CONFIGS:
        files = ("data.json", "precision.json", "metrics.jsonl")
        assert {str(launched / name / f) for f in files} <= written
        one = (alone[0] / name / "metrics.jsonl").read_text().splitlines()
        two = (launched / name / "metrics.jsonl").read_text().splitlines()
        assert len(two) == len(one)  # no row written twice
        assert sorted(p.name for p in (launched / name).iterdir()) == \
               sorted(p.name for p in (alone[0] / name).iterdir())
        for report in (rank0, rank1):  # the callback ran on rank 0, its dict reached every rank
            epochs = [r for r in report["rows"][name] if r.get("end_of_epoch")]
            assert [r["callback_rank"] for r in epochs] == [0, 0]
    saves = {f"save_policy {launched / 'shuffled' / f'epoch_{e:02d}'}" for e in (1, 2)}
    assert saves <= set(rank0["writes"])


def test_rank_shards_cover_each_global_batch_once():
    batches = [[4, 0, 7, 1, 5], [2, 6, 3], [8]]
    parts = [list(RankShard(batches, r, 2, placeholder=9)) for r in range(2)]
    assert parts == [[[4, 0], [2], [9]], [[7, 1, 5], [6, 3], [8]]]  # rank 0 gets no example of [8]
    for r in range(3):
        assert shard(range(7), r, 3) == list(range(7))[7 * r // 3: 7 * (r + 1) // 3]
    assert sum((shard([1, 2, 3, 4, 5], r, 3) for r in range(3)), []) == [1, 2, 3, 4, 5]


def test_without_a_launch_this_process_is_the_main_one(monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.local_rank()) == (1, 0, 0)
    assert distributed.is_main_process()
    distributed.barrier()  # nothing to wait for, no process group started
    assert not torch.distributed.is_initialized()
    assert distributed.run_on_main(lambda x, y=0: x + y, 2, y=3) == 5
    assert distributed.main_process_only(lambda: "ran")() == "ran"
    assert default_device_dtype("cuda")[0] == torch.device("cuda")  # a single process: as before


def test_leave_ends_the_process_group_once_and_is_then_a_no_op(tmp_path):
    """What `init` registers to run at exit (an abort at teardown otherwise failed 1 in 6 launches)."""
    distributed.leave()  # no group: nothing to do
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}",
                                         rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    distributed.leave()
    assert not torch.distributed.is_initialized()
    distributed.leave()


def test_under_a_launch_each_rank_loads_onto_its_own_gpu(monkeypatch, policy_dir):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_device_dtype("cuda") == (torch.device("cuda", 1), torch.bfloat16)
    assert default_device_dtype("cuda:0")[0] == torch.device("cuda", 0)  # an explicit GPU stays
    assert default_device_dtype("cpu")[0] == torch.device("cpu")
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")  # no GPU needed to see where the weights would go

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(RuntimeError, match="stop here"):
        load_policy(policy_dir, load_in_4bit=True, device="cuda")
    assert seen["device_map"] == {"": 1}
