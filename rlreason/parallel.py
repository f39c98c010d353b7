"""Independent runs side by side: each in its own worker process, with the cores split between them.

Two runs that share nothing (EI from SFT and from the base; PPO with each reward) can run at the
same time. On a CPU this is faster than running them one after the other with every core each:
much of a small model's step is single-threaded Python and small tensor ops that a second thread
does not speed up. On the tiny profile (2 cores), two one-thread processes did the work of two
PPO runs (4 updates and a 500 x 32 evaluation each) in 64 s, against 82 s for the same runs one
after the other with two threads each; sampling alone gained 1.34x.

>>> results = run_calls([Call(stages.ppo, profile, "sft", 0, r) for r in rewards], workers=2)  # doctest: +SKIP

- Each call runs in a fresh (spawned) process, so its function and arguments must be picklable:
  a module-level function and plain values. An `orm.ORMScorer` pickles as its checkpoint path
  and is loaded again in the worker.
- The worker's torch uses `threads // workers` threads (at least one). A run's numbers depend on
  its thread count only through float rounding: a profile's `workers` setting is part of what
  reproduces its numbers.
- What a call prints is captured in the worker and printed here, under its name, when it returns.
- On a machine with GPUs, each worker process sees one of them (CUDA_VISIBLE_DEVICES, round
  robin): the study is a grid of independent runs, and this puts one run on each GPU.
- `workers=1` (or one call) runs the calls here, one after the other, exactly as a loop would.
- A call that raises stops the batch: the error names the call; runs already finished are on disk
  and are reused by the next attempt, as every stage reuses its finished runs.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

WORKER_THREADS_ENV = "RLREASON_WORKER_THREADS"
"""Set in a worker process: its torch thread count, which `stages.setup` keeps."""


@dataclass
class Call:
    """One function call to run, possibly in a worker process."""

    fn: Callable
    """A module-level (picklable) function."""
    args: tuple = ()
    """Its positional arguments."""
    kwargs: dict = field(default_factory=dict)
    """Its keyword arguments."""
    name: str = ""
    """Shown in progress and error messages (default: the function's name and arguments)."""

    def __init__(self, fn: Callable, *args, name: str = "", **kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.name = name or f"{fn.__name__}{tuple(a for a in args if isinstance(a, (str, int)))}"


def gpu_ids() -> list[str]:
    """The GPUs that workers are spread over: CUDA_VISIBLE_DEVICES' entries, else all torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _init_worker(threads: int, gpus=None) -> None:
    gpu = gpus.get() if gpus is not None else None
    if gpu is not None:  # before torch initialises CUDA in this process: it sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch
    from transformers.utils import logging as hf_logging

    os.environ[WORKER_THREADS_ENV] = str(threads)
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # as `stages.setup` does (its stderr is not captured)


def _run_captured(call: Call) -> tuple[Any, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = call.fn(*call.args, **call.kwargs)
    return value, out.getvalue()


def worker_threads(workers: int, threads: int | None = None) -> int:
    """Torch threads per worker when `threads` (default: this process's torch threads) are split."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return max(1, threads // max(1, workers))


def oversubscription(workers: int, threads: int, cores: int | None = None,
                     load: float | None = None) -> str | None:
    """A warning when `workers` processes of `threads` threads each would oversubscribe the
    machine's cores, or when the machine is already busy (1-minute load average); else None.

    On 2 cores, two torch jobs do not run 2x slower but up to ~100x (OpenMP threads wait on
    each other), so this is said before a long run starts, not after.
    """
    cores = cores or os.cpu_count() or 1
    if workers * threads > cores:
        return (f"{workers} worker(s) x {threads} thread(s) = {workers * threads} threads on {cores} "
                "cores: oversubscribed, expect much slower runs (lower workers or threads)")
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    if load is not None and load > cores + 0.5:
        return (f"the machine is busy (load {load:.1f} on {cores} cores): another heavy job is "
                "running, and timings will be far slower than the profile's")
    return None


def run_calls(calls: Sequence[Call], workers: int = 1, progress: bool = True,
              desc: str = "runs") -> list[Any]:
    """The calls' return values, in order; at most `workers` run at a time, each in its own process."""
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    calls = list(calls)
    if workers == 1 or len(calls) <= 1:
        return [call.fn(*call.args, **call.kwargs)
                for call in tqdm(calls, desc=desc, disable=not progress or len(calls) <= 1)]
    workers = min(workers, len(calls))
    warning = oversubscription(workers, worker_threads(workers))
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pool and locks
    gpus, queue = gpu_ids(), None
    if gpus:  # each worker gets its own GPU (round robin when there are more workers than GPUs)
        queue = context.Queue()
        for i in range(workers):
            queue.put(gpus[i % len(gpus)])
    results: list[Any] = [None] * len(calls)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(worker_threads(workers), queue)) as pool:
        futures = {pool.submit(_run_captured, call): i for i, call in enumerate(calls)}
        bar = tqdm(total=len(calls), desc=f"{desc} ({workers} processes)", disable=not progress)
        for future in as_completed(futures):
            call = calls[futures[future]]
            try:
                results[futures[future]], printed = future.result()
            except Exception as e:
                for f in futures:
                    f.cancel()
                raise RuntimeError(f"{call.name} failed in its worker process: {type(e).__name__}: {e}") from e
            if printed:
                print(f"[{call.name}]\n{printed}", end="" if printed.endswith("\n") else "\n")
            bar.update(1)
        bar.close()
    return results
