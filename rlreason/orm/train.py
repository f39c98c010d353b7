"""Training the outcome reward model: its data (the SFT policy's own labelled samples) and loop.

- **Data** (`collect_orm_data`): the SFT model's own samples on the training questions,
  `samples_per_question` each, labelled by the sparse reward (strict grading). The questions are
  split into train and validation (`val_fraction`), so validation samples belong to questions the
  ORM never trained on; or every example gets one given split (`split=`: the stage samples the
  dev questions as validation). One call per generator (`ORMConfig.generators`), each with its own
  sampling seed (`generator_seed`); the examples record their generator.
- **Training** (`train_orm`): binary cross-entropy at every completion token against the sample's
  label (averaged over the sample's tokens). With `balance="class"` each class weighs half of the
  loss, so a model that only learns the base rate gains nothing; the head's bias is then corrected
  by the log prior odds, so that probabilities are calibrated for the true base rate (ranking is
  unaffected). `balance="question"` balances the classes within each question instead (see
  `_sample_weights`). Validation loss and AUROC are written to `metrics.jsonl` per epoch; with
  `early_stopping_patience` training stops once the validation loss has not fallen for that many
  epochs, and the best epoch's weights are kept. The result is an `orm.model` checkpoint (`save_orm`), read back by `ORMScorer`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import ORMConfig
from ..grading import answers_match, extract_answer
from ..io import append_jsonl, read_jsonl, write_jsonl
from ..metrics import auroc, within_question_auroc
from ..models import load_policy
from ..precision import autocast, decide, probe_batch
from ..problems import Problem, format_prompt
from ..runs import round_seed, set_seed
from ..sampling import SamplingParams
from ..training import lr_lambda
from .model import ORM, _batch_logits, _groups, completion_ids, save_orm

__all__ = ["ORMExample", "collect_orm_data", "generator_seed", "load_orm_data", "save_orm_data",
           "split_questions", "train_orm"]


# ---- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ORMExample:
    """One labelled policy sample for ORM training."""

    problem_id: str
    """`Problem.id` of the question."""
    prompt: str
    """`format_prompt(question)`: what the policy was conditioned on."""
    completion: str
    """The sampled completion text."""
    label: int
    """1 if the completion's final answer is correct (sparse reward), else 0."""
    split: str
    """`train` or `val` (validation questions are never trained on)."""
    generator: str = "final"
    """The SFT checkpoint that sampled it (`ORMConfig.generators`: `final` or `epoch_NN`)."""


