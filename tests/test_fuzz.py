"""Fuzzing: graders and the calculator never raise on any text, and never execute any of it.

"Never execute" is checked with a CPython audit hook: running code (eval, exec, or a code object),
importing, or starting a process raises an audit event, which the hook records while a grader runs.
``ast.parse`` raises only a "compile" event (it builds a tree), which is allowed.
"""

import contextlib
import math
import os
import sys
import threading
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason.grading import NO_ANSWER, answer_key, extract_flexible, extract_strict, parse_number
from rlreason.steps import (
    MAX_ABS_VALUE,
    Calculation,
    find_calculations,
    operation_signature,
    safe_eval,
    split_steps,
    step_results,
)

FUZZ = settings(max_examples=300, deadline=None, database=None)

_FORBIDDEN_EVENTS = (
    "exec",
    "import",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "subprocess.Popen",
    "os.startfile",
)
_watch = threading.local()


def _audit(event: str, args: tuple) -> None:
    # Recorded rather than raised: the calculator swallows exceptions, which would hide a raise.
    if getattr(_watch, "events", None) is not None and event.startswith(_FORBIDDEN_EVENTS):
        _watch.events.append(event)


sys.addaudithook(_audit)  # hooks cannot be removed; this one is inert outside `nothing_executed`


@contextlib.contextmanager
def nothing_executed():
    _watch.events = []
    try:
        yield
        assert _watch.events == [], f"code was executed: {_watch.events}"
    finally:
        _watch.events = None


def test_the_guard_catches_execution():
    # The canary: each of these really runs code, so the guard must report it.
    runners = (
        lambda: eval("1 + 1"),
        lambda: exec("y = 1"),  # noqa: S102
        lambda: os.system("true"),
    )
    for run in runners:
        with pytest.raises(AssertionError, match="code was executed"), nothing_executed():
            run()


def check_all_graders(text: str) -> None:
    """Call every grader and calculator on `text`, checking what they return."""
    with nothing_executed():
        for extract in (extract_strict, extract_flexible, parse_number):
            answer = extract(text)
            assert answer is NO_ANSWER or (isinstance(answer, float) and math.isfinite(answer))
            answer_key(answer)
        value = safe_eval(text)
        assert value is None or (isinstance(value, float) and abs(value) <= MAX_ABS_VALUE)
        calculations = find_calculations(text)
        assert all(
            isinstance(c, Calculation) and isinstance(c.signature, str) for c in calculations
        )
        signature = operation_signature(text)
        assert isinstance(signature, tuple) and all(isinstance(s, str) for s in signature)
        assert len(step_results(text)) == len(split_steps(text))


MATH_ALPHABET = "0123456789+-*/=.,()$%xX×÷\u2212 #<>\n^eEj_'a"
TOKENS = [
    "<<",
    ">>",
    "####",
    "=",
    "==",
    "**",
    "//",
    "1,000",
    "9" * 40,
    "0.5",
    ".",
    "-",
    "\u2212",
    "$",
    "%",
    "x",
    "(",
    ")",
    "\n",
    " ",
    "__import__('os').system('echo pwned')",
    "lambda: 1",
    "open('f')",
    "().__class__",
    "1e999",
    "10**10**10",
    "3/4",
    "1 1/2",
    "<<1+1=2>>",
]


@FUZZ
@given(st.text())
def test_arbitrary_text(text):
    check_all_graders(text)


@FUZZ
@given(st.text(alphabet=MATH_ALPHABET, max_size=200))
def test_math_alphabet_text(text):
    check_all_graders(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_math_token_soup(text):
    check_all_graders(text)


# Small arithmetic trees, rendered as text, with their exact value computed without the calculator.
_leaves = st.integers(0, 99).map(lambda v: (str(v), Fraction(v)))


def _combine(children):
    ops = st.sampled_from(["+", "-", "*", "/"])
    return st.tuples(ops, children, children).map(
        lambda t: (f"({t[1][0]}{t[0]}{t[2][0]})", _apply(*t))
    )


def _apply(op, left, right):
    a, b = left[1], right[1]
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b


_expressions = st.recursive(_leaves, _combine, max_leaves=8)


@FUZZ
@given(_expressions)
def test_safe_eval_agrees_with_exact_arithmetic(expression):
    text, exact = expression
    got = safe_eval(text)
    if exact is None or abs(exact) > MAX_ABS_VALUE:
        assert got is None
    else:
        assert got == pytest.approx(float(exact), rel=1e-9, abs=1e-9)


@FUZZ
@given(_expressions, _expressions, st.sampled_from(["+", "*"]))
def test_signature_ignores_the_order_of_commutative_operands(left, right, op):
    a = operation_signature(f"<<{left[0]}{op}{right[0]}=1>>")
    b = operation_signature(f"<<{right[0]}{op}{left[0]}=1>>")
    assert a == b
