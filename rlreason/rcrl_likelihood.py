"""Does an RCRL policy read its label? The teacher-forced check: the log-likelihood of known
solutions under the good and under the bad label, in exactly the token layout RCRL trains on.

Sampling with each label (`rcrl_decoding.ConditionedSampler`) answers the same question through
generation, which is noisy and slow; scoring fixed solutions is cheap, has no sampling noise, and
separates "the policy reads its label" from "reading it changes what it writes". A policy that
reads its label gives correct solutions a higher likelihood under `<|good|>` than under `<|bad|>`
and wrong ones not. Only solution tokens are scored: never the prompt, never a label.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .batching import token_logprobs
from .problems import Problem, format_prompt
from .rcrl import LABEL_MODES, encode_labelled, insert_labels
from .rcrl_decoding import label_ids
from .steps import step_token_ends
from .training import IGNORE_INDEX, collate
from .training import completion_ids as text_ids

__all__ = ["LabelLikelihood", "completion_ids", "label_likelihoods", "labelled_layout",
           "target_logprob_sums"]


@dataclass(frozen=True)
class LabelLikelihood:
    """One solution's summed log-likelihood (nats) under each label, over `n_tokens` tokens."""

    logp_good: float
    logp_bad: float
    n_tokens: int

    @property
    def gap(self) -> float:
        """log p(solution | good) - log p(solution | bad): > 0 when the good label makes it likelier."""
        return self.logp_good - self.logp_bad

    @property
    def gap_per_token(self) -> float:
        """`gap` per scored token (NaN when nothing was scored), comparable across lengths."""
        return self.gap / self.n_tokens if self.n_tokens else float("nan")


def completion_ids(tokenizer, completion: str | Sequence[int]) -> list[int]:
    """A completion's token ids: ids are kept as they are (a rollout, as RCRL trains on it); text
    is encoded as `training.encode_example` encodes a completion (no special tokens, then EOS)."""
    if isinstance(completion, str):
        return text_ids(tokenizer, completion)
    return [int(t) for t in completion]


def labelled_layout(tokenizer, ids: Sequence[int], mode: str, label: int) -> list[int]:
    """`ids` labelled as RCRL trains on them, every label being `label`: sparse, one in front of
    the solution; dense, one in front of every step (`steps.step_token_ends`)."""
    if mode == "sparse":
        return [label, *ids]
    if mode == "dense":
        ends = step_token_ends(tokenizer, ids)
        return insert_labels(ids, ends, [label] * len(ends))
    raise ValueError(f"unknown label mode {mode!r}; expected one of {', '.join(LABEL_MODES)}")


def target_logprob_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the target tokens: logits [B, L, V] at position t
    predict `labels` [B, L] at t + 1; `IGNORE_INDEX` targets (prompt, labels, padding) count 0."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    return (token_logprobs(logits, targets.clamp(min=0)) * keep).sum(dim=1)


def label_likelihoods(model, tokenizer, pairs: Sequence[tuple[Problem, str | Sequence[int]]],
                      mode: str, *, max_length: int | None = None,
                      batch_size: int = 16) -> list[LabelLikelihood]:
    """Per (problem, completion) pair, the teacher-forced log-likelihood of the completion's tokens
    after `format_prompt(problem.question)` under the good and under the bad label (`mode`: sparse
    or dense labels), in batches of `batch_size` rows (each pair is two rows) with no sampling.

    A completion is text (encoded as the SFT data is, with EOS) or token ids (a rollout's, kept as
    sampled). `max_length` cuts each sequence as RCRL's fine-tuning does (`cfg.train.max_length`).
    """
    if not pairs:
        raise ValueError("label_likelihoods: pairs is empty; expected at least one (problem, completion) pair")
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; expected one of {', '.join(LABEL_MODES)}")
    if batch_size < 1:
        raise ValueError(f"label_likelihoods: batch_size must be >= 1, got {batch_size}")
    ids = label_ids(tokenizer)  # raises when the tokenizer has no labels
    rows: list[tuple[list[int], list[int]]] = []
    for i, (problem, completion) in enumerate(pairs):
        solution = completion_ids(tokenizer, completion)
        if not solution:
            raise ValueError(f"label_likelihoods: completion {i} ({problem.id}) has no tokens")
        prompt = format_prompt(problem.question)
        for label in ids:  # good, then bad
            rows.append(encode_labelled(tokenizer, prompt, labelled_layout(tokenizer, solution, mode, label),
                                        sys.maxsize if max_length is None else max_length, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    sums: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                # right-padded as in training: positions are those of the unpadded sequences
                batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size], pad).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                sums += target_logprob_sums(logits, batch["labels"]).cpu().tolist()
    finally:
        model.train(was_training)
    counts = [sum(t != IGNORE_INDEX for t in r[1][1:]) for r in rows]
    return [LabelLikelihood(sums[2 * i], sums[2 * i + 1], counts[2 * i]) for i in range(len(pairs))]
