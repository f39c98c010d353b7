"""Answer extraction and grading on tricky completions, in both grading modes."""

import copy
import doctest
import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlreason.grading
from rlreason.grading import (
    GRADING_MODES,
    NO_ANSWER,
    answer_key,
    answers_match,
    extract_answer,
    extract_flexible,
    extract_strict,
    is_correct,
    parse_number,
)


def test_no_answer_is_a_falsy_singleton_that_survives_copies():
    assert repr(NO_ANSWER) == "NO_ANSWER"
    assert not NO_ANSWER
    assert str(NO_ANSWER) == "NO_ANSWER"
    assert pickle.loads(pickle.dumps(NO_ANSWER)) is NO_ANSWER
    assert copy.deepcopy(NO_ANSWER) is NO_ANSWER


# (name, text, the first number): how numbers are read, everywhere (both modes, the calculator's
# claimed values, majority voting).
PARSES = [
    ("integer", "72", 72.0),
    ("decimal-zero", "72.0", 72.0),
    ("trailing-dot", "5.", 5.0),
    ("leading-dot", ".5", 0.5),
    ("leading-zeros", "007", 7.0),
    ("negative-zero", "-0", 0.0),
    ("thousands", "1,000", 1000.0),
    ("thousands-decimal", "1,234,567.25", 1234567.25),
    ("millions-cents", "5,000,000.00", 5_000_000.0),
    ("dollar", "$5", 5.0),
    ("minus-dollar", "-$5", -5.0),
    ("dollar-minus", "$-5", -5.0),
    ("minus", "-3", -3.0),
    ("unicode-minus", "\u22123", -3.0),
    ("fraction", "3/4", 0.75),
    ("negative-fraction", "-3/4", -0.75),
    ("percent", "50%", 50.0),  # GSM8K writes "what percent" answers as #### 50
    ("unit-after", "72 dollars", 72.0),
    ("sentence", "about 72 clips.", 72.0),
    ("currency-word", "US$1,200 per month", 1200.0),
    ("parenthesised", "(-3)", -3.0),
    ("binary-minus", "3-4", 3.0),  # the second number is 4, not -4
    ("two-dots", "1.2.3", 1.2),
    ("not-a-grouping", "1,2,3", 1.0),
    ("group-of-four", "12,3456", 12.0),  # not 12345 (a cut group) nor 123456
    ("zero-group-of-four", "1,0000", 1.0),  # not 1000
    ("short-last-group", "1,234,56", 1.0),  # not 1234
    ("long-first-group", "1234,567", 1234.0),  # not 1234567
    ("zero-denominator", "5/0 or 7", 7.0),  # skipped
    ("too-large", "1" * 400, NO_ANSWER),  # inf is not a number
    ("over-int-digit-limit", "9" * 5000, NO_ANSWER),  # int() would raise
    ("no-digits", "no digits here", NO_ANSWER),
    ("empty", "", NO_ANSWER),
    ("lone-minus", "-", NO_ANSWER),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in PARSES], ids=[c[0] for c in PARSES])
def test_parse_number(text, expected):
    got = parse_number(text)
    if expected is NO_ANSWER:
        assert got is NO_ANSWER
    else:
        assert got == expected


# (name, text, all numbers in order): a malformed digit group never yields a number not written.
NUMBER_LISTS = [
    ("group-of-four", "12,3456", [12, 3456]),
    ("zero-group-of-four", "1,0000", [1, 0]),
    ("short-last-group", "1,234,56", [1, 234, 56]),
    ("malformed-then-wellformed", "12,3456,789,000", [12, 3456, 789, 0]),
    ("sign-on-first-chunk", "-12,3456.5", [-12, 3456.5]),
    ("comma-space-list", "1,000, 2,000 and 3", [1000, 2000, 3]),
    ("wellformed", "12,345,678.9", [12345678.9]),
]


@pytest.mark.parametrize("text, numbers", [c[1:] for c in NUMBER_LISTS],
                         ids=[c[0] for c in NUMBER_LISTS])
