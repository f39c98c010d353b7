"""Verdicts and the claims table C1-C6: measured effects with 95% CIs turned into verdicts. A
verdict is always computed from the interval, never written by hand."""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..names import MAJ1_STRICT, PASSK_STRICT
from .results import RL_ALGORITHMS

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
NO_EVIDENCE = "no evidence"
CLAIM_COLUMNS = ["claim", "paper says", "measured here", "verdict"]
EVIDENCE = ("ei_gains", "exploration_gains", "coverage_beyond_sft", "ei_pass_saturation",
            "comparisons", "ppo_init_gap")
"""The effect tables `build_claims` reads (each with the effect columns gain, lo, hi)."""


def ci_verdict(lo: float, hi: float, expect: str = "positive", margin: float = 0.05) -> str:
    """The verdict on an effect with 95% CI [lo, hi] given what the paper expects:
    - `positive` / `negative`: supported when the CI excludes 0 on the expected side, not
      supported when it excludes 0 on the other side, else inconclusive (CI includes 0);
    - `zero` (comparable, "helps little"): supported when the CI lies within +-margin, not
      supported when it lies entirely outside it, else inconclusive.
    A missing interval gives "no evidence"."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return NO_EVIDENCE
    if expect == "positive" or expect == "negative":
        sign = 1 if expect == "positive" else -1
        lo, hi = sorted((sign * lo, sign * hi))
        if lo > 0:
            return SUPPORTED
        if hi < 0:
            return f"{NOT_SUPPORTED} (opposite sign)"
        return f"{INCONCLUSIVE} (CI includes 0)"
    if expect == "zero":
        if -margin <= lo and hi <= margin:
            return f"{SUPPORTED} (within ±{margin:g})"
        if lo > margin or hi < -margin:
            return f"{NOT_SUPPORTED} (outside ±{margin:g})"
        return f"{INCONCLUSIVE} (CI overlaps ±{margin:g})"
    raise ValueError(f"ci_verdict: expect must be positive, negative or zero, got {expect!r}")


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict from the verdicts of a claim's parts: supported when all are, not supported
    when all with evidence are not, `mixed` when some are and some are not, else inconclusive."""
    kinds = [v.split(" (")[0] for v in verdicts if v != NO_EVIDENCE]
    if not kinds:
        return NO_EVIDENCE
    if all(k == SUPPORTED for k in kinds):
        return SUPPORTED if len(kinds) == len(verdicts) else f"{SUPPORTED} (some evidence missing)"
    if SUPPORTED in kinds and NOT_SUPPORTED in kinds:
        return "mixed"
    if NOT_SUPPORTED in kinds:
        return NOT_SUPPORTED
    if SUPPORTED in kinds:
        return f"partly {SUPPORTED} (rest inconclusive)"
    return INCONCLUSIVE


def fmt_effect(name: str, gain: float, lo: float, hi: float) -> str:
    """`name +0.031 [-0.010, +0.072]`."""
    return f"{name} {gain:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def evidence(name: str, gain: float, lo: float, hi: float, expect: str = "positive",
             margin: float = 0.05) -> dict:
    """One part of a claim: its measured effect (text) and its verdict."""
    return {"measured": fmt_effect(name, gain, lo, hi),
            "verdict": ci_verdict(lo, hi, expect, margin)}


def missing(what: str) -> dict:
    return {"measured": f"missing: {what}", "verdict": NO_EVIDENCE}


def claim_row(claim: str, paper: str, parts: Sequence[dict]) -> dict:
    """A row of the claims table from the evidence parts of one claim."""
    parts = list(parts) or [missing("no evidence found")]
    return {"claim": claim, "paper says": paper,
            "measured here": "; ".join(p["measured"] for p in parts),
            "verdict": combine_verdicts([p["verdict"] for p in parts])}


def pick(table: pd.DataFrame | None, **where) -> pd.Series | None:
    """The first row of `table` whose columns equal `where` (None if the table or row is
    missing)."""
    if table is None or not len(table):
        return None
    mask = pd.Series(True, index=table.index)
    for col, value in where.items():
        if col not in table:
            return None
        mask &= table[col].astype(str) == str(value)
    return table[mask].iloc[0] if mask.any() else None


def effect_parts(df: pd.DataFrame | None, what: str, expect: str, margin: float,
                 **where) -> list[dict]:
    """Evidence parts from the rows of an effects table (columns label, gain, lo, hi) whose
    columns match `where` (a list: any of its values); the extra runs (`main` False) are left
    out."""
    if df is None or not len(df):
        return [missing(what)]
    mask = pd.Series(True, index=df.index)
    for col, value in where.items():
        if col not in df:
            return [missing(what)]
        mask &= df[col].isin(value if isinstance(value, (list, tuple)) else [value])
    rows = df[mask]
    if not len(rows):
        return [missing(what)]
    if "main" in rows:
        rows = rows[rows["main"].astype(str) != "False"]
    parts = []
    for _, r in rows.iterrows():
        part = evidence(r["label"], r["gain"], r["lo"], r["hi"], expect, margin)
        if r.get("a_mean") == 0 and r.get("b_mean") == 0:  # a floor effect: no evidence of equality
            part["verdict"] = f"{INCONCLUSIVE} (both at 0)"
        parts.append(part)
    return parts


