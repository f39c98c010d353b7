"""Headless entry point for cluster jobs: `python -m rlreason <stage> --profile P --seed S`.

The same stage functions the notebooks call (`rlreason.stages`); a finished stage is reused and an
interrupted one resumes, so a killed job is simply started again. Examples:

    python -m rlreason sft --profile tiny --seed 1
    python -m rlreason ei --profile tiny --init pretrained --reward sparse
    python -m rlreason eval --profile tiny --checkpoint paper_figures/tiny/runs/sft-seed0/epoch_16

`base`, `sft` and `ei` also run data-parallel, one process per GPU, with the profile's global
batch (each process trains on its share; rank 0 alone samples, evaluates, writes and prints):

    accelerate launch --multi_gpu --num_processes 4 -m rlreason sft --profile paper --seed 0
    accelerate launch --multi_gpu --num_processes 4 -m rlreason ei --profile paper --seed 0

(On a machine without GPUs `--multi_gpu` starts gloo processes on the CPU; accelerate's `--cpu`
starts a single process unless MPI is installed.) The other stages, and `ei --reward orm` (the
ORM stage would train on every process), run in one process.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import stages
from .config import INITS
from .distributed import is_main_process, world_size
from .evaluation import RunInfo
from .profiles import PROFILE_NAMES, get_profile

STAGES = ("base", "sft", "orm", "ei", "ppo", "rcrl", "eval")
PARALLEL_STAGES = ("base", "sft", "ei")
"""The stages that run data-parallel under `accelerate launch` (the others would run, sample and
write on every process)."""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rlreason", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--profile", default="tiny", choices=PROFILE_NAMES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="sft", choices=INITS)
    parser.add_argument("--reward", default="sparse", choices=("sparse", "dense", "dense_any", "orm"))
    parser.add_argument("--labels", default="sparse", choices=("sparse", "dense"))
    parser.add_argument("--checkpoint", help="eval: the checkpoint folder (default: the final SFT)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--base-model", help="a hub id or local folder replacing the profile's "
                        "base model (e.g. a downloaded Llama-2 on a cluster without network)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    if world_size() > 1 and args.stage not in PARALLEL_STAGES:
        parser.error(f"{args.stage} does not run data-parallel (only {', '.join(PARALLEL_STAGES)} "
                     f"do): run it without accelerate launch, in one process")
    if world_size() > 1 and args.stage == "ei" and args.reward == "orm":
        parser.error("ei --reward orm does not run data-parallel (the ORM stage would run on every "
                     "process): run it without accelerate launch, in one process")
    return args


def run(args: argparse.Namespace) -> dict:
    """Run one stage; returns a JSON-ready summary (what the command prints)."""
    overrides = {"base_model": args.base_model} if args.base_model else {}
    profile = stages.setup(get_profile(args.profile, **overrides), args.seed)
    seed = args.seed
    needs_orm = args.reward == "orm"
    orm = stages.orm_scorer(profile, seed) if needs_orm and args.stage in ("ei", "ppo", "rcrl") else None
    if args.stage == "base":
        return {"stage": "base", "checkpoint": str(stages.base(profile, seed))}
    if args.stage == "eval":
        path = args.checkpoint or stages.sft_checkpoint(profile, seed)
        result = stages.evaluate(profile, path, args.split, info=RunInfo(seed=seed), record=False)
        return {"stage": "eval", "checkpoint": str(path),
                **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    result = {
        "sft": lambda: stages.sft(profile, seed),
        "orm": lambda: stages.orm(profile, seed),
        "ei": lambda: stages.ei(profile, args.init, seed, args.reward, orm=orm),
        "ppo": lambda: stages.ppo(profile, args.init, seed, args.reward, orm=orm),
        "rcrl": lambda: stages.rcrl(profile, args.init, seed, args.labels, args.reward, orm=orm),
    }[args.stage]()
    out = {"stage": args.stage, "run": result.name, "checkpoint": str(result.checkpoint)}
    if result.final is not None:
        out |= {k: v for k, v in result.final.metrics.items() if isinstance(v, (int, float))}
    return out


def main(argv: list[str] | None = None) -> int:
    summary = run(parse(argv))
    if is_main_process():  # every process of a launch has the same summary
        print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
