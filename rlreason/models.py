"""Policies: the tiny from-scratch Llama, loading any HF causal LM (LoRA, 4-bit), saving.

Both profiles go through `load_policy`: the tiny profile loads the folder `save_policy` wrote for
a `build_tiny_llama` model, the paper profile loads `meta-llama/Llama-2-7b-hf` from the hub. Only
the size differs, so everything above this module is tested on the tiny model.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .config import LLAMA_PROJECTIONS, LoraSettings, TinyModelConfig
from .distributed import local_rank, world_size

# The configs live in the torch-free floor (`rlreason.config`, where profiles build them); they
# are re-exported here because this is where a reader looks for them.
__all__ = ["LLAMA_PROJECTIONS", "LoraSettings", "TinyModelConfig", "base_model", "build_tiny_llama",
           "count_parameters", "default_device_dtype", "ensure_pad_token", "is_adapter_dir",
           "load_policy", "save_policy", "use_inference_attention"]


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """cuda + bfloat16 when a GPU is there, else cpu + float32 (CPU bf16 is slow without AMX
    kernels everywhere and would make log-probabilities drift from the float32 reference).

    Under a multi-process launch a bare `cuda` is this rank's GPU, `cuda:LOCAL_RANK`: `cuda`
    alone is the current device, GPU 0 on every rank until something sets it, so every rank's
    model would land there (and accelerate refuses to train a 4-bit model on another GPU than
    its rank's). A single process keeps `cuda` as it was.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and world_size() > 1:
        device = torch.device("cuda", local_rank())
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return device, dtype


def default_attention(device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """Attention implementation to load models with: `eager` on CPU, the model's default elsewhere.

    On CPU, SDPA's flash-attention kernel has a slow backward: on the tiny model (batch 32, ~110
    tokens, one thread) a training step took 605 ms with SDPA and 331 ms with eager attention,
    the backward of the attention kernel alone being over half of the SDPA step. On GPUs the
    default (SDPA) is the fast path. The HF sampler swaps in its own attention while decoding.
    Eager attention gives the same greedy tokens as SDPA in float32 (64 of 64 test prompts). In
    float64 transformers' eager mask breaks (greedy output of all zeros), so float64 gets SDPA; do
    not cast an eager model to float64 afterwards (set `sdpa` first).
    """
    return "eager" if device.type == "cpu" and dtype != torch.float64 else None


def base_model(model):
    """The model inside a peft wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def use_inference_attention(model) -> None:
    """Switch a model that will only run forward passes from eager attention to SDPA. CPU models
    load with eager attention because SDPA's backward is slow there (`default_attention`), but
    SDPA's forward is the faster one: scoring 16k tiny-world samples with the ORM took ~1.4x less
    time (same scores up to bf16 rounding, 2e-3)."""
    base = base_model(model)
    if getattr(base.config, "_attn_implementation", None) == "eager" and getattr(base, "_supports_sdpa", False):
        base.set_attn_implementation("sdpa")


def build_tiny_llama(tokenizer, cfg: TinyModelConfig | None = None) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by `cfg`, with the vocab and special ids of `tokenizer`.

    `len(tokenizer)` (not `vocab_size`) sizes the embeddings so that tokens added later with
    `add_special_tokens` are covered; RCRL resizes again with `model.resize_token_embeddings`.
    """
    cfg = cfg or TinyModelConfig()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        initializer_range=cfg.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    attention = default_attention(torch.device("cpu"))  # built on the CPU (pretraining runs there)
    if attention:
        model.set_attn_implementation(attention)
    # generate() reads its defaults from here; without pad it warns on every call.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once; 4-bit weights count their packed size)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give the tokenizer a pad token if it has none, without growing the vocabulary.

    Llama-2 has no pad token. We reuse `<unk>` (as many Llama-2 fine-tuning recipes do) and fall
    back to EOS: padding is always masked out (attention mask, loss labels), but a pad equal to
    EOS makes "where does the completion end" ambiguous in code that strips padding by id, so
    `<unk>` is preferred. The model's config and generation config are told the same id.
    """
    if tokenizer.pad_token is None:
        unk = tokenizer.unk_token
        tokenizer.pad_token = unk if unk is not None else tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def _bnb_4bit_config(compute_dtype: torch.dtype):
    """NF4 weights, double quantization, compute in `compute_dtype` (QLoRA's recipe)."""
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:  # pragma: no cover - bitsandbytes is a core dependency
        raise ImportError("load_in_4bit=True needs bitsandbytes: "
                          "pip install 'bitsandbytes>=0.45'") from e
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether `path` holds a saved LoRA adapter (`adapter_config.json`), not a full model."""
    return os.path.isfile(os.path.join(str(path), "adapter_config.json"))


def adapter_base(path: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on (its config's `base_model_name_or_path`)."""
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/adapter_config.json has no base_model_name_or_path; expected the "
                         "base model's hub id or folder")
    return str(base)


def adapter_weight_names(path: str | os.PathLike) -> list[str]:
    """Names of the tensors an adapter folder saved (safetensors or .bin; [] when neither)."""
    folder = Path(path)
    if (folder / "adapter_model.safetensors").exists():
        from safetensors import safe_open

        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            return list(f.keys())
    if (folder / "adapter_model.bin").exists():
        return list(torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True))
    return []


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def check_checkpoint(path: str | os.PathLike) -> None:
    """One clear error when a local folder is not a complete checkpoint (an interrupted save, or
    the wrong folder), instead of the tokenizer's or the weights loader's multi-line one."""
    folder = Path(path)
    if is_adapter_dir(folder):
        needed = [("adapter_model.safetensors", "adapter_model.bin")]
    else:
        needed = [("config.json",), WEIGHT_FILES]
    needed.append(("tokenizer_config.json", "tokenizer.json"))
    missing = [alternatives[0] for alternatives in needed
               if not any((folder / name).exists() for name in alternatives)]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete checkpoint: missing {', '.join(missing)}; expected a folder "
            f"written by save_policy (an interrupted save leaves {folder.name}.tmp beside it)")


