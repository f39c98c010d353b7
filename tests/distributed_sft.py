"""A few `train_sft` steps of a tiny model, run alone or as each process of a 2-process launch.

    .venv/bin/accelerate launch --multi_gpu --num_processes 2 tests/distributed_sft.py --out DIR

(`--multi_gpu` is torchrun's launcher, which on a machine without GPUs runs gloo processes through
`rlreason.distributed.init`; accelerate's `--cpu` launches a single process unless MPI is there.)
`tests/test_distributed.py` calls `train_all` in its own process for the one-process reference
and compares. Each process writes `rank<r>.json`: its logged rows and every file write that
`train_sft` made (the writers are wrapped); rank 0 also saves the final parameters.
"""
from __future__ import annotations

import argparse
import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import torch

from rlreason import distributed, precision, training
from rlreason.config import SFTConfig, TinyModelConfig
from rlreason.models import build_tiny_llama
from rlreason.problems import format_completion, format_prompt
from rlreason.tokenizer import build_word_tokenizer
from rlreason.world import WorldConfig, build_world

SHAPE = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
N_EXAMPLES = 33
"""With batches of 8 the last batch of an epoch has one example: one rank gets none of it."""
CONFIGS = {
    # grad_accum 2 over 5 batches: the epoch's last step has one batch (accelerate syncs at the
    # end of the loader); cosine: a scheduler stepped N times per step would show in the lr
    "shuffled": SFTConfig(epochs=2, batch_size=8, grad_accum=2, lr=3e-3, warmup_steps=1,
                          schedule="cosine", log_every=1, save_every_epoch=True),
    # length groups: the one short batch can sit anywhere in the epoch
    "grouped": SFTConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1,
                         group_by_length=True, save_every_epoch=False, seed=3),
}


def data() -> tuple[object, list[tuple[str, str]]]:
    world = build_world(WorldConfig(seed=5, n_sft=N_EXAMPLES, n_dev=2, n_test=2, n_variations=2,
                                    n_pretrain=4))
    examples = [(format_prompt(p.question), format_completion(p.solution)) for p in world.sft]
    tokenizer = build_word_tokenizer(p + c for p, c in examples)
    return tokenizer, examples


def train_all(out: Path) -> dict[str, dict]:
    """Per config: the rows `train_sft` returned and the final parameters (from seed 0)."""
    tokenizer, examples = data()
    results = {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = build_tiny_llama(tokenizer, SHAPE)
        rows = training.train_sft(
            model, tokenizer, examples, cfg, out_dir=out / name, progress=False,
            on_epoch_end=lambda epoch, m: {"callback_rank": distributed.rank()})
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results[name] = {"rows": rows, "params": params}
    return results


WRITERS = ((training, "append_jsonl"), (training, "atomic_write_json"), (training, "save_policy"),
           (precision, "atomic_write_json"))
"""The (module, function) writers `train_sft` calls."""


@contextmanager
def recorded_writes(log: list[str], writers=WRITERS):
    """Wrap `writers` (default: those `train_sft` uses) so that each write appends `name path` to
    `log`."""
    def wrap(module, name):
        original = getattr(module, name)

        def writer(*args, **kwargs):
            path = args[-1] if name == "save_policy" else args[0]
            log.append(f"{name} {path}")
            return original(*args, **kwargs)

        return mock.patch.object(module, name, writer)

    with ExitStack() as stack:
        for module, name in writers:
            stack.enter_context(wrap(module, name))
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    writes: list[str] = []
    with recorded_writes(writes):
        results = train_all(args.out)
    rank = distributed.rank()
    report = {"world_size": distributed.world_size(), "writes": writes,
              "rows": {name: r["rows"] for name, r in results.items()}}
    (args.out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    if rank == 0:
        torch.save({name: r["params"] for name, r in results.items()}, args.out / "params.pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
