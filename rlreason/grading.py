"""Final-answer extraction and grading for GSM8K-style solutions (pure Python, no torch).

Two grading modes, as in lm-evaluation-harness's gsm8k task, and we report both:

- ``"strict"``: the number after the first ``####`` (the GSM8K reference convention).
- ``"flexible"``: the last number anywhere in the text.

The extractors never raise on text: when no number can be found they return the ``NO_ANSWER``
sentinel, which never matches any reference. Every pattern here runs in time linear in the text.

Comparison (``answers_match``, and ``answer_key`` for majority voting, which agree by construction)
is exact after normalisation: integers exactly, other values rounded to ``SIGNIFICANT_DIGITS`` (12)
significant digits, and magnitudes below ``ZERO_BELOW`` (1e-9) are zero. The rounding only absorbs
float noise (``0.1 + 0.2`` prints as ``0.30000000000000004``): ``1,000,001 != 1,000,000`` and
``10000.01 != 10000``; only non-integers equal in their first 12 significant digits merge.

Where the verdict deliberately differs from lm-evaluation-harness's gsm8k regexes (strict
``#### (\\-?[0-9\\.\\,]+)``, then an exact string match after dropping ``,``, ``$`` and a final
dot):

- ``#### $18`` is 18 here and invalid there: a currency sign is not an arithmetic mistake, and the
  reward must not punish a policy for writing the unit GSM8K questions ask about.
- ``#### 72.0`` equals the reference ``72`` here and not there: answers are numbers, compared as
  numbers, not strings.
- The unicode minus ``−3`` (U+2212) is -3 here and invalid there: models and LaTeX-ish text use
  it.
- A malformed digit group is never read as a number: ``12,3456`` is 12 and 3456 (the comma is a
  separator), where lm-eval's strict regex reads the string ``123456``.

>>> extract_strict("48/2 = 24 clips.\\n#### 72")
72.0
>>> extract_flexible("So she sold 72 clips.")
72.0
>>> extract_strict("So she sold 72 clips.")
NO_ANSWER
>>> answers_match(extract_strict("#### 1,000,001"), 1_000_000)
False
"""

from __future__ import annotations

import decimal
import enum
import math
import re
from decimal import Decimal

__all__ = [
    "GRADING_MODES",
    "NO_ANSWER",
    "SIGNIFICANT_DIGITS",
    "ZERO_BELOW",
    "answer_key",
    "answers_match",
    "extract_answer",
    "extract_flexible",
    "extract_strict",
    "is_correct",
    "parse_number",
]


class _NoAnswer(enum.Enum):
    """Type of the ``NO_ANSWER`` sentinel: one enum member, so it stays a singleton through pickling
    and copying (e.g. into multiprocessing workers) and ``x is NO_ANSWER`` keeps working."""

    NO_ANSWER = "NO_ANSWER"

    def __repr__(self) -> str:
        return "NO_ANSWER"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return False


NO_ANSWER = _NoAnswer.NO_ANSWER
"""No answer could be extracted. Compare with ``is``; it is falsy and never matches a reference."""

# One number as people and models write it: an integer part of digits, possibly in comma-joined
# groups (checked after matching, see `_tokens`); an optional fraction `3/4` (no spaces, so `48 / 2`
# stays two numbers); a leading minus only when it is not a binary minus (`3-4` is 3 and 4). The `$`
# and the unicode minus are removed or replaced before matching (see `_normalize`). Linear time: no
# part can match what the part before it matched, so the engine never backtracks far.
_NUMBER_PATTERN = (
    r"(?<![\d.])"  # do not start inside another number (`1.2.3` is 1.2, not also .3)
    r"(?P<sign>(?<![\w)])-)?"  # a sign, unless it is a binary minus after a word, digit or `)`
    r"(?:(?P<int>\d+(?:,\d+)*)(?P<dec>\.\d+)?|(?P<bare>\.\d+))"  # 1,000 | 1000 | 12.5 | .5
    r"(?P<den>/\d+(?![\d.]))?"  # optional denominator: 3/4
)
_NUMBER_RE = re.compile(_NUMBER_PATTERN)
# A well-formed thousands grouping: 1-3 digits, then groups of exactly 3 (`1,000`, `12,345,678`).
_GROUPED_RE = re.compile(r"\d{1,3}(?:,\d{3})+")

