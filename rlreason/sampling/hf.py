"""The Hugging Face backend of the `Sampler` interface.

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

import torch
from transformers.cache_utils import DynamicCache

from ..batching import forward_signature, left_pad
from ..models import base_model
from .base import Sample, SamplingParams, StopChecker, completion_text, token_texts
from .kvcache import (
    ATTN_NAME,
    BufferPool,
    SharedPrefix,
    register_shared_prefix_attention,
    slot_cache,
)


def kv_dtype(model):
    """The dtype the KV cache is stored in: the dtype of the model's floating-point weights."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def kv_bytes_per_slot(config, dtype) -> int:
    """Bytes of one cached token of one row: keys and values of every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


def default_kv_memory(device) -> int:
    """The KV buffers' default memory: 2 GiB on CPU, a quarter of the free GPU memory."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free // 4
    return 2 << 30


class HFSampler:
    """Batched sampling with a KV cache for any Hugging Face causal LM (see the module doc).

    - `kv_memory_bytes`: most bytes the KV buffers may take (both ping-pong buffers; default:
      2 GiB on CPU, a quarter of the free memory on a GPU); it caps `token_budget`, so a 7B model
      (0.5 MB per slot in fp32) gets thousands of slots, not a 100 GB cache. The tiny model
      (4 KB per slot) keeps its 262,144.
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
                 shared_prefix: bool = True, compact_fraction: float = 0.125, dedup: bool = True,
                 kv_memory_bytes: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.kv_memory_bytes = kv_memory_bytes or default_kv_memory(self.device)
        self.bytes_per_slot = kv_bytes_per_slot(base_model(model).config, kv_dtype(model))
        # The pool holds two buffers of the batch's slots (compaction ping-pongs between them).
        self.token_budget = max(1, min(token_budget, self.kv_memory_bytes // (2 * self.bytes_per_slot)))
        self.progress = progress
        self.compact_fraction, self.dedup = compact_fraction, dedup
        self._cache_kw, self._has_logits_to_keep = forward_signature(model)
        base = base_model(model)
        self._base = base
        self.shared_prefix = (shared_prefix and getattr(base, "_supports_attention_backend", False)
                              and getattr(base.config, "sliding_window", None) is None
                              and register_shared_prefix_attention())
        gen_cfg = getattr(base, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=self.device)
        self._token_texts: list[str] | None = None
        self._line_end: torch.Tensor | None = None
        self._pool = BufferPool()

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
            self._base.set_attn_implementation(ATTN_NAME)
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
                self._token_texts = token_texts(self.tokenizer)
            self._line_end = torch.tensor([t.endswith("\n") for t in self._token_texts],
                                          device=self.device)
        return self._line_end

    def _stop_checker(self, stop: Sequence[str]) -> StopChecker | None:
        if not any(stop):
            return None
        if self._token_texts is None:
            self._token_texts = token_texts(self.tokenizer)
        return StopChecker(self.tokenizer, stop, self._token_texts, self.device)

    def _forward(self, input_ids, attention_mask, position_ids, cache, **extra):
        kwargs = {self._cache_kw: cache, "use_cache": True, **extra}
        if input_ids.shape[1] > 1 and self._has_logits_to_keep:
            kwargs["logits_to_keep"] = 1  # prefill: only the last position's logits are used
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, **kwargs)
        return out.logits[:, -1].float()

    def _generate_batch(self, ids: list[list[int]], repeats: int, params: SamplingParams,
                        gen: torch.Generator, stop: StopChecker | None,
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
            prefix = SharedPrefix(prefill, prompt_mask)
            cache = slot_cache(prefill, 1, max_new, False, self._pool, max_rows)
            mask = None  # the shared-prefix attention masks the prompt padding itself
        else:
            prefix = None
            cache = slot_cache(prefill, 1, prompt_len + max_new, True, self._pool, max_rows)
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
