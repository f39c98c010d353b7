"""rlreason.report on a synthetic study: evaluations of scripted "models" written by the real
`evaluation.evaluate` (rollouts, per-question arrays, results rows), and stage results built by
hand. No model is trained or sampled."""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from rlreason import plots, report, stages
from rlreason.analysis import claims as verdicts
from rlreason.analysis import orm_report
from rlreason.config import EvalConfig
from rlreason.evaluation import EvalResult, RunInfo, compute_metrics, evaluate, load_results
from rlreason.metrics import paired_difference_ci
from rlreason.names import PAIRED
from rlreason.problems import Problem, format_prompt
from rlreason.profiles import get_profile
from rlreason.sampling import Sample
from rlreason.stages import StageResult

PROBLEMS = [Problem(id=f"q{i:02d}", question=f"What is {i + 1} plus zero?", solution=f"#### {i + 1}",
                    answer=float(i + 1)) for i in range(12)]
CFG = EvalConfig(k=4, pass_ks=(1, 2, 4), n_boot=100)


class SkillSampler:
    """A scripted policy: each sample (and the greedy solution) is correct with probability `p`,
    decided by a hash of (model, question, sample); correct samples use two operation signatures."""

    def __init__(self, name: str, p: float):
        self.name, self.p = name, p
        self.index = {format_prompt(q.question): q for q in PROBLEMS}

    def text(self, q: Problem, j: int) -> str:
        a = int(q.answer)
        if random.Random(f"{self.name}-{q.id}-{j}").random() >= self.p:
            return f"<<{a}+1={a + 1}>>{a + 1}\n#### {a + 1}"
        return f"<<{a}+0={a}>>{a}\n#### {a}" if j % 2 else f"<<{a}*1={a}>>{a}\n#### {a}"

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            q = self.index[p]
            js = [-1] if params.temperature == 0 else range(params.n)
            out.append([Sample(text=self.text(q, j), token_ids=[1, 2, 3], logprobs=[0.0] * 3,
                               finish_reason="stop") for j in js])
        return out


# (run, algorithm, init, reward, checkpoint, rollouts, extra identity, skill)
MODELS = [
    ("base-seed0", "base", "pretrained", "none", "final", 0, {}, 0.1),
    ("sft-seed0", "sft", "pretrained", "none", "epoch_01", 0, {"epoch": 1}, 0.3),
    ("sft-seed0", "sft", "pretrained", "none", "epoch_02", 0, {"epoch": 2}, 0.5),
    ("ei-sft-sparse-k2-seed0", "ei", "sft", "sparse", "round_01", 24, {"round": 1}, 0.55),
    ("ei-sft-sparse-k2-seed0", "ei", "sft", "sparse", "round_02", 48, {"round": 2}, 0.65),
    ("ei-sft-sparse-k1-seed0", "ei", "sft", "sparse", "round_01", 12, {"round": 1}, 0.5),
    ("ei-pretrained-sparse-k2-seed0", "ei", "pretrained", "sparse", "round_01", 24, {"round": 1}, 0.15),
    ("ei-pretrained-sparse-k2-seed0", "ei", "pretrained", "sparse", "round_02", 48, {"round": 2}, 0.2),
    ("ei-sft-dense-k2-seed0", "ei", "sft", "dense", "round_01", 24, {"round": 1}, 0.5),
    *[(f"ppo-{init}-{reward}-seed0", "ppo", init, reward, "update_0002", 32, {"update": 2}, p)
      for init, base_p in (("sft", 0.5), ("pretrained", 0.1))
      for reward, p in (("sparse", base_p + 0.1), ("dense", base_p), ("orm", base_p + 0.05))],
    ("ppo-sft-dense_any-seed0", "ppo", "sft", "dense_any", "update_0002", 32, {"update": 2}, 0.52),
    ("rcrl-sft-sparse-seed0", "rcrl", "sft", "sparse", "round_01", 24,
     {"round": 1, "label": "good", "labels": "sparse"}, 0.45),
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The synthetic study in a fresh output folder: (profile, {(run, checkpoint): EvalResult})."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLREASON_OUTPUT_DIR", str(tmp_path_factory.mktemp("out")))
        profile = replace(get_profile("smoke"), eval=CFG)
        evals = {}
        for run, algo, init, reward, ckpt, rollouts, extra, p in MODELS:
            name = f"test-{extra['label']}" if "label" in extra else "test"
            info = RunInfo(run=run, algorithm=algo, init=init, reward=reward, seed=0, rollouts=rollouts,
                           dataset="tiny-test", checkpoint=ckpt, **extra)
            evals[run, ckpt] = evaluate(SkillSampler(f"{run}/{ckpt}", p), PROBLEMS, CFG,
                                        out_dir=profile.runs_dir / run / ckpt, name=name,
                                        results_path=profile.results_path, run_info=info, progress=False)
        yield profile, evals


