"""Solution steps, the calculator, and canonical operation signatures (pure Python, no torch).

- ``safe_eval`` is the calculator: a restricted walk over Python's AST of an arithmetic expression.
  It only parses text into an AST and walks it (no eval, exec or code objects) and never raises;
  anything but arithmetic on numbers is None.
- ``find_calculations`` reads the calculations a solution performs, from GSM8K calculator
  annotations ``<<48/2=24>>`` or, on lines without annotations, from plain text ``48 / 2 = 24``.
- ``step_results`` gives each step's intermediate result (for the dense reward).
- ``operation_signature`` gives the sequence of operations in canonical form (for Expert Iteration
  de-duplication and for counting distinct correct solutions).

All of them read model output, so all of them run in time linear in the text (tests/test_fuzz.py
times every call on 100 kB of adversarial runs).

>>> safe_eval("48/2")
24.0
>>> operation_signature("4+3 = <<4+3=7>>7\\n2 x 7 = 14\\n#### 14")
('3+4', '2*7')
"""

from __future__ import annotations

import ast
import math
import operator
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from rlreason.grading import parse_number

__all__ = [
    "MAX_ABS_VALUE",
    "MAX_EXPONENT",
    "Calculation",
    "find_calculations",
    "operation_signature",
    "safe_eval",
    "split_steps",
    "step_results",
]

MAX_ABS_VALUE = 1e15
"""Every literal and intermediate result of the calculator must stay within this magnitude."""
MAX_EXPONENT = 10
"""``a ** b`` is refused when ``|b|`` exceeds this: word problems never need more."""
# Deep or long expressions would hit Python's recursion limit; real ones are short.
_MAX_EXPRESSION_CHARS = 500

_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_SYMBOLS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_COMMUTATIVE = (ast.Add, ast.Mult)


class _Refused(Exception):
    """The expression is not plain, bounded arithmetic."""


def _normalize_expression(expr: str) -> str:
    """Turn how people write arithmetic into Python's operators; letters stay, to be refused."""
    expr = expr.replace("\u2212", "-").replace("÷", "/").replace("×", "*").replace("$", "")
    # `x` is a times sign only between two operands (`3 x 4`, `(2+3)x4`); elsewhere it is algebra
    # (`11x+15`) and stays a name, which the calculator refuses.
    expr = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(.])", "*", expr)
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", expr)  # thousands commas: 1,000 -> 1000


def _parse(expr: str) -> ast.expr:
    """The AST of `expr` after normalization; raises for anything that is not an expression."""
    if len(expr) > _MAX_EXPRESSION_CHARS:
        raise _Refused("expression too long")
    # ast.parse only builds a tree; nothing is compiled or run.
    return ast.parse(_normalize_expression(expr).strip(), mode="eval").body