def test_digit_groups_are_whole_or_separators(text, numbers):
    assert rlreason.grading._numbers(text) == numbers
    assert extract_flexible(text) == numbers[-1]


def test_parse_number_passes_numbers_through_and_rejects_other_types():
    assert parse_number(7) == 7.0
    assert parse_number(np.int64(7)) == 7.0
    assert parse_number(NO_ANSWER) is NO_ANSWER
    assert parse_number(float("inf")) is NO_ANSWER
    with pytest.raises(TypeError, match="parse_number expects a str"):
        parse_number(None)


# (name, completion, strict answer, flexible answer)
COMPLETIONS = [
    ("annotated", "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72", 72.0, 72.0),
    ("decimal-zero", "So the answer is 72.\n#### 72.0", 72.0, 72.0),
    ("dollar-thousands", "#### $1,000", 1000.0, 1000.0),
    ("dollar", "#### $18", 18.0, 18.0),
    ("dollar-minus", "#### $-5", -5.0, -5.0),
    ("million-unit", "#### 1,000,000 dollars", 1_000_000.0, 1_000_000.0),
    ("millions-cents", "#### 5,000,000.00", 5_000_000.0, 5_000_000.0),
    ("minus", "#### -3", -3.0, -3.0),
    ("unicode-minus", "#### \u22123", -3.0, -3.0),
    ("negative-zero", "#### -0", 0.0, 0.0),
    ("leading-zeros", "#### 007", 7.0, 7.0),
    ("leading-dot", "#### .5", 0.5, 0.5),
    ("fraction", "#### 3/4", 0.75, 0.75),
    ("short-decimal", "#### 0.25", 0.25, 0.25),
    ("no-space", "He earns 5 dollars.\n####5", 5.0, 5.0),
    ("text-after-answer", "#### 72\nBut wait, it is 73.", 72.0, 73.0),
    ("text-after-on-line", "#### 72 clips, not 73", 72.0, 73.0),
    ("several-answer-lines", "#### 72\n#### 73\n#### 74", 72.0, 74.0),  # the first counts
    ("words-before-number", "#### The answer is 12 apples", 12.0, 12.0),
    ("no-marker", "The answer is 72", NO_ANSWER, 72.0),
    ("empty-answer-line", "48 + 24 = 72.\n####", NO_ANSWER, 72.0),
    ("answer-on-next-line", "####\n72", NO_ANSWER, 72.0),  # strict reads the #### line only
    ("number-in-words", "#### seventy-two", NO_ANSWER, NO_ANSWER),
    ("empty", "", NO_ANSWER, NO_ANSWER),
    ("huge-number", "#### " + "9" * 400, NO_ANSWER, NO_ANSWER),  # no answer, no crash
    ("marker-mid-line", "It costs $5.50, so #### 5.5", 5.5, 5.5),
    ("equation-no-marker", "the total is 12 - 5 = 7", NO_ANSWER, 7.0),
    ("negative-result", "the difference is 5-12 = -7", NO_ANSWER, -7.0),
    ("group-of-four", "#### 12,3456", 12.0, 3456.0),
    ("zero-group-of-four", "#### 1,0000", 1.0, 0.0),
]


@pytest.mark.parametrize("text, strict, flexible", [c[1:] for c in COMPLETIONS],
                         ids=[c[0] for c in COMPLETIONS])
def test_extractors_on_tricky_completions(text, strict, flexible):
    for mode, expected in (("strict", strict), ("flexible", flexible)):
        got = extract_answer(text, mode)
        if expected is NO_ANSWER:
            assert got is NO_ANSWER, (mode, got)
        else:
            assert got == expected, mode


