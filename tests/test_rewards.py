"""Rewards: sparse and dense tables (with reward-hacking attempts), token placement, make_reward."""
from __future__ import annotations

import math

import pytest

from rlreason.problems import Problem
from rlreason.rewards import (
    REWARD_NAMES,
    Reward,
    dense_any_reward,
    dense_reward,
    make_reward,
    orm_reward,
    sparse_reward,
)
from rlreason.sampling import Sample
from rlreason.steps import step_results, step_token_ends
from rlreason.tokenizer import build_word_tokenizer

# Reference results 7 and 5 (two steps), answer 5.
PROBLEM = Problem(id="p0", question="Tom has 3 apples and buys 4 more. He gives 2 away. How many?",
                  solution="<<3+4=7>>7\n<<7-2=5>>5\n#### 5", answer=5.0,
                  steps=("<<3+4=7>>7", "<<7-2=5>>5"))


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer([PROBLEM.question, PROBLEM.solution, "Tom has 3+4 = 7 apples."])


def sample(tok, text: str, eos: bool = True) -> Sample:
    """A Sample as the sampler makes it: the text's tokens, then EOS when it stopped."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    return Sample(text=text, token_ids=ids, logprobs=[0.0] * len(ids),
                  finish_reason="stop" if eos else "length")


def check_invariants(reward: Reward, s: Sample) -> None:
    assert len(reward.per_token) == len(s.token_ids)
    assert len(reward.per_step) == len(reward.step_token_ends)
    assert math.isclose(sum(reward.per_token), reward.total, abs_tol=1e-9)
    assert math.isclose(sum(reward.per_step), reward.total, abs_tol=1e-9)
    assert reward.step_token_ends == sorted(set(reward.step_token_ends))
    if s.token_ids:
        assert reward.step_token_ends[-1] == len(s.token_ids) - 1
    # Rewards land only on the tokens that end steps.
    ends = set(reward.step_token_ends)
    assert all(v == 0.0 for i, v in enumerate(reward.per_token) if i not in ends)
    for end, value in zip(reward.step_token_ends, reward.per_step):
        assert reward.per_token[end] == pytest.approx(value)


# (completion, sparse strict total, dense total, dense per step). Dense: each of the 2 reference
# results earns 0.25 once; the correct final answer earns 0.5 on the last step.
TABLE = [
    ("reference path", " <<3+4=7>>7\n<<7-2=5>>5\n#### 5", 1.0, 1.0, [0.25, 0.25, 0.5]),
    ("plain-text steps", " 3+4 = 7\n7-2 = 5\n#### 5", 1.0, 1.0, [0.25, 0.25, 0.5]),
    ("wrong final answer", " <<3+4=7>>7\n<<7-2=5>>5\n#### 6", 0.0, 0.5, [0.25, 0.25, 0.0]),
    ("first step only", " <<3+4=7>>7\n<<7-3=4>>4\n#### 4", 0.0, 0.25, [0.25, 0.0, 0.0]),
    ("hack: repeat a correct result", " <<3+4=7>>7\n<<3+4=7>>7\n<<4+3=7>>7\n#### 9",
     0.0, 0.25, [0.25, 0.0, 0.0, 0.0]),
    ("hack: answer with no steps", " #### 5", 1.0, 0.5, [0.5]),
    ("hack: many #### lines", " #### 9\n#### 5\n#### 7\n<<3+4=7>>7", 0.0, 0.0, [0.0] * 4),
    ("hack: steps after ####", " #### 5\n<<3+4=7>>7\n<<7-2=5>>5", 1.0, 0.5, [0.0, 0.0, 0.5]),
    ("step on the answer line", " <<3+4=7>>7\n<<7-2=5>>5 #### 5", 1.0, 1.0, [0.25, 0.75]),
    ("garbage", " ??? <<>> == ## \t$$ %%", 0.0, 0.0, [0.0]),
    ("empty completion", "", 0.0, 0.0, [0.0]),
    ("blank lines are not steps", " <<3+4=7>>7\n\n\n<<7-2=5>>5\n\n#### 5", 1.0, 1.0,
     [0.25, 0.25, 0.5]),
    ("huge numbers", " <<9" + "9" * 400 + "*9=1>>1\n#### " + "9" * 500, 0.0, 0.0, [0.0, 0.0]),
]


@pytest.mark.parametrize("name,text,sparse_total,dense_total,dense_steps", TABLE,
                         ids=[row[0] for row in TABLE])
def test_reward_table(tok, name, text, sparse_total, dense_total, dense_steps):
    s = sample(tok, text)
    sparse = sparse_reward()([PROBLEM], [s])[0]
    dense = dense_reward(tok)([PROBLEM], [s])[0]
    check_invariants(sparse, s)
    check_invariants(dense, s)
    assert sparse.total == sparse_total
    assert dense.total == pytest.approx(dense_total)
    assert dense.per_step == pytest.approx(dense_steps)
    # Sparse with a tokenizer has the same steps as dense, all zero but the last.
    lined = sparse_reward(tokenizer=tok)([PROBLEM], [s])[0]
    check_invariants(lined, s)
    assert lined.step_token_ends == dense.step_token_ends
    assert lined.per_step[:-1] == [0.0] * (len(lined.per_step) - 1)
    assert lined.total == sparse_total


def test_dense_reward_lands_on_the_tokens_ending_each_step(tok):
    s = sample(tok, " <<3+4=7>>7\n<<7-2=5>>5\n#### 5")
    r = dense_reward(tok)([PROBLEM], [s])[0]
    newlines = [i for i, t in enumerate(s.token_ids) if tok.decode([t]) == "\n"]
    assert r.step_token_ends == newlines + [len(s.token_ids) - 1]
    assert s.token_ids[r.step_token_ends[-1]] == tok.eos_token_id
    nonzero = [i for i, v in enumerate(r.per_token) if v != 0]
    assert nonzero == r.step_token_ends
    assert [r.per_token[i] for i in nonzero] == pytest.approx([0.25, 0.25, 0.5])


def test_flexible_mode_reads_the_last_number(tok):
    s = sample(tok, " <<3+4=7>>7\n<<7-2=5>>5\nSo 5")
    assert sparse_reward("strict")([PROBLEM], [s])[0].total == 0.0
    assert sparse_reward("flexible")([PROBLEM], [s])[0].total == 1.0
    assert dense_reward(tok, mode="flexible")([PROBLEM], [s])[0].total == pytest.approx(1.0)


def test_final_weight_splits_steps_and_answer(tok):
    s = sample(tok, " <<3+4=7>>7\n<<7-2=5>>5\n#### 5")
    r = dense_reward(tok, final_weight=0.8)([PROBLEM], [s])[0]
    assert r.per_step == pytest.approx([0.1, 0.1, 0.8])
    with pytest.raises(ValueError):
        dense_reward(tok, final_weight=1.5)


def test_truncated_sample_without_eos(tok):
    s = sample(tok, " <<3+4=7>>7\n<<7-2", eos=False)
    r = dense_reward(tok)([PROBLEM], [s])[0]
    check_invariants(r, s)
    assert r.per_step == pytest.approx([0.25, 0.0])


def test_empty_token_ids(tok):
    s = Sample(text="", token_ids=[], logprobs=[], finish_reason="length")
    for fn in (sparse_reward(), dense_reward(tok)):
        assert fn([PROBLEM], [s])[0] == Reward(0.0, [], [], [])


def test_step_token_ends(tok):
    ids = tok(" 1+1=2\n\n#### 2", add_special_tokens=False)["input_ids"]
    newline = tok.convert_tokens_to_ids("\n")
    first = ids.index(newline)
    assert step_token_ends(tok, ids) == [first, len(ids) - 1]
    assert step_token_ends(tok, ids + [tok.eos_token_id]) == [first, len(ids)]
    # A trailing newline (and EOS after it) joins the last step.
    assert step_token_ends(tok, ids + [newline, tok.eos_token_id]) == [first, len(ids) + 1]
    assert step_token_ends(tok, []) == []
    assert step_token_ends(tok, [newline, newline]) == [1]


def test_rewards_are_batched_and_pure(tok):
    texts = [" <<3+4=7>>7\n<<7-2=5>>5\n#### 5", " #### 4", ""]
    samples = [sample(tok, t) for t in texts]
    fn = dense_reward(tok)
    batch = fn([PROBLEM] * 3, samples)
    assert batch == [fn([PROBLEM], [s])[0] for s in samples]
    assert fn([PROBLEM] * 3, samples) == batch  # no state carried between calls
    with pytest.raises(ValueError, match="2 problems but 3 samples"):
        fn([PROBLEM] * 2, samples)


def test_make_reward(tok):
    s = sample(tok, " <<3+4=7>>7\n<<7-2=5>>5\n#### 5")
    assert make_reward("sparse")([PROBLEM], [s])[0].total == 1.0
    assert make_reward("dense", tokenizer=tok)([PROBLEM], [s])[0].per_step == pytest.approx(
        [0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match="tokenizer"):
        make_reward("dense")
    with pytest.raises(ValueError, match="ORMScorer"):
        make_reward("orm")
    with pytest.raises(ValueError, match=r"'nope'.*sparse, dense, dense_any, orm"):
        make_reward("nope")
    with pytest.raises(ValueError, match="valid_paths"):
        make_reward("dense_any", tokenizer=tok)
    assert REWARD_NAMES == ("sparse", "dense", "dense_any", "orm")
    with pytest.raises(ValueError, match="grading mode"):
        sparse_reward("lenient")


class FakeScorer:
    """Probabilities 0.2, 0.5, 0.9 ... at the step ends: tests orm_reward without a model."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def score_steps(self, problems, samples, ends=None):
        return [[min(0.9, 0.2 + 0.3 * i) for i in range(len(e))] for e in ends]


