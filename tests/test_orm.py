"""The outcome reward model: training on an easy synthetic task, scoring, rerank, save/load."""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pickle
import random

import numpy as np
import pytest
import torch

from rlreason.analysis.orm_report import (
    argmax_at_k,
    argmax_pick,
    calibration,
    k_curves,
    reliability,
    rerank_data,
    reranker_report,
    score_report,
    weighted_vote,
    weighted_vote_at_k,
)
from rlreason.config import LoraSettings, ORMConfig, SFTConfig
from rlreason.grading import NO_ANSWER, extract_answer
from rlreason.metrics import auroc, rerank_at_k
from rlreason.models import TinyModelConfig, build_tiny_llama, load_policy, save_policy
from rlreason.orm import (
    ORM,
    ArithmeticScorer,
    ORMExample,
    ORMScorer,
    arithmetic_checks,
    arithmetic_score,
    collect_orm_data,
    completion_ids,
    generator_seed,
    load_orm,
    load_orm_data,
    save_orm,
    save_orm_data,
    split_questions,
    train_orm,
)
from rlreason.orm.train import _EarlyStopping
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


# ---- an ORM with real signal: more generators, dev validation, early stopping -------------------


class RecordingSampler(FakeSampler):
    """FakeSampler that records the sampling seed of each call."""

    def __init__(self):
        self.seeds = []

    def generate(self, prompts, params):
        self.seeds.append(params.seed)
        return super().generate(prompts, params)


def test_orm_config_defaults_are_todays_and_new_fields_are_checked():
    cfg = ORMConfig()
    assert (cfg.generators, cfg.validation, cfg.early_stopping_patience) == (
        ("final",), "train_holdout", None)
    assert ORMConfig(generators=["epoch_02", "final"]).generators == ("epoch_02", "final")
    for bad in [{"generators": ()}, {"generators": ("final", "final")}, {"generators": ("ep2",)},
                {"validation": "test"}, {"early_stopping_patience": 0}]:
        with pytest.raises(ValueError, match="ORMConfig"):
            ORMConfig(**bad)


def test_generator_seed_is_todays_for_the_final_model_and_distinct_otherwise():
    assert generator_seed(3) == generator_seed(3, "final", "train") == 3
    others = {generator_seed(3, g, q) for g in ("final", "epoch_02") for q in ("train", "dev")} - {3}
    assert len(others) == 3
    assert generator_seed(3, "epoch_02") == generator_seed(3, "epoch_02")


def test_collect_orm_data_with_a_given_split_all_questions_and_a_generator():
    problems = [problem(n) for n in range(12)]
    cfg = ORMConfig(samples_per_question=2, max_questions=None)
    sampler = RecordingSampler()
    data = collect_orm_data(sampler, problems, cfg, seed=0, generator="epoch_02", split="val",
                            sample_seed=99)
    assert sampler.seeds == [99]
    assert len(data) == 24 and {x.problem_id for x in data} == {p.id for p in problems}
    assert {x.split for x in data} == {"val"} and {x.generator for x in data} == {"epoch_02"}
    default = collect_orm_data(FakeSampler(), problems, cfg, seed=0)
    assert {x.generator for x in default} == {"final"}
    assert {x.split for x in default} == {"train", "val"}
    with pytest.raises(ValueError, match="split"):
        collect_orm_data(FakeSampler(), problems, cfg, split="dev")


def test_orm_data_round_trip_keeps_the_generator_and_reads_old_files(tmp_path):
    data = [ORMExample("q1", "p", " #### 3", 1, "train", "epoch_02")]
    save_orm_data(data, tmp_path / "d.jsonl")
    assert load_orm_data(tmp_path / "d.jsonl") == data
    (tmp_path / "old.jsonl").write_text(json.dumps(
        {"problem_id": "q1", "prompt": "p", "completion": " #### 3", "label": 1, "split": "val"}))
    assert load_orm_data(tmp_path / "old.jsonl")[0].generator == "final"


def test_stage_collects_every_generator_and_the_dev_split(monkeypatch):
    stage = importlib.import_module("rlreason.stages.orm")  # the module, not the `orm` stage

    train_items, dev_items = [problem(n) for n in range(6)], [problem(n) for n in range(50, 54)]
    samplers = {}

    def make_sampler(profile, progress=True):
        return lambda path: samplers.setdefault(str(path), RecordingSampler())

    monkeypatch.setattr(stage, "make_sampler", make_sampler)
    monkeypatch.setattr(stage, "problems", lambda profile, split: {"train": train_items,
                                                                    "dev": dev_items}[split])
    cfg = ORMConfig(samples_per_question=2, max_questions=4, generators=("epoch_02", "final"),
                    validation="dev")
    data = stage.collect(None, cfg, {"epoch_02": "e2", "final": "f"}, seed=1, progress=False)
    for g, path in (("epoch_02", "e2"), ("final", "f")):
        mine = [x for x in data if x.generator == g]
        assert {x.problem_id for x in mine if x.split == "train"} <= {p.id for p in train_items}
        assert len({x.problem_id for x in mine if x.split == "train"}) == 4  # max_questions
        assert {x.problem_id for x in mine if x.split == "val"} == {p.id for p in dev_items}
        assert samplers[path].seeds == [generator_seed(1, g), generator_seed(1, g, "dev")]
    # The generators sample the same training questions.
    assert len({frozenset(x.problem_id for x in data if x.generator == g and x.split == "train")
                for g in cfg.generators}) == 1


