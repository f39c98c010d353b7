"""Return-conditioned RL from a profile: labels, the label-conditioned evaluations, the result."""
from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer

from .. import rcrl as rcrl_loop
from ..config import EvalConfig, RCRLConfig, SFTConfig
from ..evaluation import EvalResult, RunInfo
from ..grading import is_correct
from ..io import atomic_write_json
from ..models import load_policy
from ..problems import Problem, format_completion
from ..profiles import Profile
from ..rcrl_decoding import BAD, GOOD, ConditionedSampler, conditioned, label_ids, strip_labels
from ..rcrl_labels import check_adapter
from ..rcrl_likelihood import label_likelihoods
from ..rewards import make_reward
from ..runs import open_run
from .core import (
    StageResult,
    evaluate,
    lora,
    make_sampler,
    problems,
    rollout_params,
    setup,
    valid_paths,
)
from .orm import orm_scorer
from .sft import init_checkpoint

RCRL_LABEL_MODES = ("sparse", "dense")


def rcrl_run_name(init: str, labels: str, reward: str, cfg: RCRLConfig, seed: int) -> str:
    """The RCRL run folder's name, from what the run is (no timestamps)."""
    return f"rcrl-{init}-{labels}-{reward}-k{cfg.k}-seed{seed}"


def rcrl_shared_rollouts(profile: Profile, init: str) -> Path:
    """Where round 1's rollouts from `init` are kept: they depend on the init only, so RCRL runs
    with other labels or rewards reuse them (file names hash what they depend on)."""
    return profile.runs_dir / f"rcrl-{init}-rollouts"


def rcrl_eval_config(profile: Profile, cfg: RCRLConfig) -> EvalConfig:
    """The evaluation settings of RCRL policies: the profile's, with K = `cfg.eval_k` if set."""
    return dataclasses.replace(profile.eval, k=cfg.eval_k) if cfg.eval_k else profile.eval


def conditioned_sampler(profile: Profile, checkpoint: str | Path, label: str = GOOD, dense: bool = False,
                        progress: bool = False) -> ConditionedSampler:
    """The profile's sampler for an RCRL checkpoint, prompted with `label`."""
    return conditioned(make_sampler(profile, progress=progress)(checkpoint), checkpoint, label, dense)


def evaluate_label(profile: Profile, checkpoint: str | Path, *, label: str = GOOD, dense: bool = False,
                   split: str = "test", cfg: EvalConfig | None = None, info: RunInfo | None = None,
                   record: bool = False, progress: bool = False) -> EvalResult:
    """`evaluate` of an RCRL checkpoint prompted with `label` (rollouts saved next to it as
    `eval-<split>-<good|bad>-rollouts.jsonl` and reused while `cfg` is the same)."""
    tag = label.strip("<|>")
    return evaluate(profile, checkpoint, split, info=dataclasses.replace(info or RunInfo(), label=tag),
                    cfg=cfg, record=record, progress=progress, name=f"{split}-{tag}",
                    sampler=lambda: conditioned_sampler(profile, checkpoint, label, dense, progress))


def rcrl_identity(profile: Profile, init_path: str | Path, init: str, labels: str, reward: str,
                  cfg: RCRLConfig, items: Sequence[Problem], eval_split: str | None) -> dict:
    """What an RCRL run computes (its folder is reused only under the same identity)."""
    return {"init": str(init_path), "init_name": init, "labels": labels, "reward": reward,
            "rcrl": dataclasses.asdict(cfg), "questions": [p.id for p in items],
            "eval": dataclasses.asdict(profile.eval), "eval_split": eval_split}


