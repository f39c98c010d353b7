"""Figures of the study. Each function returns a matplotlib Figure (never shows it);
`save_figure` writes it as PNG and PDF."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))  # headless by default; notebooks render inline
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

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

    Rows with the same `x` (different seeds) are averaged with a 95% CI band by seaborn; with one
    row per `x` and no `hue`, a metric's `<metric>_lo`/`<metric>_hi` columns (its 95% CI over
    questions) are drawn as the band instead. Accuracy axes start at 0, so that a small change does
    not fill the panel.
    """
    labels = labels or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    one_per_x = hue is None and not df[x].duplicated().any()
    for ax, metric in zip(axes[0], metrics):
        sns.lineplot(data=df, x=x, y=metric, hue=hue, marker="o", ax=ax, errorbar=("ci", 95))
        band = [f"{metric}_lo", f"{metric}_hi"]
        if one_per_x and all(c in df and df[c].notna().all() for c in band):
            d = df.sort_values(x)
            ax.fill_between(d[x], d[band[0]], d[band[1]], alpha=0.2, label="95% CI")
        ax.set_ylim(bottom=0)
        ax.set(title=labels.get(metric, metric), xlabel=xlabel or x, ylabel="accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def lines_on_one_axis(df: pd.DataFrame, x: str, columns: dict[str, str], title: str,
                      xlabel: str | None = None, ylabel: str = "accuracy"):
    """Several columns of `df` against `x` on one panel (one line each, named by `columns`), so
    that their gap reads directly, e.g. training against test accuracy per SFT epoch."""
    long = df.melt(id_vars=[x], value_vars=list(columns), var_name="series", value_name=ylabel)
    long["series"] = long["series"].map(columns)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    sns.lineplot(data=long, x=x, y=ylabel, hue="series", marker="o", ax=ax, errorbar=("ci", 95))
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel)
    ax.legend(title=None)
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


