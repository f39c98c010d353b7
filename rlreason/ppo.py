"""PPO on math word problems with token-level rewards and a KL penalty to the initial policy.

`train_ppo` reads top to bottom, CleanRL-style; the math lives in `rlreason.rl_math`.
Each update does the following.

1. **Rollouts.** It samples `samples_per_question` solutions for each of `questions_per_update`
   training questions from the current policy. Sampling is at temperature 1 with no top-p, so
   the samples come from pi itself, as the probability ratio assumes.
2. **Scoring, no gradients.** It computes three things on the same padded batch that training
   uses:
   - the old log-probs pi_old(a_t|s_t) and values V(s_t);
   - the reference log-probs. The reference is the frozen initial policy: a frozen copy for full
     fine-tuning. With LoRA it is the same network with its adapters off (`disable_adapter`), so
     no second copy is held. When the initial policy is itself an adapter folder (an SFT made
     with LoRA), a frozen copy of that adapter is selected per forward (`adapter_names`).
   - the task rewards. These come from any `RewardFn` (sparse on the last token, dense at step
     ends, or the ORM), one value per generated token.
3. **Advantages.** The per-token reward is the task reward minus kl_coef x the KL estimate, with
   the KL on every token. Rewards are optionally whitened. GAE (gamma, lambda) follows, then the
   advantages are normalised over the batch.
4. **PPO epochs.** Shuffled minibatches of whole questions (a question's samples share its prompt's
   forward pass, `forward`) get the clipped policy loss, the clipped value loss and an
   optional entropy bonus, then gradient clipping and AdamW.
5. **Bookkeeping.** One row goes to `metrics.jsonl`. The row holds the reward, KL, approx_kl, the
   clip fraction, the value's explained variance, entropy, response length and rollouts consumed.
   A non-finite loss, gradient or reward stops the run with a clear message, before any step, and
   the last good checkpoint is kept. The resume state (`checkpoint/state.pt`) is saved every
   `save_every` updates, and the policy is evaluated every `eval_every` updates.

Where the value comes from is `PPOConfig.value_model`:
- `"head"`: a linear head on the policy's last hidden state.
- `"separate"`: its own copy of the initial model, with LoRA when the policy has LoRA, plus a head.

Randomness is a pure function of (seed, update): the questions, the sampler's seed and the minibatch
order. A run resumed from its checkpoint therefore gives the same metrics as one that never stopped.

`run_ppo(profile, init, reward, seed)` is the stage that notebooks call. It picks the initial
checkpoint and the reward, and evaluates through `rlreason.study`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import LoraSettings, PPOConfig
from .grading import answers_match, extract_answer
from .io import append_jsonl, read_jsonl, write_jsonl
from .models import forward_signature, left_pad, load_policy, save_policy, shared_prefix_forward
from .problems import Problem, format_prompt
from .rl_math import (
    AdaptiveKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from .runs import set_seed
from .sampling import HFSampler, SamplingParams
from .training import autocast, autocast_dtype

CHECKPOINT = "checkpoint"  # resume state: run_dir/checkpoint/state.pt
REFERENCE_ADAPTER = "reference"  # the frozen copy of an initial LoRA adapter


class NonFiniteError(FloatingPointError):
    """PPO met a NaN or infinity (reward, loss or gradient); nothing after the last checkpoint was saved."""


# ---- the value function ---------------------------------------------------------------------------


class ValueHead(torch.nn.Module):
    """V(s_t) = w . h_t + b on the last hidden state; zero-initialised (V = 0 at the start)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


# ---- batches of (prompt, response) token sequences -----------------------------------------------


