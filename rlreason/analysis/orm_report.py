"""The ORM as a verifier, measured: calibration, AUROC, rerank curves and shortcut diagnostics.

- `RerankData` (`rerank_data`): the K samples of an evaluation with their ORM scores, per
  question; `score_report` (pooled and within-question AUROC, ECE) and `reliability` (the
  reliability-diagram table) say how well the scores separate, `calibration` (ECE, maximum
  calibration error, Brier score) how calibrated they are.
- Rerankers (`argmax_pick`, `argmax_at_k`; `weighted_vote`, `weighted_vote_at_k`;
  `reranker_report` for all at once): the paper's argmax of the score, with a stated tie rule, and
  ORM-weighted voting (the answer whose samples' scores sum highest).
- `k_curves`: maj@k, rerank@k and pass@k (and weighted@k) against k from the same K samples.
- `shortcut_report`: what the ORM's ranking inside a question follows beyond correctness.
- `score_examples`: ORM scores of labelled `ORMExample`s (the held-out split of its data).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..grading import NO_ANSWER, answer_key, answers_match, extract_answer
from ..metrics import (
    auroc,
    maj_at_k,
    pass_at_k_curve,
    rerank_at_k,
    subsampled_curve,
    within_question_auroc,
)
from ..problems import Problem

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps this module free of torch imports
    from ..orm import ORMExample, ORMScorer

__all__ = ["TIE_RULES", "RerankData", "argmax_at_k", "argmax_pick", "calibration", "k_curves",
           "reliability", "rerank_data", "reranker_report", "score_examples", "score_report",
           "shortcut_report", "weighted_vote", "weighted_vote_at_k"]

TIE_RULES = ("first", "random")
"""How `argmax_pick` breaks ties between equal top scores: the earliest sample (`first`, what
`metrics.rerank_at_k` does) or one drawn uniformly by a seeded generator (`random`)."""


@dataclass
class RerankData:
    """The K samples of an evaluation with their ORM scores, per question (for curves and AUROC)."""

    problems: list[Problem]
    completions: list[list[str]]
    scores: list[list[float]]
    answers: list[list]
    """Strict-mode answers of the samples."""
    correct: list[list[bool]]
    """Strict-mode correctness of the samples."""

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample: scores, correctness, and the index of its question."""
        scores = np.array([s for row in self.scores for s in row], dtype=float)
        correct = np.array([c for row in self.correct for c in row], dtype=bool)
        question = np.array([q for q, row in enumerate(self.scores) for _ in row])
        return scores, correct, question

    def vote_share(self) -> np.ndarray:
        """Per sample, the fraction of its question's samples with the same answer (0 without one):
        what majority voting ranks by, as a baseline score."""
        out = []
        for answers in self.answers:
            keys = [answer_key(a) for a in answers]
            out += [keys.count(k) / len(keys) if k is not None else 0.0 for k in keys]
        return np.array(out)


def rerank_data(problems: Sequence[Problem], completions: Sequence[Sequence[str]],
                scores: Sequence[Sequence[float]]) -> RerankData:
    """`RerankData` of scored samples, their answers and correctness graded in strict mode."""
    problems, completions = list(problems), [list(c) for c in completions]
    answers = [[extract_answer(t, "strict") for t in row] for row in completions]
    correct = [[answers_match(a, p.answer) for a in row] for p, row in zip(problems, answers)]
    return RerankData(problems, completions, list(scores), answers, correct)


def reliability(probs: Sequence[float], labels: Sequence[int], n_bins: int = 10):
    """Reliability-diagram table: per equal-width probability bin, the mean predicted probability,
    the observed accuracy and the count; plus the expected calibration error (ECE).

    Returns `(DataFrame[bin_lo, bin_hi, mean_prob, frac_correct, count], ece)`.
    """
    p = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
    y = np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        m = which == b
        count = int(m.sum())
        mean_p = float(p[m].mean()) if count else float("nan")
        acc = float(y[m].mean()) if count else float("nan")
        if count:
            ece += count / max(len(p), 1) * abs(mean_p - acc)
        rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "mean_prob": mean_p,
                     "frac_correct": acc, "count": count})
    return pd.DataFrame(rows), float(ece)

def calibration(probs: Sequence[float], labels: Sequence[int], n_bins: int = 10) -> dict:
    """Calibration of probabilities: ECE and maximum calibration error (MCE) over the
    `reliability` bins, the Brier score, and the mean probability against the observed rate."""
    table, ece = reliability(probs, labels, n_bins)
    p, y = np.asarray(probs, dtype=float), np.asarray(labels, dtype=float)
    gaps = (table["mean_prob"] - table["frac_correct"]).abs()
    return {"ece": ece, "mce": float(gaps.max()) if table["count"].any() else float("nan"),
            "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"),
            "mean_prob": float(p.mean()) if len(p) else float("nan"),
            "frac_correct": float(y.mean()) if len(y) else float("nan"), "n_samples": int(len(p))}


