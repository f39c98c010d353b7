"""The results table and the per-question arrays of its rows (pandas/numpy, no torch).

Two inputs, both written by `evaluation.evaluate` during the stages:
- the **results table** (`evaluation.load_results(profile.results_path)`): one row per evaluated
  checkpoint (the identity columns of an `evaluation.RunInfo`, then the metrics);
- the **per-question arrays** saved beside each checkpoint's rollouts
  (`<runs_dir>/<run>/<checkpoint>/eval-<split>[-<label>]-questions.jsonl`), read here as one
  DataFrame per evaluation (`question_table`), never graded again.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation import EvalResult, read_questions
from ..names import (
    DISTINCT_CORRECT,
    FRAC_MULTI_CORRECT,
    MAJ1_STRICT,
    MAJK_STRICT,
    PASSK_FLEXIBLE,
    PASSK_STRICT,
)
from .coverage import diversity

STEP_COLUMNS = ("epoch", "round", "update")  # training progress columns of the results table
RL_ALGORITHMS = ("ei", "ppo", "rcrl")
ALGORITHMS = ("base", "sft", *RL_ALGORITHMS)


def split_of(dataset: str) -> str:
    """`tiny-test` -> `test`, `gsm8k-variations` -> `variations`."""
    return str(dataset).split("-", 1)[-1]


def checkpoint_step(name) -> float:
    """The training step in a checkpoint folder's name: `epoch_02` -> 2, `update_0010` -> 10,
    `final` -> NaN."""
    m = re.search(r"(\d+)$", str(name))
    return float(m.group(1)) if m else float("nan")


def progress(df: pd.DataFrame) -> pd.Series:
    """Training progress of each row: the step in its checkpoint's name, else the first step
    column (epoch, round, update) that is set, else 0."""
    step = pd.Series(0.0, index=df.index)
    for col in reversed([c for c in STEP_COLUMNS if c in df]):
        step = pd.to_numeric(df[col], errors="coerce").fillna(step)
    if "checkpoint" in df:
        step = df["checkpoint"].map(checkpoint_step).fillna(step)
    return step


def rows_of(results: pd.DataFrame, dataset: str | None = None, **where) -> pd.DataFrame:
    """The rows of `results` on `dataset` whose columns equal `where` (a list: any of its
    values)."""
    if not len(results):
        return results
    mask = pd.Series(True, index=results.index)
    if dataset is not None:
        mask &= results["dataset"] == dataset
    for col, value in where.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        mask &= results[col].isin(values) if col in results else False
    return results[mask]


def run_rows(results: pd.DataFrame, run: str, dataset: str) -> pd.DataFrame:
    """Every evaluation of one run on `dataset`, in training order (rollouts, then step)."""
    group = rows_of(results, dataset, run=run)
    if not len(group):
        return group
    group = group.assign(_p=progress(group)).sort_values(["rollouts", "_p"], kind="stable")
    return group.drop(columns="_p")


def final_rows(results: pd.DataFrame, dataset: str | None = None,
               algorithms: Sequence[str] | None = None) -> pd.DataFrame:
    """The last row of every run (largest `rollouts`, then largest epoch/round/update, then the
    latest appended) on `dataset` (all datasets when None), optionally only some algorithms.
    RCRL's bad-label evaluations (column `label` == "bad") are never final rows."""
    df = results.copy()
    if dataset is not None and len(df):
        df = df[df["dataset"] == dataset]
    if algorithms is not None and len(df):
        df = df[df["algorithm"].isin(list(algorithms))]
    if "label" in df:
        df = df[df["label"].isna() | (df["label"] == "good")]
    if not len(df):
        return df.reset_index(drop=True)
    df = df.assign(_rollouts=pd.to_numeric(df["rollouts"], errors="coerce").fillna(0),
                   _step=progress(df), _order=np.arange(len(df)))
    df = df.sort_values(["_rollouts", "_step", "_order"]).groupby(["run", "dataset"],
                                                                  as_index=False).tail(1)
    return df.drop(columns=["_rollouts", "_step", "_order"]).sort_values(
        ["dataset", "init", "algorithm", "reward", "run"]).reset_index(drop=True)


def model_label(row) -> str:
    """A short name of a results row's model: `base`, `sft` or `<algorithm> <init>/<reward>`, and
    ` [<variant>]` for a named variant or control (`ei sft/sparse [restart]`, `sft [control]`)."""
    algo = row.get("algorithm")
    label = str(algo) if algo in ("base", "sft") else f"{algo} {row.get('init')}/{row.get('reward')}"
    return f"{label} [{row.get('variant')}]" if is_variant(row) else label


def is_variant(row) -> bool:
    """Whether a results row measures a named variant or control (never a main run)."""
    variant = row.get("variant")
    return isinstance(variant, str) and bool(variant)


def model_labels(final: pd.DataFrame) -> list[str]:
    """Unique `model_label`s of final rows: when several runs share algorithm/init/reward (e.g.
    EI's K sweep), the one with the most rollouts keeps the plain label (the main run) and the
    others get their run name appended."""
    labels = [model_label(r) for _, r in final.iterrows()]
    order = np.argsort(-pd.to_numeric(final["rollouts"], errors="coerce").fillna(0).to_numpy(),
                       kind="stable")
    seen, out = set(), list(labels)
    for i in order:
        if labels[i] in seen:
            out[i] = f"{labels[i]} ({final.iloc[i]['run']})"
        seen.add(labels[i])
    return out


def init_model(row, models: Sequence[str]) -> str | None:
    """The model label of an RL row's starting point (`sft` or `base`) among `models`."""
    start = {"sft": "sft", "pretrained": "base"}.get(row.get("init"))
    return start if start in models else None