@dataclass
class TokenBatch:
    """Prompts + responses, and where each response token sits in the sequence.

    Two layouts of the same rows: packed (prompt then response, right-padded: `input_ids`,
    `attention_mask`, `index`) and grouped (each distinct prompt once, left-padded, and each row's
    response: `prompt_ids`, `prompt_mask`, `group`, `tokens`). `forward` uses the grouped one: the
    n samples of a question share their prompt's forward pass (and its gradient), which on the
    tiny profile is 40% of the tokens a packed batch would run (49-token prompts, 4 x 43-token
    responses)."""

    input_ids: torch.Tensor
    """[B, L] prompt ids then response ids then padding."""
    attention_mask: torch.Tensor
    """[B, L] 1 on real tokens."""
    tokens: torch.Tensor
    """[B, T] the response tokens (padding where `mask` is 0)."""
    index: torch.Tensor
    """[B, T] column of the packed logits (and hidden states) that predict each response token."""
    mask: torch.Tensor
    """[B, T] 1.0 on real response tokens."""
    prompt_ids: torch.Tensor
    """[Q, Lp] the distinct prompts, left-padded."""
    prompt_mask: torch.Tensor
    """[Q, Lp] 1 on real prompt tokens."""
    group: torch.Tensor
    """[B] the row of `prompt_ids` holding each row's prompt."""

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def rows(self, idx: torch.Tensor) -> TokenBatch:
        """The sub-batch of rows `idx`, trimmed to its own widths."""
        mask = self.mask[idx]
        T = int(mask.sum(1).max())
        attention = self.attention_mask[idx]
        L = int(attention.sum(1).max())
        prompts, group = torch.unique(self.group[idx], return_inverse=True)
        prompt_mask = self.prompt_mask[prompts]
        Lp = int(prompt_mask.sum(1).max())
        return TokenBatch(self.input_ids[idx, :L], attention[:, :L], self.tokens[idx, :T],
                          self.index[idx, :T].clamp(max=L - 1), mask[:, :T],
                          self.prompt_ids[prompts, -Lp:], prompt_mask[:, -Lp:], group)


def pack(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int) -> TokenBatch:
    """Both layouts of prompt+response rows (rows with equal prompt ids share one prompt). Positions
    count from each row's first token, as when the sampler generated them; the packed logits at
    column len(prompt) - 1 + t predict response token t."""
    B = len(prompt_ids)
    L = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    T = max(len(r) for r in response_ids)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    index = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T))
    distinct: dict[tuple[int, ...], int] = {}
    group = torch.zeros(B, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(list(p) + list(r))
        attention[i, :n] = 1
        tokens[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        index[i] = (len(p) - 1 + torch.arange(T)).clamp(max=L - 1)
        mask[i, : len(r)] = 1.0
        group[i] = distinct.setdefault(tuple(p), len(distinct))
    prompts, prompt_mask = left_pad(list(distinct), pad_id)  # dicts keep insertion order: row q
    return TokenBatch(input_ids, attention, tokens, index, mask, prompts, prompt_mask, group)


def task_reward_tensor(rewards: Sequence, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] task rewards from each `Reward.per_token` (one value per generated token)."""
    out = torch.zeros_like(mask)
    for i, r in enumerate(rewards):
        n = int(mask[i].sum())
        if len(r.per_token) != n:
            raise ValueError(f"reward {i} has {len(r.per_token)} per-token values for {n} tokens")
        out[i, :n] = torch.tensor(r.per_token, dtype=out.dtype)
    return out


def _at_response(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick the columns `index` [B, T] of `x` [B, L, ...] -> [B, T, ...]."""
    shape = (*index.shape, *x.shape[2:])
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape))


