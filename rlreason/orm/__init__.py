"""The outcome reward model (ORM): a verifier that predicts whether a solution will be correct.

- `orm.model`: the model (a policy body with a scalar head), its checkpoint (`save_orm`,
  `load_orm`) and `ORMScorer`, the trained ORM as a batched scorer for rerank@K and the ORM reward.
- `orm.train`: its data (`collect_orm_data`: the SFT policy's labelled samples, split by question)
  and its training loop (`train_orm`).
- `orm.bound`: a rule-based verifier (`ArithmeticScorer`: the calculations are right and the answer
  follows from them), measured beside the ORM to show how much signal the text carries.
"""
from __future__ import annotations

from .bound import ArithmeticScorer, arithmetic_checks, arithmetic_score
from .model import HEAD_FILE, INFO_FILE, ORM, ORMScorer, completion_ids, load_orm, save_orm
from .train import (
    ORMExample,
    collect_orm_data,
    generator_seed,
    load_orm_data,
    save_orm_data,
    split_questions,
    train_orm,
)

__all__ = ["HEAD_FILE", "INFO_FILE", "ORM", "ArithmeticScorer", "ORMExample", "ORMScorer",
           "arithmetic_checks", "arithmetic_score", "collect_orm_data", "completion_ids",
           "generator_seed", "load_orm", "load_orm_data", "save_orm", "save_orm_data",
           "split_questions", "train_orm"]
