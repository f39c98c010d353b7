"""The outcome reward model (ORM): a verifier that predicts whether a solution will be correct.

Cobbe et al. (2021) style, as the paper uses it:

- **Model**: the policy's architecture (the body of an `AutoModelForCausalLM`, loaded by
  `models.load_policy`, so LoRA and 4-bit work as for the policy) with a scalar head, a
  `nn.Linear(hidden, 1)` on the last hidden state. Its sigmoid at a completion token is the
  probability that the finished solution will be correct, given the question and the solution up
  to that token. It is initialised from the SFT checkpoint (the head from zeros: p = 0.5).
- **Data** (`collect_orm_data`): the SFT model's own samples on the training questions,
  `samples_per_question` each, labelled by the sparse reward (strict grading). The questions are
  split into train and validation (`val_fraction`), so validation samples belong to questions the
  ORM never trained on.
- **Training** (`train_orm`): binary cross-entropy at every completion token against the sample's
  label (averaged over the sample's tokens). With `balance=True` each class weighs half of the
  loss, so a model that only learns the base rate gains nothing; the head's bias is corrected by
  the log prior odds after training, so that probabilities are calibrated for the true base rate
  (ranking is unaffected). Validation loss and AUROC are written to `metrics.jsonl` per epoch.
- **Checkpoint**: an ordinary policy folder (`save_policy`: full model or LoRA adapter, and the
  tokenizer) plus `orm_head.safetensors` and `orm.json`; `load_orm` / `ORMScorer(path)` read it.
- **Scoring** (`ORMScorer`): `score` gives the probability at the final token (EOS) of each
  completion, for rerank@K (`as_scorer()` matches `evaluation.Scorer`); `score_steps` gives it at
  each step end, for the ORM reward (`rewards.orm_reward`). Scoring is batched, runs each prompt
  once for all its completions (their attention reads the prompt's KV cache) and scores identical
  completions of a question once.

A completion is scored as the token ids `tokenizer(text, add_special_tokens=False) + [EOS]`, in
training and in `score` alike; `score_steps` on `Sample`s uses the sample's own token ids.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from .config import LoraSettings, ORMConfig
from .grading import answers_match, extract_answer
from .io import append_jsonl, atomic_write_json, read_jsonl, write_jsonl
from .models import (
    base_model,
    forward_signature,
    left_pad,
    load_policy,
    save_policy,
    shared_prefix_forward,
    use_inference_attention,
)
from .problems import Problem, format_prompt
from .runs import set_seed
from .training import autocast

if TYPE_CHECKING:  # pragma: no cover
    from .profiles import Profile
    from .sampling import Sample

__all__ = ["ORM", "ORMExample", "ORMScorer", "auroc", "collect_orm_data", "completion_ids",
           "load_orm", "orm_checkpoint", "reliability", "save_orm", "split_questions", "train_orm"]

HEAD_FILE = "orm_head.safetensors"
INFO_FILE = "orm.json"


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


def split_questions(ids: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The validation question ids: a seeded `val_fraction` of `ids` (at least one when > 0)."""
    ids = sorted(set(ids))
    if val_fraction <= 0 or len(ids) < 2:
        return set()
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:n_val]}


def collect_orm_data(sampler, problems: Sequence[Problem], cfg: ORMConfig,
                     seed: int = 0) -> list[ORMExample]:
    """`cfg.samples_per_question` samples per question from `sampler`, labelled and split.

    `cfg.max_questions` (when set) keeps a seeded subset of the questions. Labels come from the
    sparse reward under `cfg.mode` grading.
    """
    from .sampling import SamplingParams

    problems = list(problems)
    if cfg.max_questions is not None and cfg.max_questions < len(problems):
        keep = np.sort(np.random.default_rng(seed).choice(len(problems), cfg.max_questions,
                                                          replace=False))
        problems = [problems[i] for i in keep]
    if not problems:
        raise ValueError("collect_orm_data got no problems")
    prompts = [format_prompt(p.question) for p in problems]
    params = SamplingParams(n=cfg.samples_per_question, temperature=cfg.temperature,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)
    outputs = sampler.generate(prompts, params)
    val = split_questions([p.id for p in problems], cfg.val_fraction, seed)
    data = []
    for problem, prompt, samples in zip(problems, prompts, outputs):
        for s in samples:
            label = int(answers_match(extract_answer(s.text, cfg.mode), problem.answer))
            data.append(ORMExample(problem.id, prompt, s.text, label,
                                   "val" if problem.id in val else "train"))
    return data


