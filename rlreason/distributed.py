"""Data-parallel launches (`accelerate launch`, `torchrun`): which process this is, and doing a
thing once.

Under `accelerate launch --num_processes N` every process runs the same program. Only the main
process (rank 0) writes files, prints and samples; the others wait where they then read what it
wrote. Without a launcher (no `WORLD_SIZE` in the environment and no process group) this process
is the main one and every helper here is trivial: nothing is initialised and nothing waits, so a
single-process run is exactly what it was before this module existed.

>>> path = run_on_main(save_policy, model, tokenizer, out / "final")  # doctest: +SKIP
"""
from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
"""How long a collective waits. The other ranks wait in one while rank 0 evaluates or samples
(`run_on_main`), which on a 7B model takes far longer than torch's 10-minute NCCL default."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def world_size() -> int:
    """Number of processes of the launch (1 without a launcher)."""
    return torch.distributed.get_world_size() if _initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return torch.distributed.get_rank() if _initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine: the GPU it owns (0 without a launcher)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes files, prints and samples."""
    return rank() == 0


def init() -> None:
    """Join the launch's process group once (a no-op in a single process), through accelerate's
    shared `PartialState` so that `Accelerator()` later finds it: NCCL on GPUs, gloo on the CPU
    (no GPU, or `ACCELERATE_USE_CPU`; accelerate itself would otherwise run each CPU process
    alone), with `PROCESS_GROUP_TIMEOUT`."""
    if world_size() == 1:
        return
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    PartialState(cpu=cpu, timeout=PROCESS_GROUP_TIMEOUT)


@atexit.register
def leave() -> None:
    """Leave the process group (a no-op when none was joined); registered to run at exit.
    Left to the interpreter's teardown, gloo's worker threads can outlive the group and abort the
    process after its work is done ("terminate called without an active exception", exit -6: 1 in
    6 two-process test launches). Safe to call more than once."""
    if _initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait until every process got here (nothing to wait for in a single process)."""
    if world_size() > 1:
        init()
        torch.distributed.barrier()


_on_main = False
"""Whether the main process is inside a `run_on_main` now (the others wait for it there)."""


def run_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the main process only; every process returns its value (which must
    pickle), so the others wait until it is done and can then read what it wrote. An error on the
    main process is raised on every process (instead of the others waiting out the timeout).
    Inside another `run_on_main` (an evaluation within a stage's main-process step) `fn` simply
    runs: the other processes are already waiting for the outer one. `fn` itself must not wait for
    them (`barrier`, `train_sft`)."""
    global _on_main
    if world_size() == 1 or _on_main:
        return fn(*args, **kwargs)
    init()
    box: list[Any] = [None]
    error: BaseException | None = None
    if is_main_process():
        _on_main = True
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except BaseException as e:  # re-raised below, once the others are told
            error, box[0] = e, ("error", f"{type(e).__name__}: {e}")
        finally:
            _on_main = False
    torch.distributed.broadcast_object_list(box, src=0)
    status, value = box[0]
    if error is not None:
        raise error
    if status == "error":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed on the main process: {value}")
    return value


def main_process_only(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: `fn` runs on the main process only and every process gets its value
    (`run_on_main`); for a stage's file writes and sampling."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return run_on_main(fn, *args, **kwargs)

    return wrapper