def ei_stage(init: str) -> StageResult:
    rows = [{"round": r, "rollouts": 24 * r, "maj1_strict": 0.2 + 0.1 * r, "passK_strict": 0.5,
             "train_solved": 0.3 + 0.1 * r, "distinct_correct": 1.2, "data_size": 10 * r,
             "pass_curve": {"1": 0.1}} for r in range(3)]
    return StageResult(f"ei-{init}-sparse-k2-seed0", "ei", init, "sparse", 0, None, None, rows)


def test_section_saves_tables_and_figures_and_displays(study, capsys):
    profile, _ = study
    df = pd.DataFrame({"x": [1, 2], "y": [0.12345, 0.5]})
    fig = plots.bar_metrics(df, "x", ["y"], title="t")
    out = report.section(profile, {"t_table": df}, {"t_figure": fig, "absent": None},
                         [df, "a line", report.Markdown("| a |\n|---|\n")])
    assert out["t_table"] is df and out["t_figure"] is fig and "absent" not in out.figures
    assert pd.read_csv(report.table_path(profile, "t_table"))["y"].tolist() == [0.1235, 0.5]
    for ext in (".png", ".pdf"):
        assert report.figure_path(profile, "t_figure").with_suffix(ext).exists()
    out._ipython_display_()
    assert "a line" in capsys.readouterr().out


def test_ei_gains_equal_the_paired_bootstrap_of_the_evaluations(study):
    profile, evals = study
    table = report.ei.gains_table(load_results(profile.results_path), profile.runs_dir, "tiny-test",
                                  np.random.default_rng(0), profile.eval.n_boot)
    assert list(table["init"].unique()) == ["sft", "pretrained"] and list(table["metric"][:5]) == list(PAIRED)
    rng = np.random.default_rng(0)  # what notebook 03 computed: after minus before, per metric
    pairs = {"sft": (("ei-sft-sparse-k2-seed0", "round_02"), ("sft-seed0", "epoch_02")),
             "pretrained": (("ei-pretrained-sparse-k2-seed0", "round_02"), ("base-seed0", "final"))}
    for init, (after, before) in pairs.items():
        for metric in PAIRED:
            d = paired_difference_ci(evals[after].per_question[metric], evals[before].per_question[metric],
                                     rng, n_boot=profile.eval.n_boot)
            row = table[(table["init"] == init) & (table["metric"] == metric)].iloc[0]
            assert (row["gain"], row["lo"], row["hi"]) == pytest.approx((d.mean, d.low, d.high))
            assert row["rollouts"] == 48 and row["a_mean"] == evals[after].metrics[metric]
    lines = report.ei.summary(profile, table).show
    assert len(lines) == 2 and lines[0].startswith("EI from sft")


