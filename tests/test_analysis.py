"""rlreason.analysis on small hand-made results tables, rollouts and per-question arrays."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from rlreason.analysis import claims, coverage, effects
from rlreason.analysis import results as res
from rlreason.evaluation import grade_rollouts, question_rows, questions_path, read_questions
from rlreason.io import read_jsonl, write_jsonl

RIGHT, WRONG = "<<2+3=5>>5\n#### 5", "<<2*3=6>>6\n#### 6"
OTHER_RIGHT = "<<3+2=5>>5\n<<5*1=5>>5\n#### 5"  # a different operation signature


def rollout(qid, greedy, samples, answer=5.0):
    return {"id": qid, "answer": answer, "greedy": greedy, "samples": samples, "mean_len": 3.0}


def row(run, algorithm, init, reward, rollouts, checkpoint, dataset="tiny-test", **extra):
    return {"run": run, "algorithm": algorithm, "init": init, "reward": reward, "dataset": dataset,
            "rollouts": rollouts, "checkpoint": checkpoint, "k": 2, **extra}


def test_module_does_not_import_torch():
    code = ("import sys, rlreason.analysis.results, rlreason.analysis.effects, "
            "rlreason.analysis.coverage, rlreason.analysis.claims; assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_final_rows_takes_the_last_step_of_each_run():
    results = pd.DataFrame([
        row("ei-a", "ei", "sft", "sparse", 10, "round_01"),
        row("ei-a", "ei", "sft", "sparse", 20, "round_02"),
        row("ei-a", "ei", "sft", "sparse", 20, "round_02", dataset="tiny-variations"),
        row("sft-seed0", "sft", "pretrained", "none", 0, "epoch_02"),
        row("sft-seed0", "sft", "pretrained", "none", 0, "epoch_01"),  # appended later, earlier epoch
        row("rcrl-a", "rcrl", "sft", "sparse", 8, "round_01", label="good"),
        row("rcrl-a", "rcrl", "sft", "sparse", 8, "round_01", label="bad"),
    ])
    final = res.final_rows(results, "tiny-test")
    got = {r["run"]: r["checkpoint"] for _, r in final.iterrows()}
    assert got == {"ei-a": "round_02", "sft-seed0": "epoch_02", "rcrl-a": "round_01"}
    assert (final.loc[final["run"] == "rcrl-a", "label"] == "good").all()
    assert len(res.final_rows(results)) == 4  # both datasets
    assert list(res.final_rows(results, algorithms=["sft"])["run"]) == ["sft-seed0"]
    assert res.final_rows(results.iloc[:0], "tiny-test").empty


def test_model_labels_and_splits():
    assert res.model_label(pd.Series(row("x", "ppo", "sft", "dense", 1, "update_0001"))) == "ppo sft/dense"
    assert res.model_label(pd.Series(row("x", "sft", "pretrained", "none", 0, "epoch_02"))) == "sft"
    assert res.split_of("gsm8k-test") == "test" and res.split_of("tiny-variations") == "variations"
    assert res.checkpoint_step("update_0010") == 10 and math.isnan(res.checkpoint_step("final"))


def questions_of(rollouts):
    """Per-question rows as `evaluation.evaluate` saves them."""
    per_q = grade_rollouts([r["answer"] for r in rollouts], [r["greedy"] for r in rollouts],
                           [r["samples"] for r in rollouts])
    return question_rows([r["id"] for r in rollouts], per_q)


def test_per_question_pass_curve_and_diversity():
    pq = res.question_table(questions_of([
        rollout("q1", RIGHT, [RIGHT, OTHER_RIGHT, WRONG, "no answer"]),
        rollout("q2", WRONG, [WRONG, WRONG, WRONG, "the answer is 5"]),  # flexible-only correct
        rollout("q3", WRONG, [RIGHT, RIGHT, WRONG, WRONG]),
    ]))
    assert list(pq["n_correct_strict"]) == [2, 0, 2]
    assert list(pq["n_correct_flexible"]) == [2, 1, 2]
    assert list(pq["maj1_strict"]) == [True, False, False]
    assert list(pq["distinct_correct"]) == [2, 0, 1]
    assert list(pq["passK_strict"]) == [True, False, True]
    curve = coverage.pass_curve(pq)
    assert list(curve) == [1, 2, 3, 4]
    assert curve[1] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert curve[4] == pytest.approx(2 / 3)
    d = coverage.diversity(pq)
    assert d == {"solved": 2, "n_questions": 3, "distinct_per_solved": 1.5, "frac_multi_correct": 0.5}


def _pq(ids, n_correct, k=4, **cols):
    return pd.DataFrame({"id": ids, "k": k, "n_correct_strict": n_correct, **cols})


def test_coverage_beyond_both_directions():
    model = _pq(["a", "b", "c", "d"], [1, 0, 3, 0])
    sft = _pq(["a", "b", "c", "e"], [0, 2, 1, 4])  # "d" and "e" are not shared
    cov = coverage.coverage_beyond(model, sft)
    assert cov == {"n_questions": 3, "n_solved": 2, "n_beyond": 1, "n_missed": 1, "beyond": 1 / 3, "missed": 1 / 3}
    ci = coverage.coverage_with_ci(model, sft, np.random.default_rng(0), n_boot=200)
    assert ci["beyond_lo"] <= ci["beyond"] <= ci["beyond_hi"]
    same = coverage.coverage_beyond(sft, sft)
    assert same["beyond"] == 0 and same["missed"] == 0


def test_paired_gain_aligns_questions():
    a = pd.DataFrame({"id": ["x", "y", "z"], "m": [1, 1, 1]})
    b = pd.DataFrame({"id": ["z", "y", "w"], "m": [0, 0, 1]})
    g = effects.paired_gain(a, b, "m", np.random.default_rng(0), n_boot=100)
    assert g["n_questions"] == 2 and g["gain"] == 1.0 and g["lo"] == 1.0 and g["hi"] == 1.0


def test_ci_verdict_directional_and_equivalence():
    assert claims.ci_verdict(0.01, 0.2) == "supported"
    assert claims.ci_verdict(-0.2, -0.01) == "not supported (opposite sign)"
    assert claims.ci_verdict(-0.1, 0.1) == "inconclusive (CI includes 0)"
    assert claims.ci_verdict(-0.2, -0.01, expect="negative") == "supported"
    assert claims.ci_verdict(0.01, 0.2, expect="negative") == "not supported (opposite sign)"
    assert claims.ci_verdict(-0.03, 0.04, expect="zero", margin=0.05).startswith("supported")
    assert claims.ci_verdict(0.06, 0.2, expect="zero", margin=0.05).startswith("not supported")
    assert claims.ci_verdict(-0.01, 0.2, expect="zero", margin=0.05).startswith("inconclusive")
    assert claims.ci_verdict(float("nan"), 0.1) == "no evidence"
    with pytest.raises(ValueError):
        claims.ci_verdict(0, 1, expect="bigger")


def test_combine_verdicts():
    s, n, i, m = "supported", "not supported (opposite sign)", "inconclusive (CI includes 0)", "no evidence"
    assert claims.combine_verdicts([s, s]) == "supported"
    assert claims.combine_verdicts([s, m]) == "supported (some evidence missing)"
    assert claims.combine_verdicts([s, n]) == "mixed"
    assert claims.combine_verdicts([n, i]) == "not supported"
    assert claims.combine_verdicts([s, i]) == "partly supported (rest inconclusive)"
    assert claims.combine_verdicts([i, m]) == "inconclusive"
    assert claims.combine_verdicts([m]) == "no evidence"


def test_build_claims_from_tables_and_missing_evidence():
    tables = {
        "ei_gains": pd.DataFrame([{"init": "sft", "metric": "maj1_strict", "gain": 0.07, "lo": 0.02,
                                   "hi": 0.12}]),
        "exploration_gains": pd.DataFrame([
            {"label": "ei maj1", "algorithm": "ei", "init": "sft", "reward": "sparse", "metric": "maj1_strict",
             "gain": 0.05, "lo": 0.01, "hi": 0.09},
            {"label": "ei passK", "algorithm": "ei", "init": "sft", "reward": "sparse", "metric": "passK_strict",
             "gain": -0.1, "lo": -0.2, "hi": -0.02},
        ]),
        "coverage_beyond_sft": pd.DataFrame([{"model": "ei sft/sparse", "algorithm": "ei", "reference": "sft",
                                              "beyond": 0.01, "beyond_lo": 0.0, "beyond_hi": 0.03}]),
        "comparisons": pd.DataFrame([{"kind": "reward", "label": "ppo sft: dense - sparse", "metric": "maj1_strict",
                                      "gain": 0.0, "lo": -0.02, "hi": 0.02}]),
    }
    table = claims.build_claims(tables, margin=0.05).set_index("claim")
    assert list(table.index) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert table.loc["C1", "verdict"] == "supported (some evidence missing)"  # no algorithm comparisons
    assert "missing" in table.loc["C1", "measured here"]
    assert table.loc["C2", "verdict"] == "mixed"  # maj@1 up, pass@K down; SFT sweep missing
    assert table.loc["C3", "verdict"] == "no evidence"
    assert table.loc["C4", "verdict"] == "supported"
    assert "+0.000 [-0.020, +0.020]" in table.loc["C4", "measured here"]
    assert table.loc["C5", "verdict"] == "no evidence"
    assert table.loc["C6", "verdict"] == "supported (some evidence missing)"
    empty = claims.build_claims({})
    assert (empty["verdict"] == "no evidence").all()


def test_evaluations_on_disk_and_effects(tmp_path):
    runs = tmp_path / "runs"
    sft_rollouts = [rollout("q1", RIGHT, [RIGHT, WRONG]), rollout("q2", WRONG, [WRONG, WRONG])]
    ei_rollouts = [rollout("q1", RIGHT, [RIGHT, OTHER_RIGHT]), rollout("q2", RIGHT, [RIGHT, WRONG])]
    saved = {("sft-seed0", "epoch_01", "test"): sft_rollouts, ("sft-seed0", "epoch_02", "test"): sft_rollouts,
             ("ei-sft", "round_01", "test"): sft_rollouts, ("ei-sft", "round_02", "test"): ei_rollouts}
    for (run, ckpt, name), rollouts in saved.items():  # as `evaluate` saves them
        write_jsonl(runs / run / ckpt / f"eval-{name}-rollouts.jsonl", rollouts)
        write_jsonl(questions_path(runs / run / ckpt, name), questions_of(rollouts))
    # an evaluation saved before per-question arrays existed: graded once from its rollouts
    legacy = runs / "rcrl-sft" / "round_01"
    write_jsonl(legacy / "eval-test-good-rollouts.jsonl", ei_rollouts)
    assert read_questions(legacy, "test-good") == questions_of(ei_rollouts)
    assert read_jsonl(questions_path(legacy, "test-good")) == questions_of(ei_rollouts)
    results = pd.DataFrame([
        row("sft-seed0", "sft", "pretrained", "none", 0, "epoch_01", maj1_strict=0.5, passK_strict=0.5),
        row("sft-seed0", "sft", "pretrained", "none", 0, "epoch_02", maj1_strict=0.5, passK_strict=0.5),
        row("ei-sft", "ei", "sft", "sparse", 4, "round_01"),
        row("ei-sft", "ei", "sft", "sparse", 8, "round_02"),
        row("rcrl-sft", "rcrl", "sft", "sparse", 4, "round_01", label="good"),
        row("ppo-gone", "ppo", "sft", "sparse", 4, "update_0001"),  # no rollouts on disk: dropped
    ])
    assert res.eval_dir(runs, results.iloc[4]) == runs / "rcrl-sft" / "round_01"
    assert res.eval_name(results.iloc[4]) == "test-good"
    assert res.eval_dir(runs, results.iloc[5]) is None
    final, pqs = res.final_models(results, runs, "tiny-test")
    assert set(pqs) == {"sft", "ei sft/sparse", "rcrl sft/sparse"}
    rng = np.random.default_rng(0)
    gains = effects.vs_init_effects(final, pqs, rng, n_boot=100)
    ei = gains[(gains["algorithm"] == "ei") & (gains["metric"] == "maj1_strict")].iloc[0]
    assert ei["gain"] == 0.5 and ei["n_questions"] == 2
    sweep = res.sft_sweep_rows(results, "tiny-test")
    assert list(sweep["epoch"]) == [1.0, 2.0]
    assert len(effects.sft_epoch_effects(sweep, runs, rng, n_boot=50)) == 2
    sat = effects.saturation_effects(results, runs, "tiny-test", rng, n_boot=50)
    assert len(sat) == 1 and sat.iloc[0]["gain"] == 0.5  # q2 solved only in round 2
    comp = effects.comparisons(results, runs, "tiny-test", final, pqs, rng, n_boot=50)
    assert set(comp["kind"]) == {"algorithm", "convergence"}
    assert comp.set_index("kind").loc["algorithm", "gain"] == 0.0  # EI and RCRL share rollouts
    pq_k = coverage.with_pass_at(pqs["ei sft/sparse"], 1)
    assert list(pq_k["pass1_strict"]) == [1.0, 0.5]


def test_markdown_and_pick():
    table = pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x|y", "z"]})
    text = res.to_markdown(table)
    assert text.splitlines()[0] == "| a | b |" and "1.235" in text and "x\\|y" in text
    assert claims.pick(table, b="z")["b"] == "z" and claims.pick(table, b="q") is None
    assert claims.pick(None, b="z") is None and claims.pick(table, c=1) is None


def test_gains_over_start_one_row_per_metric_with_pass1():
    model = _pq(["a", "b", "c"], [4, 2, 0], maj1_strict=[True, True, False])
    start = _pq(["c", "b", "a"], [0, 2, 0], maj1_strict=[False, False, True])  # another order
    rows = effects.gains_over_start(model, start, ["maj1_strict", "pass1_strict"], np.random.default_rng(0),
                                    n_boot=200, name="ei", start_name="sft", init="sft")
    assert [r["label"] for r in rows] == ["ei - sft maj@1", "ei - sft pass@1"]
    maj, pass1 = rows
    assert maj["gain"] == pytest.approx(1 / 3) and maj["init"] == "sft" and maj["n_questions"] == 3
    assert pass1["gain"] == pytest.approx(1 / 3) and pass1["lo"] <= pass1["gain"] <= pass1["hi"]
    assert pass1["a_mean"] == pytest.approx(0.5) and pass1["b_mean"] == pytest.approx(1 / 6)
    assert list(effects.effects_frame([])) == effects.EFFECT_COLUMNS
    again = effects.gains_over_start(model, start, ["maj1_strict"], np.random.default_rng(0), n_boot=200)
    assert again[0]["lo"] == maj["lo"] and again[0]["hi"] == maj["hi"]  # same generator, same CI


def test_model_labels_keep_the_main_run_plain():
    final = pd.DataFrame([row("ei-sft-k1", "ei", "sft", "sparse", 96, "round_01"),
                          row("ei-sft-k4", "ei", "sft", "sparse", 384, "round_02")])
    assert res.model_labels(final) == ["ei sft/sparse (ei-sft-k1)", "ei sft/sparse"]


def test_floor_effects_are_inconclusive():
    comp = pd.DataFrame([{"kind": "reward", "label": "x", "metric": "maj1_strict", "gain": 0.0, "lo": 0.0, "hi": 0.0,
                          "a_mean": 0.0, "b_mean": 0.0}])
    cov = pd.DataFrame([{"model": "ppo sft/sparse", "algorithm": "ppo", "reference": "sft", "main": True,
                         "n_solved": 0, "beyond": 0.0, "beyond_lo": 0.0, "beyond_hi": 0.0}])
    table = claims.build_claims({"comparisons": comp, "coverage_beyond_sft": cov}).set_index("claim")
    assert table.loc["C4", "verdict"] == "inconclusive"
    assert table.loc["C6", "verdict"] == "inconclusive"
