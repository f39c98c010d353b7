"""Effects: one model minus another on the same questions, with a paired bootstrap 95% CI.

Every effect is a row with the same columns: `label` (`a - b`, in words), `metric`, the caller's
identity columns, `gain` (mean of a - b over the shared questions), `lo`, `hi` (its 95% CI),
`n_questions`, `a_mean` and `b_mean`. `gain` is THE function; `gains_over_start` (a model minus
its starting model) and the claim-specific tables below are built from it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import INITS
from ..metrics import paired_difference_ci
from ..names import MAJ1_STRICT, PASSK_STRICT, pass_at
from ..names import label as metric_label
from .coverage import with_pass1, with_pass_at
from .results import RL_ALGORITHMS, init_model, load_questions, progress, rows_of

EFFECT_COLUMNS = ["label", "metric", "gain", "lo", "hi", "n_questions", "a_mean", "b_mean"]


def paired_gain(a: pd.DataFrame, b: pd.DataFrame, metric: str, rng: np.random.Generator,
                n_boot: int = 1000) -> dict:
    """`a` minus `b` on a per-question metric (e.g. `maj1_strict`, `passK_strict`), paired over
    their shared questions, with a bootstrap 95% CI: {gain, lo, hi, n_questions}."""
    x, y = a.set_index("id")[metric], b.set_index("id")[metric]
    ids = x.index.intersection(y.index)
    if not len(ids):
        return {"gain": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_questions": 0}
    ci = paired_difference_ci(x.loc[ids].astype(float), y.loc[ids].astype(float), rng,
                              n_boot=n_boot)
    return {"gain": ci.mean, "lo": ci.low, "hi": ci.high, "n_questions": len(ids)}


def gain(label: str, a: pd.DataFrame, b: pd.DataFrame, metric: str, rng: np.random.Generator,
         n_boot: int = 1000, **info) -> dict:
    """One effect row (see the module doc): `a` minus `b` on `metric`, with `info` columns."""
    return {"label": label, "metric": metric, **info, **paired_gain(a, b, metric, rng, n_boot),
            "a_mean": float(a[metric].mean()), "b_mean": float(b[metric].mean())}


def gains_over_start(model: pd.DataFrame, start: pd.DataFrame, metrics: Sequence[str],
                     rng: np.random.Generator, n_boot: int = 1000, name: str = "model",
                     start_name: str = "start", **info) -> list[dict]:
    """The gain of a model over its starting model on each metric (effect rows, in order);
    `pass1_strict` (the share of correct samples, comparable at any K) is derived when asked."""
    if pass_at(1) in metrics:
        model, start = with_pass1(model), with_pass1(start)
    return [gain(f"{name} - {start_name} {metric_label(m, orm=False)}", model, start, m, rng,
                 n_boot, **info) for m in metrics]


def effects_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Effect rows as a DataFrame (the effect columns even when there are none)."""
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=EFFECT_COLUMNS)


# ---- the claims' effects -------------------------------------------------------------------------


def vs_init_effects(final: pd.DataFrame, pqs: dict, rng: np.random.Generator, n_boot: int = 1000,
                    metrics: Sequence[str] = (MAJ1_STRICT, PASSK_STRICT)) -> pd.DataFrame:
    """Every RL final model minus its starting model (paired over questions), per metric. When
    the two were evaluated with different K, pass@K is compared as pass@k at the smaller K."""
    rows = []
    for _, r in final[final["algorithm"].isin(RL_ALGORITHMS)].iterrows():
        start = init_model(r, list(pqs))
        if start is None:
            continue
        a, b = pqs[r["model"]], pqs[start]
        k = min(int(a["k"].min()), int(b["k"].min()))
        for metric in metrics:
            name = metric.split("_")[0]
            if metric.startswith("passK") and int(a["k"].min()) != int(b["k"].min()):
                a, b, metric = with_pass_at(a, k), with_pass_at(b, k), pass_at(k)
                name = f"pass@{k}"
            rows.append(gain(f"{r['model']} - {start} {name}", a, b, metric, rng, n_boot,
                             model=r["model"], algorithm=r["algorithm"], init=r["init"],
                             reward=r["reward"], k=k, main=bool(r.get("main", True))))
    return pd.DataFrame(rows)


def sft_epoch_effects(sweep: pd.DataFrame, runs_dir: str | Path, rng: np.random.Generator,
                      n_boot: int = 1000,
                      metrics: Sequence[str] = (MAJ1_STRICT, PASSK_STRICT)) -> pd.DataFrame:
    """The SFT-epochs sweep's last checkpoint minus its first, paired over questions (the SFT
    half of C2: maj@1 should rise, pass@K fall)."""
    if len(sweep) < 2:
        return pd.DataFrame()
    first, last = sweep.iloc[0], sweep.iloc[-1]
    a, b = load_questions(runs_dir, last), load_questions(runs_dir, first)
    if a is None or b is None:
        return pd.DataFrame()
    name = f"sft {int(last['epoch'])} - {int(first['epoch'])} ep"
    return pd.DataFrame([gain(f"{name} {m.split('_')[0]}", a, b, m, rng, n_boot, model="sft",
                              algorithm="sft",
                              init=first["init"], reward="none") for m in metrics])


