"""Notebook 06, exploration and diversity (C6, and the pass@K side of C2), from the results table
and the per-question arrays that notebooks 00-05 saved: nothing is trained or sampled.

Sections share one `Exploration` (the final models and their per-question tables) and, in order,
one bootstrap generator; `evidence` recomputes the effect tables in the same order for the claims
table, so notebook 07 quotes the numbers this notebook shows."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import plots, stages
from ..analysis import coverage as cov
from ..analysis import effects
from ..analysis import results as res
from ..evaluation import load_results
from ..names import DISTINCT_CORRECT, FRAC_MULTI_CORRECT, MAJ1_STRICT, PASSK_STRICT, label
from ..profiles import Profile
from . import ei as ei_report
from .common import Section, columns, section


@dataclass
class Exploration:
    """The final row of every run on the test set and the per-question tables of those models."""

    profile: Profile
    results: pd.DataFrame
    final: pd.DataFrame
    """`analysis.results.final_models`: one row per model, with `model` and `main`."""
    pqs: dict[str, pd.DataFrame]
    """Per model: its per-question table (`analysis.results.question_table`)."""
    models: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per model: identity, K, mean metrics and diversity (`results.model_summary`)."""
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The SFT-epochs sweep rows of the results table."""

    @property
    def dataset(self) -> str:
        return f"{self.profile.dataset}-test"

    @property
    def n_boot(self) -> int:
        return self.profile.eval.n_boot


def load(profile: Profile) -> Exploration:
    """The final models of the profile's results table with their per-question tables."""
    results = load_results(profile.results_path)
    dataset = f"{profile.dataset}-test"
    final, pqs = res.final_models(results, profile.runs_dir, dataset)
    return Exploration(profile, results, final, pqs, res.model_summary(final, pqs),
                       res.sft_sweep_rows(results, dataset))


def models(ex: Exploration) -> Section:
    """Every final model: maj@1, maj@K, pass@K and its distinct correct solutions per solved
    question (`main`: False for the extra runs of an algorithm, start and reward)."""
    show = [ex.models if len(ex.models) else
            "no evaluated runs with saved per-question arrays: run notebooks 00-05 first"]
    return section(ex.profile, {"exploration_models": ex.models}, show=show)


def pass_curves(ex: Exploration) -> Section:
    """The unbiased pass@k for k = 1..K of every final model."""
    curves = {m: cov.pass_curve(pq) for m, pq in ex.pqs.items()}
    table = pd.DataFrame([{"model": m, "k": k, "pass@k": v} for m, c in curves.items()
                          for k, v in c.items()], columns=["model", "k", "pass@k"])
    fig = (plots.pass_at_k_curves(curves, title="pass@k of the final models (test set, strict)")
           if curves else None)
    show = [table.pivot(index="model", columns="k", values="pass@k")] if curves else []
    return section(ex.profile, {"pass_at_k_curves": table}, {"fig06_pass_at_k": fig}, show)


def start_points(ex: Exploration) -> pd.DataFrame:
    """The non-SFT models with the maj@1 and pass@K of their starting model (`start_x`,
    `start_y`; NaN for the base), the points of the maj@1-pass@K figure."""
    by_model = ex.models.set_index("model")
    points = ex.models[~ex.models["algorithm"].isin(["sft"])].copy()
    for col, metric in (("start_x", MAJ1_STRICT), ("start_y", PASSK_STRICT)):
        starts = [res.init_model(r, list(by_model.index)) if r["algorithm"] != "base" else None
                  for _, r in points.iterrows()]
        points[col] = [by_model.loc[s, metric] if s else np.nan for s in starts]
    return points


def maj_vs_pass(ex: Exploration) -> Section:
    """maj@1 against pass@K: the SFT-epochs sweep as a line, the other models as points with an
    arrow from their start."""
    points, k = start_points(ex), ex.profile.eval.k
    fig = (plots.maj_vs_pass(ex.sweep, points, title=f"maj@1 against pass@{k} (test set, strict)",
                             ylabel=f"pass@{k}") if len(ex.sweep) or len(points) else None)
    show = [columns(ex.sweep, ["run", "epoch", MAJ1_STRICT, PASSK_STRICT, FRAC_MULTI_CORRECT])
            ] if len(ex.sweep) else []
    return section(ex.profile, figures={"fig06_maj1_vs_passK": fig}, show=show)


def gain_table(ex: Exploration, rng: np.random.Generator) -> pd.DataFrame:
    """Every RL model minus its start, and the SFT sweep's last epoch minus its first."""
    return pd.concat([effects.vs_init_effects(ex.final, ex.pqs, rng, ex.n_boot),
                      effects.sft_epoch_effects(ex.sweep, ex.profile.runs_dir, rng, ex.n_boot)],
                     ignore_index=True)


def gains(ex: Exploration, rng: np.random.Generator) -> Section:
    """Paired gains over the starting model (C2), 95% bootstrap CIs."""
    table = gain_table(ex, rng)
    show = [table if len(table) else "no RL runs or SFT sweep in the results table"]
    return section(ex.profile, {"exploration_gains": table}, show=show)


def diversity(ex: Exploration) -> Section:
    """Distinct correct solutions (operation signatures) per solved question, per model."""
    fig = (plots.diversity(ex.models, title="distinct correct solutions per solved test question")
           if len(ex.models) else None)
    table = columns(ex.models, ["model", "k", "solved", "n_questions", "distinct_per_solved",
                                FRAC_MULTI_CORRECT])
    return section(ex.profile, {"diversity": table}, {"fig06_diversity": fig})


