"""Throughput of `HFSampler` next to plain `model.generate`, on the tiny model (CPU, ~2 minutes).

    .venv/bin/python tests/benchmarks/bench_sampler.py [--threads N] [--prompts 64]

The model is a randomly initialised tiny Llama with a tokenizer built from synthetic GSM8K-style
problems (prompts ~55 tokens, 32 samples per prompt, as in the study's evaluations). An untrained
model rarely says EOS, so two fair settings are timed:

- forced length: every sample is exactly 35 tokens (`ignore_eos` / `min_new_tokens`), so both
  sides do the same work;
- stop strings: samples end at the first "." or "?" (up to 35 tokens), a stand-in for a trained
  model's varying lengths, which exercises early stopping and batch compaction;
- a trained policy (`--checkpoint`, by default the tiny SFT model that `make reproduce` writes) on
  the tiny world's test prompts, with `dedup` off and on: a confident policy's samples repeat each
  other, and dedup runs each distinct history once (a random model's samples diverge at once).

Timings on a machine shared with other busy processes are noisy, and more so with 2 threads
(each parallel op waits for its slowest thread): compare rows of the same run. With one thread,
the CPU-time column (process time) is what a quiet machine's wall time would be.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from rlreason.models import build_tiny_llama, count_parameters
from rlreason.problems import format_completion, format_prompt
from rlreason.sampling import HFSampler, SamplingParams
from rlreason.tokenizer import build_word_tokenizer

NAMES = ["Tom", "Ann", "Mia", "Leo", "Sam", "Eva", "Max", "Zoe", "Ben", "Ivy"]
ITEMS = ["apples", "pencils", "cookies", "marbles", "stickers", "books", "cards", "shells"]


def synthetic_problem(rng: random.Random) -> tuple[str, str]:
    """A GSM8K-style question and solution (two calculator steps)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(1, 20)
    question = (f"{name} has {a} {item}. {name} buys {b} more {item} at the store, and then gives "
                f"{c} {item} to a friend who asked for some. Each of the {item} costs ${c}. "
                f"How many {item} does {name} have now?")
    solution = (f"{name} has {a}+{b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n"
                f"After giving {c} away, {name} has {a + b}-{c} = <<{a + b}-{c}={a + b - c}>>"
                f"{a + b - c} {item}.\n#### {a + b - c}")
    return format_prompt(question), format_completion(solution)


def synthetic_setup(n_problems: int):
    """`(rng, problems, tokenizer, model)`: `n_problems` synthetic (prompt, solution) pairs, a word
    tokenizer built from them and a randomly initialised tiny Llama (seed 0, eval mode); `rng` is
    the generator that drew the problems, for drawing more."""
    rng = random.Random(0)
    problems = [synthetic_problem(rng) for _ in range(n_problems)]
    tokenizer = build_word_tokenizer([p + s for p, s in problems])
    torch.manual_seed(0)
    return rng, problems, tokenizer, build_tiny_llama(tokenizer).eval()


