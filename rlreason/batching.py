"""Token layouts of (prompt, response) rows, and running many continuations of one prefix.

- `left_pad`: prompts left-padded to the longest, the layout that is prefilled and then continued
  (the sampler's prefill, the ORM's grouped scoring, PPO's grouped layout).
- `shared_prefix_forward`: each prefix once into a KV cache, then every continuation of it.
- `TokenBatch`, `pack`: PPO's rows in two layouts (packed, and grouped by distinct prompt);
  `forward` gives their response logits (and hidden states), `token_logprobs` the sampled
  tokens' log-probs, `task_reward_tensor` the per-token task rewards in the same [B, T] layout.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from .models import base_model

# ---- prompts prefilled together, continued together ---------------------------------------------


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows left-padded to the longest, [N, L] (CPU, int64), and their mask (1 on real
    tokens): the layout of prompts that are prefilled together and then continued.

    >>> left_pad([[5, 6], [7]], pad_id=0)
    (tensor([[5, 6],
            [0, 7]]), tensor([[1, 1],
            [0, 1]]))
    """
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, longest - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, longest - len(s):] = 1
    return ids, mask


def forward_signature(model) -> tuple[str, bool]:
    """Name of the cache argument (`cache` in transformers 5, `past_key_values` before) and
    whether the model can skip the logits of all but the last position (`logits_to_keep`)."""
    params = inspect.signature(base_model(model).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def shared_prefix_forward(run, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, rows: torch.Tensor,
                          ids: torch.Tensor, mask: torch.Tensor, cache_kw: str, **prefix_kwargs):
    """Run each prefix once, then every continuation of it: `(prefix_out, continuation_out)`.

    `run(**inputs)` is a model (or its decoder body). The prefixes [P, Lp] are left-padded
    (`prefix_mask`) and go into a KV cache; its rows are gathered to the continuations
    (`rows[r]`: the prefix of continuation r), and the continuations `ids` [R, T], right-padded
    (`mask`), attend to that cache and to themselves, at the positions they would have after
    their prefix. The gather is differentiable: a prefix gets the gradient of every continuation.
    `prefix_kwargs` go to the prefix call only; `continuation_out` is None when `ids` has no column.
    """
    cache = DynamicCache()
    prefix_out = run(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True,
                     position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0), **{cache_kw: cache},
                     **prefix_kwargs)
    if ids.shape[1] == 0:
        return prefix_out, None
    cache.batch_select_indices(rows)
    positions = prefix_mask.sum(-1)[rows, None] + torch.arange(ids.shape[1], device=ids.device)
    out = run(input_ids=ids, attention_mask=torch.cat([prefix_mask[rows], mask.to(prefix_mask.dtype)], dim=1),
              position_ids=positions, use_cache=True, **{cache_kw: cache})
    return prefix_out, out


# ---- batches of (prompt, response) token sequences -----------------------------------------------


@dataclass
class TokenBatch:
    """Prompts + responses, and where each response token sits in the sequence.

    Two layouts of the same rows: packed (prompt then response, right-padded: `input_ids`,
    `attention_mask`, `index`) and grouped (each distinct prompt once, left-padded, and each row's
    response: `prompt_ids`, `prompt_mask`, `group`, `tokens`). `forward` uses the grouped one: the
    n samples of a question share their prompt's forward pass (and its gradient), which on the
    tiny profile is 40% of the tokens a packed batch would run (49-token prompts, 4 x 43-token
    responses)."""

    input_ids: torch.Tensor
    """[B, L] prompt ids then response ids then padding."""
    attention_mask: torch.Tensor
    """[B, L] 1 on real tokens."""
    tokens: torch.Tensor
    """[B, T] the response tokens (padding where `mask` is 0)."""
    index: torch.Tensor
    """[B, T] column of the packed logits (and hidden states) that predict each response token."""
    mask: torch.Tensor
    """[B, T] 1.0 on real response tokens."""
    prompt_ids: torch.Tensor
    """[Q, Lp] the distinct prompts, left-padded."""
    prompt_mask: torch.Tensor
    """[Q, Lp] 1 on real prompt tokens."""
    group: torch.Tensor
    """[B] the row of `prompt_ids` holding each row's prompt."""

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def rows(self, idx: torch.Tensor) -> TokenBatch:
        """The sub-batch of rows `idx`, trimmed to its own widths."""
        mask = self.mask[idx]
        T = int(mask.sum(1).max())
        attention = self.attention_mask[idx]
        L = int(attention.sum(1).max())
        prompts, group = torch.unique(self.group[idx], return_inverse=True)
        prompt_mask = self.prompt_mask[prompts]
        Lp = int(prompt_mask.sum(1).max())
        return TokenBatch(self.input_ids[idx, :L], attention[:, :L], self.tokens[idx, :T],
                          self.index[idx, :T].clamp(max=L - 1), mask[:, :T],
                          self.prompt_ids[prompts, -Lp:], prompt_mask[:, -Lp:], group)


