"""The math of PPO (`rlreason.rl_math`) against plain loops and hand computations."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from rlreason.config import SFTConfig
from rlreason.rl_math import (
    AdaptiveKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    lr_factor,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from rlreason.training import lr_lambda


def random_batch(seed: int, rows: int = 5, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (rows,), generator=g)
    lengths[0] = T  # one full row
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rewards = torch.randn(rows, T, generator=g) * mask
    values = torch.randn(rows, T, generator=g) * mask
    return rewards, values, mask, lengths.tolist()


def gae_loop(rewards, values, n, gamma, lam):
    """GAE for one episode of n steps, written as the textbook recursion on Python floats."""
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_plain_loop(gamma, lam):
    for seed in range(5):
        rewards, values, mask, lengths = random_batch(seed)
        adv, ret = gae(rewards, values, mask, gamma, lam)
        for i, n in enumerate(lengths):
            want_adv, want_ret = gae_loop(rewards[i, :n].tolist(), values[i, :n].tolist(), n, gamma, lam)
            assert adv[i, :n].tolist() == pytest.approx(want_adv, abs=1e-5)
            assert ret[i, :n].tolist() == pytest.approx(want_ret, abs=1e-5)
            assert torch.all(adv[i, n:] == 0) and torch.all(ret[i, n:] == 0)


def test_gae_ignores_garbage_in_padding():
    rewards, values, mask, _ = random_batch(0)
    noisy_r = rewards + 100 * (1 - mask)
    noisy_v = values + 100 * (1 - mask)
    a1, r1 = gae(rewards, values, mask)
    a2, r2 = gae(noisy_r * mask, noisy_v, mask)  # rewards are masked by their producer; values are not
    assert torch.allclose(a1, a2) and torch.allclose(r1, r2)


def test_gae_with_lambda_one_and_gamma_one_is_return_minus_value():
    rewards, values, mask, lengths = random_batch(3)
    _, ret = gae(rewards, values, mask, 1.0, 1.0)
    for i, n in enumerate(lengths):
        togo = [sum(rewards[i, t:n].tolist()) for t in range(n)]
        assert ret[i, :n].tolist() == pytest.approx(togo, abs=1e-5)


def test_clipped_policy_loss_and_gradient_on_hand_made_ratios():
    ratios = torch.tensor([[0.5, 1.0, 1.5, 0.5, 1.5, 3.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, -1.0, 7.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])  # the last token is padding
    old = torch.zeros_like(ratios)
    logp = ratios.log().requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, mask, clip=0.2)
    # Per token max(-A r, -A clip(r, 0.8, 1.2)):
    #  r=.5,A=1: max(-.5,-.8)=-.5 (unclipped)   r=1,A=-1: 1          r=1.5,A=1: max(-1.5,-1.2)=-1.2 (clipped)
    #  r=.5,A=-1: max(.5,.8)=.8 (clipped)       r=1.5,A=-1: max(1.5,1.2)=1.5 (unclipped)
    assert loss.item() == pytest.approx((-0.5 + 1 - 1.2 + 0.8 + 1.5) / 5)
    loss.backward()
    # d/dlogp of -A r is -A r where the unclipped term is taken, 0 where the clipped one is.
    want = torch.tensor([[-0.5, 1.0, 0.0, 0.0, 1.5, 0.0]]) / 5
    assert torch.allclose(logp.grad, want, atol=1e-6)
    assert stats.clip_frac == pytest.approx(4 / 5)
    want_kl = sum((r - 1) - math.log(r) for r in [0.5, 1.0, 1.5, 0.5, 1.5]) / 5
    assert stats.approx_kl == pytest.approx(want_kl, rel=1e-5)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    adv = torch.randn(3, 4)
    mask = torch.ones(3, 4)
    logp = torch.randn(3, 4)
    loss, stats = policy_loss(logp, logp.clone(), adv, mask)
    assert float(loss) == pytest.approx(-float(adv.mean()), abs=1e-6)
    assert stats.clip_frac == 0 and stats.approx_kl == pytest.approx(0, abs=1e-7)


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, 0.1, -0.5]], requires_grad=True)
    ret = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.ones(1, 3)
    loss, frac = value_loss(new, old, ret, mask, clip=0.2)
    # token 1: unclipped (0.5-1)^2=.25, clipped (0.2-1)^2=.64 -> .64 (clipped, no gradient)
    # token 2: both (0.1-1)^2=.81 -> .81;  token 3: unclipped 2.25, clipped (-0.2-1)^2=1.44 -> 2.25
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    assert frac == pytest.approx(1 / 3)
    loss.backward()
    assert torch.allclose(new.grad, torch.tensor([[0.0, (0.1 - 1) / 3, (-0.5 - 1) / 3]]))
    plain, _ = value_loss(new.detach(), old, ret, mask, clip=None)
    assert float(plain) == pytest.approx(0.5 * (0.25 + 0.81 + 2.25) / 3)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_is_zero_when_policy_equals_reference(kind):
    logp = torch.log_softmax(torch.randn(4, 7, 11), -1)[..., 0]
    assert torch.all(kl_estimate(logp, logp.clone(), kind) == 0)


def test_kl_estimators_are_unbiased_and_k3_is_nonnegative():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    true_kl = float((p * (p.log() - q.log())).sum())
    a = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k1 = kl_estimate(p.log()[a], q.log()[a], "k1")
    k3 = kl_estimate(p.log()[a], q.log()[a], "k3")
    assert float(k1.mean()) == pytest.approx(true_kl, abs=0.01)
    assert float(k3.mean()) == pytest.approx(true_kl, abs=0.01)
    assert bool((k3 >= 0).all()) and bool((k1 < 0).any())
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(p.log(), q.log(), "k2")


def test_token_rewards_put_kl_on_every_token_and_task_where_placed():
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    task = torch.tensor([[0.0, 0.5, 0, 1.0], [0, 1.0, 0, 0]])  # dense (step end + last) / sparse (last)
    logp = torch.tensor([[-1.0, -2, -3, -4], [-1, -1, 9, 9]])
    ref = torch.tensor([[-1.5, -2, -2, -4], [-2, -0.5, 0, 0]])
    rewards, kl = token_rewards(task, logp, ref, mask, kl_coef=0.1, kind="k1")
    assert torch.allclose(kl, torch.tensor([[0.5, 0, -1, 0], [1, -0.5, 0, 0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.5, 0.1, 1.0], [-0.1, 1.05, 0, 0]]))


def test_masked_whiten():
    x = torch.tensor([[1.0, 2, 3, 100], [4, 5, 100, 100]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    w = masked_whiten(x, mask)
    assert float(masked_mean(w, mask)) == pytest.approx(0, abs=1e-6)
    assert float(w[mask.bool()].std()) == pytest.approx(1, abs=1e-5)
    assert torch.all(w[~mask.bool()] == 0)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert float(masked_mean(kept, mask)) == pytest.approx(3.0, abs=1e-5)


def test_explained_variance():
    y = torch.randn(4, 6)
    mask = torch.ones(4, 6)
    assert explained_variance(y, y, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(y, float(y.mean())), y, mask) == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(-y, y, mask) < 0
    assert math.isnan(explained_variance(y, torch.ones_like(y), mask))


def test_entropy_from_logits_equals_torch_distributions():
    logits = torch.randn(3, 5, 17) * 3
    want = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), want, atol=1e-5)
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 8)), torch.full((2,), math.log(8)))


def test_adaptive_kl_controller():
    fixed = AdaptiveKLController(0.05)
    assert fixed.update(100.0, 256) == 0.05
    up = AdaptiveKLController(0.05, target=1.0, horizon=1000)
    assert up.update(5.0, 100) == pytest.approx(0.05 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    down = AdaptiveKLController(0.05, target=1.0, horizon=1000)
    assert down.update(0.9, 100) == pytest.approx(0.05 * (1 - 0.1 * 0.1))
    steady = AdaptiveKLController(0.05, target=1.0)
    assert steady.update(1.0, 100) == pytest.approx(0.05)
    rng = random.Random(0)
    ctl = AdaptiveKLController(0.05, target=2.0, horizon=100)
    for _ in range(50):
        ctl.update(4.0 + rng.random(), 10)
    assert ctl.value > 0.05 * 2  # a KL persistently above target keeps raising the coefficient


def trlx_adaptive_kl(value: float, target: float, horizon: int, current: float, n_steps: int) -> float:
    """trlx's `AdaptiveKLController.update` (trlx/models/modeling_ppo.py), transcribed."""
    proportional_error = np.clip(current / target - 1, -0.2, 0.2)
    return value * (1 + proportional_error * n_steps / horizon)


