"""RCRL labels under LoRA: spelled with existing tokens (no embedding row added, the adapter
carries no embedding weights), the same after save and reload, and refused when they are not;
full fine-tuning still adds `<|good|>`/`<|bad|>`.

There is no model hub here: the tokenizers are built locally to mimic the two families the rule
must serve, Llama-2's SentencePiece BPE with byte fallback (`<0x00>`..`<0xFF>` at ids 3..258) and a
byte-level BPE like SmolLM2's (every byte a token).
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rlreason import rcrl, rcrl_labels, runs
from rlreason.config import LoraSettings, RCRLConfig, SFTConfig
from rlreason.models import (
    TinyModelConfig,
    build_tiny_llama,
    is_adapter_dir,
    load_policy,
    save_policy,
)
from rlreason.problems import Problem, format_completion, format_prompt
from rlreason.rcrl_decoding import BAD, GOOD, ConditionedSampler, conditioned, label_ids
from rlreason.rewards import make_reward
from rlreason.sampling import HFSampler, SamplingParams
from rlreason.tokenizer import build_word_tokenizer
from rlreason.training import train_sft

REFERENCE = "3+4 = <<3+4=7>>7\n7*2 = <<7*2=14>>14\n#### 14"
WRONG = "3+4 = <<3+4=7>>7\n7*3 = <<7*3=21>>21\n#### 21"
PROBLEM = Problem("p0", "Tom has 3 apples and finds 4. Then the apples double. How many apples?", REFERENCE, 14.0)
OTHER = Problem("p1", "Ana has 5 pears and eats 2. How many pears?", "5-2 = <<5-2=3>>3\n#### 3", 3.0)
CORPUS = [format_prompt(p.question) + format_completion(p.solution) for p in (PROBLEM, OTHER)] + [WRONG]
SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
LORA = LoraSettings(r=4, dropout=0.0)


def llama2_like(texts=CORPUS) -> PreTrainedTokenizerFast:
    """Llama-2's layout: `<unk>`, `<s>`, `</s>`, the 256 byte-fallback tokens, then learned BPE
    pieces; `▁` for spaces, prepended; `<s>` added in front."""
    specials = ["<unk>", "<s>", "</s>"]
    norm = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = norm
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=150, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="left", clean_up_tokenization_spaces=False)


def byte_level(texts=CORPUS) -> PreTrainedTokenizerFast:
    """SmolLM2's layout: byte-level BPE over single digits, special tokens first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>",
                                   padding_side="left", clean_up_tokenization_spaces=False)


