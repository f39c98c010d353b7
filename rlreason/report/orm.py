"""Notebook 02, the outcome reward model: its training, its calibration and AUROC on held-out
samples, rerank@K against maj@K, the other rerankers (argmax tie rules, ORM-weighted voting, a
rule-based bound), the curves against k, and what its ranking follows."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .. import plots, stages
from ..analysis import orm_report
from ..evaluation import EvalResult
from ..io import read_jsonl
from ..metrics import paired_difference_ci
from ..names import MAJ1, MAJK, MODES, PASSK, RERANKK, metric
from ..orm import ArithmeticScorer, load_orm_data
from ..profiles import Profile
from .common import Section, columns, section
from .sft import sft_info, splits

Evaluations = dict[str, tuple[EvalResult, orm_report.RerankData]]
TRAINING_SHOWN = ("epoch", "step", "val_loss", "val_auroc", "val_auroc_within", "val_acc")
RERANKERS_SHOWN = ("split", "scorer", "argmax_first", "argmax_random", "weighted_vote",
                   "majority_vote", "random_sample", "pass_at_k", "auroc", "auroc_within",
                   "n_questions")
BOUND = "arithmetic bound"


def training(profile: Profile, seed: int) -> Section:
    """The ORM (trained on the SFT model's labelled samples, reused when done): its data, its
    loss curve and the validation metrics after each epoch (epoch 0: the untrained head)."""
    run = stages.orm(profile, seed)
    data = load_orm_data(run.run_dir / "data.jsonl")
    n_val = len({x.problem_id for x in data if x.split == "val"})
    fig = plots.training_curve([r for r in run.rows if "loss" in r],
                               title="ORM training loss (class-weighted BCE)")
    epochs = columns(pd.DataFrame([r for r in run.rows if "val_loss" in r]), TRAINING_SHOWN)
    show = [str(profile.orm),
            f"ORM data: {len(data)} samples of {len({x.problem_id for x in data})} questions "
            f"({n_val} held out), {np.mean([x.label for x in data]):.1%} correct", epochs]
    return section(profile, {"orm_training": epochs}, {"fig02_orm_loss": fig}, show)


def evaluations(profile: Profile, seed: int) -> Evaluations:
    """The final SFT model's evaluation on each split with the ORM as reranker (rerank@K in the
    results table), and the `RerankData` of its K scored samples."""
    orm, scorer = stages.orm(profile, seed), stages.orm_scorer(profile, seed)
    ckpt = stages.sft_checkpoint(profile, seed)
    info = dataclasses.replace(sft_info(seed), reranker=orm.name)
    out = {}
    for split in splits(profile):
        res = stages.evaluate(profile, ckpt, split, info=info, scorer=scorer)
        completions = [r["samples"] for r in read_jsonl(res.rollouts_path)]
        out[split] = res, orm_report.rerank_data(stages.problems(profile, split), completions,
                                                 res.scores)
    return out


def score_table(held_out: dict, evals: Evaluations) -> tuple[pd.DataFrame, dict]:
    """AUROC (pooled, within questions), ECE and base rate of the ORM on each held-out set, and
    of the vote share (what majority voting ranks by) on each split; and the reliability tables."""
    tables, rows = {}, []
    for name, (scores, correct, question) in held_out.items():
        tables[name], _ = orm_report.reliability(scores, correct)
        rows.append({"samples": name, "scorer": "ORM",
                     **orm_report.score_report(scores, correct, question)})
    for split, (_, rr) in evals.items():
        _, correct, question = rr.flat()
        base = orm_report.score_report(rr.vote_share(), correct, question)
        rows.append({"samples": f"{split} samples", "scorer": "vote share (majority)",
                     **{k: v for k, v in base.items()
                        if k in ("auroc", "auroc_within", "n_samples")}})
    return pd.DataFrame(rows), tables


def calibration(profile: Profile, seed: int, evals: Evaluations) -> Section:
    """The reliability diagram and AUROC of the ORM on its validation questions and on the SFT
    model's test (and variations) samples."""
    run, scorer = stages.orm(profile, seed), stages.orm_scorer(profile, seed)
    val = [x for x in load_orm_data(run.run_dir / "data.jsonl") if x.split == "val"]
    val_scores = orm_report.score_examples(scorer, val, stages.problems(profile, "train") + stages.problems(profile, "dev"))
    held_out = {"validation questions": (val_scores, np.array([x.label for x in val], dtype=bool),
                                         np.array([x.problem_id for x in val]))}
    for split, (_, rr) in evals.items():
        held_out[f"{split} samples"] = rr.flat()
    report, tables = score_table(held_out, evals)
    fig = plots.reliability_diagram(tables, title="ORM reliability on held-out samples")
    return section(profile, {"orm_auroc": report}, {"fig02_orm_reliability": fig}, [report])


