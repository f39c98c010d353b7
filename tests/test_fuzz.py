"""Fuzzing: graders and the calculator never raise on any text, never execute any of it, and
finish every call in bounded time.

"Never execute" is checked with a CPython audit hook: running code (eval, exec, or a code object),
importing, or starting a process raises an audit event, which the hook records while a grader runs.
``ast.parse`` raises only a "compile" event (it builds a tree), which is allowed.

"Bounded time": every call of every parser is timed (`time.perf_counter`) and must finish within
``CALL_LIMIT_S`` plus ``PER_CHAR_S`` per character of input (0.5 s, 2.5 s at 100 kB). Linear-time
parsing passes with a wide margin on a busy CI machine; the cubic claimed-value pattern fixed in
issue 15 took ~84 s on 1.6 kB. The adversarial inputs are long runs (spaces, tabs, digits, `=`,
`<<`, parentheses, digit groups) of 100 kB, named in ``ADVERSARIAL``; the last test prints the worst
time per call seen.
"""

import contextlib
import math
import os
import random
import sys
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason.grading import (
    NO_ANSWER,
    answer_key,
    answers_match,
    extract_flexible,
    extract_strict,
    parse_number,
)
from rlreason.steps import (
    MAX_ABS_VALUE,
    Calculation,
    find_calculations,
    operation_signature,
    safe_eval,
    split_steps,
    step_results,
)

# The deadline is for a whole example (about ten parser calls); `_timed` checks each call.
FUZZ = settings(max_examples=300, deadline=2000, database=None)
CALL_LIMIT_S = 0.5
PER_CHAR_S = 2e-5
SHORT = 4_000
"""Completions are shorter than this (a few hundred tokens); the report gives their worst too."""
_worst = {size: {"seconds": 0.0, "call": "none"} for size in ("any", "short")}

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
        lambda: exec("y = 1"),
        lambda: os.system("true"),
    )
    for run in runners:
        with pytest.raises(AssertionError, match="code was executed"), nothing_executed():
            run()


def _timed(function, text: str):
    """`function(text)`, failing when it takes longer than the limit for `text`'s length."""
    start = time.perf_counter()
    out = function(text)
    seconds = time.perf_counter() - start
    for size in ("any", "short") if len(text) <= SHORT else ("any",):
        if seconds > _worst[size]["seconds"]:
            _worst[size].update(seconds=seconds, call=f"{function.__name__}, {len(text):,} chars")
    limit = CALL_LIMIT_S + PER_CHAR_S * len(text)
    assert seconds < limit, (
        f"{function.__name__} took {seconds:.2f} s (limit {limit:.2f} s) on {len(text):,} chars: "
        f"{text[:60]!r}..."
    )
    return out


def check_all_graders(text: str) -> None:
    """Call every grader and calculator on `text`, checking what they return and how long."""
    with nothing_executed():
        for extract in (extract_strict, extract_flexible, parse_number):
            answer = _timed(extract, text)
            assert answer is NO_ANSWER or (isinstance(answer, float) and math.isfinite(answer))
            assert answers_match(answer, answer) is (answer is not NO_ANSWER)
            answer_key(answer)
        value = _timed(safe_eval, text)
        assert value is None or (isinstance(value, float) and abs(value) <= MAX_ABS_VALUE)
        calculations = _timed(find_calculations, text)
        assert all(
            isinstance(c, Calculation) and isinstance(c.signature, str) for c in calculations
        )
        signature = _timed(operation_signature, text)
        assert isinstance(signature, tuple) and all(isinstance(s, str) for s in signature)
        assert len(_timed(step_results, text)) == len(_timed(split_steps, text))


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


@FUZZ
@given(st.text(alphabet=MATH_ALPHABET, max_size=60))
def test_a_calculation_is_worth_what_the_calculator_says(expression):
    calculation = Calculation.from_text(expression, None)
    assert calculation.value == safe_eval(expression) or (
        calculation.value is None and safe_eval(expression) is None
    )