def test_exploration_sections_and_the_claims_evidence_agree(study, monkeypatch):
    profile, _ = study
    monkeypatch.setattr(stages, "ei", lambda profile, init, seed=0, *a, **kw: ei_stage(init))
    monkeypatch.setattr(stages, "ei_finished", lambda *a: True)  # the fake EI runs are complete
    ex = report.exploration.load(profile)
    assert set(ex.pqs) >= {"base", "sft", "ei sft/sparse", "ppo sft/sparse", "rcrl sft/sparse"}
    assert not ex.models.set_index("model").loc["ei sft/sparse (ei-sft-sparse-k1-seed0)", "main"]
    rng = report.rng(0)  # the notebook's order
    sections = [report.exploration.models(ex), report.exploration.pass_curves(ex),
                report.exploration.maj_vs_pass(ex), gains := report.exploration.gains(ex, rng),
                report.exploration.diversity(ex), coverage := report.exploration.coverage(ex, rng),
                rounds := report.exploration.ei_rounds(ex, rng, 0)]
    evidence = report.exploration.evidence(profile, 0)
    pd.testing.assert_frame_equal(evidence["exploration_gains"], gains["exploration_gains"])
    pd.testing.assert_frame_equal(evidence["coverage_beyond_sft"], coverage["coverage_beyond_sft"])
    pd.testing.assert_frame_equal(evidence["ei_pass_saturation"], rounds["ei_pass_saturation"])
    figures = {name for s in sections for name in s.figures}
    assert figures == {"fig06_pass_at_k", "fig06_maj1_vs_passK", "fig06_diversity",
                       "fig06_coverage_beyond_sft", "fig06_ei_rounds"}
    for name in figures:
        assert report.figure_path(profile, name).with_suffix(".png").exists()
    cov = coverage["coverage_beyond_sft"]
    assert set(cov["reference"]) == {"sft", "sft (1 ep)"} and (cov["n_questions"] == 12).all()
    lines = report.exploration.summary(ex, cov).show
    assert len(lines) == len(ex.models) and "beyond SFT" in lines[-1]


def test_exploration_never_trains_ei_before_notebook_03(study, monkeypatch):
    profile, _ = study
    monkeypatch.setattr(stages, "ei", lambda *a, **kw: pytest.fail("notebook 06 must not run EI"))
    monkeypatch.setattr(stages, "ei_finished", lambda *a: False)
    ex = report.exploration.load(profile)
    out = report.exploration.ei_rounds(ex, report.rng(0), 0)
    assert "run notebook 03 first" in out.show[0] and not out.figures
    assert "ei_pass_saturation" in out.tables


def test_claims_table_from_results_and_per_question_arrays(study, monkeypatch):
    profile, _ = study
    monkeypatch.setattr(stages, "ei", lambda *a, **kw: pytest.fail("claims must not run a stage"))
    results = report.claims.results_table(profile)
    table = results["results_final"]
    assert set(table["dataset"]) == {"tiny-test"} and "ppo pretrained/orm" in set(table["model"])
    assert report.table_path(profile, "results_final").with_suffix(".md").exists()
    comparisons = report.claims.comparisons(profile, 0)["comparisons"]
    assert {"algorithm", "efficiency", "convergence", "reward", "gap_change"} <= set(comparisons["kind"])
    out = report.claims.claims(profile, 0)
    claims = pd.read_csv(report.table_path(profile, "claims")).set_index("claim")
    assert list(claims.index) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert (claims["verdict"] != "no evidence").all()
    assert report.table_path(profile, "claims").with_suffix(".md").read_text().startswith("| claim |")
    gains = report.ei.gains_table(load_results(profile.results_path), profile.runs_dir, "tiny-test",
                                  np.random.default_rng(0), profile.eval.n_boot)
    c1 = gains[(gains["init"] == "sft") & (gains["metric"] == "maj1_strict")].iloc[0]
    expected = verdicts.fmt_effect("EI(sft) - SFT maj@1", c1["gain"], c1["lo"], c1["hi"])
    assert claims.loc["C1", "measured here"].startswith(expected)  # the number notebook 03 shows
    assert "evidence missing: none" in out.show
    assert report.claims.verdict_lines(out["claims"]).show[0].startswith("C1: ")


def ppo_runs(evals) -> dict:
    rows = [{"update": u, "rollouts": 16 * u, "kl": 0.1 * u, "reward": 0.5, "approx_kl": 0.01,
             "clip_frac": 0.1, "explained_variance": 0.2, "entropy": 1.0, "response_len": 9.0}
            for u in (1, 2)]
    keys = [(init, reward) for init in ("sft", "pretrained") for reward in ("sparse", "dense", "orm")]
    return {(init, reward): StageResult(f"ppo-{init}-{reward}-seed0", "ppo", init, reward, 0, None, None,
                                        rows, evals[f"ppo-{init}-{reward}-seed0", "update_0002"])
            for init, reward in keys + [("sft", "dense_any")]}


