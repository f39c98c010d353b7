"""Grading self-check, in seconds: ``python -m rlreason.selfcheck`` (pure Python, no torch).

Two checks, as human-eval ships one to verify an install before trusting its numbers:

1. GSM8K's own references (train and test, 8,792 solutions, read by `rlreason.data` from
   ``$RLREASON_DATA_DIR``): the strict and the flexible grader must both read the number written
   after ``####``, which the loader parses on its own (``float`` of the text, commas removed),
   and must grade that number plus one wrong (no tolerance: 18 answers are 1,000,000 or more).
   Skipped, and said so, when the variable is unset; ``--require-data`` makes that a failure.
2. ``SOLUTIONS``: a table of model-written solutions with known verdicts under both grading modes,
   the traps included (a tolerance that accepts ``1000001`` for ``1,000,000``, a digit group cut
   mid-number, several ``####`` lines, currency signs, a unicode minus).

It prints one line and exits 1 on any failure, listing the first failures above that line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from rlreason.data import DATA_DIR_ENV, GSM8K_SPLITS, load_gsm8k
from rlreason.grading import GRADING_MODES, answer_key, extract_answer, is_correct
from rlreason.problems import Problem

__all__ = ["SOLUTIONS", "Solution", "check_references", "check_solutions", "main"]


class Solution(NamedTuple):
    """One model-written solution and its verdict under each grading mode."""

    name: str
    text: str
    reference: float
    strict: bool
    flexible: bool


SOLUTIONS: tuple[Solution, ...] = (
    Solution("annotated-correct", "48/2 = <<48/2=24>>24 clips in May.\n"
             "48+24 = <<48+24=72>>72 clips in all.\n#### 72", 72, True, True),
    Solution("plain-text-correct", "She works 50 minutes, 12/60 = 0.2 per minute.\n"
             "0.2 x 50 = 10\n#### 10", 10, True, True),
    Solution("wrong-final-answer", "16 - 3 - 4 = 9 eggs\n9 * 2 = 18\n#### 19", 18, False, False),
    Solution("dollar-answer", "9 * $2 = $18\n#### $18", 18, True, True),
    Solution("decimal-zero", "3 x 24 = 72.0\n#### 72.0", 72, True, True),
    Solution("thousands", "1,000 x 5 = 5,000\n#### 5,000", 5000, True, True),
    Solution("cents", "5,000,000 / 1 = 5,000,000.00\n#### 5,000,000.00", 5_000_000, True, True),
    Solution("million-plus-one", "1,000,000 + 1 = 1,000,001\n#### 1,000,001", 1_000_000,
             False, False),
    Solution("gsm8k-1450000-plus-one", "#### 1450001", 1_450_000, False, False),
    Solution("hundredth-off", "10000 + 0.01 = 10000.01\n#### 10000.01", 10_000, False, False),
    Solution("cut-digit-group", "The total is 12,3456.\n#### 12,3456", 12_345, False, False),
    Solution("unicode-minus", "5 - 12 = \u22127\n#### \u22127", -7, True, True),
    Solution("dollar-minus", "He is short by $5.\n#### $-5", -5, True, True),
    Solution("negative-zero", "3 - 3 = 0\n#### -0", 0, True, True),
    Solution("fraction", "3 of 4 slices: 3/4\n#### 3/4", 0.75, True, True),
    Solution("no-marker", "So she has 72 clips.", 72, False, True),
    Solution("several-markers", "#### 71\n#### 72\n#### 73", 72, False, False),
    Solution("text-after-answer", "#### 72\nWait, that is 73 clips.", 72, True, False),
    Solution("answer-in-words", "She has seventy-two.\n#### seventy-two", 72, False, False),
    Solution("units-after-answer", "#### 72 clips", 72, True, True),
    Solution("degenerate-spaces", "3 x 4 =" + " " * 1600 + "twelve\n#### 12", 12, True, True),
    Solution("empty", "", 0, False, False),
)
"""Model-written solutions with known verdicts; `check_solutions` grades each in both modes."""


def check_solutions(solutions: Sequence[Solution] = SOLUTIONS) -> list[str]:
    """One message per wrong verdict, empty when every solution is graded as expected."""
    failures = []
    for s in solutions:
        for mode, expected in (("strict", s.strict), ("flexible", s.flexible)):
            if is_correct(s.text, s.reference, mode) is not expected:
                got = extract_answer(s.text, mode)
                failures.append(f"solution {s.name!r}: {mode} read {got} for reference "
                                f"{answer_key(s.reference)}, so it is graded {not expected}, "
                                f"not {expected}")
    return failures


def check_references(problems: Sequence[Problem]) -> list[str]:
    """One message per reference solution that a grader does not read as its ``####`` value, and
    per reference whose answer plus one a grader accepts."""
    failures = []
    for p in problems:
        answer, off_by_one = answer_key(p.answer), f"#### {answer_key(p.answer + 1)}"
        for mode in GRADING_MODES:
            if not is_correct(p.solution, p.answer, mode):
                got = extract_answer(p.solution, mode)
                failures.append(f"{p.id}: {mode} read {got}, but #### says {answer}")
            if is_correct(off_by_one, p.answer, mode):
                failures.append(f"{p.id}: {mode} grades {off_by_one!r} correct for {answer}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Run both checks, print the failures (at most 20) and one summary line; 0 when all pass."""
    parser = argparse.ArgumentParser(prog="python -m rlreason.selfcheck", description=__doc__
                                     .split("\n")[0])
    parser.add_argument("--require-data", action="store_true",
                        help=f"fail, not skip, when {DATA_DIR_ENV} is unset")
    args = parser.parse_args(argv)

    failures = check_solutions(SOLUTIONS)
    parts = [f"{len(SOLUTIONS)} solutions x {len(GRADING_MODES)} modes"]
    if os.environ.get(DATA_DIR_ENV):
        problems = [p for split in GSM8K_SPLITS for p in load_gsm8k(split)]
        failures += check_references(problems)
        parts.append(f"{len(problems):,} GSM8K references x {len(GRADING_MODES)} modes")
    elif args.require_data:
        failures.append(f"{DATA_DIR_ENV} is unset: cannot check the GSM8K references")
    else:
        parts.append(f"GSM8K references skipped ({DATA_DIR_ENV} unset)")
    for failure in failures[:20]:
        print(failure)
    verdict = f"FAILED ({len(failures)} failures)" if failures else "ok"
    print(f"rlreason selfcheck {verdict}: {'; '.join(parts)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
