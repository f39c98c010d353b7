"""A rule-based verifier beside the ORM: how much signal the solution text itself carries.

`arithmetic_score` checks what a calculator can check in a sampled solution, without a model and
without the reference: each calculation before the first `####` (a `<<a op b=c>>` annotation, or
`a op b = c` on a line without annotations: `steps.find_calculations`) computes and equals its
claimed `c` (within `CALCULATION_TOLERANCE`); and the final answer (strict grading) equals the
last calculation's claimed result. The score is the fraction of these checks that pass:
`(right calculations + consistent answer) / (calculations + 1)`. A solution whose every
calculation is right and whose answer is its last result scores 1; one wrong calculation of three
scores 3/4; a solution without a final answer scores 0, one without calculations at most 0 (its
answer has no computed value to agree with).

`ArithmeticScorer` is the same score as an `evaluation.Scorer` (problems, completions per problem
-> scores per problem), so it reranks and is measured exactly as the ORM is
(`analysis.orm_report`). It cannot see a wrong operand or a wrong operation, only wrong arithmetic
and an answer that does not follow from the work: a within-question AUROC near 0.5 means the
samples' mistakes are of the kinds it cannot see.

>>> arithmetic_score("<<3+4=7>>7\\n<<7-2=5>>5\\n#### 5")
1.0
>>> arithmetic_score("<<3+4=8>>8\\n<<8-2=6>>6\\n#### 6")
0.6666666666666666
"""
from __future__ import annotations

from collections.abc import Sequence

from ..grading import NO_ANSWER, answers_match, extract_answer
from ..problems import Problem
from ..steps import CALCULATION_TOLERANCE, find_calculations

__all__ = ["CALCULATION_TOLERANCE", "ArithmeticScorer", "arithmetic_checks", "arithmetic_score"]



def arithmetic_checks(text: str) -> tuple[int, int, bool]:
    """`(right, calculations, consistent)` of a solution text: how many of its calculations
    before the first `####` compute to their claimed value, how many there are, and whether the
    strict final answer equals the last calculation's claimed value. A calculation without a
    claimed value or whose expression does not compute is wrong."""
    body = text.partition("####")[0]
    calculations = find_calculations(body)
    right = sum(c.is_right for c in calculations)
    answer = extract_answer(text, "strict")
    last = calculations[-1].claimed if calculations else None
    consistent = answer is not NO_ANSWER and last is not None and answers_match(answer, last)
    return right, len(calculations), consistent


def arithmetic_score(text: str) -> float:
    """Fraction of passed checks (the module doc): 1.0 when every calculation is right and the
    answer is the last result; 0.0 without a final answer."""
    if extract_answer(text, "strict") is NO_ANSWER:
        return 0.0
    right, n, consistent = arithmetic_checks(text)
    return (right + consistent) / (n + 1)


class ArithmeticScorer:
    """`arithmetic_score` as an `evaluation.Scorer`: one score per completion, per problem.

    It reads the completions only (the problems are taken for the `Scorer` signature). It has no
    `cache_id`: its scores are cheap and never written next to the ORM's cached ones.
    """

    def __call__(self, problems: Sequence[Problem],
                 completions: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(problems) != len(completions):
            raise ValueError(f"score got {len(problems)} problems but {len(completions)} rows")
        return [[arithmetic_score(text) for text in row] for row in completions]

    score = __call__

    def as_scorer(self) -> ArithmeticScorer:
        """The `evaluation.Scorer` (itself), as `orm.ORMScorer.as_scorer`."""
        return self
