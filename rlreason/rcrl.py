"""Return-Conditioned RL (RCRL): label the policy's own rollouts with their return, fine-tune on the
labelled text, and at test time prompt with the best label (the paper's third algorithm; close to
decision transformers and conditional SFT).

One round, top to bottom (`train_rcrl`):

1. **Rollouts.** K samples per training question from the current policy (round 1: the initial
   model, pretrained or SFT; later rounds: the last RCRL policy prompted with the good label).
2. **Rewards.** The chosen `RewardFn` (sparse, dense heuristic or ORM) scores every sample.
3. **Labels.** Full fine-tuning: two special tokens, `<|good|>` and `<|bad|>`, are added to the
   tokenizer (the embedding matrix grows by two rows, initialised at the mean of the existing rows
   plus noise of their per-dimension spread, so that each label starts as a typical and distinct
   embedding). LoRA adapters: two existing, unused tokens of the base vocabulary instead, recorded
   in the tokenizer's config (`rcrl_labels`: adapters cannot carry new embedding rows).
   - *sparse*: one label in front of the whole solution, good when the return exceeds
     `good_threshold` (0.5: the sparse reward is 1 for a correct answer);
   - *dense*: a label in front of every step (line, as `step_token_ends` splits them, the
     `#### answer` line included). With the heuristic dense reward a step is good when it earned a
     reward (`step_threshold` 0: its intermediate result matches the reference's, or it is the
     answer line of a correct solution); with the ORM a step is good when the ORM's probability of
     success after it exceeds `orm_threshold` (0.5).
4. **Fine-tuning** on `prompt + labelled solution` of all rounds so far, from the initial model
   (like Expert Iteration; `training.train_sft` on pre-encoded examples), with the loss on the
   solution tokens only: neither the prompt nor the labels are targets (the model is never taught
   to *emit* a label, only to read one).
5. **Evaluation** through `rcrl_decoding.ConditionedSampler`, which prompts with the good label
   (dense: re-inserts it before every new step while decoding) and returns text without labels.

Learning to read a label is slow for small models: the label must reach the answer tokens through
attention, and a new token that the trained model does not attend to gets little gradient.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoTokenizer

from .config import LoraSettings, RCRLConfig
from .grading import is_correct
from .io import atomic_write_json, read_jsonl, write_jsonl
from .models import is_adapter_dir, load_policy, save_policy
from .problems import Problem, format_prompt
from .rcrl_decoding import GOOD, LABELS, conditioned, label_ids, strip_labels
from .rcrl_labels import check_adapter, existing_labels, uses_adapters
from .rewards import Reward, RewardFn
from .runs import Run, is_done, mark_done, round_seed, set_seed
from .sampling import Sample, Sampler, SamplingParams
from .training import IGNORE_INDEX, train_sft

if TYPE_CHECKING:
    from .evaluation import EvaluateFn

LABEL_MODES = ("sparse", "dense")

__all__ = ["LABEL_MODES", "add_label_tokens", "checkpoint", "dense_labels", "encode_labelled",
           "insert_labels", "label_sample", "load_metrics", "load_rollouts", "rollouts_file",
           "sparse_label", "train_rcrl", "trains_adapters"]


# ---- labelling (pure) --------------------------------------------------------------------------


def sparse_label(reward: Reward, threshold: float = 0.5) -> bool:
    """Is the whole solution good? Its return exceeds `threshold`.

    >>> sparse_label(Reward(1.0, [0.0, 1.0], [1.0], [1])), sparse_label(Reward(0.0, [0.0], [0.0], [0]))
    (True, False)
    """
    return reward.total > threshold


def dense_labels(per_step: Sequence[float], threshold: float = 0.0, cumulative: bool = False) -> list[bool]:
    """Is each step good? Its step reward exceeds `threshold` (heuristic dense reward), or, with
    `cumulative`, the return so far does (the ORM's per-step rewards are increments of its
    probability of success, so their running sum is that probability after the step).

    >>> dense_labels([0.25, 0.0, 0.75])
    [True, False, True]
    >>> dense_labels([0.3, 0.4, -0.5], threshold=0.5, cumulative=True)
    [False, True, False]
    """
    values = list(per_step)
    if cumulative:
        values = [math.fsum(values[: i + 1]) for i in range(len(values))]
    return [v > threshold for v in values]


def insert_labels(token_ids: Sequence[int], step_token_ends: Sequence[int],
                  step_label_ids: Sequence[int]) -> list[int]:
    """`token_ids` with `step_label_ids[i]` inserted before the first token of step i.

    Step i runs from just after `step_token_ends[i-1]` to `step_token_ends[i]` (`rewards.Reward`).

    >>> insert_labels([10, 11, 12, 13, 14], [1, 4], [-1, -2])
    [-1, 10, 11, -2, 12, 13, 14]
    """
    if len(step_token_ends) != len(step_label_ids):
        raise ValueError(f"{len(step_token_ends)} steps but {len(step_label_ids)} labels")
    out, start = [], 0
    for end, label in zip(step_token_ends, step_label_ids):
        out.append(label)
        out.extend(token_ids[start : end + 1])
        start = end + 1
    out.extend(token_ids[start:])  # nothing, for a well-formed Reward
    return out


def label_sample(token_ids: Sequence[int], reward: Reward, mode: str, ids: tuple[int, int],
                 cfg: RCRLConfig, cumulative: bool = False) -> tuple[list[int], list[bool]]:
    """The labelled completion ids of one sample and its labels (one, or one per step).

    `ids` is (good id, bad id); `cumulative` picks the ORM's rule for dense labels.
    """
    good, bad = ids
    if mode == "sparse":
        ok = sparse_label(reward, cfg.good_threshold)
        return [good if ok else bad, *token_ids], [ok]
    if mode == "dense":
        threshold = cfg.orm_threshold if cumulative else cfg.step_threshold
        oks = dense_labels(reward.per_step, threshold, cumulative)
        return insert_labels(token_ids, reward.step_token_ends, [good if ok else bad for ok in oks]), oks
    raise ValueError(f"unknown label mode {mode!r}; expected one of {', '.join(LABEL_MODES)}")


# ---- label tokens and encoding -----------------------------------------------------------------


def add_label_tokens(model, tokenizer, seed: int = 0, *, adapters: bool | None = None) -> tuple[int, int]:
    """Give the tokenizer (and model) RCRL's labels; returns their ids (good, bad).

    `adapters` (None: whether `model` has peft adapters; `model=None`: the tokenizer only, full
    fine-tuning unless `adapters`) picks the spelling. Adapters: two existing tokens of the
    vocabulary, recorded in the tokenizer's config, nothing resized (`rcrl_labels.existing_labels`).
    Full fine-tuning: `<|good|>`/`<|bad|>` added as special tokens and the embeddings grown to
    match. New input rows: the mean of the existing rows plus Gaussian noise with their
    per-dimension standard deviation (a typical embedding, and the two labels start distinct). New
    output rows (untied heads): the mean output row.
    A tokenizer or model that has the labels already is left as it is.
    """
    if uses_adapters(model, adapters):
        return existing_labels(model, tokenizer).ids
    # `add_tokens(special_tokens=True)`: never split, skipped by `decode(skip_special_tokens=True)`,
    # saved with the tokenizer; one spelling across transformers 4 and 5.
    tokenizer.add_tokens([t for t in LABELS if t not in tokenizer.get_vocab()], special_tokens=True)
    ids = label_ids(tokenizer)
    old = model.get_input_embeddings().weight.shape[0] if model is not None else len(tokenizer)
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        new = list(range(old, len(tokenizer)))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            keep = emb[:old].float()
            noise = torch.randn((len(new), emb.shape[1]), generator=generator)
            emb[new] = (keep.mean(0) + noise * keep.std(0)).to(emb.dtype)
            head = model.get_output_embeddings()
            if head is not None and head.weight.data_ptr() != emb.data_ptr():
                head.weight[new] = head.weight[:old].float().mean(0).to(head.weight.dtype)
    return ids


def encode_labelled(tokenizer, prompt: str, completion_ids: Sequence[int], max_length: int,
                    label_token_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Ids and loss labels of `prompt + labelled completion`: the prompt and the label tokens are
    masked (`IGNORE_INDEX`), every other completion token is a target (as in `training.encode_example`)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    skip = set(label_token_ids)
    ids = prompt_ids + list(completion_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids) + [IGNORE_INDEX if t in skip else t for t in completion_ids]
    return ids[:max_length], labels[:max_length]


# ---- the loop ----------------------------------------------------------------------------------


def trains_adapters(init: str | Path, lora: LoraSettings | None) -> bool:
    """Whether RCRL from `init` trains LoRA adapters (fresh ones, or the adapter folder `init`),
    so that its labels must be existing tokens."""
    return lora is not None or is_adapter_dir(init)


def checkpoint(run_dir: str | Path, round_: int) -> Path:
    """The policy after round `round_` (>= 1)."""
    return Path(run_dir) / f"round_{round_:02d}"


def load_metrics(run_dir: str | Path) -> list[dict]:
    """The per-round rows of a run (round 0 is the initial model)."""
    path = Path(run_dir) / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def rollouts_file(run_dir: str | Path, round_: int, init: str | Path, question_ids: Sequence[str],
                  cfg: RCRLConfig, seed: int, params: SamplingParams,
                  shared_rollouts_dir: str | Path | None = None) -> Path:
    """Where round `round_`'s rollouts are saved: round 1's in `shared_rollouts_dir` (when given)
    under a hash of what they depend on (the init, not the labels or the reward), later rounds' in
    the run folder as `round_NN.rollouts.jsonl`."""
    if round_ == 1 and shared_rollouts_dir is not None:
        key = json.dumps({"init": str(init), "k": cfg.k, "t": cfg.temperature, "seed": seed,
                          "questions": list(question_ids),
                          "max_new_tokens": params.max_new_tokens, "stop": list(params.stop)},
                         sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return Path(shared_rollouts_dir) / f"{digest}.rollouts.jsonl"
    return Path(run_dir) / f"round_{round_:02d}.rollouts.jsonl"


def load_rollouts(path: str | Path) -> list[tuple[str, list[Sample]]]:
    """The saved rollouts of a round: (question id, its samples) per question, in order."""
    return [(r["id"], [Sample(s["text"], s["token_ids"], [], s["finish_reason"]) for s in r["samples"]])
            for r in read_jsonl(Path(path))]


def _save_rollouts(path: Path, items: Sequence[Problem], samples: Sequence[Sequence[Sample]]) -> None:
    write_jsonl(path, [{"id": p.id, "samples": [{"text": s.text, "token_ids": list(s.token_ids),
                                                   "finish_reason": s.finish_reason} for s in row]}
                       for p, row in zip(items, samples)])


def _load_rollouts(path: Path) -> list[list[Sample]]:
    # Log-probabilities are not kept: labelling needs the text and the token ids only.
    return [row for _, row in load_rollouts(path)]


def train_rcrl(init: str | Path, items: Sequence[Problem], reward_fn: RewardFn, cfg: RCRLConfig,
               run: Run, *, labels: str, make_sampler: Callable[[Path], Sampler], params: SamplingParams,
               cumulative: bool = False, evaluate: EvaluateFn | None = None,
               lora: LoraSettings | None = None, load_in_4bit: bool = False,
               shared_rollouts_dir: Path | None = None, progress: bool = False) -> list[dict]:
    """Return-conditioned RL from the checkpoint `init` into `run.dir`; returns the rows of rounds
    0..`cfg.rounds`.

    - `items`: the training questions (the first `cfg.n_questions` are used); `labels`: `sparse`
      or `dense`; `reward_fn` scores the samples (its tokenizer must have the label tokens:
      `add_label_tokens(None, tok, adapters=trains_adapters(init, lora))`);
      `cumulative`: dense labels read the running sum of the per-step rewards (the ORM's);
    - `make_sampler(policy)` loads a sampler; `params` is the rollout config (`n`, `temperature`
      and `seed` are set here per round);
    - `evaluate(checkpoint, info)` (None: no evaluation) returns the metrics merged into a round's
      row; `info` holds `round`, `rollouts`, `wall_s` (None) and `record` (False for round 0,
      the initial model without labels; later rounds are evaluated with the good label);
    - `shared_rollouts_dir`: where round 1's rollouts go, keyed by what they depend on (the init,
      not the labels or the reward), so that other runs from the same init reuse them.

    Run folder: `round_NN.rollouts.jsonl` (samples), `round_NN.data.jsonl` (labelled completions),
    `round_NN/` (the policy and its evaluations, prompted with the good label), `round_NN.json`
    (the round's row; the round is finished), `metrics.jsonl` (all rows, round 0 = the init) and
    `DONE` once every round is finished.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"unknown label mode {labels!r}; expected one of {', '.join(LABEL_MODES)}")
    items = list(items)[: cfg.n_questions]
    run_dir, seed = run.dir, run.seed
    adapters = trains_adapters(init, lora)
    if run.done:
        return load_metrics(run_dir)

    def finish_round(row: dict) -> None:
        atomic_write_json(run_dir / f"round_{row['round']:02d}.json", row)
        rows = [json.loads(p.read_text()) for p in sorted(run_dir.glob("round_[0-9][0-9].json"))]
        write_jsonl(run_dir / "metrics.jsonl", rows)

    def info(round_: int, rollouts: int) -> dict:
        return {"round": round_, "rollouts": rollouts, "wall_s": None, "record": round_ > 0}

    if not (run_dir / "round_00.json").exists():
        row = {"round": 0, "rollouts": 0, "questions": len(items), "k": cfg.k, "data_size": 0}
        finish_round(row | (evaluate(Path(init), info(0, 0)) if evaluate is not None else {}))

    prompts = [format_prompt(p.question) for p in items]
    rollouts, data = 0, []
    for round_ in range(1, cfg.rounds + 1):
        row_path = run_dir / f"round_{round_:02d}.json"
        data_path = run_dir / f"round_{round_:02d}.data.jsonl"
        ckpt = checkpoint(run_dir, round_)
        seed_r = round_seed(seed, round_, 7)
        rollouts += len(items) * cfg.k
        if row_path.exists():  # finished earlier: only its labelled data is needed
            data += read_jsonl(data_path)
            continue
        timings: dict[str, float] = {}

        # 1. Rollouts: the init's (shared by every run from it) or the last policy's, good-labelled.
        rollouts_path = rollouts_file(run_dir, round_, init, [p.id for p in items], cfg, seed, params,
                                      shared_rollouts_dir)
        if not rollouts_path.exists():
            started = time.perf_counter()
            set_seed(seed_r)
            sub = dataclasses.replace(params, n=cfg.k, temperature=cfg.temperature, seed=seed_r)
            if round_ == 1:
                sampler = make_sampler(Path(init))
            else:
                policy = checkpoint(run_dir, round_ - 1)
                sampler = conditioned(make_sampler(policy), policy, GOOD, dense=labels == "dense")
            _save_rollouts(rollouts_path, items, sampler.generate(prompts, sub))
            del sampler
            timings["sample_wall_s"] = time.perf_counter() - started
        samples = _load_rollouts(rollouts_path)

        # 2-3. Rewards, then labels (the tokenizer gets the label tokens first).
        tokenizer = AutoTokenizer.from_pretrained(str(init))
        ids = add_label_tokens(None, tokenizer, adapters=adapters)
        flat = [strip_labels(s, set(ids)) for row in samples for s in row]
        flat_items = [p for p, row in zip(items, samples) for _ in row]
        rewards = reward_fn(flat_items, flat)
        new = []
        for p, s, r in zip(flat_items, flat, rewards):
            if not s.token_ids:
                continue
            completion, oks = label_sample(s.token_ids, r, labels, ids, cfg, cumulative=cumulative)
            new.append({"id": p.id, "ids": completion, "labels": oks, "total": r.total,
                        "correct": is_correct(s.text, p.answer, "strict")})
        write_jsonl(data_path, new)
        data += new

        # 4. Fine-tune the initial model on all rounds' labelled data (loss off prompt and labels).
        if not is_done(ckpt):
            started = time.perf_counter()
            model, tokenizer = load_policy(str(init), lora=lora, load_in_4bit=load_in_4bit)
            ids = add_label_tokens(model, tokenizer, seed=seed, adapters=adapters)
            by_id = dict(zip([p.id for p in items], prompts))
            # No checkpoints inside a round: the round's policy is saved below.
            train_cfg = dataclasses.replace(cfg.train, seed=seed_r, save_every_epoch=False,
                                            save_every_steps=None)
            encoded = [encode_labelled(tokenizer, by_id[d["id"]], d["ids"], train_cfg.max_length,
                                       ids) for d in data]
            train_dir = run_dir / f"train_{round_:02d}"
            (train_dir / "metrics.jsonl").unlink(missing_ok=True)
            train_sft(model, tokenizer, None, train_cfg, out_dir=train_dir, progress=progress,
                      encoded=encoded)
            save_policy(model, tokenizer, ckpt)
            check_adapter(ckpt)  # an adapter with embedding weights: refused before it is used
            mark_done(ckpt)
            del model
            timings["train_wall_s"] = time.perf_counter() - started
        losses = [r["loss"] for r in read_jsonl(run_dir / f"train_{round_:02d}" / "metrics.jsonl")
                  if "loss" in r]

        # 5. The round's row: rollouts so far, label statistics, the good-labelled policy's metrics.
        step_labels = [ok for d in new for ok in d["labels"]]
        row = {"round": round_, "rollouts": rollouts, "questions": len(items), "k": cfg.k,
               "train_sample_acc": float(np.mean([d["correct"] for d in new])),
               "good_solutions": float(np.mean([all(d["labels"]) for d in new])),
               "good_labels": float(np.mean(step_labels)), "data_size": len(data),
               "train_loss": losses[-1] if losses else None}
        if evaluate is not None:
            started = time.perf_counter()
            row |= evaluate(ckpt, info(round_, rollouts))
            timings["eval_wall_s"] = time.perf_counter() - started
        finish_round(row | timings)

    run.mark_done()
    return load_metrics(run_dir)