def test_ppo_tables_from_stage_results(study):
    profile, evals = study
    runs = ppo_runs(evals)
    start = {"sft": evals["sft-seed0", "epoch_02"], "pretrained": evals["base-seed0", "final"]}
    curves = report.ppo.curve_table(load_results(profile.results_path), "tiny-test", runs, start,
                                    ["maj1_strict", "passK_strict"])
    assert len(curves) == 14 and list(curves["rollouts"][:2]) == [0, 32]
    ei = report.ppo.ei_curve_table(load_results(profile.results_path), "tiny-test", start,
                                   ["maj1_strict"], seed=0)
    assert set(ei["run"].dropna()) == {"ei-sft-sparse-k2-seed0", "ei-pretrained-sparse-k2-seed0"}
    rng = report.rng(0)
    final = report.ppo.final(profile, runs, start, rng)
    gap = report.ppo.init_gap(profile, runs, start, rng)
    table, gains = final["ppo_final"], final["ppo_gains"]
    assert list(table["model"][:2]) == ["sft (start)", "pretrained (start)"] and len(gains) == 14
    assert set(gains["vs"]) == {"sft", "start"} and {"gain", "lo", "hi"} <= set(gains)
    sft_start = gains[(gains["model"] == "ppo sft/sparse") & (gains["vs"] == "start")].iloc[0]
    assert sft_start["b_mean"] == start["sft"].metrics["maj1_strict"]
    gaps = gap["ppo_init_gap"].set_index("stage")
    assert list(gaps.index) == ["start", "after ppo (sparse)", "after ppo (dense)", "after ppo (orm)"]
    assert gaps.loc["start", "gain"] == pytest.approx(
        start["sft"].metrics["maj1_strict"] - start["pretrained"].metrics["maj1_strict"])
    lines = report.ppo.summary(profile, final, gap).show
    assert len(lines) == 8 and lines[-1].startswith("SFT minus pretrained")
    assert lines[6].startswith("ppo sft/dense_any")


def test_ppo_diagnostics_subtract_the_start_policys_reward(study, monkeypatch):
    profile, evals = study
    runs = ppo_runs(evals)
    for i, run in enumerate(runs.values()):  # rewards 0.5 then 0.6 + i/10
        run.rows = [{**run.rows[0], "reward": 0.5}, {**run.rows[1], "reward": 0.6 + i / 10}]
    asked = {}

    def start_rewards(profile, result, *, orm=None, progress=False):
        asked[result.reward] = orm
        return [0.5, 0.4]  # the starting policy on the same questions

    monkeypatch.setattr(stages, "start_rewards", start_rewards)
    monkeypatch.setattr(stages, "orm_scorer", lambda profile, seed: f"orm-seed{seed}")
    out = report.ppo.diagnostics(replace(profile, workers=1), runs, 3)  # in process: patched
    log = out["ppo_training_log"]
    assert len(log) == 14 and set(log["task"]) == {"sparse", "dense", "orm", "dense_any"}
    assert asked == {"sparse": None, "dense": None, "orm": "orm-seed3", "dense_any": None}
    assert list(log["start_reward"]) == [0.5, 0.4] * 7
    gains = [g for i in range(7) for g in (0.0, 0.2 + i / 10)]
    assert list(log["reward_gain"]) == pytest.approx(gains)
    titles = [ax.get_title() for ax in out["fig04_ppo_diagnostics"].axes if ax.get_visible()]
    assert titles == [d for d in report.ppo.DIAGNOSTICS if d in log]
    assert titles[:2] == ["reward", "reward_gain"]
    assert out.show[0] == ("sft/sparse: reward_gain +0.000 over updates 1-1, +0.200 over updates "
                           "2-2; update 2: explained_variance 0.20, kl 0.20 nats")
    assert len(out.show) == 7 and out.show[5].startswith("pretrained/orm: reward_gain +0.000")
    assert out.show[6].startswith("sft/dense_any: reward_gain +0.000")
    with pytest.raises(ValueError, match="3 start rewards for 2 updates"):
        report.ppo.training_log(runs, {key: [0.1, 0.2, 0.3] for key in runs})