def _checked(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
        raise _Refused("value out of range")
    return value


def _evaluate(node: ast.expr) -> float:
    """Value of an arithmetic AST, raising `_Refused` for any other kind of node."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise _Refused("not a real number")
        return _checked(float(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise _Refused("exponent too large")
        result = _BINARY_OPERATORS[type(node.op)](left, right)
        if isinstance(result, complex):  # (-8) ** (1/3)
            raise _Refused("complex result")
        return _checked(float(result))
    raise _Refused(f"{type(node).__name__} is not arithmetic")


def safe_eval(expr: str) -> float | None:
    """Value of an arithmetic expression, or None. Never raises, never executes code.

    Allowed: numbers, unary ``+``/``-``, binary ``+ - * / // % **`` and parentheses; ``×`` and an
    ``x`` between two operands (``3 x 4``) mean ``*``, ``÷`` means ``/``, ``−`` means ``-``, and
    ``$`` and thousands commas are dropped. None for anything else (names such as the ``x`` of
    ``11x+15``, calls, attributes, strings, a postfix percent ``50%``, mixed numbers ``1 1/2``), for
    division by zero, for ``|exponent| > 10``, whenever a literal or intermediate result exceeds
    ``MAX_ABS_VALUE`` in magnitude, and for expressions over 500 characters.
    """
    if not isinstance(expr, str):
        return None
    try:
        return _evaluate(_parse(expr))
    except Exception:  # the calculator's contract is "None, never raise"
        # _Refused, SyntaxError, ZeroDivisionError, OverflowError, RecursionError, and ValueError
        # (integer literals over 4300 digits); the length limit keeps the work small.
        return None


def _format_number(value: float) -> str:
    """Canonical text of a number: 72.0 -> '72', 0.50 -> '0.5'."""
    value += 0.0  # -0.0 -> 0.0
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _operands(node: ast.expr, op_type: type) -> list[ast.expr]:
    """Operands of an associative chain `a op b op c` (any parenthesization) of one operator."""
    if isinstance(node, ast.BinOp) and type(node.op) is op_type:
        return _operands(node.left, op_type) + _operands(node.right, op_type)
    return [node]


def _canonical(node: ast.expr, top: bool = False) -> str:
    """Canonical text of an arithmetic AST: + and * chains flattened and their operands sorted."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise _Refused("not a real number")
        return _format_number(float(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        inner = _canonical(node.operand)
        return inner if isinstance(node.op, ast.UAdd) else f"-{inner}"
    if isinstance(node, ast.BinOp) and type(node.op) in _SYMBOLS:
        symbol = _SYMBOLS[type(node.op)]
        if isinstance(node.op, _COMMUTATIVE):
            parts = sorted(_canonical(operand) for operand in _operands(node, type(node.op)))
        else:
            parts = [_canonical(node.left), _canonical(node.right)]
        text = symbol.join(parts)
        return text if top else f"({text})"
    raise _Refused(f"{type(node).__name__} is not arithmetic")


def _value_and_signature(expr: str) -> tuple[float | None, str]:
    """``safe_eval(expr)`` and the canonical form of the operation in `expr` (its text without
    spaces when it does not parse), from one parse."""
    try:
        tree = _parse(expr)
    except Exception:  # messy model text must still get some signature
        return None, re.sub(r"\s+", "", expr)
    try:
        value = _evaluate(tree)
    except Exception:  # as in safe_eval: None, never raise
        value = None
    try:
        return value, _canonical(tree, top=True)
    except Exception:  # a name or call: compared by its text
        return value, re.sub(r"\s+", "", expr)


CALCULATION_TOLERANCE = 1e-3
"""How far a claimed result may be from its expression's value and still count as right (RFT's
bound; EI's calculator filter and the ORM's arithmetic bound both use it)."""


@dataclass(frozen=True)
class Calculation:
    """One arithmetic step of a solution, e.g. ``<<48/2=24>>`` or ``48 / 2 = 24``."""

    expression: str
    """The left-hand side as written (``48/2``)."""
    claimed: float | None
    """The value written after ``=``, None when there is none or it is not a number."""
    value: float | None
    """``safe_eval(expression)``: what the expression really equals, None if not computable."""
    signature: str
    """Canonical form of the operation: equal for ``3+4`` and ``4+3``; see operation_signature."""

    @property
    def is_right(self) -> bool:
        """The expression computes and equals the claimed value within `CALCULATION_TOLERANCE`
        (one without a claimed value, or that does not compute, is wrong)."""
        return (self.value is not None and self.claimed is not None
                and abs(self.value - self.claimed) < CALCULATION_TOLERANCE)

    @classmethod
    def from_text(cls, expression: str, claimed_text: str | None) -> Calculation:
        claimed = parse_number(claimed_text) if claimed_text is not None else None
        value, signature = _value_and_signature(expression)
        return cls(
            expression=expression,
            claimed=claimed if isinstance(claimed, float) else None,
            value=value,
            signature=signature,
        )


_ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
# Characters a plain-text left-hand side may contain; `x`/`X` for "3 x 4".
_EXPRESSION_CHARS = frozenset("0123456789.,+-*/xX×÷()$% \t\u2212")
_DIGIT_RE = re.compile(r"[0-9]")
# `a op b`: two operands around a binary operator, so "= 24" after a lone number is not a step.
_HAS_OPERATION_RE = re.compile(r"[\d)%]\s*[-+*/xX×÷\u2212]+\s*[-(.$\u2212\d]")
# The claimed value must follow `=` directly ("= $1,200." or "= -3"), not somewhere later.
# Linear time: no two adjacent parts can match the same characters (a pattern with `\s*\$?\s*`, as
# before, tries every split of a run of spaces: cubic, tens of seconds on 1,600 of them).
_CLAIMED_RE = re.compile(r"\s*(?:\$\s*)?((?:[-\u2212]\s*)?\$?[.,/]*\d[\d.,/]*)")
_MAX_LHS_CHARS = 200  # bounds the work per `=` on long messy lines
_OPENING = frozenset("(-\u2212")  # what may precede an expression's first number: `(`, a sign


def _arithmetic_suffix(text: str) -> str:
    """The longest suffix of `text` made only of arithmetic characters."""
    i = len(text)
    while i > 0 and text[i - 1] in _EXPRESSION_CHARS:
        i -= 1
    return text[i:]


def _expression_start(lhs: str) -> int | None:
    """Where the expression in `lhs` (arithmetic characters only) starts, None without a digit.

    It starts at the first digit, extended back over an optional `.`, spaces, an optional `$` and
    any run of `(` and minus signs: what a search for ``[(\\-−]*\\$?\\s*\\.?\\d`` finds, but in one
    pass (that search is quadratic on a long run of `(` or spaces without a digit).
    """
    digit = _DIGIT_RE.search(lhs)
    if digit is None:
        return None
    i = digit.start()
    if i > 0 and lhs[i - 1] == ".":
        i -= 1
    while i > 0 and lhs[i - 1] in " \t":
        i -= 1
    if i > 0 and lhs[i - 1] == "$":
        i -= 1
    while i > 0 and lhs[i - 1] in _OPENING:
        i -= 1
    return i


def _plain_text_calculations(line: str) -> list[Calculation]:
    """Calculations written as ``a op b = c`` in a line without calculator annotations."""
    found = []
    for equals in re.finditer(r"(?<![=<>!])=(?!=)", line):
        # The left-hand side is the longest run of arithmetic characters that ends at `=` ...
        lhs = _arithmetic_suffix(line[max(0, equals.start() - _MAX_LHS_CHARS) : equals.start()])
        # ... starting at its first operand (drops the `, ` or the `x` of "Max, 3+4 = 7").
        start = _expression_start(lhs)
        if start is None:
            continue
        lhs = lhs[start:].strip()
        unclosed = lhs.count("(") - lhs.count(")")
        while lhs.startswith("(") and unclosed > 0:
            lhs = lhs[1:].lstrip()  # "(so 3+4 = 7)": that `(` belongs to the sentence
            unclosed -= 1
        if not _HAS_OPERATION_RE.search(lhs):
            continue
        claimed = _CLAIMED_RE.match(line, equals.end())
        found.append(Calculation.from_text(lhs, claimed.group(1) if claimed else None))
    return found


def _line_calculations(line: str) -> list[Calculation]:
    annotations = _ANNOTATION_RE.findall(line)
    if not annotations:
        return _plain_text_calculations(line)
    # With annotations the surrounding text (`48/2 = <<48/2=24>>24`) repeats them: use them only.
    calculations = []
    for annotation in annotations:
        expression, equals, claimed = annotation.partition("=")
        calculations.append(Calculation.from_text(expression.strip(), claimed if equals else None))
    return calculations


def find_calculations(text: str) -> list[Calculation]:
    """All calculations in `text`, in order: annotations, or ``a op b = c`` where a line has none.

    Works on messy model output without raising; an expression that cannot be computed still
    appears, with ``value=None``. In plain text the left-hand side starts at its first number, so a
    leading variable is dropped (``M + 4 + 2 = 8`` reads as ``4 + 2``), as GSM8K's own annotations
    do (``S + 30 + 46 = <<+30+46=76>>``); algebra such as ``11x+15 = 301`` gets ``value=None``.
    """
    if not isinstance(text, str):
        raise TypeError(f"find_calculations expects a str, got {type(text).__name__}")
    return [calc for line in text.splitlines() for calc in _line_calculations(line)]


def split_steps(solution: str) -> list[str]:
    """The solution's steps: its non-empty lines (stripped), without the ``####`` answer line.

    The solution ends at the first ``####``, as for ``grading.extract_strict``: text after it is not
    part of the solution (generation stops there), and a step written before ``####`` on the same
    line is kept.
    """
    if not isinstance(solution, str):
        raise TypeError(f"split_steps expects a str, got {type(solution).__name__}")
    body = solution.partition("####")[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def step_results(solution: str) -> list[float | None]:
    """For each step of ``split_steps(solution)``, its intermediate result, or None.

    The result of a step is the value claimed by its last calculation (what the model wrote after
    ``=``); when that calculation has no claimed value (``<<48/2>>``) its computed value is used.
    """
    results: list[float | None] = []
    for step in split_steps(solution):
        calculations = _line_calculations(step)
        if not calculations:
            results.append(None)
            continue
        last = calculations[-1]
        results.append(last.claimed if last.claimed is not None else last.value)
    return results


def operation_signature(solution: str) -> tuple[str, ...]:
    """The canonical signatures of the solution's calculations, in order.

    Two solutions are duplicates for Expert Iteration when they apply the same sequence of
    arithmetic operations. Canonical form: numbers as ``72`` not ``72.0``; chains of the
    commutative ``+`` and ``*`` flattened and their operands sorted, so ``4+3`` equals ``3+4`` and
    ``(4+3)*2`` equals ``2*(3+4)``; but ``2*3+2*4`` stays different from ``2*(3+4)`` (no
    distributing). An expression that does not parse is compared by its text without spaces.
    """
    return tuple(
        calc.signature for step in split_steps(solution) for calc in _line_calculations(step)
    )


# ---- steps in token space ----------------------------------------------------------------------

# Per tokenizer, the text of each token id, filled lazily (a Llama-2 vocabulary has 32k entries and
# a completion uses a few dozen of them). Weak keys: a tokenizer that goes away takes its cache.
_TOKEN_TEXTS: weakref.WeakKeyDictionary[object, dict[int, str]] = weakref.WeakKeyDictionary()


def _token_text(tokenizer, token_id: int) -> str:
    try:
        cache = _TOKEN_TEXTS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    text = cache.get(token_id)
    if text is None:
        text = tokenizer.decode([token_id], skip_special_tokens=True)
        cache[token_id] = text
    return text


def step_token_ends(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """Index of the token that ends each step (line) of a completion's token ids.

    A step is one line of the completion, as rewards land on them (`rewards.Reward`): a token whose
    text holds a newline ends a step when the text since the previous step's end has anything but
    whitespace; the last token (EOS, or the last token of a truncated sample) always ends the last
    step, normally the `#### answer` line. Blank lines and trailing whitespace join the next (or
    the last) step, so there are no empty steps; whitespace-only tokens at the end, such as EOS
    after a final newline, join the step before them. Empty `token_ids` give [].

    >>> from rlreason.tokenizer import build_word_tokenizer
    >>> tok = build_word_tokenizer([])
    >>> ids = tok("1+1=2\\n\\n#### 2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    >>> step_token_ends(tok, ids), len(ids)
    ([5, 10], 11)
    """
    ends: list[int] = []
    content = False  # the current step has non-whitespace text
    for i, token_id in enumerate(token_ids):
        text = _token_text(tokenizer, int(token_id))
        if "\n" in text:
            # Text before the newline belongs to this step; text after it to the next.
            before, _, after = text.rpartition("\n")
            content = content or bool(before.strip())
            if content:
                ends.append(i)
            content = bool(after.strip())
        else:
            content = content or bool(text.strip())
    last = len(token_ids) - 1
    if last < 0:
        return []
    if content or not ends:
        if not ends or ends[-1] != last:
            ends.append(last)
    else:
        ends[-1] = last  # only whitespace after the last step: it ends at the last token
    return ends