def test_stage_names_and_identity_keep_todays_orm_folder(tmp_path):
    from rlreason.stages import StageResult
    from rlreason.stages.orm import NEW_FIELDS, generator_checkpoints, orm_identity, orm_run_name

    cfg = ORMConfig()
    identity = orm_identity(tmp_path / "sft", cfg, {"final": tmp_path / "sft"})
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NEW_FIELDS}
    assert identity == {"init": str(tmp_path / "sft"), "orm": old}  # as before the new fields
    assert orm_run_name(cfg, 2) == "orm-seed2"
    new = ORMConfig(generators=("epoch_02", "final"), validation="dev", early_stopping_patience=3)
    assert orm_run_name(new, 0) == "orm-gen-epoch02-final-dev-es3-seed0"
    (tmp_path / "epoch_02").mkdir()
    run = StageResult("sft-seed0", "sft", "pretrained", "none", 0, tmp_path, tmp_path / "epoch_12")
    paths = generator_checkpoints(run, new)
    assert paths == {"epoch_02": tmp_path / "epoch_02", "final": tmp_path / "epoch_12"}
    assert orm_identity(run.checkpoint, new, paths)["generators"]["epoch_02"] == str(
        tmp_path / "epoch_02")
    assert orm_identity(run.checkpoint, new, paths)["orm"]["validation"] == "dev"
    with pytest.raises(FileNotFoundError, match="epoch_03"):
        generator_checkpoints(run, ORMConfig(generators=("epoch_03",)))


