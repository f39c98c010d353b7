"""The outcome reward model: training on an easy synthetic task, scoring, rerank, save/load."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from rlreason.analysis.orm_report import reliability, rerank_data, score_report
from rlreason.config import LoraSettings, ORMConfig, SFTConfig
from rlreason.grading import extract_answer
from rlreason.metrics import auroc, rerank_at_k
from rlreason.models import TinyModelConfig, build_tiny_llama, load_policy, save_policy
from rlreason.orm import (
    ORM,
    ORMExample,
    ORMScorer,
    collect_orm_data,
    completion_ids,
    load_orm,
    save_orm,
    split_questions,
    train_orm,
)
from rlreason.problems import Problem, format_prompt
from rlreason.rewards import make_reward
from rlreason.sampling import Sample
from rlreason.steps import step_token_ends
from rlreason.tokenizer import build_word_tokenizer

# The synthetic task: each completion starts with a verdict word; "good" solutions are correct.
# The ORM only has to learn to look back at that word, so seconds of training separate the classes.
N_QUESTIONS = 48


def question(n: int) -> str:
    return f"Tom has {n} apples and {n + 1} pears. How many fruits?"


def completion(n: int, good: bool, rng: random.Random) -> str:
    filler = " ".join(rng.choice(["so", "then", "we", "add"]) for _ in range(rng.randint(1, 3)))
    answer = 2 * n + 1 if good else 2 * n + rng.randint(2, 9)
    return f" {'good' if good else 'bad'} {filler} <<{n}+{n + 1}={answer}>>{answer}\n#### {answer}"


def problem(n: int) -> Problem:
    return Problem(id=f"q{n}", question=question(n), solution=f"<<{n}+{n + 1}={2 * n + 1}>>"
                   f"{2 * n + 1}\n#### {2 * n + 1}", answer=float(2 * n + 1))


def synthetic_data(val_fraction: float = 0.25, seed: int = 0) -> list[ORMExample]:
    rng = random.Random(seed)
    val = split_questions([f"q{n}" for n in range(N_QUESTIONS)], val_fraction, seed)
    data = []
    for n in range(N_QUESTIONS):
        for good in (True, False, False, rng.random() < 0.5):  # about 37% correct
            data.append(ORMExample(f"q{n}", format_prompt(question(n)), completion(n, good, rng),
                                   int(good), "val" if f"q{n}" in val else "train"))
    return data


def fast_cfg(**kw) -> ORMConfig:
    train = SFTConfig(epochs=4, lr=3e-3, batch_size=16, warmup_steps=2, log_every=5)
    return ORMConfig(**{"train": train, **kw})


@pytest.fixture(scope="module")
def init_path(tmp_path_factory):
    """A small random policy (the ORM's init), saved as a policy folder."""
    rng = random.Random(0)
    texts = [format_prompt(question(n)) + completion(n, g, rng) for n in range(60) for g in (0, 1)]
    tok = build_word_tokenizer(texts)
    torch.manual_seed(0)
    model = build_tiny_llama(tok, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2,
                                                  intermediate_size=64))
    path = tmp_path_factory.mktemp("init") / "policy"
    save_policy(model, tok, path)
    return path


