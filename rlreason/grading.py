"""Final-answer extraction and grading for GSM8K-style solutions (pure Python, no torch).

Two grading modes, as in lm-evaluation-harness's gsm8k task, and we report both:

- ``"strict"``: the number after the first ``####`` (the GSM8K reference convention).
- ``"flexible"``: the last number anywhere in the text.

The extractors never raise on text: when no number can be found they return the ``NO_ANSWER``
sentinel, which never matches any reference.

>>> extract_strict("48/2 = 24 clips.\\n#### 72")
72.0
>>> extract_flexible("So she sold 72 clips.")
72.0
>>> extract_strict("So she sold 72 clips.")
NO_ANSWER
"""

from __future__ import annotations

import enum
import math
import re

__all__ = [
    "GRADING_MODES",
    "NO_ANSWER",
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

# One number as people and models write it. Thousands commas only in groups of three (`1,000`,
# not `1,2`); an optional fraction `3/4` (no spaces, so `48 / 2` stays two numbers); a leading minus
# only when it is not a binary minus (`3-4` is 3 and 4). The `$` and the unicode minus are removed
# or replaced before matching (see `_normalize`).
_NUMBER_PATTERN = (
    r"(?<![\d.])"  # do not start inside another number (`1.2.3` is 1.2, not also .3)
    r"(?:(?<![\w)])-)?"  # a sign, unless it is a binary minus after a word, digit or `)`
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"  # 1,000 | 1000 | 12.5 | .5
    r"(?:/\d+(?![\d.]))?"  # optional denominator: 3/4
)
_NUMBER_RE = re.compile(_NUMBER_PATTERN)

GRADING_MODES = ("strict", "flexible")


def _normalize(text: str) -> str:
    """Make currency and unicode signs irrelevant before number matching."""
    # U+2212 (minus sign) and the small/full-width hyphen-minus are what models and LaTeX-ish text
    # use for negatives; the en dash is not mapped because `3–4` is usually a range.
    return (
        text.replace("\u2212", "-").replace("\ufe63", "-").replace("\uff0d", "-").replace("$", "")
    )


def _to_float(token: str) -> float | None:
    """Value of one `_NUMBER_PATTERN` match, or None if it is not a finite number (`5/0`)."""
    numerator, _, denominator = token.replace(",", "").partition("/")
    try:
        # float(), never int(): int() refuses strings over 4300 digits, float() gives inf instead.
        value = float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _numbers(text: str) -> list[float]:
    """All finite numbers in `text`, in order."""
    values = (_to_float(m.group()) for m in _NUMBER_RE.finditer(_normalize(text)))
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


def answers_match(a: object, b: object, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """Whether two answers are the same number within tolerance. ``NO_ANSWER`` never matches."""
    x, y = _as_finite(a), _as_finite(b)
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)


def is_correct(text: str, reference: float, mode: str = "strict") -> bool:
    """Whether the answer extracted from `text` under `mode` equals `reference`."""
    return answers_match(extract_answer(text, mode), reference)


# Rounding to 6 decimals merges float noise (0.1 + 0.2) the way answers_match's tolerance does.
_KEY_DECIMALS = 6


def answer_key(x: object) -> str | None:
    """Canonical hashable key of an answer for majority voting, None for ``NO_ANSWER``.

    ``72``, ``72.0`` and ``72.0000001`` share the key ``"72"``; ``0.5`` has the key ``"0.5"``.
    """
    value = _as_finite(x)
    if value is None:
        return None
    value = round(value, _KEY_DECIMALS) + 0.0  # `+ 0.0` turns -0.0 into 0.0
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
