"""The study's stages as functions the notebooks call: problems, base model, SFT, evaluation.

Every stage writes into `profile.runs_dir/<stage>-seed<seed>/` (config.json with seed and git hash,
metrics.jsonl, checkpoints) and is skipped when its finished output is already there, so that
notebooks re-run cheaply and later notebooks reuse earlier stages.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Sequence

from .config import EvalConfig
from .problems import Problem, format_completion, format_prompt
from .profiles import Profile
from .runs import make_run_dir, set_seed
from .world import World, WorldConfig, build_world

DONE = "DONE"  # marker file: a stage's output folder is complete


def configure_torch(profile: Profile) -> None:
    """Threads and determinism settings shared by every stage."""
    import torch
    from transformers.utils import logging as hf_logging

    from .parallel import WORKER_THREADS_ENV

    threads = os.environ.get(WORKER_THREADS_ENV) or profile.threads  # a worker keeps its share
    if threads:
        torch.set_num_threads(int(threads))
    # Our own loops have progress bars; the hub's per-file load/save bars only clutter notebooks.
    hf_logging.disable_progress_bar()


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
        from .data import load_dataset_by_name

        out = load_dataset_by_name(profile.dataset, split)
    if split == "test" and profile.n_test:
        out = out[: profile.n_test]
    return list(out)


def sft_examples(items: Sequence[Problem]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of reference solutions."""
    return [(format_prompt(p.question), format_completion(p.solution)) for p in items]


def is_done(path: Path) -> bool:
    return (Path(path) / DONE).exists()


def mark_done(path: Path) -> None:
    (Path(path) / DONE).write_text("")


def build_base(profile: Profile, seed: int = 0, recompute: bool = False) -> str:
    """The pretrained base: a hub id / local path (paper), or the tiny model pretrained here.

    The tiny base is trained on the world's pretraining corpus only (arithmetic statements and
    noisy problems from some families), so that, like Llama-2 before SFT, it knows the format and
    some arithmetic but solves few test problems.
    """
    if profile.base_model is not None:
        return profile.base_model
    from .models import build_tiny_llama, save_policy
    from .tokenizer import build_word_tokenizer
    from .training import train_sft

    w = world(profile)
    cfg = dataclasses.replace(profile.pretrain, seed=seed)
    run_dir = make_run_dir(profile.runs_dir, f"base-seed{seed}", {
        "world": profile.world, "model": profile.model, "pretrain": cfg,
        "base_dev_target": profile.base_dev_target, "base_check_every": profile.base_check_every,
        "base_check_from": profile.base_check_from}, seed)
    final = run_dir / "final"
    if is_done(final) and not recompute:
        return str(final)
    configure_torch(profile)
    set_seed(seed)
    # The vocabulary covers every split's text (names, objects and digits are shared anyway);
    # nothing about answers leaks through a vocabulary.
    texts = w.pretrain + [format_prompt(p.question) + format_completion(p.solution)
                          for split in (w.sft, w.dev, w.test, w.variations) for p in split]
    tokenizer = build_word_tokenizer(texts)
    import torch

    torch.manual_seed(seed)
    model = build_tiny_llama(tokenizer, profile.model)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    train_sft(model, tokenizer, [(doc, None) for doc in w.pretrain], cfg, out_dir=run_dir,
              on_step=_dev_target_check(profile, tokenizer), on_step_every=profile.base_check_every)
    save_policy(model, tokenizer, final)
    mark_done(final)
    return str(final)


def _dev_target_check(profile: Profile, tokenizer):
    """`train_sft`'s `on_step` for pretraining: greedy dev accuracy; stop at `base_dev_target`."""
    if profile.base_dev_target is None:
        return None
    from .grading import is_correct
    from .sampling import HFSampler, SamplingParams

    dev = problems(profile, "dev")
    prompts = [format_prompt(p.question) for p in dev]

    def check(step: int, model) -> dict:
        if step < profile.base_check_from:
            return {}
        out = HFSampler(model, tokenizer, progress=False).generate(prompts, SamplingParams(
            n=1, temperature=0.0, max_new_tokens=profile.eval.max_new_tokens, seed=0))
        acc = sum(is_correct(o[0].text, p.answer, "strict") for o, p in zip(out, dev)) / len(dev)
        return {"dev_greedy_acc": acc, "stop": acc >= profile.base_dev_target}

    return check