def rcrl(profile: Profile, init: str = "sft", seed: int = 0, labels: str = "sparse",
         reward: str = "sparse", cfg: RCRLConfig | None = None, *, init_path: str | Path | None = None,
         items: Sequence[Problem] | None = None, reward_fn=None, orm=None,
         eval_split: str | None = "test", name: str | None = None, recompute: bool = False,
         progress: bool = False) -> StageResult:
    """Return-conditioned RL from `init` with `labels` (`sparse`, `dense`) from `reward`.

    `init_path` overrides the checkpoint `init` names; `items` the training questions (default:
    the `train` split, first `cfg.n_questions`); `reward_fn` any `RewardFn` (its tokenizer must have
    the labels); `orm` the ORM scorer of the orm reward (default: the profile's, built if missing);
    `eval_split=None` skips the evaluations. `final` is the last policy's good-label evaluation.
    """
    if labels not in RCRL_LABEL_MODES:
        raise ValueError(f"unknown label mode {labels!r}; expected one of {', '.join(RCRL_LABEL_MODES)}")
    cfg = cfg or profile.rcrl
    init_path = Path(init_path or init_checkpoint(profile, init, seed))
    items = list(items if items is not None else problems(profile, "train"))[: cfg.n_questions]
    name = name or rcrl_run_name(init, labels, reward, cfg, seed)
    identity = rcrl_identity(profile, init_path, init, labels, reward, cfg, items, eval_split)
    run = open_run(profile.runs_dir, name, identity, seed, recompute=recompute)
    atomic_write_json(run.dir / "identity.json", identity)
    dense = labels == "dense"
    if not run.done:
        setup(profile)
        if reward_fn is None:  # the labels' tokenizer: step splitting sees the same vocabulary
            tokenizer = AutoTokenizer.from_pretrained(str(init_path))
            rcrl_loop.add_label_tokens(None, tokenizer,
                                       adapters=rcrl_loop.trains_adapters(init_path, lora(profile)))
            if reward == "orm" and orm is None:
                orm = orm_scorer(profile, seed)
            extra = {"per_step": True} if reward == "orm" and dense else {}
            if reward == "dense_any":
                extra["valid_paths"] = valid_paths(profile)
            reward_fn = make_reward(reward, tokenizer=tokenizer, orm=orm, **extra)

    def evaluate_round(path: Path, info: dict) -> dict:
        if info["round"] == 0:  # the initial model, without labels (its evaluation is cached next to it)
            m = evaluate(profile, path, eval_split, record=False, progress=progress).metrics
        else:
            m = evaluate_label(profile, path, label=GOOD, dense=dense, split=eval_split,
                               cfg=rcrl_eval_config(profile, cfg), record=info["record"], progress=progress,
                               info=RunInfo(run=name, algorithm="rcrl", init=init, reward=reward,
                                            labels=labels, seed=seed, rollouts=info["rollouts"],
                                            round=info["round"])).metrics
        return {k: v for k, v in m.items() if k != "pass_curve"} | {
            "pass1_strict": m["pass_curve"][1], "pass_curve": {str(k): v for k, v in m["pass_curve"].items()}}

    rows = rcrl_loop.train_rcrl(
        init_path, items, reward_fn, cfg, run, labels=labels,
        make_sampler=make_sampler(profile, progress=progress), params=rollout_params(profile),
        cumulative=reward == "orm", evaluate=evaluate_round if eval_split else None, lora=lora(profile),
        load_in_4bit=profile.load_in_4bit, shared_rollouts_dir=rcrl_shared_rollouts(profile, init),
        progress=progress)
    ckpt = rcrl_loop.checkpoint(run.dir, cfg.rounds)
    final = evaluate_label(profile, ckpt, label=GOOD, dense=dense, split=eval_split,
                           cfg=rcrl_eval_config(profile, cfg)) if eval_split else None
    return StageResult(name=name, algorithm="rcrl", init=init, reward=reward, seed=seed, run_dir=run.dir,
                       checkpoint=ckpt, rows=rows, final=final, identity=identity)


def run_config(identity: dict) -> RCRLConfig:
    """The `RCRLConfig` a run was trained with, from its identity (`rcrl_identity`)."""
    return RCRLConfig(**{**identity["rcrl"], "train": SFTConfig(**identity["rcrl"]["train"])})


def rcrl_bad_label(profile: Profile, result: StageResult, progress: bool = False) -> EvalResult:
    """The final policy of an RCRL run prompted with the bad label on its evaluation split, with
    `cfg.bad_eval_k` samples per question (pass@1 is unbiased for any K): the other half of
    `label_gap` (`result.final` is the good half)."""
    identity = result.identity
    cfg = run_config(identity)
    return evaluate_label(profile, result.checkpoint, label=BAD, dense=identity["labels"] == "dense",
                          split=identity["eval_split"],
                          cfg=dataclasses.replace(rcrl_eval_config(profile, cfg), k=cfg.bad_eval_k),
                          progress=progress)


