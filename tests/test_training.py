"""SFT trainer: masking, schedule, learning (loss falls, parameters change), checkpoints."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from rlreason.config import LoraSettings, SFTConfig, TinyModelConfig
from rlreason.io import read_jsonl
from rlreason.models import build_tiny_llama, load_policy
from rlreason.problems import format_completion, format_prompt
from rlreason.tokenizer import build_word_tokenizer
from rlreason.training import (
    IGNORE_INDEX,
    LengthGroupedBatches,
    encode_example,
    lr_lambda,
    train_sft,
)
from rlreason.world import WorldConfig, build_world

SHAPE = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(n_sft=64, n_dev=8, n_test=8, n_variations=8, n_pretrain=50))


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_word_tokenizer(world.pretrain + [format_prompt(p.question) + format_completion(p.solution)
                                                  for p in world.sft + world.test])


def examples(world):
    return [(format_prompt(p.question), format_completion(p.solution)) for p in world.sft]


def test_encode_masks_the_prompt_and_appends_eos(tokenizer, world):
    prompt, completion = examples(world)[0]
    ids, labels = encode_example(tokenizer, prompt, completion, max_length=512)
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[n_prompt:-1]) == completion
    doc_ids, doc_labels = encode_example(tokenizer, prompt + completion, None, max_length=512)
    assert doc_ids == doc_labels  # pretraining: loss on every token


def test_schedule_warms_up_then_decays():
    cfg = SFTConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) < 1.0 and f(110) == pytest.approx(0.1)
    assert lr_lambda(SFTConfig(warmup_steps=0), 100)(50) == 1.0
    with pytest.raises(ValueError, match="SFTConfig.schedule = 'linear'; expected one of"):
        SFTConfig(schedule="linear")  # a config with an unknown schedule cannot be built


def test_sft_lowers_the_loss_changes_parameters_and_saves_epochs(tokenizer, world, tmp_path):
    torch.manual_seed(0)
    model = build_tiny_llama(tokenizer, SHAPE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SFTConfig(epochs=3, lr=3e-3, batch_size=16, warmup_steps=1, log_every=1)
    rows = train_sft(model, tokenizer, examples(world), cfg, out_dir=tmp_path, progress=False,
                     on_epoch_end=lambda epoch, m: {"checked": epoch})
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    for epoch in (1, 2, 3):
        assert (tmp_path / f"epoch_{epoch:02d}" / "config.json").exists()
    logged = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["checked"] for r in logged if r.get("end_of_epoch")] == [1, 2, 3]
    reloaded, _ = load_policy(tmp_path / "epoch_03", trainable=False)
    x = torch.tensor([tokenizer("Question: Tom has 3 apples.")["input_ids"]])
    model.eval()
    assert torch.allclose(reloaded(x).logits, model(x).logits, atol=1e-5)


def test_same_seed_same_training(tokenizer, world):
    def run():
        torch.manual_seed(0)
        model = build_tiny_llama(tokenizer, SHAPE)
        rows = train_sft(model, tokenizer, examples(world)[:32], SFTConfig(epochs=1, batch_size=16, log_every=1),
                         progress=False)
        return [r["loss"] for r in rows if "loss" in r]

    assert run() == run()


def test_bad_inputs_are_clear_errors(tokenizer):
    model = build_tiny_llama(tokenizer, SHAPE)
    with pytest.raises(ValueError, match="no examples"):
        train_sft(model, tokenizer, [], SFTConfig(), progress=False)
    with pytest.raises(ValueError, match="SFTConfig.mixed_precision = 'fp8'; expected one of"):
        SFTConfig(mixed_precision="fp8")


def test_on_step_logs_and_can_stop_training_early(tokenizer, world, tmp_path):
    torch.manual_seed(0)
    model = build_tiny_llama(tokenizer, SHAPE)
    calls = []

    def on_step(step, m):
        calls.append((step, m.training))
        return {"dev_metric": step / 10, "stop": step >= 4}

    rows = train_sft(model, tokenizer, examples(world), SFTConfig(max_steps=10, batch_size=8, log_every=1),
                     out_dir=tmp_path, progress=False, on_step=on_step, on_step_every=2)
    assert calls == [(2, False), (4, False)]  # every 2 steps, in eval mode; stopped at step 4
    assert max(r["step"] for r in rows) == 4
    logged = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["dev_metric"] for r in logged if "dev_metric" in r] == [0.2, 0.4]
    assert model.training is False  # train_sft leaves the model in eval mode


def test_schedule_steps_keep_the_floor_after_the_schedule(tokenizer, world):
    """A run that goes on past `schedule_steps` has the same lr as a run of that length, then the floor."""
    def lrs(max_steps, schedule_steps=None):
        torch.manual_seed(0)
        model = build_tiny_llama(tokenizer, SHAPE)
        cfg = SFTConfig(max_steps=max_steps, schedule_steps=schedule_steps, batch_size=8, log_every=1,
                        warmup_steps=1, schedule="cosine", lr=1e-3, min_lr_ratio=0.1)
        return [r["lr"] for r in train_sft(model, tokenizer, examples(world), cfg, progress=False) if "lr" in r]

    short, extended = lrs(4), lrs(7, schedule_steps=4)
    assert extended[:4] == pytest.approx(short)
    assert extended[3:] == pytest.approx([1e-4] * 4)  # the floor: lr x min_lr_ratio


def test_long_examples_are_counted_in_data_json_and_warned(tokenizer, world, tmp_path):
    data = examples(world)[:32]
    lengths = sorted(len(encode_example(tokenizer, p, c, None)[0]) for p, c in data)
    limit = lengths[len(lengths) // 2]
    longer = sum(n > limit for n in lengths)
    assert 0 < longer < len(data)
    cfg = SFTConfig(epochs=1, batch_size=16, log_every=1, max_length=limit, save_every_epoch=False)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=f"{longer} of 32 examples .* max_length={limit} tokens"):
        train_sft(build_tiny_llama(tokenizer, SHAPE), tokenizer, data, cfg, out_dir=tmp_path,
                  progress=False)
    stats = json.loads((tmp_path / "data.json").read_text())
    assert stats["truncated"] == longer and stats["truncated_share"] == pytest.approx(longer / 32)
    assert stats["max_length"] == limit and stats["longest"] == lengths[-1]
    assert (tmp_path / "precision.json").exists()  # its neighbour

    whole = tmp_path / "whole"  # None: the longest example's length, nothing cut, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_sft(build_tiny_llama(tokenizer, SHAPE), tokenizer, data,
                  dataclasses.replace(cfg, max_length=None), out_dir=whole, progress=False)
    stats = json.loads((whole / "data.json").read_text())
    assert stats["max_length"] == lengths[-1] and stats["truncated"] == 0
    with pytest.raises(ValueError, match="SFTConfig.max_length = 0"):
        SFTConfig(max_length=0)


def test_cutting_in_train_sft_equals_cutting_at_encoding(tokenizer, world):
    """Counting needs the whole examples: cutting them in train_sft trains exactly as encoding
    them cut did (the tiny and smoke numbers do not move)."""
    data = examples(world)[:32]
    limit = sorted(len(encode_example(tokenizer, p, c, None)[0]) for p, c in data)[16]
    cfg = SFTConfig(epochs=1, batch_size=8, log_every=1, max_length=limit)

    def losses(**kw):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows = train_sft(build_tiny_llama(tokenizer, SHAPE), tokenizer, cfg=cfg, progress=False, **kw)
        return [r["loss"] for r in rows if "loss" in r]

    cut_first = [encode_example(tokenizer, p, c, limit) for p, c in data]
    assert losses(examples=data) == losses(examples=None, encoded=cut_first)
    whole = [encode_example(tokenizer, p, c, None) for p, c in data]
    assert losses(examples=None, encoded=whole) == losses(examples=data)  # encoded are cut too


def _attention_calls(model) -> list[int]:
    calls = [0]
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_recomputes_activations_with_the_same_losses(tokenizer, world):
    data = examples(world)[:32]

    def run(checkpointing: bool):
        torch.manual_seed(0)
        model = build_tiny_llama(tokenizer, SHAPE)
        calls = _attention_calls(model)
        flags = []
        rows = train_sft(model, tokenizer, data, SFTConfig(
            epochs=1, batch_size=8, log_every=1, gradient_checkpointing=checkpointing),
            progress=False, on_step=lambda step, m: flags.append(m.model.layers[0].gradient_checkpointing),
            on_step_every=1)
        assert model.model.layers[0].gradient_checkpointing is False  # off again after training
        return [r["loss"] for r in rows if "loss" in r], calls[0], flags

    plain, plain_calls, plain_flags = run(False)
    ckpt, ckpt_calls, ckpt_flags = run(True)
    assert ckpt == pytest.approx(plain, rel=1e-6)
    assert plain_calls == 4 and ckpt_calls == 8  # 4 steps: each layer runs again in the backward
    assert plain_flags == [False] * 4 and ckpt_flags == [True] * 4


def test_gradient_checkpointing_trains_lora_adapters(policy_dir, tiny_world):
    """Checkpointing through a frozen base: gradients still reach the adapters, and afterwards
    the embeddings' output no longer requires grad (the hook that made it so is removed)."""
    model, tok = load_policy(policy_dir, lora=LoraSettings(r=4, target_modules=("q_proj", "v_proj")))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [(format_prompt(p.question), format_completion(p.solution)) for p in tiny_world.sft[:16]]
    train_sft(model, tok, data, SFTConfig(epochs=1, batch_size=8, lr=1e-2, warmup_steps=1,
                                          gradient_checkpointing=True), progress=False)
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b and all(not torch.equal(dict(model.named_parameters())[n], before[n]) for n in lora_b)
    x = torch.tensor([tok(data[0][0])["input_ids"]])
    assert not model.get_input_embeddings()(x).requires_grad


