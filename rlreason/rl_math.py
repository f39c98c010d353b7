"""The math of PPO for language models, as small pure functions over padded token tensors.

Every tensor is `[rows, T]`: one row per sampled solution, one column per generated token (an
action), right-padded, with `mask` (1.0 on real tokens, 0.0 on padding). Nothing here knows about
models or text; `rlreason.ppo` calls these in its loop and `tests/test_rl_math.py` checks each
one against a plain Python loop or a hand computation.

- `masked_mean`, `masked_var`, `masked_whiten`: statistics over the real tokens only.
- `kl_estimate`: per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs:
  k1 = log pi - log pi_ref (unbiased, can be negative per token) or
  k3 = (r - 1) - log r with r = pi_ref / pi (unbiased, always >= 0; Schulman's "Approximating KL").
- `token_rewards`: task reward per token minus `kl_coef` x the KL estimate on every token.
- `gae`: generalised advantage estimation (Schulman et al. 2016) with the episode ending after
  each row's last real token (V = 0 there).
- `policy_loss`: PPO's clipped surrogate, with approx_kl and clip fraction (CleanRL's estimators).
- `value_loss`: the clipped value loss (max of clipped and unclipped squared errors).
- `explained_variance`, `entropy_from_logits`: diagnostics.
- `AdaptiveKLController`: Ziegler et al. (2019)'s proportional controller of the KL coefficient.
- `lr_factor`: linear warmup, then a constant or cosine learning rate, as a multiplier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AdaptiveKLController", "entropy_from_logits", "explained_variance", "gae", "kl_estimate",
           "lr_factor", "masked_mean", "masked_var", "masked_whiten", "policy_loss", "token_rewards",
           "value_loss"]

KL_ESTIMATORS = ("k1", "k3")
LR_SCHEDULES = ("constant", "cosine")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is 1 (over everything, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked entries (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """`(x - mean) / std` over the masked entries (`shift_mean=False`: only divide by std, so the
    sign of a reward is kept); padding comes out as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) at the sampled tokens (tokens drawn from pi).

    k1 = log pi(a) - log pi_ref(a): its mean over samples is the KL, per token it can be < 0.
    k3 = (r - 1) - log r, r = pi_ref(a) / pi(a): also unbiased, >= 0 per token, lower variance.
    Both are exactly 0 where the two log-probs are equal.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")


def token_rewards(task: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards `task - kl_coef * KL` (KL on every real token) and the KL estimate.

    `task` holds the task reward where the reward function placed it (sparse: last token; dense:
    the tokens that end a step; ORM: as the ORM says); padding gets 0.
    """
    kl = kl_estimate(logprobs, ref_logprobs, kind) * mask
    return (task - kl_coef * kl) * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by GAE over right-padded rows; each row's episode ends after its
    last real token (the value after it is 0: the terminal state, also for truncated samples).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  R_t = A_t + V_t.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]  # padding resets the recursion to 0
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLossStats:
    """Diagnostics of one clipped policy loss (floats, detached)."""

    approx_kl: float
    """E[(r - 1) - log r], r = pi_new / pi_old: KL(old || new) estimate (CleanRL's k3)."""
    clip_frac: float
    """Fraction of tokens where the ratio left [1 - clip, 1 + clip] (the clipped term was used)."""


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, PolicyLossStats]:
    """PPO's clipped surrogate, to minimise: mean over tokens of max(-A r, -A clip(r, 1-c, 1+c))."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        clip_frac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, PolicyLossStats(float(approx_kl), float(clip_frac))


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2) -> tuple[torch.Tensor, float]:
    """0.5 x mean over tokens of max((V - R)^2, (V_clipped - R)^2), V_clipped within `clip` of the
    rollout's values (`clip=None`: plain squared error); also the fraction of tokens clipped."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), 0.0
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, float(frac)


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(target - pred) / Var(target) over masked entries: 1 perfect, 0 no better than the
    mean, < 0 worse than predicting the mean; NaN when the target is constant."""
    var_y = masked_var(target, mask)
    if float(var_y) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(target - pred, mask) / var_y)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) along the last axis: logsumexp(z) - sum(softmax(z) z)."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


@dataclass
class AdaptiveKLController:
    """The KL coefficient: fixed (`target=None`) or adapted to keep the KL near `target` (Ziegler et
    al. 2019; trlx's `AdaptiveKLController`, same formula):
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon).

    `rlreason.ppo` calls `update` once per PPO update with the update's mean KL per solution and
    its number of solutions, as Ziegler et al. do (trlx calls it once per PPO epoch with its train
    batch size, so the same `horizon` moves trlx's coefficient `ppo_epochs x batch / rollouts`
    times as fast)."""

    value: float
    """The current KL coefficient beta."""
    target: float | None = None
    """Target KL per solution (summed over its tokens); None keeps `value` fixed."""
    horizon: int = 10000
    """Samples over which the coefficient can change by a factor of about e^0.2."""

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt after a batch of `n_steps` samples whose mean KL was `current_kl`; returns beta."""
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def lr_factor(step: int, total: int, warmup: int = 0, schedule: str = "constant",
              floor: float = 0.0) -> float:
    """Multiplier of the learning rate at `step` (0-based) of `total`: (step + 1) / warmup over the
    first `warmup` steps, then 1 (`constant`) or a half cosine from 1 towards `floor` (`cosine`,
    reaching it at `total`; past `total` it stays there). The same rule as SFT's `lr_lambda`."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {LR_SCHEDULES}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
