"""PPO's training forward + backward with each question's prompt run once (grouped) or per row
(packed), on the tiny model (CPU, ~1 minute).

    .venv/bin/python tests/benchmarks/bench_ppo.py [--threads N] [--questions 16] [--samples 4]
        [--value-head-fp32]

A minibatch as notebook 04 makes it: 16 questions x 4 samples, GSM8K-style prompts of ~55 tokens and
responses of 30-55 tokens, bf16 autocast, a randomly initialised tiny Llama (TinyModelConfig's
defaults) with a value head on the last hidden state (in float32 with `--value-head-fp32`, as
`PPOConfig.value_head_fp32`). Both layouts compute the same values and gradients
(tests/test_ppo.py); the grouped one runs each prompt once for its n samples.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampler import synthetic_setup

from rlreason.batching import forward, pack, token_logprobs
from rlreason.models import count_parameters
from rlreason.ppo import ValueHead
from rlreason.training import autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--questions", type=int, default=16, help="questions per minibatch")
    parser.add_argument("--samples", type=int, default=4, help="samples per question")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per layout")
    parser.add_argument("--value-head-fp32", action="store_true", help="the value head in float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng, problems, tokenizer, model = synthetic_setup(400)  # eval mode, as PPO runs it: no dropout
    value_head = ValueHead(model.config.hidden_size, fp32=args.value_head_fp32)
    prompts = [tokenizer(q)["input_ids"] for q, _ in problems[: args.questions]]
    responses = [tokenizer(s, add_special_tokens=False)["input_ids"][: rng.randint(30, 55)]
                 for _, s in problems[: args.questions * args.samples]]
    batch = pack([p for p in prompts for _ in range(args.samples)], responses, tokenizer.pad_token_id)
    device = torch.device("cpu")
    print(f"tiny Llama, {count_parameters(model) / 1e6:.2f}M parameters, {torch.get_num_threads()} threads; "
          f"{args.questions} questions x {args.samples} samples, prompts {batch.prompt_mask.sum(1).float().mean():.0f} "
          f"tokens, responses {batch.mask.sum(1).mean():.0f} tokens")

    def step(grouped: bool) -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device, "bf16"):
            logits, hidden = forward(model, batch, hidden=True, grouped=grouped)
        loss = (token_logprobs(logits, batch.tokens) * batch.mask).sum() + value_head(hidden).sum()
        loss.backward()

    times = {}
    for grouped in (False, True, False, True):  # interleaved, after a warm-up of each
        step(grouped)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(grouped)
        times.setdefault(grouped, []).append((time.perf_counter() - start) / args.steps)
    for grouped, name in ((False, "packed (prompt per row)"), (True, "grouped (prompt per question)")):
        print(f"  {name:<32s} {1000 * min(times[grouped]):7.1f} ms per forward+backward")
    print(f"  grouped / packed: {min(times[False]) / min(times[True]):.2f}x faster")


if __name__ == "__main__":
    main()
