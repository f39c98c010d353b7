"""RCRL's label tokens and decoding conditioned on them: `ConditionedSampler` prompts a policy
with its good (or bad) label and returns text without labels. The labels are spelled as the
checkpoint's tokenizer records them (`rcrl_labels`): `<|good|>`/`<|bad|>` after full fine-tuning,
two existing tokens for LoRA adapters.

Dense decoding without a sampler that inserts tokens (vLLM) is a stop-on-newline loop through the
`Sampler` interface: every live sample is continued from `prompt + label + its text so far + "\\n"
+ label`; samples that share a context are continued together (one prompt, n = their count), which
keeps the prompt sharing of the first call for the common first lines.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from .rcrl_labels import BAD, GOOD, LABELS, check_adapter, read_labels
from .sampling import Sample, Sampler, SamplingParams, completion_text

__all__ = ["BAD", "GOOD", "LABELS", "ConditionedSampler", "conditioned", "label_ids", "strip_labels"]


def label_ids(tokenizer) -> tuple[int, int]:
    """Token ids of (good, bad) as the tokenizer spells them (`rcrl_labels.read_labels`); raises
    if the tokenizer lacks them."""
    return read_labels(tokenizer).ids


def strip_labels(sample: Sample, skip: set[int]) -> Sample:
    """A sample without label tokens (a policy may emit one, though labels are never targets)."""
    if not skip.intersection(sample.token_ids):
        return sample
    keep = [i for i, t in enumerate(sample.token_ids) if t not in skip]
    logprobs = [sample.logprobs[i] for i in keep] if sample.logprobs else []
    return Sample(sample.text, [sample.token_ids[i] for i in keep], logprobs, sample.finish_reason)


# ---- conditioned sampling ----------------------------------------------------------------------

@dataclass
class _Row:
    context: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


class ConditionedSampler:
    """A `Sampler` that prompts a policy with a return label; text and token ids exclude labels.

    - sparse: the label follows the prompt;
    - dense: the label also precedes every new step (a blank line gets no label, as blank lines
      join the next step in `rewards.step_token_ends`). With `HFSampler` the sampler feeds the
      label after each line break itself (`SamplingParams.insert_after_line`, one call); with
      other samplers (vLLM) generation stops at each newline and the sample continues from its
      text plus `"\\n" + label` (one call per line: several times slower).
    `tokenizer` spells the labels (`rcrl_labels.read_labels`: `label` names one, `GOOD` or `BAD`)
    and decodes token ids of samples cut at the token budget (dense only).
    """

    def __init__(self, sampler, tokenizer, label: str = GOOD, dense: bool = False):
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
        self.sampler, self.tokenizer, self.label, self.dense = sampler, tokenizer, label, dense
        self.labels = read_labels(tokenizer)
        self.text = self.labels.text(label)  # what prompts end with: the label as this tokenizer spells it
        self.eos_ids = {tokenizer.eos_token_id}

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """`params.n` samples per prompt, in the order of `prompts` (see `sampling.Sampler`)."""
        if not self.dense or not prompts:
            return self.sampler.generate([p + self.text for p in prompts], params)
        if getattr(self.sampler, "supports_line_insertion", False):
            return self._generate_inserting(prompts, params)
        return self._generate_dense(prompts, params)

    def _generate_inserting(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """Dense decoding in one call: the sampler feeds the label after each line itself."""
        label = self.labels.ids[LABELS.index(self.label)]
        skip = set(self.labels.ids)
        # Labels take generation slots (at most one per line): room for them, then the
        # caller's budget applies to the solution's own tokens.
        budget = params.max_new_tokens + params.max_new_tokens // 2
        sub = dataclasses.replace(params, max_new_tokens=budget, insert_after_line=label)
        out = self.sampler.generate([p + self.text for p in prompts], sub)
        return [[self._without_labels(s, skip, params) for s in row] for row in out]

    def _without_labels(self, sample: Sample, skip: set[int], params: SamplingParams) -> Sample:
        """The sample with its labels dropped, cut to the caller's budget of solution tokens."""
        stripped = strip_labels(sample, skip)
        ids, logprobs = stripped.token_ids[: params.max_new_tokens], stripped.logprobs[: params.max_new_tokens]
        reason = "length" if len(stripped.token_ids) > params.max_new_tokens else sample.finish_reason
        return Sample(completion_text(self.tokenizer, ids, reason, self.eos_ids, params), ids, logprobs, reason)

    def _generate_dense(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        greedy = params.temperature == 0
        n = 1 if greedy else params.n  # greedy samples are identical: decode one
        rows = [_Row(context=p + self.text) for p in prompts for _ in range(n)]
        live = list(range(len(rows)))
        call = 0
        while live:
            groups: dict[str, list[int]] = defaultdict(list)  # rows that share a context
            for r in live:
                groups[rows[r].context].append(r)
            by_count: dict[int, list[tuple[str, list[int]]]] = defaultdict(list)
            for context, members in groups.items():
                by_count[len(members)].append((context, members))
            for count, items in sorted(by_count.items()):
                budget = max(params.max_new_tokens - len(rows[r].token_ids) for _, m in items for r in m)
                seed = None if params.seed is None else params.seed + 1_000_003 * call + count
                sub = dataclasses.replace(params, n=count, max_new_tokens=budget, seed=seed,
                                          stop=[*params.stop, "\n"])
                outputs = self.sampler.generate([c for c, _ in items], sub)
                for (_, members), samples in zip(items, outputs):
                    for r, sample in zip(members, samples):
                        self._extend(rows[r], sample, params)
                call += 1
            live = [r for r in live if rows[r].finish_reason is None]
        samples = [Sample(r.text, r.token_ids, r.logprobs, r.finish_reason) for r in rows]
        return [samples[i * n : (i + 1) * n] * (params.n if greedy else 1) for i in range(len(prompts))]

    def _extend(self, row: _Row, sample: Sample, params: SamplingParams) -> None:
        """Append one generated line (or the end) to a row."""
        room = params.max_new_tokens - len(row.token_ids)
        ids, logprobs = list(sample.token_ids), list(sample.logprobs)
        if len(ids) > room:  # the call's budget was another row's: cut at this row's
            ids, logprobs = ids[:room], logprobs[:room]
            text = self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
            sample = Sample(text.split("\n")[0], ids, logprobs, "length")
        row.token_ids += ids
        row.logprobs += logprobs
        newline = False
        if sample.finish_reason == "stop" and ids and ids[-1] not in self.eos_ids:
            full = self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
            first = full.find("\n")
            callers = [full.find(s) for s in params.stop if s and s in full]
            newline = first >= 0 and not (callers and min(callers) <= first)
        if not newline:  # EOS, a stop string of the caller, or the budget
            row.text += sample.text
            row.finish_reason = sample.finish_reason
            return
        row.text += sample.text + "\n"
        cut = [row.text.find(s) for s in params.stop if s and s in row.text]
        if cut:  # a caller's stop string that spans lines ("\n\n")
            row.text, row.finish_reason = row.text[: min(cut)], "stop"
        elif len(row.token_ids) >= params.max_new_tokens:
            row.finish_reason = "length"
        else:
            row.context += sample.text + "\n" + (self.text if sample.text.strip() else "")



def conditioned(sampler: Sampler, checkpoint: str | Path, label: str = GOOD,
                dense: bool = False) -> ConditionedSampler:
    """`sampler` (of the RCRL checkpoint `checkpoint`) prompted with `label`; an adapter checkpoint
    is refused when it carries embedding weights (`rcrl_labels.check_adapter`)."""
    check_adapter(checkpoint)
    tokenizer = getattr(sampler, "tokenizer", None)
    if tokenizer is None:  # vLLM keeps its own
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return ConditionedSampler(sampler, tokenizer, label, dense)
