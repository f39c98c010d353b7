"""One round of Expert Iteration of a tiny random model, run alone or as each process of a
2-process launch.

    .venv/bin/accelerate launch --multi_gpu --num_processes 2 tests/distributed_ei.py \
        --init INIT --out DIR

`tests/test_distributed_ei.py` builds INIT (`build_init`), calls `run` in its own process for the
one-process reference and compares. Under the launch the run is first stopped once its student
is trained (a callback raising on every rank) and then resumed. Each process writes
`rank<r>.json`: the rows `train_ei` returned, every file write it made (the writers of EI, the
evaluation, the run folder and `train_sft` are wrapped, `distributed_sft.recorded_writes`), every
sampler it built, and the callback events it saw.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import distributed_sft

from rlreason import distributed, ei, evaluation, runs
from rlreason.config import EIConfig, EvalConfig, SFTConfig
from rlreason.models import build_tiny_llama, load_policy, save_policy
from rlreason.problems import format_completion, format_prompt
from rlreason.rewards import Reward
from rlreason.sampling import HFSampler, SamplingParams
from rlreason.tokenizer import build_word_tokenizer
from rlreason.world import WorldConfig, build_world

CFG = EIConfig(rounds=1, k=4, n_questions=10, require_correct=False, include_references=True,
               train_eval_questions=3,
               sft=SFTConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1,
                             save_every_epoch=False))
"""K=4 samples of 10 questions; the student learns the references too (a random model's samples
share few operation signatures), 2 epochs of batches of 8 with a short last batch."""
EVAL = EvalConfig(k=2, max_new_tokens=12, n_boot=20)
PARAMS = SamplingParams(max_new_tokens=12)
WRITERS = distributed_sft.WRITERS + (
    (ei, "atomic_write_json"), (ei, "write_jsonl"), (ei, "save_policy"),
    (evaluation, "write_jsonl"), (evaluation, "atomic_write_json"), (evaluation, "append_jsonl"),
    (runs, "atomic_write_json"))


def problems() -> list:
    world = build_world(WorldConfig(seed=5, n_sft=CFG.n_questions, n_dev=2, n_test=2,
                                    n_variations=2, n_pretrain=4))
    return list(world.sft)


def build_init(path: Path) -> Path:
    """A tiny random Llama with a word tokenizer of the questions and references."""
    items = problems()
    tokenizer = build_word_tokenizer(format_prompt(p.question) + format_completion(p.solution)
                                     for p in items)
    torch.manual_seed(0)
    return save_policy(build_tiny_llama(tokenizer, distributed_sft.SHAPE), tokenizer, path)


class Stop(Exception):
    """The interruption of the launched run (raised by its callback on every rank)."""


def parity_reward(items, samples) -> list[Reward]:
    """1 for a sample of even length, else 0: about half pass the filter."""
    return [Reward(float(len(s.text) % 2 == 0), [0.0] * len(s.token_ids), [], []) for s in samples]


def run(init: Path, out: Path, log: list[str], stop_at: tuple[str, int] | None = None) -> list[dict]:
    """`ei.train_ei` into `out/ei` (folder opened on rank 0, as the stage does), with a greedy
    check and a test evaluation (itself through `run_on_main`, as `stages.evaluate`), logging each
    sampler built and each callback event into `log`; `stop_at=(event, round)` raises there."""
    items = problems()

    def make_sampler(path):
        log.append(f"make_sampler {path}")
        return HFSampler(*load_policy(str(path), trainable=False), progress=False)

    def evaluate(path, info):
        metrics = distributed.run_on_main(
            evaluation.evaluate, lambda: make_sampler(path), items[:3], EVAL, out_dir=path,
            name="test", progress=False).metrics
        return {k: v for k, v in metrics.items() if k != "pass_curve"}

    def callback(event, round_, **info):
        log.append(f"callback {event} {round_}")
        if (event, round_) == stop_at:
            raise Stop(f"stopped at {stop_at}")

    run_ = distributed.run_on_main(runs.open_run, out, "ei", CFG, 0)
    return ei.train_ei(init, items, parity_reward, CFG, run_, make_sampler=make_sampler,
                       params=PARAMS, threshold=0.5, evaluate=evaluate, callback=callback)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    log: list[str] = []
    with distributed_sft.recorded_writes(log, WRITERS):
        try:
            run(args.init, args.out, log, stop_at=("trained", 1))
        except Stop:
            log.append("interrupted")
        rows = run(args.init, args.out, log)
    report = {"world_size": distributed.world_size(), "rows": rows, "log": log}
    (args.out / f"rank{distributed.rank()}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
