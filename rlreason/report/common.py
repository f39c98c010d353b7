"""What every notebook section shares: the one-line set-up, where tables and figures go, and
`Section`, the tables, figures and text a section shows.

Tables are saved as CSV under `paper_figures/<profile>/tables/<name>.csv`, figures as PNG and PDF
under `paper_figures/<profile>/figures/<name>.{png,pdf}` (`$RLREASON_OUTPUT_DIR` replaces
`paper_figures`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots, stages
from ..io import atomic_write_text
from ..profiles import Profile


def setup(profile: str | Profile = "tiny", seed: int | None = None) -> Profile:
    """The notebook's profile with torch configured (`stages.setup`); prints where runs go."""
    profile = stages.setup(profile, seed)
    print(f"profile={profile.name} dataset={profile.dataset} runs in {profile.runs_dir}")
    return profile


def rng(seed: int) -> np.random.Generator:
    """The bootstrap generator of a notebook: one per notebook, passed to its sections in order,
    so that a notebook's confidence intervals are a fixed function of its seed."""
    return np.random.default_rng(seed)


def table_path(profile: Profile, name: str) -> Path:
    return profile.figures_dir / "tables" / f"{name}.csv"


def figure_path(profile: Profile, name: str) -> Path:
    """Where a figure goes (`plots.save_figure` adds .png and .pdf)."""
    return profile.figures_dir / "figures" / name


def save_table(profile: Profile, df: pd.DataFrame, name: str) -> Path:
    """Write a table as CSV (atomically)."""
    return atomic_write_text(table_path(profile, name), df.to_csv(index=False, float_format="%.4g"))


def columns(df: pd.DataFrame, cols) -> pd.DataFrame:
    """The columns of `cols` that `df` has, in that order (a table to display)."""
    return df[[c for c in cols if c in df]]


@dataclass
class Markdown:
    """Text a notebook renders as Markdown (a table written by `analysis.results.to_markdown`)."""

    text: str


@dataclass
class Section:
    """What one notebook section shows: tables (saved as CSV), figures (saved as PNG and PDF) and
    what is displayed, in order: DataFrames (rounded to 3 decimals), `Markdown` and lines of
    text."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    show: list = field(default_factory=list)

    def __getitem__(self, name: str):
        return self.tables[name] if name in self.tables else self.figures[name]

    def _ipython_display_(self) -> None:
        from IPython.display import Markdown as IPythonMarkdown
        from IPython.display import display

        for item in self.show:
            if isinstance(item, pd.DataFrame):
                display(item.round(3))
            elif isinstance(item, Markdown):
                display(IPythonMarkdown(item.text))
            else:
                print(item)

    def __repr__(self) -> str:
        return (f"Section(tables={list(self.tables)}, figures={list(self.figures)}, "
                f"{len(self.show)} items shown)")


def section(profile: Profile, tables: dict | None = None, figures: dict | None = None,
            show: list | None = None) -> Section:
    """Save the tables and figures of a section under the profile's output folder and return it.
    A figure of None (nothing to plot) is skipped."""
    tables = dict(tables or {})
    figures = {k: f for k, f in (figures or {}).items() if f is not None}
    for name, df in tables.items():
        save_table(profile, df, name)
    for name, fig in figures.items():
        plots.save_figure(fig, figure_path(profile, name))
    return Section(tables, figures, list(show or []))
