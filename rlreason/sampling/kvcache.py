"""The KV-cache machinery behind `HFSampler`: preallocated per-layer buffers reused across
batches (`BufferPool`, `slot_cache`) and shared-prefix ("cascade") attention, which reads each
prompt's KV once for all its samples (`SharedPrefix`, registered with transformers'
`AttentionInterface` under `ATTN_NAME`).
"""
from __future__ import annotations

import math

import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------


class BufferPool:
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

    def __init__(self, pool: BufferPool, layer: int, rows: int, heads: int, capacity: int,
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


def slot_cache(prefill: Cache, repeats: int, capacity: int, copy_prefix: bool,
                pool: BufferPool, max_rows: int | None = None) -> Cache:
    """A cache of `_SlotLayer`s for `rows = prompts x repeats` (row = prompt * repeats + sample).

    With `copy_prefix`, each prompt's prefilled KV is copied to its rows (plain attention);
    without, the cache starts empty and only holds the generated tokens (shared-prefix attention
    reads the prompt's KV from `SharedPrefix`).
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

ATTN_NAME = "rlreason_shared_prefix"


class SharedPrefix:
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


def register_shared_prefix_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # pragma: no cover - transformers < 4.48
        return False
    AttentionInterface.register(ATTN_NAME, _shared_prefix_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # prefill masks exactly as SDPA's
    return True