def split_questions(ids: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The validation question ids: a seeded `val_fraction` of `ids` (at least one when > 0)."""
    ids = sorted(set(ids))
    if val_fraction <= 0 or len(ids) < 2:
        return set()
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:n_val]}


def generator_seed(seed: int, generator: str = "final", questions: str = "train") -> int:
    """The sampling seed of one generator's samples of one question set: `seed` itself for the
    final SFT model on the training questions (the samples of a single-generator ORM), a fixed
    function of (seed, generator, questions) otherwise, so no two sample sets share a stream."""
    if generator == "final" and questions == "train":
        return seed
    return round_seed(seed, zlib.crc32(f"{generator}/{questions}".encode()), 19)


def collect_orm_data(sampler, problems: Sequence[Problem], cfg: ORMConfig, seed: int = 0, *,
                     generator: str = "final", split: str | None = None,
                     sample_seed: int | None = None) -> list[ORMExample]:
    """`cfg.samples_per_question` samples per question from `sampler`, labelled and split.

    `cfg.max_questions` (when set) keeps a seeded subset of the questions. Labels come from the
    sparse reward under `cfg.mode` grading. `split=None` holds out a seeded `cfg.val_fraction` of
    the questions as `val`; `split="train"` or `"val"` gives every example that split. The subset
    and the held-out questions follow `seed`, the samples `sample_seed` (default: `seed`), so that
    every generator sees the same questions; `generator` is recorded in each example.
    """
    if split not in (None, "train", "val"):
        raise ValueError(f"collect_orm_data: split must be None, 'train' or 'val', got {split!r}")
    problems = list(problems)
    if cfg.max_questions is not None and cfg.max_questions < len(problems):
        keep = np.sort(np.random.default_rng(seed).choice(len(problems), cfg.max_questions,
                                                          replace=False))
        problems = [problems[i] for i in keep]
    if not problems:
        raise ValueError("collect_orm_data got no problems")
    prompts = [format_prompt(p.question) for p in problems]
    params = SamplingParams(n=cfg.samples_per_question, temperature=cfg.temperature,
                            max_new_tokens=cfg.max_new_tokens,
                            seed=seed if sample_seed is None else sample_seed)
    outputs = sampler.generate(prompts, params)
    val = split_questions([p.id for p in problems], cfg.val_fraction, seed) if split is None else set()
    data = []
    for problem, prompt, samples in zip(problems, prompts, outputs):
        where = split or ("val" if problem.id in val else "train")
        for s in samples:
            label = int(answers_match(extract_answer(s.text, cfg.mode), problem.answer))
            data.append(ORMExample(problem.id, prompt, s.text, label, where, generator))
    return data


def save_orm_data(data: Sequence[ORMExample], path: str | os.PathLike) -> None:
    write_jsonl(path, [dataclasses.asdict(x) for x in data])


def load_orm_data(path: str | os.PathLike) -> list[ORMExample]:
    return [ORMExample(**row) for row in read_jsonl(path)]

# ---- training ----------------------------------------------------------------------------------


def _encode_data(tokenizer, data: Sequence[ORMExample], max_length: int):
    """Prompt ids, and per distinct (question, completion): (prompt index, completion ids), its
    label and how many samples it stands for."""
    prompt_index: dict[str, int] = {}
    prompt_ids: list[list[int]] = []
    merged: dict[tuple[int, str], int] = {}
    items, labels, counts = [], [], []
    for x in data:
        if x.prompt not in prompt_index:
            prompt_index[x.prompt] = len(prompt_ids)
            prompt_ids.append(tokenizer(x.prompt)["input_ids"])
        p = prompt_index[x.prompt]
        key = (p, x.completion)
        if key in merged:
            counts[merged[key]] += 1
            continue
        ids = completion_ids(tokenizer, x.completion)
        ids = ids[: max(1, max_length - len(prompt_ids[p]))]  # truncate the completion's end
        merged[key] = len(items)
        items.append((p, ids))
        labels.append(float(x.label))
        counts.append(1)
    return prompt_ids, items, np.array(labels), np.array(counts, dtype=float)


def _class_weights(labels: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Weights (negative, positive) under which each class carries half of the loss."""
    n = counts.sum()
    n_pos = counts[labels == 1].sum()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return 1.0, 1.0
    return n / (2 * n_neg), n / (2 * n_pos)


def _sample_weights(items, labels: np.ndarray, counts: np.ndarray, cfg: ORMConfig) -> np.ndarray:
    """Loss weight of each distinct sample (its count included), normalised to mean 1 per sample.

    - `none`: every sample weighs 1.
    - `class`: correct and wrong samples carry half of the loss each.
    - `question`: within each question that has both correct and wrong samples, the two classes
      carry half of that question's weight each, so guessing the question's difficulty gains
      nothing there; questions whose samples all agree carry `cfg.single_label_weight` of their
      (class-balanced) weight: they only teach difficulty.
    """
    if cfg.balance not in ("none", "class", "question"):
        raise ValueError(f"unknown ORM balance {cfg.balance!r}; expected 'none', 'class' or 'question'")
    w = counts.astype(float).copy()
    if cfg.balance in ("class", "question"):
        w_neg, w_pos = _class_weights(labels, counts)
        w *= np.where(labels == 1, w_pos, w_neg)
    if cfg.balance == "question":
        prompt = np.array([p for p, _ in items])
        for q in np.unique(prompt):
            m = prompt == q
            n_pos, n_all = counts[m & (labels == 1)].sum(), counts[m].sum()
            if 0 < n_pos < n_all:
                w[m] = counts[m] * np.where(labels[m] == 1, n_all / (2 * n_pos),
                                            n_all / (2 * (n_all - n_pos)))
            else:
                w[m] *= cfg.single_label_weight
    return w * counts.sum() / max(w.sum(), 1e-12)


def _loss(logits, mask, labels, weights):
    """Sum over samples of weight x (mean over its completion tokens of the BCE)."""
    target = labels[:, None].expand_as(logits)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_sample = (bce * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return (per_sample * weights).sum()


def _evaluate(orm, prompt_ids, items, labels, counts, cfg: ORMConfig) -> dict:
    """Validation loss (the training objective) and the final-token AUROC (pooled over questions
    and within questions) and accuracy."""
    weights_all = _sample_weights(items, labels, counts, cfg)
    orm.eval()
    total, norm, finals = 0.0, 0.0, np.zeros(len(items))
    with torch.inference_mode(), autocast(orm.device, cfg.train.mixed_precision):
        for batch in _groups(prompt_ids, items, cfg.score_batch_tokens):
            logits, mask = _batch_logits(orm, prompt_ids, items, batch)
            y = torch.tensor(labels[batch], dtype=torch.float32, device=orm.device)
            weights = torch.tensor(weights_all[batch], dtype=torch.float32, device=orm.device)
            total += float(_loss(logits.float(), mask, y, weights))
            norm += float(counts[batch].sum())
            last = mask.sum(-1) - 1
            finals[batch] = logits.float()[torch.arange(len(batch)), last].cpu().numpy()
    repeated = np.repeat(np.arange(len(items)), counts.astype(int))
    prompt = np.array([p for p, _ in items])[repeated]
    return {"val_loss": total / max(norm, 1.0),
            "val_auroc": auroc(finals[repeated], labels[repeated]),
            "val_auroc_within": within_question_auroc(prompt, finals[repeated], labels[repeated]),
            "val_acc": float(np.mean((finals[repeated] > 0) == (labels[repeated] == 1)))}


class _EarlyStopping:
    """Tracks the validation loss per epoch and a copy of the trainable weights at its minimum."""

    def __init__(self, patience: int, model: nn.Module):
        self.patience, self.model = patience, model
        self.best_loss, self.best_epoch, self.best_state = math.inf, None, None
        self._first: int | None = None

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record the epoch's validation loss; True once `patience` epochs brought no new minimum
        (counted from the first epoch while there is none: NaN never counts as one)."""
        self._first = epoch if self._first is None else self._first
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            self.best_state = {n: p.detach().to("cpu", copy=True)
                               for n, p in self.model.named_parameters() if p.requires_grad}
        since = self.best_epoch if self.best_epoch is not None else self._first
        return epoch - since >= self.patience

    def restore(self) -> None:
        """Put the best epoch's weights back into the model."""
        if self.best_state is None:
            return
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.best_state:
                    p.copy_(self.best_state[n].to(p.device))


def train_orm(init_path: str | os.PathLike, data: Sequence[ORMExample], cfg: ORMConfig,
              out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train an ORM from the policy checkpoint `init_path` on `data`; returns `out_dir/final`.

    Writes one `metrics.jsonl` row per logged step (train loss) and per epoch (validation loss,
    AUROC, pooled and within questions, and accuracy of the final-token prediction on the `val`
    examples; epoch 0 is the untrained head, p = 0.5 everywhere). Micro-batches hold
    `train.batch_size` distinct samples with the samples of a question side by side, so a prompt is
    run once per micro-batch; identical samples of a question are merged with a count weight;
    `train.grad_accum` micro-batches make one optimizer step. Single process (one device): a 7B
    QLoRA ORM fits one GPU. With `cfg.early_stopping_patience`, training stops once that many
    epochs have passed without a new minimum of the validation loss (epoch 0, the untrained head,
    counts), the weights of the minimum are restored (and saved), each epoch row gets
    `best_epoch`, and `orm.json` records `best_epoch` and `stopped_epoch`; the learning-rate
    schedule still spans the `train.epochs` cap.
    """
    tcfg = cfg.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    set_seed(tcfg.seed)
    policy, tokenizer = load_policy(init_path, lora=cfg.lora, load_in_4bit=cfg.load_in_4bit)
    torch.manual_seed(tcfg.seed)
    orm = ORM(policy)
    orm.head.requires_grad_(True)

    train = [x for x in data if x.split == "train"]
    val = [x for x in data if x.split == "val"]
    if not train:
        raise ValueError("train_orm got no training examples (split == 'train')")
    prompt_ids, items, labels, counts = _encode_data(tokenizer, train, tcfg.max_length)
    # `auto` is decided on this body and these examples; scoring later uses the same decision.
    probe = probe_batch([prompt_ids[p] + list(ids) for p, ids in items[:8]], tokenizer.pad_token_id)
    used = decide(tcfg.mixed_precision, out_dir, orm.device, orm.policy,
                  {k: v.to(orm.device) for k, v in probe.items()})
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(tcfg, mixed_precision=used))
    tcfg = cfg.train
    weights_all = _sample_weights(items, labels, counts, cfg)
    pos_rate = float(counts[labels == 1].sum() / counts.sum())
    val_enc = _encode_data(tokenizer, val, tcfg.max_length) if val else None
    stopper = None
    if cfg.early_stopping_patience is not None:
        if val_enc is None:
            raise ValueError("early_stopping_patience needs validation examples (split == 'val')")
        stopper = _EarlyStopping(cfg.early_stopping_patience, orm)

    body_params = [p for p in orm.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": body_params, "lr": tcfg.lr},
         {"params": list(orm.head.parameters()), "lr": tcfg.lr * cfg.head_lr_mult}],
        weight_decay=tcfg.weight_decay)
    by_prompt: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(items):
        by_prompt.setdefault(p, []).append(i)
    rng = np.random.default_rng(tcfg.seed)

    def epoch_batches() -> list[list[int]]:
        """Micro-batches of `batch_size` distinct samples; a question's samples stay adjacent, so
        its prompt is run once per micro-batch it appears in."""
        flat = [i for p in rng.permutation(len(prompt_ids)) for i in by_prompt[p]]
        return [flat[k:k + tcfg.batch_size] for k in range(0, len(flat), tcfg.batch_size)]

    micro_per_epoch = math.ceil(len(items) / tcfg.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // tcfg.grad_accum)
    total_steps = tcfg.max_steps or steps_per_epoch * tcfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg, total_steps))
    params = body_params + list(orm.head.parameters())

    def log(row):
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in row.items()}
        append_jsonl(out / "metrics.jsonl", row)

    first = _evaluate(orm, *val_enc, cfg) if val_enc else {}
    log({"epoch": 0, "step": 0, "pos_rate": pos_rate, "n_train": len(train), "n_val": len(val),
         "n_distinct": len(items), **first})
    if stopper is not None:
        stopper.update(0, first["val_loss"])
    step, running, started, epoch, stop = 0, [], time.perf_counter(), 0, False
    bar = tqdm(total=total_steps, desc="orm", disable=not progress)
    for epoch in range(1, math.ceil(total_steps / steps_per_epoch) + 1):
        orm.train()
        batches = epoch_batches()[: steps_per_epoch * tcfg.grad_accum]
        for micro, batch in enumerate(batches):
            with autocast(orm.device, tcfg.mixed_precision):
                logits, mask = _batch_logits(orm, prompt_ids, items, batch)
            y = torch.tensor(labels[batch], dtype=torch.float32, device=orm.device)
            weights = torch.tensor(weights_all[batch] / counts[batch].sum(), dtype=torch.float32,
                                   device=orm.device)
            loss = _loss(logits.float(), mask, y, weights)
            (loss / tcfg.grad_accum).backward()
            running.append(loss.item())
            if (micro + 1) % tcfg.grad_accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            bar.update(1)
            if step % tcfg.log_every == 0 or step == total_steps:
                log({"epoch": epoch, "step": step, "loss": float(np.mean(running)),
                     "lr": scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{np.mean(running):.3f}", refresh=False)
                running = []
            if step >= total_steps:
                break
        row = {"epoch": epoch, "step": step, "end_of_epoch": True,
               "wall_s": time.perf_counter() - started}
        if val_enc:
            row.update(_evaluate(orm, *val_enc, cfg))
        if stopper is not None:
            stop = stopper.update(epoch, row["val_loss"])
            row["best_epoch"] = stopper.best_epoch
        log(row)
        if step >= total_steps or stop:
            break
    bar.close()
    if stopper is not None:
        stopper.restore()

    # The balanced loss learns the odds of a 50/50 prior: shift the bias by the log prior odds.
    w_neg, w_pos = _class_weights(labels, counts)
    if cfg.balance == "class" and w_neg != w_pos:
        with torch.no_grad():
            orm.head.bias += math.log(w_neg / w_pos)  # = log(n_pos / n_neg)
    orm.eval()
    info = {"init": str(init_path), "pos_rate": pos_rate, "balance": cfg.balance,
            "load_in_4bit": cfg.load_in_4bit,
            "mixed_precision": tcfg.mixed_precision, "max_length": tcfg.max_length,
            "score_batch_tokens": cfg.score_batch_tokens, "train_wall_s": time.perf_counter() - started}
    if stopper is not None:
        info.update(best_epoch=stopper.best_epoch, stopped_epoch=epoch)
    return save_orm(orm, tokenizer, out / "final", info)
