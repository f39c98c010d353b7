"""SFT throughput of the tiny model on the tiny world's reference solutions, with and without
`SFTConfig.group_by_length`, in one precision (~1-2 min on 2 cores).

    .venv/bin/python tests/benchmarks/bench_training.py [--threads 2] [--steps 150] [--precision no|bf16]

Prints seconds per optimizer step (the whole `train_sft` call over `--steps` steps, batch 32) and
the share of padding tokens in the batches each batching builds. Time on a quiet machine.
"""
from __future__ import annotations

import argparse
import time

import torch

from rlreason.config import SFTConfig
from rlreason.models import build_tiny_llama
from rlreason.problems import format_completion, format_prompt
from rlreason.tokenizer import build_word_tokenizer
from rlreason.training import LengthGroupedBatches, encode_example, train_sft
from rlreason.world import WorldConfig, build_world


def pad_share(lengths: list[int], batches: list[list[int]]) -> float:
    width = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--precision", default="bf16", choices=("no", "bf16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = build_world(WorldConfig(n_sft=8000, n_test=1000))
    examples = [(format_prompt(p.question), format_completion(p.solution)) for p in world.sft]
    tokenizer = build_word_tokenizer(world.pretrain + [p + c for p, c in examples])
    lengths = [len(encode_example(tokenizer, p, c, None)[0]) for p, c in examples]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    plain = [order[i:i + 32] for i in range(0, len(order), 32)]
    grouped = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(0)))
    print(f"{len(examples)} examples, mean {sum(lengths) / len(lengths):.1f} tokens; padding share "
          f"{pad_share(lengths, plain):.1%} in shuffled batches, {pad_share(lengths, grouped):.1%} grouped; "
          f"threads {args.threads}, precision {args.precision}")
    for group in (False, True):
        torch.manual_seed(0)
        model = build_tiny_llama(tokenizer)
        cfg = SFTConfig(max_steps=args.steps, lr=3e-4, mixed_precision=args.precision,
                        group_by_length=group, save_every_epoch=False)
        start = time.perf_counter()
        train_sft(model, tokenizer, examples, cfg, progress=False)
        seconds = time.perf_counter() - start
        print(f"  group_by_length={group!s:<5}: {seconds / args.steps:.4f} s/step ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
