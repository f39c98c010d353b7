"""Metric names of the study in one place: the results table's columns, the per-question arrays of
an evaluation, and their display labels (pure Python).

A metric column is `<kind>_<mode>`: `kind` is maj1 (greedy), majK (majority vote of the K samples),
rerankK (the ORM's top-scored sample), passK (any of the K samples) or pass1 (the share of correct
samples); `mode` is a grading mode, strict or flexible.

>>> metric(MAJK, "flexible")
'majK_flexible'
>>> label(PASSK_STRICT, k=32)
'pass@32'
"""
from __future__ import annotations

from .grading import GRADING_MODES

MODES = GRADING_MODES
"""Grading modes: strict (`#### n`) and flexible (the last number)."""
STRICT, FLEXIBLE = "strict", "flexible"

MAJ1, MAJK, RERANKK, PASSK, PASS1 = "maj1", "majK", "rerankK", "passK", "pass1"
KINDS = (MAJ1, MAJK, RERANKK, PASSK)
"""The kinds every evaluation reports (rerankK only with a scorer)."""


def metric(kind: str, mode: str = STRICT) -> str:
    """The column of a metric kind under a grading mode: `metric("maj1")` is `maj1_strict`."""
    if mode not in MODES:
        raise ValueError(f"grading mode must be one of {MODES}, got {mode!r}")
    return f"{kind}_{mode}"


def lo(name: str) -> str:
    """The column of the lower end of a metric's 95% CI (`maj1_strict_lo`)."""
    return f"{name}_lo"


def hi(name: str) -> str:
    """The column of the upper end of a metric's 95% CI."""
    return f"{name}_hi"


MAJ1_STRICT, MAJ1_FLEXIBLE = metric(MAJ1), metric(MAJ1, FLEXIBLE)
MAJK_STRICT, MAJK_FLEXIBLE = metric(MAJK), metric(MAJK, FLEXIBLE)
RERANKK_STRICT, RERANKK_FLEXIBLE = metric(RERANKK), metric(RERANKK, FLEXIBLE)
PASSK_STRICT, PASSK_FLEXIBLE = metric(PASSK), metric(PASSK, FLEXIBLE)
PASS1_STRICT = metric(PASS1)

N_CORRECT = "n_correct"
"""Per question: correct samples among the K (`n_correct_strict`)."""
CORRECT = "correct"
"""Per question: the correctness of each of the K samples (`correct_strict`, a list)."""
DISTINCT_CORRECT = "distinct_correct"
"""Distinct operation signatures among a question's correct samples (the paper's diversity); in
the results table, their mean over solved questions."""
FRAC_MULTI_CORRECT = "frac_multi_correct"
"""Share of solved questions with two or more distinct correct signatures."""
DISTINCT_PER_SOLVED = "distinct_per_solved"
MEAN_LEN, N_QUESTIONS, PASS_CURVE, K = "mean_len", "n_questions", "pass_curve", "k"

SUMMARY = (MAJ1_STRICT, MAJK_STRICT, RERANKK_STRICT, PASSK_STRICT)
"""The four strict metrics the figures show side by side."""
PAIRED = (MAJ1_STRICT, MAJK_STRICT, PASSK_STRICT, MAJ1_FLEXIBLE, PASSK_FLEXIBLE)
"""The metrics of a gain table (a model minus its starting model)."""


def n_correct(mode: str = STRICT) -> str:
    return f"{N_CORRECT}_{mode}"


def correct(mode: str = STRICT) -> str:
    return f"{CORRECT}_{mode}"


def pass_at(k: int, mode: str = STRICT) -> str:
    """The column of the unbiased pass@k at a fixed k (`pass4_strict`)."""
    return f"pass{k}_{mode}"


_LABELS = {MAJ1: "maj@1", MAJK: "maj@{k}", RERANKK: "rerank@{k}", PASSK: "pass@{k}",
           PASS1: "pass@1"}


def label(name: str, k: int | str = "K", orm: bool = True) -> str:
    """A metric's display label: `maj1_strict` -> `maj@1`, `passK_strict` -> `pass@32` (k=32);
    the flexible mode is named, rerank says `(ORM)` unless `orm=False`; other names pass through."""
    kind, _, mode = name.rpartition("_")
    if kind not in _LABELS or mode not in MODES:
        return {FRAC_MULTI_CORRECT: "solved with 2+ distinct correct",
                DISTINCT_CORRECT: "distinct correct"}.get(name, name)
    text = _LABELS[kind].format(k=k)
    if kind == RERANKK and orm:
        text += " (ORM)"
    return text + (" flexible" if mode == FLEXIBLE else "")


def labels(names, k: int | str = "K", orm: bool = True) -> dict[str, str]:
    """`label` of each name, as the `labels` argument of `plots` functions."""
    return {n: label(n, k, orm) for n in names}