def save_orm_data(data: Sequence[ORMExample], path: str | os.PathLike) -> None:
    write_jsonl(path, [dataclasses.asdict(x) for x in data])


def load_orm_data(path: str | os.PathLike) -> list[ORMExample]:
    return [ORMExample(**row) for row in read_jsonl(path)]


def completion_ids(tokenizer, text: str) -> list[int]:
    """The token ids the ORM reads for a completion text: the text's tokens, then EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


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
        (`models.shared_prefix_forward`).

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
    from safetensors.torch import save_file

    path = save_policy(orm.policy, tokenizer, path)
    state = {k: v.detach().float().cpu().contiguous() for k, v in orm.head.state_dict().items()}
    save_file(state, str(path / HEAD_FILE))
    atomic_write_json(path / INFO_FILE, info or {})
    return path


def load_orm(path: str | os.PathLike, *, trainable: bool = False, load_in_4bit: bool = False,
             device=None, dtype=None) -> tuple[ORM, object]:
    """Load a `save_orm` folder: returns `(orm, tokenizer)`."""
    from safetensors.torch import load_file

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


# ---- metrics (numpy) ---------------------------------------------------------------------------


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (the probability that a random positive outscores a random
    negative, ties counting half): the Mann-Whitney U statistic with average ranks. NaN when only
    one class is present.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average rank within each group of tied scores (1-based ranks).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def reliability(probs: Sequence[float], labels: Sequence[int], n_bins: int = 10):
    """Reliability-diagram table: per equal-width probability bin, the mean predicted probability,
    the observed accuracy and the count; plus the expected calibration error (ECE).

    Returns `(DataFrame[bin_lo, bin_hi, mean_prob, frac_correct, count], ece)`.
    """
    import pandas as pd

    p = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
    y = np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        m = which == b
        count = int(m.sum())
        mean_p = float(p[m].mean()) if count else float("nan")
        acc = float(y[m].mean()) if count else float("nan")
        if count:
            ece += count / max(len(p), 1) * abs(mean_p - acc)
        rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "mean_prob": mean_p,
                     "frac_correct": acc, "count": count})
    return pd.DataFrame(rows), float(ece)


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


def _within_question_auroc(prompt, scores, labels) -> float:
    """Mean over questions with both correct and wrong samples of their AUROC (what reranking
    needs; the pooled AUROC also rewards knowing which questions are hard)."""
    values = [auroc(scores[prompt == q], labels[prompt == q]) for q in np.unique(prompt)]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


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
            "val_auroc_within": _within_question_auroc(prompt, finals[repeated], labels[repeated]),
            "val_acc": float(np.mean((finals[repeated] > 0) == (labels[repeated] == 1)))}


def train_orm(init_path: str | os.PathLike, data: Sequence[ORMExample], cfg: ORMConfig,
              out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train an ORM from the policy checkpoint `init_path` on `data`; returns `out_dir/final`.

    Writes one `metrics.jsonl` row per logged step (train loss) and per epoch (validation loss,
    AUROC, pooled and within questions, and accuracy of the final-token prediction on the `val`
    examples; epoch 0 is the untrained head, p = 0.5 everywhere). Micro-batches hold
    `train.batch_size` distinct samples with the samples of a question side by side, so a prompt is
    run once per micro-batch; identical samples of a question are merged with a count weight;
    `train.grad_accum` micro-batches make one optimizer step. Single process (one device): a 7B
    QLoRA ORM fits one GPU.
    """
    from tqdm.auto import tqdm

    from .training import lr_lambda

    tcfg = cfg.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    set_seed(tcfg.seed)
    lora = LoraSettings(r=cfg.lora_r, alpha=2 * cfg.lora_r) if cfg.lora_r else None
    policy, tokenizer = load_policy(init_path, lora=lora, load_in_4bit=cfg.load_in_4bit)
    torch.manual_seed(tcfg.seed)
    orm = ORM(policy)
    orm.head.requires_grad_(True)

    train = [x for x in data if x.split == "train"]
    val = [x for x in data if x.split == "val"]
    if not train:
        raise ValueError("train_orm got no training examples (split == 'train')")
    prompt_ids, items, labels, counts = _encode_data(tokenizer, train, tcfg.max_length)
    weights_all = _sample_weights(items, labels, counts, cfg)
    pos_rate = float(counts[labels == 1].sum() / counts.sum())
    val_enc = _encode_data(tokenizer, val, tcfg.max_length) if val else None

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

    log({"epoch": 0, "step": 0, "pos_rate": pos_rate, "n_train": len(train), "n_val": len(val),
         "n_distinct": len(items),
         **(_evaluate(orm, *val_enc, cfg) if val_enc else {})})
    step, running, started = 0, [], time.perf_counter()
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
                bar.set_postfix(loss=f"{np.mean(running):.3f}")
                running = []
            if step >= total_steps:
                break
        row = {"epoch": epoch, "step": step, "end_of_epoch": True,
               "wall_s": time.perf_counter() - started}
        if val_enc:
            row.update(_evaluate(orm, *val_enc, cfg))
        log(row)
        if step >= total_steps:
            break
    bar.close()

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
    return save_orm(orm, tokenizer, out / "final", info)


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
        from tqdm.auto import tqdm

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

    def score_steps(self, problems: Sequence[Problem], samples: Sequence["Sample | str"],
                    ends: Sequence[Sequence[int]] | None = None) -> list[list[float]]:
        """Probability of correctness at the end of each step of each sample (one per problem).

        `samples` are `Sample`s (their `token_ids` are read) or texts (`completion_ids`). Step ends
        are `rewards.step_token_ends` unless given. Empty samples give an empty list.
        """
        from .rewards import step_token_ends

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


