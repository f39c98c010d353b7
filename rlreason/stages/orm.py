"""The outcome reward model, built only when a reward or a reranker asks for it."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..io import atomic_write_json
from ..orm import ORMScorer, collect_orm_data, load_orm_data, save_orm_data, train_orm
from ..profiles import Profile
from ..runs import open_run
from .core import StageResult, make_sampler, problems, setup, stage_rows
from .sft import sft_checkpoint


def orm(profile: Profile, seed: int = 0, recompute: bool = False,
        progress: bool = True) -> StageResult:
    """The profile's outcome reward model (`runs_dir/orm-seed<seed>/final`), trained if missing.

    Samples `profile.orm.samples_per_question` solutions per training question from the final SFT
    checkpoint, labels and splits them (`data.jsonl`), and trains the ORM from the same checkpoint.
    Built only when a reward or a reranker asks for it.
    """
    sft_path = sft_checkpoint(profile, seed)
    cfg = dataclasses.replace(profile.orm, train=dataclasses.replace(profile.orm.train, seed=seed))
    run = open_run(profile.runs_dir, f"orm-seed{seed}", {"init": str(sft_path), "orm": cfg}, seed,
                   recompute=recompute)
    final = run.dir / "final"
    if not run.done:
        setup(profile)
        data_path = run.dir / "data.jsonl"
        if data_path.exists():  # same identity: the data of an interrupted run is reused
            data = load_orm_data(data_path)
        else:
            started = time.perf_counter()
            sampler = make_sampler(profile, progress=progress)(sft_path)
            data = collect_orm_data(sampler, problems(profile, "train"), cfg, seed)
            del sampler
            save_orm_data(data, data_path)
            atomic_write_json(run.dir / "data.json", {"wall_s": time.perf_counter() - started})
        final = train_orm(sft_path, data, cfg, run.dir, progress=progress)
        run.mark_done()
    return StageResult(run.name, "orm", "sft", "none", seed, run.dir, Path(final), stage_rows(run.dir))


def orm_scorer(profile: Profile, seed: int = 0):
    """The profile's trained ORM as an `orm.ORMScorer` (rerank@K, the ORM reward), trained if
    missing."""
    return ORMScorer(orm(profile, seed).checkpoint)
