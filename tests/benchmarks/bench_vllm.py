"""vLLM (CPU build) against the HF sampler on the same prompts and n: tokens/s of generation.

    .venv/bin/python tests/benchmarks/bench_vllm.py [--checkpoint DIR] [--prompts 256] [--n 8]

The checkpoint defaults to the tiny SFT model that `make reproduce` writes (seed 0); the prompts
are the tiny world's test questions, sampled at T=1 up to the evaluation's token limit. Each
backend first samples a few prompts (warm-up: vLLM's first batch builds its kernels), then all
of them; the engine's start-up time is printed apart. Both run fp32 (vLLM's CPU engine with its
own thread binding, the HF sampler with torch's threads). Skips vLLM when it is not installed.
"""
from __future__ import annotations

import argparse
import time

import torch

from rlreason import stages
from rlreason.models import load_policy
from rlreason.problems import format_prompt
from rlreason.sampling import HFSampler, SamplingParams
from rlreason.vllm_settings import VLLMSettings


def timed(sampler, prompts, params) -> tuple[float, int, int]:
    started = time.perf_counter()
    out = sampler.generate(prompts, params)
    wall = time.perf_counter() - started
    return wall, sum(len(s.token_ids) for row in out for s in row), sum(len(row) for row in out)


def report(name: str, wall: float, tokens: int, seqs: int) -> None:
    print(f"{name:>6}: {wall:7.1f} s  {tokens / wall:9.0f} generated tokens/s  "
          f"{seqs / wall:7.1f} sequences/s  ({tokens} tokens, {seqs} sequences)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model folder (default: the tiny SFT model, seed 0)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    profile = stages.setup("tiny", 0)
    checkpoint = args.checkpoint or str(stages.sft_checkpoint(profile, 0))
    prompts = [format_prompt(p.question) for p in stages.problems(profile, "test")[: args.prompts]]
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=profile.eval.max_new_tokens,
                            stop=list(profile.eval.stop), seed=0)
    print(f"checkpoint {checkpoint}; {len(prompts)} prompts x n={args.n}; torch threads "
          f"{torch.get_num_threads()}", flush=True)

    model, tokenizer = load_policy(checkpoint, trainable=False)
    hf = HFSampler(model, tokenizer, progress=False)
    timed(hf, prompts[:8], params)
    report("hf", *timed(hf, prompts, params))

    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm: not installed, skipped")
        return
    from rlreason.sampling import vllm as vb

    started = time.perf_counter()
    engine = vb.engine(checkpoint, VLLMSettings(dtype="float32", kv_cache_memory_bytes=1 << 30,
                                                max_lora_rank=None, enforce_eager=True),
                       progress=False)
    print(f"  vllm: engine start {time.perf_counter() - started:.1f} s", flush=True)
    timed(engine, prompts[:8], params)
    report("vllm", *timed(engine, prompts, params))
    vb.shutdown()


if __name__ == "__main__":
    main()
