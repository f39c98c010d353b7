"""Rewards of a sampled solution: sparse (final answer), dense (heuristic step matching), ORM.

Every reward source has one shape, the `RewardFn`: a batched, pure function of the problems and
the samples that returns one `Reward` per sample. A `Reward` says where its value lands, so that
every algorithm reads what it needs:

- `total`: the sample's return (Expert Iteration filters on it, RCRL labels with it);
- `per_token`: one value per generated token, non-zero only where a reward lands (PPO);
- `per_step` and `step_token_ends`: one value per solution step and the index of the token that
  ends that step (RCRL's dense labels).

**Steps, token by token** (`steps.step_token_ends`). A step is one line of the completion: a
newline token ends a step when the line holds some text, and the last token (EOS, or the last
token of a truncated sample) always ends the last step, which is normally the `#### answer` line.
Blank lines and trailing whitespace join the next (or the last) step, so `per_step` never holds
empty steps.

**Sparse** (`sparse_reward`): 1 when the final answer is correct (strict grading by default), on
the last token; every other token and every other step gets 0.

**Dense** (`dense_reward`), the paper's heuristic: a step whose intermediate result (the value
after `=` of its last calculation, `steps.step_results`) equals an intermediate result of the
reference solution earns `(1 - final_weight) / n_ref`, where `n_ref` is the number of distinct
intermediate results of the reference; the correct final answer still earns `final_weight` on the
last token. A solution that walks the reference's path and gets the answer earns exactly 1:
with the default `final_weight=0.5`, the steps share 0.5 and the final answer 0.5. Guards against
reward hacking: a reference result is rewarded at most once (repeating a correct line earns
nothing), text after the first `####` is not part of the solution (steps there earn nothing, and
the strict answer is the first `####`), and an answer with no steps earns only `final_weight`.

**Dense over any valid path** (`dense_any_reward`, `make_reward("dense_any", valid_paths=...)`):
the same heuristic, scored against every valid solution path of the problem (the reference's
among them) and credited by the path that credits the sample most (the reference on ties). A
correct alternative path then earns 1, as the reference's path does; with the reference as the
only path (GSM8K) it is `dense`. It separates "dense rewards help little" from an artefact of a
world whose reference is one path drawn among several.

**ORM** (`orm_reward`): the outcome reward model's probability that the sample is correct, on the
last token; with `per_step=True`, step i earns `p_i - p_{i-1}` where `p_i` is the ORM's
probability at the end of step i (and `p_{-1} = 0`), so the steps share out the same total
(potential-based shaping: padding a solution with steps cannot raise its return).

>>> from rlreason.tokenizer import build_word_tokenizer
>>> from rlreason.problems import Problem
>>> from rlreason.sampling import Sample
>>> tok = build_word_tokenizer(["<<2+3=5>>5\\n#### 5"])
>>> problem = Problem("p0", "Tom has 2 apples and finds 3.", "<<2+3=5>>5\\n#### 5", 5.0)
>>> ids = tok(" <<2+3=5>>5\\n#### 5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
>>> sample = Sample(" <<2+3=5>>5\\n#### 5", ids, [0.0] * len(ids), "stop")
>>> [r.total for r in sparse_reward()([problem], [sample])]
[1.0]
>>> dense_reward(tok)([problem], [sample])[0].per_step
[0.5, 0.5]
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .grading import answers_match, extract_answer
from .problems import Problem
from .steps import step_results, step_token_ends

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps this module free of torch imports
    from .orm import ORMScorer
    from .sampling import Sample

__all__ = ["REWARD_NAMES", "PathResults", "Reward", "RewardFn", "dense_any_reward", "dense_reward",
           "dense_step_rewards", "make_reward", "orm_reward", "sparse_reward"]

REWARD_NAMES = ("sparse", "dense", "dense_any", "orm")


@dataclass(frozen=True)
class Reward:
    """The reward of one sample, and where it lands."""

    total: float
    """The sample's return: the sum of `per_token` (and of `per_step`)."""
    per_token: list[float]
    """One value per token of `sample.token_ids`; non-zero only at `step_token_ends` (PPO)."""
    per_step: list[float]
    """One value per solution step (line) of the completion, in order (RCRL's dense labels)."""
    step_token_ends: list[int]
    """Index into `sample.token_ids` of the token that ends each step (`len == len(per_step)`)."""


RewardFn = Callable[[Sequence[Problem], Sequence["Sample"]], list[Reward]]
"""A batched reward: one `Reward` per (problem, sample) pair, in order."""

PathResults = Callable[[Problem], Sequence[Sequence[float]]] | Mapping[str, Sequence[Sequence[float]]]
"""The intermediate results of each valid solution path of a problem, in order: a function of the
problem, or a mapping from `Problem.id` (a problem it lacks has only its reference's path)."""


# ---- placing rewards on steps and tokens -------------------------------------------------------


