"""Aggregation of the study's outputs for notebooks 06 and 07 (pandas/numpy, no torch).

Two inputs, both written by notebooks 00-05:
- the **results table** (`evaluation.load_results(profile.results_path)`): one row per evaluated
  checkpoint (run, algorithm, init, reward, dataset, rollouts, checkpoint folder name, metrics);
- the saved **evaluation rollouts** next to each checkpoint
  (`<runs_dir>/<run>/<checkpoint>/eval-<split>[-<label>]-rollouts.jsonl`, rows
  {id, answer, greedy, samples, mean_len}), from which per-question numbers are recomputed.

The claims helpers turn measured effects with confidence intervals into verdicts: a verdict is
always computed from the interval, never written by hand.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .evaluation import distinct_correct_signatures, grade_texts
from .io import read_jsonl
from .metrics import maj_at_k, paired_difference_ci, pass_at_k_curve

STEP_COLUMNS = ("epoch", "round", "update")  # training progress columns of the results table
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


# ---- the results table ---------------------------------------------------------------------------


def split_of(dataset: str) -> str:
    """`tiny-test` -> `test`, `gsm8k-variations` -> `variations`."""
    return str(dataset).split("-", 1)[-1]


def checkpoint_step(name) -> float:
    """The training step in a checkpoint folder's name: `epoch_02` -> 2, `update_0010` -> 10,
    `final` -> NaN."""
    m = re.search(r"(\d+)$", str(name))
    return float(m.group(1)) if m else float("nan")


def _progress(df: pd.DataFrame) -> pd.Series:
    """Training progress of each row: the step in its checkpoint's name, else the first step
    column (epoch, round, update) that is set, else 0."""
    step = pd.Series(0.0, index=df.index)
    for col in reversed([c for c in STEP_COLUMNS if c in df]):
        step = pd.to_numeric(df[col], errors="coerce").fillna(step)
    if "checkpoint" in df:
        step = df["checkpoint"].map(checkpoint_step).fillna(step)
    return step


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
                   _step=_progress(df), _order=np.arange(len(df)))
    df = df.sort_values(["_rollouts", "_step", "_order"]).groupby(["run", "dataset"], as_index=False).tail(1)
    return df.drop(columns=["_rollouts", "_step", "_order"]).sort_values(
        ["dataset", "init", "algorithm", "reward", "run"]).reset_index(drop=True)


def model_label(row) -> str:
    """A short name of a results row's model: `base`, `sft` or `<algorithm> <init>/<reward>`."""
    algo = row.get("algorithm")
    if algo == "base":
        return "base"
    if algo in ("base", "sft"):
        return str(algo)
    return f"{algo} {row.get('init')}/{row.get('reward')}"


def rollouts_path(runs_dir: str | Path, row) -> Path | None:
    """The evaluation rollouts of a results row, or None when they cannot be found."""
    split = split_of(row["dataset"])
    label = row.get("label")
    name = f"eval-{split}-{label}-rollouts.jsonl" if isinstance(label, str) else f"eval-{split}-rollouts.jsonl"
    runs_dir = Path(runs_dir)
    for folder in (runs_dir / str(row["run"]) / str(row["checkpoint"]), runs_dir / str(row["checkpoint"]), runs_dir):
        if (folder / name).exists():
            return folder / name
    return None


# ---- per-question numbers from rollouts ------------------------------------------------------------


def per_question(rollouts: Iterable[dict]) -> pd.DataFrame:
    """One row per question: k, greedy correctness, correct-sample counts and maj@K (strict and
    flexible), and the number of distinct correct operation signatures (strict)."""
    rows = []
    for r in rollouts:
        samples, ref = list(r["samples"]), float(r["answer"])
        graded, greedy = grade_texts(samples, ref), grade_texts([r["greedy"]], ref)
        row = {"id": r["id"], "k": len(samples)}
        for mode in ("strict", "flexible"):
            row[f"maj1_{mode}"] = bool(greedy[f"correct_{mode}"][0])
            row[f"n_correct_{mode}"] = int(sum(graded[f"correct_{mode}"]))
            row[f"majK_{mode}"] = bool(maj_at_k([graded[f"answers_{mode}"]], [ref])[0])
            row[f"passK_{mode}"] = row[f"n_correct_{mode}"] > 0
        row["distinct_correct"] = distinct_correct_signatures(samples, graded["correct_strict"])
        rows.append(row)
    return pd.DataFrame(rows)