# ---- the stage ---------------------------------------------------------------------------------


def orm_checkpoint(profile: "Profile", seed: int = 0, recompute: bool = False,
                   progress: bool = True) -> Path:
    """The profile's trained ORM (`runs_dir/orm-seed<seed>/final`), built if missing.

    Samples `profile.orm.samples_per_question` solutions per training question from the final SFT
    checkpoint (trained if missing), labels and splits them (`data.jsonl`, reused when its config
    matches), trains the ORM from the same checkpoint and marks the folder done. A finished run is
    reused when its config is unchanged. A stage like those of `study` (which sits above this
    module, hence the local import).
    """
    from . import study
    from .runs import config_changed, make_run_dir

    cfg = profile.orm
    sft = study.sft_checkpoint(profile, seed)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    name = f"orm-seed{seed}"
    config = {"init": str(sft), "orm": cfg}
    changed = config_changed(profile.runs_dir / name, config)
    run_dir = make_run_dir(profile.runs_dir, name, config, seed)
    final = run_dir / "final"
    # Reused only when finished with the same configuration (a changed ORMConfig retrains).
    if study.is_done(final) and not recompute and not changed:
        return final
    study.configure_torch(profile)
    data_path, data_meta = run_dir / "data.jsonl", run_dir / "data.json"
    sampling = ("samples_per_question", "temperature", "val_fraction", "max_questions",
                "max_new_tokens", "mode")
    meta = json.loads(json.dumps({"init": str(sft), "seed": seed,
                                  "config": {k: getattr(cfg, k) for k in sampling}}))
    saved = json.loads(data_meta.read_text()) if data_meta.exists() else {}
    if (not recompute and data_path.exists()
            and {k: v for k, v in saved.items() if k != "wall_s"} == meta):
        data = load_orm_data(data_path)
    else:
        started = time.perf_counter()
        sampler = study.make_sampler(profile, sft, progress=progress)
        data = collect_orm_data(sampler, study.problems(profile, "train"), cfg, seed)
        del sampler
        save_orm_data(data, data_path)
        atomic_write_json(data_meta, {**meta, "wall_s": time.perf_counter() - started})
    path = train_orm(sft, data, cfg, run_dir, progress=progress)
    study.mark_done(path)
    return path


