"""The calculator, step splitting, calculation finding and canonical operation signatures."""

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlreason.steps as steps
from rlreason.grading import parse_number
from rlreason.steps import (
    Calculation,
    find_calculations,
    operation_signature,
    safe_eval,
    split_steps,
    step_results,
)

NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("48/2", 24.0),
        ("48+24", 72.0),
        ("+30+46+38+11+18", 143.0),  # GSM8K writes some annotations with a leading +
        ("100-50-30-15", 5.0),
        ("-3 + 5", 2.0),
        ("\u22123 + 5", 2.0),  # unicode minus
        ("2*(3+4)", 14.0),
        ("18*.5", 9.0),
        ("7//2", 3.0),
        ("7 % 3", 1.0),
        ("2**10", 1024.0),
        ("4**0.5", 2.0),
        ("3 x 4", 12.0),
        ("3X4", 12.0),
        ("(2+3)x4", 20.0),
        ("3 × 4", 12.0),
        ("8 ÷ 2", 4.0),
        ("1,000*2", 2000.0),
        ("$12 + $3", 15.0),
        (" 1 + 1 ", 2.0),
        ("1e3", 1000.0),
        ("10**10 * 10**5", 1e15),  # at the result bound, still allowed
    ],
)
def test_safe_eval_computes_arithmetic(expr, expected):
    assert safe_eval(expr) == pytest.approx(expected)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('x')",
        "(lambda: 1)()",
        "a+1",
        "11x+15",  # algebra, not a times sign
        "abs(-3)",
        "(1).real",
        "'ab'",
        "'a' * 3",
        "[1, 2]",
        "1, 2",
        "True + 1",
        "1j",
        "1 if 1 else 2",
        "2 ^ 3",
        "1 < 2",
        "2**10**10",  # exponent bound
        "9**99999",
        "10**11",
        "5/0",
        "5//0",
        "5%0",
        "0**-1",
        "(-8)**(1/3)",  # complex result
        "1e999",
        "10**10 * 10**10",  # result bound (each power alone is allowed)
        "99999999 * 99999999",
        "1" * 20,  # literal bound
        "9" * 5000,  # over int()'s digit limit
        "(" * 300 + "1" + ")" * 300,  # too deep
        "1+" * 1000 + "1",  # too long
        "50%",
        "1 1/2",
        "",
        "x = 1",
        "import os",
    ],
)
def test_safe_eval_refuses_everything_else_with_none(expr):
    assert safe_eval(expr) is None


def test_safe_eval_never_raises_on_non_text():
    assert safe_eval(None) is None
    assert safe_eval(12) is None


def test_split_steps_drops_blank_lines_and_the_answer_line():
    assert split_steps(NATALIA) == [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
    ]
    assert split_steps("  a \n\n b\n#### 3\nafter the answer") == ["a", "b"]
    assert split_steps("so 2+2 = 4 #### 4") == ["so 2+2 = 4"]
    assert split_steps("") == []


