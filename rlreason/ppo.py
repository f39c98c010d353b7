"""PPO on math word problems with token-level rewards and a KL penalty to the initial policy.

`train_ppo` reads top to bottom, CleanRL-style; the math lives in `rlreason.rl_math` and the token
layout (`TokenBatch`, the grouped forward) in `rlreason.batching`. Each update:

1. **Rollouts**: `samples_per_question` solutions for each of `questions_per_update` training
   questions from the current policy, at temperature 1 with no top-p (samples from pi itself, as
   the probability ratio assumes).
2. **Scoring**, no gradients, on the padded batch that training uses: old log-probs and values
   V(s_t), the reference's log-probs (the frozen initial policy, see `load_models`), the task
   rewards of any `RewardFn` (sparse, dense at step ends, the ORM), one value per token.
3. **Advantages**: per-token reward = task reward - kl_coef x KL estimate (on every token),
   optionally whitened; GAE (gamma, lambda); advantages normalised over the batch.
4. **PPO epochs**: shuffled minibatches of whole questions (a question's samples share one prompt
   forward) get the clipped policy and value losses and an optional entropy bonus, then gradient
   clipping and AdamW at `learning_rates` (warmup, then constant or cosine; in the first
   `value_warmup_updates` updates only the value trains).
5. **Bookkeeping**: one row to `metrics.jsonl` (reward, KL and its coefficient, approx_kl, clip
   fraction, explained variance, entropy, learning rates, rollouts...). A non-finite loss,
   gradient or reward stops the run, before any step, keeping the last good checkpoint. The resume
   state (`checkpoint/state.pt`) is saved every `save_every` updates; the policy is evaluated
   every `eval_every` updates.

The value is a linear head on the policy's last hidden state (`value_model="head"`) or on its own
copy of the initial model (`"separate"`, with LoRA when the policy has LoRA). Randomness is a pure
function of (seed, update): questions, sampler seed, minibatch order; so a resumed run gives the
metrics of one that never stopped. `rlreason.stages.ppo` picks the initial checkpoint, the reward
and the evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import TokenBatch, forward, pack, task_reward_tensor, token_logprobs
from .config import LoraSettings, PPOConfig
from .evaluation import EvaluateFn
from .grading import answers_match, extract_answer
from .io import append_jsonl, read_jsonl, write_jsonl
from .models import is_adapter_dir, load_policy, save_policy
from .ppo_rollouts import rollout_request, sub_seed
from .precision import autocast, autocast_dtype, decide, probe_batch
from .problems import Problem, format_prompt
from .rl_math import (
    AdaptiveKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    lr_factor,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from .runs import Run, set_seed
from .sampling import HFSampler, Sampler

CHECKPOINT = "checkpoint"  # resume state: run_dir/checkpoint/state.pt
REFERENCE_ADAPTER = "reference"  # the frozen copy of an initial LoRA adapter


class NonFiniteError(FloatingPointError):
    """PPO met a NaN or infinity (reward, loss or gradient); nothing after the last checkpoint was saved."""


# ---- the value function ---------------------------------------------------------------------------


class ValueHead(torch.nn.Module):
    """V(s_t) = w . h_t + b on the last hidden state; zero-initialised (V = 0 at the start).
    `fp32=True`: in float32 even under autocast (otherwise its matmul takes the autocast dtype)."""

    def __init__(self, hidden_size: int, fp32: bool = False):
        super().__init__()
        self.fp32 = fp32
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        fp32 = torch.autocast(hidden.device.type, enabled=False) if self.fp32 else None
        with fp32 or contextlib.nullcontext():
            return self.linear(hidden.float()).squeeze(-1)


# ---- models: policy, reference, value ------------------------------------------------------------


def load_models(init: str | os.PathLike, lora: LoraSettings | None, load_in_4bit: bool,
                value_model: str, value_head_fp32: bool = False):
    """Policy, tokenizer, reference forward, value head, separate value model (or None).

    The reference forward returns the initial policy's response logits for a `TokenBatch`: a frozen
    copy's with full fine-tuning; with LoRA the same network's with its adapters off (no second
    copy), or a frozen copy of the initial adapter's when `init` is an adapter folder.
    """
    init = str(init)
    policy, tokenizer = load_policy(init, lora=lora, load_in_4bit=load_in_4bit)
    peft = hasattr(policy, "peft_config")
    if peft and is_adapter_dir(init):
        # The initial policy is base + an adapter that PPO keeps training: a frozen copy of that
        # adapter is the reference (disabling adapters would give the pretrained base instead).
        policy.load_adapter(init, adapter_name=REFERENCE_ADAPTER, is_trainable=False)

        def reference(batch: TokenBatch) -> torch.Tensor:
            return forward(policy, batch, adapter=REFERENCE_ADAPTER)[0]
    elif peft:
        def reference(batch: TokenBatch) -> torch.Tensor:
            with policy.disable_adapter():
                return forward(policy, batch)[0]
    else:
        ref_model, _ = load_policy(init, trainable=False)

        def reference(batch: TokenBatch) -> torch.Tensor:
            return forward(ref_model, batch)[0]

    if value_model not in ("head", "separate"):
        raise ValueError(f"unknown value_model {value_model!r}; expected 'head' or 'separate'")
    separate = value_model == "separate"
    critic = load_policy(init, lora=lora, load_in_4bit=load_in_4bit)[0] if separate else None
    value_head = ValueHead((critic if separate else policy).config.hidden_size, value_head_fp32)
    value_head.to(next(policy.parameters()).device)
    # Evaluation mode throughout (gradients still flow): no dropout, so the ratio pi/pi_old is
    # exactly 1 at the first minibatch and the reference is deterministic.
    for model in (policy, critic):
        if model is not None:
            model.eval()
    return policy, tokenizer, reference, value_head, critic


def policy_and_values(policy, critic, value_head, batch: TokenBatch, value_only: bool = False):
    """Response logits of the policy and V(s_t) from the shared or the separate network
    (`value_only`: the value's gradient stops before the policy's trunk)."""
    logits, hidden = forward(policy, batch, hidden=critic is None)
    if critic is not None:
        _, hidden = forward(critic, batch, hidden=True)
    return logits, value_head(hidden.detach() if value_only else hidden)


def learning_rates(cfg: PPOConfig, update: int) -> tuple[float, float]:
    """(policy, value) learning rates of `update` (1-based): `lr_factor` over the updates each one
    trains in; the policy's is 0 in the first `value_warmup_updates` and starts after them."""
    sched = {"warmup": cfg.warmup_updates, "schedule": cfg.lr_schedule, "floor": cfg.min_lr_ratio}
    step, frozen = update - 1 - cfg.value_warmup_updates, cfg.value_warmup_updates
    policy = cfg.lr * lr_factor(step, cfg.updates - frozen, **sched) if step >= 0 else 0.0
    return policy, (cfg.value_lr or cfg.lr) * lr_factor(update - 1, cfg.updates, **sched)