def forward(model, batch: TokenBatch, hidden: bool = False, adapter: str | None = None,
            grouped: bool = True):
    """Response logits [B, T, V] (float32) and, if asked, the last hidden states [B, T, H].

    `adapter`: the LoRA adapter to run (peft's `adapter_names`; None: the active one).
    `grouped=True` runs each distinct prompt once into a KV cache whose rows are gathered to the
    responses (the gather is differentiable, so the prompt's tokens get their gradient from every
    response); `grouped=False` runs the packed rows. Both give the same values up to float rounding.
    """
    def run(**inputs):
        extra = {"adapter_names": [adapter] * inputs["input_ids"].shape[0]} if adapter is not None else {}
        return model(**inputs, output_hidden_states=hidden, **extra)

    if not grouped:
        out = run(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logits = _at_response(out.logits, batch.index).float()
        return logits, (_at_response(out.hidden_states[-1], batch.index) if hidden else None)
    # The logits at a prompt's last token predict response token 0; those at response token t-1
    # predict token t.
    cache_kw, has_logits_to_keep = forward_signature(model)
    prompt_out, rest = shared_prefix_forward(
        run, batch.prompt_ids, batch.prompt_mask, batch.group, batch.tokens[:, :-1], batch.mask[:, :-1],
        cache_kw, **({"logits_to_keep": 1} if has_logits_to_keep else {}))
    logits = prompt_out.logits[:, -1:][batch.group]
    states = prompt_out.hidden_states[-1][:, -1:][batch.group] if hidden else None
    if rest is not None:
        logits = torch.cat([logits, rest.logits], dim=1)
        states = torch.cat([states, rest.hidden_states[-1]], dim=1) if hidden else None
    return logits.float(), states


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) under raw logits [B, T, V] -> [B, T]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


# ---- models: policy, reference, value ------------------------------------------------------------


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _is_adapter_dir(path) -> bool:
    return os.path.isfile(os.path.join(str(path), "adapter_config.json"))


def load_models(init: str | os.PathLike, lora: LoraSettings | None, load_in_4bit: bool, value_model: str):
    """Policy, tokenizer, reference forward, value head, separate value model (or None).

    The reference forward returns the initial policy's response logits for a `TokenBatch`.
    """
    init = str(init)
    policy, tokenizer = load_policy(init, lora=lora, load_in_4bit=load_in_4bit)
    if _is_peft(policy) and _is_adapter_dir(init):
        # The initial policy is base + an adapter that PPO keeps training: a frozen copy of that
        # adapter is the reference (disabling adapters would give the pretrained base instead).
        policy.load_adapter(init, adapter_name=REFERENCE_ADAPTER, is_trainable=False)

        def reference(batch: TokenBatch) -> torch.Tensor:
            return forward(policy, batch, adapter=REFERENCE_ADAPTER)[0]
    elif _is_peft(policy):
        def reference(batch: TokenBatch) -> torch.Tensor:
            with policy.disable_adapter():
                return forward(policy, batch)[0]
    else:
        ref_model, _ = load_policy(init, trainable=False)

        def reference(batch: TokenBatch) -> torch.Tensor:
            return forward(ref_model, batch)[0]

    device = next(policy.parameters()).device
    if value_model == "head":
        critic = None
        hidden_size = policy.config.hidden_size
    elif value_model == "separate":
        critic, _ = load_policy(init, lora=lora, load_in_4bit=load_in_4bit)
        critic.eval()
        hidden_size = critic.config.hidden_size
    else:
        raise ValueError(f"unknown value_model {value_model!r}; expected 'head' or 'separate'")
    value_head = ValueHead(hidden_size).to(device)
    # Evaluation mode throughout (gradients still flow): no dropout, so the ratio pi/pi_old is
    # exactly 1 at the first minibatch and the reference is deterministic.
    policy.eval()
    return policy, tokenizer, reference, value_head, critic


def policy_and_values(policy, critic, value_head, batch: TokenBatch):
    """Response logits of the policy and V(s_t) from the shared or the separate network."""
    logits, hidden = forward(policy, batch, hidden=critic is None)
    if critic is not None:
        _, hidden = forward(critic, batch, hidden=True)
    return logits, value_head(hidden)