def load_policy(
    name_or_path: str | os.PathLike,
    *,
    lora: LoraSettings | None = None,
    load_in_4bit: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trainable: bool = True,
    attn_implementation: str | None = None,
):
    """Load a causal LM and its tokenizer: a hub id, a `save_policy` folder, or an adapter folder.

    - `lora`: wrap the model in fresh peft LoRA adapters (only they train; the base is frozen).
      A folder holding a saved adapter (`adapter_config.json`) is loaded on top of its base model
      instead, trainable or not as `trainable` says.
    - `load_in_4bit`: NF4 weights via bitsandbytes, then `peft.prepare_model_for_kbit_training`
      when training. bitsandbytes >= 0.45 runs 4-bit on CPU too (slowly); this is what the tests
      exercise on the tiny model.
    - `dtype`/`device`: default cuda + bfloat16 when available, else cpu + float32; under a
      multi-process launch each rank loads onto its own GPU (`default_device_dtype`; 4-bit:
      `device_map={"": local_rank}`).
    - `trainable=False`: eval mode and no gradients (reference policies, samplers, the ORM's
      frozen copy).
    - `attn_implementation`: e.g. `sdpa`, `eager`; default `default_attention(device)`.

    Returns `(model, tokenizer)`; the tokenizer has a pad token (see `ensure_pad_token`) and pads
    on the left, as batched generation needs.
    """
    device, dtype = default_device_dtype(device, dtype)
    path = str(name_or_path)
    if (os.path.isabs(path) or path.startswith(".")) and not os.path.isdir(path):
        # A hub id never starts with "/" or "."; without this check the hub client answers with a
        # confusing "Repo id must be in the form ..." error.
        raise FileNotFoundError(f"no checkpoint folder at {path!r}: expected a folder written by "
                                "save_policy (config.json + weights) or a hub model id")
    if os.path.isdir(path):
        check_checkpoint(path)
    adapter_dir = path if os.path.isdir(path) and is_adapter_dir(path) else None
    base_path = adapter_base(adapter_dir) if adapter_dir is not None else path

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_path)
    tokenizer.padding_side = "left"
    kwargs: dict = {"dtype": dtype}
    attn_implementation = attn_implementation or default_attention(device, dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = _bnb_4bit_config(dtype)
        on_gpu = device.type == "cuda" and device.index is not None
        # Under a launch, {"": local_rank}: each rank's 4-bit weights on its own GPU.
        kwargs["device_map"] = {"": device.index if on_gpu else str(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    except Exception as e:
        if load_in_4bit:
            raise RuntimeError(
                f"4-bit loading of {base_path!r} on {device} failed: {e}. bitsandbytes needs a "
                "version with a backend for this device (>= 0.45 for CPU, >= 0.43 for CUDA)."
            ) from e
        raise
    if not load_in_4bit:
        model.to(device)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        if adapter_dir is not None:  # an adapter cannot carry new embedding rows (vLLM, peft offline)
            raise ValueError(f"{adapter_dir}: the adapter's tokenizer has {len(tokenizer)} tokens but its base "
                             f"model {base_path} has {rows} embedding rows, which an adapter cannot extend; "
                             "expected a tokenizer no larger than the base vocabulary (RCRL labels as "
                             "existing tokens, rlreason.rcrl_labels)")
        # A tokenizer saved after `add_special_tokens` (RCRL) with a model saved before.
        model.resize_token_embeddings(len(tokenizer))
    ensure_pad_token(tokenizer, model)

    if load_in_4bit and trainable:
        from peft import prepare_model_for_kbit_training

        # Casts norms to float32 and enables input grads so adapters train through frozen 4-bit
        # weights; gradient checkpointing is left to the trainer (it slows the tiny model down).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    elif lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)

    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model, tokenizer


def save_policy(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save model (or only its LoRA adapters) and tokenizer to `path`, replacing it atomically-ish.

    Everything is written to `path.tmp` first and renamed over `path` at the end, so an
    interrupted save never leaves a half-written checkpoint under the real name. (The final swap
    is two renames when `path` already exists: a crash between them leaves `path.old`.)
    """
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path
