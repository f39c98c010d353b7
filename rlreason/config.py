"""Typed configs shared by the pipeline (pure Python: importing this never imports torch).

Each field carries a one-line docstring; profiles (`rlreason.profiles`) are values of these.
"""
from __future__ import annotations

from dataclasses import dataclass, field

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTConfig:
    """Hyperparameters of one fine-tuning (or pretraining) run."""

    epochs: int = 12
    """Passes over the data (ignored when `max_steps` is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (pretraining is budgeted in steps)."""
    lr: float = 5e-4
    """Peak learning rate."""
    schedule: str = "constant"
    """`constant` (after warmup) or `cosine` (decay to `min_lr_ratio` x lr)."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule, as a fraction of `lr`."""
    batch_size: int = 32
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    mixed_precision: str = "no"
    """`no`, `bf16` or `fp16`: accelerate's autocast (bf16 is fast on CPUs with AMX/AVX512-BF16)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_length: int = 256
    """Longer examples are truncated (from the right)."""
    save_every_steps: int | None = None
    """Also write a checkpoint `step_NNNNN/` every this many optimizer steps (pretraining)."""
    save_every_epoch: bool = True
    """Write a checkpoint `epoch_NN/` after each epoch (the SFT-epochs sweep reads them)."""
    seed: int = 0
    """Seed of shuffling, dropout and initialisation noise."""
    log_every: int = 10
    """Write a metrics row every this many optimizer steps."""



@dataclass
class EvalConfig:
    """How a policy is evaluated."""

    k: int = 32
    """Samples per question for maj@K, rerank@K and pass@K (the paper: 96)."""
    temperature: float = 1.0
    """Sampling temperature of the K samples (greedy is used for maj@1)."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the K samples."""
    max_new_tokens: int = 96
    """Generation budget per solution."""
    stop: tuple[str, ...] = ()
    """Extra stop strings (EOS always stops); few-shot prompting of a base model needs these."""
    seed: int = 0
    """Seed of the K samples and of the bootstrap."""
    pass_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """k values of the pass@k curve (those above K are dropped)."""
    n_boot: int = 1000
    """Bootstrap resamples for confidence intervals."""


@dataclass
class TinyModelConfig:
    """Shape of the tiny Llama trained from scratch (~0.9M parameters with a ~300-token vocab)."""

    hidden_size: int = 128
    """Width of the residual stream (and of the tied embeddings)."""
    num_layers: int = 4
    """Number of decoder blocks."""
    num_heads: int = 4
    """Attention heads per block (head_dim = hidden_size / num_heads = 32)."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP (3x hidden, the usual 8/3 ratio rounded)."""
    max_position_embeddings: int = 512
    """Longest prompt + completion, in tokens (RoPE needs no table, this is only a bound)."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the output head (saves vocab x hidden parameters)."""
    rope_theta: float = 10000.0
    """RoPE base frequency (Llama-2's value)."""
    initializer_range: float = 0.02
    """Std of the normal init of the weights (Llama's default)."""


@dataclass
class LoraSettings:
    """LoRA adapters (peft) for fitting large policies; the tiny profile can use them too."""

    r: int = 16
    """Rank of the adapter matrices."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.05
    """Dropout on the adapter input during training."""
    target_modules: tuple[str, ...] = field(default_factory=lambda: LLAMA_PROJECTIONS)
    """Module names that get adapters: all Llama attention and MLP projections by default."""


# ---- rewards and the ORM (owner: rewards/ORM work; notebook 02) ---------------------------------
@dataclass
class ORMConfig:
    """Outcome reward model: data collection and training."""

    samples_per_question: int = 8
    """Policy samples per training question used as ORM training data."""
    temperature: float = 1.0
    """Sampling temperature of the ORM's training samples."""
    val_fraction: float = 0.1
    """Fraction of training questions held out for ORM validation."""
    train: SFTConfig = field(default_factory=lambda: SFTConfig(epochs=2, lr=3e-4, batch_size=32))
    """Optimisation of the ORM (its scalar head and body)."""


# ---- Expert Iteration (owner: EI work; notebook 03) ---------------------------------------------
@dataclass
class EIConfig:
    """Expert Iteration: K samples per question, filter, de-duplicate, fine-tune from the init."""

    rounds: int = 4
    """Rounds of sample -> filter -> fine-tune (paper: 4 to 5)."""
    k: int = 8
    """Samples per training question per round (paper: 96; K = 4 is already efficient)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""


# ---- PPO (owner: PPO work; notebook 04) --------------------------------------------------------
@dataclass
class PPOConfig:
    """PPO with token-level rewards and a KL penalty against the initial policy."""

    kl_coef: float = 0.05
    """Coefficient of the per-token KL penalty against the reference policy (paper: 0.05)."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """Lambda of GAE."""


# ---- RCRL (owner: RCRL work; notebook 05) ------------------------------------------------------
@dataclass
class RCRLConfig:
    """Return-conditioned RL: label rollouts with their return, fine-tune, prompt with the best label."""

    k: int = 8
    """Rollouts per training question."""
    rounds: int = 1
    """Rounds of sample -> label -> fine-tune."""
