"""Expert Iteration from a profile: run identity, reward and filter threshold, evaluations.

Data-parallel under `accelerate launch` (`ei.train_ei`): rank 0 alone opens the run folder, samples,
evaluates and writes; every rank fine-tunes."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from .. import ei as ei_loop
from ..config import EIConfig, SFTConfig
from ..distributed import run_on_main
from ..evaluation import RunInfo
from ..io import atomic_write_json
from ..problems import Problem
from ..profiles import Profile
from ..runs import open_run
from .core import (
    StageResult,
    evaluate,
    lora,
    make_sampler,
    problems,
    rollout_params,
    setup,
)
from .core import reward_fn as make_reward_fn
from .orm import orm_scorer
from .sft import base, init_checkpoint

EI_NOT_IN_IDENTITY = ("rounds", "evaluate_every", "k_sweep", "sweep_rounds", "thresholds",
                      "train_eval_questions", "k_pretrained")
"""EIConfig fields that do not change what any round computes: a run folder is shared across them,
so a run can be extended by more rounds and a shorter run reads the first rounds of a longer one.
The thresholds of the other rewards do not either (the run's own is in its identity), nor does the
greedy check on training questions (a diagnostic, like the evaluation schedule); `k_pretrained` is
resolved into `k` for the pretrained start."""

STUDENT_NAMES = {"init": "", "last": "-continue", "pretrained": "-frombase"}
"""The run-name part of each `EIConfig.student`."""


def ei_config(cfg: EIConfig, init: str) -> EIConfig:
    """`cfg` as run from `init`: `k_pretrained` becomes K for the pretrained start, and
    `include_references=None` is decided: the references are mixed in for the SFT start retrained
    from the base (`student="pretrained"`: D_0 is then the SFT data), not otherwise."""
    if init == "pretrained" and cfg.k_pretrained is not None:
        cfg = dataclasses.replace(cfg, k=cfg.k_pretrained)
    if cfg.include_references is not None:
        return cfg
    refs = cfg.student == "pretrained" and init == "sft"
    return dataclasses.replace(cfg, include_references=refs)


def ei_run_name(init: str, reward: str, cfg: EIConfig, seed: int) -> str:
    """The EI run folder's name, from what the run is (no timestamps)."""
    extra = STUDENT_NAMES[cfg.student]
    extra += "-refs" if cfg.include_references else ""
    extra += "-calccheck" if cfg.drop_wrong_calculations else ""
    extra += f"-cap{cfg.max_per_question}" if cfg.max_per_question else ""
    return f"ei-{init}-{reward}-k{cfg.k}{extra}-seed{seed}"


def ei_threshold(cfg: EIConfig, reward: str) -> float | str:
    """The filter threshold of `reward` in `cfg`; a missing or bad one fails here, before sampling."""
    if reward not in cfg.thresholds:
        raise ValueError(f"no filter threshold for reward {reward!r} in EIConfig.thresholds {cfg.thresholds}")
    spec = cfg.thresholds[reward]
    ei_loop.round_threshold(spec, [0.0])
    return spec


def ei_identity(profile: Profile, init_path: str | Path, init: str, reward: str, cfg: EIConfig,
                items: Sequence[Problem], eval_split: str | None,
                student: tuple[Path, SFTConfig] | None = None) -> dict:
    """What an EI run computes (its folder is reused only under the same identity); `student`:
    the base and recipe that `student="pretrained"` retrains."""
    ei_fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in EI_NOT_IN_IDENTITY}
    # The runs written before `student` and the calculation check keep their identity (and folder).
    if ei_fields["student"] != "pretrained":
        ei_fields["restart_from_init"] = ei_fields.pop("student") == "init"
    if not ei_fields["drop_wrong_calculations"]:
        del ei_fields["drop_wrong_calculations"]
    identity = {"init": str(init_path), "init_name": init, "reward": reward,
                "threshold": cfg.thresholds[reward], "ei": ei_fields,
                "questions": [p.id for p in items], "eval": dataclasses.asdict(profile.eval),
                "eval_split": eval_split}
    if cfg.student == "pretrained" and student is not None:
        identity["student"] = {"init": str(student[0]), "sft": dataclasses.asdict(student[1])}
    return identity


