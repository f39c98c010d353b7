"""The `Sampler` interface on vLLM, for the paper profile on a GPU (`pip install 'rlreason[gpu]'`).

vLLM is imported lazily: this module imports on a CPU machine, and `VLLMSampler` explains a
missing vLLM when it is constructed. `rlreason.sampling` re-exports `VLLMSampler`.
"""
from __future__ import annotations

from .base import Sample, SamplingParams


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "VLLMSampler needs vLLM (a CUDA GPU machine): pip install 'rlreason[gpu]'. "
            "On CPU, use HFSampler."
        ) from e
    return vllm


class VLLMSampler:
    """The `Sampler` interface on vLLM (`LLM.generate`), for the paper profile on a GPU.

    `model` is a hub id or a folder (a `save_policy` folder of a full model). With
    `max_lora_rank`, LoRA is enabled and each call can sample from an adapter folder (what
    `save_policy` writes for a peft model): `generate(..., lora_path=dir)` or `set_lora(dir)`.
    A new folder gets a new adapter id, so an RL loop saves the policy's adapter and passes its
    folder at each iteration, without reloading the base model.

    Log-probabilities: vLLM's V1 engine returns them from the raw logits (its default
    `logprobs_mode="raw_logprobs"`), which is what `Sample.logprobs` promises; the older V0 engine
    returned them after temperature scaling. Stop strings are cut from the text and their tokens
    kept in `token_ids`, as `HFSampler` does (vLLM's `include_stop_str_in_output=False`).
    Untested here: no GPU or vLLM on the CPU machines (see the `vllm`-marked test).
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "bfloat16",
                 max_lora_rank: int | None = None, gpu_memory_utilization: float = 0.85,
                 seed: int = 0, progress: bool = True, **llm_kwargs):
        self._vllm = _import_vllm()
        kwargs = dict(model=str(model), tokenizer=str(tokenizer or model), dtype=dtype, seed=seed,
                      gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        if max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.llm = self._vllm.LLM(**kwargs)
        self.progress = progress
        self._lora_path: str | None = None
        self._lora_ids: dict[str, int] = {}

    def set_lora(self, path: str | None) -> None:
        """Sample from this adapter folder from now on (None: the base model)."""
        self._lora_path = None if path is None else str(path)

    def _lora_request(self, path: str | None):
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(path)
        if path not in self._lora_ids:  # vLLM caches adapters by id: a new folder, a new id
            self._lora_ids[path] = len(self._lora_ids) + 1
        return LoRARequest(f"policy-{self._lora_ids[path]}", self._lora_ids[path], path)

    def generate(self, prompts: list[str], params: SamplingParams,
                 lora_path: str | None = None) -> list[list[Sample]]:
        """`params.n` samples per prompt, in prompt order (see `Sampler`)."""
        if not prompts:
            return []
        if params.insert_after_line is not None:
            raise NotImplementedError("VLLMSampler cannot insert tokens after lines "
                                      "(insert_after_line); RCRL's dense decoding loops over lines instead")
        greedy = params.temperature == 0
        sampling = self._vllm.SamplingParams(
            n=1 if greedy else params.n,  # greedy samples are identical: compute one
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0,  # the sampled token's log-probability only
            ignore_eos=params.ignore_eos,
            skip_special_tokens=params.skip_special_tokens,
        )
        request = self._lora_request(lora_path or self._lora_path)
        outputs = self.llm.generate(prompts, sampling, lora_request=request, use_tqdm=self.progress)
        results = []
        for out in outputs:
            samples = [_sample_from_vllm(c) for c in out.outputs]
            results.append(samples * params.n if greedy else samples)
        return results


def _sample_from_vllm(completion) -> Sample:
    ids = list(completion.token_ids)
    logprobs = []
    for position, token in zip(completion.logprobs or [], ids):
        logprobs.append(float(position[token].logprob))
    reason = "length" if completion.finish_reason == "length" else "stop"
    return Sample(text=completion.text, token_ids=ids, logprobs=logprobs, finish_reason=reason)
