"""Numeric precision chosen by measurement: `mixed_precision="auto"` is bf16 only where it is faster.

On CPUs without native bf16 (AVX2 only) bf16 autocast is emulated and several times *slower* than
fp32 for a small model's training step; on CPUs with AVX512-BF16 or AMX, and on recent GPUs, it is
faster. So `auto` never assumes: it reads the CPU's capability and, where bf16 is native, times a
few forward/backward passes of the model being trained in both precisions and keeps the faster.
The decision is cached per process (per device and model size) and written beside every training
run (`precision.json`), with the CPU capability. The environment variable `RLREASON_PRECISION`
(`fp32` or `bf16`; `make reproduce PRECISION=fp32`) replaces the measurement for every `auto`
setting, so that renders from CPUs that would choose differently train in the same precision. Their
numbers then differ only through the kernels' float rounding: none between machines of one kind of
CPU, but an fp32 pretraining on AVX512 and on AVX2 kernels drifts apart (README notes).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .io import atomic_write_json
from .runs import machine_info

DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DECISIONS: dict[tuple, dict] = {}
_FORCED = {"fp32": "no", "no": "no", "bf16": "bf16"}


def forced() -> str | None:
    """The precision `RLREASON_PRECISION` imposes on every `auto` setting (`no` or `bf16`), or None
    when it is unset or empty; any other value is a one-line error."""
    value = os.environ.get("RLREASON_PRECISION", "")
    if not value:
        return None
    if value not in _FORCED:
        raise ValueError(f"RLREASON_PRECISION = {value!r}; expected 'fp32' or 'bf16' (or unset, "
                         "for the measured choice)")
    return _FORCED[value]


def cpu_capability() -> dict:
    """`runs.machine_info()` (CPU model and bf16 flags) plus torch's thread count."""
    return {**machine_info(), "threads": torch.get_num_threads()}


def _time_steps(model, batch: dict, dtype: torch.dtype | None, reps: int) -> float:
    device_type = batch["input_ids"].device.type
    best = float("inf")
    for _ in range(reps + 1):  # the first pass warms up kernels and is not counted
        start = time.perf_counter()
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits.float().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best


def measure(model, batch: dict, reps: int = 3) -> dict[str, float]:
    """Seconds of one forward+backward pass of `model` on `batch` in fp32 and in bf16 (best of
    `reps`). Gradients and the RNG state are left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        out = {"no": _time_steps(model, batch, None, reps),
               "bf16": _time_steps(model, batch, torch.bfloat16, reps)}
    for p, g in zip(params, saved):
        p.grad = g
    model.train(was_training)
    return out


def resolve(setting: str, device: torch.device | str = "cpu", model=None, batch: dict | None = None) -> dict:
    """The precision to use for `setting` (`no`, `bf16`, `fp16` or `auto`) on `device`.

    Returns `{"requested", "used", "reason", ...capability}`; `used` is `no`, `bf16` or `fp16`.
    `auto`: on CUDA, bf16 where supported; on a CPU, fp32 unless it has native bf16 and bf16 is
    measured faster on `model` and `batch` (fp32 when there is nothing to measure).
    """
    if setting != "auto":
        if setting not in DTYPES:
            raise ValueError(f"mixed_precision = {setting!r}; expected 'no', 'bf16', 'fp16' or 'auto'")
        return {"requested": setting, "used": setting, "reason": "set explicitly", **cpu_capability()}
    device_type = device if isinstance(device, str) else device.type
    cap = cpu_capability()
    imposed = forced()
    if imposed is not None:
        decision = {"requested": "auto", "used": imposed, "reason": "RLREASON_PRECISION (environment)",
                    **cap}
        _DECISIONS[(device_type, "environment")] = decision
        return decision
    n_params = sum(p.numel() for p in model.parameters()) if model is not None else 0
    key = (device_type, n_params, tuple(batch["input_ids"].shape) if batch else None)
    if key in _DECISIONS:
        return _DECISIONS[key]
    if device_type == "cuda":
        used = "bf16" if torch.cuda.is_bf16_supported() else "no"
        decision = {"used": used, "reason": "cuda bf16 support" if used == "bf16" else "no cuda bf16"}
    elif not cap["bf16_native"]:
        decision = {"used": "no", "reason": "cpu without native bf16 (emulated bf16 is slower)"}
    elif model is None or batch is None:
        decision = {"used": "no", "reason": "native bf16 but nothing to measure"}
    else:
        seconds = measure(model, batch)
        used = "bf16" if seconds["bf16"] < 0.9 * seconds["no"] else "no"
        decision = {"used": used, "reason": "measured", "step_s_fp32": seconds["no"],
                    "step_s_bf16": seconds["bf16"]}
    _DECISIONS[key] = {"requested": "auto", **decision, **cap}
    return _DECISIONS[key]


def decide(setting: str, out_dir: str | Path | None, device, model=None, batch: dict | None = None) -> str:
    """The precision a run uses, written to `out_dir/precision.json`; a resumed run reuses the
    decision recorded there (an `auto` re-measured on a busier machine could flip, and a run's
    numbers must not depend on the load)."""
    path = Path(out_dir) / "precision.json" if out_dir is not None else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("requested") == setting and saved.get("used") in DTYPES:
            device_type = device if isinstance(device, str) else device.type
            _DECISIONS.setdefault((device_type, "recorded", str(path)), saved)
            return saved["used"]
    decision = resolve(setting, device, model, batch)
    if path is not None:
        atomic_write_json(path, decision)
    return decision["used"]


def probe_batch(token_ids: list[list[int]], pad_id: int, rows: int = 8) -> dict:
    """A right-padded batch of the first `rows` sequences, for `resolve`'s measurement."""
    rows_ids = [list(ids) for ids in token_ids[:rows]]
    width = max(len(ids) for ids in rows_ids)
    input_ids = torch.full((len(rows_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows_ids):
        input_ids[i, : len(ids)], mask[i, : len(ids)] = torch.tensor(ids), 1
    return {"input_ids": input_ids, "attention_mask": mask}


def resolved(setting: str, device: torch.device | str = "cpu") -> str:
    """`setting` with `auto` replaced by the decision already taken for `device` (the one of the
    last `resolve` there; fp32 if none): forward passes outside training follow training's choice."""
    if setting != "auto":
        return setting
    device_type = device if isinstance(device, str) else device.type
    for key, decision in reversed(list(_DECISIONS.items())):
        if key[0] == device_type:
            return decision["used"]
    return resolve("auto", device)["used"]


def autocast_dtype(mixed_precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The autocast dtype of a `mixed_precision` setting (`no` -> None); a clear error otherwise."""
    if mixed_precision != "auto" and mixed_precision not in DTYPES:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}; "
                         "expected 'no', 'bf16', 'fp16' or 'auto'")
    return DTYPES[resolved(mixed_precision, device)]


def autocast(device: torch.device | str, mixed_precision: str):
    """`torch.autocast` for a `mixed_precision` setting (disabled for `no`): the one place the
    trainers, the ORM and PPO turn that setting into a context."""
    dtype = autocast_dtype(mixed_precision, device)
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)
