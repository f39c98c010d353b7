"""Kill -9 at random points, resume, and get the same numbers as an uninterrupted run.

    .venv/bin/python tests/kill9.py [--kills 2] [--stages base sft orm ei ppo rcrl eval] [--seed 0]

Each stage runs as `python -m rlreason <stage> --profile smoke` in a subprocess. Uninterrupted
first (output folder A, timing each stage); then in folder B the same command is started and killed
with SIGKILL at a random moment inside that time, `--kills` times, and then let finish. The final
metrics the command prints, every `results.jsonl` row and every `metrics.jsonl` of a finished run
must equal folder A's (wall times aside), and every JSON file in B must parse: a half-written file
that a resumed run would read fails here. `tests/test_kill9.py` runs this with small settings.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("base", "sft", "orm", "ei", "ppo", "rcrl", "eval")
PATHS = ("checkpoint", "init", "base")  # absolute paths differ between the two output folders


def _volatile(key: str) -> bool:
    """Keys whose values differ between runs by design: wall times, the git hash, paths."""
    return key.endswith("_s") or "wall" in key or key == "git" or key in PATHS


def _stable(obj):
    """`obj` without the keys whose values are timings, hashes or absolute paths."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if not _volatile(k)}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _command(stage: str, seed: int) -> list[str]:
    return [sys.executable, "-m", "rlreason", stage, "--profile", "smoke", "--seed", str(seed)]


def _env(out: Path) -> dict:
    return {**os.environ, "RLREASON_OUTPUT_DIR": str(out), "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _run(stage: str, out: Path, seed: int, kill_after: float | None = None) -> tuple[int, str, float]:
    """(return code, stdout, seconds); killed with SIGKILL after `kill_after` seconds if given."""
    start = time.perf_counter()
    proc = subprocess.Popen(_command(stage, seed), env=_env(out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return -9, "", time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return proc.returncode, stdout, time.perf_counter() - start


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def check_files(out: Path) -> list[str]:
    """Every JSON / JSONL file under `out` parses (a killed write never leaves a torn file that
    is read); temp files of interrupted atomic writes are allowed (never read)."""
    bad = []
    for path in out.rglob("*"):
        if path.suffix not in (".json", ".jsonl") or path.name.startswith("."):
            continue
        try:
            text = path.read_text()
            if path.suffix == ".json":
                json.loads(text)
            else:
                for i, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            bad.append(f"{path.relative_to(out)}: {e}")
    return bad


def _results(out: Path) -> list[dict]:
    path = out / "smoke" / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    latest = {(r.get("run"), r.get("dataset"), r.get("checkpoint"), r.get("label")): r for r in rows}
    return [_stable(r) for _, r in sorted(latest.items(), key=lambda kv: str(kv[0]))]


def _logs(out: Path) -> dict[str, list[dict]]:
    """Every run's `metrics.jsonl` (losses, rewards, per-round rows), keyed by its path."""
    runs = out / "smoke" / "runs"
    return {str(p.relative_to(runs)): [_stable(json.loads(line)) for line in p.read_text().splitlines()
                                       if line.strip()]
            for p in sorted(runs.rglob("metrics.jsonl")) if ".previous" not in p.parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per stage")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (A and B inside)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    a, b = args.out / "uninterrupted", args.out / "killed"
    failures, kills = [], 0
    for stage in args.stages:
        _, ref_out, seconds = _run(stage, a, 0)
        ref = _stable(_summary(ref_out))
        startup = min(3.0, seconds / 2)  # kill inside the work, not only during imports
        for _ in range(args.kills):
            code, _, _ = _run(stage, b, 0, kill_after=rng.uniform(startup, max(startup, seconds)))
            kills += code == -9
            failures += [f"after a kill in {stage}: {p}" for p in check_files(b)]
        _, out, _ = _run(stage, b, 0)
        got = _stable(_summary(out))
        if got != ref:
            diff = {k: (ref.get(k), got.get(k)) for k in set(ref) | set(got) if ref.get(k) != got.get(k)}
            failures.append(f"{stage}: resumed result differs from the uninterrupted one: {diff}")
        logs_a, logs_b = _logs(a), _logs(b)
        for name in sorted(set(logs_a) | set(logs_b)):
            if logs_a.get(name) != logs_b.get(name):
                failures.append(f"{stage}: {name} differs between the killed and uninterrupted runs")
        print(f"{stage}: {seconds:.1f} s uninterrupted, {args.kills} kill(s), "
              f"{'same result' if got == ref else 'DIFFERENT result'}, {len(ref)} summary keys and "
              f"{sum(map(len, logs_a.values()))} log rows compared", flush=True)
    if _results(a) != _results(b):
        failures.append("results.jsonl rows differ between the killed and the uninterrupted runs")
    print(f"{kills} SIGKILLs delivered over {len(args.stages)} stage(s); "
          f"{len(failures)} failure(s)")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