GRADING_MODES = ("strict", "flexible")


def _normalize(text: str) -> str:
    """Make currency and unicode signs irrelevant before number matching."""
    # U+2212 (minus sign) and the small/full-width hyphen-minus are what models and LaTeX-ish text
    # use for negatives; the en dash is not mapped because `3–4` is usually a range.
    return (
        text.replace("\u2212", "-").replace("\ufe63", "-").replace("\uff0d", "-").replace("$", "")
    )


def _tokens(match: re.Match) -> list[str]:
    """The number texts of one `_NUMBER_PATTERN` match, commas removed.

    A comma-joined integer part is one number when it is a well-formed grouping (`1,000,000`);
    otherwise every comma separates two numbers (`12,3456` is 12 and 3456, `1,2,3` is 1, 2 and 3),
    so a malformed group never yields a number that was not written: never 12345 nor 123456.
    """
    sign, integer = match["sign"] or "", match["int"]
    tail = (match["dec"] or "") + (match["den"] or "")
    if integer is None:
        return [sign + match["bare"] + (match["den"] or "")]
    if "," not in integer or _GROUPED_RE.fullmatch(integer):
        return [sign + integer.replace(",", "") + tail]
    chunks = integer.split(",")
    return [sign + chunks[0], *chunks[1:-1], chunks[-1] + tail]


def _to_float(token: str) -> float | None:
    """Value of one number text from `_tokens`, or None if it is not a finite number (`5/0`)."""
    numerator, _, denominator = token.partition("/")
    try:
        # float(), never int(): int() refuses strings over 4300 digits, float() gives inf instead.
        value = float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _numbers(text: str) -> list[float]:
    """All finite numbers in `text`, in order."""
    tokens = (t for m in _NUMBER_RE.finditer(_normalize(text)) for t in _tokens(m))
    values = (_to_float(t) for t in tokens)
    return [v for v in values if v is not None]


def parse_number(s: str | float) -> float | _NoAnswer:
    """The first number in `s` as a float, or ``NO_ANSWER``.

    Accepted: thousands commas (``1,000``), currency (``$5``, ``-$5``), a trailing dot (``5.``),
    decimals (``72.0``, ``.5``), negatives (``-3`` and the unicode minus ``−3``), fractions
    (``3/4``), and any surrounding text or units (``72 dollars``, ``about 72.``).

    Decisions:
    - A percent sign is ignored: ``50%`` parses as 50, because GSM8K writes the answers of
      "what percent ..." questions as ``#### 50``.
    - A number too large for a float (it would be ``inf``) and a fraction with a zero denominator
      are not numbers: they are skipped, and ``NO_ANSWER`` results if nothing else is found.
    - Scientific notation and mixed numbers are not recognised (``1e5`` reads as 1, ``1 1/2`` as 1).
    - Commas group thousands only in a well-formed grouping (``5,000,000.00``); otherwise each comma
      separates two numbers: ``12,3456`` is 12 then 3456, ``1,0000`` is 1 then 0, never 12345.
    - Leading zeros and a negative zero are plain numbers: ``007`` is 7, ``-0`` equals 0.

    >>> parse_number("$1,000.50 per week")
    1000.5
    >>> parse_number("3/4")
    0.75
    >>> parse_number("no digits here")
    NO_ANSWER
    """
    if isinstance(s, str):
        numbers = _numbers(s)
        return numbers[0] if numbers else NO_ANSWER
    if s is NO_ANSWER:
        return NO_ANSWER
    if isinstance(s, (bool, bytes)) or not hasattr(s, "__float__"):
        raise TypeError(
            f"parse_number expects a str (or a number), got {type(s).__name__}: {s!r:.80}"
        )
    value = float(s)
    return value if math.isfinite(value) else NO_ANSWER