@pytest.fixture(scope="module")
def trained(init_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("orm")
    path = train_orm(init_path, synthetic_data(), fast_cfg(), out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return path, rows


def test_training_lowers_validation_loss_and_separates_held_out_questions(trained):
    path, rows = trained
    epochs = [r for r in rows if "val_loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3, 4]
    assert epochs[0]["val_loss"] == pytest.approx(np.log(2), abs=1e-4)  # zero head: p = 0.5
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] - 0.1
    assert epochs[-1]["val_auroc"] > 0.8
    # Independently of the training loop's own metric: score the held-out questions afresh.
    data = [x for x in synthetic_data() if x.split == "val"]
    scorer = ORMScorer(path)
    problems = [problem(int(x.problem_id[1:])) for x in data]
    scores = [s[0] for s in scorer.score(problems, [[x.completion] for x in data])]
    assert auroc(scores, [x.label for x in data]) > 0.8
    info = json.loads((path / "orm.json").read_text())
    assert 0.3 < info["pos_rate"] < 0.45


def test_rerank_picks_the_top_scored_samples_answer(trained):
    path, _ = trained
    scorer = ORMScorer(path)
    rng = random.Random(1)
    problems = [problem(n) for n in range(100, 110)]  # unseen questions
    completions = [[completion(p_n, False, rng), completion(p_n, True, rng),
                    completion(p_n, False, rng)] for p_n in range(100, 110)]
    scores = scorer.as_scorer()(problems, completions)
    answers = [[extract_answer(c) for c in row] for row in completions]
    top = [row[int(np.argmax(s))] for row, s in zip(answers, scores)]
    refs = [p.answer for p in problems]
    assert list(rerank_at_k(answers, scores, refs)) == [a == r for a, r in zip(top, refs)]
    assert rerank_at_k(answers, scores, refs).mean() >= 0.8  # the "good" sample wins


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path):
    path, _ = trained
    problems = [problem(n) for n in range(3)]
    rng = random.Random(2)
    completions = [[completion(n, g, rng) for g in (True, False)] for n in range(3)]
    first = ORMScorer(path).score(problems, completions)
    orm, tok = load_orm(path)
    copy = save_orm(orm, tok, tmp_path / "copy", info=json.loads((path / "orm.json").read_text()))
    assert ORMScorer(copy).score(problems, completions) == first
    assert ORMScorer(path).score(problems, completions) == first
    # A scorer sent to a worker process (parallel.run_calls) travels as its path and settings.
    sent = ORMScorer(path, token_budget=512)
    assert len(pickle.dumps(sent)) < 2000
    received = pickle.loads(pickle.dumps(sent))
    assert received.path == sent.path and received.token_budget == 512
    assert received.score(problems, completions) == first


def test_grouped_forward_equals_one_sequence_at_a_time(trained):
    path, _ = trained
    orm, tok = load_orm(path)
    rng = random.Random(3)
    prompts = [tok(format_prompt(question(n)))["input_ids"] for n in (1, 22)]
    comps = [completion_ids(tok, completion(n, g, rng)) for n, g in
             [(1, True), (1, False), (22, True), (22, False), (22, True)]]
    prompt_of = [0, 0, 1, 1, 1]
    with torch.no_grad():
        grouped, mask = orm.grouped_logits(prompts, comps, prompt_of)
        for r, (ids, p) in enumerate(zip(comps, prompt_of)):
            full = torch.tensor([prompts[p] + ids])
            plain = orm.logits(full, torch.ones_like(full))[0, len(prompts[p]):]
            assert int(mask[r].sum()) == len(ids)
            torch.testing.assert_close(grouped[r, : len(ids)], plain, atol=1e-5, rtol=1e-5)


def test_score_steps_ends_with_the_final_score_and_feeds_the_orm_reward(trained):
    path, _ = trained
    scorer = ORMScorer(path)
    tok = scorer.tokenizer
    p = problem(5)
    text = completion(5, True, random.Random(4))
    ids = completion_ids(tok, text)
    sample = Sample(text=text, token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop")
    steps = scorer.score_steps([p], [sample])[0]
    assert len(steps) == len(step_token_ends(tok, ids)) == 2
    assert steps[-1] == pytest.approx(scorer.score([p], [[text]])[0][0], abs=1e-6)
    assert scorer.score_steps([p], [text])[0] == pytest.approx(steps)
    reward = make_reward("orm", orm=scorer, per_step=True)([p], [sample])[0]
    assert reward.total == pytest.approx(steps[-1])
    assert sum(reward.per_token) == pytest.approx(reward.total)


def test_lora_orm_round_trip(init_path, tmp_path):
    pytest.importorskip("peft")
    cfg = fast_cfg(lora=LoraSettings(r=4), train=SFTConfig(epochs=1, lr=3e-3, batch_size=16, warmup_steps=0))
    path = train_orm(init_path, synthetic_data(), cfg, tmp_path, progress=False)
    assert (path / "adapter_config.json").exists()
    problems = [problem(n) for n in range(2)]
    completions = [[completion(n, True, random.Random(n))] for n in range(2)]
    assert ORMScorer(path).score(problems, completions) == ORMScorer(path).score(problems,
                                                                                 completions)


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(scores, labels) == pytest.approx(pairwise)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_reliability_bins():
    table, ece = reliability([0.05, 0.15, 0.95, 0.85, 0.9], [0, 0, 1, 1, 0], n_bins=10)
    assert table["count"].sum() == 5
    assert table.loc[9, "count"] == 2 and table.loc[9, "frac_correct"] == 0.5
    assert ece == pytest.approx((0.05 + 0.15 + abs(0.925 - 0.5) * 2 + abs(0.85 - 1)) / 5)


def test_rerank_data_grades_strictly_and_feeds_the_score_report():
    problems = [problem(1), problem(2)]
    completions = [[" <<1+2=3>>3\n#### 3", " 3"], [" #### 5", " #### 6"]]
    data = rerank_data(problems, completions, [[0.9, 0.8], [0.7, 0.2]])
    assert data.correct == [[True, False], [True, False]]  # " 3" has no strict answer
    assert list(data.vote_share()) == [0.5, 0.0, 0.5, 0.5]  # no answer: no vote share
    report = score_report(*data.flat())
    assert report["auroc"] == 0.75 and report["auroc_within"] == 1.0
    assert report["n_samples"] == 4 and report["frac_correct"] == 0.5


class FakeSampler:
    def generate(self, prompts, params):
        out = []
        for prompt in prompts:
            n = int(prompt.split("has ")[1].split()[0])
            out.append([Sample(text=completion(n, i % 2 == 0, random.Random(i)), token_ids=[1],
                               logprobs=[0.0], finish_reason="stop") for i in range(params.n)])
        return out


def test_collect_orm_data_labels_and_splits_by_question():
    problems = [problem(n) for n in range(20)]
    cfg = ORMConfig(samples_per_question=4, val_fraction=0.2, max_questions=10)
    data = collect_orm_data(FakeSampler(), problems, cfg, seed=0)
    assert len(data) == 40
    assert [x.label for x in data[:4]] == [1, 0, 1, 0]
    splits = {}
    for x in data:
        splits.setdefault(x.problem_id, set()).add(x.split)
    assert all(len(s) == 1 for s in splits.values())  # a question is all train or all val
    assert sum(s == {"val"} for s in splits.values()) == 2
    assert collect_orm_data(FakeSampler(), problems, cfg, seed=0) == data


def test_orm_head_starts_at_one_half(init_path):
    policy, tok = load_policy(init_path, trainable=False)
    orm = ORM(policy)
    ids = torch.tensor([tok("Question: hi\nAnswer: good")["input_ids"]])
    assert torch.sigmoid(orm.logits(ids, torch.ones_like(ids))).allclose(torch.tensor(0.5))