def test_length_grouped_batches_cover_each_example_once_with_less_padding():
    lengths = [int(x) for x in torch.randint(20, 130, (1000,), generator=torch.Generator().manual_seed(1))]
    batches = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(0), group=10))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(LengthGroupedBatches(lengths, 32, torch.Generator()))

    def pad_share(bs):
        width = sum(max(lengths[i] for i in b) * len(b) for b in bs)
        return 1 - sum(lengths) / width

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    plain = [shuffled[i:i + 32] for i in range(0, 1000, 32)]
    assert pad_share(batches) < 0.3 * pad_share(plain)
    again = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(0), group=10))
    assert again == batches  # same seed, same batches
    other = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(1), group=10))
    assert other != batches


def test_group_by_length_trains_on_every_example(tokenizer, world):
    torch.manual_seed(0)
    model = build_tiny_llama(tokenizer, SHAPE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SFTConfig(epochs=3, lr=3e-3, batch_size=16, warmup_steps=1, log_every=1, group_by_length=True)
    rows = train_sft(model, tokenizer, examples(world), cfg, progress=False)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    plain = train_sft(build_tiny_llama(tokenizer, SHAPE), tokenizer, examples(world),
                      dataclasses.replace(cfg, group_by_length=False), progress=False)
    # the same examples per epoch: the same number of steps and of labelled tokens
    assert [r["tokens"] for r in rows if "loss" in r][-1] == [r["tokens"] for r in plain if "loss" in r][-1]
