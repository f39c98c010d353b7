"""Typed configs shared by the pipeline (pure Python: importing this never imports torch).

Each field carries a one-line docstring; profiles (`rlreason.profiles`) are values of these.
"""
from __future__ import annotations

from dataclasses import dataclass, field

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INITS = ("sft", "pretrained")
"""The starting points of every RL algorithm: the final SFT checkpoint and the pretrained base."""
PRECISIONS = ("no", "bf16", "fp16", "auto")
"""Values of every `mixed_precision` field."""


def check_choice(owner: str, name: str, value, choices) -> None:
    """One-line error naming the field, its value and what was expected."""
    if value not in choices:
        raise ValueError(f"{owner}.{name} = {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_int_at_least(owner: str, name: str, value, low: int, allow_none: bool = False) -> None:
    """One-line error for a count that is not an integer >= `low`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}.{name} = {value!r}; expected an integer >= {low}")


def check_at_least(owner: str, name: str, value, low, allow_none: bool = False) -> None:
    """One-line error for a number below its floor (or not a number)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{owner}.{name} = {value!r}; expected a number >= {low}")


@dataclass
class SFTConfig:
    """Hyperparameters of one fine-tuning (or pretraining) run."""

    epochs: int = 12
    """Passes over the data (ignored when `max_steps` is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (pretraining is budgeted in steps)."""
    schedule_steps: int | None = None
    """Steps over which the cosine decays (None: all the training steps); later steps keep the
    floor (`min_lr_ratio`). Lets a run go on past its schedule without changing the steps before."""
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
    """`no`, `bf16`, `fp16` or `auto` (bf16 where the device runs it natively and faster, else
    fp32; `training.resolve_precision` decides and every run records the decision)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_length: int | None = 256
    """Tokens per example (prompt + completion + EOS); longer ones are cut from the right, counted
    in the run's `data.json` and warned about. None: the longest example's length (no cut)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass (less memory for long sequences on
    large models, about a third more compute; the tiny model does not need it)."""
    group_by_length: bool = False
    """Batch examples of similar length (each shuffled epoch is cut into groups of 50 batches,
    sorted by length inside a group, then the batches are shuffled), as transformers' Trainer
    does: fewer padding tokens per step, the same examples per epoch."""
    save_every_steps: int | None = None
    """Also write a checkpoint `step_NNNNN/` every this many optimizer steps (pretraining)."""
    save_every_epoch: bool = True
    """Write a checkpoint `epoch_NN/` after each epoch (the SFT-epochs sweep reads them)."""
    seed: int = 0
    """Seed of shuffling, dropout and initialisation noise."""
    log_every: int = 10
    """Write a metrics row every this many optimizer steps."""

    def __post_init__(self):
        check_choice("SFTConfig", "mixed_precision", self.mixed_precision, PRECISIONS)
        check_choice("SFTConfig", "schedule", self.schedule, ("constant", "cosine"))
        check_int_at_least("SFTConfig", "batch_size", self.batch_size, 1)
        check_int_at_least("SFTConfig", "grad_accum", self.grad_accum, 1)
        check_at_least("SFTConfig", "lr", self.lr, 0.0)
        check_int_at_least("SFTConfig", "max_length", self.max_length, 2, allow_none=True)



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

    def __post_init__(self):
        check_int_at_least("EvalConfig", "k", self.k, 1)
        check_at_least("EvalConfig", "temperature", self.temperature, 0.0)
        check_int_at_least("EvalConfig", "max_new_tokens", self.max_new_tokens, 1)


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
    alpha: int | None = None
    """Scaling numerator: the update is (alpha / r) * B @ A; None: 2 * r (one rule for the policy
    and the ORM)."""
    dropout: float = 0.05
    """Dropout on the adapter input during training."""
    target_modules: tuple[str, ...] = field(default_factory=lambda: LLAMA_PROJECTIONS)
    """Module names that get adapters: all Llama attention and MLP projections by default."""

    def __post_init__(self):
        check_int_at_least("LoraSettings", "r", self.r, 1)
        if self.alpha is None:
            self.alpha = 2 * self.r


# ---- the ORM (notebook 02) ----------------------------------------------------------------------
@dataclass
class ORMConfig:
    """Outcome reward model: data collection and training."""

    samples_per_question: int = 8
    """Policy samples per question and generator used as ORM data (Cobbe et al.: about 100)."""
    temperature: float = 1.0
    """Sampling temperature of the ORM's training samples."""
    val_fraction: float = 0.1
    """Fraction of training questions held out for ORM validation."""
    max_questions: int | None = 600
    """Sample on a seeded subset of this many training questions (None: all of them)."""
    max_new_tokens: int = 96
    """Generation budget of the ORM's training samples."""
    mode: str = "strict"
    """Grading mode of the samples' correctness labels (the sparse reward's)."""
    balance: str = "question"
    """Loss weights: `class` (correct and wrong samples weigh half each; the head's bias is then
    shifted back by the log prior odds, so probabilities stay calibrated), `question` (half each
    within every question that has both: it trains ranking within a question, reranking's use) or
    `none`."""
    single_label_weight: float = 0.25
    """With `balance="question"`: weight of questions whose samples are all correct or all wrong."""
    head_lr_mult: float = 10.0
    """Learning rate of the scalar head, as a multiple of `train.lr` (it starts from zeros)."""
    lora: LoraSettings | None = None
    """LoRA adapters on the ORM's body (None: full fine-tuning; an adapter init keeps its adapter)."""
    load_in_4bit: bool = False
    """Load the ORM's body in 4-bit NF4 (QLoRA)."""
    score_batch_tokens: int = 32768
    """Padded tokens per scoring batch (prompts counted once per question)."""
    train: SFTConfig = field(default_factory=lambda: SFTConfig(
        epochs=1, lr=3e-4, batch_size=32, warmup_steps=10, mixed_precision="auto",
        save_every_epoch=False))
    """Optimisation of the ORM (its scalar head and body); `batch_size` counts distinct samples,
    `mixed_precision` also applies to scoring; `train.epochs` caps early stopping."""
    generators: tuple[str, ...] = ("final",)
    """SFT checkpoints that draw the ORM's samples, `samples_per_question` each: `final` and/or
    `epoch_NN` (an early epoch is a weaker generator, so its samples hold more kinds of mistakes)."""
    validation: str = "train_holdout"
    """Validation questions: `train_holdout` (a `val_fraction` of the training questions) or `dev`
    (the whole dev split, sampled by the same generators; every training question is trained on)."""
    early_stopping_patience: int | None = None
    """Stop after this many epochs without a lower validation loss and keep the best epoch's
    weights (None: train all `train.epochs`)."""

    def __post_init__(self):
        check_int_at_least("ORMConfig", "samples_per_question", self.samples_per_question, 1)
        check_at_least("ORMConfig", "temperature", self.temperature, 0.0)
        check_choice("ORMConfig", "mode", self.mode, ("strict", "flexible"))
        check_choice("ORMConfig", "balance", self.balance, ("class", "question", "none"))
        check_choice("ORMConfig", "validation", self.validation, ("train_holdout", "dev"))
        check_int_at_least("ORMConfig", "early_stopping_patience", self.early_stopping_patience, 1,
                           allow_none=True)
        self.generators = tuple(self.generators)
        bad = [g for g in self.generators
               if g != "final" and not (g.startswith("epoch_") and g[6:].isdigit())]
        if not self.generators or bad or len(set(self.generators)) < len(self.generators):
            raise ValueError(f"ORMConfig.generators = {self.generators!r}; expected distinct names, "
                             "each 'final' or 'epoch_NN'")


# ---- Expert Iteration (notebook 03) -------------------------------------------------------------
@dataclass
class EIConfig:
    """Expert Iteration: K samples per question, filter, de-duplicate, fine-tune from the init.

    The defaults are the tiny profile's.
    """

    rounds: int = 2
    """Rounds of sample -> filter -> fine-tune (paper: 4 to 5)."""
    k: int = 4
    """Samples per training question per round (paper: 96; K = 4 is already efficient)."""
    k_pretrained: int | None = None
    """K for the pretrained start, where correct samples are rare (None: `k`)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (top-p 1; the generation budget is the eval's)."""
    thresholds: dict[str, float | str] = field(
        default_factory=lambda: {"sparse": 1.0, "dense": 0.75, "dense_any": 0.75,
                                 "orm": "median"})
    """Keep a sample when its reward total is >= its reward's threshold (sparse: correct; dense:
    correct and half the reference's intermediate results). `"median"`: the median reward of the
    round's samples (the ORM used as a ranker, independent of its calibration offset)."""
    require_correct: bool = True
    """Also drop samples whose final answer is wrong (strict grading), whatever the reward says."""
    student: str = "init"
    """Who is fine-tuned on D_i each round: `init` (the starting checkpoint, with `sft`),
    `pretrained` (the pretrained base, with the profile's SFT recipe, as ReST-EM and RFT) or
    `last` (the last policy, with `sft`)."""
    include_references: bool | None = False
    """Mix the reference solutions into every round's fine-tuning data; None: the stage decides
    (yes for the SFT start with `student="pretrained"`, so that D_0 is the SFT data)."""
    drop_wrong_calculations: bool = False
    """Drop correct samples whose calculator annotations `<<a op b=c>>` are arithmetically wrong
    (RFT does: a right answer reached through a wrong step is not a solution to imitate)."""
    train_eval_questions: int | None = None
    """Measure each round's greedy accuracy on the first n training questions (memorisation
    check beside the T=1 accuracy; None: not measured)."""
    max_per_question: int | None = None
    """Cap of solutions per question in D_i (the oldest are kept); None: no cap."""
    n_questions: int | None = 500
    """Sample from the first n training questions only (None: all of them, as the paper)."""
    evaluate_every: int = 1
    """Evaluate the test set after every this many rounds (the last round always; 0: last only)."""
    k_sweep: tuple[int, ...] = (1, 4, 16)
    """Values of K compared in notebook 03's K sweep (K = 1, 4 and the profile's largest K)."""
    sweep_rounds: int | None = 1
    """Rounds of notebook 03's K-sweep and reward runs (None: `rounds`)."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(epochs=2, lr=1e-4, warmup_steps=5,
                                                             mixed_precision="auto", save_every_epoch=False))
    """Fine-tuning on D_i each round of `student="init"` or `"last"` (its seed is replaced by the
    round's seed)."""

    def __post_init__(self):
        check_int_at_least("EIConfig", "k", self.k, 1)
        check_int_at_least("EIConfig", "k_pretrained", self.k_pretrained, 1, allow_none=True)
        check_int_at_least("EIConfig", "rounds", self.rounds, 1)
        check_at_least("EIConfig", "temperature", self.temperature, 0.0)
        check_choice("EIConfig", "student", self.student, ("init", "pretrained", "last"))
        check_int_at_least("EIConfig", "train_eval_questions", self.train_eval_questions, 1,
                           allow_none=True)
        for k in self.k_sweep:
            check_int_at_least("EIConfig", "k_sweep", k, 1)


# ---- PPO (notebook 04) --------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """PPO with token-level rewards and a KL penalty against the initial policy."""

    updates: int = 16
    """PPO updates (rollouts, then optimisation on them); rollouts = updates x questions x samples."""
    questions_per_update: int = 32
    """Training questions per update (taken in passes over the training set, reshuffled per pass)."""
    samples_per_question: int = 4
    """Solutions sampled per question per update (temperature 1, no top-p: on-policy samples)."""
    max_new_tokens: int = 96
    """Generation budget per solution; a solution cut here gets the reward of its text so far."""
    stop: tuple[str, ...] = ()
    """Stop strings of the rollouts (EOS always stops): the base model's few-shot prompts need one."""
    ppo_epochs: int = 2
    """Passes over each update's rollouts."""
    mixed_precision: str = "auto"
    """`no`, `bf16`, `fp16` or `auto`: autocast for the policy, value and reference forward passes
    (the losses stay in float32; old and new log-probs come from the same computation)."""
    minibatch_size: int = 64
    """Sampled solutions per gradient step, as whole questions (rounded down to a multiple of
    `samples_per_question`, at least one question); also the chunk size of the scoring pass."""
    lr: float = 1e-5
    """AdamW learning rate of the policy (and of the value when `value_lr` is None), before the
    schedule; the paper's is not known to us."""
    value_lr: float | None = None
    """Learning rate of the value head (and separate value model); None: `lr`. A zero-initialised
    head on a small trunk learns its scale slowly at the policy's rate."""
    warmup_updates: int = 0
    """Updates over which the learning rates rise linearly to their value (0: none); a fresh
    value head gives noisy advantages that a full-rate first step can turn into a collapse."""
    lr_schedule: str = "constant"
    """`constant`, or `cosine`: decay after the warmup to `min_lr_ratio` x the rate by `updates`."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule, as a fraction of the learning rate."""
    value_warmup_updates: int = 0
    """First updates in which only the value trains (the policy is frozen; its warmup and schedule
    start after them), so that the first policy steps get advantages from a fitted value."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    cliprange: float = 0.2
    """PPO's clip of the probability ratio, 1 +- cliprange."""
    cliprange_value: float | None = 0.2
    """Clip of the value's change from its rollout value (None: no value clipping)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss (trlx: 1.0; with `value_model="head"` it also
    weighs the value's gradient on the policy's trunk)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (0: entropy is only logged)."""
    kl_coef: float = 0.05
    """Coefficient of the per-token KL penalty against the reference policy (paper: 0.05)."""
    kl_estimator: str = "k1"
    """Per-token KL estimate in the reward: `k1` (log pi - log pi_ref) or `k3` (always >= 0)."""
    target_kl: float | None = None
    """Adaptive KL controller's target KL per solution in nats (summed over its tokens, with
    `kl_estimator`); None: the coefficient stays `kl_coef`."""
    kl_horizon: int = 10000
    """Adaptive KL controller's horizon, in sampled solutions: the coefficient changes by at most a
    factor of about e^0.2 per `kl_horizon` solutions."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 1.0
    """Lambda of GAE (trlx: 0.95); 1.0 uses Monte-Carlo returns, right while the value head does not
    yet explain the return's variance."""
    whiten_rewards: bool = False
    """Divide the per-token rewards by their batch standard deviation (mean kept) before GAE."""
    norm_adv: bool = True
    """Normalise advantages to mean 0, std 1 over each update's tokens."""
    value_model: str = "head"
    """`head`: a linear value head on the policy's last hidden state; `separate`: its own copy of the
    initial model (with LoRA if the policy has LoRA) plus a head."""
    value_head_fp32: bool = True
    """Run the value head in float32 under bf16/fp16 autocast (False: its matmul follows the
    autocast dtype, which rounds V(s) to about 3 significant digits in bf16)."""
    eval_every: int = 8
    """Evaluate (maj@1, maj@K, rerank@K, pass@K on the test set) every this many updates and at the end."""
    save_every: int = 5
    """Write the resume checkpoint every this many updates and at the end."""

    def __post_init__(self):
        check_choice("PPOConfig", "mixed_precision", self.mixed_precision, PRECISIONS)
        check_choice("PPOConfig", "kl_estimator", self.kl_estimator, ("k1", "k3"))
        check_choice("PPOConfig", "value_model", self.value_model, ("head", "separate"))
        check_int_at_least("PPOConfig", "samples_per_question", self.samples_per_question, 1)
        check_int_at_least("PPOConfig", "updates", self.updates, 1)
        check_choice("PPOConfig", "lr_schedule", self.lr_schedule, ("constant", "cosine"))
        check_int_at_least("PPOConfig", "warmup_updates", self.warmup_updates, 0)
        check_int_at_least("PPOConfig", "value_warmup_updates", self.value_warmup_updates, 0)
        check_at_least("PPOConfig", "min_lr_ratio", self.min_lr_ratio, 0)
        check_int_at_least("PPOConfig", "kl_horizon", self.kl_horizon, 1)
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"PPOConfig.target_kl = {self.target_kl!r}; expected a number > 0 or None")


# ---- RCRL (notebook 05) -------------------------------------------------------------------------
@dataclass
class RCRLConfig:
    """Return-conditioned RL: label rollouts with their return, fine-tune, prompt with the best label."""

    k: int = 4
    """Rollouts per training question per round (the defaults are the tiny profile's)."""
    rounds: int = 1
    """Rounds of sample -> label -> fine-tune (each from the initial model, on all rounds' data)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    n_questions: int | None = 256
    """Label the rollouts of the first n training questions only (None: all of them)."""
    good_threshold: float = 0.5
    """Sparse labels: a solution is good when its return exceeds this (sparse reward: it is correct)."""
    step_threshold: float = 0.0
    """Dense labels, heuristic reward: a step is good when its step reward exceeds this."""
    orm_threshold: float = 0.5
    """Dense labels, ORM reward: a step is good when the ORM's probability after it exceeds this."""
    train: SFTConfig = field(default_factory=lambda: SFTConfig(epochs=2, lr=1e-4, warmup_steps=5,
                                                               mixed_precision="auto", save_every_epoch=False))
    """Fine-tuning on the labelled rollouts (loss on solution tokens, not on labels)."""
    eval_k: int | None = 8
    """K of the test-set evaluations of RCRL policies (None: the profile's; maj@1 and pass@1 do not
    depend on K, maj@K and pass@K do)."""
    bad_eval_k: int = 4
    """Samples per question when evaluating with the bad label (a check; its maj@1 is greedy)."""

    def __post_init__(self):
        check_int_at_least("RCRLConfig", "k", self.k, 1)
        check_int_at_least("RCRLConfig", "rounds", self.rounds, 1)
        check_at_least("RCRLConfig", "temperature", self.temperature, 0.0)
