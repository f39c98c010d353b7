"""Which rollouts a PPO update draws: its training questions (seeded passes over the training set),
their prompts and the sampling settings, as pure functions of (seed, update), so that `train_ppo`
and `stages.start_rewards` (the starting policy replayed on the same questions) draw alike."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import PPOConfig
from .problems import Problem, format_prompt
from .sampling import SamplingParams


def sub_seed(seed: int, *keys: int) -> int:
    """A deterministic 62-bit seed from the run's seed and some integers (update, epoch...)."""
    out = seed
    for k in keys:
        out = (out * 1_000_003 + k + 1) % (2**62)
    return out


def questions_for_update(n_problems: int, per_update: int, update: int, seed: int) -> list[int]:
    """Question indices of an update (1-based): passes over the training set, each in a fresh
    seeded order, cut into consecutive chunks of `per_update`."""
    out, start = [], (update - 1) * per_update
    while len(out) < per_update:
        epoch, offset = divmod(start + len(out), n_problems)
        order = torch.randperm(n_problems, generator=torch.Generator().manual_seed(sub_seed(seed, 7, epoch)))
        out.extend(order[offset : offset + per_update - len(out)].tolist())
    return out


def rollout_request(problems: Sequence[Problem], cfg: PPOConfig, update: int,
                    seed: int) -> tuple[list[int], list[str], SamplingParams]:
    """An update's rollouts (1-based): its question indices, their prompts and the sampling
    settings (temperature 1, no top-p, seeded by the update); `stages.start_rewards` replays them."""
    qs = questions_for_update(len(problems), cfg.questions_per_update, update, seed)
    return qs, [format_prompt(problems[q].question) for q in qs], SamplingParams(
        n=cfg.samples_per_question, temperature=1.0, max_new_tokens=cfg.max_new_tokens,
        stop=list(cfg.stop), seed=sub_seed(seed, 1, update))
