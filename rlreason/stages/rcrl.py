"""Return-conditioned RL from a profile: labels, the label-conditioned evaluations, the result."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer

from .. import rcrl as rcrl_loop
from ..config import EvalConfig, RCRLConfig, SFTConfig
from ..evaluation import EvalResult, RunInfo
from ..io import atomic_write_json
from ..problems import Problem
from ..profiles import Profile
from ..rcrl_decoding import BAD, GOOD, ConditionedSampler, conditioned
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
            rcrl_loop.add_label_tokens(None, tokenizer)
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


def rcrl_bad_label(profile: Profile, result: StageResult, progress: bool = False) -> EvalResult:
    """The final policy of an RCRL run prompted with the bad label on its evaluation split, with
    `cfg.bad_eval_k` samples per question (pass@1 is unbiased for any K): the other half of
    `label_gap` (`result.final` is the good half)."""
    identity = result.identity
    cfg = RCRLConfig(**{**identity["rcrl"], "train": SFTConfig(**identity["rcrl"]["train"])})
    return evaluate_label(profile, result.checkpoint, label=BAD, dense=identity["labels"] == "dense",
                          split=identity["eval_split"],
                          cfg=dataclasses.replace(rcrl_eval_config(profile, cfg), k=cfg.bad_eval_k),
                          progress=progress)