def flat_metrics(metrics: dict) -> dict:
    """An evaluation's metrics as a round row holds them (pass_curve keys as strings)."""
    return {k: v for k, v in metrics.items() if k != "pass_curve"} | {
        "pass_curve": {str(k): v for k, v in metrics["pass_curve"].items()}}


def ei_finished(profile: Profile, init: str = "sft", seed: int = 0, reward: str = "sparse") -> bool:
    """Whether `ei(profile, init, seed, reward)` with the profile's config has finished its last
    round, so that reading it computes nothing."""
    cfg = ei_config(profile.ei, init)
    return ei_loop.round_row(profile.runs_dir / ei_run_name(init, reward, cfg, seed), cfg.rounds).exists()


def ei(profile: Profile, init: str = "sft", seed: int = 0, reward: str = "sparse",
       cfg: EIConfig | None = None, *, init_path: str | Path | None = None,
       items: Sequence[Problem] | None = None, reward_fn=None, orm=None, scorer=None,
       eval_split: str | None = "test", name: str | None = None, recompute: bool = False,
       callback=None, progress: bool = False, student_init: str | Path | None = None,
       student_cfg: SFTConfig | None = None, variant: str | None = None) -> StageResult:
    """Expert Iteration from `init` (`sft` or `pretrained`) with `reward` (`sparse`, `dense`, `orm`).

    - `init_path` overrides the checkpoint `init` names; `items` the training questions (default:
      the `train` split, first `cfg.n_questions`); `reward_fn` any `RewardFn` instead of `reward`'s;
    - `orm`: the ORM scorer of the orm reward (default: the profile's, built if missing);
      `scorer`: the ORM's scorer for rerank@K in the evaluations (None: no rerank@K);
    - `eval_split=None` skips the test-set evaluations; `callback`: see `ei.train_ei`;
    - with `cfg.student="pretrained"` each round retrains `student_init` (default: the profile's
      pretrained base) with `student_cfg` (default: the profile's SFT recipe);
    - `variant` names another reading of EI in the results rows (`restart`), never a main run.
    """
    cfg = ei_config(cfg or profile.ei, init)
    threshold = ei_threshold(cfg, reward)
    init_path = Path(init_path or init_checkpoint(profile, init, seed))
    student = None
    if cfg.student == "pretrained":
        student = (Path(student_init or base(profile, seed)), student_cfg or profile.sft)
    items = list(items if items is not None else problems(profile, "train"))[: cfg.n_questions]
    name = name or ei_run_name(init, reward, cfg, seed)
    identity = ei_identity(profile, init_path, init, reward, cfg, items, eval_split, student)
    run = run_on_main(open_run, profile.runs_dir, name, identity, seed, recompute=recompute)
    run_on_main(atomic_write_json, run.dir / "identity.json", identity)
    setup(profile)
    if reward_fn is None:
        if reward == "orm" and orm is None:
            orm = orm_scorer(profile, seed)
        reward_fn = make_reward_fn(reward, init_path, orm, profile=profile)

    def evaluate_round(path: Path, info: dict) -> dict:
        res = evaluate(profile, path, eval_split, scorer=scorer, record=info["record"], progress=progress,
                       info=RunInfo(run=name, algorithm="ei", init=init, reward=reward, seed=seed,
                                    rollouts=info["rollouts"], round=info["round"], wall_s=info["wall_s"],
                                    variant=variant))
        return flat_metrics(res.metrics)

    rows = ei_loop.train_ei(
        init_path, items, reward_fn, cfg, run, make_sampler=make_sampler(profile, progress=progress),
        params=rollout_params(profile), threshold=threshold,
        evaluate=evaluate_round if eval_split else None, lora=lora(profile),
        load_in_4bit=profile.load_in_4bit, callback=callback, progress=progress,
        student_init=student[0] if student else None, student_cfg=student[1] if student else None)
    ckpt = ei_loop.checkpoint(run.dir, cfg.rounds)
    # The last round's evaluation, read back from its cached rollouts (no new row in results.jsonl).
    final = evaluate(profile, ckpt, eval_split, scorer=scorer, record=False, progress=progress) \
        if eval_split else None
    return StageResult(name=name, algorithm="ei", init=init, reward=reward, seed=seed, run_dir=run.dir,
                       checkpoint=ckpt, rows=rows, final=final, identity=identity)