def _check_text(text: object, function: str) -> str:
    if not isinstance(text, str):
        raise TypeError(
            f"{function} expects the completion text as a str, got {type(text).__name__}"
        )
    return text


def extract_strict(text: str) -> float | _NoAnswer:
    """GSM8K convention: the first number on the line after the first ``####``.

    The FIRST ``####`` counts, not the last: generation is stopped after the answer line anyway,
    and this makes writing several ``####`` lines (hoping one is right) useless as a reward hack.
    Nothing after ``####`` on that line, or no ``####`` at all, gives ``NO_ANSWER``.
    """
    text = _check_text(text, "extract_strict")
    _, marker, after = text.partition("####")
    if not marker:
        return NO_ANSWER
    return parse_number(after.split("\n", 1)[0])


def extract_flexible(text: str) -> float | _NoAnswer:
    """The last number anywhere in the text (lm-evaluation-harness "flexible-extract" style)."""
    numbers = _numbers(_check_text(text, "extract_flexible"))
    return numbers[-1] if numbers else NO_ANSWER


_EXTRACTORS = {"strict": extract_strict, "flexible": extract_flexible}


def extract_answer(text: str, mode: str = "strict") -> float | _NoAnswer:
    """The final answer of `text` under grading `mode` (one of ``GRADING_MODES``)."""
    if mode not in _EXTRACTORS:
        raise ValueError(f"unknown grading mode {mode!r}; expected one of {GRADING_MODES}")
    return _EXTRACTORS[mode](text)


def _as_finite(x: object) -> float | None:
    """`x` as a finite float, None for ``NO_ANSWER``/None/non-finite; TypeError for non-numbers."""
    if x is NO_ANSWER or x is None:
        return None
    # Anything with __float__ is a number here (numpy scalars included), except bools and text.
    if isinstance(x, (bool, str, bytes)) or not hasattr(x, "__float__"):
        raise TypeError(f"expected a number or NO_ANSWER, got {type(x).__name__}: {x!r:.80}")
    value = float(x)  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


SIGNIFICANT_DIGITS = 12
"""Non-integer answers are compared rounded to this many significant digits: float noise sits in
the 16th-17th digit, and no GSM8K answer has more than 9."""
ZERO_BELOW = 1e-9
"""Answers of smaller magnitude are zero (noise such as ``0.1 + 0.2 - 0.3``); GSM8K's are integers
or short decimals."""
_ROUNDING = decimal.Context(prec=SIGNIFICANT_DIGITS, rounding=decimal.ROUND_HALF_EVEN)


def answer_key(x: object) -> str | None:
    """Canonical text of an answer, None for ``NO_ANSWER``: majority voting groups by it, and two
    answers match exactly when their keys are equal.

    Integers are exact (``72.0`` -> ``"72"``, ``-0`` -> ``"0"``); other values are rounded to
    ``SIGNIFICANT_DIGITS`` significant digits (``0.1 + 0.2`` -> ``"0.3"``); magnitudes below
    ``ZERO_BELOW`` are ``"0"``.

    >>> answer_key(1_000_001.0), answer_key(0.1 + 0.2), answer_key(72.0)
    ('1000001', '0.3', '72')
    """
    value = _as_finite(x)
    if value is None:
        return None
    if abs(value) < ZERO_BELOW:
        return "0"
    if value.is_integer():
        return str(int(value))
    # Decimal(value) is the float's exact binary value, so this rounds once, not twice.
    return format(_ROUNDING.plus(Decimal(value)).normalize(_ROUNDING), "f")


def answers_match(a: object, b: object) -> bool:
    """Whether two answers are the same number (equal ``answer_key``). ``NO_ANSWER`` never matches.

    Exact after normalisation, with no tolerance beyond float noise: ``1000001`` does not match
    ``1,000,000`` and ``10000.01`` does not match ``10000``; ``0.30000000000000004`` matches
    ``0.3``.
    """
    key = answer_key(a)
    return key is not None and key == answer_key(b)


def is_correct(text: str, reference: float, mode: str = "strict") -> bool:
    """Whether the answer extracted from `text` under `mode` equals `reference`."""
    return answers_match(extract_answer(text, mode), reference)
