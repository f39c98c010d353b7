"""The tiny world: determinism, disjoint splits, every reference solution computes its answer."""
from __future__ import annotations

import pytest

from rlreason.grading import extract_strict
from rlreason.steps import find_calculations, operation_signature
from rlreason.world import FAMILIES, WorldConfig, build_world, render_solution, world_statistics

SMALL = WorldConfig(n_sft=200, n_dev=40, n_test=80, n_variations=60, n_pretrain=300)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


def test_same_seed_same_world_and_other_seed_differs(world):
    again = build_world(SMALL)
    assert [p.to_dict() for p in again.test] == [p.to_dict() for p in world.test]
    assert again.pretrain == world.pretrain
    other = build_world(WorldConfig(**{**SMALL.__dict__, "seed": 1}))
    assert [p.question for p in other.test] != [p.question for p in world.test]


def test_split_sizes_and_questions_never_repeat(world):
    assert (len(world.sft), len(world.dev), len(world.test), len(world.variations)) == (200, 40, 80, 60)
    questions = [p.question for s in (world.sft, world.dev, world.test, world.variations) for p in s]
    assert len(set(questions)) == len(questions)
    pretrain_questions = {d.split("\n")[0] for d in world.pretrain if d.startswith("Question:")}
    assert not pretrain_questions & {f"Question: {q}" for q in questions}


def check_every_reference_and_path(world):
    for split in ("sft", "dev", "test", "variations"):
        for p in world.split(split):
            assert extract_strict(p.solution) == p.answer, p.id
            calcs = find_calculations(p.solution)
            assert calcs and all(c.value == c.claimed for c in calcs), p.id
            assert calcs[-1].claimed == p.answer
            for path in world.paths[p.id]:
                text = render_solution(path, int(p.answer))
                assert all(c.value == c.claimed for c in find_calculations(text)), (p.id, text)
                assert path[-1][3] == p.answer


def test_every_reference_and_every_path_computes_its_answer(world):
    check_every_reference_and_path(world)


def test_families_are_balanced_and_solutions_are_diverse(world):
    stats = {row["split"]: row for row in world_statistics(world)}
    assert all(stats["test"][f] == 20 for f in FAMILIES)
    assert stats["test"]["frac_2plus_signatures"] > 0.9
    # references are drawn among paths, so the SFT data is not canonical
    sigs = {operation_signature(p.solution) for p in world.sft if p.source == "tiny/boxes"}
    assert len(sigs) > 10


def test_pretraining_corpus_has_errors_and_only_its_families(world):
    problems = [d for d in world.pretrain if d.startswith("Question:")]
    statements = [d for d in world.pretrain if not d.startswith("Question:")]
    assert statements and problems
    wrong = 0
    for doc in problems:
        assert "boxes" not in doc.split("\n")[0] or "holds" not in doc  # boxes family left out
        calcs = find_calculations(doc.split("Answer:")[1])
        wrong += any(c.value != c.claimed for c in calcs)
    assert 0.2 < wrong / len(problems) < 0.6


def test_unknown_split_is_a_clear_error(world):
    with pytest.raises(ValueError, match="unknown tiny-world split 'nope'"):
        world.split("nope")


def test_value_scale_widens_the_numbers_and_keeps_every_path_right(world):
    scaled = build_world(WorldConfig(**{**SMALL.__dict__, "value_scale": 2.5}))
    check_every_reference_and_path(scaled)

    def largest_total(w):
        return max(p.answer for p in w.sft if p.source == "tiny/totals")

    assert largest_total(scaled) > 1.5 * largest_total(world)  # totals: 3-4 values up to 40 vs 100


@pytest.mark.parametrize("scale", [0.5, "2", True])
def test_value_scale_below_one_or_not_a_number_is_a_clear_error(scale):
    with pytest.raises(ValueError, match="value_scale"):
        WorldConfig(value_scale=scale)