def test_orm_reward_final_and_per_step(tok):
    s = sample(tok, " <<3+4=7>>7\n<<7-2=5>>5\n#### 5")
    final = orm_reward(FakeScorer(tok))([PROBLEM], [s])[0]
    steps = orm_reward(FakeScorer(tok), per_step=True)([PROBLEM], [s])[0]
    for r in (final, steps):
        check_invariants(r, s)
        assert r.total == pytest.approx(0.8)
    assert final.per_step == pytest.approx([0.0, 0.0, 0.8])
    assert steps.per_step == pytest.approx([0.2, 0.3, 0.3])  # increments of p at the step ends
    assert make_reward("orm", orm=FakeScorer(tok))([PROBLEM], [s])[0] == final


# ---- dense over any valid path -------------------------------------------------------------------

# 3 + 4 + 2 = 9, two valid paths: (3+4)+2 (the reference, results 7, 9) and (3+2)+4 (results 5, 9).
SUM = Problem(id="s0", question="Tom has 3 apples, finds 4 and buys 2. How many?",
              solution="<<3+4=7>>7\n<<7+2=9>>9\n#### 9", answer=9.0)
SUM_PATHS = {"s0": [[7.0, 9.0], [5.0, 9.0]]}
ALTERNATIVE = " <<3+2=5>>5\n<<5+4=9>>9\n#### 9"