def conditioning_gap(df: pd.DataFrame, metrics: Sequence[str] = ("maj1_strict", "pass1_strict"),
                     x: str = "variant", title: str = "prompting with the good vs the bad label",
                     labels: dict[str, str] | None = None):
    """RCRL's check that labels carry meaning: per run (`x`), the score with the good and with the
    bad label, one panel per metric; each pair is annotated with the paired gap and its 95% CI.

    `df` holds effect rows (`analysis.effects`): per run and `metric`, `a_mean` (good label),
    `b_mean` (bad label), and the gap good - bad as `gain`, `lo`, `hi`.
    """
    labels = labels or {}
    n_runs = df[x].nunique() if len(df) else 1
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.7 * n_runs * len(metrics) + 2, 3.8),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = df[df["metric"] == metric].reset_index(drop=True)
        long = rows.rename(columns={"a_mean": "good", "b_mean": "bad"}).melt(
            id_vars=[x], value_vars=["good", "bad"], var_name="label", value_name="value")
        sns.barplot(data=long, x=x, y="value", hue="label", hue_order=["good", "bad"],
                    palette={"good": "tab:green", "bad": "tab:red"}, ax=ax)
        for i, row in rows.iterrows():
            top = max(row["a_mean"], row["b_mean"])
            ax.annotate(f"{row['gain']:+.2f}\n[{row['lo']:+.2f}, {row['hi']:+.2f}]", (i, top),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        ax.set(title=labels.get(metric, metric), xlabel="", ylabel="accuracy")
        ax.set_ylim(0, min(1.0, ax.get_ylim()[1] * 1.25))
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def interval_points(df: pd.DataFrame, x: str, hue: str, title: str, ylabel: str, y: str = "mean",
                    low: str = "lo", high: str = "hi"):
    """Per `x` and `hue`, a point `y` with its interval [`low`, `high`] (dodged), and a line at 0:
    e.g. a paired gap with its CI per run and group."""
    fig, ax = plt.subplots(figsize=(1.8 * max(df[x].nunique(), 1) + 3, 3.8))
    hues = list(dict.fromkeys(df[hue]))
    xs = list(dict.fromkeys(df[x]))
    width = 0.6 / max(len(hues), 1)
    for j, (name, color) in enumerate(zip(hues, sns.color_palette("tab10", len(hues)))):
        rows = df[df[hue] == name]
        pos = [xs.index(v) - 0.3 + (j + 0.5) * width for v in rows[x]]
        ax.errorbar(pos, rows[y], yerr=[rows[y] - rows[low], rows[high] - rows[y]], fmt="o", color=color,
                    capsize=3, label=name)
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.set_xticks(range(len(xs)), xs, rotation=20)
    ax.set(title=title, ylabel=ylabel, xlabel="")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_diagnostics(df: pd.DataFrame, x: str, metrics: Sequence[str], title: str, hue: str | None = None,
                         labels: dict[str, str] | None = None, ncols: int = 3):
    """A grid of logged training values (reward, KL, approx_kl, clip fraction, ...) against `x`,
    one panel each, one line per `hue` (e.g. PPO's metrics.jsonl rows of several runs)."""
    labels = labels or {}
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        sns.lineplot(data=df, x=x, y=metric, hue=hue, ax=ax, legend=ax is axes.flat[0])
        ax.set(title=labels.get(metric, metric), xlabel=x, ylabel="")
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def reliability_diagram(tables: dict[str, pd.DataFrame], title: str = "ORM calibration"):
    """Reliability diagram: observed accuracy against mean predicted probability per bin, one line
    per set (`analysis.orm_report.reliability` tables), the diagonal for perfect calibration, and the bin counts."""
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 5.4), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / max(len(t) for t in tables.values()) / (len(tables) + 1)
    for i, (name, table) in enumerate(tables.items()):
        filled = table[table["count"] > 0]
        ax.plot(filled["mean_prob"], filled["frac_correct"], marker="o", label=name)
        ax_n.bar(table["bin_lo"] + (i + 0.5) * width, table["count"], width=width, label=name)
    ax.set(ylabel="fraction correct", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax_n.set(xlabel="ORM probability of correct", ylabel="samples")
    ax_n.set_yscale("symlog")
    fig.tight_layout()
    return fig


def accuracy_vs_k(curves: dict[str, dict[int, float]], title: str = "accuracy against k",
                  ylabel: str = "accuracy", style: dict[str, str] | None = None):
    """Several metrics against the number of samples k (log scale), e.g. maj@k, rerank@k and
    pass@k of one model; `curves` maps a label to {k: value}; `style` maps a label to a line style."""
    style = style or {}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", ls=style.get(name, "-"), label=name)
    ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel="k (samples per question)", ylabel=ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def maj_vs_pass(sweep: pd.DataFrame, points: pd.DataFrame, x: str = "maj1_strict", y: str = "passK_strict",
                title: str = "maj@1 against pass@K", xlabel: str = "maj@1", ylabel: str = "pass@K"):
    """The maj@1 / pass@K trade-off: the SFT-epochs sweep as a line (`sweep` with an `epoch` column),
    every other model as a point (`points` with `model`, and `start_x`/`start_y` for an arrow from
    its starting model when set)."""
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    if len(sweep):
        ax.plot(sweep[x], sweep[y], marker="o", color="grey", label="SFT epochs sweep")
        for _, r in sweep.iterrows():
            ax.annotate(f"{int(r['epoch'])} ep", (r[x], r[y]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="grey")
    palette = sns.color_palette("tab10" if len(points) <= 10 else "husl", max(len(points), 1))
    for color, (_, r) in zip(palette, points.iterrows()):
        ax.scatter(r[x], r[y], color=color, label=r["model"], zorder=3)
        if pd.notna(r.get("start_x")) and pd.notna(r.get("start_y")):
            ax.annotate("", (r[x], r[y]), (r["start_x"], r["start_y"]),
                        arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.6})
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def diversity(df: pd.DataFrame, x: str = "model", title: str = "distinct correct solutions"):
    """Per model: distinct correct operation signatures per solved question, and the share of
    solved questions with 2+ of them (`analysis.coverage.diversity` rows)."""
    fig, axes = plt.subplots(1, 2, figsize=(1.1 * len(df) + 6, 3.8))
    for ax, col, label in zip(axes, ("distinct_per_solved", "frac_multi_correct"),
                              ("distinct correct per solved question", "solved with 2+ distinct correct")):
        sns.barplot(data=df, x=x, y=col, ax=ax, color="tab:blue")
        ax.set(title=label, xlabel="", ylabel="")
        ax.tick_params(axis="x", rotation=45)
        for lbl in ax.get_xticklabels():
            lbl.set_horizontalalignment("right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