def load_per_question(runs_dir: str | Path, row) -> pd.DataFrame | None:
    """`per_question` of a results row's saved rollouts (None when they are missing)."""
    path = rollouts_path(runs_dir, row)
    return per_question(read_jsonl(path)) if path is not None else None


def pass_curve(pq: pd.DataFrame, mode: str = "strict", ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean unbiased pass@k over questions for k = 1..K (or `ks`)."""
    n = pq["k"].to_numpy(dtype=int)
    ks = ks or range(1, int(n.min()) + 1)
    return pass_at_k_curve(n, pq[f"n_correct_{mode}"].to_numpy(dtype=int), list(ks))


def diversity(pq: pd.DataFrame) -> dict:
    """Distinct correct signatures per solved question (mean) and the share solved with 2+."""
    solved = pq["distinct_correct"] > 0
    d = pq.loc[solved, "distinct_correct"]
    return {"solved": int(solved.sum()), "n_questions": len(pq),
            "distinct_per_solved": float(d.mean()) if len(d) else 0.0,
            "frac_multi_correct": float((d >= 2).mean()) if len(d) else 0.0}


def coverage_beyond(model: pd.DataFrame, reference: pd.DataFrame, mode: str = "strict") -> dict:
    """Fraction of the shared questions that `model`'s samples solve and `reference`'s never do
    (`beyond`), and the reverse (`missed`); counts of each, and of the questions compared."""
    m = model.set_index("id")[f"n_correct_{mode}"] > 0
    r = reference.set_index("id")[f"n_correct_{mode}"] > 0
    ids = m.index.intersection(r.index)
    m, r = m.loc[ids], r.loc[ids]
    n = len(ids)
    beyond, missed = int((m & ~r).sum()), int((~m & r).sum())
    return {"n_questions": n, "n_solved": int(m.sum()), "n_beyond": beyond, "n_missed": missed,
            "beyond": beyond / n if n else float("nan"), "missed": missed / n if n else float("nan")}


def paired_gain(a: pd.DataFrame, b: pd.DataFrame, metric: str, rng: np.random.Generator,
                n_boot: int = 1000) -> dict:
    """`a` minus `b` on a per-question metric (e.g. `maj1_strict`, `passK_strict`), paired over
    their shared questions, with a bootstrap 95% CI: {gain, lo, hi, n_questions}."""
    x, y = a.set_index("id")[metric], b.set_index("id")[metric]
    ids = x.index.intersection(y.index)
    if not len(ids):
        return {"gain": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_questions": 0}
    ci = paired_difference_ci(x.loc[ids].astype(float), y.loc[ids].astype(float), rng, n_boot=n_boot)
    return {"gain": ci.mean, "lo": ci.low, "hi": ci.high, "n_questions": len(ids)}


# ---- verdicts ------------------------------------------------------------------------------------------


def ci_verdict(lo: float, hi: float, expect: str = "positive", margin: float = 0.05) -> str:
    """The verdict on an effect with 95% CI [lo, hi] given what the paper expects:
    - `positive` / `negative`: supported when the CI excludes 0 on the expected side, not
      supported when it excludes 0 on the other side, else inconclusive (CI includes 0);
    - `zero` (comparable, "helps little"): supported when the CI lies within +-margin, not
      supported when it lies entirely outside it, else inconclusive.
    A missing interval gives "no evidence"."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "no evidence"
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
    kinds = [v.split(" (")[0] for v in verdicts if v != "no evidence"]
    if not kinds:
        return "no evidence"
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


def evidence(name: str, gain: float, lo: float, hi: float, expect: str = "positive", margin: float = 0.05) -> dict:
    """One part of a claim: its measured effect (text) and its verdict."""
    return {"measured": fmt_effect(name, gain, lo, hi), "verdict": ci_verdict(lo, hi, expect, margin)}


def missing(what: str) -> dict:
    return {"measured": f"missing: {what}", "verdict": "no evidence"}


def claim_row(claim: str, paper: str, parts: Sequence[dict]) -> dict:
    """A row of the claims table from the evidence parts of one claim."""
    parts = list(parts) or [missing("no evidence found")]
    return {"claim": claim, "paper says": paper, "measured here": "; ".join(p["measured"] for p in parts),
            "verdict": combine_verdicts([p["verdict"] for p in parts])}


def pick(table: pd.DataFrame | None, **where) -> pd.Series | None:
    """The first row of `table` whose columns equal `where` (None if the table or row is missing)."""
    if table is None or not len(table):
        return None
    mask = pd.Series(True, index=table.index)
    for col, value in where.items():
        if col not in table:
            return None
        mask &= table[col].astype(str) == str(value)
    return table[mask].iloc[0] if mask.any() else None


def load_tables(tables_dir: str | Path, names: Sequence[str]) -> dict[str, pd.DataFrame | None]:
    """The CSV tables earlier notebooks saved (None for those that are missing or empty)."""
    out = {}
    for name in names:
        path = Path(tables_dir) / f"{name}.csv"
        try:
            out[name] = pd.read_csv(path) if path.exists() else None
        except pd.errors.EmptyDataError:
            out[name] = None
    return out


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A Markdown table (no extra dependency: pandas' to_markdown needs `tabulate`)."""
    def cell(x):
        if isinstance(x, float):
            return "" if math.isnan(x) else format(x, floatfmt)
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---- notebook 06: the final models and their exploration numbers ---------------------------------


def model_labels(final: pd.DataFrame) -> list[str]:
    """Unique `model_label`s of final rows: when several runs share algorithm/init/reward (e.g.
    EI's K sweep), the one with the most rollouts keeps the plain label (the main run) and the
    others get their run name appended."""
    labels = [model_label(r) for _, r in final.iterrows()]
    order = np.argsort(-pd.to_numeric(final["rollouts"], errors="coerce").fillna(0).to_numpy(), kind="stable")
    seen, out = set(), list(labels)
    for i in order:
        if labels[i] in seen:
            out[i] = f"{labels[i]} ({final.iloc[i]['run']})"
        seen.add(labels[i])
    return out


def final_models(results: pd.DataFrame, runs_dir: str | Path, dataset: str,
                 algorithms: Sequence[str] = ("base", "sft", "ei", "ppo", "rcrl")):
    """The final row of every run on `dataset` with a unique `model` label and `main` (False for
    the extra runs of an algorithm/init/reward, see `model_labels`), and their per-question tables
    recomputed from the saved rollouts (runs whose rollouts are missing are dropped)."""
    final = final_rows(results, dataset, algorithms)
    if not len(final):
        return final.assign(model=[], main=[]), {}
    final.insert(0, "model", model_labels(final))
    final["main"] = [m == model_label(r) for m, (_, r) in zip(final["model"], final.iterrows())]
    pqs = {r["model"]: load_per_question(runs_dir, r) for _, r in final.iterrows()}
    pqs = {m: pq for m, pq in pqs.items() if pq is not None}
    return final[final["model"].isin(list(pqs))].reset_index(drop=True), pqs


def init_model(row, models: Sequence[str]) -> str | None:
    """The model label of an RL row's starting point (`sft` or `base`) among `models`."""
    start = {"sft": "sft", "pretrained": "base"}.get(row.get("init"))
    return start if start in models else None


def bootstrap_fraction(flags, rng: np.random.Generator, n_boot: int = 1000) -> tuple[float, float, float]:
    """A fraction of questions with its percentile-bootstrap 95% CI."""
    from .metrics import bootstrap_ci

    flags = np.asarray(flags, dtype=float)
    if not flags.size:
        return float("nan"), float("nan"), float("nan")
    return tuple(bootstrap_ci(flags, rng, n_boot=n_boot))


def coverage_with_ci(model: pd.DataFrame, reference: pd.DataFrame, rng: np.random.Generator,
                     n_boot: int = 1000, mode: str = "strict") -> dict:
    """`coverage_beyond` with bootstrap CIs over the shared questions for both fractions."""
    out = coverage_beyond(model, reference, mode)
    m = model.set_index("id")[f"n_correct_{mode}"] > 0
    r = reference.set_index("id")[f"n_correct_{mode}"] > 0
    ids = m.index.intersection(r.index)
    for name, flags in (("beyond", m.loc[ids] & ~r.loc[ids]), ("missed", ~m.loc[ids] & r.loc[ids])):
        _, out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_fraction(flags.to_numpy(), rng, n_boot)
    return out


def sft_sweep_rows(results: pd.DataFrame, dataset: str, run: str | None = None) -> pd.DataFrame:
    """The SFT-epochs sweep in the results table: one row per evaluated SFT checkpoint of `run`
    (default: the first SFT run), with its `epoch` taken from the checkpoint's name."""
    df = results[(results["algorithm"] == "sft") & (results["dataset"] == dataset)] if len(results) else results
    if not len(df):
        return df
    run = run or sorted(df["run"].astype(str))[0]
    df = df[df["run"] == run].copy()
    df["epoch"] = df["checkpoint"].map(checkpoint_step)
    return df.sort_values("epoch").reset_index(drop=True)


def _effect(label: str, a: pd.DataFrame, b: pd.DataFrame, metric: str, rng, n_boot: int, **info) -> dict:
    return {"label": label, "metric": metric, **info, **paired_gain(a, b, metric, rng, n_boot),
            "a_mean": float(a[metric].mean()), "b_mean": float(b[metric].mean())}


def vs_init_effects(final: pd.DataFrame, pqs: dict, rng: np.random.Generator, n_boot: int = 1000,
                    metrics: Sequence[str] = ("maj1_strict", "passK_strict")) -> pd.DataFrame:
    """Every RL final model minus its starting model (paired over questions), per metric."""
    rows = []
    for _, r in final[final["algorithm"].isin(["ei", "ppo", "rcrl"])].iterrows():
        start = init_model(r, list(pqs))
        if start is None:
            continue
        a, b = pqs[r["model"]], pqs[start]
        k = min(int(a["k"].min()), int(b["k"].min()))
        for metric in metrics:
            name = metric.split("_")[0]
            if metric.startswith("passK") and int(a["k"].min()) != int(b["k"].min()):
                # different K: compare the unbiased pass@k at the smaller K instead
                a, b, metric = with_pass_at(a, k), with_pass_at(b, k), f"pass{k}_strict"
                name = f"pass@{k}"
            rows.append(_effect(f"{r['model']} - {start} {name}", a, b, metric, rng, n_boot, model=r["model"],
                                algorithm=r["algorithm"], init=r["init"], reward=r["reward"], k=k,
                                main=bool(r.get("main", True))))
    return pd.DataFrame(rows)


def saturation_effects(results: pd.DataFrame, runs_dir: str | Path, dataset: str, rng: np.random.Generator,
                       n_boot: int = 1000, algorithm: str = "ei", metric: str = "passK_strict") -> pd.DataFrame:
    """Per sparse-reward run of `algorithm`: `metric` at its last evaluation minus its first
    (paired): near 0 when pass@K saturates after the first round (C6)."""
    df = results[(results["dataset"] == dataset) & (results["algorithm"] == algorithm)
                 & (results["reward"] == "sparse")] if len(results) else results
    rows = []
    for run, group in (df.groupby("run") if len(df) else []):
        group = group.assign(_p=_progress(group)).sort_values(["rollouts", "_p"])
        first, last = group.iloc[0], group.iloc[-1]
        if len(group) < 2:
            continue
        a, b = load_per_question(runs_dir, last), load_per_question(runs_dir, first)
        if a is not None and b is not None:
            rows.append(_effect(f"{run}: {metric.split('_')[0]} step {int(last['_p'])} - step {int(first['_p'])}", a, b,
                                metric, rng, n_boot, run=run, init=first["init"]))
    return pd.DataFrame(rows)


def sft_epoch_effects(sweep: pd.DataFrame, runs_dir: str | Path, rng: np.random.Generator, n_boot: int = 1000,
                      metrics: Sequence[str] = ("maj1_strict", "passK_strict")) -> pd.DataFrame:
    """The SFT-epochs sweep's last checkpoint minus its first, paired over questions (the SFT
    half of C2: maj@1 should rise, pass@K fall)."""
    if len(sweep) < 2:
        return pd.DataFrame()
    first, last = sweep.iloc[0], sweep.iloc[-1]
    a, b = load_per_question(runs_dir, last), load_per_question(runs_dir, first)
    if a is None or b is None:
        return pd.DataFrame()
    return pd.DataFrame([_effect(f"sft {int(last['epoch'])} - {int(first['epoch'])} ep {m.split('_')[0]}", a, b, m,
                                 rng, n_boot, model="sft", algorithm="sft", init=first["init"], reward="none")
                         for m in metrics])


def with_pass_at(pq: pd.DataFrame, k: int, mode: str = "strict") -> pd.DataFrame:
    """`pq` with a `pass<k>_<mode>` column: each question's unbiased pass@k from its K samples."""
    from .metrics import pass_at_k

    out = pq.copy()
    out[f"pass{k}_{mode}"] = pass_at_k(pq["k"].to_numpy(dtype=int), pq[f"n_correct_{mode}"].to_numpy(dtype=int), k)
    return out


def _combine(pqs: Sequence[pd.DataFrame], signs: Sequence[int], metric: str) -> pd.DataFrame:
    """Per question, the signed sum of `metric` over several models (shared questions only)."""
    cols = [pq.set_index("id")[metric].astype(float) * s for pq, s in zip(pqs, signs)]
    total = pd.concat(cols, axis=1, join="inner").sum(axis=1)
    return pd.DataFrame({"id": total.index, metric: total.to_numpy()})


def comparisons(results: pd.DataFrame, runs_dir: str | Path, dataset: str, final: pd.DataFrame, pqs: dict,
                rng: np.random.Generator, n_boot: int = 1000, metric: str = "maj1_strict") -> pd.DataFrame:
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
    for init in ("sft", "pretrained"):
        ei = by.get(("ei", init, "sparse"))
        for algo in ("ppo", "rcrl"):
            other = by.get((algo, init, "sparse"))
            if ei is None or other is None:
                continue
            a, b = pqs[ei["model"]], pqs[other["model"]]
            rows.append(_effect(f"EI - {algo.upper()} ({init})", a, b, metric, rng, n_boot, kind="algorithm"))
            if algo == "ppo":
                rows.append(_effect(f"EI ({int(ei['rollouts']):,} rollouts) - PPO ({int(other['rollouts']):,}) ({init})",
                                    a, b, metric, rng, n_boot, kind="efficiency"))
    runs = results[(results["dataset"] == dataset) & results["algorithm"].isin(["ei", "ppo"])
                   & (results["reward"] == "sparse")] if len(results) else results
    for run, group in (runs.groupby("run") if len(runs) else []):
        group = group.assign(_p=_progress(group)).sort_values(["rollouts", "_p"])
        if len(group) < 2:
            continue
        last, prev = load_per_question(runs_dir, group.iloc[-1]), load_per_question(runs_dir, group.iloc[-2])
        if last is not None and prev is not None:
            rows.append(_effect(f"{run}: {int(group.iloc[-1]['rollouts']):,} - {int(group.iloc[-2]['rollouts']):,} rollouts",
                                last, prev, metric, rng, n_boot, kind="convergence"))
    for (algo, init, reward), r in by.items():
        sparse = by.get((algo, init, "sparse"))
        if reward in ("sparse", "none") or sparse is None or algo not in ("ei", "ppo", "rcrl"):
            continue
        same = results[(results["run"] == sparse["run"]) & (results["dataset"] == dataset)
                       & (results["rollouts"] == r["rollouts"])]
        b = load_per_question(runs_dir, same.iloc[-1]) if len(same) else None
        b = b if b is not None else pqs[sparse["model"]]
        rows.append(_effect(f"{algo} {init}: {reward} - sparse", pqs[r["model"]], b, metric, rng, n_boot, kind="reward"))
    for algo in ("ei", "ppo", "rcrl"):
        s, p = by.get((algo, "sft", "sparse")), by.get((algo, "pretrained", "sparse"))
        if s is None or p is None or "sft" not in pqs or "base" not in pqs:
            continue
        after = _combine([pqs[s["model"]], pqs[p["model"]]], [1, -1], metric)
        before = _combine([pqs["sft"], pqs["base"]], [1, -1], metric)
        rows.append(_effect(f"{algo.upper()}: gap after - gap before", after, before, metric, rng, n_boot,
                            kind="gap_change"))
    cols = ["kind", "label", "metric", "gain", "lo", "hi", "n_questions", "a_mean", "b_mean"]
    return pd.DataFrame(rows, columns=cols) if not rows else pd.DataFrame(rows)[cols]


# ---- notebook 07: the claims table ---------------------------------------------------------------------


def _effect_parts(df: pd.DataFrame | None, what: str, expect: str, margin: float, **where) -> list[dict]:
    """Evidence parts from the rows of an effects table (columns gain, lo, hi and a `label`)."""
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
        if r.get("a_mean") == 0 and r.get("b_mean") == 0:  # a floor effect is no evidence of equality
            part["verdict"] = f"{INCONCLUSIVE} (both at 0)"
        parts.append(part)
    return parts


def build_claims(tables: dict[str, pd.DataFrame | None], margin: float = 0.05) -> pd.DataFrame:
    """The claims table C1-C6 from the saved tables (`load_tables`): `ei_gains`, `ppo_init_gap`
    (notebooks 03-04), `exploration_gains`, `coverage_beyond_sft`, `ei_pass_saturation`
    (notebook 06) and `comparisons` (notebook 07's paired comparisons between final models).
    Every verdict comes from a 95% CI (`ci_verdict`); `margin` is the equivalence margin of the
    "comparable" / "helps little" claims. Missing evidence is reported as such."""
    t = {k: v for k, v in tables.items()}
    comp, expl = t.get("comparisons"), t.get("exploration_gains")
    rows = []

    ei = t.get("ei_gains")
    c1 = []
    r = pick(ei, init="sft", metric="maj1_strict")
    c1.append(evidence("EI(sft) - SFT maj@1", r["gain"], r["ci_low"], r["ci_high"]) if r is not None
              else missing("ei_gains (notebook 03)"))
    c1 += _effect_parts(comp, "EI vs other algorithms (comparisons)", "positive", margin,
                        kind="algorithm", metric="maj1_strict")
    rows.append(claim_row("C1", "all algorithms comparable; EI best in most settings (~+7 maj@1 over SFT at 7B)", c1))

    c2 = _effect_parts(expl, "RL vs its init (exploration_gains, notebook 06)", "positive", margin,
                       algorithm=["ei", "ppo", "rcrl"], init="sft", reward="sparse",
                       metric=["maj1_strict", "passK_strict"])
    c2 += _effect_parts(expl, "SFT last vs first epoch maj@1", "positive", margin, algorithm="sft", metric="maj1_strict")
    c2 += _effect_parts(expl, "SFT last vs first epoch pass@K", "negative", margin, algorithm="sft", metric="passK_strict")
    rows.append(claim_row("C2", "RL raises maj@1 and pass@K together; more SFT epochs raise maj@1 and lower pass@K", c2))

    c3 = _effect_parts(comp, "EI vs PPO at their final rollouts (comparisons)", "zero", margin,
                       kind="efficiency", metric="maj1_strict")
    c3 += _effect_parts(comp, "EI last vs previous round (comparisons)", "zero", margin,
                        kind="convergence", metric="maj1_strict")
    rows.append(claim_row("C3", "EI about as sample efficient as PPO; both converge fast (~10^4-10^6 rollouts)", c3))

    c4 = _effect_parts(comp, "dense/ORM vs sparse reward (comparisons)", "zero", margin,
                       kind="reward", metric="maj1_strict")
    rows.append(claim_row("C4", "dense and ORM rewards change final maj@1 little (dense may hurt slightly)", c4))

    c5 = _effect_parts(comp, "change of the SFT-pretrained gap (comparisons)", "negative", margin,
                       kind="gap_change", metric="maj1_strict")
    if c5[0]["verdict"] == "no evidence":
        gap = t.get("ppo_init_gap")
        a, b = pick(gap, stage="start"), pick(gap, stage="after ppo (sparse)")
        if a is not None and b is not None:
            c5 = [{"measured": f"PPO gap {a['gap']:+.3f} -> {b['gap']:+.3f} (no paired CI of the change)",
                   "verdict": "no evidence"}]
    rows.append(claim_row("C5", "RL narrows the gap between pretrained- and SFT-started models", c5))

    cov = t.get("coverage_beyond_sft")
    if cov is not None and len(cov):
        keep = cov["algorithm"].isin(["ei", "ppo", "rcrl"]) if "algorithm" in cov else True
        keep &= (cov["reference"] == "sft") if "reference" in cov else True
        keep &= (cov["main"].astype(str) != "False") if "main" in cov else True
        c6 = []
        for _, r in cov[keep].iterrows():
            part = evidence(f"{r['model']} beyond SFT", r["beyond"], r["beyond_lo"], r["beyond_hi"], "zero", margin)
            if r.get("n_solved") == 0:  # solving nothing is trivially "nothing beyond SFT"
                part["verdict"] = f"{INCONCLUSIVE} (solves nothing)"
            c6.append(part)
        c6 = c6 or [missing("RL rows of coverage_beyond_sft")]
    else:
        c6 = [missing("coverage_beyond_sft (notebook 06)")]
    c6 += _effect_parts(t.get("ei_pass_saturation"), "ei_pass_saturation (notebook 06)", "zero", margin)
    rows.append(claim_row("C6", "RL finds no solutions beyond SFT's; pass@K saturates early", c6))
    return pd.DataFrame(rows, columns=["claim", "paper says", "measured here", "verdict"])
