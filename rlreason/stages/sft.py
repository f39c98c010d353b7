"""The pretrained base (the tiny model pretrained here, or a hub model) and SFT on references.

Both run data-parallel under `accelerate launch` (`training.train_sft`): every process trains,
rank 0 alone opens the run folder, writes checkpoints and `DONE`, and the others wait for it
(`distributed.run_on_main`) before they read them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import smollm
from ..config import INITS, SFTConfig
from ..distributed import run_on_main
from ..evaluation import EvalResult, RunInfo
from ..grading import is_correct
from ..models import build_tiny_llama, load_policy, save_policy
from ..problems import Problem, format_completion, format_prompt
from ..profiles import Profile
from ..runs import is_done, mark_done, open_run, set_seed
from ..sampling import HFSampler, SamplingParams
from ..tokenizer import build_word_tokenizer
from ..training import train_sft
from .core import (
    StageResult,
    evaluate,
    lora,
    problems,
    setup,
    sft_examples,
    stage_rows,
    world,
)


def base(profile: Profile, seed: int = 0, recompute: bool = False) -> Path:
    """The pretrained base: a hub id / local path (paper), or the tiny model pretrained here.

    The tiny base is trained on the world's pretraining corpus only (arithmetic statements and
    noisy problems from some families), so that, like Llama-2 before SFT, it knows the format and
    some arithmetic but solves few test problems.
    """
    if profile.base_model is not None:
        return smollm.resolve(profile.base_model)
    w = world(profile)
    cfg = dataclasses.replace(profile.pretrain, seed=seed)
    run = run_on_main(open_run, profile.runs_dir, f"base-seed{seed}", {
        "world": profile.world, "model": profile.model, "pretrain": cfg,
        "base_dev_target": profile.base_dev_target, "base_check_every": profile.base_check_every,
        "base_check_from": profile.base_check_from}, seed, recompute=recompute)
    final = run.dir / "final"
    if run_on_main(is_done, final):
        return final
    setup(profile)
    set_seed(seed)
    # The vocabulary covers every split's text (names, objects and digits are shared anyway);
    # nothing about answers leaks through a vocabulary.
    texts = w.pretrain + [format_prompt(p.question) + format_completion(p.solution)
                          for split in (w.sft, w.dev, w.test, w.variations) for p in split]
    tokenizer = build_word_tokenizer(texts)
    torch.manual_seed(seed)
    model = build_tiny_llama(tokenizer, profile.model)
    run_on_main((run.dir / "metrics.jsonl").unlink, missing_ok=True)
    train_sft(model, tokenizer, [(doc, None) for doc in w.pretrain], cfg, out_dir=run.dir,
              on_step=_dev_target_check(profile, tokenizer), on_step_every=profile.base_check_every)
    run_on_main(_save_done, model, tokenizer, final)
    return final


def _save_done(model, tokenizer, path: Path) -> None:
    """Save a finished policy and mark it done (rank 0's job under a launch)."""
    save_policy(model, tokenizer, path)
    mark_done(path)


def _dev_target_check(profile: Profile, tokenizer):
    """`train_sft`'s `on_step` for pretraining: greedy dev accuracy; stop at `base_dev_target`
    (sampled on rank 0 only under a launch: `train_sft` runs its callbacks there)."""
    if profile.base_dev_target is None:
        return None
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


def checkpoint(run_dir: Path, epoch: int) -> Path:
    """The SFT checkpoint after `epoch`."""
    return Path(run_dir) / f"epoch_{epoch:02d}"


def sft(profile: Profile, seed: int = 0, items: Sequence[Problem] | None = None,
        name: str | None = None, recompute: bool = False, on_epoch_end=None,
        cfg: SFTConfig | None = None) -> StageResult:
    """SFT of the base on reference solutions (checkpoints `epoch_NN/`); `cfg` replaces the
    profile's recipe (the "more SFT" control)."""
    init = base(profile, seed)
    cfg = dataclasses.replace(cfg or profile.sft, seed=seed)
    run = run_on_main(open_run, profile.runs_dir, name or f"sft-seed{seed}",
                      {"base": str(init), "sft": cfg}, seed, recompute=recompute)
    if not run_on_main(is_done, run.dir):
        setup(profile)
        set_seed(seed)
        # Under a launch each rank loads onto its own GPU (`models.default_device_dtype`).
        model, tokenizer = load_policy(str(init), lora=lora(profile), load_in_4bit=profile.load_in_4bit)
        run_on_main((run.dir / "metrics.jsonl").unlink, missing_ok=True)
        train_sft(model, tokenizer, sft_examples(items if items is not None else problems(profile, "train")),
                  cfg, out_dir=run.dir, on_epoch_end=on_epoch_end)
        if cfg.max_steps:  # budgeted in steps: the last epoch folder may not be the end
            run_on_main(save_policy, model, tokenizer, run.dir / "final")
        run_on_main(run.mark_done)
    final = run.dir / "final" if (run.dir / "final").exists() else checkpoint(run.dir, cfg.epochs)
    return StageResult(run.name, "sft", "pretrained", "none", seed, run.dir, final, stage_rows(run.dir),
                       identity={"base": str(init), "sft": dataclasses.asdict(cfg)})


def sft_control(profile: Profile, seed: int, steps: int) -> StageResult:
    """The "more SFT" control of EI's ReST-EM reading: the SFT recipe from the pretrained base on the
    references only, for `steps` optimizer steps (those of the EI student it is set beside), so
    that an EI gain is not just more training. Its schedule spans the `steps`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sft_control: steps = {steps!r}; expected a positive number of optimizer steps")
    cfg = dataclasses.replace(profile.sft, max_steps=steps, schedule_steps=steps,
                              save_every_epoch=False)
    return sft(profile, seed, name=f"sft-control-{steps}steps-seed{seed}", cfg=cfg)


def sft_checkpoint(profile: Profile, seed: int = 0) -> Path:
    """The final SFT checkpoint (the SFT starting point of every RL algorithm), trained if missing."""
    return sft(profile, seed).checkpoint


def init_checkpoint(profile: Profile, init: str, seed: int = 0) -> Path:
    """The starting point named `init`: `sft` (the final SFT checkpoint) or `pretrained` (the base)."""
    if init not in INITS:
        raise ValueError(f"init must be 'sft' or 'pretrained', got {init!r}")
    return sft_checkpoint(profile, seed) if init == "sft" else base(profile, seed)


def train_fit(profile: Profile, path: str | Path) -> EvalResult:
    """Greedy accuracy of a checkpoint on the first `profile.train_fit_questions` training
    questions (maj@1 of a K=1 evaluation): against the test set's, how much SFT memorised."""
    items = problems(profile, "train")[: profile.train_fit_questions]
    cfg = dataclasses.replace(profile.eval, k=1, pass_ks=(1,))
    return evaluate(profile, path, "train", items=items, cfg=cfg, record=False, progress=False,
                    name="train-fit")


def sft_sweep(profile: Profile, seed: int = 0, epochs: Sequence[int] | None = None,
              split: str = "test") -> list[tuple[int, EvalResult]]:
    """Evaluate the checkpoint after each SFT epoch: the SFT half of claim C2."""
    run = sft(profile, seed)
    out = []
    for epoch in epochs or profile.sweep_epochs:
        out.append((epoch, evaluate(profile, checkpoint(run.run_dir, epoch), split, info=RunInfo(
            run=run.name, algorithm="sft", init="pretrained", reward="none", seed=seed, rollouts=0,
            epoch=epoch))))
    return out
