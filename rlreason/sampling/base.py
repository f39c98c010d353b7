"""The sampling interface: `SamplingParams`, `Sample`, the `Sampler` protocol every backend
implements, and how a sample's text is cut (`completion_text`, stop strings).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import check_at_least, check_int_at_least


@dataclass
class SamplingParams:
    """How to sample (the subset of vLLM's `SamplingParams` the study uses, same names)."""

    n: int = 1
    """Samples per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (then the n samples are identical)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens holding this much probability."""
    max_new_tokens: int = 256
    """Most tokens generated per sample (vLLM calls it `max_tokens`)."""
    stop: list[str] = field(default_factory=list)
    """Generation ends when the text contains one of these; the text returned stops before it."""
    seed: int | None = None
    """Seed of the sampling generator; None draws one from torch's global RNG (so `set_seed`
    still makes runs reproducible)."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks of untrained models; vLLM has the same flag)."""
    skip_special_tokens: bool = True
    """Leave special tokens (`<s>`, `<pad>`, added ones like `<|good|>`) out of `Sample.text`."""
    insert_after_line: int | None = None
    """`HFSampler` only (vLLM has no equivalent): a token id fed to the model after every
    generated line break that ends a non-blank line, as if the model had written it (RCRL's dense
    labels); it is in `token_ids` (log-probability 0) and counts toward `max_new_tokens`."""

    def __post_init__(self):
        check_int_at_least("SamplingParams", "n", self.n, 1)
        check_at_least("SamplingParams", "temperature", self.temperature, 0.0)
        check_at_least("SamplingParams", "top_p", self.top_p, 0.0)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p = {self.top_p!r}; expected a number in (0, 1]")
        check_int_at_least("SamplingParams", "max_new_tokens", self.max_new_tokens, 1)
        check_int_at_least("SamplingParams", "seed", self.seed, 0, allow_none=True)
        if isinstance(self.stop, str):
            self.stop = [self.stop]


@dataclass
class Sample:
    """One completion of one prompt."""

    text: str
    """The completion only (no prompt), cut before the stop string, without EOS."""
    token_ids: list[int]
    """Generated token ids, as the policy emitted them: includes the final EOS when the sample
    ended on EOS and the tokens that spelled a stop string (as vLLM does), so that PPO can credit
    the decision to stop."""
    logprobs: list[float]
    """Per token of `token_ids`: log-probability of that token under the model's raw logits
    (temperature 1, no top-p), i.e. the policy's log pi(a|s), which PPO needs as old logprobs.
    It is not the probability under the tempered/truncated sampling distribution."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_new_tokens reached)."""


class Sampler(Protocol):
    """Anything that samples completions: `HFSampler` (CPU, any HF model) or `VLLMSampler`."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """`params.n` samples for each prompt, in the order of `prompts`."""
        ...


class PrefixedSampler:
    """A sampler that puts `prefix` (worked examples: few-shot prompting) before every prompt; the
    samples are the completions of the prompts as given, unchanged. Other attributes (the
    tokenizer, `close`) are the wrapped sampler's."""

    def __init__(self, sampler, prefix: str):
        self.sampler, self.prefix = sampler, prefix

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        return self.sampler.generate([self.prefix + p for p in prompts], params)

    def __getattr__(self, name):
        return getattr(self.sampler, name)


def completion_text(tokenizer, token_ids: Sequence[int], finish_reason: str, eos_ids: set[int],
                    params: SamplingParams) -> str:
    """`Sample.text` of generated ids: decoded without a final EOS, cut before a stop string."""
    ids = list(token_ids)
    if finish_reason == "stop" and ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
    cuts = [text.find(s) for s in params.stop if s and s in text] if finish_reason == "stop" else []
    return text[: min(cuts)] if cuts else text


# --------------------------------------------------------------------------------------------
# Stop strings
# --------------------------------------------------------------------------------------------


def token_texts(tokenizer) -> list[str]:
    """The text each token adds after ordinary text (decoding a SentencePiece token alone would
    drop its leading space)."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    base = tokenizer.decode(anchor)
    texts = []
    for i in range(len(tokenizer)):
        full = tokenizer.decode(anchor + [i])
        texts.append(full.removeprefix(base))
    return texts


class StopChecker:
    """Finds stop strings without decoding every row at every step.

    A stop string is completed by a token whose text holds the stop string's last character (or
    an empty or partial-UTF-8 text). Rows whose new token is not such a candidate are skipped; the
    others are decoded and searched.
    """

    def __init__(self, tokenizer, stop: Sequence[str], token_texts: list[str], device):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        last_chars = {s[-1] for s in self.stop}
        candidate = [(not t) or ("\ufffd" in t) or any(c in t for c in last_chars)
                     for t in token_texts]
        self.candidate = torch.tensor(candidate, dtype=torch.bool, device=device)

    def hits(self, tokens: torch.Tensor, generated: torch.Tensor, live: torch.Tensor,
             step: int) -> list[int]:
        """Batch rows whose text now holds a stop string (`generated[live[r]]` is row r's)."""
        out = []
        for r in self.candidate[tokens].nonzero().flatten().tolist():
            text = self.tokenizer.decode(generated[live[r], : step + 1].tolist())
            if any(s in text for s in self.stop):
                out.append(r)
        return out
