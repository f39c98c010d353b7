"""Return-Conditioned RL (RCRL): label the policy's own rollouts with their return, fine-tune on the
labelled text, and at test time prompt with the best label (the paper's third algorithm; close to
decision transformers and conditional SFT).

One round, top to bottom (`run_rcrl`):

1. **Rollouts.** K samples per training question from the current policy (round 1: the initial
   model, pretrained or SFT; later rounds: the last RCRL policy prompted with the good label).
2. **Rewards.** The chosen `RewardFn` (sparse, dense heuristic or ORM) scores every sample.
3. **Labels.** Two special tokens, `<|good|>` and `<|bad|>`, are added to the tokenizer (the
   embedding matrix grows by two rows, initialised at the mean of the existing rows plus noise of
   their per-dimension spread, so that each label starts as a typical and distinct embedding).
   - *sparse*: one label in front of the whole solution, good when the return exceeds
     `good_threshold` (0.5: the sparse reward is 1 for a correct answer);
   - *dense*: a label in front of every step (line, as `rewards.step_token_ends` splits them, the
     `#### answer` line included). With the heuristic dense reward a step is good when it earned a
     reward (`step_threshold` 0: its intermediate result matches the reference's, or it is the
     answer line of a correct solution); with the ORM a step is good when the ORM's probability of
     success after it exceeds `orm_threshold` (0.5).
4. **Fine-tuning** on `prompt + labelled solution` of all rounds so far, from the initial model
   (like Expert Iteration), with the loss on the solution tokens only: neither the prompt nor the
   labels are targets (the model is never taught to *emit* a label, only to read one).
5. **Evaluation** with the standard harness through `ConditionedSampler`, which prompts with the
   good label (dense: re-inserts it before every new step while decoding) and returns text
   without labels, with K = `cfg.eval_k` samples per question. `label_gap` prompts the final
   policy with the bad label too, a check that the labels carry meaning; `gain_over_init` compares
   the final policy with its starting point (paired bootstrap CIs over questions).

Learning to read a label is slow for small models: the label must reach the answer tokens through
attention, and a new token that the trained model does not attend to gets little gradient. On the
tiny profile RCRL's fine-tuning budget is far below what makes the labels matter (notebook 05).

Dense decoding is a stop-on-newline loop through the `Sampler` interface (so it runs on vLLM
too): every live sample is continued from `prompt + label + its text so far + "\\n" + label`;
samples that share a context are continued together (one prompt, n = their count), which keeps
the prompt sharing of the first call for the common first lines.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import EvalConfig, RCRLConfig, SFTConfig
from .io import append_jsonl, atomic_write_json, read_jsonl, write_jsonl
from .problems import Problem, format_prompt
from .rewards import Reward, RewardFn, make_reward
from .runs import make_run_dir, set_seed
from .sampling import Sample, SamplingParams, completion_text
from .training import IGNORE_INDEX, autocast, autocast_dtype, collate, lr_lambda, token_loss

GOOD, BAD = "<|good|>", "<|bad|>"
LABELS = (GOOD, BAD)
LABEL_MODES = ("sparse", "dense")

__all__ = ["BAD", "GOOD", "LABELS", "LABEL_MODES", "ConditionedSampler", "add_label_tokens", "checkpoint",
           "conditioned_sampler", "dense_labels", "encode_labelled", "eval_config", "evaluate_label", "finetune",
           "gain_over_init", "insert_labels", "label_gap", "label_ids", "label_sample", "load_metrics",
           "run_rcrl", "sparse_label"]


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


def label_ids(tokenizer) -> tuple[int, int]:
    """Token ids of (good, bad); raises if the tokenizer lacks them."""
    ids = tokenizer.convert_tokens_to_ids(list(LABELS))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the tokenizer has no RCRL labels: call add_label_tokens first")
    return ids[0], ids[1]


def add_label_tokens(model, tokenizer, seed: int = 0) -> tuple[int, int]:
    """Add `<|good|>`/`<|bad|>` to the tokenizer as special tokens and grow the model's
    embeddings to match (`model=None`: the tokenizer only); returns the labels' ids.

    New input rows: the mean of the existing rows plus Gaussian noise with their per-dimension
    standard deviation (a typical embedding, and the two labels start distinct, which matters when
    the embeddings are frozen, as with LoRA). New output rows (untied heads): the mean output row.
    A tokenizer or model that has the labels already is left as it is.
    """
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


# ---- fine-tuning on encoded examples -----------------------------------------------------------


def finetune(model, tokenizer, encoded: Sequence[tuple[list[int], list[int]]], cfg: SFTConfig,
             out_dir: str | Path | None = None, progress: bool = True) -> list[dict]:
    """`training.train_sft`'s loop on pre-encoded (ids, labels) examples.

    RCRL needs loss labels that `encode_example` cannot express (labels in the middle of the
    completion are masked), so this is the trainer's loop minus the text encoding and the
    per-epoch checkpoints; the collation, schedule and loss are the trainer's own. Metrics rows go
    to `out_dir/metrics.jsonl`. (Were `train_sft` to accept pre-encoded examples, this would go.)
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not encoded:
        raise ValueError("finetune got no examples: nothing to train on")
    set_seed(cfg.seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    autocast_dtype(cfg.mixed_precision)  # a bad setting fails here, before any work
    loader = torch.utils.data.DataLoader(
        list(encoded), batch_size=cfg.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
    total_steps = cfg.max_steps or math.ceil(len(loader) / cfg.grad_accum) * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    rows, running, step = [], [], 0
    model.train()
    bar = tqdm(total=total_steps, desc="rcrl fine-tune", disable=not progress)
    while step < total_steps:
        for batch in loader:
            with accelerator.accumulate(model):
                with autocast(accelerator.device, cfg.mixed_precision):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = token_loss(logits, batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running.append(loss.item())
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                rows.append({"step": step, "loss": sum(running) / len(running), "lr": scheduler.get_last_lr()[0]})
                running = []
                if out_dir is not None:
                    append_jsonl(Path(out_dir) / "metrics.jsonl", rows[-1])
            if step >= total_steps:
                break
    bar.close()
    model.eval()
    return rows


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
    `tokenizer` decodes token ids of samples cut at the token budget (dense only).
    """

    def __init__(self, sampler, tokenizer, label: str = GOOD, dense: bool = False):
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
        self.sampler, self.tokenizer, self.label, self.dense = sampler, tokenizer, label, dense
        self.eos_ids = {tokenizer.eos_token_id}

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """`params.n` samples per prompt, in the order of `prompts` (see `sampling.Sampler`)."""
        if not self.dense or not prompts:
            return self.sampler.generate([p + self.label for p in prompts], params)
        if getattr(self.sampler, "supports_line_insertion", False):
            return self._generate_inserting(prompts, params)
        return self._generate_dense(prompts, params)

    def _generate_inserting(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """Dense decoding in one call: the sampler feeds the label after each line itself."""
        label = self.tokenizer.convert_tokens_to_ids(self.label)
        skip = set(label_ids(self.tokenizer))
        # Labels take generation slots (at most one per line): room for them, then the
        # caller's budget applies to the solution's own tokens.
        budget = params.max_new_tokens + params.max_new_tokens // 2
        sub = dataclasses.replace(params, max_new_tokens=budget, insert_after_line=label)
        out = self.sampler.generate([p + self.label for p in prompts], sub)
        return [[self._without_labels(s, skip, params) for s in row] for row in out]

    def _without_labels(self, sample: Sample, skip: set[int], params: SamplingParams) -> Sample:
        """The sample with its labels dropped, cut to the caller's budget of solution tokens."""
        stripped = _strip_labels(sample, skip)
        ids, logprobs = stripped.token_ids[: params.max_new_tokens], stripped.logprobs[: params.max_new_tokens]
        reason = "length" if len(stripped.token_ids) > params.max_new_tokens else sample.finish_reason
        return Sample(completion_text(self.tokenizer, ids, reason, self.eos_ids, params), ids, logprobs, reason)

    def _generate_dense(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        greedy = params.temperature == 0
        n = 1 if greedy else params.n  # greedy samples are identical: decode one
        rows = [_Row(context=p + self.label) for p in prompts for _ in range(n)]
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
            row.context += sample.text + "\n" + (self.label if sample.text.strip() else "")


# ---- evaluation with a label -------------------------------------------------------------------


def conditioned_sampler(profile, checkpoint: str | Path, label: str = GOOD, dense: bool = False,
                        progress: bool = False) -> ConditionedSampler:
    """The profile's sampler for an RCRL checkpoint, prompted with `label`."""
    from . import study

    sampler = study.make_sampler(profile, checkpoint, progress=progress)
    tokenizer = getattr(sampler, "tokenizer", None)
    if tokenizer is None:  # vLLM keeps its own
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return ConditionedSampler(sampler, tokenizer, label, dense)


def evaluate_label(profile, checkpoint: str | Path, *, label: str = GOOD, dense: bool = False,
                   split: str = "test", items: Sequence[Problem] | None = None,
                   cfg: EvalConfig | None = None, run_info: dict | None = None, record: bool = False,
                   progress: bool = False):
    """`evaluation.evaluate` of an RCRL checkpoint prompted with `label` (rollouts saved next to
    it as `eval-<split>-<good|bad>-rollouts.jsonl` and reused while `cfg` is the same)."""
    from . import study
    from .evaluation import evaluate

    items = list(items if items is not None else study.problems(profile, split))
    name = f"{split}-{label.strip('<|>')}"
    info = {"dataset": f"{profile.dataset}-{split}", "checkpoint": Path(str(checkpoint)).name,
            "label": label.strip("<|>"), **(run_info or {})}
    return evaluate(lambda: conditioned_sampler(profile, checkpoint, label, dense, progress), items,
                    cfg or profile.eval, out_dir=checkpoint, name=name, recompute=False,
                    results_path=profile.results_path if record else None, run_info=info,
                    progress=progress)


def eval_config(profile, cfg: RCRLConfig) -> EvalConfig:
    """The evaluation settings of RCRL policies: the profile's, with K = `cfg.eval_k` if set."""
    return dataclasses.replace(profile.eval, k=cfg.eval_k) if cfg.eval_k else profile.eval


def _pass1(result) -> np.ndarray:
    """Per question, the share of correct temperature samples (pass@1, whatever K was)."""
    return result.per_question["n_correct_strict"] / result.metrics["k"]


def _final(profile, run_dir: str | Path):
    """(identity, final checkpoint, its good-label evaluation: cached by `run_rcrl`)."""
    identity = json.loads((Path(run_dir) / "identity.json").read_text())
    cfg = RCRLConfig(**{**identity["rcrl"], "train": SFTConfig(**identity["rcrl"]["train"])})
    ckpt = checkpoint(run_dir, cfg.rounds)
    good = evaluate_label(profile, ckpt, label=GOOD, dense=identity["labels"] == "dense",
                          split=identity["eval_split"], cfg=eval_config(profile, cfg))
    return identity, cfg, ckpt, good


def label_gap(profile, run_dir: str | Path, seed: int = 0, progress: bool = False) -> dict:
    """The final policy of a run prompted with the good and with the bad label on the evaluation
    split: maj@1 (greedy) and pass@1 (share of correct temperature samples) of each, and the paired
    good - bad differences with bootstrap CIs. The good side is the run's own evaluation; the bad
    side samples `cfg.bad_eval_k` per question (pass@1 is unbiased for any K). A model that reads
    its labels scores clearly higher with the good one."""
    from .metrics import paired_difference_ci

    identity, cfg, ckpt, good = _final(profile, run_dir)
    bad = evaluate_label(profile, ckpt, label=BAD, dense=identity["labels"] == "dense", split=identity["eval_split"],
                         cfg=dataclasses.replace(eval_config(profile, cfg), k=cfg.bad_eval_k), progress=progress)
    row = {"run": Path(run_dir).name, "init": identity["init_name"], "labels": identity["labels"],
           "reward": identity["reward"], "split": identity["eval_split"], "k_good": good.metrics["k"],
           "k_bad": bad.metrics["k"]}
    rng = np.random.default_rng(seed)
    for metric, get in (("maj1", lambda r: r.per_question["maj1_strict"].astype(float)), ("pass1", _pass1)):
        a, b = get(good), get(bad)
        ci = paired_difference_ci(a, b, rng)
        row |= {f"{metric}_good": float(a.mean()), f"{metric}_bad": float(b.mean()),
                f"{metric}_gap": ci.mean, f"{metric}_gap_lo": ci.low, f"{metric}_gap_hi": ci.high}
    return row


def gain_over_init(profile, run_dir: str | Path, seed: int = 0) -> dict:
    """maj@1 and pass@1 of the run's final policy (good label) minus its initial model's, paired over
    the questions of the evaluation split, with bootstrap CIs (both evaluations are cached)."""
    from . import study
    from .metrics import paired_difference_ci

    identity, _, _, final = _final(profile, run_dir)
    init = study.evaluate_checkpoint(profile, identity["init"], identity["eval_split"], record=False,
                                     progress=False, run_info={})
    rng = np.random.default_rng(seed)
    row = {"run": Path(run_dir).name, "init": identity["init_name"], "labels": identity["labels"],
           "reward": identity["reward"], "split": identity["eval_split"]}
    for metric, get in (("maj1", lambda r: r.per_question["maj1_strict"].astype(float)), ("pass1", _pass1)):
        a, b = get(final), get(init)
        ci = paired_difference_ci(a, b, rng)
        row |= {f"{metric}_rcrl": float(a.mean()), f"{metric}_init": float(b.mean()),
                f"{metric}_gain": ci.mean, f"{metric}_gain_lo": ci.low, f"{metric}_gain_hi": ci.high}
    return row


# ---- the loop ----------------------------------------------------------------------------------


def round_seed(seed: int, round_: int) -> int:
    """The seed of one round's sampling and fine-tuning, a fixed function of (seed, round)."""
    return int(np.random.SeedSequence([seed, round_, 7]).generate_state(1)[0])


def run_name(init_name: str, labels: str, reward: str, cfg: RCRLConfig, seed: int) -> str:
    """The run folder's name, from what the run is (no timestamps)."""
    return f"rcrl-{init_name}-{labels}-{reward}-k{cfg.k}-seed{seed}"


def checkpoint(run_dir: str | Path, round_: int) -> Path:
    """The policy after round `round_` (>= 1)."""
    return Path(run_dir) / f"round_{round_:02d}"


def load_metrics(run_dir: str | Path) -> list[dict]:
    """The per-round rows of a run (round 0 is the initial model)."""
    path = Path(run_dir) / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def _save_rollouts(path: Path, items: Sequence[Problem], samples: Sequence[Sequence[Sample]]) -> None:
    write_jsonl(path, [{"id": p.id, "samples": [{"text": s.text, "token_ids": list(s.token_ids),
                                                   "finish_reason": s.finish_reason} for s in row]}
                       for p, row in zip(items, samples)])


def _load_rollouts(path: Path) -> list[list[Sample]]:
    # Log-probabilities are not kept: labelling needs the text and the token ids only.
    return [[Sample(s["text"], s["token_ids"], [], s["finish_reason"]) for s in r["samples"]]
            for r in read_jsonl(path)]


def _sample(profile, policy: str | Path, items, cfg: RCRLConfig, seed: int, *, label: str | None,
            dense: bool, progress: bool) -> list[list[Sample]]:
    from . import study

    params = SamplingParams(n=cfg.k, temperature=cfg.temperature, max_new_tokens=profile.eval.max_new_tokens,
                            stop=list(profile.eval.stop), seed=seed)
    sampler = (study.make_sampler(profile, policy, progress=progress) if label is None
               else conditioned_sampler(profile, policy, label, dense, progress))
    return sampler.generate([format_prompt(p.question) for p in items], params)


def _strip_labels(sample: Sample, skip: set[int]) -> Sample:
    """A sample without label tokens (a policy may emit one, though labels are never targets)."""
    if not skip.intersection(sample.token_ids):
        return sample
    keep = [i for i, t in enumerate(sample.token_ids) if t not in skip]
    logprobs = [sample.logprobs[i] for i in keep] if sample.logprobs else []
    return Sample(sample.text, [sample.token_ids[i] for i in keep], logprobs, sample.finish_reason)


def run_rcrl(profile, init: str | Path, *, init_name: str, labels: str = "sparse", reward: str = "sparse",
             seed: int = 0, cfg: RCRLConfig | None = None, reward_fn: RewardFn | None = None, orm=None,
             items: Sequence[Problem] | None = None, eval_split: str | None = "test",
             name: str | None = None, progress: bool = False) -> Path:
    """Return-conditioned RL from the checkpoint `init`; returns the run folder.

    - `init_name`: `sft` or `pretrained` (run name, results table); `labels`: `sparse` or `dense`;
    - `reward`: `sparse`, `dense` or `orm` (`rewards.make_reward`; `orm` is an `ORMScorer`, and
      with dense labels the ORM is read per step); `reward_fn` overrides it with any `RewardFn`;
    - `items`: the training questions (default: the `train` split, first `cfg.n_questions`);
      `eval_split=None` skips the evaluations.

    Run folder `<runs_dir>/rcrl-<init>-<labels>-<reward>-k<K>-seed<seed>/`:
    `round_NN.rollouts.jsonl` (samples), `round_NN.data.jsonl` (labelled completions),
    `round_NN/` (the policy and its evaluations, prompted with the good label), `round_NN.json`
    (the round's row; the round is finished) and `metrics.jsonl` (all rows, round 0 = the init).
    Round 1's rollouts depend on the init only, so runs with other labels or rewards reuse them
    (`<runs_dir>/rcrl-<init>-rollouts/`).
    """
    from transformers import AutoTokenizer

    from . import study
    from .grading import is_correct
    from .models import LoraSettings, load_policy, save_policy

    if labels not in LABEL_MODES:
        raise ValueError(f"unknown label mode {labels!r}; expected one of {', '.join(LABEL_MODES)}")
    cfg = cfg or profile.rcrl
    items = list(items if items is not None else study.problems(profile, "train"))[: cfg.n_questions]
    name = name or run_name(init_name, labels, reward, cfg, seed)
    identity = {"init": str(init), "init_name": init_name, "labels": labels, "reward": reward,
                "rcrl": dataclasses.asdict(cfg), "questions": [p.id for p in items],
                "eval": dataclasses.asdict(profile.eval), "eval_split": eval_split}
    run_dir = make_run_dir(profile.runs_dir, name, identity, seed)
    identity_path = run_dir / "identity.json"
    if identity_path.exists() and json.loads(identity_path.read_text()) != json.loads(json.dumps(identity)):
        raise ValueError(f"{run_dir} holds a run with another configuration; delete it or pass another name")
    atomic_write_json(identity_path, identity)
    if study.is_done(run_dir):
        return run_dir
    study.configure_torch(profile)
    lora = LoraSettings(r=profile.lora_r) if profile.lora_r else None

    def evaluate(path: Path, round_: int, rollouts: int) -> dict:
        info = {"run": name, "algorithm": "rcrl", "init": init_name, "reward": reward, "labels": labels,
                "seed": seed, "rollouts": rollouts, "round": round_}
        if round_ == 0:  # the initial model, without labels (its evaluation is cached next to it)
            m = study.evaluate_checkpoint(profile, path, eval_split, record=False, progress=progress,
                                          run_info={}).metrics
        else:
            m = evaluate_label(profile, path, label=GOOD, dense=labels == "dense", split=eval_split,
                               cfg=eval_config(profile, cfg), run_info=info, record=True,
                               progress=progress).metrics
        return {k: v for k, v in m.items() if k != "pass_curve"} | {
            "pass1_strict": m["pass_curve"][1], "pass_curve": {str(k): v for k, v in m["pass_curve"].items()}}

    def finish_round(row: dict) -> None:
        atomic_write_json(run_dir / f"round_{row['round']:02d}.json", row)
        rows = [json.loads(p.read_text()) for p in sorted(run_dir.glob("round_[0-9][0-9].json"))]
        write_jsonl(run_dir / "metrics.jsonl", rows)

    if not (run_dir / "round_00.json").exists():
        row = {"round": 0, "rollouts": 0, "questions": len(items), "k": cfg.k, "data_size": 0}
        finish_round(row | (evaluate(Path(init), 0, 0) if eval_split else {}))

    rollouts, data = 0, []
    for round_ in range(1, cfg.rounds + 1):
        row_path = run_dir / f"round_{round_:02d}.json"
        data_path = run_dir / f"round_{round_:02d}.data.jsonl"
        ckpt = checkpoint(run_dir, round_)
        seed_r = round_seed(seed, round_)
        rollouts += len(items) * cfg.k
        if row_path.exists():  # finished earlier: only its labelled data is needed
            data += read_jsonl(data_path)
            continue
        timings: dict[str, float] = {}

        # 1. Rollouts: the init's (shared by every run from it) or the last policy's, good-labelled.
        if round_ == 1:
            shared = profile.runs_dir / f"rcrl-{init_name}-rollouts"
            key = json.dumps({"init": str(init), "k": cfg.k, "t": cfg.temperature, "seed": seed,
                              "questions": identity["questions"], "max_new_tokens": profile.eval.max_new_tokens,
                              "stop": list(profile.eval.stop)}, sort_keys=True)
            rollouts_path = shared / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.rollouts.jsonl"
        else:
            rollouts_path = run_dir / f"round_{round_:02d}.rollouts.jsonl"
        if not rollouts_path.exists():
            started = time.perf_counter()
            set_seed(seed_r)
            policy, label = (Path(init), None) if round_ == 1 else (checkpoint(run_dir, round_ - 1), GOOD)
            samples = _sample(profile, policy, items, cfg, seed_r, label=label, dense=labels == "dense",
                              progress=progress)
            _save_rollouts(rollouts_path, items, samples)
            timings["sample_wall_s"] = time.perf_counter() - started
        samples = _load_rollouts(rollouts_path)

        # 2-3. Rewards, then labels (the tokenizer gets the label tokens first).
        tokenizer = AutoTokenizer.from_pretrained(str(init))
        ids = add_label_tokens(None, tokenizer)
        flat = [_strip_labels(s, set(ids)) for row in samples for s in row]
        flat_items = [p for p, row in zip(items, samples) for _ in row]
        if reward_fn is None:
            extra = {"per_step": True} if reward == "orm" and labels == "dense" else {}
            reward_fn = make_reward(reward, tokenizer=tokenizer, orm=orm, **extra)
        rewards = reward_fn(flat_items, flat)
        new = []
        for p, s, r in zip(flat_items, flat, rewards):
            if not s.token_ids:
                continue
            completion, oks = label_sample(s.token_ids, r, labels, ids, cfg, cumulative=reward == "orm")
            new.append({"id": p.id, "ids": completion, "labels": oks, "total": r.total,
                        "correct": is_correct(s.text, p.answer, "strict")})
        write_jsonl(data_path, new)
        data += new

        # 4. Fine-tune the initial model on all rounds' labelled data (loss off prompt and labels).
        if not study.is_done(ckpt):
            started = time.perf_counter()
            model, tokenizer = load_policy(str(init), lora=lora, load_in_4bit=profile.load_in_4bit)
            ids = add_label_tokens(model, tokenizer, seed=seed)
            prompts = {p.id: format_prompt(p.question) for p in items}
            train_cfg = dataclasses.replace(cfg.train, seed=seed_r)
            encoded = [encode_labelled(tokenizer, prompts[d["id"]], d["ids"], train_cfg.max_length, ids)
                       for d in data]
            train_dir = run_dir / f"train_{round_:02d}"
            (train_dir / "metrics.jsonl").unlink(missing_ok=True)
            finetune(model, tokenizer, encoded, train_cfg, out_dir=train_dir, progress=progress)
            save_policy(model, tokenizer, ckpt)
            study.mark_done(ckpt)
            del model
            timings["train_wall_s"] = time.perf_counter() - started
        losses = [r["loss"] for r in read_jsonl(run_dir / f"train_{round_:02d}" / "metrics.jsonl")]

        # 5. The round's row: rollouts so far, label statistics, the good-labelled policy's metrics.
        step_labels = [ok for d in new for ok in d["labels"]]
        row = {"round": round_, "rollouts": rollouts, "questions": len(items), "k": cfg.k,
               "train_sample_acc": float(np.mean([d["correct"] for d in new])),
               "good_solutions": float(np.mean([all(d["labels"]) for d in new])),
               "good_labels": float(np.mean(step_labels)), "data_size": len(data),
               "train_loss": losses[-1] if losses else None}
        if eval_split:
            started = time.perf_counter()
            row |= evaluate(ckpt, round_, rollouts)
            timings["eval_wall_s"] = time.perf_counter() - started
        finish_round(row | timings)

    study.mark_done(run_dir)
    return run_dir
