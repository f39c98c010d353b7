"""Sampling completions from a policy: one interface (`base`), a Hugging Face backend (`hf`,
on the KV-cache machinery of `kvcache`) and a vLLM backend (`vllm`).

Every evaluation and every RL rollout goes through `Sampler.generate(prompts, params)`, which
returns, for each prompt, `params.n` `Sample`s with their text, token ids and log-probabilities.
The shape follows vLLM (`SamplingParams`, n samples per prompt) so the GPU backend drops in.

Importing this package never imports vLLM: `vllm` imports it only when a `VLLMSampler` is built.
"""
from .base import PrefixedSampler, Sample, Sampler, SamplingParams, completion_text
from .hf import HFSampler
from .vllm import VLLMSampler

__all__ = ["HFSampler", "PrefixedSampler", "Sample", "Sampler", "SamplingParams", "VLLMSampler", "completion_text"]
