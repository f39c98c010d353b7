"""One SFT training step of the tiny model in fp32 and in bf16 autocast, on this CPU (~30 s).

    .venv/bin/python tests/benchmarks/bench_precision.py [--threads 2] [--batch 32] [--steps 20]

Prints the CPU's capability (native bf16 or not), the median seconds per optimizer step in each
precision, their ratio, and what `mixed_precision="auto"` decides here. On CPUs with only AVX2,
bf16 autocast is emulated and several times slower than fp32; on AVX512-BF16/AMX CPUs it can be
faster. Time on a quiet machine (one heavy job at a time).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_sampler import synthetic_setup

from rlreason.precision import autocast, cpu_capability, resolve
from rlreason.training import collate, encode_example, token_loss


def step_times(model, batch: dict, precision: str, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = []
    for i in range(steps + 2):  # two warm-up steps are not counted
        start = time.perf_counter()
        with autocast("cpu", precision):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = token_loss(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= 2:
            out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, problems, tokenizer, model = synthetic_setup(args.batch)
    model.train()
    batch = collate([encode_example(tokenizer, p, s, 256) for p, s in problems], tokenizer.pad_token_id)
    cap = cpu_capability()
    print(f"cpu: {cap['cpu']}, native bf16: {cap['bf16_native']} {cap['bf16_flags']}, "
          f"threads {args.threads}, batch {args.batch} x {batch['input_ids'].shape[1]} tokens")
    medians = {}
    for precision in ("no", "bf16"):
        times = step_times(model, batch, precision, args.steps)
        medians[precision] = statistics.median(times)
        print(f"  {'fp32' if precision == 'no' else 'bf16'}: {medians[precision]:.4f} s/step "
              f"(min {min(times):.4f}, max {max(times):.4f})")
    print(f"  bf16 / fp32 = {medians['bf16'] / medians['no']:.2f}x")
    decision = resolve("auto", "cpu", model, batch)
    print(f"  mixed_precision='auto' uses: {decision['used']} ({decision['reason']})")


if __name__ == "__main__":
    main()