def _coverage_parts(cov: pd.DataFrame | None, margin: float) -> list[dict]:
    if cov is None or not len(cov):
        return [missing("coverage_beyond_sft (notebook 06)")]
    keep = cov["algorithm"].isin(RL_ALGORITHMS) if "algorithm" in cov else True
    keep &= (cov["reference"] == "sft") if "reference" in cov else True
    keep &= (cov["main"].astype(str) != "False") if "main" in cov else True
    parts = []
    for _, r in cov[keep].iterrows():
        part = evidence(f"{r['model']} beyond SFT", r["beyond"], r["beyond_lo"], r["beyond_hi"],
                        "zero", margin)
        if r.get("n_solved") == 0:  # solving nothing is trivially "nothing beyond SFT"
            part["verdict"] = f"{INCONCLUSIVE} (solves nothing)"
        parts.append(part)
    return parts or [missing("RL rows of coverage_beyond_sft")]


def build_claims(tables: dict[str, pd.DataFrame | None], margin: float = 0.05) -> pd.DataFrame:
    """The claims table C1-C6 from the effect tables `EVIDENCE`: `ei_gains` (EI minus its start,
    notebook 03), `exploration_gains` (every RL model minus its start, SFT's last epoch minus its
    first), `coverage_beyond_sft`, `ei_pass_saturation` (notebook 06), `comparisons` (between final
    models) and `ppo_init_gap` (notebook 04). Every verdict comes from a 95% CI (`ci_verdict`);
    `margin` is the equivalence margin of the "comparable" / "helps little" claims. Missing
    evidence is reported as such."""
    t = dict(tables)
    comp, expl = t.get("comparisons"), t.get("exploration_gains")
    rows = []

    r = pick(t.get("ei_gains"), init="sft", metric=MAJ1_STRICT)
    c1 = [evidence("EI(sft) - SFT maj@1", r["gain"], r["lo"], r["hi"]) if r is not None
          else missing("ei_gains (notebook 03)")]
    c1 += effect_parts(comp, "EI vs other algorithms (comparisons)", "positive", margin,
                       kind="algorithm", metric=MAJ1_STRICT)
    rows.append(claim_row("C1", "all algorithms comparable; EI best in most settings "
                          "(~+7 maj@1 over SFT at 7B)", c1))

    c2 = effect_parts(expl, "RL vs its init (exploration_gains, notebook 06)", "positive", margin,
                      algorithm=list(RL_ALGORITHMS), init="sft", reward="sparse",
                      metric=[MAJ1_STRICT, PASSK_STRICT])
    c2 += effect_parts(expl, "SFT last vs first epoch maj@1", "positive", margin,
                       algorithm="sft", metric=MAJ1_STRICT)
    c2 += effect_parts(expl, "SFT last vs first epoch pass@K", "negative", margin,
                       algorithm="sft", metric=PASSK_STRICT)
    rows.append(claim_row("C2", "RL raises maj@1 and pass@K together; more SFT epochs raise "
                          "maj@1 and lower pass@K", c2))

    c3 = effect_parts(comp, "EI vs PPO at their final rollouts (comparisons)", "zero", margin,
                      kind="efficiency", metric=MAJ1_STRICT)
    c3 += effect_parts(comp, "EI last vs previous round (comparisons)", "zero", margin,
                       kind="convergence", metric=MAJ1_STRICT)
    rows.append(claim_row("C3", "EI about as sample efficient as PPO; both converge fast "
                          "(~10^4-10^6 rollouts)", c3))

    c4 = effect_parts(comp, "dense/ORM vs sparse reward (comparisons)", "zero", margin,
                      kind="reward", metric=MAJ1_STRICT)
    rows.append(claim_row("C4", "dense and ORM rewards change final maj@1 little (dense may "
                          "hurt slightly)", c4))

    c5 = effect_parts(comp, "change of the SFT-pretrained gap (comparisons)", "negative", margin,
                      kind="gap_change", metric=MAJ1_STRICT)
    if c5[0]["verdict"] == NO_EVIDENCE:
        gap = t.get("ppo_init_gap")
        a, b = pick(gap, stage="start"), pick(gap, stage="after ppo (sparse)")
        if a is not None and b is not None:
            c5 = [{"measured": f"PPO gap {a['gain']:+.3f} -> {b['gain']:+.3f} (no paired CI of "
                               "the change)", "verdict": NO_EVIDENCE}]
    rows.append(claim_row("C5", "RL narrows the gap between pretrained- and SFT-started models",
                          c5))

    c6 = _coverage_parts(t.get("coverage_beyond_sft"), margin)
    c6 += effect_parts(t.get("ei_pass_saturation"), "ei_pass_saturation (notebook 06)", "zero",
                       margin)
    rows.append(claim_row("C6", "RL finds no solutions beyond SFT's; pass@K saturates early", c6))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