# ---- per-question arrays ------------------------------------------------------------------------

_TABLE_COLUMNS = ("maj1", "majK", "passK", "n_correct", "rerankK")


def question_table(rows: Sequence[dict]) -> pd.DataFrame:
    """One row per question from saved per-question rows (`evaluation.read_questions`): id, k,
    and per grading mode maj1, majK, passK, n_correct (and rerankK when scored);
    distinct_correct."""
    out = []
    for r in rows:
        row = {"id": r["id"], "k": int(r["k"])}
        for mode in ("strict", "flexible"):
            for kind in _TABLE_COLUMNS:
                if f"{kind}_{mode}" in r:
                    value = r[f"{kind}_{mode}"]
                    row[f"{kind}_{mode}"] = int(value) if kind == "n_correct" else bool(value)
        row[DISTINCT_CORRECT] = int(r[DISTINCT_CORRECT])
        out.append(row)
    return pd.DataFrame(out)


def result_table(result: EvalResult) -> pd.DataFrame:
    """`question_table` of an in-memory `EvalResult` (a stage's final evaluation)."""
    return question_table(result.questions())


def eval_name(row) -> str:
    """The `name` an evaluation of a results row was saved under: `<split>[-<label>]`."""
    split, label = split_of(row["dataset"]), row.get("label")
    return f"{split}-{label}" if isinstance(label, str) else split


def eval_dir(runs_dir: str | Path, row) -> Path | None:
    """The folder holding a results row's evaluation files, or None when it cannot be found."""
    runs_dir, name = Path(runs_dir), eval_name(row)
    for folder in (runs_dir / str(row["run"]) / str(row["checkpoint"]),
                   runs_dir / str(row["checkpoint"]), runs_dir):
        if (folder / f"eval-{name}-questions.jsonl").exists() or (
                folder / f"eval-{name}-rollouts.jsonl").exists():
            return folder
    return None


def load_questions(runs_dir: str | Path, row) -> pd.DataFrame | None:
    """The per-question table of a results row's evaluation (None when it is missing)."""
    folder = eval_dir(runs_dir, row)
    rows = read_questions(folder, eval_name(row)) if folder is not None else None
    return question_table(rows) if rows else None


def final_models(results: pd.DataFrame, runs_dir: str | Path, dataset: str,
                 algorithms: Sequence[str] = ALGORITHMS):
    """The final row of every run on `dataset` with a unique `model` label and `main` (False for
    the extra runs of an algorithm/init/reward, see `model_labels`), and their per-question
    tables (runs whose evaluation files are missing are dropped)."""
    final = final_rows(results, dataset, algorithms)
    if not len(final):
        return final.assign(model=[], main=[]), {}
    final.insert(0, "model", model_labels(final))
    final["main"] = [m == model_label(r) and not is_variant(r)
                     for m, (_, r) in zip(final["model"], final.iterrows())]
    pqs = {r["model"]: load_questions(runs_dir, r) for _, r in final.iterrows()}
    pqs = {m: pq for m, pq in pqs.items() if pq is not None}
    return final[final["model"].isin(list(pqs))].reset_index(drop=True), pqs


def main_runs(results: pd.DataFrame, dataset: str, algorithm: str, reward: str = "sparse",
              seed: int | None = None) -> dict[str, str]:
    """Per init, the main run of `algorithm` with `reward` on `dataset`: the one whose last row has
    the most rollouts (as in `model_labels`; the others are sweeps of the same setting)."""
    final = final_rows(rows_of(results, dataset, algorithm=algorithm, reward=reward,
                               **({"seed": seed} if seed is not None else {})))
    out: dict[str, str] = {}
    if not len(final):
        return out
    final = final.assign(_r=pd.to_numeric(final["rollouts"], errors="coerce").fillna(0))
    final = final[[not is_variant(r) for _, r in final.iterrows()]]
    for _, r in final.sort_values("_r", ascending=False, kind="stable").iterrows():
        out.setdefault(str(r["init"]), str(r["run"]))
    return out


def sft_sweep_rows(results: pd.DataFrame, dataset: str, run: str | None = None) -> pd.DataFrame:
    """The SFT-epochs sweep in the results table: one row per evaluated SFT checkpoint of `run`
    (default: the first SFT run), with its `epoch` taken from the checkpoint's name."""
    df = rows_of(results, dataset, algorithm="sft")
    if not len(df):
        return df
    run = run or sorted(df["run"].astype(str))[0]
    df = df[df["run"] == run].copy()
    df["epoch"] = df["checkpoint"].map(checkpoint_step)
    return df.sort_values("epoch").reset_index(drop=True)


def model_summary(final: pd.DataFrame, pqs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per final model: identity, K, the mean of its per-question metrics and its diversity."""
    cols = ["model", "algorithm", "init", "reward", "rollouts", "main", "k", MAJ1_STRICT,
            MAJK_STRICT, PASSK_STRICT, PASSK_FLEXIBLE, "solved", "n_questions",
            "distinct_per_solved", FRAC_MULTI_CORRECT]
    rows = []
    for _, r in final.iterrows():
        pq = pqs[r["model"]]
        ident = ("model", "algorithm", "init", "reward", "rollouts", "main")
        rows.append({**{c: r[c] for c in ident},
                     "k": int(pq["k"].min()),
                     **{m: pq[m].mean() for m in (MAJ1_STRICT, MAJK_STRICT, PASSK_STRICT,
                                                  PASSK_FLEXIBLE)},
                     **diversity(pq)})
    return pd.DataFrame(rows, columns=cols)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A Markdown table (no extra dependency: pandas' to_markdown needs `tabulate`)."""
    def cell(x):
        if isinstance(x, float):
            return "" if math.isnan(x) else format(x, floatfmt)
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
