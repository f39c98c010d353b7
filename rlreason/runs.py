"""Seeding and run directories: every run writes its config, seed and git hash (no timestamps)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from .io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parent.parent


def set_seed(seed: int) -> None:
    """Seed Python, numpy and (if it is already imported) torch, for CPU-deterministic runs."""
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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_to_dict(config: Any) -> dict:
    """A JSON-ready dict of a dataclass config, or of a dict whose values may be dataclasses."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
                for k, v in config.items()}
    raise TypeError(f"config must be a dataclass or dict, got {type(config).__name__}")


def config_changed(run_dir: str | os.PathLike, config: Any) -> bool:
    """Whether `run_dir/config.json` was written for another config (False when there is none):
    a finished run is reused only under the same config."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return False
    saved = json.loads(path.read_text())["config"]
    return saved != json.loads(json.dumps(config_to_dict(config), sort_keys=True, default=str))


def make_run_dir(root: str | os.PathLike, name: str, config: Any, seed: int) -> Path:
    """Create `root/name` and write `config.json` (config, seed, git hash) into it.

    The name is chosen by the caller from what the run is (algorithm, init, reward, seed), never a
    timestamp, so that re-running the same configuration finds and reuses the same folder.
    """
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json",
                      {"config": config_to_dict(config), "seed": seed, "git": git_hash()})
    return run_dir