def score_report(scores, correct, question) -> dict:
    """AUROC pooled over all samples and within questions, ECE, and the base rate."""
    scores, correct = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    _, ece = reliability(scores, correct)
    return {"auroc": auroc(scores, correct),
            "auroc_within": within_question_auroc(np.asarray(question), scores, correct),
            "ece": ece, "frac_correct": float(correct.mean()) if len(correct) else float("nan"),
            "mean_prob": float(scores.mean()) if len(scores) else float("nan"),
            "n_samples": int(len(scores))}


def score_examples(scorer: ORMScorer, examples: Sequence[ORMExample],
                   problems: Sequence[Problem]) -> np.ndarray:
    """ORM scores of labelled examples (e.g. the held-out `val` split of the ORM's data)."""
    by_id = {p.id: p for p in problems}
    order = sorted({x.problem_id for x in examples})
    rows = {q: [x.completion for x in examples if x.problem_id == q] for q in order}
    scored = dict(zip(order, scorer.score([by_id[q] for q in order], [rows[q] for q in order])))
    position = {q: 0 for q in order}
    out = []
    for x in examples:
        out.append(scored[x.problem_id][position[x.problem_id]])
        position[x.problem_id] += 1
    return np.array(out)


def k_curves(data: RerankData, ks: Sequence[int], rng: np.random.Generator,
             n_draws: int = 20, weighted: bool = False) -> dict[str, dict[int, float]]:
    """maj@k, rerank@k (random k-subsets of the K samples, `metrics.subsampled_curve`) and the
    unbiased pass@k, strict grading, for each k in `ks` (those above K are dropped); with
    `weighted`, also weighted@k (`weighted_vote_at_k`, drawn after the others)."""
    k_max = min(len(row) for row in data.answers)
    ks = [k for k in ks if k <= k_max]
    refs = [p.answer for p in data.problems]
    n = np.array([len(row) for row in data.correct])
    c = np.array([sum(row) for row in data.correct])
    curves = {"maj@k": subsampled_curve(maj_at_k, data.answers, None, refs, ks, rng, n_draws),
              "rerank@k": subsampled_curve(rerank_at_k, data.answers, data.scores, refs, ks, rng,
                                           n_draws),
              "pass@k": pass_at_k_curve(n, c, ks)}
    if weighted:
        curves["weighted@k"] = subsampled_curve(weighted_vote_at_k, data.answers, data.scores,
                                                refs, ks, rng, n_draws)
    return curves


# ---- rerankers -----------------------------------------------------------------------------------


def argmax_pick(scores: Sequence[float], tie: str = "first",
                rng: np.random.Generator | None = None) -> int:
    """Index of the top-scored sample (the paper's reranker); NaN scores rank lowest.

    Ties between equal top scores: `tie="first"` takes the earliest sample (`metrics.rerank_at_k`'s
    rule: with near-constant scores it favours whatever comes first), `tie="random"` draws one
    uniformly with `rng` (required). No samples: -1.
    """
    if tie not in TIE_RULES:
        raise ValueError(f"unknown tie rule {tie!r}; expected one of {TIE_RULES}")
    if len(scores) == 0:
        return -1
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    if tie == "first":
        return int(np.argmax(s))
    if rng is None:
        raise ValueError("argmax_pick(tie='random') needs a seeded rng")
    return int(rng.choice(np.flatnonzero(s == s.max())))


def weighted_vote(answers: Sequence, scores: Sequence[float]):
    """ORM-weighted voting: the answer whose samples' scores sum highest (`NO_ANSWER` without one).

    Answers are compared by `answer_key`; samples without an answer do not vote; NaN scores count
    0 (scores are probabilities, so a sum is a soft vote count). Ties between equal sums (exact,
    summed with `math.fsum` in sample order) go to the answer that appears first, as
    `metrics.majority_vote`'s.
    """
    if len(answers) != len(scores):
        raise ValueError(f"weighted_vote got {len(answers)} answers but {len(scores)} scores")
    first_of: dict[str, object] = {}
    weights: dict[str, list[float]] = {}
    for answer, score in zip(answers, scores):
        key = answer_key(answer)
        if key is None:
            continue
        first_of.setdefault(key, answer)
        weights.setdefault(key, []).append(0.0 if math.isnan(score) else float(score))
    if not first_of:
        return NO_ANSWER
    totals = {k: math.fsum(v) for k, v in weights.items()}
    return first_of[max(first_of, key=totals.__getitem__)]  # max keeps the first of equal sums


