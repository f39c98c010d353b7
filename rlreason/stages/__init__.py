"""The study's stages, wired from a profile: base, SFT, ORM, EI, PPO, RCRL and evaluation.

Each algorithm's loop lives in its own file (`ei.py`, `ppo.py`, `rcrl.py`, `orm/train.py`) and
receives what it needs: policy paths, problems, a reward function, its config, an open `runs.Run`,
a sampler factory and an evaluation callback. `stages/<algorithm>.py` is the one place that reads
a `Profile` to build those arguments. Every stage writes into `profile.runs_dir/<name>/`
(`config.json` with config, seed, git hash and machine; `metrics.jsonl`; checkpoints), opened with
`runs.open_run` (one behaviour when a folder was written under another config), resumes an
interrupted run, and is reused when finished, so notebooks re-run cheaply and later notebooks reuse
earlier stages. Every stage returns a `StageResult`.
"""
from .core import (
    StageResult,
    base_prefix,
    evaluate,
    few_shot_prefix,
    is_base,
    lora,
    make_sampler,
    problems,
    reward_fn,
    rollout_params,
    setup,
    sft_examples,
    stage_rows,
    valid_paths,
    world,
)
from .ei import ei, ei_finished
from .orm import orm, orm_scorer
from .ppo import PPO_EVAL_KEYS, ppo, start_rewards
from .rcrl import evaluate_label, rcrl, rcrl_bad_label, rcrl_label_likelihood
from .sft import (
    base,
    checkpoint,
    init_checkpoint,
    sft,
    sft_checkpoint,
    sft_control,
    sft_sweep,
    train_fit,
)

__all__ = ["PPO_EVAL_KEYS", "StageResult", "base", "base_prefix", "checkpoint", "ei", "ei_finished", "evaluate",
           "evaluate_label", "few_shot_prefix", "init_checkpoint", "is_base", "lora", "make_sampler",
           "orm", "orm_scorer", "ppo", "problems", "rcrl", "rcrl_bad_label", "rcrl_label_likelihood",
           "reward_fn", "rollout_params", "setup", "sft", "sft_checkpoint", "sft_control",
           "sft_examples", "sft_sweep", "stage_rows", "start_rewards", "train_fit", "valid_paths",
           "world"]