def ids_of(tok, text: str, eos: bool = False) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random Llama with the Llama-2-like tokenizer, saved as a full-model policy folder."""
    tok = llama2_like()
    torch.manual_seed(0)
    return save_policy(build_tiny_llama(tok, SMALL), tok, tmp_path_factory.mktemp("labels") / "base")


def lora_policy(base_dir):
    return load_policy(base_dir, lora=LORA, device="cpu", dtype=torch.float32)


def next_logits(model, tok, label: int) -> torch.Tensor:
    """The logits right after `prompt + label` (the first solution token's distribution)."""
    ids = tok(format_prompt(PROBLEM.question))["input_ids"] + [label]
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


# ---- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "tokens"), [(llama2_like, ("<0x01>", "<0x02>")), (byte_level, ("ā", "Ă"))])
def test_adapter_labels_are_the_first_two_control_bytes_of_the_vocabulary(build, tokens):
    tok = build()
    n = len(tok)
    good, bad = rcrl.add_label_tokens(None, tok, adapters=True)
    assert (good, bad) == tuple(tok.convert_tokens_to_ids(list(tokens))) and len(tok) == n
    labels = rcrl_labels.read_labels(tok)
    assert (labels.good, labels.bad, labels.added) == ("\x01", "\x02", False)
    prompt = format_prompt(PROBLEM.question)
    assert tok(prompt + labels.good)["input_ids"] == tok(prompt)["input_ids"] + [good]  # a prompt ends with it
    assert rcrl.add_label_tokens(None, tok, adapters=True) == (good, bad)  # idempotent
    assert rcrl_labels.existing_label_texts(build()) == ("\x01", "\x02")  # deterministic


def test_the_rule_skips_a_byte_that_merges_with_text_and_fails_in_one_line_without_any():
    # Trained on "Answer:\x01", the byte-level BPE merges ":" with "\x01": not a token of its own.
    tok = byte_level(CORPUS + ["Answer:\x01 Answer:\x01 x:\x01"] * 20)
    assert rcrl_labels.single_token(tok, "\x01") is None
    assert rcrl_labels.existing_label_texts(tok) == ("\x02", "\x03")
    with pytest.raises(ValueError, match=r"^no two unused single tokens for RCRL labels[^\n]*$"):
        rcrl_labels.existing_label_texts(build_word_tokenizer(CORPUS))  # the word tokenizer has no bytes


def test_a_recorded_label_that_no_longer_matches_the_vocabulary_is_refused():
    tok = llama2_like()
    rcrl.add_label_tokens(None, tok, adapters=True)
    tok.init_kwargs[rcrl_labels.CONFIG_KEY] = dict(tok.init_kwargs[rcrl_labels.CONFIG_KEY], good_id=7)
    with pytest.raises(ValueError, match="recorded RCRL labels .* do not match"):
        label_ids(tok)


# ---- LoRA: one step, save, reload --------------------------------------------------------------


def test_lora_labels_survive_a_training_step_save_and_reload(base_dir, tmp_path):
    model, tok = lora_policy(base_dir)
    shape, n = model.get_input_embeddings().weight.shape, len(tok)
    good, bad = rcrl.add_label_tokens(model, tok, seed=0)  # a peft model: existing tokens
    assert model.get_input_embeddings().weight.shape == shape and len(tok) == n  # nothing resized
    assert (good, bad) == (4, 5)  # <0x01>, <0x02>
    prompt = format_prompt(PROBLEM.question)
    examples = [rcrl.encode_labelled(tok, prompt, [label, *ids_of(tok, format_completion(text), eos=True)], 512,
                                     (good, bad)) for label, text in ((good, REFERENCE), (bad, WRONG))]
    train_sft(model, tok, None, SFTConfig(max_steps=1, lr=1e-2, batch_size=2, warmup_steps=0, log_every=1,
                                          save_every_epoch=False), encoded=examples, progress=False)
    model.eval()
    before = next_logits(model, tok, good) - next_logits(model, tok, bad)
    with model.disable_adapter():
        untrained = next_logits(model, tok, good) - next_logits(model, tok, bad)
    assert not torch.allclose(before, untrained)  # the step changed how the labels are read ...
    assert before.abs().max() > 1e-3  # ... and the two labels lead to different logits

    ckpt = save_policy(model, tok, tmp_path / "round_01")
    assert is_adapter_dir(ckpt) and rcrl_labels.adapter_embedding_entries(ckpt) == []
    rcrl_labels.check_adapter(ckpt)
    with safe_open(str(ckpt / "adapter_model.safetensors"), "pt") as f:
        assert all("lora_" in k for k in f.keys())  # LoRA matrices only: no embedding weights
    record = json.loads((ckpt / "tokenizer_config.json").read_text())[rcrl_labels.CONFIG_KEY]
    assert record == {"good": "\x01", "bad": "\x02", "good_id": 4, "bad_id": 5}

    model2, tok2 = load_policy(ckpt, trainable=False, device="cpu", dtype=torch.float32)
    assert label_ids(tok2) == (good, bad) and model2.get_input_embeddings().weight.shape == shape
    assert ConditionedSampler(None, tok2, GOOD).text == "\x01" and ConditionedSampler(None, tok2, BAD).text == "\x02"
    after = next_logits(model2, tok2, good) - next_logits(model2, tok2, bad)
    assert torch.allclose(after, before, atol=1e-6), (after - before).abs().max()


def test_rcrl_with_lora_trains_an_adapter_without_embeddings(base_dir, tmp_path):
    """`train_rcrl` end to end with LoRA (one round, tiny budgets): the reward's tokenizer and the
    trained one agree on the existing-token labels, and the round's adapter carries none."""
    labelled = AutoTokenizer.from_pretrained(str(base_dir))
    adapters = rcrl.trains_adapters(base_dir, LORA)
    assert adapters and not rcrl.trains_adapters(base_dir, None)
    ids = rcrl.add_label_tokens(None, labelled, adapters=adapters)
    cfg = RCRLConfig(k=2, n_questions=2, train=SFTConfig(epochs=1, lr=1e-3, batch_size=4, warmup_steps=0,
                                                         save_every_epoch=False))
    run = runs.open_run(tmp_path, "rcrl-lora", dataclasses.asdict(cfg), seed=0)
    rcrl.train_rcrl(base_dir, [PROBLEM, OTHER], make_reward("sparse", tokenizer=labelled), cfg, run, labels="sparse",
                    make_sampler=lambda p: HFSampler(*load_policy(str(p), trainable=False), progress=False),
                    params=SamplingParams(max_new_tokens=8), lora=LORA)
    ckpt = rcrl.checkpoint(run.dir, 1)
    assert is_adapter_dir(ckpt) and rcrl_labels.adapter_embedding_entries(ckpt) == []
    assert label_ids(AutoTokenizer.from_pretrained(str(ckpt))) == ids == (4, 5)
    data = [json.loads(line) for line in (run.dir / "round_01.data.jsonl").read_text().splitlines()]
    assert data and all(d["ids"][0] in ids for d in data)  # sparse: the label is in front
    assert conditioned(HFSampler(*load_policy(ckpt, trainable=False), progress=False), ckpt).text == "\x01"


# ---- the guards --------------------------------------------------------------------------------


def test_a_lora_model_is_never_resized(base_dir):
    model, tok = lora_policy(base_dir)
    shape = model.get_input_embeddings().weight.shape
    with pytest.raises(ValueError, match="adapters=False but the model has LoRA adapters"):
        rcrl.add_label_tokens(model, tok, adapters=False)
    tok.add_tokens([GOOD, BAD], special_tokens=True)  # a tokenizer that grew (the old layout)
    rows = shape[0]
    with pytest.raises(ValueError, match=rf"^refusing to resize the embeddings of a LoRA model[^\n]*ids {rows}, "
                                         rf"{rows + 1}; {rows} rows"):
        rcrl.add_label_tokens(model, tok)
    assert model.get_input_embeddings().weight.shape == shape


def test_an_adapter_with_embedding_weights_or_a_larger_tokenizer_is_refused(base_dir, tmp_path):
    model, tok = lora_policy(base_dir)
    rcrl.add_label_tokens(model, tok)
    model.save_pretrained(tmp_path / "emb", save_embedding_layers=True)  # what peft does after a resize
    tok.save_pretrained(tmp_path / "emb")
    with pytest.raises(ValueError, match=r"^\S+emb: the LoRA adapter carries embedding weights \([^\n]*embed_tokens"):
        rcrl_labels.check_adapter(tmp_path / "emb")
    with pytest.raises(ValueError, match="carries embedding weights"):
        conditioned(None, tmp_path / "emb")  # the conditioned sampler refuses it too

    save_policy(model, tok, tmp_path / "saved")  # a clean adapter ...
    rcrl_labels.check_adapter(tmp_path / "saved")
    config_path = tmp_path / "saved" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"modules_to_save": ["lm_head"]}))
    assert rcrl_labels.adapter_embedding_entries(tmp_path / "saved") == ["modules_to_save=['lm_head']"]
    config_path.write_text(json.dumps(config))

    grown = llama2_like()
    grown.add_tokens([GOOD, BAD], special_tokens=True)  # ... next to a tokenizer with added labels
    grown.save_pretrained(tmp_path / "saved")
    rows = model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match=rf"tokenizer has {rows + 2} tokens but its base model \S+ has {rows} embedding"):
        rcrl_labels.check_adapter(tmp_path / "saved")


# ---- full fine-tuning: unchanged ---------------------------------------------------------------


@pytest.mark.parametrize("build", [lambda: build_word_tokenizer(CORPUS), llama2_like])
def test_full_fine_tuning_still_adds_good_and_bad_tokens(build):
    tok = build()
    torch.manual_seed(0)
    model = build_tiny_llama(tok, SMALL)
    n = len(tok)
    assert rcrl.add_label_tokens(model, tok, seed=0) == (n, n + 1)  # not a peft model: added
    assert model.get_input_embeddings().weight.shape[0] == n + 2 and len(tok) == n + 2
    labels = rcrl_labels.read_labels(tok)
    assert (labels.good, labels.bad, labels.added) == (GOOD, BAD, True)
    assert rcrl_labels.CONFIG_KEY not in tok.init_kwargs  # nothing recorded: the saved tokenizer is as before
    assert ConditionedSampler(None, tok, BAD).text == BAD
    assert rcrl.add_label_tokens(None, build()) == (n, n + 1)  # the tokenizer-only call agrees
