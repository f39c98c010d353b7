"""Sampling metrics of the study, vectorised over questions (numpy, no torch).

- ``pass_at_k``: the unbiased pass@k estimator of Chen et al. (2021), as in openai/human-eval.
- ``maj_at_k`` / ``majority_vote``: majority vote over the final answers of K samples.
- ``rerank_at_k``: the answer of the sample a reranker (the ORM) scores highest.
- ``subsampled_curve``: maj@k and rerank@k for k < K from random subsets of the K samples.
- ``bootstrap_ci`` and friends: percentile bootstrap intervals with an explicit random generator,
  because numbers that readers compare always come with their uncertainty.

>>> float(pass_at_k(n=2, c=1, k=1))
0.5
>>> majority_vote([3.0, 5.0, 5.0, NO_ANSWER, NO_ANSWER])
5.0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from rlreason.grading import NO_ANSWER, answer_key, answers_match

__all__ = [
    "ConfidenceInterval",
    "accuracy_with_ci",
    "bootstrap_ci",
    "maj_at_k",
    "majority_vote",
    "paired_difference_ci",
    "pass_at_k",
    "pass_at_k_curve",
    "rerank_at_k",
    "subsampled_curve",
]


def pass_at_k(n, c, k: int):
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)`` in the numerically stable product form of openai/human-eval,
    ``1 - prod(1 - k / arange(n-c+1, n+1))``. `n` and `c` are ints or arrays (one entry per
    question, broadcast together); `k` is one int. Returns a float for scalar inputs, else an array.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"pass_at_k: k must be a positive int, got {k!r}")
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n), np.asarray(c))
    for name, arr in (("n", n_arr), ("c", c_arr)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"pass_at_k: {name} must hold integers (sample counts), got dtype {arr.dtype}"
            )
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n!r}, c={c!r}")
    if np.any(k > n_arr):
        raise ValueError(f"pass_at_k: k={k} exceeds the number of samples n={int(n_arr.min())}")
    # Row q multiplies (1 - k/j) over j = n_q-c_q+1 .. n_q; entries outside that range contribute 1.
    # An empty range (c = 0) gives a product of 1, i.e. pass@k = 0; n - c < k gives a factor 0.
    j = np.arange(1, int(n_arr.max(initial=0)) + 1, dtype=float)
    n_col, c_col = n_arr.reshape(-1, 1), c_arr.reshape(-1, 1)
    in_range = (j > n_col - c_col) & (j <= n_col)
    factors = np.where(in_range, 1.0 - k / j, 1.0)
    estimate = (1.0 - np.prod(factors, axis=1)).reshape(n_arr.shape)
    return float(estimate) if estimate.ndim == 0 else estimate


def pass_at_k_curve(n, c, ks: Sequence[int]) -> dict[int, float]:
    """Mean pass@k over questions for every k in `ks`."""
    return {int(k): float(np.mean(pass_at_k(n, c, int(k)))) for k in ks}


def majority_vote(answers: Sequence):
    """The most frequent answer (compared by ``answer_key``), or ``NO_ANSWER`` if none was given.

    ``NO_ANSWER`` samples do not vote. Tie rule: among the answers with the most votes, the one
    whose first occurrence comes earliest in sample order wins; that first occurrence is returned
    as is.
    """
    first_of: dict[str, object] = {}
    votes: Counter[str] = Counter()
    for answer in answers:
        key = answer_key(answer)
        if key is None:
            continue
        first_of.setdefault(key, answer)
        votes[key] += 1
    if not votes:
        return NO_ANSWER
    # max() keeps the first maximum, and dict order is first-occurrence order: that is the tie rule.
    winner = max(first_of, key=votes.__getitem__)
    return first_of[winner]


def _check_lengths(what: str, items: Sequence, references: Sequence[float]) -> None:
    if len(items) != len(references):
        raise ValueError(f"{what} has {len(items)} questions but references has {len(references)}")


def maj_at_k(answers_per_question: Sequence[Sequence], references: Sequence[float]) -> np.ndarray:
    """Per question, whether the majority answer of its samples equals the reference (bools)."""
    _check_lengths("answers_per_question", answers_per_question, references)
    return np.array(
        [answers_match(majority_vote(a), r) for a, r in zip(answers_per_question, references)],
        dtype=bool,
    )


def rerank_at_k(
    answers_per_question: Sequence[Sequence],
    scores_per_question: Sequence[Sequence[float]],
    references: Sequence[float],
) -> np.ndarray:
    """Per question, whether the answer of the highest-scored sample equals the reference.

    Any per-sample score works (ORM probability, log-likelihood, ...); higher is better. Ties go to
    the earliest sample; NaN scores rank lowest. A question without samples counts as wrong.
    """
    _check_lengths("answers_per_question", answers_per_question, references)
    _check_lengths("scores_per_question", scores_per_question, references)
    correct = np.zeros(len(references), dtype=bool)
    for q, (answers, scores, reference) in enumerate(
        zip(answers_per_question, scores_per_question, references)
    ):
        if len(answers) != len(scores):
            raise ValueError(f"question {q}: {len(answers)} answers but {len(scores)} scores")
        if len(answers) == 0:
            continue
        scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
        correct[q] = answers_match(answers[int(np.argmax(scores))], reference)
    return correct


def subsampled_curve(
    metric_fn: Callable[..., np.ndarray],
    answers: Sequence[Sequence],
    scores_or_none: Sequence[Sequence[float]] | None,
    references: Sequence[float],
    ks: Sequence[int],
    rng: np.random.Generator,
    n_draws: int = 100,
) -> dict[int, float]:
    """Accuracy of ``metric_fn`` (``maj_at_k`` or ``rerank_at_k``) with k of the K samples, per k.

    For each k and each of `n_draws` draws, every question keeps a random subset of k of its samples
    (without replacement, kept in their original order so the tie rules still follow sample order);
    the curve value is the accuracy averaged over questions and draws. With
    ``scores_or_none=None`` the metric is called as ``metric_fn(answers, references)``, otherwise as
    ``metric_fn(answers, scores, references)``. At k = K every draw is the full set of samples.
    Cost: ``len(ks) * n_draws`` calls of `metric_fn`.
    """
    _check_lengths("answers", answers, references)
    if scores_or_none is not None:
        _check_lengths("scores_or_none", scores_or_none, references)
    if n_draws < 1:
        raise ValueError(f"subsampled_curve: n_draws must be >= 1, got {n_draws}")
    fewest = min((len(a) for a in answers), default=0)
    curve = {}
    for k in ks:
        if not 1 <= k <= fewest:
            raise ValueError(
                f"subsampled_curve: k={k} must be in 1..{fewest} (the fewest samples of a question)"
            )
        accuracies = []
        for _ in range(n_draws):
            subsets = [np.sort(rng.choice(len(a), size=k, replace=False)) for a in answers]
            sub_answers = [[a[i] for i in idx] for a, idx in zip(answers, subsets)]
            if scores_or_none is None:
                correct = metric_fn(sub_answers, references)
            else:
                sub_scores = [[s[i] for i in idx] for s, idx in zip(scores_or_none, subsets)]
                correct = metric_fn(sub_answers, sub_scores, references)
            accuracies.append(np.mean(correct))
        curve[int(k)] = float(np.mean(accuracies))
    return curve


class ConfidenceInterval(NamedTuple):
    """A point estimate with its interval; unpacks as ``mean, low, high``."""

    mean: float
    low: float
    high: float


_BOOTSTRAP_CHUNK = 256  # resamples per batch: bounds memory at chunk * n values


def bootstrap_ci(
    values, rng: np.random.Generator, n_boot: int = 2000, alpha: float = 0.05
) -> ConfidenceInterval:
    """Mean of `values` with a percentile-bootstrap ``1 - alpha`` interval (resampling `values`)."""
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_ci: values is empty; need at least one value")
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    means = np.empty(n_boot)
    for start in range(0, n_boot, _BOOTSTRAP_CHUNK):
        rows = min(_BOOTSTRAP_CHUNK, n_boot - start)
        idx = rng.integers(0, values.size, size=(rows, values.size))
        means[start : start + rows] = values[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(float(values.mean()), float(low), float(high))


def accuracy_with_ci(correct, rng: np.random.Generator, n_boot: int = 2000, alpha: float = 0.05):
    """Accuracy of per-question correctness flags with its bootstrap interval."""
    return bootstrap_ci(
        np.asarray(correct, dtype=bool).astype(float), rng, n_boot=n_boot, alpha=alpha
    )


def paired_difference_ci(
    a, b, rng: np.random.Generator, n_boot: int = 2000, alpha: float = 0.05
) -> ConfidenceInterval:
    """Mean of ``a - b`` over the same questions, with a bootstrap interval over questions.

    Pairing (the same resampled questions for both models) removes the question-difficulty variance
    that two separate intervals would carry: use it for "gain over SFT".
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference_ci: a has {a.size} questions but b has {b.size}")
    return bootstrap_ci(a - b, rng, n_boot=n_boot, alpha=alpha)


# ---- verifier scores (the ORM) -----------------------------------------------------------------


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (the probability that a random positive outscores a random
    negative, ties counting half): the Mann-Whitney U statistic with average ranks. NaN when only
    one class is present.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average rank within each group of tied scores (1-based ranks).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def within_question_auroc(prompt, scores, labels) -> float:
    """Mean over questions with both correct and wrong samples of their AUROC (what reranking
    needs; the pooled AUROC also rewards knowing which questions are hard).

    `prompt`, `scores` and `labels` are arrays with one entry per sample (`prompt` names its
    question)."""
    values = [auroc(scores[prompt == q], labels[prompt == q]) for q in np.unique(prompt)]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