# (name, completion, reference, correct under strict grading): the wrong verdicts of issue 15
# (tolerance, digit groups) and their neighbours.
VERDICTS = [
    ("million-plus-one", "#### 1000001", 1_000_000, False),
    ("gsm8k-1450000-plus-one", "#### 1,450,001", 1_450_000, False),
    ("gsm8k-1450000", "#### 1,450,000", 1_450_000, True),
    ("hundredth-on-10000", "#### 10000.01", 10_000, False),
    ("group-of-four-not-cut", "#### 12,3456", 12_345, False),
    ("group-of-four-not-joined", "#### 12,3456", 123_456, False),
    ("zero-group-of-four", "#### 1,0000", 1_000, False),
    ("millions-cents", "#### 5,000,000.00", 5_000_000, True),
    ("negative-zero", "#### -0", 0, True),
    ("leading-zeros", "#### 007", 7, True),
    ("leading-dot", "#### .5", 0.5, True),
    ("unicode-minus", "#### \u22125", -5, True),
    ("dollar-minus", "#### $-5", -5, True),
    ("dollar", "#### $18", 18, True),
    ("decimal-zero", "#### 72.0", 72, True),
    ("first-of-several", "#### 7\n#### 8", 8, False),
    ("text-after", "#### 8\nso maybe 9", 8, True),
]


@pytest.mark.parametrize("text, reference, correct", [v[1:] for v in VERDICTS],
                         ids=[v[0] for v in VERDICTS])
def test_verdicts(text, reference, correct):
    assert is_correct(text, reference) is correct


def _lm_eval_strict(text: str, reference: str) -> bool:
    """lm-evaluation-harness's gsm8k strict-match: a regex, then exact match of the strings after
    dropping `,`, `$`, everything up to `#### ` and a final dot."""
    found = re.findall(r"#### (\-?[0-9\.\,]+)", text)
    prediction = found[0] if found else "[invalid]"
    for pattern in (",", "\\$", "(?s).*#### ", "\\.$"):
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


# (name, completion, reference as GSM8K writes it, rlreason's verdict, lm-eval's verdict): the
# deliberate differences stated in grading's docstring, and cases where both agree.
LM_EVAL = [
    ("plain", "#### 18", "18", True, True),
    ("thousands", "#### 1,000", "1000", True, True),
    ("trailing-dot", "#### 5.", "5", True, True),
    ("million-plus-one", "#### 1000001", "1000000", False, False),
    ("dollar", "#### $18", "18", True, False),
    ("decimal-zero", "#### 72.0", "72", True, False),
    ("unicode-minus", "#### \u22125", "-5", True, False),
    ("group-of-four", "#### 12,3456", "123456", False, True),
]


@pytest.mark.parametrize("text, reference, ours, lm_eval", [c[1:] for c in LM_EVAL],
                         ids=[c[0] for c in LM_EVAL])
def test_differences_from_lm_eval_are_the_documented_ones(text, reference, ours, lm_eval):
    assert is_correct(text, parse_number(reference)) is ours
    assert _lm_eval_strict(text, reference) is lm_eval


def test_docstring_examples():
    assert doctest.testmod(rlreason.grading).failed == 0


def test_extract_answer_dispatches_to_the_named_extractor():
    text = "#### 1\nlater 2"
    assert extract_answer(text, "strict") == extract_strict(text) == 1.0
    assert extract_answer(text, "flexible") == extract_flexible(text) == 2.0
    assert GRADING_MODES == ("strict", "flexible")


def test_unknown_mode_error_names_it_and_the_valid_modes():
    with pytest.raises(ValueError, match=r"'lenient'.*strict.*flexible"):
        extract_answer("#### 1", "lenient")


def test_extractors_reject_non_text_clearly():
    with pytest.raises(TypeError, match="extract_strict expects the completion text as a str"):
        extract_strict(None)
    with pytest.raises(TypeError, match="extract_flexible"):
        extract_flexible(b"#### 1")