def test_annotations_are_read_and_the_surrounding_text_is_not_repeated():
    calcs = find_calculations(NATALIA)
    assert calcs == [
        Calculation(expression="48/2", claimed=24.0, value=24.0, signature="48/2"),
        Calculation(expression="48+24", claimed=72.0, value=72.0, signature="24+48"),
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        calcs[0].claimed = 1.0


def test_annotation_with_a_wrong_claim_keeps_both_values():
    (calc,) = find_calculations("<<192*100=1920>>")
    assert (calc.claimed, calc.value) == (1920.0, 19200.0)


def test_annotation_without_equals_and_with_fraction_claim():
    assert find_calculations("<<48/2>>")[0].claimed is None
    assert find_calculations("<<3/4=3/4>>")[0].claimed == 0.75  # GSM8K test #319 writes this


@pytest.mark.parametrize(
    "line, expression, claimed",
    [
        ("48 / 2 = 24", "48 / 2", 24.0),
        ("3 x 4 = 12", "3 x 4", 12.0),
        ("5+6+7=18", "5+6+7", 18.0),
        ("She sold 48/2 = 24 clips.", "48/2", 24.0),
        ("He has $1,200 + $300 = $1,500.", "$1,200 + $300", 1500.0),
        ("Max, 3+4 = 7", "3+4", 7.0),
        ("(so 3+4 = 7)", "3+4", 7.0),
        ("10 - 3 = \u22127", "10 - 3", -7.0),
        ("8 ÷ 2 = 4", "8 ÷ 2", 4.0),
        ("2+2 = four", "2+2", None),
    ],
)
def test_plain_text_equations(line, expression, claimed):
    (calc,) = find_calculations(line)
    assert (calc.expression, calc.claimed) == (expression, claimed)


def test_plain_text_chains_and_non_equations():
    chain = find_calculations("2 x 3 = 6 x 2 = 12")
    assert [(c.expression, c.claimed) for c in chain] == [("2 x 3", 6.0), ("6 x 2", 12.0)]
    assert find_calculations("x = 5") == []
    assert find_calculations("so 24 = 24") == []  # no operation
    assert find_calculations("a == 3+4 and 2 <= 1+1") == []
    assert find_calculations("3 boxes x 4 = 12") == []
    assert find_calculations("no math at all") == []
    (algebra,) = find_calculations("11x+15=301")
    assert (algebra.value, algebra.claimed) == (None, 301.0)


def test_messy_output_does_not_raise():
    messy = "<<<<>>>> <<=>> <<1+>> = = 3+ = 4 $$ −− ×÷ <<2**99999=1>> " + "9" * 5000 + "+1=2"
    calcs = find_calculations(messy)
    assert all(isinstance(c, Calculation) for c in calcs)
    assert any(c.expression == "2**99999" and c.value is None for c in calcs)


def test_step_results():
    assert step_results(NATALIA) == [24.0, 72.0]
    solution = "First 3 + 4 = 7 apples.\nThen we think.\nLast <<2*3=6>> and <<6*2=12>>\n#### 12"
    assert step_results(solution) == [7.0, None, 12.0]
    assert step_results("<<48/2>>\n#### 24") == [24.0]  # no claim: the computed value


@pytest.mark.parametrize(
    "a, b",
    [
        ("4+3", "3+4"),
        ("2*(3+4)", "(4+3)*2"),
        ("1+2+3", "3+(2+1)"),
        ("2*3*4", "4*(3*2)"),
        ("72.0/2", "72/2"),
        ("0.50*4", ".5 x 4"),
        ("1,000 + 5", "5+1000"),
    ],
)
def test_signatures_that_match(a, b):
    assert operation_signature(f"<<{a}=1>>") == operation_signature(f"<<{b}=1>>")


@pytest.mark.parametrize(
    "a, b",
    [
        ("2*3+2*4", "2*(3+4)"),  # no distributing
        ("4-3", "3-4"),  # - and / are not commutative
        ("8/2", "2/8"),
        ("(1+2)*3", "1+2*3"),
        ("2+3", "2*3"),
        ("5-3+6", "5+6-3"),
        ("2+3", "2+4"),
    ],
)
def test_signatures_that_differ(a, b):
    assert operation_signature(f"<<{a}=1>>") != operation_signature(f"<<{b}=1>>")


def test_operation_signature_is_the_sequence_of_steps():
    first = "Sold 48/2 = <<48/2=24>>24.\nTotal 24 + 48 = 72.\n#### 72"
    rephrased = "In May: 48 / 2 = 24 clips\nSo 48+24 = <<48+24=72>>72 in all\n#### 72"
    assert operation_signature(first) == operation_signature(rephrased) == ("48/2", "24+48")
    assert operation_signature(NATALIA) != operation_signature("48+24 = 72\n48/2 = 24\n#### 72")
    assert operation_signature("#### 72") == ()
    assert operation_signature("48/2=24\n#### 72\n1+1=2") == ("48/2",)  # the solution ends at ####


# The patterns before issue 15: same verdicts, but quadratic or cubic on long runs of spaces.
_OLD_START_RE = re.compile(r"[(\-\u2212]*\$?\s*\.?\d")
_OLD_CLAIMED_RE = re.compile(r"\s*\$?\s*([-\u2212]?\s*\$?[\d.,/]*\d[\d.,/]*)")
_SHORT = settings(max_examples=500, deadline=None, database=None)


@_SHORT
@given(st.text(alphabet=sorted(steps._EXPRESSION_CHARS), max_size=30))
def test_expression_start_is_where_the_old_search_started(lhs):
    old = _OLD_START_RE.search(lhs)
    assert steps._expression_start(lhs) == (old.start() if old else None)


@_SHORT
@given(st.text(alphabet=" \t$-\u2212.,/0123456789xa", max_size=25))
def test_claimed_value_is_what_the_old_pattern_read(text):
    old, new = _OLD_CLAIMED_RE.match(text), steps._CLAIMED_RE.match(text)
    assert (old is None) == (new is None)
    if old is not None:
        assert parse_number(old.group(1)) == parse_number(new.group(1))


@pytest.mark.parametrize(
    "line, claimed",
    [
        ("3 x 4 =" + " " * 1600 + "x", None),  # took ~84 s before issue 15
        ("3 x 4 =" + " " * 1600 + "12", 12.0),
        ("3 x 4 = $ -12", -12.0),
        ("3 x 4 = 12,3456", 12.0),  # a malformed group is not read as 12345
    ],
    ids=["spaces-then-word", "spaces-then-number", "dollar-minus", "malformed-group"],
)
def test_claimed_values_after_long_or_odd_text(line, claimed):
    (calc,) = find_calculations(line)
    assert (calc.expression, calc.claimed) == ("3 x 4", claimed)