def rerank_table(evals: Evaluations, rng: np.random.Generator, n_boot: int) -> pd.DataFrame:
    """maj@1, maj@K, rerank@K, pass@K per split and grading mode, and the paired difference
    rerank@K - maj@K over questions with its bootstrap 95% CI (`gain`, `lo`, `hi`)."""
    rows = []
    for split, (res, _) in evals.items():
        m, q = res.metrics, res.per_question
        for mode in MODES:
            d = paired_difference_ci(q[metric(RERANKK, mode)], q[metric(MAJK, mode)], rng,
                                     n_boot=n_boot)
            rows.append({"split": split, "grading": mode, "maj@1": m[metric(MAJ1, mode)],
                         "maj@K": m[metric(MAJK, mode)], "rerank@K": m[metric(RERANKK, mode)],
                         "pass@K": m[metric(PASSK, mode)], "label": "rerank@K - maj@K",
                         "gain": d.mean, "lo": d.low, "hi": d.high, "K": m["k"]})
    return pd.DataFrame(rows)


def rerank(profile: Profile, evals: Evaluations, rng: np.random.Generator) -> Section:
    """rerank@K against maj@K and pass@K of the SFT model (paired difference with its CI)."""
    table = rerank_table(evals, rng, profile.eval.n_boot)
    return section(profile, {"orm_rerank": table}, show=[table])


def reranker_table(evals: Evaluations, rng: np.random.Generator) -> pd.DataFrame:
    """Per split, `orm_report.reranker_report` (strict grading) of the ORM's scores and of the
    rule-based `ArithmeticScorer` on the same K samples, with each scorer's pooled AUROC: the
    bound says how much of the ranking signal the solution text carries without a model."""
    rows = []
    for split, (_, rr) in evals.items():
        bound = orm_report.rerank_data(rr.problems, rr.completions,
                                       ArithmeticScorer()(rr.problems, rr.completions))
        for scorer, data in (("ORM", rr), (BOUND, bound)):
            scores, correct, question = data.flat()
            pooled = orm_report.score_report(scores, correct, question)["auroc"]
            rows.append({"split": split, "scorer": scorer,
                         **orm_report.reranker_report(data, rng), "auroc": pooled})
    return columns(pd.DataFrame(rows), RERANKERS_SHOWN)


def compared(a: float, b: float) -> str:
    """`a` against `b` in words (point estimates, no CI); "not comparable with" if either is NaN."""
    if np.isnan(a) or np.isnan(b):
        return "not comparable with"
    return "above" if a > b else "below" if a < b else "equal to"