# ---- analysis (notebook 02 and the algorithms' notebooks) --------------------------------------


@dataclass
class RerankData:
    """The K samples of an evaluation with their ORM scores, per question (for curves and AUROC)."""

    problems: list[Problem]
    completions: list[list[str]]
    scores: list[list[float]]
    answers: list[list]
    """Strict-mode answers of the samples."""
    correct: list[list[bool]]
    """Strict-mode correctness of the samples."""

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample: scores, correctness, and the index of its question."""
        scores = np.array([s for row in self.scores for s in row], dtype=float)
        correct = np.array([c for row in self.correct for c in row], dtype=bool)
        question = np.array([q for q, row in enumerate(self.scores) for _ in row])
        return scores, correct, question

    def vote_share(self) -> np.ndarray:
        """Per sample, the fraction of its question's samples with the same answer (0 without one):
        what majority voting ranks by, as a baseline score."""
        from .grading import answer_key

        out = []
        for answers in self.answers:
            keys = [answer_key(a) for a in answers]
            out += [keys.count(k) / len(keys) if k is not None else 0.0 for k in keys]
        return np.array(out)


def score_report(scores, correct, question) -> dict:
    """AUROC pooled over all samples and within questions, ECE, and the base rate."""
    scores, correct = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    _, ece = reliability(scores, correct)
    return {"auroc": auroc(scores, correct),
            "auroc_within": _within_question_auroc(np.asarray(question), scores, correct),
            "ece": ece, "frac_correct": float(correct.mean()) if len(correct) else float("nan"),
            "mean_prob": float(scores.mean()) if len(scores) else float("nan"),
            "n_samples": int(len(scores))}


def score_examples(scorer: ORMScorer, examples: Sequence[ORMExample],
                   problems: Sequence[Problem]) -> np.ndarray:
    """ORM scores of labelled examples (e.g. the held-out `val` split of the ORM's data)."""
    by_id = {p.id: p for p in problems}
    order = sorted({x.problem_id for x in examples})
    rows = {q: [x.completion for x in examples if x.problem_id == q] for q in order}
    scored = dict(zip(order, scorer.score([by_id[q] for q in order], [rows[q] for q in order])))
    position = {q: 0 for q in order}
    out = []
    for x in examples:
        out.append(scored[x.problem_id][position[x.problem_id]])
        position[x.problem_id] += 1
    return np.array(out)


def rerank_evaluation(profile: "Profile", checkpoint, scorer: ORMScorer, split: str = "test", *,
                      run_info: dict, record: bool = True):
    """`study.evaluate_checkpoint` with the ORM as reranker (rerank@K in the metrics); returns the
    `EvalResult` and the `RerankData` of its K samples."""
    from . import study

    captured: dict = {}

    def score(problems, completions):
        captured["problems"], captured["completions"] = list(problems), [list(c) for c in completions]
        captured["scores"] = scorer.score(problems, completions)
        return captured["scores"]

    result = study.evaluate_checkpoint(profile, checkpoint, split, run_info=run_info, scorer=score,
                                       record=record)
    problems, completions = captured["problems"], captured["completions"]
    answers = [[extract_answer(t, "strict") for t in row] for row in completions]
    correct = [[answers_match(a, p.answer) for a in row] for p, row in zip(problems, answers)]
    return result, RerankData(problems, completions, captured["scores"], answers, correct)


def k_curves(data: RerankData, ks: Sequence[int], rng: np.random.Generator,
             n_draws: int = 20) -> dict[str, dict[int, float]]:
    """maj@k, rerank@k (random k-subsets of the K samples, `metrics.subsampled_curve`) and the
    unbiased pass@k, strict grading, for each k in `ks` (those above K are dropped)."""
    from .metrics import maj_at_k, pass_at_k_curve, rerank_at_k, subsampled_curve

    k_max = min(len(row) for row in data.answers)
    ks = [k for k in ks if k <= k_max]
    refs = [p.answer for p in data.problems]
    n = np.array([len(row) for row in data.correct])
    c = np.array([sum(row) for row in data.correct])
    return {"maj@k": subsampled_curve(maj_at_k, data.answers, None, refs, ks, rng, n_draws),
            "rerank@k": subsampled_curve(rerank_at_k, data.answers, data.scores, refs, ks, rng,
                                         n_draws),
            "pass@k": pass_at_k_curve(n, c, ks)}


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (Pearson on average ranks); NaN when either side is constant."""
    import pandas as pd

    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def shortcut_report(data: RerankData) -> dict:
    """What the ORM's ranking inside a question follows, beyond correctness.

    Per question (then averaged): the rank correlation of the ORM score with the sample's final
    answer value and with its length in characters; and, over questions, how often the top-scored
    sample is correct against a random sample, and how often its answer is at or below the median
    answer of its question. A verifier that learned *which questions are hard* from cues in the
    solution text (small numbers, short solutions) shows negative correlations here.
    Also: the spread of scores within a question against across questions, and how many distinct
    texts there are per correct and per wrong sample (in questions with both). When the scores
    barely vary within a question, the top score is picked by noise, and noise favours the class
    with more distinct texts (identical samples get identical scores): the wrong samples.
    """
    corr_answer, corr_length, below, top_correct, mean_correct = [], [], [], [], []
    within_std, distinct_right, distinct_wrong = [], [], []
    for scores, answers, correct, texts in zip(data.scores, data.answers, data.correct,
                                               data.completions):
        if not scores:
            continue
        s = np.asarray(scores, dtype=float)
        within_std.append(float(s.std()))
        if any(correct) and not all(correct):
            distinct_right.append(len({t for t, c in zip(texts, correct) if c}) / sum(correct))
            distinct_wrong.append(len({t for t, c in zip(texts, correct) if not c})
                                  / (len(correct) - sum(correct)))
        values = np.array([a if isinstance(a, float) else np.nan for a in answers])
        ok = ~np.isnan(values)
        if ok.sum() > 2:
            corr_answer.append(_rank_corr(s[ok], values[ok]))
        corr_length.append(_rank_corr(s, np.array([len(t) for t in texts], dtype=float)))
        top = int(np.argmax(s))
        top_correct.append(correct[top])
        mean_correct.append(float(np.mean(correct)))
        if ok[top]:
            below.append(values[top] <= np.median(values[ok]))
    return {"corr_score_answer_value": float(np.nanmean(corr_answer)) if corr_answer else float("nan"),
            "corr_score_length": float(np.nanmean(corr_length)) if corr_length else float("nan"),
            "top_pick_correct": float(np.mean(top_correct)) if top_correct else float("nan"),
            "random_pick_correct": float(np.mean(mean_correct)) if mean_correct else float("nan"),
            "top_pick_answer_at_or_below_median": float(np.mean(below)) if below else float("nan"),
            "score_std_within_question": float(np.mean(within_std)) if within_std else float("nan"),
            "score_std_across_questions": float(np.std([np.mean(s) for s in data.scores if s])),
            "distinct_texts_per_correct_sample": float(np.mean(distinct_right)) if distinct_right else float("nan"),
            "distinct_texts_per_wrong_sample": float(np.mean(distinct_wrong)) if distinct_wrong else float("nan")}
