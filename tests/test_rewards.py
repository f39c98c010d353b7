"""Rewards: sparse and dense tables (with reward-hacking attempts), token placement, make_reward."""
from __future__ import annotations

import math

import pytest

from rlreason.problems import Problem
from rlreason.rewards import (
    REWARD_NAMES,
    Reward,
    dense_reward,
    make_reward,
    orm_reward,
    sparse_reward,
)
from rlreason.sampling import Sample
from rlreason.steps import step_token_ends
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
    with pytest.raises(ValueError, match=r"'nope'.*sparse, dense, orm"):
        make_reward("nope")
    assert REWARD_NAMES == ("sparse", "dense", "orm")
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
