"""Sampling completions from a policy: one interface, a Hugging Face backend (here) and a vLLM
backend (`sampling_vllm`, re-exported here).

Every evaluation and every RL rollout goes through `Sampler.generate(prompts, params)`, which
returns, for each prompt, `params.n` `Sample`s with their text, token ids and log-probabilities.
The shape follows vLLM (`SamplingParams`, n samples per prompt) so the GPU backend drops in.

`HFSampler` is the CPU workhorse of the tiny profile and works with any HF causal LM. Where its
speed comes from (measured with `tests/benchmarks/bench_sampler.py`; 500 prompts x 32 samples x
35 tokens on one core: ~30 s, against ~3 min for `model.generate`):

- **Shared-prefix attention.** Decoding is memory-bound: each step reads every row's KV cache.
  The prompt's KV is the same in all n samples of a prompt, so it is stored and read once per
  prompt (a custom attention function, plugged in through transformers' `AttentionInterface`);
  each row's cache holds only its generated tokens. This alone is ~1.5x.
- **A preallocated KV cache**: `DynamicCache` concatenates, i.e. copies the whole cache at every
  step of every layer; ours writes the new token in place, into buffers reused across batches.
- **Big batches, one prefill per prompt**: batches of ~1000-2000 rows amortise the ~2 ms of Python
  per step, sized by a token budget; each prompt is prefilled once for its n samples.
- **Identical histories are computed once** (`dedup`): the n samples of a prompt start as one
  row and split only when they draw different tokens. A confident policy's samples repeat each
  other (the tiny SFT model: 26% of sample-steps are distinct histories): 1.5-2x on a whole
  evaluation (500 x 32 samples: ~15 s instead of ~30 s on 2 cores); a split copies only the
  new rows' cache, and the random numbers are drawn per sample row, so the samples are the same.
- **Finished rows stop costing compute**: once enough rows have hit EOS or a stop string, the
  batch is compacted (caches, positions and prompt blocks indexed down to the live rows).
- **Cheap stop strings and sampling**: a row's text is decoded only when it just produced a token
  that can end a stop string (a precomputed vocabulary mask); sampling draws one uniform per row
  (inverse CDF) instead of `torch.multinomial`'s one exponential per row and vocabulary entry.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .models import base_model, forward_signature, left_pad


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
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
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
# KV cache
# --------------------------------------------------------------------------------------------


class _BufferPool:
    """Reusable storage for the KV buffers, kept by the sampler across batches and calls.

    Fresh multi-megabyte tensors come from the OS page by page: writing one token per row touches
    a new page per row and layer at every step and pays a page fault each time (the cache writes
    took ~13% of a profiled batch with fresh buffers, ~2% with reused ones).
    """

    def __init__(self):
        self._store: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._store.get(key)
        if (buf is None or buf.numel() < numel or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._store[key] = buf
        return buf[:numel].view(shape)


class _SlotLayer(DynamicLayer):
    """One layer's KV cache in preallocated buffers [max_rows, kv_heads, capacity, head_dim].

    `update` writes the new positions of the first `rows` rows in place and returns a view of
    the filled part: a step costs O(rows x new tokens), where DynamicLayer's concatenation copies
    the whole cache. `append_rows` copies existing rows into spare ones (a history that splits);
    compaction copies the kept rows into the pool's other buffer (ping-pong), never in place.
    """

    def __init__(self, pool: _BufferPool, layer: int, rows: int, heads: int, capacity: int,
                 head_dim: int, like: torch.Tensor, max_rows: int | None = None):
        super().__init__()
        self.pool, self.layer, self.side, self.length, self.rows = pool, layer, 0, 0, rows
        shape = (max(rows, max_rows or rows), heads, capacity, head_dim)
        self.buf_k = pool.get((layer, "k", 0), shape, like)
        self.buf_v = pool.get((layer, "v", 0), shape, like)
        self.device = like.device
        self.is_initialized = True
        self._refresh()

    def _refresh(self):
        self.keys = self.buf_k[: self.rows, :, : self.length]
        self.values = self.buf_v[: self.rows, :, : self.length]

    def lazy_initialization(self, key_states, value_states):  # pragma: no cover - built full
        raise RuntimeError("_SlotLayer is built with its buffers")

    def update(self, key_states, value_states, *args, **kwargs):
        q = key_states.shape[-2]
        if self.length + q > self.buf_k.shape[2]:
            raise RuntimeError("KV cache capacity exceeded")
        self.buf_k[: self.rows, :, self.length : self.length + q] = key_states
        self.buf_v[: self.rows, :, self.length : self.length + q] = value_states
        self.length += q
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def append_rows(self, indices: torch.Tensor) -> None:
        """Add copies of rows `indices` after the last row."""
        end = self.rows + indices.numel()
        if end > self.buf_k.shape[0]:
            raise RuntimeError("KV cache rows exceeded")
        self.buf_k[self.rows : end, :, : self.length] = self.keys.index_select(0, indices)
        self.buf_v[self.rows : end, :, : self.length] = self.values.index_select(0, indices)
        self.rows = end
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        side = 1 - self.side
        new_k = self.pool.get((self.layer, "k", side), tuple(self.buf_k.shape), self.buf_k)
        new_v = self.pool.get((self.layer, "v", side), tuple(self.buf_v.shape), self.buf_v)
        n = indices.numel()
        # Copy the filled part only.
        torch.index_select(self.keys, 0, indices, out=new_k[:n, :, : self.length])
        torch.index_select(self.values, 0, indices, out=new_v[:n, :, : self.length])
        self.buf_k, self.buf_v, self.side, self.rows = new_k, new_v, side, n
        self._refresh()


def _slot_cache(prefill: Cache, repeats: int, capacity: int, copy_prefix: bool,
                pool: _BufferPool, max_rows: int | None = None) -> Cache:
    """A cache of `_SlotLayer`s for `rows = prompts x repeats` (row = prompt * repeats + sample).

    With `copy_prefix`, each prompt's prefilled KV is copied to its rows (plain attention);
    without, the cache starts empty and only holds the generated tokens (shared-prefix attention
    reads the prompt's KV from `_SharedPrefix`).
    """
    layers = []
    for i, prefilled in enumerate(prefill.layers):
        k, v = prefilled.keys, prefilled.values  # [prompts, kv_heads, prompt_len, head_dim]
        p, h, length, d = k.shape
        layer = _SlotLayer(pool, i, p * repeats, h, capacity, d, k, max_rows)
        if copy_prefix:
            # Broadcast each prompt's KV to its rows, with no intermediate repeat.
            layer.buf_k[: p * repeats].view(p, repeats, h, capacity, d)[:, :, :, :length] = k[:, None]
            layer.buf_v[: p * repeats].view(p, repeats, h, capacity, d)[:, :, :, :length] = v[:, None]
            layer.length = length
            layer._refresh()
        layers.append(layer)
    return Cache(layers=layers)


# --------------------------------------------------------------------------------------------
# Shared-prefix ("cascade") attention
# --------------------------------------------------------------------------------------------
#
# Decoding is memory-bound on CPU: each step reads every row's whole KV cache. With n samples per
# prompt, the prompt's KV (~50 tokens in the tiny world, as many as a solution) is the same in all
# n rows. The attention below reads it once per prompt: the n queries of a prompt form one small
# matmul against the prompt's keys, the generated part is attended per row, and one softmax runs
# over both score blocks. It plugs into transformers through the public `AttentionInterface`
# (models that support `set_attn_implementation`): the model only has to call `cache.update` and
# then the attention function, as all `AttentionInterface` models do.

_ATTN_NAME = "rlreason_shared_prefix"


class _SharedPrefix:
    """The prompts' KV (each read once by all of its rows) and where each batch row sits.

    Rows are grouped per prompt into blocks of `per_block` slots (the most rows any prompt has
    now), so that a prompt's queries form one matmul against its keys; `slot[r]` is row r's place
    (block x per_block + rank within its prompt). Rows must be ordered by prompt.
    """

    def __init__(self, prefill: Cache, prompt_mask: torch.Tensor):
        self.keys = [layer.keys for layer in prefill.layers]  # [P, kv_heads, Lp, head_dim]
        self.values = [layer.values for layer in prefill.layers]
        bias = torch.zeros(prompt_mask.shape, dtype=self.keys[0].dtype, device=prompt_mask.device)
        self.bias = bias.masked_fill(prompt_mask == 0, -math.inf)[:, None, None, :]  # left padding
        n_prompts = prompt_mask.shape[0]
        self.block = torch.arange(n_prompts, device=prompt_mask.device)  # -1: prompt dropped
        self.n_blocks = n_prompts
        self.assign(self.block.clone())

    def assign(self, row_prompt: torch.Tensor) -> None:
        """The batch rows now belong to these prompts (original indices, any order); the prompts
        no row uses any more are dropped."""
        used, counts = torch.unique(row_prompt, return_counts=True)
        if used.numel() < self.n_blocks:
            kept = self.block[used]
            self.keys = [k.index_select(0, kept) for k in self.keys]
            self.values = [v.index_select(0, kept) for v in self.values]
            self.bias = self.bias.index_select(0, kept)
            self.block = torch.full_like(self.block, -1)
            self.block[used] = torch.arange(used.numel(), device=used.device)
            self.n_blocks = used.numel()
        block = self.block[row_prompt]  # blocks keep the prompts' order: block i is used[i]
        self.per_block = int(counts.max())
        order = torch.argsort(block, stable=True)
        rank = torch.empty_like(order)
        rank[order] = (torch.arange(order.numel(), device=order.device)
                       - (counts.cumsum(0) - counts)[block[order]])
        self.slot = block * self.per_block + rank
        # Rows in slot order, every prompt with per_block rows: the (un)grouping is a reshape.
        self.dense = (row_prompt.numel() == self.n_blocks * self.per_block
                      and bool((self.slot == torch.arange(self.slot.numel(), device=self.slot.device)).all()))

    def _group(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [B, kv, g, X] -> per-prompt blocks [P, kv, n*g, X] (zeros in empty slots)."""
        n_prompts, n = self.n_blocks, self.per_block
        if not self.dense:
            x = x.new_zeros((n_prompts * n, *x.shape[1:])).index_copy_(0, self.slot, x)
        kv, g, last = x.shape[1:]
        return x.view(n_prompts, n, kv, g, last).transpose(1, 2).reshape(n_prompts, kv, n * g, last)

    def _ungroup(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """Inverse of `_group`: [P, kv, n*g, X] -> rows [B, kv, g, X]."""
        n_prompts, kv, _, last = x.shape
        x = x.view(n_prompts, kv, self.per_block, g, last).transpose(1, 2)
        x = x.reshape(n_prompts * self.per_block, kv, g, last)
        return x if self.dense else x.index_select(0, self.slot)

    def attend(self, layer: int, query, key, value, scaling: float):
        """query [B, heads, 1, d]; key/value: the rows' generated part [B, kv_heads, t, d]."""
        rows, heads, _, d = query.shape
        kv = key.shape[1]
        g = heads // kv  # grouped-query attention: g query heads share one KV head
        q = query.reshape(rows, kv, g, d)
        pre_k, pre_v = self.keys[layer], self.values[layer]
        s_pre = self._ungroup(torch.matmul(self._group(q), pre_k.transpose(-1, -2)) * scaling
                              + self.bias, g)  # [B, kv, g, Lp]
        s_gen = torch.matmul(q, key.transpose(-1, -2)) * scaling  # [B, kv, g, t]
        # One softmax over both blocks (in float32, as SDPA does, for bf16 models).
        weights = torch.cat([s_pre, s_gen], dim=-1).float().softmax(dim=-1).to(q.dtype)
        w_pre, w_gen = weights.split([s_pre.shape[-1], s_gen.shape[-1]], dim=-1)
        out = torch.matmul(w_gen, value) + self._ungroup(torch.matmul(self._group(w_pre), pre_v), g)
        return out.reshape(rows, 1, heads, d), None  # the layout attention interfaces return


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             **kwargs):
    """Shared-prefix attention while decoding, plain SDPA otherwise (prefill, other callers)."""
    shared = kwargs.pop("rlreason_prefix", None)
    if shared is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    return shared.attend(module.layer_idx, query, key, value, scaling)


def _register_shared_prefix_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # pragma: no cover - transformers < 4.48
        return False
    AttentionInterface.register(_ATTN_NAME, _shared_prefix_attention)
    AttentionMaskInterface.register(_ATTN_NAME, sdpa_mask)  # prefill masks exactly as SDPA's
    return True


# --------------------------------------------------------------------------------------------
# Stop strings
# --------------------------------------------------------------------------------------------


def _token_texts(tokenizer) -> list[str]:
    """The text each token adds after ordinary text (decoding a SentencePiece token alone would
    drop its leading space)."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    base = tokenizer.decode(anchor)
    texts = []
    for i in range(len(tokenizer)):
        full = tokenizer.decode(anchor + [i])
        texts.append(full.removeprefix(base))
    return texts


class _StopChecker:
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


# --------------------------------------------------------------------------------------------
# Hugging Face backend
# --------------------------------------------------------------------------------------------


class HFSampler:
    """Batched sampling with a KV cache for any Hugging Face causal LM (see the module doc).

    - `token_budget`: most KV-cache slots a batch may hold. A slot is one token of one row (the
      prompt counts once per prompt with shared-prefix attention, once per row without). Bigger
      batches amortise Python overhead, which matters more with `dedup` (a confident model's
      batch runs ~4x fewer rows than it samples): on the tiny model 65k gave 880 sequences/s,
      262k 1050 and 524k 1140 (the cache then takes up to ~1 GB); a 7B model needs a much
      smaller budget (or `VLLMSampler`).
    - `shared_prefix`: attend to each prompt's KV once for all its samples (see above); used when
      n > 1 and the model supports `set_attn_implementation` without sliding-window attention,
      else plain attention. The model's attention implementation is switched for the duration
      of `generate` only (outside decoding, the custom function is plain SDPA).
    - `compact_fraction`: drop finished rows from the batch once this fraction has finished.
    - `dedup`: run the model once per distinct history: samples of one prompt that have drawn the
      same tokens so far share one row (and its KV cache) until they draw different tokens. The
      samples are the same as without it; a trained, confident policy's 32 samples share most of
      their tokens (the tiny SFT model: 26% of sample-steps are distinct histories).

    Reproducibility: a seed reproduces the same samples for the same prompts, params and token
    budget (the batching decides which random numbers go to which row); compaction and the
    attention path do not change them. Greedy decoding does not depend on the batching, up to
    float rounding.
    Threads: torch uses one thread per physical core by default (2 here). On a machine shared
    with other busy processes one thread can be faster (every parallel op waits for its slowest
    thread); that choice, `torch.set_num_threads`, is the caller's.
    """

    supports_line_insertion = True  # `SamplingParams.insert_after_line`

    def __init__(self, model, tokenizer, token_budget: int = 262144, progress: bool = True,
                 shared_prefix: bool = True, compact_fraction: float = 0.125, dedup: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.token_budget, self.progress = token_budget, progress
        self.compact_fraction, self.dedup = compact_fraction, dedup
        self.device = next(model.parameters()).device
        self._cache_kw, self._has_logits_to_keep = forward_signature(model)
        base = base_model(model)
        self._base = base
        self.shared_prefix = (shared_prefix and getattr(base, "_supports_attention_backend", False)
                              and getattr(base.config, "sliding_window", None) is None
                              and _register_shared_prefix_attention())
        gen_cfg = getattr(base, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=self.device)
        self._token_texts: list[str] | None = None
        self._line_end: torch.Tensor | None = None
        self._pool = _BufferPool()

    # ---- public API ----------------------------------------------------------------------

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """`params.n` samples per prompt, in prompt order (see `Sampler`)."""
        from tqdm.auto import tqdm

        if not prompts:
            return []
        greedy = params.temperature == 0
        repeats = 1 if greedy else params.n  # greedy samples are identical: compute one
        shared = self.shared_prefix and repeats > 1
        seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
        gen = torch.Generator(device=self.device).manual_seed(seed)
        stop = self._stop_checker(params.stop)

        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        # Longest first, so that a batch holds prompts of similar lengths (little padding).
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[list[Sample]] = [[] for _ in prompts]
        was_training, attn = self.model.training, self._base.config._attn_implementation
        self.model.eval()
        if shared:
            self._base.set_attn_implementation(_ATTN_NAME)
        bar = tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not self.progress)
        try:
            start = 0
            while start < len(order):
                longest = len(encoded[order[start]])  # sorted: the batch's first is its longest
                slots = (longest + repeats * params.max_new_tokens if shared
                         else repeats * (longest + params.max_new_tokens))
                count = max(1, min(len(order) - start, self.token_budget // slots))
                batch = order[start : start + count]
                with torch.inference_mode():
                    out = self._generate_batch([encoded[i] for i in batch], repeats, params, gen,
                                               stop, shared)
                for j, i in enumerate(batch):
                    samples = out[j * repeats : (j + 1) * repeats]
                    results[i] = ([dataclasses.replace(samples[0]) for _ in range(params.n)]
                                  if greedy else samples)
                start += count
                bar.update(count)
        finally:
            bar.close()
            if shared:
                self._base.set_attn_implementation(attn)
            self.model.train(was_training)
        return results

    # ---- internals -----------------------------------------------------------------------

    def _line_end_mask(self) -> torch.Tensor:
        """Which vocabulary tokens end a line (computed once per sampler)."""
        if self._line_end is None:
            if self._token_texts is None:
                self._token_texts = _token_texts(self.tokenizer)
            self._line_end = torch.tensor([t.endswith("\n") for t in self._token_texts],
                                          device=self.device)
        return self._line_end

    def _stop_checker(self, stop: Sequence[str]) -> _StopChecker | None:
        if not any(stop):
            return None
        if self._token_texts is None:
            self._token_texts = _token_texts(self.tokenizer)
        return _StopChecker(self.tokenizer, stop, self._token_texts, self.device)

    def _forward(self, input_ids, attention_mask, position_ids, cache, **extra):
        kwargs = {self._cache_kw: cache, "use_cache": True, **extra}
        if input_ids.shape[1] > 1 and self._has_logits_to_keep:
            kwargs["logits_to_keep"] = 1  # prefill: only the last position's logits are used
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, **kwargs)
        return out.logits[:, -1].float()

    def _generate_batch(self, ids: list[list[int]], repeats: int, params: SamplingParams,
                        gen: torch.Generator, stop: _StopChecker | None,
                        shared: bool) -> list[Sample]:
        device = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        max_new = params.max_new_tokens

        # Prefill each prompt once, left-padded, positions counted from its first real token.
        input_ids, prompt_mask = left_pad(ids, pad)
        prompt_len = input_ids.shape[1]
        input_ids, prompt_mask = input_ids.to(device), prompt_mask.to(device)
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        prefill = DynamicCache()
        logits = self._forward(input_ids, prompt_mask, positions, prefill)

        # Sample rows are prompt-major: row = prompt * repeats + sample. The model runs on
        # "compute rows": one per distinct history (prompt + tokens so far), which each sample row
        # points to (`comp`). All samples of a prompt start as one compute row; a compute row
        # splits when its samples draw different tokens. Without dedup, one compute row per sample.
        rows, n_prompts = len(ids) * repeats, len(ids)
        comp = torch.arange(rows, device=device) // repeats
        row_prompt = torch.arange(n_prompts, device=device)  # prompt of each compute row
        next_pos = positions[:, -1:] + 1  # [compute rows, 1]
        # Spare cache rows for histories that split (compaction makes room when they run out).
        max_rows = rows + max(8, rows // 4) if self.dedup and repeats > 1 else rows
        if shared:
            prefix = _SharedPrefix(prefill, prompt_mask)
            cache = _slot_cache(prefill, 1, max_new, False, self._pool, max_rows)
            mask = None  # the shared-prefix attention masks the prompt padding itself
        else:
            prefix = None
            cache = _slot_cache(prefill, 1, prompt_len + max_new, True, self._pool, max_rows)
            mask = torch.ones((max_rows, prompt_len + max_new), dtype=torch.long, device=device)
            mask[:n_prompts, :prompt_len] = prompt_mask
        del prefill
        extra = {"rlreason_prefix": prefix} if shared else {}
        vocab = logits.shape[-1]

        tokens_out = torch.full((rows, max_new), pad, dtype=torch.long, device=device)
        logprobs_out = torch.zeros((rows, max_new), dtype=torch.float32, device=device)
        lengths = [max_new] * rows  # tokens kept per row
        reason = ["length"] * rows
        running = torch.ones(rows, dtype=torch.bool, device=device)

        insert = params.insert_after_line
        if insert is not None:
            line_end = self._line_end_mask()
            pending = torch.zeros(rows, dtype=torch.bool, device=device)  # insert at this step

        for step in range(max_new):
            live = running.nonzero().flatten()  # the sample rows still generating
            c = comp[live]
            tok, lp = self._pick(logits, c, params, gen, live, rows)
            if insert is not None:
                forced = pending[live]
                tok, lp = tok.masked_fill(forced, insert), lp.masked_fill(forced, 0.0)
                # The line that this token ends has content unless the token before was a line
                # break or an inserted token (the prompt ends with one, in RCRL).
                before = tokens_out[live, step - 1] if step else torch.full_like(tok, insert)
                pending[live] = line_end[tok] & ~forced & ~line_end[before] & (before != insert)
            tokens_out[live, step] = tok
            logprobs_out[live, step] = lp
            done = torch.zeros_like(tok, dtype=torch.bool) if params.ignore_eos \
                else torch.isin(tok, self.eos_ids)
            if stop is not None:
                for r in stop.hits(tok, tokens_out, live, step):
                    done[r] = True
            if done.any():
                for r in live[done].tolist():
                    lengths[r], reason[r] = step + 1, "stop"
                running[live[done]] = False
            if step == max_new - 1 or not running.any():
                break
            cont, c, tok = live[~done], c[~done], tok[~done]
            n_compute = logits.shape[0]
            if self.dedup:
                # The next histories: the distinct (compute row, token) pairs, sorted.
                pairs, inverse = torch.unique(c * vocab + tok, return_inverse=True)
                parent, new_tok = torch.div(pairs, vocab, rounding_mode="floor"), pairs % vocab
            else:
                parent, new_tok, inverse = c, tok, torch.arange(c.numel(), device=device)
            # A history's first continuation keeps its row; the others (a split) get new rows.
            first = torch.ones_like(parent, dtype=torch.bool)
            first[1:] = parent[1:] != parent[:-1]
            extra_parents = parent[~first]
            n_new = n_compute + extra_parents.numel()
            dead = n_new - parent.numel()  # rows of finished histories, idling
            if dead >= max(1.0, self.compact_fraction * n_new) or n_new > max_rows:
                # Finished rows would keep costing compute: gather the live histories' rows.
                cache.batch_select_indices(parent)
                row_prompt, next_pos = row_prompt[parent], next_pos[parent]
                if mask is not None:
                    mask[: parent.numel()] = mask[parent]
                comp[cont] = inverse
                step_tok, changed = new_tok, True
            else:
                where = parent.clone()
                if extra_parents.numel():
                    where[~first] = torch.arange(n_compute, n_new, device=device)
                    for layer in cache.layers:
                        layer.append_rows(extra_parents)
                    row_prompt = torch.cat([row_prompt, row_prompt[extra_parents]])
                    next_pos = torch.cat([next_pos, next_pos[extra_parents]])
                    if mask is not None:
                        mask[n_compute:n_new] = mask[extra_parents]
                comp[cont] = where[inverse]
                step_tok = torch.full((n_new,), pad, dtype=torch.long, device=device)
                step_tok[where] = new_tok
                changed = extra_parents.numel() > 0
            if changed and prefix is not None:
                prefix.assign(row_prompt)
            step_mask = None if mask is None else mask[: step_tok.numel(), : prompt_len + step + 1]
            logits = self._forward(step_tok[:, None], step_mask, next_pos, cache, **extra)
            next_pos = next_pos + 1

        return self._to_samples(tokens_out.cpu(), logprobs_out.cpu(), lengths, reason, params)

    def _pick(self, logits: torch.Tensor, comp: torch.Tensor, params: SamplingParams,
              gen: torch.Generator, live: torch.Tensor, rows: int):
        """Next token of each live sample row (`comp`: its compute row in `logits`), and its
        log-probability under the raw logits."""
        logp = torch.log_softmax(logits, dim=-1)
        if params.temperature == 0:
            tok = logits.argmax(-1)[comp]
        else:
            scaled = logits / params.temperature
            if params.top_p < 1.0:
                sorted_logits, idx = scaled.sort(dim=-1, descending=True)
                p = sorted_logits.softmax(-1)
                # Drop a token when the tokens ranked above it already hold top_p (keeps >= 1).
                drop = (p.cumsum(-1) - p) >= params.top_p
                scaled = scaled.scatter(-1, idx, sorted_logits.masked_fill(drop, -math.inf))
            # Inverse-CDF sampling with one uniform per row (torch.multinomial draws one exponential
            # per row *and* vocabulary entry: a measurable cost per step on CPU). Uniforms are
            # drawn for all the batch's sample rows and picked by row, so that neither compaction
            # nor the sharing of histories changes which sample gets which random number.
            cdf = torch.softmax(scaled, dim=-1).cumsum_(-1)[comp]
            u = torch.rand((rows, 1), generator=gen, device=cdf.device)[live] * cdf[:, -1:]
            tok = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
        return tok, logp[comp, tok]

    def _to_samples(self, tokens, logprobs, lengths, reason, params) -> list[Sample]:
        eos = set(self.eos_ids.tolist())
        samples = []
        for r in range(tokens.shape[0]):
            ids = tokens[r, : lengths[r]].tolist()
            text = completion_text(self.tokenizer, ids, reason[r], eos, params)
            samples.append(Sample(text=text, token_ids=ids,
                                  logprobs=logprobs[r, : lengths[r]].tolist(),
                                  finish_reason=reason[r]))
        return samples


# The GPU backend lives in its own module; imported last (it imports this one's classes).
from .sampling_vllm import VLLMSampler  # noqa: F401  (re-exported)
