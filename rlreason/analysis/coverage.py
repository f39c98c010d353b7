"""Exploration numbers of per-question tables: pass@k curves, distinct correct solutions, and the
questions one model's samples solve that another's never do (claim C6)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..metrics import bootstrap_ci, pass_at_k, pass_at_k_curve
from ..names import DISTINCT_CORRECT, FRAC_MULTI_CORRECT, n_correct, pass_at


def pass_curve(pq: pd.DataFrame, mode: str = "strict",
               ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean unbiased pass@k over questions for k = 1..K (or `ks`)."""
    n = pq["k"].to_numpy(dtype=int)
    ks = ks or range(1, int(n.min()) + 1)
    return pass_at_k_curve(n, pq[n_correct(mode)].to_numpy(dtype=int), list(ks))


def with_pass_at(pq: pd.DataFrame, k: int, mode: str = "strict") -> pd.DataFrame:
    """`pq` with a `pass<k>_<mode>` column: each question's unbiased pass@k from its K samples
    (k=1: the share of correct samples)."""
    out = pq.copy()
    out[pass_at(k, mode)] = pass_at_k(pq["k"].to_numpy(dtype=int),
                                      pq[n_correct(mode)].to_numpy(dtype=int), k)
    return out


def with_pass1(pq: pd.DataFrame, mode: str = "strict") -> pd.DataFrame:
    """`pq` with a `pass1_<mode>` column: each question's share of correct samples (pass@1,
    unbiased at any K, so it compares models evaluated with different K)."""
    out = pq.copy()
    out[pass_at(1, mode)] = pq[n_correct(mode)] / pq["k"]
    return out


def diversity(pq: pd.DataFrame) -> dict:
    """Distinct correct signatures per solved question (mean) and the share solved with 2+."""
    solved = pq[DISTINCT_CORRECT] > 0
    d = pq.loc[solved, DISTINCT_CORRECT]
    return {"solved": int(solved.sum()), "n_questions": len(pq),
            "distinct_per_solved": float(d.mean()) if len(d) else 0.0,
            FRAC_MULTI_CORRECT: float((d >= 2).mean()) if len(d) else 0.0}


def _solved(model: pd.DataFrame, reference: pd.DataFrame, mode: str):
    m = model.set_index("id")[n_correct(mode)] > 0
    r = reference.set_index("id")[n_correct(mode)] > 0
    ids = m.index.intersection(r.index)
    return m.loc[ids], r.loc[ids]


def coverage_beyond(model: pd.DataFrame, reference: pd.DataFrame, mode: str = "strict") -> dict:
    """Fraction of the shared questions that `model`'s samples solve and `reference`'s never do
    (`beyond`), and the reverse (`missed`); counts of each, and of the questions compared."""
    m, r = _solved(model, reference, mode)
    n = len(m)
    beyond, missed = int((m & ~r).sum()), int((~m & r).sum())
    return {"n_questions": n, "n_solved": int(m.sum()), "n_beyond": beyond, "n_missed": missed,
            "beyond": beyond / n if n else float("nan"),
            "missed": missed / n if n else float("nan")}


def bootstrap_fraction(flags, rng: np.random.Generator,
                       n_boot: int = 1000) -> tuple[float, float, float]:
    """A fraction of questions with its percentile-bootstrap 95% CI."""
    flags = np.asarray(flags, dtype=float)
    if not flags.size:
        return float("nan"), float("nan"), float("nan")
    return tuple(bootstrap_ci(flags, rng, n_boot=n_boot))


def coverage_with_ci(model: pd.DataFrame, reference: pd.DataFrame, rng: np.random.Generator,
                     n_boot: int = 1000, mode: str = "strict") -> dict:
    """`coverage_beyond` with bootstrap CIs over the shared questions for both fractions."""
    out = coverage_beyond(model, reference, mode)
    m, r = _solved(model, reference, mode)
    for name, flags in (("beyond", m & ~r), ("missed", ~m & r)):
        _, out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_fraction(flags.to_numpy(), rng, n_boot)
    return out


def coverage_table(models: pd.DataFrame, pqs: dict[str, pd.DataFrame],
                   references: dict[str, pd.DataFrame | None], rng: np.random.Generator,
                   n_boot: int = 1000) -> pd.DataFrame:
    """`coverage_with_ci` of every model against every reference (e.g. the final SFT model and
    the first SFT checkpoint), one row each, with the model's algorithm and `main` flag."""
    by_model = models.set_index("model")
    rows = [{"model": m, "algorithm": by_model.loc[m, "algorithm"], "main": by_model.loc[m, "main"],
             "reference": ref, **coverage_with_ci(pq, ref_pq, rng, n_boot)}
            for ref, ref_pq in references.items() if ref_pq is not None
            for m, pq in pqs.items() if m != ref]
    return pd.DataFrame(rows)