def argmax_at_k(answers_per_question: Sequence[Sequence], scores_per_question: Sequence[Sequence[float]],
                references: Sequence[float], tie: str = "first",
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Per question, whether the top-scored sample's answer is right (`argmax_pick`; with
    `tie="first"` this is `metrics.rerank_at_k`)."""
    out = []
    for answers, scores, ref in zip(answers_per_question, scores_per_question, references, strict=True):
        i = argmax_pick(scores, tie, rng)
        out.append(i >= 0 and answers_match(answers[i], ref))
    return np.array(out, dtype=bool)


def weighted_vote_at_k(answers_per_question: Sequence[Sequence],
                       scores_per_question: Sequence[Sequence[float]],
                       references: Sequence[float]) -> np.ndarray:
    """Per question, whether the ORM-weighted vote (`weighted_vote`) is right."""
    return np.array([answers_match(weighted_vote(a, s), r) for a, s, r in
                     zip(answers_per_question, scores_per_question, references, strict=True)],
                    dtype=bool)


def reranker_report(data: RerankData, rng: np.random.Generator) -> dict:
    """Accuracy (strict grading, over questions) of the ways to pick one of the K samples: argmax
    with ties to the first sample and at random, ORM-weighted voting, majority voting, a random
    sample (its expectation) and pass@K; plus the within-question AUROC of the scores, which
    decides whether the rerankers can beat voting."""
    refs = [p.answer for p in data.problems]
    scores, correct, question = data.flat()
    return {"argmax_first": float(np.mean(argmax_at_k(data.answers, data.scores, refs))),
            "argmax_random": float(np.mean(argmax_at_k(data.answers, data.scores, refs, "random",
                                                       rng))),
            "weighted_vote": float(np.mean(weighted_vote_at_k(data.answers, data.scores, refs))),
            "majority_vote": float(np.mean(maj_at_k(data.answers, refs))),
            "random_sample": float(np.mean([np.mean(c) if c else 0.0 for c in data.correct])),
            "pass_at_k": float(np.mean([any(c) for c in data.correct])),
            "auroc_within": within_question_auroc(question, scores, correct),
            "n_questions": len(refs)}


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (Pearson on average ranks); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def shortcut_report(data: RerankData) -> dict:
    """What the ORM's ranking inside a question follows, beyond correctness.

    Per question (then averaged): the rank correlation of the ORM score with the sample's final
    answer value and with its length in characters; and, over questions, how often the top-scored
    sample is correct against a random sample, and how often its answer is at or below the median
    answer of its question. A verifier that learned *which questions are hard* from cues in the
    solution text (small numbers, short solutions) shows negative correlations here.
    Also: the spread of scores within a question against across questions, and how many distinct
    texts there are per correct and per wrong sample (in questions with both). When the scores
    barely vary within a question, the top score is picked by noise, and noise favours the class
    with more distinct texts (identical samples get identical scores): the wrong samples.
    """
    corr_answer, corr_length, below, top_correct, mean_correct = [], [], [], [], []
    within_std, distinct_right, distinct_wrong = [], [], []
    for scores, answers, correct, texts in zip(data.scores, data.answers, data.correct,
                                               data.completions):
        if not scores:
            continue
        s = np.asarray(scores, dtype=float)
        within_std.append(float(s.std()))
        if any(correct) and not all(correct):
            distinct_right.append(len({t for t, c in zip(texts, correct) if c}) / sum(correct))
            distinct_wrong.append(len({t for t, c in zip(texts, correct) if not c})
                                  / (len(correct) - sum(correct)))
        values = np.array([a if isinstance(a, float) else np.nan for a in answers])
        ok = ~np.isnan(values)
        if ok.sum() > 2:
            corr_answer.append(_rank_corr(s[ok], values[ok]))
        corr_length.append(_rank_corr(s, np.array([len(t) for t in texts], dtype=float)))
        top = int(np.argmax(s))
        top_correct.append(correct[top])
        mean_correct.append(float(np.mean(correct)))
        if ok[top]:
            below.append(values[top] <= np.median(values[ok]))
    return {"corr_score_answer_value": float(np.nanmean(corr_answer)) if corr_answer else float("nan"),
            "corr_score_length": float(np.nanmean(corr_length)) if corr_length else float("nan"),
            "top_pick_correct": float(np.mean(top_correct)) if top_correct else float("nan"),
            "random_pick_correct": float(np.mean(mean_correct)) if mean_correct else float("nan"),
            "top_pick_answer_at_or_below_median": float(np.mean(below)) if below else float("nan"),
            "score_std_within_question": float(np.mean(within_std)) if within_std else float("nan"),
            "score_std_across_questions": float(np.std([np.mean(s) for s in data.scores if s])),
            "distinct_texts_per_correct_sample": float(np.mean(distinct_right)) if distinct_right else float("nan"),
            "distinct_texts_per_wrong_sample": float(np.mean(distinct_wrong)) if distinct_wrong else float("nan")}