def saturation_effects(results: pd.DataFrame, runs_dir: str | Path, dataset: str,
                       rng: np.random.Generator, n_boot: int = 1000, algorithm: str = "ei",
                       metric: str = PASSK_STRICT) -> pd.DataFrame:
    """Per sparse-reward run of `algorithm`: `metric` at its last evaluation minus its first
    (paired): near 0 when pass@K saturates after the first round (C6)."""
    df = rows_of(results, dataset, algorithm=algorithm, reward="sparse")
    rows = []
    for run, group in (df.groupby("run") if len(df) else []):
        group = group.assign(_p=progress(group)).sort_values(["rollouts", "_p"])
        first, last = group.iloc[0], group.iloc[-1]
        if len(group) < 2:
            continue
        a, b = load_questions(runs_dir, last), load_questions(runs_dir, first)
        if a is not None and b is not None:
            rows.append(gain(f"{run}: {metric.split('_')[0]} step {int(last['_p'])} - step "
                             f"{int(first['_p'])}", a, b, metric, rng, n_boot, run=run,
                             init=first["init"]))
    return pd.DataFrame(rows)


def combine(pqs: Sequence[pd.DataFrame], signs: Sequence[int], metric: str) -> pd.DataFrame:
    """Per question, the signed sum of `metric` over several models (shared questions only)."""
    cols = [pq.set_index("id")[metric].astype(float) * s for pq, s in zip(pqs, signs)]
    total = pd.concat(cols, axis=1, join="inner").sum(axis=1)
    return pd.DataFrame({"id": total.index, metric: total.to_numpy()})


def comparisons(results: pd.DataFrame, runs_dir: str | Path, dataset: str, final: pd.DataFrame,
                pqs: dict, rng: np.random.Generator, n_boot: int = 1000,
                metric: str = MAJ1_STRICT) -> pd.DataFrame:
    """Paired comparisons between models for the claims table (`kind` column):
    - `algorithm`: EI minus each other RL algorithm, same init, sparse reward (C1);
    - `efficiency`: EI minus PPO, same init, sparse reward, at their final rollouts (C3);
    - `convergence`: each sparse EI/PPO run's last evaluation minus its previous one (C3);
    - `reward`: dense / ORM minus sparse, same algorithm and init, at the same rollouts when
      the sparse run was evaluated there (C4);
    - `gap_change`: (RL from SFT - RL from pretrained) - (SFT - base), per algorithm (C5)."""
    rows = []
    by = {(r["algorithm"], r["init"], r["reward"]): r for _, r in final.iterrows()
          if r["model"] in pqs and r.get("main", True)}
    for init in INITS:
        ei = by.get(("ei", init, "sparse"))
        for algo in ("ppo", "rcrl"):
            other = by.get((algo, init, "sparse"))
            if ei is None or other is None:
                continue
            a, b = pqs[ei["model"]], pqs[other["model"]]
            rows.append(gain(f"EI - {algo.upper()} ({init})", a, b, metric, rng, n_boot,
                             kind="algorithm"))
            if algo == "ppo":
                rows.append(gain(f"EI ({int(ei['rollouts']):,} rollouts) - PPO "
                                 f"({int(other['rollouts']):,}) ({init})", a, b, metric, rng,
                                 n_boot, kind="efficiency"))
    runs = rows_of(results, dataset, algorithm=["ei", "ppo"], reward="sparse")
    for run, group in (runs.groupby("run") if len(runs) else []):
        group = group.assign(_p=progress(group)).sort_values(["rollouts", "_p"])
        if len(group) < 2:
            continue
        last = load_questions(runs_dir, group.iloc[-1])
        prev = load_questions(runs_dir, group.iloc[-2])
        if last is not None and prev is not None:
            rows.append(gain(f"{run}: {int(group.iloc[-1]['rollouts']):,} - "
                             f"{int(group.iloc[-2]['rollouts']):,} rollouts", last, prev, metric,
                             rng, n_boot, kind="convergence"))
    for (algo, init, reward), r in by.items():
        sparse = by.get((algo, init, "sparse"))
        if reward in ("sparse", "none") or sparse is None or algo not in RL_ALGORITHMS:
            continue
        same = rows_of(results, dataset, run=sparse["run"])
        same = same[same["rollouts"] == r["rollouts"]] if len(same) else same
        b = load_questions(runs_dir, same.iloc[-1]) if len(same) else None
        b = b if b is not None else pqs[sparse["model"]]
        rows.append(gain(f"{algo} {init}: {reward} - sparse", pqs[r["model"]], b, metric, rng,
                         n_boot, kind="reward"))
    for algo in RL_ALGORITHMS:
        s, p = by.get((algo, "sft", "sparse")), by.get((algo, "pretrained", "sparse"))
        if s is None or p is None or "sft" not in pqs or "base" not in pqs:
            continue
        after = combine([pqs[s["model"]], pqs[p["model"]]], [1, -1], metric)
        before = combine([pqs["sft"], pqs["base"]], [1, -1], metric)
        rows.append(gain(f"{algo.upper()}: gap after - gap before", after, before, metric, rng,
                         n_boot, kind="gap_change"))
    cols = ["kind", "label", "metric", "gain", "lo", "hi", "n_questions", "a_mean", "b_mean"]
    return pd.DataFrame(rows, columns=cols) if not rows else pd.DataFrame(rows)[cols]
