"""Notebook 01, supervised fine-tuning: the SFT run, the SFT-epochs sweep (the SFT half of claim
C2), pass@k curves of the base and SFT, and the final SFT model on each split."""
from __future__ import annotations

import pandas as pd

from .. import plots, stages
from ..evaluation import EvalResult, RunInfo
from ..names import (
    DISTINCT_CORRECT,
    FRAC_MULTI_CORRECT,
    MAJ1,
    MAJ1_FLEXIBLE,
    MAJ1_STRICT,
    MAJK,
    MAJK_STRICT,
    MODES,
    PASS_CURVE,
    PASSK,
    PASSK_FLEXIBLE,
    PASSK_STRICT,
    hi,
    labels,
    lo,
    metric,
)
from ..profiles import Profile
from .common import Section, columns, section

TRAIN_GREEDY, TRAIN_TEST_GAP = "train_greedy", "train_test_gap"
SWEEP_METRICS = (MAJ1_STRICT, MAJK_STRICT, PASSK_STRICT, FRAC_MULTI_CORRECT)
SWEEP_SHOWN = ("epoch", MAJ1_STRICT, MAJ1_FLEXIBLE, MAJK_STRICT, PASSK_STRICT,
               PASSK_FLEXIBLE, DISTINCT_CORRECT, FRAC_MULTI_CORRECT, "mean_len")


def training(profile: Profile, seed: int) -> Section:
    """SFT of the base on the reference solutions (reused when done): its loss curve."""
    run = stages.sft(profile, seed)
    fig = plots.training_curve([r for r in run.rows if "loss" in r],
                               title="SFT loss (solution tokens)")
    return section(profile, figures={"fig01_sft_loss": fig})


def sweep_table(evaluations: list[tuple[int, EvalResult]], seed: int,
                fits: list[EvalResult] | None = None) -> pd.DataFrame:
    """One row per evaluated SFT epoch: epoch, seed, the test evaluation's metrics and, given the
    training-set fits, greedy accuracy on training questions and its gap to the test set's."""
    rows = [{"epoch": epoch, "seed": seed, **{k: v for k, v in res.metrics.items() if k != PASS_CURVE}}
            for epoch, res in evaluations]
    for row, fit in zip(rows, fits or []):
        row[TRAIN_GREEDY] = fit.metrics[MAJ1_STRICT]
        row[TRAIN_TEST_GAP] = fit.metrics[MAJ1_STRICT] - row[MAJ1_STRICT]
    return pd.DataFrame(rows)


def epochs_sweep(profile: Profile, seed: int) -> Section:
    """maj@1, maj@K, pass@K and the share of solved questions with 2+ distinct correct solutions
    after each SFT epoch of `profile.sweep_epochs` (test set, strict)."""
    evaluations = stages.sft_sweep(profile, seed)
    run_dir = stages.sft(profile, seed).run_dir
    fits = [stages.train_fit(profile, stages.checkpoint(run_dir, epoch)) for epoch, _ in evaluations]
    sweep = sweep_table(evaluations, seed, fits)
    k = int(sweep["k"].iloc[0])
    fig = plots.metric_sweep(sweep, "epoch", list(SWEEP_METRICS),
                             labels=labels(SWEEP_METRICS, k, orm=False), xlabel="SFT epochs",
                             title="SFT epochs sweep (test set, strict grading)")
    gap = plots.lines_on_one_axis(sweep, "epoch", {TRAIN_GREEDY: "greedy, training questions",
                                                   MAJ1_STRICT: "greedy, test set"},
                                  xlabel="SFT epochs", title="SFT: training against test accuracy")
    return section(profile, {"sft_sweep": sweep},
                   {"fig01_sft_epochs_sweep": fig, "fig01_sft_train_test_gap": gap},
                   [columns(sweep, SWEEP_SHOWN + (TRAIN_GREEDY, TRAIN_TEST_GAP))])


def sft_info(seed: int) -> RunInfo:
    """The results-table identity of the final SFT model."""
    return RunInfo(run=f"sft-seed{seed}", algorithm="sft", init="pretrained", reward="none",
                   seed=seed, rollouts=0)


def pass_at_k(profile: Profile, seed: int) -> Section:
    """pass@k against k of the base, the first sweep checkpoint and the final SFT model."""
    run = stages.sft(profile, seed)
    base = stages.evaluate(profile, stages.base(profile, seed), "test", record=False)
    final = stages.evaluate(profile, run.checkpoint, "test", info=sft_info(seed))
    epoch = profile.sweep_epochs[0]
    first = stages.evaluate(profile, stages.checkpoint(run.run_dir, epoch), "test", record=False)
    fig = plots.pass_at_k_curves({"pretrained base": base.metrics[PASS_CURVE],
                                  f"SFT, {epoch} epoch(s)": first.metrics[PASS_CURVE],
                                  f"SFT, {profile.sft.epochs} epochs": final.metrics[PASS_CURVE]},
                                 title="pass@k on the test set (strict)")
    return section(profile, figures={"fig01_pass_at_k": fig})