def test_adaptive_kl_controller_equals_trlx_and_moves_towards_the_target():
    target, horizon, n = 0.5, 1000, 64
    ctl = AdaptiveKLController(0.05, target=target, horizon=horizon)
    rng = random.Random(1)
    for current in [-0.1, 0.0, 0.2, 0.45, 0.5, 0.55, 0.6, 1.0, 50.0] + [rng.uniform(0, 2) for _ in range(20)]:
        before = ctl.value
        after = ctl.update(current, n)
        assert after == pytest.approx(trlx_adaptive_kl(before, target, horizon, current, n), rel=1e-12)
        if current > target:
            assert after > before  # KL above target: a stronger penalty
        elif current < target:
            assert after < before  # below: a weaker one
        else:
            assert after == before
    # The proportional error is clipped to +-0.2: far above (or below) target moves the coefficient
    # exactly as 1.2 (0.8) x target does, by at most a factor 1 +- 0.2 n / horizon per call.
    for far, edge in ((100.0, 1.2 * target), (0.0, 0.8 * target), (-3.0, 0.8 * target)):
        a, b = AdaptiveKLController(0.05, target, horizon), AdaptiveKLController(0.05, target, horizon)
        assert a.update(far, n) == pytest.approx(b.update(edge, n))
    assert AdaptiveKLController(0.05, target, horizon).update(100.0, n) == pytest.approx(0.05 * (1 + 0.2 * n / horizon))