def test_rcrl_gains_and_label_gap(study, monkeypatch):
    profile, evals = study
    good = evals["rcrl-sft-sparse-seed0", "round_01"]
    rows = [{"round": 0, "rollouts": 0, "maj1_strict": 0.5, "pass1_strict": 0.4},
            {"round": 1, "rollouts": 24, "maj1_strict": 0.45, "pass1_strict": 0.45}]
    runs = {("sft", "sparse"): StageResult("rcrl-sft-sparse-seed0", "rcrl", "sft", "sparse", 0, None,
                                           None, rows, good)}
    bad = evaluate(SkillSampler("bad", 0.05), PROBLEMS, replace(CFG, k=2), out_dir=profile.runs_dir / "bad",
                   name="test-bad", progress=False)
    monkeypatch.setattr(stages, "rcrl_bad_label", lambda profile, run: bad)
    monkeypatch.setattr(stages, "init_checkpoint", lambda profile, init, seed: init)
    monkeypatch.setattr(stages, "evaluate", lambda *a, **kw: evals["sft-seed0", "epoch_02"])
    gains = report.rcrl.gains(profile, runs, 0)["rcrl_gain_over_init"]
    assert list(gains["metric"]) == ["maj1_strict", "pass1_strict"] and set(gains["variant"]) == {"sft / sparse"}
    start = evals["sft-seed0", "epoch_02"]
    assert gains.iloc[1]["b_mean"] == pytest.approx(start.metrics["pass_curve"][1])
    gap = report.rcrl.label_gap(profile, runs, 0)
    table = gap["rcrl_label_gap"]
    assert list(table[["k_good", "k_bad"]].iloc[0]) == [4, 2] and "fig05_rcrl_label_gap" in gap.figures
    assert table.iloc[0]["gain"] == pytest.approx(good.metrics["maj1_strict"] - bad.metrics["maj1_strict"])
    others = report.rcrl.vs_others_table(load_results(profile.results_path), "tiny-test")
    assert "rcrl-sft-sparse-seed0" in set(others["run"]) and "base-seed0" not in set(others["run"])
    assert list(report.rcrl.rounds_table(runs)["variant"]) == ["sft / sparse"] * 2


def test_sft_orm_and_world_tables(study):
    profile, evals = study
    sweep = report.sft.sweep_table([(1, evals["sft-seed0", "epoch_01"]), (2, evals["sft-seed0", "epoch_02"])], 0)
    assert list(sweep["epoch"]) == [1, 2] and "pass_curve" not in sweep and (sweep["seed"] == 0).all()
    final = report.sft.final_table({"test": evals["sft-seed0", "epoch_02"]})
    assert list(final["grading"]) == ["strict", "flexible"] and list(final)[-2:] == ["maj@4", "pass@4"]
    assert report.world.metrics_table(evals["base-seed0", "final"].metrics).shape == (2, 4)
    assert list(report.world.dev_checks([{"step": 50, "dev_greedy_acc": 0.1, "loss": 1.0}, {"loss": 2.0}])) \
        == ["step", "dev_greedy_acc"]
    greedy = [f"#### {int(p.answer)}" for p in PROBLEMS]
    samples = [[f"#### {int(p.answer)}", "#### 0", "#### 0", "#### 0"] for p in PROBLEMS]
    scored = compute_metrics(PROBLEMS, greedy, samples, CFG, [[1.0, 0.0, 0.0, 0.0]] * len(PROBLEMS))
    table = report.orm.rerank_table({"test": (scored, None)}, np.random.default_rng(0), 100)
    strict = table.set_index("grading").loc["strict"]
    assert strict["rerank@K"] == 1.0 and strict["maj@K"] == 0.0 and strict["gain"] == strict["lo"] == 1.0
    assert report.orm.verdict(strict) == "above"