def pack(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int) -> TokenBatch:
    """Both layouts of prompt+response rows (rows with equal prompt ids share one prompt). Positions
    count from each row's first token, as when the sampler generated them; the packed logits at
    column len(prompt) - 1 + t predict response token t."""
    B = len(prompt_ids)
    L = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    T = max(len(r) for r in response_ids)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    index = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T))
    distinct: dict[tuple[int, ...], int] = {}
    group = torch.zeros(B, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(list(p) + list(r))
        attention[i, :n] = 1
        tokens[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        index[i] = (len(p) - 1 + torch.arange(T)).clamp(max=L - 1)
        mask[i, : len(r)] = 1.0
        group[i] = distinct.setdefault(tuple(p), len(distinct))
    prompts, prompt_mask = left_pad(list(distinct), pad_id)  # dicts keep insertion order: row q
    return TokenBatch(input_ids, attention, tokens, index, mask, prompts, prompt_mask, group)


def task_reward_tensor(rewards: Sequence, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] task rewards from each `Reward.per_token` (one value per generated token)."""
    out = torch.zeros_like(mask)
    for i, r in enumerate(rewards):
        n = int(mask[i].sum())
        if len(r.per_token) != n:
            raise ValueError(f"reward {i} has {len(r.per_token)} per-token values for {n} tokens")
        out[i, :n] = torch.tensor(r.per_token, dtype=out.dtype)
    return out


def _at_response(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick the columns `index` [B, T] of `x` [B, L, ...] -> [B, T, ...]."""
    shape = (*index.shape, *x.shape[2:])
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape))


def forward(model, batch: TokenBatch, hidden: bool = False, adapter: str | None = None,
            grouped: bool = True):
    """Response logits [B, T, V] (float32) and, if asked, the last hidden states [B, T, H].

    `adapter`: the LoRA adapter to run (peft's `adapter_names`; None: the active one).
    `grouped=True` runs each distinct prompt once into a KV cache whose rows are gathered to the
    responses (the gather is differentiable, so the prompt's tokens get their gradient from every
    response); `grouped=False` runs the packed rows. Both give the same values up to float rounding.
    """
    def run(**inputs):
        extra = {"adapter_names": [adapter] * inputs["input_ids"].shape[0]} if adapter is not None else {}
        return model(**inputs, output_hidden_states=hidden, **extra)

    if not grouped:
        out = run(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logits = _at_response(out.logits, batch.index).float()
        return logits, (_at_response(out.hidden_states[-1], batch.index) if hidden else None)
    # The logits at a prompt's last token predict response token 0; those at response token t-1
    # predict token t.
    cache_kw, has_logits_to_keep = forward_signature(model)
    prompt_out, rest = shared_prefix_forward(
        run, batch.prompt_ids, batch.prompt_mask, batch.group, batch.tokens[:, :-1], batch.mask[:, :-1],
        cache_kw, **({"logits_to_keep": 1} if has_logits_to_keep else {}))
    logits = prompt_out.logits[:, -1:][batch.group]
    states = prompt_out.hidden_states[-1][:, -1:][batch.group] if hidden else None
    if rest is not None:
        logits = torch.cat([logits, rest.logits], dim=1)
        states = torch.cat([states, rest.hidden_states[-1]], dim=1) if hidden else None
    return logits.float(), states


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) under raw logits [B, T, V] -> [B, T]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
