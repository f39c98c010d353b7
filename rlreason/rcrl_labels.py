"""RCRL's two return labels, spelled for each tokenizer, and the guard that LoRA adapters never
carry embedding weights.

Two spellings, one reader (`read_labels`):

- **full fine-tuning** (the tiny profile): `<|good|>` and `<|bad|>` are added to the tokenizer as
  special tokens and the embeddings grow by two rows (`rcrl.add_label_tokens`), as they always
  have (same ids, same texts);
- **LoRA adapters** (peft; the paper profile): the labels are two tokens that the base vocabulary
  already has and that text never uses (`existing_label_texts`): the first two non-whitespace
  ASCII control characters that encode to one token of their own, e.g. Llama-2's byte-fallback
  tokens `<0x01>`/`<0x02>` or a byte-level BPE's (SmolLM2's) `ā`/`Ă`. No row is added, so the
  adapter needs no embedding weights. Added rows would break adapters twice: vLLM rejects adapters
  that carry embeddings, and peft skips saving resized rows in offline mode (it cannot read the
  base config), so the labels would come back as fresh random rows on reload, without an error.

The LoRA choice is recorded in the tokenizer's own config (`tokenizer_config.json`, key
`rcrl_labels`), which every checkpoint saves next to its weights; the conditioned sampler, the
likelihood check and the stages read it from there. `check_adapter` refuses an adapter folder
that holds embedding weights or a tokenizer larger than its base model's vocabulary.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .models import adapter_weight_names, is_adapter_dir
from .problems import format_prompt

GOOD, BAD = "<|good|>", "<|bad|>"
"""The labels' names (what callers pass as `label`), and their spelling under full fine-tuning."""
LABELS = (GOOD, BAD)
CONFIG_KEY = "rcrl_labels"
"""Where a tokenizer records existing-token labels (its `init_kwargs`, saved in tokenizer_config.json)."""
CANDIDATES = tuple(chr(c) for c in range(1, 32) if not chr(c).isspace())
"""Label spellings tried for adapters, in order: control characters that no prompt or solution
contains (whitespace ones excluded: `\\t`, `\\n`, ... are text)."""
PROBES = (format_prompt("Tom has 3 apples."), "7*2 = <<7*2=14>>14\n", "#### 14")
"""Texts a label follows (the end of a prompt, of a step): a spelling must add exactly its one
token after each of them, so that `tokenizer(prompt + label)` is `tokenizer(prompt) + [id]`."""
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out", "word_embeddings")
"""Module names of input and output embeddings (peft's `EMBEDDING_LAYER_NAMES` and kin)."""
_EMBEDDING_KEY = re.compile(rf"(^|\.)({'|'.join(EMBEDDING_NAMES)})(\.|$)|modules_to_save|trainable_tokens")

__all__ = ["BAD", "CANDIDATES", "CONFIG_KEY", "GOOD", "LABELS", "Labels", "adapter_embedding_entries",
           "check_adapter", "existing_label_texts", "existing_labels", "find_labels", "is_peft",
           "read_labels", "single_token", "uses_adapters"]


@dataclass(frozen=True)
class Labels:
    """How one tokenizer spells RCRL's labels: the texts prompts end with, and their token ids."""

    good: str
    bad: str
    good_id: int
    bad_id: int
    added: bool
    """True: `<|good|>`/`<|bad|>` were added to the vocabulary (full fine-tuning); False: two
    existing tokens (adapters)."""

    @property
    def ids(self) -> tuple[int, int]:
        """(good id, bad id)."""
        return self.good_id, self.bad_id

    def text(self, label: str) -> str:
        """The spelling of the label named `label` (`GOOD` or `BAD`)."""
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
        return self.good if label == GOOD else self.bad


def is_peft(model) -> bool:
    """Whether `model` is wrapped in peft adapters (a `PeftModel`)."""
    return model is not None and hasattr(model, "peft_config")


def uses_adapters(model, adapters: bool | None) -> bool:
    """Whether labels must be existing tokens: `adapters` when given, else whether `model` has
    peft adapters. A peft model with `adapters=False` is refused (its rows cannot grow)."""
    if adapters is False and is_peft(model):
        raise ValueError("adapters=False but the model has LoRA adapters: RCRL labels of a LoRA model "
                         "must be existing tokens (adapters=True or None)")
    return is_peft(model) if adapters is None else adapters


def single_token(tokenizer, text: str) -> int | None:
    """The one token `text` adds after every probe (`PROBES`), or None: when it adds another count,
    different ids in different places, a special or unknown token, or decodes to other text."""
    ids = set()
    for probe in PROBES:
        before = tokenizer(probe, add_special_tokens=False)["input_ids"]
        after = tokenizer(probe + text, add_special_tokens=False)["input_ids"]
        if len(after) != len(before) + 1 or after[:-1] != before:
            return None
        ids.add(after[-1])
    if len(ids) != 1:
        return None
    (token,) = ids
    if token in set(tokenizer.all_special_ids) | {tokenizer.unk_token_id}:
        return None
    return token if tokenizer.decode([token]) == text else None