def _trainable(*modules) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in zip(("policy", "critic", "value_head"), modules):
        if module is not None:
            out.update({f"{prefix}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
    return out


# ---- resume state -----------------------------------------------------------------------


def _resumable(cfg: PPOConfig) -> dict:
    """The config fields that must match to continue a run: `updates` and the cadence may change
    (`updates` not with a cosine schedule, which ends at `updates`)."""
    free = ("eval_every", "save_every") + (() if cfg.lr_schedule == "cosine" else ("updates",))
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}
    return json.loads(json.dumps(d))


def save_checkpoint(path: Path, *, update: int, rollouts: int, params: dict, optimizer, kl_ctl,
                    cfg: PPOConfig) -> None:
    """The whole resume state in one file, written atomically (temp file + rename)."""
    state = {
        "update": update, "rollouts": rollouts, "config": _resumable(cfg),
        "params": {n: p.detach().cpu().clone() for n, p in params.items()},
        "optimizer": optimizer.state_dict(), "kl_coef": kl_ctl.value,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / "state.pt")


def load_checkpoint(path: Path, *, params: dict, optimizer, kl_ctl, cfg: PPOConfig) -> tuple[int, int]:
    """Restore parameters, optimizer, KL coefficient and RNG states; returns (update, rollouts)."""
    state = torch.load(path / "state.pt", weights_only=False)
    if state["config"] != _resumable(cfg):
        raise ValueError(f"{path} was written with another PPO config; delete the run folder or pass "
                         "recompute=True to start again")
    if set(state["params"]) != set(params):
        raise ValueError(f"{path}: the checkpoint's parameters do not match the model's")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    kl_ctl.value = state["kl_coef"]
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return state["update"], state["rollouts"]


def _check_finite(what: str, value, update: int, last_good: str) -> None:
    v = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise NonFiniteError(f"PPO stopped at update {update}: {what} is not finite (NaN or inf). "
                             f"Nothing of this update was saved; the last good checkpoint is {last_good}, "
                             "and a new call resumes from it.")


# ---- the loop ------------------------------------------------------------------------------------


RolloutSampler = Callable[[Path], Sampler]
"""Makes the sampler of a saved adapter folder (`stages.make_sampler(profile)`)."""


def _sync_adapter(policy, tokenizer, out: Path, update: int) -> Path:
    """Save the policy's adapter for the rollout sampler into a new folder; drop older ones."""
    root = out / "rollout_policy"
    folder = save_policy(policy, tokenizer, root / f"update_{update:04d}")
    for old in root.glob("update_*"):
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return folder


def train_ppo(init: str | os.PathLike, problems: Sequence[Problem], reward_fn, cfg: PPOConfig,
              run: Run, *, lora: LoraSettings | None = None, load_in_4bit: bool = False,
              evaluate: EvaluateFn | None = None, progress: bool = True,
              rollout_sampler: RolloutSampler | None = None) -> list[dict]:
    """PPO from the checkpoint `init` on `problems`; returns the rows of `run.dir/metrics.jsonl`.

    - `reward_fn`: a `rlreason.rewards.RewardFn` (one `Reward` with `per_token` values per sample).
    - `lora`/`load_in_4bit`: train LoRA adapters on a (4-bit) frozen base; None: full fine-tuning.
    - `run`: the output folder (`run.dir`) and the seed (`run.seed`).
    - `evaluate`: called every `cfg.eval_every` updates and after the last one, with the folder
      where the policy was just saved (`update_NNNN/`) and `{"update", "rollouts", "record"}`;
      the metrics it returns are merged into that update's row.
    - `rollout_sampler`: samples the rollouts from an adapter folder instead of in-process HF
      sampling (vLLM: `stages.make_sampler`); LoRA only. The policy's adapter is saved into
      `run.dir/rollout_policy/update_NNNN/` before each update's rollouts (a new folder, a new
      adapter id: adapter-only sync); the sampler's and trainer's log-probs are compared in
      `logprob_mismatch`.
    - Resumes from `run.dir/checkpoint/` when present (same config): continues to `cfg.updates`.
    """
    # ---- setup: seeding, models, optimizer ----
    out, seed = Path(run.dir), run.seed
    out.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    autocast_dtype(cfg.mixed_precision)  # a bad setting fails here, before any work
    policy, tokenizer, reference, value_head, critic = load_models(
        init, lora, load_in_4bit, cfg.value_model, cfg.value_head_fp32)
    params = _trainable(policy, critic, value_head)
    optimizer = torch.optim.AdamW([  # the value head (and value model) may learn at its own rate
        {"params": [p for n, p in params.items() if n.startswith("policy.")]},
        {"params": [p for n, p in params.items() if not n.startswith("policy.")], "lr": cfg.value_lr or cfg.lr},
    ], lr=cfg.lr, eps=1e-5, weight_decay=cfg.weight_decay)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    if rollout_sampler is not None and lora is None:
        raise ValueError("train_ppo(rollout_sampler=...) serves the policy as a LoRA adapter; "
                         "expected lora settings (full fine-tuning samples in-process)")
    in_process = HFSampler(policy, tokenizer, progress=False) if rollout_sampler is None else None
    device = next(policy.parameters()).device
    prompts_ids = [tokenizer(format_prompt(p.question))["input_ids"] for p in problems]
    precision = decide(cfg.mixed_precision, out, device, policy,  # `auto`: measured on this model
                       {k: v.to(device) for k, v in probe_batch(prompts_ids, tokenizer.pad_token_id).items()})

    # ---- resume ----
    ckpt = out / CHECKPOINT
    start, rollouts = 0, 0
    if (ckpt / "state.pt").exists():
        start, rollouts = load_checkpoint(ckpt, params=params, optimizer=optimizer, kl_ctl=kl_ctl, cfg=cfg)
    metrics_path = out / "metrics.jsonl"
    rows = [r for r in read_jsonl(metrics_path) if r.get("update", 0) <= start] if metrics_path.exists() else []
    write_jsonl(metrics_path, rows)  # drop rows of updates after the checkpoint (they are redone)
    last_good = f"{ckpt} (update {start})" if start else f"the initial policy {init}"

    bar = tqdm(total=cfg.updates, initial=start, desc="ppo", disable=not progress)
    for update in range(start + 1, cfg.updates + 1):
        t0 = time.perf_counter()
        for group, lr in zip(optimizer.param_groups, lrs := learning_rates(cfg, update)):
            group["lr"] = lr  # (policy, value)
        value_only = update <= cfg.value_warmup_updates  # the policy is frozen: value loss only

        # ---- 1. rollouts from the current policy ----
        qs, prompts, sampling = rollout_request(problems, cfg, update, seed)
        n = cfg.samples_per_question
        sampler = in_process or rollout_sampler(_sync_adapter(policy, tokenizer, out, update))
        groups = sampler.generate(prompts, sampling)
        batch_problems = [problems[q] for q in qs for _ in range(n)]
        samples = [s for group in groups for s in group]
        rollouts += len(samples)
        batch = pack([prompts_ids[q] for q in qs for _ in range(n)], [s.token_ids for s in samples],
                     tokenizer.pad_token_id)
        mask = batch.mask
        rewards = reward_fn(batch_problems, samples)
        task = task_reward_tensor(rewards, mask)
        scores = torch.tensor([r.total for r in rewards])
        _check_finite("the task reward", scores, update, last_good)
        t_rollout = time.perf_counter() - t0

        # ---- 2. old log-probs, values and reference log-probs (no gradients) ----
        per_minibatch = max(1, cfg.minibatch_size // n)  # whole questions (see the PPO epochs)
        old_logprobs, values, ref_logprobs, entropy = (torch.zeros_like(mask) for _ in range(4))
        with torch.no_grad(), autocast(device, precision):
            for lo in range(0, len(samples), per_minibatch * n):
                idx = torch.arange(lo, min(lo + per_minibatch * n, len(samples)))
                mb = batch.rows(idx).to(device)
                T = mb.mask.shape[1]
                logits, v = policy_and_values(policy, critic, value_head, mb)
                old_logprobs[idx, :T] = token_logprobs(logits, mb.tokens).cpu()
                entropy[idx, :T] = entropy_from_logits(logits).cpu()
                values[idx, :T] = v.float().cpu()
                ref_logprobs[idx, :T] = token_logprobs(reference(mb), mb.tokens).cpu()
        old_logprobs, values, ref_logprobs, entropy = (x * mask for x in (old_logprobs, values, ref_logprobs, entropy))
        sampler_logprobs = torch.zeros_like(mask)
        for i, s in enumerate(samples):
            sampler_logprobs[i, : len(s.logprobs)] = torch.tensor(s.logprobs)

        # ---- 3. per-token rewards, KL penalty, GAE ----
        rewards_t, kl = token_rewards(task, old_logprobs, ref_logprobs, mask, kl_ctl.value, cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards_t = masked_whiten(rewards_t, mask, shift_mean=False)
        advantages, returns = gae(rewards_t, values, mask, cfg.gamma, cfg.lam)
        if cfg.norm_adv:
            advantages = masked_whiten(advantages, mask)
        _check_finite("the advantages", advantages, update, last_good)
        t_score = time.perf_counter() - t0 - t_rollout

        # ---- 4. PPO epochs over shuffled minibatches ----
        gen = torch.Generator().manual_seed(sub_seed(seed, 2, update))
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "approx_kl", "clip_frac",
                                                          "value_clip_frac", "grad_norm")}
        # Minibatches hold whole questions (their n samples share one prompt forward): rows
        # q*n .. q*n+n-1 are question q's.
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(qs), generator=gen)
            for lo in range(0, len(qs), per_minibatch):
                idx = (perm[lo : lo + per_minibatch, None] * n + torch.arange(n)).flatten()
                mb = batch.rows(idx).to(device)
                T = mb.mask.shape[1]
                mb_old, mb_adv, mb_values, mb_returns = (x[idx, :T].to(device) for x in
                                                         (old_logprobs, advantages, values, returns))
                with autocast(device, precision):
                    logits, new_values = policy_and_values(policy, critic, value_head, mb,
                                                           value_only)
                new_values = new_values.float()
                new_logprobs = token_logprobs(logits, mb.tokens)
                pg, pstats = policy_loss(new_logprobs, mb_old, mb_adv, mb.mask, cfg.cliprange)
                vf, vclip = value_loss(new_values, mb_values, mb_returns, mb.mask, cfg.cliprange_value)
                loss = cfg.vf_coef * vf if value_only else pg + cfg.vf_coef * vf
                if cfg.ent_coef and not value_only:
                    loss = loss - cfg.ent_coef * masked_mean(entropy_from_logits(logits), mb.mask)
                _check_finite("the loss", loss, update, last_good)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
                _check_finite("the gradient norm", grad_norm, update, last_good)
                optimizer.step()
                for key, value in zip(stats, (pg.item(), vf.item(), pstats.approx_kl,
                                              pstats.clip_frac, vclip, float(grad_norm))):
                    stats[key].append(value)

        # ---- 5. log, adapt the KL coefficient, evaluate, checkpoint ----
        row = {
            "update": update, "rollouts": rollouts, "kl_coef": kl_ctl.value, "lr": lrs[0],
            "value_lr": lrs[1], "reward": float(scores.mean()), "reward_std": float(scores.std()),
            "train_correct": float(np.mean([answers_match(extract_answer(s.text, "strict"), p.answer)
                                            for p, s in zip(batch_problems, samples)])),
            "kl": float((kl * mask).sum(1).mean()), "kl_per_token": float(masked_mean(kl, mask)),
            "entropy": float(masked_mean(entropy, mask)),
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": float(masked_mean(values, mask)), "return_mean": float(masked_mean(returns, mask)),
            "response_len": float(mask.sum(1).mean()),
            "truncated_frac": float(np.mean([s.finish_reason == "length" for s in samples])),
            "logprob_mismatch": float(masked_mean((sampler_logprobs - old_logprobs).abs(), mask)),
            **{k: float(np.mean(v)) for k, v in stats.items()},
            "rollout_s": t_rollout, "score_s": t_score, "update_s": time.perf_counter() - t0,
        }
        kl_ctl.update(row["kl"], len(samples))
        if evaluate is not None and (update % cfg.eval_every == 0 or update == cfg.updates):
            path = save_policy(policy, tokenizer, out / f"update_{update:04d}")
            torch.save(value_head.state_dict(), path / "value_head.pt")  # the critic goes with it
            info = {"update": update, "rollouts": rollouts, "record": True}
            row.update(evaluate(path, info) or {})
        append_jsonl(metrics_path, row)
        if update % cfg.save_every == 0 or update == cfg.updates:
            save_checkpoint(ckpt, update=update, rollouts=rollouts, params=params, optimizer=optimizer,
                            kl_ctl=kl_ctl, cfg=cfg)
            last_good = f"{ckpt} (update {update})"
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}", refresh=False)
    bar.close()
    return read_jsonl(metrics_path)