def reranker_reading(table: pd.DataFrame) -> list[str]:
    """Two lines on the test split (else the first): whether the ORM's argmax beats a random
    sample and majority voting, and whether the bound's within-question AUROC tops the ORM's."""
    split = "test" if "test" in set(table.split) else table.split.iloc[0]
    rows = table[table.split == split].set_index("scorer")
    orm, bound = rows.loc["ORM"], rows.loc[BOUND]
    return [f"{split}, strict: ORM argmax {orm.argmax_first:.3f} (ties at random "
            f"{orm.argmax_random:.3f}) is {compared(orm.argmax_first, orm.random_sample)} a random "
            f"sample ({orm.random_sample:.3f}) and {compared(orm.argmax_first, orm.majority_vote)} "
            f"majority vote ({orm.majority_vote:.3f}); ORM-weighted vote {orm.weighted_vote:.3f}",
            f"within-question AUROC: the arithmetic bound's {bound.auroc_within:.3f} is "
            f"{compared(bound.auroc_within, orm.auroc_within)} the ORM's {orm.auroc_within:.3f}; "
            f"the bound's argmax {bound.argmax_first:.3f}, pass@K {orm.pass_at_k:.3f}"]


def rerankers(profile: Profile, evals: Evaluations, rng: np.random.Generator) -> Section:
    """The ways to pick one of the K samples (argmax with both tie rules, ORM-weighted and
    majority voting, a random sample) for the ORM and the arithmetic bound, per split."""
    table = reranker_table(evals, rng)
    return section(profile, {"orm_rerankers": table}, show=[*reranker_reading(table), table])


def k_curves(profile: Profile, evals: Evaluations, rng: np.random.Generator) -> Section:
    """maj@k, rerank@k and ORM-weighted@k from random k-subsets of the K samples, and the
    unbiased pass@k."""
    curves, style = {}, {}
    for split, (_, rr) in evals.items():
        for name, curve in orm_report.k_curves(rr, profile.eval.pass_ks, rng,
                                               weighted=True).items():
            label = f"{name} ({split})"
            curves[label], style[label] = curve, "-" if split == "test" else "--"
    fig = plots.accuracy_vs_k(curves, style=style,
                              title="SFT model: maj@k, rerank@k and weighted@k (ORM), pass@k")
    table = pd.DataFrame(curves).rename_axis("k").reset_index()
    return section(profile, {"orm_k_curves": table}, {"fig02_rerank_vs_k": fig}, [table])


def verdict(test: pd.Series) -> str:
    """Whether rerank@K is above, below or not distinguishable from maj@K (from the CI)."""
    return ("above" if test["lo"] > 0 else "below" if test["hi"] < 0
            else "not distinguishable from")


def shortcuts(profile: Profile, evals: Evaluations, rerank_tbl: pd.DataFrame,
              auroc_tbl: pd.DataFrame) -> Section:
    """The test-set verdict on rerank@K, the within-question AUROCs, and what the ORM's ranking
    inside a question follows (answer size, length, top pick against a random pick)."""
    test = rerank_tbl[(rerank_tbl.split == "test") & (rerank_tbl.grading == "strict")].iloc[0]
    test_rows = auroc_tbl[auroc_tbl.samples == "test samples"]
    orm_row = test_rows[test_rows.scorer == "ORM"].iloc[0]
    vote_row = test_rows[test_rows.scorer != "ORM"].iloc[0]
    k = int(test.K)
    lines = [f"test, strict: rerank@{k} {test['rerank@K']:.3f} vs maj@{k} {test['maj@K']:.3f} "
             f"(difference {test['gain']:+.3f}, 95% CI [{test['lo']:+.3f}, {test['hi']:+.3f}]): "
             f"rerank@K is {verdict(test)} maj@K; pass@K {test['pass@K']:.3f}",
             f"ORM AUROC on test samples: pooled {orm_row.auroc:.3f}, within questions "
             f"{orm_row.auroc_within:.3f}; vote share within questions {vote_row.auroc_within:.3f}"]
    table = pd.DataFrame([{"split": split, **orm_report.shortcut_report(rr)}
                          for split, (_, rr) in evals.items()])
    return section(profile, {"orm_shortcuts": table}, show=[*lines, table])
