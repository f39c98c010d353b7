"""Supervised fine-tuning (and plain LM pretraining) with `accelerate`: on the CPU, one GPU, or
data-parallel over the processes of `accelerate launch` (`RankShard`, `shard_loss`).

One trainer serves pretraining (loss on every token of a document), SFT on reference solutions,
Expert Iteration's fine-tuning on filtered samples and RCRL's fine-tuning on labelled samples
(loss on the completion only). Each epoch ends with a checkpoint (`save_pretrained`), a metrics
row in `metrics.jsonl` and an optional evaluation callback. `data.json` (beside `precision.json`)
records the examples' lengths and how many were cut to `max_length`.

Data parallelism: N processes with `SFTConfig.batch_size` B train exactly as one process with B
(the same global batches and optimizer steps; each rank runs its ~B/N share), up to the float
rounding of the gradients' all-reduce (tests/test_distributed.py). Only rank 0 writes, logs and
runs the callbacks (whose dicts every rank then gets); every rank returns the same rows.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import SFTConfig
from .distributed import barrier, init, run_on_main, world_size
from .io import append_jsonl, atomic_write_json, read_jsonl
from .models import save_policy
from .precision import autocast, autocast_dtype, decide
from .runs import set_seed

IGNORE_INDEX = -100


def completion_ids(tokenizer, text: str) -> list[int]:
    """A completion text's token ids as every trainer and scorer reads them: the text's tokens
    (no special tokens), then EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def logged_steps(out_dir: str | os.PathLike) -> int:
    """Optimizer steps a `train_sft` run into `out_dir` logged (0 when it logged none)."""
    path = Path(out_dir) / "metrics.jsonl"
    return max((r["step"] for r in read_jsonl(path) if "step" in r), default=0) if path.exists() else 0


def encode_example(tokenizer, prompt: str, completion: str | None, max_length: int | None,
                   prompt_loss: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example, cut to `max_length` tokens (None: not cut); the prompt
    is masked unless `prompt_loss`.

    With `completion=None` the prompt is a whole document (pretraining: loss on every token).
    The prompt is encoded alone (with BOS) and the completion alone (no special tokens), then EOS:
    exactly the ids a sampler conditions on and generates, so SFT and RL see the same sequences.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if completion is None:
        ids = prompt_ids + [tokenizer.eos_token_id]
        return ids[:max_length], ids[:max_length]
    completion = completion_ids(tokenizer, completion)
    ids = (prompt_ids + completion)[:max_length]
    labels = (prompt_ids if prompt_loss else [IGNORE_INDEX] * len(prompt_ids)) + completion
    return ids, labels[:max_length]


def fit_length(encoded: Sequence[tuple[list[int], list[int]]], max_length: int | None
               ) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """The examples cut to `max_length` tokens (None: the longest example's length, nothing cut),
    and their length statistics: how many were cut, and their share."""
    lengths = [len(ids) for ids, _ in encoded]
    limit = max(lengths) if max_length is None else max_length
    cut = sum(n > limit for n in lengths)
    stats = {"examples": len(lengths), "max_length": limit, "longest": max(lengths),
             "mean_length": sum(lengths) / len(lengths), "truncated": cut,
             "truncated_share": cut / len(lengths)}
    return [(ids[:limit], labels[:limit]) for ids, labels in encoded], stats


def enable_checkpointing(model) -> Callable[[], None]:
    """Turn on activation (gradient) checkpointing of a transformers model (or a peft model around
    one), non-reentrant; returns the function that turns it off again, which also removes the hook
    that makes the embeddings' output require grad (transformers adds it, so that gradients reach
    adapters through frozen embeddings) unless the model had one before."""
    hooked = bool(getattr(model, "_require_grads_hooks", None))
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers' newer name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def off() -> None:
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
        if not hooked and hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()

    return off


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch (training needs no left padding)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices of similar length, for `SFTConfig.group_by_length`: each epoch draws a
    permutation from `generator`, cuts it into groups of `group` batches, sorts each group by
    length (longest first) and splits it into batches, then shuffles the batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                 group: int = 50):
        self.lengths, self.batch_size, self.generator, self.group = list(lengths), batch_size, generator, group

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.group * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for j in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[j]


def lr_lambda(cfg: SFTConfig, total_steps: int) -> Callable[[int], float]:
    """Warmup then constant or cosine decay, as a multiplier of `cfg.lr`."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr schedule {cfg.schedule!r}; expected 'constant' or 'cosine'")
    return f


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions, and how many there are."""
    targets = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (targets != IGNORE_INDEX).sum()


