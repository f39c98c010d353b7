"""The outcome reward model (ORM): a verifier that predicts whether a solution will be correct.

Cobbe et al. (2021) style, as the paper uses it:

- **Model** (`ORM`): the policy's architecture (the body of an `AutoModelForCausalLM`, loaded by
  `models.load_policy`, so LoRA and 4-bit work as for the policy) with a scalar head, a
  `nn.Linear(hidden, 1)` on the last hidden state. Its sigmoid at a completion token is the
  probability that the finished solution will be correct, given the question and the solution up
  to that token. It is initialised from the SFT checkpoint (the head from zeros: p = 0.5).
- **Checkpoint**: an ordinary policy folder (`save_policy`: full model or LoRA adapter, and the
  tokenizer) plus `orm_head.safetensors` and `orm.json`; `load_orm` / `ORMScorer(path)` read it.
- **Scoring** (`ORMScorer`): `score` gives the probability at the final token (EOS) of each
  completion, for rerank@K (`as_scorer()` matches `evaluation.Scorer`); `score_steps` gives it at
  each step end, for the ORM reward (`rewards.orm_reward`). Scoring is batched, runs each prompt
  once for all its completions (their attention reads the prompt's KV cache) and scores identical
  completions of a question once.

A completion is scored as the token ids `tokenizer(text, add_special_tokens=False) + [EOS]`, in
training (`orm.train`) and in `score` alike; `score_steps` on `Sample`s uses the sample's own
token ids.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..batching import forward_signature, left_pad, shared_prefix_forward
from ..io import atomic_write_json
from ..models import base_model, load_policy, save_policy, use_inference_attention
from ..problems import Problem, format_prompt
from ..steps import step_token_ends
from ..training import autocast, completion_ids

if TYPE_CHECKING:  # pragma: no cover
    from ..sampling import Sample

__all__ = ["HEAD_FILE", "INFO_FILE", "ORM", "ORMScorer", "completion_ids", "load_orm", "save_orm"]

HEAD_FILE = "orm_head.safetensors"
INFO_FILE = "orm.json"


# ---- the model ---------------------------------------------------------------------------------


class ORM(nn.Module):
    """A causal LM's body with a scalar head: one logit of correctness per token."""

    def __init__(self, policy, head: nn.Linear | None = None):
        super().__init__()
        self.policy = policy
        base = base_model(policy)
        self.body = base.get_decoder()
        hidden = base.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        device = next(self.body.parameters()).device
        self.head = head.to(device=device, dtype=torch.float32)
        self._cache_kw = forward_signature(self.body)[0]

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def logits(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """Correctness logits [batch, length] (float32) for every position."""
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self._head(out.last_hidden_state)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # the head in float32
            return self.head(hidden.float()).squeeze(-1)

    def grouped_logits(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                       prompt_of: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of completion tokens, each prompt run once for all its completions
        (`batching.shared_prefix_forward`).

        `prompt_of[r]` is the index in `prompts` of completion r's prompt. Returns logits
        [rows, longest completion] and the mask of real (non-padding) completion tokens.
        """
        device = self.device
        pad = 0
        p_ids, p_mask = left_pad(prompts, pad)
        lc = max(len(c) for c in completions)
        c_ids = torch.full((len(completions), lc), pad, dtype=torch.long)
        c_mask = torch.zeros((len(completions), lc), dtype=torch.long)
        for r, ids in enumerate(completions):
            c_ids[r, : len(ids)] = torch.tensor(list(ids))
            c_mask[r, : len(ids)] = 1
        rows = torch.as_tensor(list(prompt_of), dtype=torch.long, device=device)
        c_mask = c_mask.to(device)
        _, out = shared_prefix_forward(self.body, p_ids.to(device), p_mask.to(device), rows,
                                       c_ids.to(device), c_mask, self._cache_kw)
        return self._head(out.last_hidden_state), c_mask.bool()


def save_orm(orm: ORM, tokenizer, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Save the body (full model or LoRA adapter, via `save_policy`), tokenizer, head and info."""
    path = save_policy(orm.policy, tokenizer, path)
    state = {k: v.detach().float().cpu().contiguous() for k, v in orm.head.state_dict().items()}
    save_file(state, str(path / HEAD_FILE))
    atomic_write_json(path / INFO_FILE, info or {})
    return path


def load_orm(path: str | os.PathLike, *, trainable: bool = False, load_in_4bit: bool = False,
             device=None, dtype=None) -> tuple[ORM, object]:
    """Load a `save_orm` folder: returns `(orm, tokenizer)`."""
    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise FileNotFoundError(f"{path} is not an ORM checkpoint: {HEAD_FILE} is missing")
    policy, tokenizer = load_policy(path, trainable=trainable, load_in_4bit=load_in_4bit,
                                    device=device, dtype=dtype)
    state = load_file(str(path / HEAD_FILE))
    head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    orm = ORM(policy, head)
    orm.train(trainable)
    orm.head.requires_grad_(trainable)
    return orm, tokenizer


# ---- batching ----------------------------------------------------------------------------------


def _groups(prompt_ids: Sequence[Sequence[int]], items: Sequence[tuple[int, Sequence[int]]],
            token_budget: int) -> list[list[int]]:
    """Batches of item indices (item = (prompt index, completion ids)), items of one prompt
    together, each batch within `token_budget` padded tokens (at least one prompt per batch)."""
    by_prompt: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(items):
        by_prompt.setdefault(p, []).append(i)
    order = sorted(by_prompt, key=lambda p: -max(len(items[i][1]) for i in by_prompt[p]))
    batches, current, longest_c, longest_p, rows, n_prompts = [], [], 0, 0, 0, 0
    for p in order:
        members = by_prompt[p]
        lc = max(longest_c, max(len(items[i][1]) for i in members))
        lpp = max(longest_p, len(prompt_ids[p]))
        cost = (rows + len(members)) * (lc + lpp) + (n_prompts + 1) * lpp
        if current and cost > token_budget:
            batches.append(current)
            current, lc, lpp, rows, n_prompts = [], max(len(items[i][1]) for i in members), \
                len(prompt_ids[p]), 0, 0
        current.extend(members)
        longest_c, longest_p, rows, n_prompts = lc, lpp, rows + len(members), n_prompts + 1
    if current:
        batches.append(current)
    return batches


def _batch_logits(orm: ORM, prompt_ids, items, batch: Sequence[int]):
    """Completion-token logits of the items in `batch` (their prompts run once)."""
    local: dict[int, int] = {}
    prompts, prompt_of, completions = [], [], []
    for i in batch:
        p, ids = items[i]
        if p not in local:
            local[p] = len(prompts)
            prompts.append(prompt_ids[p])
        prompt_of.append(local[p])
        completions.append(ids)
    return orm.grouped_logits(prompts, completions, prompt_of)


# ---- scoring -----------------------------------------------------------------------------------


class ORMScorer:
    """A trained ORM as a scorer: probabilities of correctness for completions or their steps.

    Defaults come from the checkpoint's `orm.json` (4-bit loading, autocast, batch size); the model
    goes on the GPU when there is one.

    >>> scorer = ORMScorer(path)                          # doctest: +SKIP
    >>> scorer.score(problems, [["<<2+3=5>>5\\n#### 5", ...], ...])   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, device=None, load_in_4bit: bool | None = None,
                 token_budget: int | None = None, mixed_precision: str | None = None,
                 progress: bool = False):
        self.path = Path(path)
        info_path = self.path / INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        if load_in_4bit is None:  # as trained, unless told otherwise
            load_in_4bit = bool(info.get("load_in_4bit", False))
        self.load_in_4bit = load_in_4bit
        self.orm, self.tokenizer = load_orm(self.path, load_in_4bit=load_in_4bit, device=device)
        use_inference_attention(self.orm.policy)  # scoring runs forward passes only
        self.token_budget = token_budget or info.get("score_batch_tokens", 32768)
        self.mixed_precision = mixed_precision or info.get("mixed_precision", "no")
        self.max_length = info.get("max_length", 1 << 30)
        self.progress = progress
        self._prompts: dict[str, list[int]] = {}

    def __reduce__(self):
        # Sent to a worker process (`parallel.run_calls`) as its checkpoint and settings: the
        # worker loads it again (on its own default device) instead of unpickling tensors.
        return _load_scorer, (str(self.path), {
            "load_in_4bit": self.load_in_4bit, "token_budget": self.token_budget,
            "mixed_precision": self.mixed_precision, "progress": self.progress})

    def _prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompts:
            self._prompts[question] = self.tokenizer(format_prompt(question))["input_ids"]
        return self._prompts[question]

    def _run(self, problems: Sequence[Problem], sequences: Sequence[Sequence[Sequence[int]]],
             positions: Sequence[Sequence[Sequence[int]]]) -> list[list[list[float]]]:
        """Probabilities at `positions[q][j]` (token indices) of completion ids `sequences[q][j]`."""
        prompt_ids, items, where = [], [], {}
        for q, (problem, seqs) in enumerate(zip(problems, sequences)):
            prompt_ids.append(self._prompt_ids(problem.question))
            for j, ids in enumerate(seqs):
                key = (q, tuple(ids))
                if key not in where:  # identical completions of one question: scored once
                    room = max(1, self.max_length - len(prompt_ids[q]))
                    where[key] = len(items)
                    items.append((q, list(ids)[:room] or [self.tokenizer.eos_token_id]))
        probs: list[np.ndarray | None] = [None] * len(items)
        batches = _groups(prompt_ids, items, self.token_budget)
        with torch.inference_mode(), autocast(self.orm.device, self.mixed_precision):
            for batch in tqdm(batches, desc="orm scoring", disable=not self.progress):
                logits, mask = _batch_logits(self.orm, prompt_ids, items, batch)
                p = torch.sigmoid(logits.float()).cpu().numpy()
                lengths = mask.sum(-1).cpu().numpy()
                for r, i in enumerate(batch):
                    probs[i] = p[r, : lengths[r]]
        out = []
        for q, seqs in enumerate(sequences):
            row = []
            for j, ids in enumerate(seqs):
                p = probs[where[(q, tuple(ids))]]
                row.append([float(p[min(t, len(p) - 1)]) for t in positions[q][j]])
            out.append(row)
        return out

    def score(self, problems: Sequence[Problem],
              completions: Sequence[Sequence[str]]) -> list[list[float]]:
        """Probability of correctness of each completion (at its final token, EOS)."""
        if len(problems) != len(completions):
            raise ValueError(f"score got {len(problems)} problems but {len(completions)} rows")
        seqs = [[completion_ids(self.tokenizer, t) for t in row] for row in completions]
        positions = [[[len(ids) - 1] for ids in row] for row in seqs]
        return [[p[0] for p in row] for row in self._run(problems, seqs, positions)]

    def score_steps(self, problems: Sequence[Problem], samples: Sequence[Sample | str],
                    ends: Sequence[Sequence[int]] | None = None) -> list[list[float]]:
        """Probability of correctness at the end of each step of each sample (one per problem).

        `samples` are `Sample`s (their `token_ids` are read) or texts (`completion_ids`). Step ends
        are `steps.step_token_ends` unless given. Empty samples give an empty list.
        """
        if len(problems) != len(samples):
            raise ValueError(f"score_steps got {len(problems)} problems but {len(samples)} samples")
        seqs = [list(s.token_ids) if hasattr(s, "token_ids") else completion_ids(self.tokenizer, s)
                for s in samples]
        if ends is None:
            ends = [step_token_ends(self.tokenizer, ids) for ids in seqs]
        todo = [i for i, ids in enumerate(seqs) if ids and ends[i]]
        result: list[list[float]] = [[] for _ in seqs]
        if todo:
            scored = self._run([problems[i] for i in todo], [[seqs[i]] for i in todo],
                               [[list(ends[i])] for i in todo])
            for i, row in zip(todo, scored):
                result[i] = row[0]
        return result

    def __call__(self, problems: Sequence[Problem], completions: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.score(problems, completions)

    @property
    def cache_id(self) -> str:
        """Identifies this ORM's scores (folder and weights' mtime): `evaluate` reuses cached scores
        of a reused evaluation only under the same id, so a retrained ORM is never read stale."""
        weights = self.path / HEAD_FILE
        return f"{self.path.resolve()}@{weights.stat().st_mtime_ns}"

    def as_scorer(self):
        """`evaluation.Scorer`: (problems, completions per problem) -> scores per problem; it
        carries `cache_id`, so evaluations cache its scores next to their rollouts."""
        return self


def _load_scorer(path: str, settings: dict) -> ORMScorer:
    return ORMScorer(path, **settings)