@pytest.fixture(scope="module")
def sum_tok():
    return build_word_tokenizer([SUM.question, SUM.solution, ALTERNATIVE])


# (completion, dense total, dense_any total): dense credits only the reference's results.
ANY_TABLE = [
    ("reference path", " <<3+4=7>>7\n<<7+2=9>>9\n#### 9", 1.0, 1.0),
    ("correct alternative path", ALTERNATIVE, 0.75, 1.0),
    ("alternative path, wrong answer", " <<3+2=5>>5\n<<5+4=10>>10\n#### 10", 0.0, 0.25),
    ("mixing the two paths", " <<3+2=5>>5\n<<3+4=7>>7\n#### 9", 0.75, 0.75),
    ("hack: one alternative result repeated", " <<3+2=5>>5\n<<2+3=5>>5\n#### 9", 0.5, 0.75),
    ("answer only", " #### 9", 0.5, 0.5),
]


@pytest.mark.parametrize("name,text,dense_total,any_total", ANY_TABLE, ids=[r[0] for r in ANY_TABLE])
def test_dense_any_credits_every_valid_path(sum_tok, name, text, dense_total, any_total):
    s = sample(sum_tok, text)
    dense = dense_reward(sum_tok)([SUM], [s])[0]
    by_map = dense_any_reward(sum_tok, SUM_PATHS)([SUM], [s])[0]
    by_fn = make_reward("dense_any", tokenizer=sum_tok,
                        valid_paths=lambda p: SUM_PATHS[p.id])([SUM], [s])[0]
    check_invariants(by_map, s)
    assert dense.total == pytest.approx(dense_total)
    assert by_map.total == pytest.approx(any_total)
    assert by_fn == by_map
    assert by_map.total >= dense.total - 1e-12  # the reference is always one of the paths


def test_dense_any_equals_dense_with_only_the_reference(tok, sum_tok):
    texts = [row[1] for row in TABLE]
    samples = [sample(tok, t) for t in texts]
    dense = dense_reward(tok)([PROBLEM] * len(samples), samples)
    assert dense_any_reward(tok, {})([PROBLEM] * len(samples), samples) == dense  # GSM8K-like
    assert dense_any_reward(tok, lambda p: [])([PROBLEM] * len(samples), samples) == dense
    s = sample(sum_tok, ALTERNATIVE)  # the alternative path's steps: 0.5 / 2 each
    assert dense_any_reward(sum_tok, SUM_PATHS)([SUM], [s])[0].per_step == pytest.approx(
        [0.25, 0.25, 0.5])


def test_stage_reward_fn_reads_the_tiny_worlds_paths(tmp_path):
    from rlreason.profiles import get_profile
    from rlreason.stages import reward_fn, world
    from rlreason.world import render_solution

    profile = get_profile("smoke")
    w = world(profile)
    # A training problem with a valid path whose intermediate results the reference lacks.
    problem, path = next((p, path) for p in w.sft for path in w.paths[p.id]
                         if not {float(s[-1]) for s in path} <= set(step_results(p.solution)))
    text = " " + render_solution(path, int(problem.answer))
    tok = build_word_tokenizer([problem.question, problem.solution, text])
    tok.save_pretrained(tmp_path)
    s = sample(tok, text)
    assert reward_fn("dense_any", tmp_path, None, profile=profile)([problem], [s])[0].total == 1.0
    assert reward_fn("dense", tmp_path, None)([problem], [s])[0].total < 1.0
    with pytest.raises(ValueError, match="profile"):
        reward_fn("dense_any", tmp_path, None)