def _trainable(*modules) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in zip(("policy", "critic", "value_head"), modules):
        if module is not None:
            out.update({f"{prefix}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
    return out


# ---- seeds and resume state -----------------------------------------------------------------------


def _sub_seed(seed: int, *keys: int) -> int:
    """A deterministic 62-bit seed from the run's seed and some integers (update, epoch...)."""
    out = seed
    for k in keys:
        out = (out * 1_000_003 + k + 1) % (2**62)
    return out


def questions_for_update(n_problems: int, per_update: int, update: int, seed: int) -> list[int]:
    """Question indices of an update (1-based): passes over the training set, each in a fresh
    seeded order, cut into consecutive chunks of `per_update`."""
    out, start = [], (update - 1) * per_update
    while len(out) < per_update:
        epoch, offset = divmod(start + len(out), n_problems)
        order = torch.randperm(n_problems, generator=torch.Generator().manual_seed(_sub_seed(seed, 7, epoch)))
        out.extend(order[offset : offset + per_update - len(out)].tolist())
    return out


def _resumable(cfg: PPOConfig) -> dict:
    """The config fields that must match to continue a run (`updates` and the cadence may change)."""
    d = dataclasses.asdict(cfg)
    for key in ("updates", "eval_every", "save_every"):
        d.pop(key, None)
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

EvaluateFn = Callable[[Path, int, int], dict]
"""evaluate(policy_checkpoint, update, rollouts) -> metrics merged into that update's row."""


def train_ppo(init: str | os.PathLike, problems: Sequence[Problem], reward_fn, cfg: PPOConfig,
              out_dir: str | os.PathLike, *, seed: int = 0, lora: LoraSettings | None = None,
              load_in_4bit: bool = False, evaluate: EvaluateFn | None = None,
              progress: bool = True) -> list[dict]:
    """PPO from the checkpoint `init` on `problems`; returns the rows of `out_dir/metrics.jsonl`.

    - `reward_fn`: a `rlreason.rewards.RewardFn` (one `Reward` with `per_token` values per sample).
    - `lora`/`load_in_4bit`: train LoRA adapters on a (4-bit) frozen base; None: full fine-tuning.
    - `evaluate`: called every `cfg.eval_every` updates and after the last one, with the folder
      where the policy was just saved (`update_NNNN/`).
    - Resumes from `out_dir/checkpoint/` when present (same config): continues to `cfg.updates`.
    """
    from tqdm.auto import tqdm

    # ---- setup: seeding, models, optimizer ----
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    autocast_dtype(cfg.mixed_precision)  # a bad setting fails here, before any work
    policy, tokenizer, reference, value_head, critic = load_models(init, lora, load_in_4bit, cfg.value_model)
    params = _trainable(policy, critic, value_head)
    optimizer = torch.optim.AdamW([  # the value head (and value model) may learn at its own rate
        {"params": [p for n, p in params.items() if n.startswith("policy.")]},
        {"params": [p for n, p in params.items() if not n.startswith("policy.")], "lr": cfg.value_lr or cfg.lr},
    ], lr=cfg.lr, eps=1e-5, weight_decay=cfg.weight_decay)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    sampler = HFSampler(policy, tokenizer, progress=False)
    device = next(policy.parameters()).device
    max_new = cfg.max_new_tokens
    prompts_ids = [tokenizer(format_prompt(p.question))["input_ids"] for p in problems]

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

        # ---- 1. rollouts from the current policy ----
        qs = questions_for_update(len(problems), cfg.questions_per_update, update, seed)
        n = cfg.samples_per_question
        groups = sampler.generate([format_prompt(problems[q].question) for q in qs], SamplingParams(
            n=n, temperature=1.0, max_new_tokens=max_new, seed=_sub_seed(seed, 1, update)))
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
        with torch.no_grad(), autocast(device, cfg.mixed_precision):
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
        gen = torch.Generator().manual_seed(_sub_seed(seed, 2, update))
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
                with autocast(device, cfg.mixed_precision):
                    logits, new_values = policy_and_values(policy, critic, value_head, mb)
                new_values = new_values.float()
                new_logprobs = token_logprobs(logits, mb.tokens)
                pg, pstats = policy_loss(new_logprobs, mb_old, mb_adv, mb.mask, cfg.cliprange)
                vf, vclip = value_loss(new_values, mb_values, mb_returns, mb.mask, cfg.cliprange_value)
                loss = pg + cfg.vf_coef * vf
                if cfg.ent_coef:
                    loss = loss - cfg.ent_coef * masked_mean(entropy_from_logits(logits), mb.mask)
                _check_finite("the loss", loss, update, last_good)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
                _check_finite("the gradient norm", grad_norm, update, last_good)
                optimizer.step()
                for key, value in (("pg_loss", pg.item()), ("vf_loss", vf.item()), ("approx_kl", pstats.approx_kl),
                                   ("clip_frac", pstats.clip_frac), ("value_clip_frac", vclip),
                                   ("grad_norm", float(grad_norm))):
                    stats[key].append(value)

        # ---- 5. log, adapt the KL coefficient, evaluate, checkpoint ----
        seq_kl = (kl * mask).sum(1)
        lengths = mask.sum(1)
        row = {
            "update": update, "rollouts": rollouts, "kl_coef": kl_ctl.value,
            "reward": float(scores.mean()), "reward_std": float(scores.std()),
            "train_correct": float(np.mean([answers_match(extract_answer(s.text, "strict"), p.answer)
                                            for p, s in zip(batch_problems, samples)])),
            "kl": float(seq_kl.mean()), "kl_per_token": float(masked_mean(kl, mask)),
            "entropy": float(masked_mean(entropy, mask)),
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": float(masked_mean(values, mask)), "return_mean": float(masked_mean(returns, mask)),
            "response_len": float(lengths.mean()),
            "truncated_frac": float(np.mean([s.finish_reason == "length" for s in samples])),
            "logprob_mismatch": float(masked_mean((sampler_logprobs - old_logprobs).abs(), mask)),
            **{k: float(np.mean(v)) for k, v in stats.items()},
            "rollout_s": t_rollout, "score_s": t_score, "update_s": time.perf_counter() - t0,
        }
        kl_ctl.update(row["kl"], len(samples))
        if evaluate is not None and (update % cfg.eval_every == 0 or update == cfg.updates):
            path = save_policy(policy, tokenizer, out / f"update_{update:04d}")
            torch.save(value_head.state_dict(), path / "value_head.pt")  # the critic goes with it
            row.update(evaluate(path, update, rollouts) or {})
        append_jsonl(metrics_path, row)
        if update % cfg.save_every == 0 or update == cfg.updates:
            save_checkpoint(ckpt, update=update, rollouts=rollouts, params=params, optimizer=optimizer,
                            kl_ctl=kl_ctl, cfg=cfg)
            last_good = f"{ckpt} (update {update})"
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")
    bar.close()
    return read_jsonl(metrics_path)


# ---- the stage notebooks call ----------------------------------------------------------------------


@dataclass
class PPORun:
    """A finished PPO run: its folder, its training log and its evaluations."""

    run_dir: Path
    """`profile.runs_dir/ppo-<init>-<reward>-seed<seed>/`."""
    rows: list[dict]
    """One row per update (`metrics.jsonl`); evaluated updates carry `test_*` metrics."""
    final: object
    """`EvalResult` of the last update's policy on the test set (with per-question arrays)."""
    final_checkpoint: Path
    """The last update's policy folder (`update_NNNN/`)."""


EVAL_KEYS = ("maj1_strict", "maj1_flexible", "majK_strict", "majK_flexible", "rerankK_strict",
             "rerankK_flexible", "passK_strict", "passK_flexible", "maj1_strict_lo", "maj1_strict_hi",
             "distinct_correct", "frac_multi_correct")


def orm_scorer(profile, seed: int = 0):
    """The ORM of `rlreason.orm` as a `Scorer` and an `ORMScorer`, or (None, None) without it."""
    try:
        from .orm import ORMScorer, orm_checkpoint
    except ImportError:
        return None, None
    orm = ORMScorer(orm_checkpoint(profile, seed))
    return orm.as_scorer(), orm


def run_ppo(profile, init: str = "sft", reward: str = "sparse", seed: int = 0, *,
            cfg: PPOConfig | None = None, orm=None, scorer=None, recompute: bool = False,
            progress: bool = True) -> PPORun:
    """The PPO stage: PPO from the SFT checkpoint (`init="sft"`) or the pretrained base
    (`"pretrained"`) with the `sparse`, `dense` or `orm` reward, evaluated every `eval_every` updates
    with `study.evaluate_checkpoint` (rows go to the results table with `algorithm="ppo"` and the
    cumulative rollouts). A finished run is reused; an interrupted one resumes.

    `orm`/`scorer`: the `ORMScorer` (the orm reward) and its `Scorer` (rerank@K); loaded from
    `orm.orm_checkpoint` when not given. This stage sits above the algorithm: it imports
    `rlreason.study` for checkpoints and evaluation, as the ORM and EI stages do.
    """
    import shutil

    from transformers import AutoTokenizer

    from . import study
    from .rewards import make_reward
    from .runs import config_changed, make_run_dir

    if init not in ("sft", "pretrained"):
        raise ValueError(f"init must be 'sft' or 'pretrained', got {init!r}")
    cfg = cfg or profile.ppo
    init_path = study.sft_checkpoint(profile, seed) if init == "sft" else study.build_base(profile, seed)
    name = f"ppo-{init}-{reward}-seed{seed}"
    config = {"init": str(init_path), "reward": reward, "ppo": cfg}
    if config_changed(profile.runs_dir / name, config):
        print(f"{name}: the configuration changed since this folder was written; starting over")
        recompute = True
    if recompute and (profile.runs_dir / name).exists():
        shutil.rmtree(profile.runs_dir / name)
    run_dir = make_run_dir(profile.runs_dir, name, config, seed)
    study.configure_torch(profile)
    if orm is None:
        scorer, orm = orm_scorer(profile, seed)
    if reward == "orm" and orm is None:
        raise ImportError("the orm reward needs rlreason.orm (the outcome reward model)")
    tokenizer = AutoTokenizer.from_pretrained(str(init_path))
    reward_fn = make_reward(reward, tokenizer=tokenizer, orm=orm)
    info = {"run": name, "algorithm": "ppo", "init": init, "reward": reward, "seed": seed}
    final_update = cfg.updates
    final_checkpoint = run_dir / f"update_{final_update:04d}"

    latest: dict[int, object] = {}

    def evaluate(path: Path, update: int, rollouts: int) -> dict:
        res = latest[update] = study.evaluate_checkpoint(
            profile, path, "test", scorer=scorer, progress=False,
            run_info={**info, "rollouts": rollouts, "update": update})
        return {f"test_{k}": res.metrics[k] for k in EVAL_KEYS if k in res.metrics}

    if study.is_done(run_dir) and not recompute and final_checkpoint.exists():
        rows = read_jsonl(run_dir / "metrics.jsonl")
    else:
        lora = LoraSettings(r=profile.lora_r) if profile.lora_r else None
        rows = train_ppo(init_path, study.problems(profile, "train"), reward_fn, cfg, run_dir, seed=seed,
                         lora=lora, load_in_4bit=profile.load_in_4bit, evaluate=evaluate, progress=progress)
        study.mark_done(run_dir)
    final = latest.get(final_update) or study.evaluate_checkpoint(
        profile, final_checkpoint, "test", scorer=scorer, progress=False,
        run_info={**info, "rollouts": rows[-1]["rollouts"], "update": final_update})
    return PPORun(run_dir, rows, final, final_checkpoint)