# Three questions, four samples each, and the ORM's scores (module doc of `orm.bound`: a wrong
# calculation of one scores 1/2, a right one 1). q1: one right sample among wrong-arithmetic "8"s
# the ORM ranks last; q2: the ORM's top sample is the lone right "5" against three "6"s (weighted
# vote right, majority wrong); q3: a wrong operand ("4+5=9") the bound cannot see, all tied at 1.
RERANK_PROBLEMS = [Problem(id=f"r{i}", question=f"r{i}?", solution="", answer=a)
                   for i, a in enumerate((7.0, 5.0, 4.0))]
RERANK_SAMPLES = [["<<3+4=8>>8\n#### 8", "<<3+4=7>>7\n#### 7", "<<3+4=8>>8\n#### 8", "<<3+4=8>>8\n#### 8"],
                  ["<<2+3=6>>6\n#### 6"] * 3 + ["<<2+3=5>>5\n#### 5"],
                  ["<<4+5=9>>9\n#### 9"] + ["<<2+2=4>>4\n#### 4"] * 3]
RERANK_SCORES = [[0.9, 0.2, 0.3, 0.3], [0.1, 0.1, 0.1, 0.9], [0.2, 0.6, 0.1, 0.1]]


@pytest.fixture
def rerank_evals(tmp_path, monkeypatch):
    """A profile writing to a fresh folder, and `report.orm.evaluations`' output for the three
    hand-made questions above."""
    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    profile = replace(get_profile("smoke"), eval=CFG)
    res = compute_metrics(RERANK_PROBLEMS, ["#### 0"] * 3, RERANK_SAMPLES, CFG, RERANK_SCORES)
    rr = orm_report.rerank_data(RERANK_PROBLEMS, RERANK_SAMPLES, RERANK_SCORES)
    return profile, {"test": (res, rr)}


def test_orm_rerankers_table_compares_the_orm_with_the_arithmetic_bound(rerank_evals):
    profile, evals = rerank_evals
    out = report.orm.rerankers(profile, evals, np.random.default_rng(0))
    table = out["orm_rerankers"]
    assert list(table.columns) == list(report.orm.RERANKERS_SHOWN)
    assert list(table["scorer"]) == ["ORM", "arithmetic bound"] and (table["split"] == "test").all()
    orm, bound = (table.set_index("scorer").loc[s] for s in ("ORM", "arithmetic bound"))
    # ORM: argmax wrong on q1 only; weighted vote right on q2 and q3, majority on q3 only.
    assert orm.argmax_first == orm.argmax_random == pytest.approx(2 / 3)
    assert orm.weighted_vote == pytest.approx(2 / 3) and orm.majority_vote == pytest.approx(1 / 3)
    assert orm.random_sample == pytest.approx(5 / 12) and orm.pass_at_k == 1.0
    assert orm.auroc_within == pytest.approx((0 + 1 + 1 / 3) / 3) and orm.n_questions == 3
    # The bound: right arithmetic wins q1 and q2; q3's four samples tie, the first (wrong) by rule.
    assert bound.argmax_first == pytest.approx(2 / 3) and bound.argmax_random in (
        pytest.approx(2 / 3), 1.0)
    assert bound.weighted_vote == pytest.approx(1 / 3) and bound.majority_vote == orm.majority_vote
    assert bound.auroc_within == pytest.approx((1 + 1 + 0.5) / 3)
    assert bound.auroc == pytest.approx(6.5 / 7)
    assert pd.read_csv(report.table_path(profile, "orm_rerankers"))["scorer"].tolist() == list(table["scorer"])
    orm_line, bound_line = out.show[:2]
    assert "ORM argmax 0.667" in orm_line and "above a random sample (0.417)" in orm_line
    assert "above majority vote (0.333)" in orm_line
    assert "bound's 0.833 is above the ORM's 0.444" in bound_line