def _step_texts(tokenizer, token_ids: Sequence[int], ends: Sequence[int]) -> list[str]:
    texts, start = [], 0
    for end in ends:
        texts.append(tokenizer.decode(list(token_ids[start:end + 1]), skip_special_tokens=True))
        start = end + 1
    return texts


def _place(total_per_step: Sequence[float], ends: Sequence[int], n_tokens: int) -> list[float]:
    per_token = [0.0] * n_tokens
    for value, end in zip(total_per_step, ends):
        per_token[end] += value
    return per_token


def _reward_from_steps(per_step: list[float], ends: list[int], n_tokens: int) -> Reward:
    return Reward(total=float(math.fsum(per_step)), per_token=_place(per_step, ends, n_tokens),
                  per_step=per_step, step_token_ends=ends)


def _final_only(value: float, ends: list[int], n_tokens: int) -> Reward:
    if not ends:  # no tokens: nothing to reward
        return Reward(0.0, [], [], [])
    per_step = [0.0] * len(ends)
    per_step[-1] = float(value)
    return _reward_from_steps(per_step, ends, n_tokens)


def _check_batch(problems: Sequence[Problem], samples: Sequence) -> None:
    if len(problems) != len(samples):
        raise ValueError(f"reward got {len(problems)} problems but {len(samples)} samples")


def _tokenizer_for(tokenizer, name: str):
    if tokenizer is None:
        raise ValueError(f"the {name} reward needs the policy's tokenizer (tokenizer=...)")
    return tokenizer


# ---- sparse ------------------------------------------------------------------------------------


def sparse_reward(mode: str = "strict", tokenizer=None) -> RewardFn:
    """1.0 on the last token when the final answer is correct under grading `mode`, else 0.

    Without a tokenizer `per_step` has a single step (the whole completion) ending at the last
    token; with one, steps are lines as everywhere else (all zero except the last).
    """
    extract_answer("", mode)  # fail now, not at the first batch, on an unknown grading mode

    def reward(problems: Sequence[Problem], samples: Sequence[Sample]) -> list[Reward]:
        _check_batch(problems, samples)
        out = []
        for problem, sample in zip(problems, samples):
            n = len(sample.token_ids)
            ends = step_token_ends(tokenizer, sample.token_ids) if tokenizer is not None else (
                [n - 1] if n else [])
            correct = answers_match(extract_answer(sample.text, mode), problem.answer)
            out.append(_final_only(1.0 if correct else 0.0, ends, n))
        return out

    return reward


# ---- dense -------------------------------------------------------------------------------------


def _distinct(values) -> list[float]:
    distinct: list[float] = []
    for value in values:
        if value is not None and not any(answers_match(value, d) for d in distinct):
            distinct.append(value)
    return distinct


def _reference_results(problem: Problem) -> list[float]:
    """Distinct intermediate results of the reference solution, in order."""
    return _distinct(step_results(problem.solution))


def _paths_of(valid_paths: PathResults, problem: Problem) -> list[list[float]]:
    """The reference's distinct intermediate results first, then those of every valid path."""
    paths = valid_paths(problem) if callable(valid_paths) else valid_paths.get(problem.id, ())
    return [_reference_results(problem)] + [_distinct(path) for path in paths or ()]


def _step_result(text: str) -> float | None:
    results = step_results(text)
    return results[-1] if results else None


def dense_step_rewards(problem: Problem, step_texts: Sequence[str], final_correct: bool,
                       final_weight: float = 0.5,
                       reference: Sequence[float] | None = None) -> list[float]:
    """Dense heuristic reward of each step, given the steps' texts (pure; see the module doc).

    `reference`: the distinct intermediate results to match (default: the reference solution's).
    """
    if not step_texts:
        return []
    reference = _reference_results(problem) if reference is None else list(reference)
    share = (1.0 - final_weight) / len(reference) if reference else 0.0
    rewarded = [False] * len(reference)
    per_step = [0.0] * len(step_texts)
    for i, text in enumerate(step_texts):
        before_answer = text.partition("####")[0]
        value = _step_result(before_answer) if before_answer.strip() else None
        if value is not None:
            for j, ref in enumerate(reference):
                if not rewarded[j] and answers_match(value, ref):
                    rewarded[j] = True
                    per_step[i] = share
                    break
        if "####" in text:
            break  # the solution ends at the first `####`: later lines earn nothing
    if final_correct:
        per_step[-1] += final_weight
    return per_step


def _best_path_rewards(problem: Problem, step_texts: Sequence[str], final_correct: bool,
                       final_weight: float, valid_paths: PathResults) -> list[float]:
    """`dense_step_rewards` under the valid path that credits the steps most (first on ties: the
    reference's)."""
    best: list[float] | None = None
    for reference in _paths_of(valid_paths, problem):
        per_step = dense_step_rewards(problem, step_texts, final_correct, final_weight, reference)
        if best is None or math.fsum(per_step) > math.fsum(best):
            best = per_step
    return best


