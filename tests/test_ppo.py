"""PPO end to end on tiny models: alignment of log-probs, reward placement, the LoRA reference,
learning a toy task, parameter updates, resume and the NaN guard."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rlreason import ppo
from rlreason.batching import forward, pack, task_reward_tensor, token_logprobs
from rlreason.config import PPOConfig
from rlreason.io import append_jsonl
from rlreason.models import (
    LoraSettings,
    TinyModelConfig,
    build_tiny_llama,
    load_policy,
    save_policy,
)
from rlreason.ppo import (
    CHECKPOINT,
    NonFiniteError,
    ValueHead,
    learning_rates,
    load_models,
    train_ppo,
)
from rlreason.ppo_rollouts import questions_for_update
from rlreason.problems import Problem, format_completion, format_prompt
from rlreason.rewards import Reward, make_reward
from rlreason.rl_math import token_rewards
from rlreason.runs import Run, open_run
from rlreason.sampling import HFSampler, Sample, SamplingParams
from rlreason.tokenizer import build_word_tokenizer

TEXTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    " Tom has 3+4 = <<3+4=7>>7 apples.\nHe gives 2 away: 7-2 = <<7-2=5>>5.\n#### 5",
]
SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
PROBLEMS = [Problem(f"q{i}", f"Tom has {i} apples and buys {i + 1} more.", "", float(2 * i + 1))
            for i in range(16)]
TIMING = ("rollout_s", "score_s", "update_s")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are fastest on one thread (and the CI machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def init(tokenizer, tmp_path_factory):
    """A small random Llama saved as a policy folder (the initial policy of every run here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ppo") / "init"
    save_policy(build_tiny_llama(tokenizer, SMALL), tokenizer, path)
    return path


@pytest.fixture(scope="module")
def init_wide(tokenizer, tmp_path_factory):
    """The same with 128-wide layers: bitsandbytes' CPU 4-bit inference kernels need widths >= 64."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ppo") / "init_wide"
    save_policy(build_tiny_llama(tokenizer, TinyModelConfig(hidden_size=128, num_layers=1, num_heads=2,
                                                            intermediate_size=256)), tokenizer, path)
    return path


def target_reward(tokenizer):
    """Toy task: 1/3 on each of the first three tokens that equals the fixed target ' 7 apples'."""
    target = tokenizer(" 7 apples", add_special_tokens=False)["input_ids"]
    assert len(target) == 3

    def reward(problems, samples):
        out = []
        for s in samples:
            per = [1 / 3 if i < 3 and t == target[i] else 0.0 for i, t in enumerate(s.token_ids)]
            out.append(Reward(sum(per), per, [sum(per)], [len(per) - 1]))
        return out

    return reward


def toy_config(**kw) -> PPOConfig:
    """Every field the toy runs depend on, pinned (the profile defaults may change)."""
    base = {"updates": 4, "questions_per_update": 8, "samples_per_question": 4, "max_new_tokens": 4,
            "lr": 3e-3, "minibatch_size": 16, "ppo_epochs": 2, "lam": 0.95, "gamma": 1.0, "kl_coef": 0.05,
            "eval_every": 1000, "save_every": 1000, "mixed_precision": "bf16"}
    return PPOConfig(**{**base, **kw})


def new_run(tmp_path, name: str = "run", seed: int = 0) -> Run:
    """An open run folder `tmp_path/name` (what `stages` hands to `train_ppo`)."""
    return open_run(tmp_path, name, {"test": name}, seed)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---- alignment and reward placement ------------------------------------------------------------


def test_packed_logprobs_equal_the_samplers(init):
    model, tok = load_policy(init, trainable=False)
    prompts = [format_prompt(p.question) for p in PROBLEMS[:5]]
    groups = HFSampler(model, tok, progress=False).generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=1))
    samples = [s for g in groups for s in g]
    assert len({len(s.token_ids) for s in samples}) >= 1
    ids = [tok(p)["input_ids"] for p in prompts for _ in range(3)]
    batch = pack(ids, [s.token_ids for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logprobs = token_logprobs(forward(model, batch)[0], batch.tokens)
    for i, s in enumerate(samples):
        n = len(s.token_ids)
        assert batch.mask[i].sum() == n
        assert logprobs[i, :n].tolist() == pytest.approx(s.logprobs, abs=1e-4)
    # A sub-batch gives the same values (trimmed widths, clamped indices).
    sub = batch.rows(torch.tensor([4, 1]))
    with torch.no_grad():
        sub_lp = token_logprobs(forward(model, sub)[0], sub.tokens)
    assert torch.allclose(sub_lp * sub.mask, (logprobs[[4, 1], : sub.mask.shape[1]]) * sub.mask, atol=1e-5)


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_grouped_forward_equals_the_packed_one_with_its_gradient(init, tokenizer, lora):
    """Each prompt run once for its n responses (the KV cache gathered to them) gives the packed
    rows' logits, hidden states and parameter gradients."""
    model, tok = load_policy(init, lora=lora)
    model.eval()
    prompts = [tok(format_prompt(p.question))["input_ids"] for p in PROBLEMS[:3]]
    prompts[1] = prompts[1][:-3]  # prompts of different lengths (left padding in the grouped layout)
    responses = [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14], [5], [6, 7]]
    batch = pack([prompts[i // 2] for i in range(6)], responses, tok.pad_token_id)
    assert batch.prompt_ids.shape[0] == 3 and batch.group.tolist() == [0, 0, 1, 1, 2, 2]
    weights = torch.randn(6, 4, model.config.vocab_size, generator=torch.Generator().manual_seed(0))
    results = []
    for grouped in (True, False):
        model.zero_grad()
        logits, hidden = forward(model, batch, hidden=True, grouped=grouped)
        ((logits * weights).sum(-1) * batch.mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), hidden.detach(), grads))
    (lg, hg, gg), (lp, hp, gp) = results
    m = batch.mask[..., None].bool()
    assert torch.allclose(lg.masked_fill(~m, 0), lp.masked_fill(~m, 0), atol=1e-5)
    assert torch.allclose(hg.masked_fill(~m, 0), hp.masked_fill(~m, 0), atol=1e-5)
    assert gg.keys() == gp.keys() and len(gg) > 0
    for name in gg:
        assert torch.allclose(gg[name], gp[name], atol=1e-5, rtol=1e-4), name
    # A sub-batch keeps only its own prompts.
    sub = batch.rows(torch.tensor([5, 0, 1]))
    assert sub.prompt_ids.shape[0] == 2 and sub.group.tolist() == [1, 0, 0]
    with torch.no_grad():
        assert torch.allclose(forward(model, sub)[0] * sub.mask[..., None],
                              lg[[5, 0, 1], : sub.mask.shape[1]] * sub.mask[..., None], atol=1e-5)


def test_token_level_reward_placement(tokenizer):
    problem = Problem("p", "Tom has 3 apples and buys 4 more.", "3+4 = <<3+4=7>>7\n#### 7", 7.0)
    text = format_completion("3+4 = <<3+4=7>>7\n#### 7")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sample = Sample(text, ids, [-1.0] * len(ids), "stop")
    short = Sample(" 5", ids[:2], [-1.0, -1.0], "length")
    newline = ids.index(tokenizer.convert_tokens_to_ids("\n"))
    mask = pack([[1], [1]], [sample.token_ids, short.token_ids], 0).mask
    n = len(ids)

    sparse = task_reward_tensor(make_reward("sparse")([problem, problem], [sample, short]), mask)
    assert sparse[0, n - 1] == 1.0 and sparse[0].sum() == 1.0  # on the last token (EOS) only
    assert torch.all(sparse[1] == 0)

    dense = task_reward_tensor(make_reward("dense", tokenizer=tokenizer)([problem], [sample]), mask[:1])
    assert dense[0, newline] == pytest.approx(0.5) and dense[0, n - 1] == pytest.approx(0.5)
    assert dense[0].sum() == pytest.approx(1.0) and (dense[0] != 0).sum() == 2  # step ends only

    logp = -torch.rand(2, n) * mask
    ref = -torch.rand(2, n) * mask
    rewards, kl = token_rewards(sparse, logp, ref, mask, kl_coef=0.05)
    assert torch.all((kl != 0) == mask.bool())  # KL on every real token, nothing on padding
    assert torch.allclose(rewards, (sparse - 0.05 * (logp - ref)) * mask)

    with pytest.raises(ValueError, match="per-token values"):
        task_reward_tensor([Reward(1.0, [1.0], [1.0], [0])], mask[:1])


def test_questions_cover_the_training_set_in_seeded_passes():
    seen = [q for u in range(1, 5) for q in questions_for_update(10, 5, u, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:20]  # reshuffled per pass
    assert questions_for_update(10, 5, 2, seed=3) == seen[5:10]
    assert questions_for_update(10, 5, 2, seed=4) != seen[5:10]


# ---- the reference policy with LoRA ------------------------------------------------------------


def _logits(model, batch):
    with torch.no_grad():
        return forward(model, batch)[0]


def _perturb_adapters(model, scale=0.5):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and p.requires_grad:
                p.add_(scale * torch.randn_like(p))


@pytest.fixture
def probe(tokenizer):
    ids = [tokenizer(format_prompt(p.question))["input_ids"] for p in PROBLEMS[:3]]
    return pack(ids, [[5, 6, 7], [8, 9], [10]], tokenizer.pad_token_id)


@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_lora_reference_is_the_base_model(init, init_wide, probe, four_bit):
    if four_bit:
        pytest.importorskip("bitsandbytes")
        init = init_wide
    policy, _, reference, _, _ = load_models(init, LORA, four_bit, "head")
    _perturb_adapters(policy)
    base, _ = load_policy(init, trainable=False, load_in_4bit=four_bit)
    mask = probe.mask[..., None].bool()
    assert not torch.allclose(_logits(policy, probe), _logits(base, probe))  # the adapters matter
    with torch.no_grad():
        ref = reference(probe)
    assert torch.allclose(ref.masked_fill(~mask, 0), _logits(base, probe).masked_fill(~mask, 0), atol=1e-5)
    assert any(p.requires_grad for n, p in policy.named_parameters() if "lora" in n)  # adapters back on


def test_lora_adapter_init_keeps_the_adapter_as_reference(init, probe, tmp_path):
    sft, tok = load_policy(init, lora=LORA)
    _perturb_adapters(sft)
    sft.eval()
    want = _logits(sft, probe)
    save_policy(sft, tok, tmp_path / "sft_adapter")
    policy, _, reference, _, _ = load_models(tmp_path / "sft_adapter", None, False, "head")
    assert torch.allclose(_logits(policy, probe), want, atol=1e-5)  # PPO starts from the SFT adapter
    _perturb_adapters(policy)  # ... trains it ...
    assert not torch.allclose(_logits(policy, probe), want, atol=1e-3)
    with torch.no_grad():
        ref = reference(probe)
    assert torch.allclose(ref, want, atol=1e-5)  # ... and the reference stays the SFT policy


# ---- training runs -----------------------------------------------------------------------------


def test_ppo_learns_a_target_sequence(init, tokenizer, tmp_path):
    cfg = toy_config(updates=30, questions_per_update=16, samples_per_question=8, minibatch_size=32,
                     ppo_epochs=4)
    rows = train_ppo(init, PROBLEMS, target_reward(tokenizer), cfg, new_run(tmp_path), progress=False)
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    assert first < 0.05 and last > 0.4, (first, last)
    for key in ("kl", "approx_kl", "clip_frac", "explained_variance", "entropy", "response_len", "rollouts"):
        assert key in rows[-1]
    assert rows[-1]["rollouts"] == 30 * 16 * 8
    assert rows[-1]["entropy"] < rows[0]["entropy"] and rows[-1]["kl"] > 0.1
    # The training forward sees what the sampler saw: a misaligned token or position costs whole
    # nats; bf16 autocast (the default) against the float32 sampler, ~3e-4.
    assert cfg.mixed_precision == "bf16" and rows[0]["logprob_mismatch"] < 2e-3


def test_ppo_with_warmup_cosine_and_a_fitted_value_learns_and_explains_the_return(init, tokenizer, tmp_path):
    """The options that make PPO's value learn (toy evidence): a warmup and a cosine schedule, the
    value head in float32 under bf16 autocast, vf_coef 1 as trlx, lambda 0.95, a value learning
    rate above the policy's. The reward rises and the value explains the return's variance."""
    cfg = toy_config(updates=30, questions_per_update=16, samples_per_question=8, minibatch_size=32,
                     ppo_epochs=4, warmup_updates=3, lr_schedule="cosine", min_lr_ratio=0.1,
                     value_head_fp32=True, vf_coef=1.0, lam=0.95, value_lr=1e-2)
    rows = train_ppo(init, PROBLEMS, target_reward(tokenizer), cfg, new_run(tmp_path), progress=False)
    first = np.mean([r["reward"] for r in rows[:3]])
    last = np.mean([r["reward"] for r in rows[-3:]])
    assert first < 0.05 and last > 0.2, (first, last)
    explained = np.mean([r["explained_variance"] for r in rows[-3:]])
    assert explained > 0.2, [round(r["explained_variance"], 2) for r in rows]
    assert rows[0]["explained_variance"] == pytest.approx(0.0, abs=1e-6)  # V = 0 at the start
    # The learning rates actually used: warmup over 3 updates, then a cosine to 0.1 x lr.
    lrs = [r["lr"] for r in rows]
    assert lrs[:4] == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3])
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and 3e-4 <= lrs[-1] < 4e-4
    assert [r["value_lr"] / r["lr"] for r in rows] == pytest.approx([1e-2 / 3e-3] * 30)
    for key in ("value_mean", "return_mean", "clip_frac", "entropy", "kl", "kl_coef"):
        assert np.isfinite([r[key] for r in rows]).all(), key
    assert abs(rows[-1]["value_mean"] - rows[-1]["return_mean"]) < 0.05  # the value found the scale


