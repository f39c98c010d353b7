"""Answer extraction and grading on tricky completions, in both grading modes."""

import copy
import pickle

import numpy as np
import pytest

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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72", 72.0),
        ("72.0", 72.0),
        ("5.", 5.0),
        (".5", 0.5),
        ("1,000", 1000.0),
        ("1,234,567.25", 1234567.25),
        ("$5", 5.0),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("-3", -3.0),
        ("\u22123", -3.0),  # unicode minus sign
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("50%", 50.0),  # percent sign ignored: GSM8K writes "what percent" answers as #### 50
        ("72 dollars", 72.0),
        ("about 72 clips.", 72.0),
        ("US$1,200 per month", 1200.0),
        ("(-3)", -3.0),
        ("3-4", 3.0),  # binary minus: the second number is 4, not -4
        ("1.2.3", 1.2),
        ("1,2,3", 1.0),  # not a thousands group
        ("5/0 or 7", 7.0),  # a zero-denominator fraction is skipped
        ("1" * 400, NO_ANSWER),  # too large for a float
        ("9" * 5000, NO_ANSWER),  # longer than int()'s digit limit: must not raise
        ("no digits here", NO_ANSWER),
        ("", NO_ANSWER),
        ("-", NO_ANSWER),
    ],
)
def test_parse_number(text, expected):
    got = parse_number(text)
    if expected is NO_ANSWER:
        assert got is NO_ANSWER
    else:
        assert got == expected


def test_parse_number_passes_numbers_through_and_rejects_other_types():
    assert parse_number(7) == 7.0
    assert parse_number(np.int64(7)) == 7.0
    assert parse_number(NO_ANSWER) is NO_ANSWER
    assert parse_number(float("inf")) is NO_ANSWER
    with pytest.raises(TypeError, match="parse_number expects a str"):
        parse_number(None)


# (completion, strict answer, flexible answer)
COMPLETIONS = [
    ("48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72", 72.0, 72.0),
    ("So the answer is 72.\n#### 72.0", 72.0, 72.0),
    ("#### $1,000", 1000.0, 1000.0),
    ("#### 1,000,000 dollars", 1_000_000.0, 1_000_000.0),
    ("#### -3", -3.0, -3.0),
    ("#### \u22123", -3.0, -3.0),
    ("#### 3/4", 0.75, 0.75),
    ("#### 0.25", 0.25, 0.25),
    ("He earns 5 dollars.\n####5", 5.0, 5.0),
    ("#### 72\nBut wait, it is 73.", 72.0, 73.0),  # text after the answer line
    ("#### 72\n#### 73\n#### 74", 72.0, 74.0),  # several #### lines: the first counts
    ("#### The answer is 12 apples", 12.0, 12.0),
    ("The answer is 72", NO_ANSWER, 72.0),  # no #### at all
    ("48 + 24 = 72.\n####", NO_ANSWER, 72.0),  # empty answer line
    ("####\n72", NO_ANSWER, 72.0),  # strict reads the #### line only
    ("#### seventy-two", NO_ANSWER, NO_ANSWER),
    ("", NO_ANSWER, NO_ANSWER),
    ("#### " + "9" * 400, NO_ANSWER, NO_ANSWER),  # huge numbers: no answer, no crash
    ("It costs $5.50, so #### 5.5", 5.5, 5.5),
    ("the total is 12 - 5 = 7", NO_ANSWER, 7.0),
    ("the difference is 5-12 = -7", NO_ANSWER, -7.0),
]


@pytest.mark.parametrize("text, strict, flexible", COMPLETIONS)
def test_extractors_on_tricky_completions(text, strict, flexible):
    for mode, expected in (("strict", strict), ("flexible", flexible)):
        got = extract_answer(text, mode)
        if expected is NO_ANSWER:
            assert got is NO_ANSWER, (mode, got)
        else:
            assert got == pytest.approx(expected), mode


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


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (72.0, 72, True),
        (0.1 + 0.2, 0.3, True),
        (1 / 3, 0.333333, True),  # within abs_tol 1e-6
        (1 / 3, 0.33, False),
        (1e9, 1e9 + 0.5, True),  # within rel_tol 1e-6
        (1e9, 1e9 + 5000, False),
        (-3, 3, False),
        (NO_ANSWER, 72, False),
        (72, NO_ANSWER, False),
        (NO_ANSWER, NO_ANSWER, False),
        (None, 0.0, False),
        (float("nan"), float("nan"), False),
    ],
)
def test_answers_match(a, b, expected):
    assert answers_match(a, b) is expected


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
    assert answer_key(72.0) == answer_key(72) == answer_key(72.0000000001) == "72"
    assert answer_key(-0.0) == answer_key(0) == "0"
    assert answer_key(0.1 + 0.2) == answer_key(0.3) == "0.3"
    assert answer_key(0.5) == "0.5"
    assert answer_key(72) != answer_key(73)
    assert answer_key(1234567) != answer_key(1234568)
    assert answer_key(NO_ANSWER) is None
    assert answer_key(float("inf")) is None