# (name, a, b, match): exact after normalisation; only float noise is absorbed.
MATCHES = [
    ("int-float", 72.0, 72, True),
    ("float-noise", 0.1 + 0.2, 0.3, True),
    ("float-noise-near-integer", 0.1 * 30, 3, True),
    ("float-noise-below-integer", 2.9999999999999996, 3, True),
    ("printed-noise", parse_number("0.30000000000000004"), 0.3, True),
    ("noise-around-zero", 0.1 + 0.2 - 0.3, 0, True),
    ("negative-zero", -0.0, 0, True),
    ("one-third-vs-rounded", 1 / 3, 0.333333, False),
    ("one-third-vs-two-decimals", 1 / 3, 0.33, False),
    ("million-plus-one", 1_000_001, 1_000_000, False),
    ("gsm8k-1450000-plus-one", parse_number("1450001"), parse_number("1,450,000"), False),
    ("hundredth-on-10000", 10000.01, 10000, False),
    ("billion-plus-half", 1e9, 1e9 + 0.5, False),
    ("billion-plus-5000", 1e9, 1e9 + 5000, False),
    ("large-integers-exact", 2.0**52, 2.0**52 + 1, False),
    ("short-decimal", 0.25, 0.250, True),
    ("sign", -3, 3, False),
    ("no-answer-left", NO_ANSWER, 72, False),
    ("no-answer-right", 72, NO_ANSWER, False),
    ("no-answer-both", NO_ANSWER, NO_ANSWER, False),
    ("none", None, 0.0, False),
    ("nan", float("nan"), float("nan"), False),
    ("inf", float("inf"), float("inf"), False),
    ("numpy", np.float32(0.5), 0.5, True),
]


@pytest.mark.parametrize("a, b, expected", [m[1:] for m in MATCHES], ids=[m[0] for m in MATCHES])
def test_answers_match(a, b, expected):
    assert answers_match(a, b) is expected
    assert answers_match(b, a) is expected


@settings(max_examples=300, deadline=None, database=None)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**12), 10**12),
       st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**12), 10**12))
def test_answers_match_is_equality_of_answer_keys(a, b):
    # One normalisation for grading and for majority voting: they can never disagree.
    key_a, key_b = answer_key(a), answer_key(b)
    assert answers_match(a, b) is (key_a is not None and key_a == key_b)
    assert answers_match(a, a) is (key_a is not None)


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(-(10**15), 10**15), st.integers(-(10**15), 10**15))
def test_integers_match_exactly(a, b):
    assert answers_match(float(a), float(b)) is (a == b)
    assert answers_match(parse_number(f"{a:,}"), float(a))  # as written with thousands commas


_decimals = st.decimals(min_value=-10**7, max_value=10**7, places=4, allow_nan=False)


@settings(max_examples=300, deadline=None, database=None)
@given(_decimals, _decimals)
def test_short_decimals_match_exactly(a, b):
    # Up to 11 significant digits, as people write answers: distinct values never merge.
    assert answers_match(float(a), float(b)) is (a == b)
    assert answers_match(parse_number(str(a)), float(a))


def test_answers_match_rejects_strings():
    with pytest.raises(TypeError, match="expected a number or NO_ANSWER"):
        answers_match("72", 72)


def test_is_correct_in_both_modes():
    text = "So 72 clips in total.\n#### 72.0"
    assert is_correct(text, 72)
    assert is_correct(text, 72, mode="flexible")
    assert not is_correct(text, 73)
    assert not is_correct("72 clips", 72)  # strict needs ####
    assert is_correct("72 clips", 72, mode="flexible")
    assert not is_correct("no answer", 0.0, mode="flexible")


def test_answer_key_canonicalizes_equal_answers():
    assert answer_key(72.0) == answer_key(72) == answer_key(72.00000000000001) == "72"
    assert answer_key(72.0000000001) == "72.0000000001"  # 12 significant digits: not noise
    assert answer_key(1_000_001) == "1000001" != answer_key(1_000_000)
    assert answer_key(1e13 + 0.5) == answer_key(1e13)  # the stated limit: 12 significant digits
    assert answer_key(1e-10) == answer_key(0) == "0"
    assert answer_key(-0.0) == answer_key(0) == "0"
    assert answer_key(0.1 + 0.2) == answer_key(0.3) == "0.3"
    assert answer_key(0.5) == "0.5"
    assert answer_key(72) != answer_key(73)
    assert answer_key(1234567) != answer_key(1234568)
    assert answer_key(NO_ANSWER) is None
    assert answer_key(float("inf")) is None
