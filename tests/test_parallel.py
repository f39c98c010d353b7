"""Independent calls in worker processes: order, captured output, thread share, errors."""
from __future__ import annotations

import math
import operator
import os

import pytest
import torch

from rlreason.parallel import WORKER_THREADS_ENV, Call, run_calls, worker_threads


def test_worker_threads_split_the_cores():
    assert worker_threads(2, threads=2) == 1
    assert worker_threads(2, threads=8) == 4
    assert worker_threads(4, threads=2) == 1  # at least one
    assert worker_threads(1, threads=3) == 3


def test_in_process_calls_run_in_order():
    assert run_calls([Call(operator.add, 1, 2), Call(math.factorial, 4)], workers=1, progress=False) == [3, 24]
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        run_calls([Call(abs, 1)], workers=0)


def test_worker_processes_return_in_order_with_their_output(capfd):
    calls = [Call(math.factorial, k) for k in (6, 3, 5)] + [Call(print, "hello from a worker", name="greeter"),
                                                             Call(torch.get_num_threads),
                                                             Call(os.getenv, WORKER_THREADS_ENV)]
    results = run_calls(calls, workers=2, progress=False)
    assert results[:4] == [720, 6, 120, None]
    share = worker_threads(2)
    assert results[4] == share and results[5] == str(share)  # each worker keeps its share of threads
    assert "[greeter]\nhello from a worker\n" in capfd.readouterr().out  # printed here, under its name


def test_a_failing_call_is_named():
    with pytest.raises(RuntimeError, match=r"bad int failed in its worker process: ValueError: .*'x'"):
        run_calls([Call(int, "x", name="bad int"), Call(abs, -1)], workers=2, progress=False)


def _visible_gpu(delay: float) -> str:
    import time

    time.sleep(delay)  # both workers take a call
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_each_worker_sees_its_own_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    seen = run_calls([Call(_visible_gpu, 0.5), Call(_visible_gpu, 0.5)], workers=2, progress=False)
    assert sorted(seen) == ["3", "5"]
