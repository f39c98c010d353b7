"""The notebooks' sections: one module per notebook, one function per section, each returning the
tables and figures that section shows (saved under `paper_figures/<profile>/`).

- `world` (00), `sft` (01), `orm` (02), `ei` (03), `ppo` (04), `rcrl` (05), `exploration` (06),
  `claims` (07);
- `setup(PROFILE, SEED)`: the profile, with torch configured; `rng(SEED)`: a notebook's bootstrap
  generator, passed to its sections in order.
"""
from __future__ import annotations

from . import claims, ei, exploration, orm, ppo, rcrl, sft, world
from .common import Markdown, Section, figure_path, rng, save_table, section, setup, table_path

__all__ = ["Markdown", "Section", "claims", "ei", "exploration", "figure_path", "orm", "ppo",
           "rcrl", "rng", "save_table", "section", "setup", "sft", "table_path", "world"]