def dense_reward(tokenizer, mode: str = "strict", final_weight: float = 0.5,
                 valid_paths: PathResults | None = None) -> RewardFn:
    """The paper's heuristic dense reward: matching intermediate results plus the final answer.

    Each step earns `(1 - final_weight) / n_ref` when its result matches a not-yet-rewarded distinct
    intermediate result of the reference (n_ref of them), placed on the token ending the step; the
    correct final answer earns `final_weight` on the last token. Default split: steps 0.5, answer
    0.5, so the reference's own path with the right answer earns 1. With `valid_paths` the steps
    are matched against every valid path and credited by the best one (`dense_any_reward`).
    """
    extract_answer("", mode)
    if not 0.0 <= final_weight <= 1.0:
        raise ValueError(f"final_weight must be in [0, 1], got {final_weight}")
    tokenizer = _tokenizer_for(tokenizer, "dense")

    def reward(problems: Sequence[Problem], samples: Sequence[Sample]) -> list[Reward]:
        _check_batch(problems, samples)
        out = []
        for problem, sample in zip(problems, samples):
            ids = list(sample.token_ids)
            ends = step_token_ends(tokenizer, ids)
            if not ends:
                out.append(Reward(0.0, [], [], []))
                continue
            correct = answers_match(extract_answer(sample.text, mode), problem.answer)
            texts = _step_texts(tokenizer, ids, ends)
            if valid_paths is None:
                per_step = dense_step_rewards(problem, texts, correct, final_weight)
            else:
                per_step = _best_path_rewards(problem, texts, correct, final_weight, valid_paths)
            out.append(_reward_from_steps(per_step, ends, len(ids)))
        return out

    return reward


def dense_any_reward(tokenizer, valid_paths: PathResults, mode: str = "strict",
                     final_weight: float = 0.5) -> RewardFn:
    """The dense heuristic credited by any valid solution path, not only the reference's.

    For each sample, the steps are matched (as `dense_reward`) against the distinct intermediate
    results of each path of `valid_paths(problem)` and of the reference, and the path that gives
    the largest total is used (the reference on ties): a correct alternative path earns 1, and no
    sample earns less than under `dense`. A problem without listed paths is scored as by `dense`.
    """
    if valid_paths is None:
        raise ValueError("the dense_any reward needs valid_paths: the intermediate results of each "
                         "valid solution path (a mapping by problem id or a function)")
    return dense_reward(tokenizer, mode, final_weight, valid_paths=valid_paths)


# ---- ORM ---------------------------------------------------------------------------------------


def orm_reward(scorer: ORMScorer, per_step: bool = False) -> RewardFn:
    """The ORM's probability of correctness: on the last token, or shared out over the steps.

    `per_step=False`: total = p(correct | whole sample), on the last token. `per_step=True`: the same
    total, with step i earning `p_i - p_{i-1}` on its last token (p at the end of each step,
    `p_{-1} = 0`). Steps are those of `step_token_ends` with the scorer's tokenizer.
    """

    def reward(problems: Sequence[Problem], samples: Sequence[Sample]) -> list[Reward]:
        _check_batch(problems, samples)
        if not samples:
            return []
        tokenizer = scorer.tokenizer
        all_ends = [step_token_ends(tokenizer, s.token_ids) for s in samples]
        probs = scorer.score_steps(problems, samples, ends=all_ends)
        out = []
        for sample, ends, p in zip(samples, all_ends, probs):
            n = len(sample.token_ids)
            if not ends:
                out.append(Reward(0.0, [], [], []))
            elif per_step:
                steps = [float(b - a) for a, b in zip([0.0] + list(p[:-1]), p)]
                out.append(Reward(total=float(p[-1]), per_token=_place(steps, ends, n),
                                  per_step=steps, step_token_ends=ends))
            else:
                out.append(_final_only(float(p[-1]), ends, n))
        return out

    return reward


# ---- by name -----------------------------------------------------------------------------------


def make_reward(name: str, *, tokenizer=None, orm: ORMScorer | None = None,
                mode: str = "strict", **kwargs) -> RewardFn:
    """The reward called `name` (`sparse`, `dense`, `dense_any` or `orm`); extra keywords go to its
    factory.

    `dense` needs `tokenizer`; `dense_any` also `valid_paths` (`PathResults`); `orm` needs `orm`
    (an `ORMScorer`). Sparse uses `tokenizer`, when given, to split `per_step` into lines.
    """
    if name == "sparse":
        return sparse_reward(mode, tokenizer=tokenizer, **kwargs)
    if name == "dense":
        return dense_reward(_tokenizer_for(tokenizer, "dense"), mode, **kwargs)
    if name == "dense_any":
        return dense_any_reward(_tokenizer_for(tokenizer, "dense_any"),
                                kwargs.pop("valid_paths", None), mode, **kwargs)
    if name == "orm":
        if orm is None:
            raise ValueError("the orm reward needs a trained ORM: make_reward('orm', orm=ORMScorer(path))")
        return orm_reward(orm, **kwargs)
    raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(REWARD_NAMES)}")