def train_sft_policy(profile: Profile, base: str, seed: int = 0, items: Sequence[Problem] | None = None,
                     name: str | None = None, recompute: bool = False, on_epoch_end=None) -> Path:
    """SFT of `base` on reference solutions; returns the run folder (checkpoints `epoch_NN/`)."""
    from .models import LoraSettings, load_policy
    from .training import train_sft

    cfg = dataclasses.replace(profile.sft, seed=seed)
    run_dir = make_run_dir(profile.runs_dir, name or f"sft-seed{seed}", {"base": base, "sft": cfg}, seed)
    if is_done(run_dir) and not recompute:
        return run_dir
    configure_torch(profile)
    set_seed(seed)
    lora = LoraSettings(r=profile.lora_r) if profile.lora_r else None
    model, tokenizer = load_policy(base, lora=lora, load_in_4bit=profile.load_in_4bit)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    train_sft(model, tokenizer, sft_examples(items if items is not None else problems(profile, "train")),
              cfg, out_dir=run_dir, on_epoch_end=on_epoch_end)
    mark_done(run_dir)
    return run_dir


def checkpoint(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / f"epoch_{epoch:02d}"


def make_sampler(profile: Profile, path: str | Path, progress: bool = True):
    """A sampler for a checkpoint: the batched HF sampler, or vLLM for the paper profile."""
    if profile.sampler == "vllm":
        from .sampling_vllm import VLLMSampler

        return VLLMSampler(str(path))
    from .models import load_policy
    from .sampling import HFSampler

    configure_torch(profile)
    model, tokenizer = load_policy(str(path), trainable=False)
    return HFSampler(model, tokenizer, progress=progress)


def evaluate_checkpoint(profile: Profile, path: str | Path, split: str = "test", *, run_info: dict,
                        cfg: EvalConfig | None = None, scorer=None, recompute: bool = False,
                        record: bool = True, progress: bool = True):
    """Evaluate a checkpoint on a split; rollouts are saved next to the checkpoint and reused."""
    from .evaluation import evaluate

    items = problems(profile, split)
    info = {"dataset": f"{profile.dataset}-{split}", "checkpoint": str(Path(path).name), **run_info}
    return evaluate(lambda: make_sampler(profile, path, progress=progress), items, cfg or profile.eval,
                    out_dir=path if Path(str(path)).is_dir() else profile.runs_dir, name=split,
                    scorer=scorer, recompute=recompute,
                    results_path=profile.results_path if record else None, run_info=info,
                    progress=progress)


def save_table(profile: Profile, df, name: str) -> Path:
    """Write a table as CSV (atomically) under `paper_figures/<profile>/tables/`."""
    from .io import atomic_write_text

    path = profile.figures_dir / "tables" / f"{name}.csv"
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4g"))
    return path


def figure_path(profile: Profile, name: str) -> Path:
    """Where a figure goes (`save_figure` adds .png and .pdf)."""
    return profile.figures_dir / "figures" / name


def sft_sweep(profile: Profile, run_dir: Path, seed: int, epochs: Sequence[int] | None = None,
              split: str = "test", init: str = "pretrained"):
    """Evaluate the checkpoint after each SFT epoch: the SFT half of claim C2."""
    import pandas as pd

    rows = []
    for epoch in epochs or profile.sweep_epochs:
        res = evaluate_checkpoint(profile, checkpoint(run_dir, epoch), split, run_info={
            "run": f"{Path(run_dir).name}", "algorithm": "sft", "init": init, "reward": "none",
            "seed": seed, "rollouts": 0, "epoch": epoch})
        rows.append({"epoch": epoch, "seed": seed, **{k: v for k, v in res.metrics.items() if k != "pass_curve"}})
    return pd.DataFrame(rows)


def sft_checkpoint(profile: Profile, seed: int = 0) -> Path:
    """The final SFT checkpoint (the SFT starting point of every RL algorithm), trained if missing."""
    run_dir = train_sft_policy(profile, build_base(profile, seed), seed)
    return checkpoint(run_dir, profile.sft.epochs)