def existing_label_texts(tokenizer) -> tuple[str, str]:
    """The adapters' label spellings: the first two `CANDIDATES` that are each one token of their
    own (`single_token`), with distinct ids. Deterministic: a tokenizer always gets the same two."""
    found: list[str] = []
    seen: set[int] = set()
    for text in CANDIDATES:
        token = single_token(tokenizer, text)
        if token is not None and token not in seen:
            found.append(text)
            seen.add(token)
            if len(found) == 2:
                return found[0], found[1]
    raise ValueError(f"no two unused single tokens for RCRL labels in this tokenizer ({len(found)} of "
                     f"{len(CANDIDATES)} control characters encode to one token of their own); expected a "
                     "byte-fallback (Llama-2) or byte-level BPE (SmolLM2) vocabulary, or full fine-tuning "
                     "(lora=None) with added <|good|>/<|bad|>")


def _recorded(tokenizer) -> Labels | None:
    """The existing-token labels recorded in the tokenizer's config, checked against its vocabulary."""
    record = getattr(tokenizer, "init_kwargs", {}).get(CONFIG_KEY)
    if record is None:
        return None
    labels = Labels(record["good"], record["bad"], int(record["good_id"]), int(record["bad_id"]), added=False)
    got = tuple(single_token(tokenizer, t) for t in (labels.good, labels.bad))
    if got != labels.ids:
        raise ValueError(f"the tokenizer's recorded RCRL labels {CONFIG_KEY}={record} do not match its "
                         f"vocabulary (the texts encode to {got}); expected the tokenizer they were chosen for")
    return labels


def _added(tokenizer) -> Labels | None:
    """`<|good|>`/`<|bad|>` when the vocabulary has both (full fine-tuning)."""
    vocab = tokenizer.get_vocab()
    if GOOD in vocab and BAD in vocab:
        return Labels(GOOD, BAD, vocab[GOOD], vocab[BAD], added=True)
    return None


def find_labels(tokenizer) -> Labels | None:
    """The tokenizer's labels: recorded existing tokens first, else added ones, else None."""
    return _recorded(tokenizer) or _added(tokenizer)


def read_labels(tokenizer) -> Labels:
    """The tokenizer's labels (`find_labels`); raises if it has none."""
    labels = find_labels(tokenizer)
    if labels is None:
        raise ValueError("the tokenizer has no RCRL labels: call add_label_tokens first")
    return labels


def _embedding_rows(model) -> int | None:
    return None if model is None else model.get_input_embeddings().weight.shape[0]


def existing_labels(model, tokenizer) -> Labels:
    """Labels for a model trained with adapters (`model=None`: the tokenizer only): the tokenizer's
    own if it has some, else two existing tokens (`existing_label_texts`), recorded in its config.
    Nothing is resized: labels outside the model's embedding rows are refused."""
    labels = find_labels(tokenizer)
    if labels is None:
        good, bad = existing_label_texts(tokenizer)
        ids = (single_token(tokenizer, good), single_token(tokenizer, bad))
        tokenizer.init_kwargs[CONFIG_KEY] = {"good": good, "bad": bad, "good_id": ids[0], "bad_id": ids[1]}
        labels = read_labels(tokenizer)
    rows = _embedding_rows(model)
    if rows is not None and max(labels.ids) >= rows:
        raise ValueError(f"refusing to resize the embeddings of a LoRA model for RCRL labels {labels.good!r}/"
                         f"{labels.bad!r} (ids {labels.good_id}, {labels.bad_id}; {rows} rows): adapters cannot "
                         "carry new rows; expected labels spelled with existing tokens (a tokenizer without "
                         "added <|good|>/<|bad|>)")
    return labels


# ---- the adapter guard -------------------------------------------------------------------------


def adapter_embedding_entries(adapter_dir: str | Path) -> list[str]:
    """What in an adapter folder is, or saves, embedding weights: weight names of embedding
    layers, `modules_to_save`/trainable-token entries, embedding layers among `target_modules`."""
    folder = Path(adapter_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    found = [f"{key}={config[key]}" for key in ("modules_to_save", "trainable_token_indices") if config.get(key)]
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    found += [f"target_modules has {t}" for t in targets if t in EMBEDDING_NAMES]
    return found + [k for k in adapter_weight_names(folder) if _EMBEDDING_KEY.search(k)]


def _base_vocab_size(base: str) -> int | None:
    """The vocabulary size of an adapter's base model, from its config when it is on this machine."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError):
        return None
    return getattr(config.get_text_config(), "vocab_size", None)


def check_adapter(adapter_dir: str | Path) -> None:
    """Refuse an RCRL adapter folder that carries embedding weights (vLLM rejects it) or whose
    tokenizer is larger than its base model's vocabulary (loading would resize the embeddings
    with fresh random rows: labels added to the tokenizer but not saved). One-line errors. A full
    model folder has nothing to check."""
    from transformers import AutoTokenizer

    folder = Path(adapter_dir)
    if not is_adapter_dir(folder):
        return
    found = adapter_embedding_entries(folder)
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ValueError(f"{folder}: the LoRA adapter carries embedding weights ({', '.join(found[:3])}{more}); "
                         "expected LoRA matrices of the projections only (RCRL labels are existing tokens, "
                         "rlreason.rcrl_labels)")
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    size = _base_vocab_size(base) if base else None
    n = len(AutoTokenizer.from_pretrained(str(folder)))
    if size is not None and n > size:
        raise ValueError(f"{folder}: the adapter's tokenizer has {n} tokens but its base model {base} has "
                         f"{size} embedding rows, which an adapter cannot extend (added RCRL labels?); expected "
                         "a tokenizer no larger than the base vocabulary (RCRL labels as existing tokens)")