def timed(fn) -> tuple[tuple[float, float], object]:
    """Run `fn`; return ((wall seconds, CPU seconds of this process), its result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def report(name: str, seconds: tuple[float, float], sequences: int, tokens: int) -> None:
    wall, cpu = seconds
    print(f"  {name:<36s} {wall:6.2f} s {tokens / wall:7.0f} tok/s {sequences / wall:6.1f} seq/s"
          f" | cpu {cpu:6.2f} s {tokens / cpu:7.0f} tok/s {sequences / cpu:6.1f} seq/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=35)
    parser.add_argument("--checkpoint", default="paper_figures/tiny/runs/sft-seed0/epoch_10",
                        help="a trained tiny policy for the dedup comparison (make reproduce writes it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    _, problems, tokenizer, model = synthetic_setup(300)
    prompts = [p for p, _ in problems[: args.prompts]]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    n, new = args.n, args.new_tokens
    rows = len(prompts) * n
    print(f"tiny Llama {count_parameters(model) / 1e6:.2f}M params, vocab {len(tokenizer)}, "
          f"torch threads {torch.get_num_threads()}, {len(prompts)} prompts of "
          f"{min(lengths)}-{max(lengths)} tokens x n={n}")

    # model.generate gets half the prompts (1024 rows, one batch): its DynamicCache copies the
    # whole cache at every step, so bigger batches only get slower; tokens/s compare fairly.
    gen_prompts = prompts[: max(1, len(prompts) // 2)]
    gen_rows = len(gen_prompts) * n
    enc = tokenizer(gen_prompts, padding=True, return_tensors="pt")

    def hf_generate(**kw):
        with torch.inference_mode():
            return model.generate(**enc, do_sample=True, top_k=0, num_return_sequences=n,
                                  max_new_tokens=new, pad_token_id=tokenizer.pad_token_id, **kw)

    print(f"forced length: {rows} samples x {new} new tokens ({gen_rows} for model.generate)")
    t_gen, _ = timed(lambda: hf_generate(min_new_tokens=new))
    report("model.generate (DynamicCache)", t_gen, gen_rows, gen_rows * new)
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=new, ignore_eos=True, seed=0)
    configs = [("plain attention", 65536, False)] + [
        (f"shared prefix, budget {b // 1024}k", b, True) for b in (8192, 32768, 131072)]
    best = None
    for name, budget, shared in configs:
        sampler = HFSampler(model, tokenizer, token_budget=budget, progress=False,
                            shared_prefix=shared)
        seconds, _ = timed(lambda s=sampler: s.generate(prompts, params))
        report(f"HFSampler {name}", seconds, rows, rows * new)
        best = seconds if best is None or seconds[0] < best[0] else best
    speedup = (t_gen[0] / gen_rows) / (best[0] / rows)
    print(f"  best HFSampler vs model.generate: {speedup:.1f}x (wall); 500 prompts x 32 samples x "
          f"{new} tokens would take ~{best[0] * 16000 / rows:.0f} s wall, "
          f"{best[1] * 16000 / rows:.0f} s CPU")

    stop = [".", "?"]
    print(f"stop strings {stop}: up to {new} new tokens")
    t_gen, out = timed(lambda: hf_generate(stop_strings=stop, tokenizer=tokenizer))
    # generate pads finished rows: count the tokens up to the first pad or EOS per row.
    gen = out[:, enc["input_ids"].shape[1]:]
    done = (gen == tokenizer.pad_token_id) | (gen == tokenizer.eos_token_id)
    gen_tokens = int(torch.where(done.any(1), done.int().argmax(1) + 1, gen.shape[1]).sum())
    report("model.generate (stop_strings)", t_gen, gen_rows, gen_tokens)
    sampler = HFSampler(model, tokenizer, token_budget=32768, progress=False)
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=new, stop=stop, seed=0)
    seconds, samples = timed(lambda: sampler.generate(prompts, params))
    tokens = sum(len(s.token_ids) for per_prompt in samples for s in per_prompt)
    report("HFSampler shared prefix, budget 32k", seconds, rows, tokens)
    speedup = (t_gen[0] / gen_rows) / (seconds[0] / rows)
    print(f"  mean length {tokens / rows:.1f} tokens (model.generate {gen_tokens / gen_rows:.1f}); "
          f"speed-up {speedup:.1f}x (wall, per sample)")

    trained_policy(args.checkpoint, args.prompts, n)


def trained_policy(checkpoint: str, n_prompts: int, n: int) -> None:
    """A trained policy's samples repeat each other: `dedup` runs each distinct history once."""
    from pathlib import Path

    from rlreason.models import load_policy
    from rlreason.profiles import get_profile
    from rlreason.stages import problems

    if not (Path(checkpoint) / "config.json").exists():
        print(f"trained policy: skipped ({checkpoint} not found; `make reproduce` writes it)")
        return
    model, tokenizer = load_policy(checkpoint, trainable=False)
    prompts = [format_prompt(p.question) for p in problems(get_profile("tiny"), "test")[: n_prompts * 4]]
    rows = len(prompts) * n
    print(f"trained policy {checkpoint}: {len(prompts)} test prompts x n={n}, temperature 1, up to 96 tokens")
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=96, seed=0)
    for dedup in (False, True):
        sampler = HFSampler(model, tokenizer, progress=False, dedup=dedup)
        seconds, samples = timed(lambda s=sampler: s.generate(prompts, params))
        tokens = sum(len(s.token_ids) for per_prompt in samples for s in per_prompt)
        report(f"HFSampler dedup={dedup}, budget 256k", seconds, rows, tokens)


if __name__ == "__main__":
    main()