def test_lr_factor_warmup_constant_and_cosine():
    assert [lr_factor(s, 10) for s in range(12)] == [1.0] * 12  # today's: constant, no warmup
    assert [lr_factor(s, 10, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, 10, warmup=2, schedule="cosine", floor=0.1) for s in range(13)]
    assert cos[:3] == pytest.approx([0.5, 1.0, 1.0])  # warmup, then the cosine starts at 1
    assert cos[6] == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mean of 1 and the floor
    assert cos[10:] == pytest.approx([0.1] * 3)  # the floor at `total`, kept after it
    assert all(a >= b for a, b in zip(cos[1:], cos[2:]))  # non-increasing after the warmup
    assert lr_factor(3, 10, schedule="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    with pytest.raises(ValueError, match="linear"):
        lr_factor(0, 10, schedule="linear")


def test_lr_factor_is_sfts_lr_lambda():
    """The same rule as SFT's scheduler (`training.lr_lambda`), step for step."""
    for schedule, warmup, floor in (("constant", 0, 0.0), ("constant", 3, 0.0), ("cosine", 2, 0.1),
                                    ("cosine", 0, 0.0)):
        sft = lr_lambda(SFTConfig(warmup_steps=warmup, schedule=schedule, min_lr_ratio=floor), 12)
        assert [lr_factor(s, 12, warmup, schedule, floor) for s in range(14)] == pytest.approx(
            [sft(s) for s in range(14)])
