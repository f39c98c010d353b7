"""What every stage shares: the result type, set-up, problems, samplers, evaluation, rewards."""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from .. import smollm
from ..config import EvalConfig, LoraSettings
from ..distributed import run_on_main
from ..evaluation import EvalResult, RunInfo, model_eval_dir, model_identity
from ..evaluation import evaluate as _evaluate
from ..io import read_jsonl
from ..models import load_policy
from ..parallel import WORKER_THREADS_ENV, oversubscription
from ..problems import Problem, format_completion, format_prompt
from ..profiles import Profile, get_profile
from ..rewards import make_reward
from ..runs import check_seed
from ..sampling import HFSampler, PrefixedSampler, SamplingParams
from ..sampling import vllm as vllm_backend
from ..world import World, WorldConfig, build_world


@dataclass
class StageResult:
    """What a stage computed: where it is, its training log and its final evaluation."""

    name: str
    """The run folder's name (from what the run is: algorithm, init, reward, seed)."""
    algorithm: str
    """`base`, `sft`, `orm`, `ei`, `ppo` or `rcrl`."""
    init: str
    """Where the algorithm started: `pretrained`, `sft` (or `scratch` for the tiny base)."""
    reward: str
    """`sparse`, `dense`, `orm` or `none`."""
    seed: int
    """The run's seed."""
    run_dir: Path
    """The run folder."""
    checkpoint: Path
    """The final policy (or ORM) folder."""
    rows: list[dict] = field(default_factory=list)
    """Per epoch / round / update metrics (the run's `metrics.jsonl`)."""
    final: EvalResult | None = None
    """The final checkpoint's test-set evaluation (with per-question arrays), when computed."""
    identity: dict = field(default_factory=dict)
    """What the run computes (its `config.json` config): labels, eval split, questions, ..."""


# ---- set-up, data, samplers, evaluation ----------------------------------------------------------


def setup(profile: str | Profile | None = None, seed: int | None = None) -> Profile:
    """The profile (a name, or one already built), with torch's threads and logging configured."""
    profile = get_profile(profile) if profile is None or isinstance(profile, str) else profile
    if seed is not None:
        check_seed(seed)
    threads = os.environ.get(WORKER_THREADS_ENV) or profile.threads  # a worker keeps its share
    if threads:
        torch.set_num_threads(int(threads))
    # Our own loops have progress bars; the hub's per-file load/save bars only clutter notebooks.
    hf_logging.disable_progress_bar()
    if WORKER_THREADS_ENV not in os.environ:  # a worker's share was checked by its parent
        busy = oversubscription(1, torch.get_num_threads())
        if busy:
            warnings.warn(busy, RuntimeWarning, stacklevel=2)
    return profile


@functools.lru_cache(maxsize=4)
def _world(cfg: WorldConfig) -> World:
    return build_world(cfg)


def world(profile: Profile) -> World:
    """The profile's tiny world (built once per process)."""
    if profile.dataset != "tiny":
        raise ValueError(f"profile {profile.name!r} uses dataset {profile.dataset!r}, not the tiny world")
    return _world(profile.world)


def problems(profile: Profile, split: str) -> list[Problem]:
    """Problems of a split: `train` (= the SFT set), `dev`, `test`, `variations` (tiny) or a
    real dataset's splits; `test` is cut to `profile.n_test` when that is set."""
    if profile.dataset == "tiny":
        out = world(profile).split(split)
    else:
        from ..data import load_dataset_by_name

        out = load_dataset_by_name(profile.dataset, split)
    if split == "test" and profile.n_test:
        out = out[: profile.n_test]
    if split == "train" and profile.n_train:
        out = out[: profile.n_train]
    return list(out)


def few_shot_prefix(profile: Profile) -> str:
    """The worked examples put before each question when the pretrained base is sampled
    (`profile.base_shots`; "" when 0): the shortest reference solutions among the last 50
    training problems, outside the first `n_train` that the algorithms train on when it is set
    (with the whole split they are also training problems, as in the usual few-shot prompts)."""
    if not profile.base_shots:
        return ""
    pool = problems(dataclasses.replace(profile, n_train=None), "train")[-50:]
    shots = sorted(pool, key=lambda p: (len(p.solution), p.id))[: profile.base_shots]
    return "".join(format_prompt(p.question) + format_completion(p.solution) + "\n\n" for p in shots)


def is_base(profile: Profile, path: str | Path) -> bool:
    """Whether `path` is the profile's pretrained base given as a model (not a run rlreason wrote)."""
    if profile.base_model is None:
        return False
    return Path(path).resolve() == smollm.resolve(profile.base_model).resolve()


def base_prefix(profile: Profile, path: str | Path) -> str:
    """The few-shot prefix for sampling `path`: the profile's when `path` is its pretrained base,
    else "" (fine-tuned models are prompted as they were trained)."""
    return few_shot_prefix(profile) if profile.base_shots and is_base(profile, path) else ""