def _subsample(rows: list, limit: int | None, rng: random.Random) -> list:
    """At most `limit` of `rows` (None: all), drawn without replacement, in their order."""
    if limit is None or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def rcrl_label_likelihood(profile: Profile, result: StageResult, items: Sequence[Problem] | None = None,
                          references: Sequence[Problem] | None = None, *, max_per_group: int | None = 512,
                          batch_size: int = 16, recompute: bool = False) -> list[dict]:
    """Does the final policy of an RCRL run read its label? Per solution whose correctness is known,
    its teacher-forced log-likelihood under the good and under the bad label (`rcrl_likelihood`).

    Solutions: the run's last-round rollouts (its training data), graded strictly, and the reference
    solutions of `references` (default: the test split; held out), formatted as the SFT data; at
    most `max_per_group` each of correct rollouts, wrong rollouts and references (a seeded draw).
    `items`: the run's training questions when not the train split. One row per solution: `id`,
    `sample`, `source` (rollout, reference), `correct`, `logp_good`, `logp_bad`, `n_tokens`, `gap`
    and `gap_per_token`; cached in the run folder (`label_likelihood.json`) under its settings.
    """
    if max_per_group is not None and max_per_group < 0:
        raise ValueError(f"max_per_group must be None or >= 0, got {max_per_group}")
    identity, cfg = result.identity, run_config(result.identity)
    path = rcrl_loop.rollouts_file(result.run_dir, cfg.rounds, identity["init"], identity["questions"], cfg,
                                   result.seed, rollout_params(profile), rcrl_shared_rollouts(profile, result.init))
    if not path.exists():
        raise FileNotFoundError(f"no rollouts of round {cfg.rounds} at {path}: run the RCRL stage first")
    refs = list(references if references is not None else problems(profile, "test"))
    cache = Path(result.run_dir) / "label_likelihood.json"
    key = {"checkpoint": str(result.checkpoint), "rollouts": str(path), "references": [p.id for p in refs],
           "max_per_group": max_per_group, "max_length": cfg.train.max_length, "seed": result.seed}
    if cache.exists() and not recompute:
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["rows"]
    by_id = {p.id: p for p in (items if items is not None else problems(profile, "train"))}
    check_adapter(result.checkpoint)  # an adapter: else loading could resize the labels away without an error
    model, tokenizer = load_policy(str(result.checkpoint), trainable=False)
    skip = set(label_ids(tokenizer))
    rollouts = {True: [], False: []}
    for qid, samples in rcrl_loop.load_rollouts(path):
        if qid not in by_id:
            raise ValueError(f"rollout question {qid!r} is not among the {len(by_id)} training items; pass the "
                             "run's own `items`")
        problem = by_id[qid]
        for j, sample in enumerate(strip_labels(s, skip) for s in samples):
            if sample.token_ids:  # as in training: empty samples are not labelled
                ok = is_correct(sample.text, problem.answer, "strict")
                rollouts[ok].append((problem, j, list(sample.token_ids), ok))
    rng = random.Random(result.seed)
    solutions = [(row, "rollout") for ok in (True, False) for row in _subsample(rollouts[ok], max_per_group, rng)]
    for p in _subsample(refs, max_per_group, rng):  # formatted as the SFT data formats them
        text = format_completion(p.solution)
        solutions.append(((p, 0, text, is_correct(text, p.answer, "strict")), "reference"))
    pairs = [(p, completion) for (p, _, completion, _), _ in solutions]
    scores = label_likelihoods(model, tokenizer, pairs, identity["labels"], max_length=cfg.train.max_length,
                               batch_size=batch_size) if pairs else []
    del model
    rows = [{"id": p.id, "sample": j, "source": source, "correct": ok, "logp_good": s.logp_good,
             "logp_bad": s.logp_bad, "n_tokens": s.n_tokens, "gap": s.gap, "gap_per_token": s.gap_per_token}
            for ((p, j, _, ok), source), s in zip(solutions, scores)]
    atomic_write_json(cache, {"key": key, "rows": rows})
    return rows