def test_defaults_keep_the_learning_rates_constant():
    cfg = PPOConfig(updates=5, lr=2e-5)
    assert [learning_rates(cfg, u) for u in range(1, 8)] == [(2e-5, 2e-5)] * 7
    assert learning_rates(dataclasses.replace(cfg, value_lr=1e-3), 3) == (2e-5, 1e-3)
    warm = PPOConfig(updates=6, lr=1e-3, value_lr=1e-2, value_warmup_updates=2, warmup_updates=2)
    assert [lr for u in range(1, 7) for lr in learning_rates(warm, u)] == pytest.approx(
        [0, 5e-3, 0, 1e-2, 5e-4, 1e-2, 1e-3, 1e-2, 1e-3, 1e-2, 1e-3, 1e-2])


def test_the_schedule_and_kl_options_are_checked():
    for kw, field in ((dict(lr_schedule="linear"), "lr_schedule"), (dict(target_kl=0.0), "target_kl"),
                      (dict(warmup_updates=-1), "warmup_updates"),
                      (dict(value_warmup_updates=1.5), "value_warmup_updates")):
        with pytest.raises(ValueError, match=f"PPOConfig.{field}"):
            PPOConfig(**kw)


def test_a_cosine_run_cannot_be_extended():
    """With a cosine schedule the updates done depend on `updates`: a longer run is another config."""
    assert ppo._resumable(PPOConfig(updates=4)) == ppo._resumable(PPOConfig(updates=8))
    cosine = PPOConfig(updates=4, lr_schedule="cosine")
    assert ppo._resumable(cosine) != ppo._resumable(dataclasses.replace(cosine, updates=8))
    assert ppo._resumable(cosine) == ppo._resumable(dataclasses.replace(cosine, eval_every=1))


