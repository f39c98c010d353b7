"""Policies: the tiny Llama, save/load, LoRA adapters and 4-bit loading (on CPU)."""
from __future__ import annotations

import pytest
import torch

from rlreason.models import (
    LoraSettings,
    TinyModelConfig,
    build_tiny_llama,
    count_parameters,
    ensure_pad_token,
    load_policy,
    save_policy,
)
from rlreason.tokenizer import build_word_tokenizer

TEXTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    " Tom has 3+4 = <<3+4=7>>7 apples.\nHe gives 2 away: 7-2 = <<7-2=5>>5.\n#### 5",
    "Question: Mia has 12 pencils. Mia loses 5 pencils. How many pencils are left?\nAnswer:",
    " <<12-5=7>>7\n#### 7",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine every parallel op
    waits for its slowest thread (5-20x slower measured): run this module on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def saved(policy_dir, tiny_model):
    """A tiny model saved as a policy folder, and the model object itself (conftest's, shared)."""
    return policy_dir, tiny_model


def batch(tokenizer):
    return tokenizer(TEXTS, padding=True, return_tensors="pt")


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**batch(tokenizer)).logits


def test_tiny_llama_shape_and_ids(tokenizer):
    model = build_tiny_llama(tokenizer, TinyModelConfig())
    cfg = model.config
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
    assert shape == (128, 4, 4, 384)
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert cfg.vocab_size == len(tokenizer)
    # ~0.85M in the blocks plus vocab x 128 tied embeddings (~0.9M for a ~300-token vocab).
    block = 4 * 128 * 128 + 3 * 128 * 384 + 2 * 128  # attention, MLP, two norms
    assert count_parameters(model) == 4 * block + 128 + 128 * len(tokenizer)
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_save_load_gives_identical_logits(saved, tokenizer):
    path, model = saved
    loaded, tok = load_policy(path, trainable=False)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert tok.padding_side == "left" and tok.pad_token_id == tokenizer.pad_token_id
    assert torch.allclose(logits(model, tokenizer), logits(loaded, tok), atol=1e-6)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied


def test_save_policy_replaces_an_existing_folder(saved, tokenizer, tmp_path):
    _, model = saved
    target = tmp_path / "ckpt"
    save_policy(model, tokenizer, target)
    (target / "stale.txt").write_text("from an older save")
    save_policy(model, tokenizer, target)
    assert not (target / "stale.txt").exists()
    assert not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()
    assert (target / "config.json").exists() and (target / "tokenizer.json").exists()


def test_lora_trains_only_adapters_and_disabling_gives_the_base(saved, tokenizer):
    path, model = saved
    policy, tok = load_policy(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # Per layer and rank: q, k, v, o are 128 -> 128; gate, up, down join 128 and 384.
    lora_params = 4 * 4 * (4 * (128 + 128) + 3 * (128 + 384))
    assert count_parameters(policy, trainable_only=True) == lora_params
    with torch.no_grad():  # LoRA's B starts at zero: move it so that the adapters matter
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    policy.eval()
    assert not torch.allclose(logits(policy, tok), logits(model, tokenizer), atol=1e-3)
    with policy.disable_adapter():
        assert torch.allclose(logits(policy, tok), logits(model, tokenizer), atol=1e-5)


def test_lora_adapter_save_and_reload(saved, tokenizer, tmp_path):
    path, _ = saved
    policy, tok = load_policy(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    policy.eval()
    save_policy(policy, tok, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    reloaded, tok2 = load_policy(tmp_path / "adapter", trainable=False)
    assert torch.allclose(logits(policy, tok), logits(reloaded, tok2), atol=1e-6)


def test_4bit_lora_forward_backward_on_cpu(saved, tokenizer):
    bnb = pytest.importorskip("bitsandbytes")
    path, model = saved
    policy, tok = load_policy(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), load_in_4bit=True,
                              device="cpu")
    layers = [m for m in policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 4 * 7  # every projection is NF4
    assert layers[0].weight.quant_type == "nf4"
    x = batch(tok)
    labels = x["input_ids"].masked_fill(x["attention_mask"] == 0, -100)
    out = policy(**x, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora = {n: p.grad for n, p in policy.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 4 * 7
    assert all(g is not None and torch.isfinite(g).all() for g in lora.values())
    # B starts at zero, so only B gets a nonzero gradient on the first step.
    assert all(g.abs().sum() > 0 for n, g in lora.items() if "lora_B" in n)
    frozen = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    # NF4 is lossy, but the 4-bit base is still the same model: its logits follow the float ones.
    with torch.no_grad(), policy.disable_adapter():
        q = policy(**x).logits
    ref = logits(model, tokenizer)
    assert torch.corrcoef(torch.stack([q.flatten(), ref.flatten()]))[0, 1] > 0.9


def test_ensure_pad_token_reuses_unk_then_eos(tokenizer, saved):
    tok = build_word_tokenizer(TEXTS)
    tok.pad_token = None
    ensure_pad_token(tok)
    assert tok.pad_token == tok.unk_token
    tok.pad_token, tok.unk_token = None, None
    _, model = saved
    ensure_pad_token(tok, model)
    assert tok.pad_token == tok.eos_token and model.config.pad_token_id == tok.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id  # the fixture is shared: restore it
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def test_missing_local_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at") as err:
        load_policy(tmp_path / "missing")
    assert "\n" not in str(err.value)