def shard_loss(logits: torch.Tensor, labels: torch.Tensor,
               accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, the global batch's mean token loss) on one of N data-parallel ranks.

    DDP averages the ranks' gradients, and the ranks' slices of a batch hold different numbers of
    labelled tokens, so the mean of per-rank means is not one process's mean over the batch's
    tokens, and a rank holding none of a short batch would halve its gradient. Each rank's summed
    loss S_r times N over the global count T averages back to it exactly: (1/N) sum_r N S_r / T =
    S / T. (Measured on tests/test_distributed.py's runs: per-rank means moved the losses by up to
    0.14% within 6 steps and the parameters by 1e-2; this weighting, by 5e-7 and 3e-7.)
    """
    total, count = token_loss_sum(logits, labels)
    loss = total * accelerator.num_processes / accelerator.reduce(count, "sum")
    return loss, accelerator.reduce(loss.detach(), "mean")


def shard(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """Slice `rank` of `batch` cut into `world` contiguous slices whose sizes differ by at most 1.

    >>> [shard([7, 8, 9, 10, 11], r, 2) for r in range(2)]
    [[7, 8], [9, 10, 11]]
    """
    n = len(batch)
    return list(batch[n * rank // world: n * (rank + 1) // world])


class RankShard(torch.utils.data.Sampler):
    """One rank's share (`shard`) of each global batch of `batches`; a rank whose share is empty
    (a batch with fewer examples than ranks) gets `[placeholder]`, an example without labelled
    tokens, so that every rank runs every step.

    accelerate's own sharding changes the batches: without `split_batches` each rank draws
    different batches (N length groups instead of one), with it a short batch before the last one
    (`LengthGroupedBatches` puts its one short batch anywhere) is dropped, and a short last batch
    is topped up with examples from the start of the epoch. This keeps every global batch whole.
    """

    def __init__(self, batches, rank: int, world: int, placeholder: int):
        self.batches, self.rank, self.world, self.placeholder = batches, rank, world, placeholder

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield shard(list(batch), self.rank, self.world) or [self.placeholder]


def make_loader(encoded: Sequence[tuple[list[int], list[int]]], cfg: SFTConfig,
                generator: torch.Generator, pad_id: int, rank: int = 0, world: int = 1):
    """This process's batches: all of them in one process; under a launch, its `RankShard` of
    the same global batches, drawn from `generator` in the same order (the loader's own seed
    draw, then the permutation), so that every rank and a single process agree."""
    collate_fn = lambda b: collate(b, pad_id)  # noqa: E731
    lengths = [len(ids) for ids, _ in encoded]
    if world == 1:
        if cfg.group_by_length:
            grouped = LengthGroupedBatches(lengths, cfg.batch_size, generator)
            return torch.utils.data.DataLoader(list(encoded), collate_fn=collate_fn,
                                               batch_sampler=grouped)
        return torch.utils.data.DataLoader(list(encoded), batch_size=cfg.batch_size, shuffle=True,
                                           generator=generator, collate_fn=collate_fn)
    if cfg.group_by_length:
        batches, loader_generator = LengthGroupedBatches(lengths, cfg.batch_size, generator), None
    else:
        batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(
            range(len(encoded)), generator=generator), cfg.batch_size, drop_last=False)
        loader_generator = generator
    ids = encoded[0][0]
    dataset = [*encoded, (ids, [IGNORE_INDEX] * len(ids))]  # the placeholder (no labelled token)
    return torch.utils.data.DataLoader(dataset, collate_fn=collate_fn, generator=loader_generator,
                                       batch_sampler=RankShard(batches, rank, world, len(encoded)))


def train_sft(model, tokenizer, examples: Sequence[tuple[str, str | None]] | None, cfg: SFTConfig,
              out_dir: str | os.PathLike | None = None,
              on_epoch_end: Callable[[int, object], dict] | None = None,
              progress: bool = True, on_step: Callable[[int, object], dict] | None = None,
              on_step_every: int | None = None,
              encoded: Sequence[tuple[list[int], list[int]]] | None = None) -> list[dict]:
    """Fine-tune `model` on (prompt, completion) pairs; returns the metrics rows it logged.

    `completion=None` marks a plain document (loss on all tokens). After each epoch it saves
    `out_dir/epoch_NN` (if `save_every_epoch`) and calls `on_epoch_end(epoch, model)`, whose dict
    is merged into that epoch's metrics row. Every `on_step_every` optimizer steps it calls
    `on_step(step, model)` (model in eval mode meanwhile); its dict is logged as a metrics row, and
    `{"stop": True}` in it ends training there (pretraining stops at a target dev accuracy).
    `encoded` replaces `examples` with pre-encoded (ids, labels) pairs (RCRL masks its label tokens
    in the middle of a completion, which `encode_example` cannot express); they are cut to
    `cfg.max_length` here too. Examples longer than `cfg.max_length` are counted in
    `out_dir/data.json` and a warning; `cfg.gradient_checkpointing` is on during training only.
    Under `accelerate launch` the processes train data-parallel (module docstring); the callbacks
    run on rank 0 only, and every rank returns once rank 0's files are written.
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.data_loader import prepare_data_loader

    if not (examples if encoded is None else encoded):
        raise ValueError("train_sft got no examples: nothing to train on")
    set_seed(cfg.seed)
    # Under a launch: join its process group (gloo on CPUs, `distributed.init`), and step the
    # scheduler once per optimizer step (`split_batches`: the global batch is B, not N x B).
    init()
    parallel = ({"dataloader_config": DataLoaderConfiguration(split_batches=True)}
                if world_size() > 1 else {})
    # Autocast is applied here rather than through Accelerator(mixed_precision=...): accelerate keeps
    # that setting in a process-wide singleton, so a notebook could not train twice with different
    # settings.
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, **parallel)
    world = accelerator.num_processes
    autocast_dtype(cfg.mixed_precision)  # a bad setting fails here, before any work
    if encoded is None:
        encoded = [encode_example(tokenizer, p, c, None) for p, c in examples]
    encoded, data = fit_length(encoded, cfg.max_length)
    out = Path(out_dir) if out_dir is not None else None
    if accelerator.is_main_process:
        if out is not None:
            atomic_write_json(out / "data.json", data)
        if data["truncated"]:
            warnings.warn(f"train_sft: {data['truncated']} of {data['examples']} examples "
                          f"({data['truncated_share']:.1%}) are longer than max_length="
                          f"{data['max_length']} tokens and were cut (the longest has "
                          f"{data['longest']}); SFTConfig.max_length=None keeps them whole",
                          stacklevel=2)
    checkpointing_off = enable_checkpointing(model) if cfg.gradient_checkpointing else None
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = make_loader(encoded, cfg, generator, tokenizer.pad_token_id,
                         accelerator.process_index, world)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, cfg.schedule_steps or total_steps))
    if world == 1:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    else:  # already sharded (`RankShard`): only placed on the device, not sharded again
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        loader = prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0,
                                     put_on_device=True)
    # `auto` is decided here, on this model and a batch of these examples (no RNG is consumed),
    # by rank 0 for every rank. A rerun in the same folder keeps the recorded decision (see
    # `precision.decide`).
    probe = {k: v.to(accelerator.device) for k, v in
             collate(encoded[: cfg.batch_size], tokenizer.pad_token_id).items()}
    mixed_precision = run_on_main(decide, cfg.mixed_precision, out, accelerator.device,
                                  accelerator.unwrap_model(model), probe)
    rows: list[dict] = []
    step, running, seen_tokens = 0, [], 0
    model.train()
    bar = tqdm(total=total_steps, desc="sft", disable=not progress or not accelerator.is_main_process)
    for epoch in range(1, epochs + 1):
        for batch in loader:
            with accelerator.accumulate(model):
                with autocast(accelerator.device, mixed_precision):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                if world == 1:
                    loss = logged = token_loss(logits, batch["labels"])
                else:
                    loss, logged = shard_loss(logits, batch["labels"], accelerator)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running.append(logged.item())
            seen_tokens += int(accelerator.reduce((batch["labels"] != IGNORE_INDEX).sum(), "sum"))
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                row = {"step": step, "epoch": epoch, "loss": sum(running) / len(running),
                       "lr": scheduler.get_last_lr()[0], "tokens": seen_tokens}
                running = []
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
                if out is not None and accelerator.is_main_process:
                    append_jsonl(out / "metrics.jsonl", row)
            if out is not None and cfg.save_every_steps and step % cfg.save_every_steps == 0 \
                    and accelerator.is_main_process:
                save_policy(accelerator.unwrap_model(model), tokenizer, out / f"step_{step:05d}")
            if on_step is not None and on_step_every and step % on_step_every == 0:
                model.eval()
                info = run_on_main(on_step, step, accelerator.unwrap_model(model)) or {}
                model.train()
            else:
                info = {}
            if info:
                check = {"step": step, "epoch": epoch, **info}
                rows.append(check)
                if out is not None and accelerator.is_main_process:
                    append_jsonl(out / "metrics.jsonl", check)
                if info.get("stop"):
                    total_steps = step
            if step >= total_steps:
                break
        row = {"step": step, "epoch": epoch, "end_of_epoch": True}
        unwrapped = accelerator.unwrap_model(model)
        if out is not None and cfg.save_every_epoch and accelerator.is_main_process:
            save_policy(unwrapped, tokenizer, out / f"epoch_{epoch:02d}")
        if on_epoch_end is not None:
            model.eval()
            row.update(run_on_main(on_epoch_end, epoch, unwrapped) or {})
            model.train()
        rows.append(row)
        if out is not None and accelerator.is_main_process:
            append_jsonl(out / "metrics.jsonl", row)
        if step >= total_steps:
            break
    bar.close()
    if checkpointing_off is not None:
        checkpointing_off()
    model.eval()
    barrier()  # the other ranks return once rank 0's checkpoints and metrics are written
    return rows
