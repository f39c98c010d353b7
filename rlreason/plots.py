"""Figures of the study. Each function returns a matplotlib Figure (never shows it);
`save_figure` writes it as PNG and PDF."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))  # headless by default; notebooks render inline
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid")


def save_figure(fig, path: str | os.PathLike) -> list[Path]:
    """Save `fig` as `<path>.png` and `<path>.pdf` (any suffix of `path` is replaced)."""
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".pdf"):
        target = base.with_suffix(ext)
        tmp = target.with_name(f".{target.stem}.tmp{ext}")  # atomic: temp file, then rename
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, target)
        out.append(target)
    return out


def training_curve(rows: Sequence[dict], title: str = "training loss", x: str = "step",
                   y: str = "loss"):
    """Loss (or any logged value) against optimizer steps from a metrics.jsonl."""
    df = pd.DataFrame([r for r in rows if y in r and x in r])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=df, x=x, y=y, ax=ax)
    ax.set(title=title, xlabel=x, ylabel=y)
    fig.tight_layout()
    return fig


def metric_sweep(df: pd.DataFrame, x: str, metrics: Sequence[str], title: str, hue: str | None = None,
                 xlabel: str | None = None, labels: dict[str, str] | None = None):
    """Several metrics (one panel each) against `x`, e.g. SFT epochs or cumulative rollouts.

    Rows with the same `x` (different seeds) are averaged with a 95% CI band by seaborn.
    """
    labels = labels or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sns.lineplot(data=df, x=x, y=metric, hue=hue, marker="o", ax=ax, errorbar=("ci", 95))
        ax.set(title=labels.get(metric, metric), xlabel=xlabel or x, ylabel="accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pass_at_k_curves(curves: dict[str, dict[int, float]], title: str = "pass@k"):
    """pass@k against k (log scale) for several models; `curves` maps a label to {k: pass@k}."""
    rows = [{"model": name, "k": int(k), "pass@k": v} for name, c in curves.items() for k, v in c.items()]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=pd.DataFrame(rows), x="k", y="pass@k", hue="model", marker="o", ax=ax)
    ax.set_xscale("log", base=2)
    ax.set(title=title)
    fig.tight_layout()
    return fig


def bar_metrics(df: pd.DataFrame, x: str, metrics: Sequence[str], title: str, labels: dict[str, str] | None = None):
    """Grouped bars: one group per row label in `x`, one bar per metric."""
    labels = labels or {}
    long = df.melt(id_vars=[x], value_vars=list(metrics), var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(lambda m: labels.get(m, m))
    fig, ax = plt.subplots(figsize=(1.6 * len(df) + 3, 3.8))
    sns.barplot(data=long, x=x, y="value", hue="metric", ax=ax, errorbar=("ci", 95))
    ax.set(title=title, ylabel="accuracy", xlabel="")
    fig.tight_layout()
    return fig


def histogram(values: Sequence[float], title: str, xlabel: str, discrete: bool = True):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.histplot(x=list(values), discrete=discrete, ax=ax)
    ax.set(title=title, xlabel=xlabel)
    fig.tight_layout()
    return fig
