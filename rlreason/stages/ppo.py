"""PPO from a profile: the reward, the evaluation every `eval_every` updates, the result."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import PPOConfig
from ..evaluation import EvalResult, RunInfo
from ..ppo import train_ppo
from ..profiles import Profile
from ..runs import open_run
from .core import StageResult, evaluate, lora, make_sampler, problems, reward_fn, setup, stage_rows
from .sft import init_checkpoint

PPO_EVAL_KEYS = ("maj1_strict", "maj1_flexible", "majK_strict", "majK_flexible", "rerankK_strict",
                 "rerankK_flexible", "passK_strict", "passK_flexible", "maj1_strict_lo",
                 "maj1_strict_hi", "distinct_correct", "frac_multi_correct")
"""The test metrics copied into an evaluated update's row of PPO's metrics.jsonl (as test_<key>)."""


def ppo(profile: Profile, init: str = "sft", seed: int = 0, reward: str = "sparse",
        cfg: PPOConfig | None = None, *, orm=None, scorer=None, recompute: bool = False,
        progress: bool = True) -> StageResult:
    """PPO from the SFT checkpoint (`init="sft"`) or the pretrained base (`"pretrained"`) with the
    `sparse`, `dense` or `orm` reward, evaluated on the test set every `eval_every` updates and
    at the end (rows go to the results table with `algorithm="ppo"` and the cumulative rollouts).

    `orm`: an `orm.ORMScorer`, needed by the `orm` reward; `scorer`: the reranker of the
    evaluations' rerank@K (an `ORMScorer` or its `as_scorer()`; None: no rerank@K).
    """
    cfg = cfg or profile.ppo
    init_path = init_checkpoint(profile, init, seed)
    run = open_run(profile.runs_dir, f"ppo-{init}-{reward}-seed{seed}",
                   {"init": str(init_path), "reward": reward, "ppo": cfg}, seed, recompute=recompute)
    setup(profile)
    rewards = reward_fn(reward, init_path, orm, profile=profile)
    if hasattr(scorer, "as_scorer"):  # an ORMScorer (it pickles into worker processes as its path)
        scorer = scorer.as_scorer()
    info = RunInfo(run=run.name, algorithm="ppo", init=init, reward=reward, seed=seed)
    final_update = cfg.updates
    final_checkpoint = run.dir / f"update_{final_update:04d}"
    latest: dict[int, EvalResult] = {}

    def evaluate_update(path: Path, at: dict) -> dict:
        res = latest[at["update"]] = evaluate(
            profile, path, "test", scorer=scorer, progress=False, record=at.get("record", True),
            info=dataclasses.replace(info, rollouts=at["rollouts"], update=at["update"]))
        return {f"test_{k}": res.metrics[k] for k in PPO_EVAL_KEYS if k in res.metrics}

    if run.done and final_checkpoint.exists():
        rows = stage_rows(run.dir)
    else:
        rows = train_ppo(init_path, problems(profile, "train"), rewards, cfg, run,
                         lora=lora(profile), load_in_4bit=profile.load_in_4bit,
                         evaluate=evaluate_update, progress=progress,
                         # vLLM serves the LoRA policy as an adapter; otherwise in-process HF.
                         rollout_sampler=make_sampler(profile, progress=False)
                         if profile.sampler == "vllm" and profile.lora is not None else None)
        run.mark_done()
    final = latest.get(final_update) or evaluate(
        profile, final_checkpoint, "test", scorer=scorer, progress=False,
        info=dataclasses.replace(info, rollouts=rows[-1]["rollouts"], update=final_update))
    return StageResult(run.name, "ppo", init, reward, seed, run.dir, final_checkpoint, rows, final,
                       identity={"init": str(init_path), "reward": reward,
                                 "ppo": dataclasses.asdict(cfg)})