def sft_examples(items: Sequence[Problem]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of reference solutions."""
    return [(format_prompt(p.question), format_completion(p.solution)) for p in items]


def lora(profile: Profile) -> LoraSettings | None:
    """The profile's LoRA settings (None: full fine-tuning)."""
    return profile.lora


def make_sampler(profile: Profile, progress: bool = True) -> Callable[[str | Path], object]:
    """A factory of samplers for checkpoints: the batched HF sampler, or vLLM (paper profile):
    one engine per process, a LoRA checkpoint served as an adapter on its base's engine. The
    pretrained base of a profile with `base_shots` is prompted few-shot (`PrefixedSampler`)."""

    def make(path: str | Path):
        if profile.sampler == "vllm":
            sampler = vllm_backend.checkpoint_sampler(path, profile.vllm, progress=progress)
        else:
            model, tokenizer = load_policy(str(path), trainable=False)
            sampler = HFSampler(model, tokenizer, progress=progress)
        prefix = base_prefix(profile, path)
        return PrefixedSampler(sampler, prefix) if prefix else sampler

    return make


def rollout_params(profile: Profile, temperature: float = 1.0,
                   max_new_tokens: int | None = None) -> SamplingParams:
    """The rollout settings the algorithms share (their loops set `n` and `seed` per round)."""
    return SamplingParams(temperature=temperature,
                          max_new_tokens=max_new_tokens or profile.eval.max_new_tokens,
                          stop=list(profile.eval.stop))


def evaluate(profile: Profile, path: str | Path, split: str = "test", *, info: RunInfo | None = None,
             cfg: EvalConfig | None = None, scorer=None, recompute: bool = False,
             record: bool = True, progress: bool = True, sampler=None,
             name: str | None = None, items: Sequence[Problem] | None = None) -> EvalResult:
    """Evaluate a checkpoint on a split; rollouts are saved and reused while the eval config, the
    questions, the profile's sampler backend and the model are the same.

    A checkpoint folder inside `profile.runs_dir` keeps its evaluation files (a save replaces the
    folder, files and all); any other model (a hub id, a local folder rlreason did not write) is
    evaluated into `runs_dir/eval/<safe name>/` (`evaluation.model_eval_dir`), keyed by its
    `model_identity`, and its results row's `checkpoint` is that folder relative to `runs_dir`.
    `info` fills the identity columns of the results row (`record=False`: no row is written);
    `sampler` (a sampler or a zero-argument factory) overrides the profile's sampler for this
    checkpoint (RCRL's label-conditioned one); `name` names its files (default: the split);
    `items` replaces the split's problems (a subset of it).
    """
    items = problems(profile, split) if items is None else list(items)
    path = Path(path)
    own = path.is_dir() and path.resolve().is_relative_to(profile.runs_dir.resolve())
    out_dir = path if own else model_eval_dir(profile.runs_dir / "eval", path)
    info = dataclasses.replace(info or RunInfo(), dataset=f"{profile.dataset}-{split}",
                               checkpoint=path.name if own else
                               out_dir.relative_to(profile.runs_dir).as_posix())
    # Under `accelerate launch`, rank 0 samples and writes; the other ranks get its result.
    name = name or split
    if sampler is None and base_prefix(profile, path):  # its files say how it was prompted
        name = f"{name}.{profile.base_shots}shot"
    return run_on_main(_evaluate, sampler or (lambda: make_sampler(profile, progress=progress)(path)), items,
                     cfg or profile.eval, out_dir=out_dir, name=name,
                     scorer=scorer, recompute=recompute,
                     results_path=profile.results_path if record else None, run_info=info,
                     progress=progress, backend=profile.sampler,
                     model=None if own else model_identity(path))


def stage_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def valid_paths(profile: Profile) -> dict[str, list[list[float]]]:
    """Per problem id, the intermediate results of every valid solution path: the tiny world's
    (`World.paths`), or none for a real dataset (only its reference, then `dense_any` = `dense`)."""
    if profile.dataset != "tiny":
        return {}
    return {pid: [[step[-1] for step in path] for path in paths]  # a step is (a, op, b, result)
            for pid, paths in world(profile).paths.items()}


def reward_fn(reward: str, init: Path, orm_model, profile: Profile | None = None, **extra):
    """The reward function named `reward` (`rewards.make_reward`) with the init's tokenizer.

    `dense_any` credits every valid path of the profile's problems: the tiny world's paths
    (`World.paths`), or only the reference of a real dataset (then it equals `dense`); it needs
    `profile` unless `valid_paths` is given.
    """
    if reward == "orm" and orm_model is None:
        raise ValueError("reward 'orm' needs the ORM: pass orm=stages.orm_scorer(profile, seed)")
    if reward == "dense_any" and "valid_paths" not in extra:
        if profile is None:
            raise ValueError("reward 'dense_any' needs the profile (its problems' valid paths): "
                             "reward_fn(..., profile=profile)")
        extra["valid_paths"] = valid_paths(profile)
    return make_reward(reward, tokenizer=AutoTokenizer.from_pretrained(str(init)), orm=orm_model,
                       **extra)
