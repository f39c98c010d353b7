"""Notebook 07, results and claims: the results table, the algorithms side by side, the paired
comparisons between final models, and the claims table C1-C6.

The claims table is computed here from the results table and the saved per-question arrays: each
effect table it rests on is recomputed as the notebook that shows it computes it (the same
bootstrap generator from the seed, in the same order), so the verdicts quote those numbers and
nothing is read back from CSV files."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import plots
from ..analysis import claims as verdicts
from ..analysis import effects
from ..analysis import results as res
from ..evaluation import load_results
from ..io import atomic_write_text
from ..names import (
    DISTINCT_CORRECT,
    FRAC_MULTI_CORRECT,
    MAJ1_FLEXIBLE,
    MAJ1_STRICT,
    MAJK_FLEXIBLE,
    MAJK_STRICT,
    PASSK_FLEXIBLE,
    PASSK_STRICT,
    RERANKK_STRICT,
    SUMMARY,
    hi,
    labels,
    lo,
)
from ..profiles import Profile
from . import ei, exploration
from .common import Markdown, Section, section, table_path

MARGIN = 0.05
"""Equivalence margin (accuracy points) of the "comparable" / "helps little" claims."""
RESULT_COLUMNS = ["dataset", "model", "algorithm", "init", "reward", "run", "rollouts", "k",
                  MAJ1_STRICT, lo(MAJ1_STRICT), hi(MAJ1_STRICT), MAJ1_FLEXIBLE, MAJK_STRICT,
                  MAJK_FLEXIBLE, RERANKK_STRICT, PASSK_STRICT, PASSK_FLEXIBLE,
                  DISTINCT_CORRECT, FRAC_MULTI_CORRECT]
SUPPORTING = {"sft_sweep": ["epoch", MAJ1_STRICT, PASSK_STRICT, FRAC_MULTI_CORRECT],
              "ei_rewards": ["reward", "rollouts", MAJ1_STRICT, PASSK_STRICT],
              "ei_k_sweep": ["K", "rollouts", MAJ1_STRICT, PASSK_STRICT],
              "ppo_final": ["model", "rollouts", MAJ1_STRICT, PASSK_STRICT, "final_kl"],
              "ppo_gains": ["label", "gain", "lo", "hi"],
              "rcrl_gain_over_init": ["label", "gain", "lo", "hi"],
              "rcrl_label_gap": ["variant", "metric", "gain", "lo", "hi"],
              "orm_rerank": ["split", "grading", "maj@K", "rerank@K", "gain", "lo", "hi"]}
"""Tables of notebooks 01-05 shown beside the claims for context (not used by any verdict)."""


def final_table(results: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """The final row of every run on each dataset, with its model label."""
    finals = [res.final_rows(results, d) for d in datasets]
    finals = [f.assign(model=res.model_labels(f)) for f in finals if len(f)]
    final = (pd.concat(finals, ignore_index=True) if finals
             else pd.DataFrame(columns=["dataset", "model"]))
    return final.reindex(columns=RESULT_COLUMNS)


def results_table(profile: Profile) -> Section:
    """The final row of every run on the test and variations sets (CSV and Markdown)."""
    datasets = [f"{profile.dataset}-{s}" for s in ("test", "variations")]
    table = final_table(load_results(profile.results_path), datasets)
    out = section(profile, {"results_final": table}, show=[table.drop(columns=["run"])])
    atomic_write_text(table_path(profile, "results_final").with_suffix(".md"),
                      res.to_markdown(table))
    return out


SCALES = ("tiny", "smollm", "smollm-gpu", "paper")
"""Profiles whose test results notebook 07 puts side by side, where they have been computed."""


def scales_table(profile: Profile) -> pd.DataFrame:
    """Every final model's strict maj@1 (95% CI), pass@K and K on the test set of each profile in
    `SCALES` whose results table exists beside this one (`paper_figures/<profile>/`), one column
    group per profile: the same algorithm at another scale, model and dataset."""
    cols = ["model", MAJ1_STRICT, lo(MAJ1_STRICT), hi(MAJ1_STRICT), PASSK_STRICT, "k", "questions"]
    parts = []
    for name in SCALES:
        path = profile.figures_dir.parent / name / "results.jsonl"
        if not path.exists():
            continue
        results = load_results(path)
        for dataset in sorted({d for d in results["dataset"].dropna() if str(d).endswith("-test")}):
            final = res.final_rows(results, dataset)
            if len(final):
                parts.append(final.assign(model=res.model_labels(final), profile=name,
                                          dataset=dataset.removesuffix("-test"),
                                          questions=final.get("n_questions"))
                             .reindex(columns=["profile", "dataset", *cols]))
    if not parts:
        return pd.DataFrame(columns=["profile", "dataset", *cols])
    return pd.concat(parts, ignore_index=True)


def scales(profile: Profile) -> Section:
    """The final models of every profile computed here, side by side (strict maj@1 with its CI
    over questions, pass@K, K and the number of test questions): the tiny world and SmolLM2 on
    GSM8K are different models and datasets, so read each row against its own profile's SFT."""
    table = scales_table(profile)
    if not len(table):
        return Section(show=["no profile's results table exists yet"])
    wide = table.assign(cell=[f"{m:.3f} [{a:.3f}, {b:.3f}]" for m, a, b in
                              zip(table[MAJ1_STRICT], table[lo(MAJ1_STRICT)], table[hi(MAJ1_STRICT)])])
    wide = wide.pivot_table(index="model", columns="profile", values="cell", aggfunc="first")
    wide = wide.reindex(columns=[p for p in SCALES if p in wide.columns])
    atomic_write_text(table_path(profile, "results_scales").with_suffix(".md"), res.to_markdown(
        wide.reset_index()))
    return section(profile, {"results_scales": table}, show=[wide.fillna("")])