def references(ex: Exploration) -> dict[str, pd.DataFrame | None]:
    """The coverage references: the final SFT model and the sweep's first ("lightly trained")
    checkpoint."""
    refs = {"sft": ex.pqs.get("sft")}
    if len(ex.sweep):
        light = res.load_questions(ex.profile.runs_dir, ex.sweep.iloc[0])
        if light is not None:
            refs[f"sft ({int(ex.sweep.iloc[0]['epoch'])} ep)"] = light
    return refs


def coverage_table(ex: Exploration, rng: np.random.Generator) -> pd.DataFrame:
    """Per model and reference: the share of test questions its K samples solve and the
    reference's never do (`beyond`), the reverse (`missed`), with bootstrap CIs."""
    return cov.coverage_table(ex.models, ex.pqs, references(ex), rng, ex.n_boot)


def coverage(ex: Exploration, rng: np.random.Generator) -> Section:
    """Coverage beyond SFT (C6): `beyond` near 0 for every RL model when exploration is the
    bottleneck."""
    table = coverage_table(ex, rng)
    if not len(table):
        return section(ex.profile, {"coverage_beyond_sft": table},
                       show=["no SFT model in the results table: run notebook 01 first"])
    main = table[table["reference"] == "sft"]
    fig = plots.bar_metrics(main, "model", ["beyond", "missed"], labels={
        "beyond": "solved beyond SFT", "missed": "solved by SFT only"},
        title="coverage of the K samples against SFT's")
    return section(ex.profile, {"coverage_beyond_sft": table}, {"fig06_coverage_beyond_sft": fig},
                   [table])


def ei_rounds_table(profile: Profile, seed: int) -> pd.DataFrame:
    """The main EI runs' rows per round (notebook 03's completed runs, reused; this notebook never
    trains: an empty table until notebook 03 has run)."""
    if not all(stages.ei_finished(profile, init, seed) for init in ei_report.INITS):
        return pd.DataFrame()
    runs = {init: stages.ei(profile, init, seed) for init in ei_report.INITS}
    return ei_report.rounds_table(runs, profile.ei.rounds)


def saturation_table(ex: Exploration, rng: np.random.Generator) -> pd.DataFrame:
    """Per sparse EI run: pass@K at its last evaluation minus its first (paired)."""
    return effects.saturation_effects(ex.results, ex.profile.runs_dir, ex.dataset, rng, ex.n_boot)


def ei_rounds(ex: Exploration, rng: np.random.Generator, seed: int) -> Section:
    """EI per round (C6: pass@K saturates early): test pass@K, maj@1, training questions solved
    and distinct correct solutions; then the paired change of pass@K from first to last round."""
    rounds = ei_rounds_table(ex.profile, seed)
    if not len(rounds):
        return section(ex.profile, {"ei_pass_saturation": saturation_table(ex, rng)},
                       show=["notebook 03's EI runs are not complete: run notebook 03 first (this "
                             "notebook trains nothing)"])
    cols = [c for c in (PASSK_STRICT, MAJ1_STRICT, "train_solved", DISTINCT_CORRECT) if c in rounds]
    names = {c: label(c, ex.profile.eval.k) for c in cols}
    names["train_solved"] = "training questions solved"
    fig = plots.metric_sweep(rounds, "round", cols, hue="init", xlabel="EI round", labels=names,
                             title="Expert Iteration per round")
    saturation = saturation_table(ex, rng)
    show = [columns(rounds, ["init", "round", "rollouts", *cols]),
            saturation if len(saturation)
            else "fewer than two evaluated EI rounds in the results table"]
    return section(ex.profile, {"ei_pass_saturation": saturation}, {"fig06_ei_rounds": fig}, show)


def summary(ex: Exploration, coverage_tbl: pd.DataFrame) -> Section:
    """One line per model: maj@1, pass@K, distinct correct solutions, coverage beyond SFT."""
    lines = []
    for _, r in ex.models.iterrows():
        c = coverage_tbl
        if len(c):
            c = c[(c["model"] == r["model"]) & (c["reference"] == "sft")]
        extra = (f"; beyond SFT {c.iloc[0]['beyond']:.3f} [{c.iloc[0]['beyond_lo']:.3f}, "
                 f"{c.iloc[0]['beyond_hi']:.3f}]" if len(c) else "")
        lines.append(f"{r['model']}: maj@1 {r[MAJ1_STRICT]:.3f}, pass@{r['k']} "
                     f"{r[PASSK_STRICT]:.3f}, {r['distinct_per_solved']:.2f} distinct correct per "
                     f"solved question, {r[FRAC_MULTI_CORRECT]:.1%} solved with 2+{extra}")
    return Section(show=lines)


def evidence(profile: Profile, seed: int) -> dict[str, pd.DataFrame]:
    """The effect tables of this notebook for the claims table, computed as the notebook's
    sections compute them (one generator from `seed`, in the same order)."""
    ex, rng = load(profile), np.random.default_rng(seed)
    return {"exploration_gains": gain_table(ex, rng),
            "coverage_beyond_sft": coverage_table(ex, rng),
            "ei_pass_saturation": saturation_table(ex, rng)}
