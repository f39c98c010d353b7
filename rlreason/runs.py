"""Seeding and run folders: every run writes its config, seed and git hash (no timestamps).

A run folder is named from what the run is (algorithm, init, reward, seed) and is opened with
`open_run`, which has one behaviour for a folder written under another configuration: the old
folder is moved to `<root>/.previous/<name>` (replacing an older copy), one line says which keys
changed, and the run starts empty. A finished run carries a `DONE` marker and is reused.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parent.parent


def check_seed(seed) -> int:
    """`seed` if it is a non-negative integer; else a one-line error naming it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r}; expected a non-negative integer")
    return seed


def set_seed(seed: int) -> None:
    """Seed Python, numpy and (if it is already imported) torch, for CPU-deterministic runs."""
    check_seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    torch = sys.modules.get("torch")  # never import torch from the pure-Python floor
    if torch is not None:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)


def git_hash(repo: Path = REPO_ROOT) -> str:
    """The current commit (with `-dirty` when the tree has changes), or `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def machine_info() -> dict:
    """The CPU's model name and the flags that decide bf16 speed (from Linux `/proc/cpuinfo`),
    recorded in every run's `config.json` beside the precision each training run used."""
    flags: set[str] = set()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                name = value.strip()
    except OSError:  # not Linux: no flags known (`auto` precision then uses fp32 on the CPU)
        pass
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return {"cpu": name, "cores": os.cpu_count(), "bf16_native": bool(native),
            "bf16_flags": native, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags}


def config_to_dict(config: Any) -> dict:
    """A JSON-ready dict of a dataclass config, or of a dict whose values may be dataclasses."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
                for k, v in config.items()}
    raise TypeError(f"config must be a dataclass or dict, got {type(config).__name__}")


def round_seed(seed: int, round_: int, *salt: int) -> int:
    """The seed of one round's sampling and fine-tuning, a fixed function of (seed, round, salt)."""
    check_seed(seed)
    import numpy as np

    return int(np.random.SeedSequence([seed, round_, *salt]).generate_state(1)[0])


DONE = "DONE"
"""Marker file: the folder it is in holds a finished stage, run or checkpoint."""


def is_done(path: str | os.PathLike) -> bool:
    """Whether `path` holds a `DONE` marker."""
    return (Path(path) / DONE).exists()


def mark_done(path: str | os.PathLike) -> None:
    """Write the `DONE` marker into `path` (created if missing)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / DONE).write_text("")


NEUTRAL_NEW_FIELDS = {"group_by_length": False, "stop": ()}
"""Config fields added after runs were written, at the value that computes what the code before
them did: a folder whose identity lacks one of them, where the new identity has it at this value,
is the same run (without this, every new option would restart every finished run once)."""


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # a tuple and its JSON list compare equal


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs (sorted); a key of
    `NEUTRAL_NEW_FIELDS` missing from `old` at its neutral value in `new` is not a change."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old and key in NEUTRAL_NEW_FIELDS and _as_json(new[key]) == _as_json(NEUTRAL_NEW_FIELDS[key]):
                continue
            if key not in old or key not in new:
                out.append(name)
            else:
                out += changed_keys(old[key], new[key], name)
        return out
    return [] if old == new else [prefix or "<config>"]


@dataclass
class Run:
    """An open run folder."""

    dir: Path
    """The folder: `config.json` (config, seed, git hash) and everything the run writes."""
    name: str
    """The folder's name, from what the run is."""
    seed: int
    """The run's seed."""

    @property
    def done(self) -> bool:
        """Whether the run finished (its `DONE` marker exists)."""
        return is_done(self.dir)

    def mark_done(self) -> None:
        mark_done(self.dir)


def _jsonable(config: Any) -> dict:
    return json.loads(json.dumps(config_to_dict(config), sort_keys=True, default=str))


def open_run(root: str | os.PathLike, name: str, identity: Any, seed: int, *,
             recompute: bool = False) -> Run:
    """Open `root/name` for the run described by `identity` (a dataclass or dict of what the run
    computes); write its `config.json`.

    A folder written under another identity (or any folder when `recompute`) is moved to
    `root/.previous/name`, replacing an older copy, with one line naming the changed keys, and the
    run starts in an empty folder: a resumed run is always the same run.
    """
    check_seed(seed)
    run_dir = Path(root) / name
    path = run_dir / "config.json"
    if run_dir.exists() and (recompute or path.exists()):
        old = json.loads(path.read_text())["config"] if path.exists() else None
        keys = changed_keys(old, _jsonable(identity)) if old is not None else ["<no config>"]
        if recompute or keys:
            previous = Path(root) / ".previous" / name
            if previous.exists():
                shutil.rmtree(previous)
            previous.parent.mkdir(parents=True, exist_ok=True)
            run_dir.rename(previous)
            why = "recompute requested" if recompute and not keys else "changed: " + ", ".join(keys[:6]) + (
                f" and {len(keys) - 6} more" if len(keys) > 6 else "")
            print(f"{name}: starting over ({why}); the old folder is in {previous}")
    return Run(make_run_dir(root, name, identity, seed), name, seed)


def make_run_dir(root: str | os.PathLike, name: str, config: Any, seed: int) -> Path:
    """Create `root/name` and write `config.json` (config, seed, git hash) into it.

    The name is chosen by the caller from what the run is (algorithm, init, reward, seed), never a
    timestamp, so that re-running the same configuration finds and reuses the same folder.
    """
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json",
                      {"config": config_to_dict(config), "seed": seed, "git": git_hash(),
                       "machine": machine_info()})
    return run_dir
