"""The outcome reward model, built only when a reward or a reranker asks for it."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..config import ORMConfig
from ..io import atomic_write_json
from ..orm import (
    ORMExample,
    ORMScorer,
    collect_orm_data,
    generator_seed,
    load_orm_data,
    save_orm_data,
    train_orm,
)
from ..profiles import Profile
from ..runs import open_run
from .core import StageResult, make_sampler, problems, setup, stage_rows
from .sft import checkpoint, sft

_DEFAULTS = ORMConfig()
NEW_FIELDS = ("generators", "validation", "early_stopping_patience")
"""ORMConfig fields that join a run's identity only away from their defaults, so that an ORM
trained before they existed keeps its folder."""


def orm_run_name(cfg: ORMConfig, seed: int) -> str:
    """The ORM run folder's name: `orm-seed<seed>`, with the generators, dev validation and early
    stopping named when they are not the defaults (so such ORMs sit beside the default one)."""
    extra = ""
    if cfg.generators != _DEFAULTS.generators:
        extra += "-gen-" + "-".join(g.replace("_", "") for g in cfg.generators)
    extra += "-dev" if cfg.validation == "dev" else ""
    extra += f"-es{cfg.early_stopping_patience}" if cfg.early_stopping_patience else ""
    return f"orm{extra}-seed{seed}"


def generator_checkpoints(sft_run: StageResult, cfg: ORMConfig) -> dict[str, Path]:
    """The SFT checkpoint of each of `cfg.generators`: `final` (the SFT model) or `epoch_NN`."""
    out = {}
    for name in cfg.generators:
        if name == "final":
            out[name] = sft_run.checkpoint
            continue
        out[name] = checkpoint(sft_run.run_dir, int(name[6:]))
        if not out[name].is_dir():
            raise FileNotFoundError(f"ORM generator {name!r}: no SFT checkpoint {out[name]} (SFT "
                                    "writes one per epoch with save_every_epoch)")
    if len({p.resolve() for p in out.values()}) < len(out):
        raise ValueError(f"ORM generators {cfg.generators} name one checkpoint twice: {out}")
    return out


def orm_identity(init: Path, cfg: ORMConfig, generators: dict[str, Path]) -> dict:
    """What an ORM run computes (its folder is reused only under the same identity)."""
    fields = dataclasses.asdict(cfg)
    for name in NEW_FIELDS:
        if fields[name] == dataclasses.asdict(_DEFAULTS)[name]:
            del fields[name]
    identity = {"init": str(init), "orm": fields}
    if cfg.generators != _DEFAULTS.generators:
        identity["generators"] = {name: str(path) for name, path in generators.items()}
    return identity


def collect(profile: Profile, cfg: ORMConfig, generators: dict[str, Path], seed: int,
            progress: bool = True) -> list[ORMExample]:
    """The ORM's labelled samples: every generator samples the training questions (its own seed,
    `orm.generator_seed`), and with `validation="dev"` also the whole dev split, as `val`."""
    train_items = problems(profile, "train")
    dev_items = problems(profile, "dev") if cfg.validation == "dev" else []
    data: list[ORMExample] = []
    for name, path in generators.items():
        sampler = make_sampler(profile, progress=progress)(path)
        split = "train" if cfg.validation == "dev" else None
        data += collect_orm_data(sampler, train_items, cfg, seed, generator=name, split=split,
                                 sample_seed=generator_seed(seed, name))
        if dev_items:
            data += collect_orm_data(sampler, dev_items, dataclasses.replace(cfg, max_questions=None),
                                     seed, generator=name, split="val",
                                     sample_seed=generator_seed(seed, name, "dev"))
        del sampler
    return data


def orm(profile: Profile, seed: int = 0, recompute: bool = False, progress: bool = True,
        cfg: ORMConfig | None = None) -> StageResult:
    """The profile's outcome reward model (`runs_dir/<orm_run_name>/final`), trained if missing.

    Samples `cfg.samples_per_question` solutions per training question from each generator (the
    final SFT checkpoint by default, `cfg.generators`), labels and splits them (`data.jsonl`), and
    trains the ORM from the final SFT checkpoint. `cfg` (default `profile.orm`) builds a variant.
    Built only when a reward or a reranker asks for it.
    """
    base = cfg or profile.orm
    sft_run = sft(profile, seed)
    sft_path = sft_run.checkpoint
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
    generators = generator_checkpoints(sft_run, cfg)
    identity = orm_identity(sft_path, cfg, generators)
    run = open_run(profile.runs_dir, orm_run_name(cfg, seed), identity, seed, recompute=recompute)
    final = run.dir / "final"
    if not run.done:
        setup(profile)
        data_path = run.dir / "data.jsonl"
        if data_path.exists():  # same identity: the data of an interrupted run is reused
            data = load_orm_data(data_path)
        else:
            started = time.perf_counter()
            data = collect(profile, cfg, generators, seed, progress)
            save_orm_data(data, data_path)
            atomic_write_json(run.dir / "data.json", {"wall_s": time.perf_counter() - started})
        final = train_orm(sft_path, data, cfg, run.dir, progress=progress)
        run.mark_done()
    return StageResult(run.name, "orm", "sft", "none", seed, run.dir, Path(final), stage_rows(run.dir),
                       identity=identity)


def orm_scorer(profile: Profile, seed: int = 0, cfg: ORMConfig | None = None):
    """The profile's trained ORM (or the `cfg` variant's) as an `orm.ORMScorer` (rerank@K, the ORM
    reward), trained if missing."""
    return ORMScorer(orm(profile, seed, cfg=cfg).checkpoint)
