"""pass@k against the closed form, majority vote and reranking, subsampled curves, bootstrap CIs."""

import math

import numpy as np
import pytest

from rlreason.grading import NO_ANSWER
from rlreason.metrics import (
    ConfidenceInterval,
    accuracy_with_ci,
    bootstrap_ci,
    maj_at_k,
    majority_vote,
    paired_difference_ci,
    pass_at_k,
    pass_at_k_curve,
    rerank_at_k,
    subsampled_curve,
)


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


CASES = [
    (n, c, k)
    for n in (1, 2, 5, 10, 20, 96)
    for c in sorted({0, 1, n // 3, n - 1, n})
    for k in sorted({1, 2, n // 2, n - 1, n})
    if 1 <= k <= n and 0 <= c <= n
]


@pytest.mark.parametrize("n, c, k", CASES)
def test_pass_at_k_equals_the_closed_form(n, c, k):
    got = pass_at_k(n, c, k)
    assert isinstance(got, float)
    assert got == pytest.approx(closed_form(n, c, k), abs=1e-12)


def test_pass_at_k_edge_values():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 10) == 1.0  # k = n: correct if any sample is
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(2, 1, 1) == 0.5  # human-eval's shipped sanity check


def test_pass_at_k_is_vectorised_over_questions():
    n = np.array([4, 5, 10, 20, 96, 96, 50])
    c = np.array([0, 5, 3, 19, 1, 40, 50])
    got = pass_at_k(n, c, 4)
    assert isinstance(got, np.ndarray) and got.shape == n.shape
    np.testing.assert_allclose(
        got, [closed_form(int(a), int(b), 4) for a, b in zip(n, c)], atol=1e-12
    )
    # A scalar n broadcasts against per-question c.
    np.testing.assert_allclose(
        pass_at_k(20, np.array([0, 5, 20]), 4), [closed_form(20, x, 4) for x in (0, 5, 20)]
    )


def test_pass_at_k_bad_input():
    with pytest.raises(ValueError, match=r"k=11 exceeds the number of samples n=10"):
        pass_at_k(10, 3, 11)
    with pytest.raises(ValueError, match=r"k=5 exceeds"):
        pass_at_k(np.array([10, 4]), np.array([1, 1]), 5)
    with pytest.raises(ValueError, match=r"0 <= c <= n"):
        pass_at_k(10, 11, 1)
    with pytest.raises(ValueError, match=r"positive int, got 0"):
        pass_at_k(10, 1, 0)
    with pytest.raises(ValueError, match=r"n must hold integers"):
        pass_at_k(np.array([10.5]), np.array([1]), 1)


def test_pass_at_k_curve_is_the_mean_over_questions_and_grows_with_k():
    n, c = np.array([10, 10, 10]), np.array([0, 1, 5])
    curve = pass_at_k_curve(n, c, [1, 2, 5, 10])
    assert list(curve) == [1, 2, 5, 10]
    assert curve[1] == pytest.approx(0.2)
    assert curve[10] == pytest.approx(2 / 3)
    assert np.all(np.diff(list(curve.values())) > 0)


def test_majority_vote_counts_answers_by_key_and_ignores_no_answer():
    assert majority_vote([3.0, 5, 5.0, NO_ANSWER, NO_ANSWER, NO_ANSWER]) == 5
    assert majority_vote([72, 72.0, 71]) == 72
    assert majority_vote([NO_ANSWER, NO_ANSWER]) is NO_ANSWER
    assert majority_vote([]) is NO_ANSWER


def test_majority_vote_tie_goes_to_the_earliest_first_occurrence():
    assert majority_vote([2.0, 1.0, 1.0, 2.0]) == 2.0
    assert majority_vote([1.0, 2.0, 2.0, 1.0]) == 1.0
    assert majority_vote([NO_ANSWER, 7.0, 8.0]) == 7.0
    assert majority_vote([9.0, 7.0, 8.0, 8.0, 7.0]) == 7.0  # 9 has fewer votes


def test_majority_vote_returns_the_original_value():
    winner = majority_vote([72.0000001, 72.0, 5.0])
    assert winner == 72.0000001


def test_maj_at_k_per_question():
    answers = [
        [1.0, 2.0, 2.0],
        [3.0, 3.0, 4.0],
        [NO_ANSWER, NO_ANSWER, 5.0],
        [NO_ANSWER],
        [7.0, 8.0],
    ]
    references = [2.0, 4.0, 5.0, 0.0, 8.0]
    got = maj_at_k(answers, references)
    assert got.dtype == bool
    assert got.tolist() == [True, False, True, False, False]  # last: tie goes to 7
    with pytest.raises(ValueError, match="5 questions but references has 4"):
        maj_at_k(answers, references[:4])


def test_rerank_picks_the_top_scored_samples_answer():
    answers = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [NO_ANSWER, 8.0], []]
    scores = [[0.1, 0.9, 0.5], [0.1, 0.9, 0.5], [0.7, 0.7], [float("nan"), 0.0], [0.9, 0.1], []]
    references = [2.0, 3.0, 5.0, 7.0, 8.0, 1.0]
    assert rerank_at_k(answers, scores, references).tolist() == [
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="question 0: 3 answers but 2 scores"):
        rerank_at_k([[1.0, 2.0, 3.0]], [[0.1, 0.2]], [1.0])


def _toy_samples(rng, n_questions=40, n_samples=8):
    references = rng.integers(0, 5, n_questions).astype(float).tolist()
    answers = [rng.integers(0, 5, n_samples).astype(float).tolist() for _ in range(n_questions)]
    # The "ORM" knows the answer with noise, so reranking beats a random pick.
    scores = [
        [float(a == r) + rng.normal(0, 0.5) for a in ans] for ans, r in zip(answers, references)
    ]
    return answers, scores, references


def test_subsampled_curve_at_full_k_equals_the_metric_and_is_deterministic():
    answers, scores, references = _toy_samples(np.random.default_rng(0))
    maj = subsampled_curve(
        maj_at_k, answers, None, references, [1, 4, 8], np.random.default_rng(1), n_draws=5
    )
    assert maj[8] == pytest.approx(maj_at_k(answers, references).mean())
    rerank = subsampled_curve(
        rerank_at_k, answers, scores, references, [1, 8], np.random.default_rng(1), 5
    )
    assert rerank[8] == pytest.approx(rerank_at_k(answers, scores, references).mean())
    assert rerank[8] > rerank[1]
    again = subsampled_curve(
        maj_at_k, answers, None, references, [1, 4, 8], np.random.default_rng(1), n_draws=5
    )
    assert again == maj


def test_subsampled_curve_at_k1_is_the_mean_single_sample_accuracy():
    answers = [[1.0, 1.0, 2.0, 2.0]] * 3
    curve = subsampled_curve(
        maj_at_k, answers, None, [1.0] * 3, [1], np.random.default_rng(0), n_draws=400
    )
    assert curve[1] == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValueError, match=r"k=5 must be in 1..4"):
        subsampled_curve(maj_at_k, answers, None, [1.0] * 3, [5], np.random.default_rng(0))


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.4
    large = rng.random(5000) < 0.4
    ci_small = accuracy_with_ci(small, np.random.default_rng(1))
    ci_large = accuracy_with_ci(large, np.random.default_rng(1))
    for ci, data in ((ci_small, small), (ci_large, large)):
        assert isinstance(ci, ConfidenceInterval)
        assert ci.mean == pytest.approx(data.mean())
        assert ci.low < ci.mean < ci.high
    assert ci_large.high - ci_large.low < (ci_small.high - ci_small.low) / 4
    assert ci_large.low < 0.4 < ci_large.high


def test_bootstrap_ci_is_deterministic_given_the_generator():
    values = np.random.default_rng(0).normal(size=300)
    first = bootstrap_ci(values, np.random.default_rng(7), n_boot=500)
    assert bootstrap_ci(values, np.random.default_rng(7), n_boot=500) == first
    assert bootstrap_ci(values, np.random.default_rng(8), n_boot=500) != first
    mean, low, high = first  # unpacks as a plain tuple
    assert low < mean < high


def test_bootstrap_ci_width_matches_the_normal_approximation():
    values = np.random.default_rng(0).normal(size=2000)
    _, low, high = bootstrap_ci(values, np.random.default_rng(1), n_boot=2000, alpha=0.05)
    expected = 2 * 1.96 * values.std() / math.sqrt(values.size)
    assert high - low == pytest.approx(expected, rel=0.1)


def test_bootstrap_ci_bad_input():
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_ci([], np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha must be in"):
        bootstrap_ci([1.0], np.random.default_rng(0), alpha=1.5)


def test_paired_difference_ci_removes_shared_question_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.random(400)
    sft = difficulty < 0.5
    rl = sft | (rng.random(400) < 0.1)  # solves everything SFT solves, and a few more
    gain = paired_difference_ci(rl, sft, np.random.default_rng(1))
    assert gain.mean == pytest.approx(rl.mean() - sft.mean())
    assert gain.low > 0  # the gain is clearly positive when paired
    separate_width = sum(
        h - lo for _, lo, h in (accuracy_with_ci(x, np.random.default_rng(1)) for x in (rl, sft))
    )
    assert gain.high - gain.low < separate_width / 2
    with pytest.raises(ValueError, match="a has 3 questions but b has 2"):
        paired_difference_ci([1, 0, 1], [1, 0], np.random.default_rng(0))