def splits(profile: Profile) -> list[str]:
    """The evaluation splits: test, and the variations (SVAMP-like) split of the tiny world."""
    return ["test", "variations"] if profile.dataset == "tiny" else ["test"]


def final_table(evaluations: dict[str, EvalResult]) -> pd.DataFrame:
    """maj@1, maj@K and pass@K per split and grading mode."""
    rows = []
    for split, res in evaluations.items():
        m = res.metrics
        for mode in MODES:
            rows.append({"split": split, "grading": mode, "maj@1": m[metric(MAJ1, mode)],
                         f"maj@{m['k']}": m[metric(MAJK, mode)],
                         f"pass@{m['k']}": m[metric(PASSK, mode)]})
    return pd.DataFrame(rows)


def final_model(profile: Profile, seed: int) -> Section:
    """The final SFT checkpoint (every RL algorithm's SFT start) on each split, and its pass@K
    against maj@1 and diversity on the test set."""
    ckpt = stages.sft(profile, seed).checkpoint
    evaluations = {split: stages.evaluate(profile, ckpt, split, info=sft_info(seed))
                   for split in splits(profile)}
    table, m = final_table(evaluations), evaluations["test"].metrics
    ratio = f"{m[PASSK_STRICT] / m[MAJ1_STRICT]:.2f}x" if m[MAJ1_STRICT] else "n/a"
    summary = (f"SFT maj@1 {m[MAJ1_STRICT]:.3f} [{m[lo(MAJ1_STRICT)]:.3f}, "
               f"{m[hi(MAJ1_STRICT)]:.3f}]; "
               f"pass@{m['k']} {m[PASSK_STRICT]:.3f} ({ratio} maj@1); "
               f"solved with 2+ distinct correct signatures: {m[FRAC_MULTI_CORRECT]:.1%}")
    return section(profile, {"sft_final": table}, show=[table, summary])


PLATEAU_TOLERANCE = 0.02
"""Largest maj@1 change over the last swept epoch for SFT to count as levelled off."""


def targets_table(sweep: pd.DataFrame, base_maj1: float) -> pd.DataFrame:
    """The SFT start's targets, each with its measured value and whether it holds: train-test gap
    at most 10 points, test maj@1 35-60%, pass@K at least 1.5x maj@1, 30%+ of solved questions
    with 2+ distinct correct solutions, the base solving 5-25%, maj@1 levelled off (last epoch)."""
    last = sweep.iloc[-1]
    change = float(last[MAJ1_STRICT] - sweep.iloc[-2][MAJ1_STRICT]) if len(sweep) > 1 else float("nan")
    ratio = last[PASSK_STRICT] / last[MAJ1_STRICT] if last[MAJ1_STRICT] else float("nan")
    rows = [("train-test gap (greedy, training minus test) <= 0.10", last.get(TRAIN_TEST_GAP), "<=", 0.10),
            ("test maj@1 >= 0.35", last[MAJ1_STRICT], ">=", 0.35),
            ("test maj@1 <= 0.60", last[MAJ1_STRICT], "<=", 0.60),
            (f"pass@{int(last['k'])} / maj@1 >= 1.5", ratio, ">=", 1.5),
            ("solved with 2+ distinct correct >= 0.30", last[FRAC_MULTI_CORRECT], ">=", 0.30),
            ("base maj@1 >= 0.05", base_maj1, ">=", 0.05),
            ("base maj@1 <= 0.25", base_maj1, "<=", 0.25),
            (f"maj@1 change over the last epoch <= {PLATEAU_TOLERANCE} (levelled off)", abs(change),
             "<=", PLATEAU_TOLERANCE)]
    out = []
    for name, value, op, bound in rows:
        value = float("nan") if value is None else float(value)
        holds = value <= bound if op == "<=" else value >= bound
        out.append({"target": name, "value": value, "holds": bool(holds)})
    return pd.DataFrame(out)


def targets(profile: Profile, seed: int, sweep: pd.DataFrame) -> Section:
    """Whether the SFT start meets the targets RL needs (`targets_table`), from the last epoch of
    `sweep` (the `sft_sweep` table of `epochs_sweep`) and the base's test evaluation."""
    base = stages.evaluate(profile, stages.base(profile, seed), "test", record=False)
    table = targets_table(sweep.sort_values("epoch"), base.metrics[MAJ1_STRICT])
    held = int(table["holds"].sum())
    return section(profile, {"sft_targets": table},
                   show=[table, f"{held} of {len(table)} targets hold (seed {seed})"])