def test_orm_reranker_reading_follows_the_numbers():
    row = {"split": "test", "argmax_first": 0.2, "argmax_random": 0.2, "weighted_vote": 0.3,
           "majority_vote": 0.4, "random_sample": 0.2, "pass_at_k": 0.9, "auroc": 0.5}
    table = pd.DataFrame([{**row, "scorer": "ORM", "auroc_within": 0.6},
                          {**row, "scorer": "arithmetic bound", "auroc_within": float("nan")}])
    orm_line, bound_line = report.orm.reranker_reading(table)
    assert "equal to a random sample" in orm_line and "below majority vote" in orm_line
    assert "not comparable with the ORM's 0.600" in bound_line


def test_orm_k_curves_carry_weighted_voting(rerank_evals):
    profile, evals = rerank_evals
    table = report.orm.k_curves(profile, evals, np.random.default_rng(0))["orm_k_curves"]
    assert list(table["k"]) == [1, 2, 4]
    assert {"maj@k (test)", "rerank@k (test)", "weighted@k (test)", "pass@k (test)"} <= set(table)
    at_k = table.set_index("k").loc[4]  # k = K: the one subset is all samples (q2, q3 right)
    assert at_k["weighted@k (test)"] == pytest.approx(2 / 3) and at_k["maj@k (test)"] == pytest.approx(1 / 3)


def test_eval_results_carry_ids_scores_and_rollouts(study):
    _, evals = study
    res = evals["base-seed0", "final"]
    assert isinstance(res, EvalResult) and res.ids == [p.id for p in PROBLEMS]
    assert res.rollouts_path.name == "eval-test-rollouts.jsonl" and res.scores is None
    assert len(res.questions()) == 12 and res.questions()[0]["k"] == 4


def test_sft_sweep_table_sets_training_accuracy_against_the_test_set():
    from types import SimpleNamespace

    from rlreason.report.sft import TRAIN_GREEDY, TRAIN_TEST_GAP, sweep_table

    test = [(1, SimpleNamespace(metrics={"maj1_strict": 0.30, "k": 4, "pass_curve": {1: 0.2}})),
            (2, SimpleNamespace(metrics={"maj1_strict": 0.45, "k": 4, "pass_curve": {1: 0.3}}))]
    fits = [SimpleNamespace(metrics={"maj1_strict": 0.32}), SimpleNamespace(metrics={"maj1_strict": 0.70})]
    table = sweep_table(test, seed=0, fits=fits)
    assert list(table["epoch"]) == [1, 2] and "pass_curve" not in table
    assert table[TRAIN_GREEDY].tolist() == [0.32, 0.70]
    assert table[TRAIN_TEST_GAP].round(6).tolist() == [0.02, 0.25]  # epoch 2 has memorised
    assert TRAIN_GREEDY not in sweep_table(test, seed=0)  # no fits, no columns


def test_sft_targets_are_computed_from_the_last_epoch():
    import pandas as pd

    from rlreason.report.sft import TRAIN_TEST_GAP, targets_table

    sweep = pd.DataFrame({"epoch": [3, 4], "k": [32, 32], "maj1_strict": [0.50, 0.51],
                          "passK_strict": [0.85, 0.86], "frac_multi_correct": [0.5, 0.4],
                          TRAIN_TEST_GAP: [0.02, 0.05]})
    table = targets_table(sweep, base_maj1=0.08).set_index("target")
    assert table["holds"].all(), table
    assert table.loc["test maj@1 <= 0.60", "value"] == 0.51
    worse = sweep.assign(maj1_strict=[0.50, 0.65], **{TRAIN_TEST_GAP: [0.1, 0.2]})
    failed = targets_table(worse, base_maj1=0.30).set_index("target")["holds"]
    assert not failed["test maj@1 <= 0.60"] and not failed["base maj@1 <= 0.25"]
    assert not failed["train-test gap (greedy, training minus test) <= 0.10"]
    assert not failed[[t for t in failed.index if "levelled off" in t][0]]  # +0.15 in the last epoch
    assert failed["test maj@1 >= 0.35"]


def _final_row(dataset, run, algorithm, init, reward, rollouts, maj1, n):
    return {"dataset": dataset, "run": run, "algorithm": algorithm, "init": init, "reward": reward,
            "rollouts": rollouts, "k": 4, "checkpoint": "final", "maj1_strict": maj1,
            "maj1_strict_lo": maj1 - 0.05, "maj1_strict_hi": maj1 + 0.05, "passk_strict": 2 * maj1,
            "n_questions": n}


