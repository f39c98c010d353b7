"""The tiny world's tokenizer: exact round trips, prompt/completion splits, save/load."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rlreason.problems import format_completion, format_prompt
from rlreason.tokenizer import SPACE, build_word_tokenizer
from rlreason.world import WorldConfig, build_world

SMALL_WORLD = WorldConfig(seed=3, n_sft=120, n_dev=10, n_test=40, n_variations=40, n_pretrain=300)


@pytest.fixture(scope="module")
def world_texts() -> list[tuple[str, str]]:
    w = build_world(SMALL_WORLD)
    pairs = [(format_prompt(p.question), format_completion(p.solution))
             for split in (w.sft, w.test, w.variations) for p in split]
    return pairs + [(doc, "") for doc in w.pretrain]


@pytest.fixture(scope="module")
def tokenizer(world_texts):
    return build_word_tokenizer(p + c for p, c in world_texts)


def roundtrip(tok, text: str) -> str:
    return tok.decode(tok(text)["input_ids"], skip_special_tokens=True)


def test_every_world_text_round_trips_exactly(tokenizer, world_texts):
    for prompt, completion in world_texts:
        assert roundtrip(tokenizer, prompt + completion) == prompt + completion


def test_prompt_and_completion_tokenize_separately(tokenizer, world_texts):
    # Trainers encode the prompt (with BOS) and the completion (without) separately.
    for prompt, completion in world_texts[:100]:
        joint = tokenizer(prompt + completion)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert tokenizer(prompt)["input_ids"] + completion_ids == joint


def test_digits_are_single_tokens_and_markers_whole(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(" <<48/2=24>>24\n#### 1234")["input_ids"])
    assert tokens == ["<s>", SPACE + "<<", "4", "8", "/", "2", "=", "2", "4", ">>", "2", "4", "\n",
                      "####", SPACE, "1", "2", "3", "4"]


@pytest.mark.parametrize("text", [
    "Question: Xavier has 98765 quinces.\nAnswer:",   # words never seen: spelled by letters
    "  two  spaces, a\ttab, $1,234.50 and -3!",
    "###  <<<1>>> abcdef ####",
])
def test_unseen_ascii_text_round_trips(tokenizer, text):
    assert roundtrip(tokenizer, text) == text
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]


def test_special_tokens_bos_and_padding(tokenizer):
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token] == [
        "<pad>", "<s>", "</s>", "<unk>"]
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    ids = tokenizer("Tom has 3 apples")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    batch = tokenizer(["Tom", "Tom has 3 apples"], padding=True)
    assert tokenizer.padding_side == "left"
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id and batch["attention_mask"][0][0] == 0


def test_vocabulary_is_deterministic_and_min_frequency_spells_rare_words(world_texts):
    texts = [p + c for p, c in world_texts]
    assert build_word_tokenizer(texts).get_vocab() == build_word_tokenizer(texts).get_vocab()
    rare = build_word_tokenizer(texts + ["Zebulon"], min_frequency=2)
    assert SPACE + "Zebulon" not in rare.get_vocab() and "Zebulon" not in rare.get_vocab()
    assert roundtrip(rare, "Zebulon has 3 apples.") == "Zebulon has 3 apples."


def test_save_load_and_added_special_tokens_survive(tokenizer, world_texts, tmp_path):
    tok = build_word_tokenizer(p + c for p, c in world_texts[:50])
    tok.add_special_tokens({"additional_special_tokens": ["<|good|>", "<|bad|>"]})
    good = tok.convert_tokens_to_ids("<|good|>")
    text = "<|good|> Tom has 3+4 = <<3+4=7>>7 apples."
    ids = tok(text)["input_ids"]
    assert ids[:2] == [tok.bos_token_id, good]  # one token, never split by the pre-tokenizer
    tok.save_pretrained(tmp_path)

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tok) and loaded.get_vocab() == tok.get_vocab()
    assert loaded(text)["input_ids"] == ids
    assert loaded.convert_tokens_to_ids("<|bad|>") == tok.convert_tokens_to_ids("<|bad|>")
    assert loaded.decode(ids) == "<s>" + text
    assert loaded.decode(ids, skip_special_tokens=True) == text.replace("<|good|>", "")
    assert loaded.padding_side == "left" and loaded.pad_token_id == 0
    prompt, completion = world_texts[0]
    assert roundtrip(loaded, prompt + completion) == prompt + completion


def test_save_dir_argument(world_texts, tmp_path):
    build_word_tokenizer((p for p, _ in world_texts[:20]), save_dir=tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert roundtrip(loaded, world_texts[0][0]) == world_texts[0][0]