def algorithms(profile: Profile, table: pd.DataFrame) -> Section:
    """maj@1, maj@K, rerank@K and pass@K of every final model on the test set (strict)."""
    test = table[table["dataset"] == f"{profile.dataset}-test"]
    if not len(test):
        return Section(show=["the results table has no test rows: run notebooks 00-05 first"])
    metrics = [m for m in SUMMARY if m in test and test[m].notna().any()]
    fig = plots.bar_metrics(test, "model", metrics, labels=labels(metrics),
                            title="final models on the test set (strict grading, "
                                  f"K={profile.eval.k} unless noted in the table)")
    fig.axes[0].tick_params(axis="x", rotation=30)
    return section(profile, figures={"fig07_algorithms": fig})


def comparison_table(profile: Profile, seed: int) -> pd.DataFrame:
    """Paired comparisons between final models (`analysis.effects.comparisons`)."""
    results, dataset = load_results(profile.results_path), f"{profile.dataset}-test"
    final, pqs = res.final_models(results, profile.runs_dir, dataset)
    return effects.comparisons(results, profile.runs_dir, dataset, final, pqs,
                               np.random.default_rng(seed), profile.eval.n_boot)


def comparisons(profile: Profile, seed: int) -> Section:
    """EI against the other algorithms (C1), EI against PPO and each run's last evaluation
    against its previous one (C3), rewards against sparse (C4), the SFT-pretrained gap (C5)."""
    table = comparison_table(profile, seed)
    return section(profile, {"comparisons": table},
                   show=[table if len(table) else "no pairs of final models to compare"])


def ppo_gap(profile: Profile) -> pd.DataFrame:
    """The SFT-started minus the pretrained-started maj@1 at the start and after PPO with the
    sparse reward (the means stand in for C5 when no paired change can be computed)."""
    results, dataset = load_results(profile.results_path), f"{profile.dataset}-test"
    final, pqs = res.final_models(results, profile.runs_dir, dataset, ("base", "sft", "ppo"))
    pairs = {"start": ("sft", "base"),
             "after ppo (sparse)": ("ppo sft/sparse", "ppo pretrained/sparse")}
    rng = np.random.default_rng(0)  # only the means are used
    return effects.effects_frame([effects.gain(f"{a} - {b}", pqs[a], pqs[b], MAJ1_STRICT, rng, 1,
                                               stage=stage)
                                  for stage, (a, b) in pairs.items() if a in pqs and b in pqs])


def evidence(profile: Profile, seed: int) -> dict[str, pd.DataFrame]:
    """Every effect table the claims rest on (`analysis.claims.EVIDENCE`), from the results table
    and the per-question arrays."""
    dataset = f"{profile.dataset}-test"
    out = {"ei_gains": ei.gains_table(load_results(profile.results_path), profile.runs_dir, dataset,
                                      np.random.default_rng(seed), profile.eval.n_boot)}
    out |= exploration.evidence(profile, seed)
    out["comparisons"] = comparison_table(profile, seed)
    out["ppo_init_gap"] = ppo_gap(profile)
    return out


def claims(profile: Profile, seed: int, margin: float = MARGIN) -> Section:
    """The claims table: per claim, what the paper says, what was measured (effects with 95% CIs)
    and the verdict computed from those CIs (CSV and Markdown)."""
    tables = evidence(profile, seed)
    table = verdicts.build_claims(tables, margin=margin)
    found = [n for n, t in tables.items() if t is not None and len(t)]
    out = section(profile, {"claims": table}, show=[
        "evidence found: " + (", ".join(found) or "none"),
        "evidence missing: " + (", ".join(n for n in tables if n not in found) or "none")])
    text = res.to_markdown(table)
    atomic_write_text(table_path(profile, "claims").with_suffix(".md"), text)
    out.show.append(Markdown(text))
    return out


def supporting(profile: Profile) -> Section:
    """The tables of notebooks 01-05 that put the claims in context, as those notebooks saved
    them (for reading only: no verdict uses them)."""
    show = []
    for name, cols in SUPPORTING.items():
        path = table_path(profile, name)
        if not path.exists() or not path.stat().st_size:
            show.append(f"{name}: missing (its notebook has not run)")
            continue
        df = pd.read_csv(path)
        show += [name, df[[c for c in cols if c in df]]]
    return Section(show=show)


def verdict_lines(table: pd.DataFrame) -> Section:
    """One line per claim: its verdict."""
    return Section(show=[f"{r['claim']}: {r['verdict']}" for _, r in table.iterrows()])