# ------------------------------------------------------------------------------ adversarial length

_SIZE = 100_000


def _repeat(unit: str, size: int = _SIZE) -> str:
    return (unit * (size // len(unit) + 1))[:size]


_soup = random.Random(15)
ADVERSARIAL = {
    "spaces-after-equals": "3 x 4 =" + " " * _SIZE + "x",  # the ~84 s case of issue 15, at 100 kB
    "tabs-after-equals": "3 x 4 =" + "\t" * _SIZE + "x",
    "spaced-dollars-after-equals": "3 x 4 =" + _repeat(" $ ") + "x",
    "spaces-before-equals": _repeat(" " * 198 + "+="),
    "spaces": " " * _SIZE,
    "digits": "9" * _SIZE,
    "digits-equation": "1+" + "9" * (_SIZE // 2) + "=" + "9" * (_SIZE // 2),
    "equals": "=" * _SIZE,
    "equations": _repeat("1+1="),
    "equation-lines": _repeat("1+1=2\n"),
    "equals-spaces": _repeat("= "),
    "open-annotations": "<<" * (_SIZE // 2),
    "nested-annotations": "<<" * (_SIZE // 4) + ">>" * (_SIZE // 4),
    "long-annotation": "<<" + _repeat("1+", _SIZE - 5) + "1>>",
    "nested-parentheses": "(" * (_SIZE // 2) + "1" + ")" * (_SIZE // 2),
    "parentheses-before-equals": _repeat("(" * 199 + "="),
    "parenthesis-spaces-before-equals": _repeat("(" + " " * 198 + "="),
    "operators": "1" + "+" * _SIZE + "2=3",
    "times-chain": _repeat("1 x ") + "= 2",
    "groups-with-bad-end": "1" + ",000" * (_SIZE // 4) + "0",
    "bad-groups": _repeat("12,3456,"),
    "commas": _repeat("1,"),
    "minus-signs": "-" * _SIZE + "1",
    "unicode-minus-signs": "\u2212" * _SIZE + "1",
    "dots": "." * _SIZE,
    "decimal-points": _repeat("1."),
    "fractions": _repeat("1/"),
    "long-denominator": "1/" + "2" * _SIZE + ".",
    "answer-markers": "####" * (_SIZE // 4),
    "spaces-after-marker": "#### " + " " * _SIZE + "5",
    "dollars": "$" * _SIZE + "5",
    "percents": _repeat("5%"),
    "token-soup": "".join(_soup.choice(TOKENS) for _ in range(_SIZE // 4))[:_SIZE],
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_length(text):
    check_all_graders(text)


# Runs of a few characters that make backtracking regexes blow up, in random combinations.
_RUN_UNITS = [" ", "\t", "=", "<<", ">>", "(", ")", "9", ",000", ",0000", "-", "$", ".", "x", "+",
              "3 x 4 =", "#### ", "\n", "1/"]
_runs = st.lists(st.tuples(st.sampled_from(_RUN_UNITS), st.integers(1, 3000)), max_size=5)


@settings(max_examples=60, deadline=None, database=None)
@given(_runs.map(lambda runs: "".join(unit * n for unit, n in runs)))
def test_long_runs(text):
    check_all_graders(text)


def test_worst_time_per_call(capsys):
    # Run last (file order): reports the worst call of the whole module.
    any_size, short = _worst["any"], _worst["short"]
    with capsys.disabled():
        print(f"\nfuzz: worst time per call {any_size['seconds']:.3f} s ({any_size['call']}); "
              f"on inputs up to {SHORT:,} chars {short['seconds'] * 1e3:.1f} ms ({short['call']})")
    assert any_size["seconds"] < CALL_LIMIT_S + PER_CHAR_S * 2 * _SIZE
    assert short["seconds"] < CALL_LIMIT_S