def test_scales_puts_each_profiles_final_models_side_by_side(tmp_path, monkeypatch):
    from rlreason.io import write_jsonl

    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    tiny, smollm = get_profile("tiny"), get_profile("smollm")
    write_jsonl(tiny.results_path, [
        _final_row("tiny-test", "sft-seed0", "sft", "pretrained", "none", 0, 0.40, 1000),
        _final_row("tiny-test", "sft-seed0", "sft", "pretrained", "none", 0, 0.60, 1000),  # later wins
        _final_row("tiny-variations", "sft-seed0", "sft", "pretrained", "none", 0, 0.30, 200)])
    write_jsonl(smollm.results_path, [
        _final_row("gsm8k-test", "base-seed0", "base", "pretrained", "none", 0, 0.02, 100),
        _final_row("gsm8k-test", "sft-seed0", "sft", "pretrained", "none", 0, 0.10, 100)])
    table = report.claims.scales_table(smollm)
    assert sorted(map(tuple, table[["profile", "dataset", "model"]].to_numpy())) == [
        ("smollm", "gsm8k", "base"), ("smollm", "gsm8k", "sft"), ("tiny", "tiny", "sft")]
    row = table[(table["profile"] == "tiny")].iloc[0]
    assert row["maj1_strict"] == 0.60 and row["questions"] == 1000  # test set only, last row
    shown = report.claims.scales(smollm).show[0]
    assert list(shown.columns) == ["tiny", "smollm"]
    assert shown.loc["sft", "tiny"] == "0.600 [0.550, 0.650]" and shown.loc["base", "tiny"] == ""
    assert (smollm.figures_dir / "tables" / "results_scales.md").exists()


def test_metric_sweep_draws_the_ci_over_questions_and_starts_at_zero():
    import matplotlib.pyplot as plt

    df = pd.DataFrame({"epoch": [1, 2], "maj1_strict": [0.02, 0.04], "maj1_strict_lo": [0.0, 0.01],
                       "maj1_strict_hi": [0.05, 0.08], "passK_strict": [0.05, 0.05]})
    fig = plots.metric_sweep(df, "epoch", ["maj1_strict", "passK_strict"], title="t")
    with_ci, without = fig.axes
    assert with_ci.get_ylim()[0] == 0 and without.get_ylim()[0] == 0
    bands = [c for c in with_ci.collections if c.get_label() == "95% CI"]
    assert len(bands) == 1 and not [c for c in without.collections if c.get_label() == "95% CI"]
    (path,) = bands[0].get_paths()
    assert path.vertices[:, 1].max() == pytest.approx(0.08)  # the band spans lo..hi
    plt.close(fig)


def test_notebooks_03_and_04_run_the_any_path_dense_reward_from_sft(monkeypatch):
    """Beside the paper's reference-matching `dense`: the variant that credits any valid path
    (issue: separate C4 from an artefact of a world with several valid paths per problem)."""
    profile = get_profile("smoke")
    monkeypatch.setattr(stages, "orm_scorer", lambda profile, seed: "orm")
    asked = {}

    def run_calls(calls, workers=1, progress=True):
        asked.update({tuple(c.args[1:4]): c for c in calls})
        return [StageResult(c.name, "x", c.args[1], c.args[3], 0, None, None, [], None)
                for c in calls]

    monkeypatch.setattr(report.ppo, "run_calls", run_calls)
    runs = report.ppo.runs(profile, 0)
    assert ("sft", "dense_any") in runs and len(runs) == 7
    call = asked[("sft", 0, "dense_any")]
    assert call.kwargs["orm"] is None and call.kwargs["scorer"] is None
    assert call.args[4].eval_every == profile.ppo.updates  # evaluated at the end only
    asked.clear()
    monkeypatch.setattr(report.ei, "run_calls", run_calls)
    runs = report.ei.runs(profile, 0)
    assert asked[("sft", 0, "dense_any")].args[4] == report.ei.sweep_config(profile)
    assert "dense_any" in runs and report.ei.REWARDS[2] == "dense_any"