def test_early_stopping_keeps_the_best_epochs_weights():
    model = torch.nn.Linear(2, 1)
    stopper = _EarlyStopping(2, model)
    weights = []
    for epoch, loss in enumerate([0.70, 0.60, 0.65, 0.66]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        weights.append(model.weight.clone())
        assert stopper.update(epoch, loss) == (epoch == 3)
    assert stopper.best_epoch == 1
    stopper.restore()
    assert torch.equal(model.weight, weights[1])
    assert not _EarlyStopping(1, model).update(0, math.nan)  # NaN is no improvement, no stop yet


def test_train_orm_stops_early_and_restores_the_best_epoch(init_path, tmp_path):
    # Validation labels contradict the training labels: every epoch of learning raises the
    # validation loss, so the untrained epoch 0 stays best and training stops at epoch 1.
    data = [dataclasses.replace(x, label=1 - x.label) if x.split == "val" else x
            for x in synthetic_data()]
    path = train_orm(init_path, data, fast_cfg(early_stopping_patience=1), tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "val_loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[1]["best_epoch"] == 0
    info = json.loads((path / "orm.json").read_text())
    assert (info["best_epoch"], info["stopped_epoch"]) == (0, 1)
    val = [x for x in data if x.split == "val"][:6]
    scores = ORMScorer(path).score([problem(int(x.problem_id[1:])) for x in val],
                                   [[x.completion] for x in val])
    assert all(s == [0.5] for s in scores)  # the zero head of epoch 0
    with pytest.raises(ValueError, match="validation"):
        train_orm(init_path, [x for x in data if x.split == "train"],
                  fast_cfg(early_stopping_patience=1), tmp_path / "b", progress=False)


# ---- the rule-based bound -----------------------------------------------------------------------

BOUND_TABLE = [  # (text, score): checks = each calculation + "the answer is the last result"
    ("right solution", "<<3+4=7>>7\n<<7-2=5>>5\n#### 5", 1.0),
    ("one wrong calculation", "<<3+4=8>>8\n<<8-2=6>>6\n#### 6", 2 / 3),
    ("answer not the last result", "<<3+4=7>>7\n<<7-2=5>>5\n#### 6", 2 / 3),
    ("right arithmetic, wrong numbers", "<<3+5=8>>8\n#### 8", 1.0),
    ("no claimed value", "<<3+4>>7\n#### 7", 0.0),
    ("plain-text calculations", "3+4 = 7\n7-2 = 5\n#### 5", 1.0),
    ("text after #### is ignored", "<<3+4=7>>7\n#### 7\n<<1+1=3>>3", 1.0),
    ("no final answer", "<<3+4=7>>7", 0.0),
    ("no calculations", "#### 7", 0.0),
    ("garbage", "??? <<>> == ## $$", 0.0),
]


@pytest.mark.parametrize("name,text,score", BOUND_TABLE, ids=[r[0] for r in BOUND_TABLE])
def test_arithmetic_score_table(name, text, score):
    assert arithmetic_score(text) == pytest.approx(score)


def test_arithmetic_checks_and_scorer_shape():
    assert arithmetic_checks("<<3+4=8>>8\n<<8-2=6>>6\n#### 6") == (1, 2, True)
    scorer = ArithmeticScorer().as_scorer()
    completions = [[" <<1+2=3>>3\n#### 3", " <<1+2=4>>4\n#### 4"], []]
    assert scorer([problem(1), problem(2)], completions) == [[1.0, 0.5], []]
    assert getattr(scorer, "cache_id", None) is None
    with pytest.raises(ValueError, match="2 problems but 1 rows"):
        scorer([problem(1), problem(2)], completions[:1])
    # As a reranker it prefers the sample whose arithmetic holds.
    data = rerank_data([problem(1)], completions[:1], scorer([problem(1)], completions[:1]))
    assert reranker_report(data, np.random.default_rng(0))["argmax_first"] == 1.0


# ---- rerankers and calibration ------------------------------------------------------------------

# (case, answers, scores, reference, argmax first, weighted vote); answers are already extracted.
RERANK_TABLE = [
    ("top score right", [3.0, 4.0, 4.0], [0.9, 0.2, 0.3], 3.0, True, True),
    ("one right answer with a low score", [3.0, 4.0, 5.0], [0.1, 0.8, 0.7], 3.0, False, False),
    ("many low votes beat one high", [3.0, 4.0, 4.0, 4.0], [0.9, 0.4, 0.4, 0.4], 4.0, False, True),
    ("tie of top scores: the first", [4.0, 3.0], [0.5, 0.5], 3.0, False, False),
    ("tie of vote sums: the first answer", [3.0, 4.0, 4.0], [0.5, 0.25, 0.25], 3.0, True, True),
    ("all wrong", [4.0, 5.0], [0.9, 0.1], 3.0, False, False),
    ("no answer does not vote", [NO_ANSWER, 3.0], [0.9, 0.1], 3.0, False, True),
    ("NaN scores rank lowest", [4.0, 3.0], [math.nan, 0.1], 3.0, True, True),
    ("no samples", [], [], 3.0, False, False),
]


@pytest.mark.parametrize("case,answers,scores,ref,top_right,vote_right", RERANK_TABLE,
                         ids=[r[0] for r in RERANK_TABLE])
def test_reranker_table(case, answers, scores, ref, top_right, vote_right):
    assert argmax_at_k([answers], [scores], [ref])[0] == top_right
    assert rerank_at_k([answers], [scores], [ref])[0] == top_right  # the same rule as metrics
    assert weighted_vote_at_k([answers], [scores], [ref])[0] == vote_right


def test_argmax_tie_rules():
    assert argmax_pick([0.5, 0.9, 0.9]) == 1
    assert argmax_pick([]) == -1
    picks = [argmax_pick([0.9, 0.1, 0.9, 0.9], "random", np.random.default_rng(s)) for s in range(60)]
    assert set(picks) == {0, 2, 3}
    again = [argmax_pick([0.9, 0.1, 0.9, 0.9], "random", np.random.default_rng(s)) for s in range(60)]
    assert picks == again  # seeded
    with pytest.raises(ValueError, match="rng"):
        argmax_pick([0.1], "random")
    with pytest.raises(ValueError, match="tie rule"):
        argmax_pick([0.1], "last")
    assert weighted_vote([NO_ANSWER, NO_ANSWER], [0.5, 0.5]) is NO_ANSWER
    with pytest.raises(ValueError, match="2 answers but 1 scores"):
        weighted_vote([3.0, 4.0], [0.1])


def test_reranker_report_and_weighted_k_curves():
    problems = [problem(1), problem(2)]  # answers 3 and 5
    completions = [[" #### 3", " #### 4", " #### 4"], [" #### 5", " #### 6", " #### 6"]]
    scores = [[0.2, 0.5, 0.5], [0.9, 0.3, 0.3]]
    data = rerank_data(problems, completions, scores)
    report = reranker_report(data, np.random.default_rng(0))
    assert report["argmax_first"] == 0.5 and report["argmax_random"] == 0.5
    assert report["weighted_vote"] == 0.5 and report["majority_vote"] == 0.0
    assert report["random_sample"] == pytest.approx(1 / 3) and report["pass_at_k"] == 1.0
    assert report["auroc_within"] == 0.5 and report["n_questions"] == 2
    plain = k_curves(data, [1, 3], np.random.default_rng(1), n_draws=5)
    both = k_curves(data, [1, 3], np.random.default_rng(1), n_draws=5, weighted=True)
    assert list(plain) == ["maj@k", "rerank@k", "pass@k"]
    assert {k: both[k] for k in plain} == plain  # opt-in: today's curves are unchanged
    assert both["weighted@k"][3] == 0.5


def test_calibration():
    report = calibration([0.05, 0.15, 0.95, 0.85, 0.9], [0, 0, 1, 1, 0])
    _, ece = reliability([0.05, 0.15, 0.95, 0.85, 0.9], [0, 0, 1, 1, 0])
    assert report["ece"] == ece
    assert report["mce"] == pytest.approx(abs(0.925 - 0.5))
    assert report["brier"] == pytest.approx(np.mean(np.square([0.05, 0.15, 0.05, 0.15, 0.9])))
    assert report["n_samples"] == 5 and report["frac_correct"] == 0.4
    assert math.isnan(calibration([], [])["brier"])
