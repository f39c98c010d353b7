"""Notebook 02, the outcome reward model: its training, its calibration and AUROC on held-out
samples, rerank@K against maj@K, the curves against k, and what its ranking follows."""
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
from ..orm import load_orm_data
from ..profiles import Profile
from .common import Section, columns, section
from .sft import sft_info, splits

Evaluations = dict[str, tuple[EvalResult, orm_report.RerankData]]
TRAINING_SHOWN = ("epoch", "step", "val_loss", "val_auroc", "val_auroc_within", "val_acc")


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


def k_curves(profile: Profile, evals: Evaluations, rng: np.random.Generator) -> Section:
    """maj@k and rerank@k from random k-subsets of the K samples, and the unbiased pass@k."""
    curves, style = {}, {}
    for split, (_, rr) in evals.items():
        for name, curve in orm_report.k_curves(rr, profile.eval.pass_ks, rng).items():
            label = f"{name} ({split})"
            curves[label], style[label] = curve, "-" if split == "test" else "--"
    fig = plots.accuracy_vs_k(curves, title="SFT model: maj@k, rerank@k (ORM) and pass@k",
                              style=style)
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