def test_value_head_in_float32_under_bf16_autocast():
    head = ValueHead(32)
    torch.nn.init.normal_(head.linear.weight)
    hidden = torch.randn(2, 5, 32)
    want = head(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = head(hidden)  # today's default: the matmul in bf16
        head.fp32 = True
        exact = head(hidden)
    assert rounded.dtype == torch.bfloat16 and not torch.equal(rounded.float(), want)
    assert exact.dtype == torch.float32 and torch.equal(exact, want)


def spy_on_trainable(monkeypatch) -> dict:
    """The trainable parameters `train_ppo` collects, copied before training (`"_live"`: the
    live tensors, to compare after)."""
    captured = {}
    real = ppo._trainable

    def spy(*modules):
        params = real(*modules)
        captured.update({n: p.detach().clone() for n, p in params.items()})
        captured["_live"] = params
        return params

    monkeypatch.setattr(ppo, "_trainable", spy)
    return captured


def every_token(problems, samples):
    """1 per token on odd rows, 0 on even rows: every position's logits and values get a signal."""
    return [Reward(float(len(s.token_ids) * (i % 2)), [float(i % 2)] * len(s.token_ids), [], [])
            for i, s in enumerate(samples)]


def test_value_warmup_trains_only_the_value(init, tokenizer, tmp_path, monkeypatch):
    captured = spy_on_trainable(monkeypatch)
    cfg = toy_config(updates=1, value_warmup_updates=1, value_lr=1e-2, vf_coef=1.0, ent_coef=0.01)

    rows = train_ppo(init, PROBLEMS, every_token, cfg, new_run(tmp_path), progress=False)
    live = captured.pop("_live")
    changed = {n for n, p in live.items() if not torch.equal(p.detach(), captured[n])}
    assert changed == {n for n in live if n.startswith("value_head.")}  # the trunk is untouched
    assert rows[0]["lr"] == 0.0 and rows[0]["value_lr"] == 1e-2


def test_adaptive_kl_coefficient_in_the_loop(init, tokenizer, tmp_path):
    """With a target, each update's coefficient follows trlx's rule from the previous update's KL."""
    target, horizon = 0.02, 200
    cfg = toy_config(updates=3, target_kl=target, kl_horizon=horizon)
    rows = train_ppo(init, PROBLEMS, target_reward(tokenizer), cfg, new_run(tmp_path), progress=False)
    assert rows[0]["kl_coef"] == cfg.kl_coef
    for before, after in zip(rows, rows[1:]):
        error = float(np.clip(before["kl"] / target - 1, -0.2, 0.2))
        n = cfg.questions_per_update * cfg.samples_per_question
        assert after["kl_coef"] == pytest.approx(before["kl_coef"] * (1 + error * n / horizon))
        assert (after["kl_coef"] > before["kl_coef"]) == (before["kl"] > target)


def test_ppo_forward_matches_the_sampler_in_float32(init, tokenizer, tmp_path):
    cfg = toy_config(updates=1, questions_per_update=8, samples_per_question=4, mixed_precision="no")
    rows = train_ppo(init, PROBLEMS, target_reward(tokenizer), cfg, new_run(tmp_path), progress=False)
    assert rows[0]["logprob_mismatch"] < 1e-4


@pytest.mark.parametrize("value_model,lora,four_bit", [("head", None, False), ("separate", None, False),
                                                       ("head", LORA, False), ("separate", LORA, True)],
                         ids=["full", "full-separate-value", "lora", "qlora-separate-value"])
def test_one_update_changes_every_trainable_parameter(init, init_wide, tokenizer, tmp_path, value_model, lora,
                                                      four_bit, monkeypatch):
    if four_bit:
        pytest.importorskip("bitsandbytes")
        init = init_wide
    captured = spy_on_trainable(monkeypatch)

    train_ppo(init, PROBLEMS, every_token, toy_config(updates=1, value_model=value_model), new_run(tmp_path),
              lora=lora, load_in_4bit=four_bit, progress=False)
    live = captured.pop("_live")
    assert live, "no trainable parameters"
    if lora is not None:
        assert all("lora" in n or n.startswith("value_head") for n in live)
    if value_model == "separate":
        assert any(n.startswith("critic.") for n in live)
    unchanged = [n for n, p in live.items() if torch.equal(p.detach(), captured[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def test_resume_gives_identical_metrics(init, tokenizer, tmp_path):
    reward = target_reward(tokenizer)
    evaluated = []

    def evaluate(path, info):
        assert info["record"] is True
        evaluated.append((path.name, info["update"], info["rollouts"]))
        return {"eval_mark": info["update"] * 10}

    straight = train_ppo(init, PROBLEMS, reward, toy_config(updates=4, eval_every=2, save_every=2),
                         new_run(tmp_path, "straight"), evaluate=evaluate, progress=False)
    assert evaluated == [("update_0002", 2, 64), ("update_0004", 4, 128)]
    assert (tmp_path / "straight" / "update_0004" / "value_head.pt").exists()
    assert straight[1]["eval_mark"] == 20 and "eval_mark" not in straight[0]

    # A run that crashes in update 3 (after its checkpoint at update 2), then is restarted.
    calls = {"n": 0}

    def crashing(problems, samples):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return reward(problems, samples)

    run = new_run(tmp_path, "resumed")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(init, PROBLEMS, crashing, toy_config(updates=4, eval_every=2, save_every=2), run,
                  evaluate=evaluate, progress=False)
    append_jsonl(run.dir / "metrics.jsonl", {"update": 3, "reward": -1.0})  # a row written after the checkpoint
    resumed = train_ppo(init, PROBLEMS, reward, toy_config(updates=4, eval_every=2, save_every=2), run,
                        evaluate=evaluate, progress=False)
    assert strip(resumed) == strip(straight)
    # Extending a finished run continues from its last update; another config is refused.
    more = train_ppo(init, PROBLEMS, reward, toy_config(updates=5, eval_every=2, save_every=2), run,
                     progress=False)
    assert [r["update"] for r in more] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="another PPO config"):
        train_ppo(init, PROBLEMS, reward, toy_config(updates=6, lr=1e-4), run, progress=False)


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(init, tokenizer, tmp_path):
    reward = target_reward(tokenizer)
    calls = {"n": 0}

    def poisoned(problems, samples):
        calls["n"] += 1
        out = reward(problems, samples)
        if calls["n"] == 3:
            out[0] = dataclasses.replace(out[0], total=float("nan"),
                                         per_token=[float("nan")] * len(out[0].per_token))
        return out

    run = new_run(tmp_path)
    with pytest.raises(NonFiniteError, match=r"update 3: the task reward is not finite.*update 2"):
        train_ppo(init, PROBLEMS, poisoned, toy_config(updates=5, save_every=1), run, progress=False)
    state = torch.load(run.dir / CHECKPOINT / "state.pt", weights_only=False)
    assert state["update"] == 2
    assert all(torch.isfinite(p).all() for p in state["params"].values())
    # The run continues from there once the cause is fixed.
    rows = train_ppo(init, PROBLEMS, reward, toy_config(updates=3, save_every=1), run, progress=False)
    assert [r["update"] for r in rows] == [1, 2, 3]


def test_nan_guard_on_the_loss(init, tokenizer, tmp_path):
    """An infinite reward on one token passes as a number but makes the advantages non-finite."""
    def infinite(problems, samples):
        return [Reward(float("inf"), [float("inf")] + [0.0] * (len(s.token_ids) - 1), [], []) for s in samples]

    with pytest.raises(NonFiniteError, match="update 1"):
        train_ppo(init, PROBLEMS, infinite, toy_config(updates=1), new_run(tmp_path), progress=False)
