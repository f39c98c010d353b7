"""A word-level tokenizer for the tiny world, built offline with the `tokenizers` library.

The tiny profile trains a ~1M-parameter Llama from scratch, so the tokenizer is built from the
world's own texts instead of being downloaded. Design choices, each for a reason:

- **Words are tokens** (`Tom`, `apples`): short sequences, so sampling is cheap. A word outside
  the vocabulary is spelled letter by letter (WordPiece-style `▁`, `##a`, `##b`, ...), so any
  ASCII text round-trips, even words the builder never saw (test-split names, `abcdef`, which
  transformers' `StopStringCriteria` uses to probe a tokenizer). (`##` stands for the
  continuation prefix, which is really a private-use character: `#` is GSM8K text.)
- **Every digit is its own token** (`48` -> `4`, `8`): a number the model has never seen is still
  spelled with known tokens, so arithmetic can generalise.
- **Punctuation is split into single characters** (`<<3+4=7>>` -> `<<`, `3`, `+`, `4`, `=`, ...):
  the calculator annotations are built from a handful of symbols; only GSM8K's markers `<<`,
  `>>` and `####` stay whole, since they are frequent and always mean the same thing.
- **Spaces are kept, Metaspace-style**: a space becomes `▁` and sticks to the word or symbol
  after it (`▁apples`, `▁=`); a space before a digit is a token `▁` of its own, so digits stay
  bare. `\\n` is a token. Decoding turns `▁` back into a space and fuses the pieces without
  adding any, so `decode(encode(text)) == text` exactly for every text built from the vocabulary.
- **Pre-tokenization never crosses a space**, so `encode(prompt) + encode(completion)` equals
  `encode(prompt + completion)` when the completion starts with a space, as
  `format_completion` makes it. SFT and PPO can tokenize prompt and completion separately.

Special tokens are `<pad>` (0), `<s>` (1, prepended by `encode` like Llama-2's tokenizer),
`</s>` (2, never added automatically: trainers append it) and `<unk>` (3, only for characters
the builder never saw outside ASCII). Padding is on the left, as batched generation needs.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
SPACE = "\u2581"  # "▁", SentencePiece's visible space

# One piece is: an optional space marker and one of the GSM8K markers `####`, `<<`, `>>` (frequent,
# never split: ~10 fewer tokens per solution, so faster sampling and training); or an optional
# space marker and a run of letters; or an optional space marker and one symbol; or one digit; or
# a bare space marker (before a digit, or a run of spaces); or one other whitespace character
# (newline, tab). Digits never carry the marker, so `7` is one token wherever it stands.
MARKERS = ("####", "<<", ">>")
_PIECE = Regex(rf"{SPACE}?(?:####|<<|>>)|{SPACE}?\p{{L}}+|{SPACE}?[^\p{{L}}\p{{N}}\s{SPACE}]"
               rf"|\p{{N}}|{SPACE}|\s")

# Always in the vocabulary, even when the texts lack them: every digit, the space marker, newline
# and tab, the printable ASCII symbols alone and after a space (so arithmetic on unseen numbers and
# any calculator expression can be spelled), and the ASCII letters alone and as `##` continuations
# (so any word can be spelled).
_SYMBOLS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# WordPiece's continuation prefix. Not the usual `##`: `#` is GSM8K text (`#### 72`), and the
# decoder strips the prefix by string replacement. A private-use character never occurs in text.
CONTINUATION = "\ue000"
_BASE_VOCAB = (
    [str(d) for d in range(10)] + [SPACE, "\n", "\t"]
    + list(_SYMBOLS) + [SPACE + s for s in _SYMBOLS]
    + list(MARKERS) + [SPACE + m for m in MARKERS]
)


def _backend(vocab: dict[str, int] | None = None) -> Tokenizer:
    """The `tokenizers` pipeline; with `vocab=None` it only pre-tokenizes (to count words)."""
    # WordPiece looks a piece up whole first (a word token), else spells it greedily with the
    # longest known prefix and continuation pieces (`▁`, `##a`, `##b`, ...).
    tok = Tokenizer(models.WordPiece(vocab=vocab or {UNK: 0}, unk_token=UNK,
                                     continuing_subword_prefix=CONTINUATION,
                                     max_input_chars_per_word=10_000))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(_PIECE, behavior="isolated")
    # Per token: drop the continuation prefix, turn the marker back into a space; then join the
    # tokens without separators (the default decoding would put spaces between them).
    tok.decoder = decoders.Sequence([decoders.Replace(CONTINUATION, ""),
                                     decoders.Replace(SPACE, " "), decoders.Fuse()])
    return tok


def pieces(text: str, backend: Tokenizer | None = None) -> list[str]:
    """The pre-tokenized pieces of `text` (what the vocabulary is counted over)."""
    backend = backend or _backend()
    normalized = backend.normalizer.normalize_str(text)
    return [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


def build_word_tokenizer(
    texts: Iterable[str],
    save_dir: str | os.PathLike | None = None,
    min_frequency: int = 1,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer from `texts` (questions, solutions, prompts...).

    Pieces seen fewer than `min_frequency` times are left out (they are spelled letter by
    letter); digits, the space marker, newline, ASCII symbols and letters are always in. Token
    ids are deterministic: the special tokens, then the base symbols and letters, then words by
    decreasing count (ties alphabetical).
    With `save_dir`, the tokenizer is saved there with `save_pretrained`, and
    `AutoTokenizer.from_pretrained(save_dir)` loads it back.

    >>> tok = build_word_tokenizer(["Tom has 3+4 = <<3+4=7>>7 apples."])
    >>> tok.decode(tok("Tom has 12 apples.")["input_ids"], skip_special_tokens=True)
    'Tom has 12 apples.'
    """
    counter, chars = Counter(), set()
    splitter = _backend()
    for text in texts:
        counter.update(pieces(text, splitter))
        chars.update(text)
    letters = list(_LETTERS) + sorted(c for c in chars if c.isalpha() and c not in _LETTERS)
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + _BASE_VOCAB + letters + [CONTINUATION + c for c in letters]:
        vocab.setdefault(token, len(vocab))
    for token, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= min_frequency and token not in vocab:
            vocab[token] = len(vocab)

    backend = _backend(vocab)
    backend.add_special_tokens(SPECIAL_TOKENS)
    # Like Llama-2: `<s>` is prepended, `</s>` is not appended (trainers add it to targets).
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        truncation_side="left",
        model_max_length=model_max_length,
        # transformers' clean-up would turn " ." into "." and break the exact round trip.
        clean_up_tokenization_spaces=False,
    )
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(save_dir)
    return tokenizer
