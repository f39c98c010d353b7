"""Notebook 03, Expert Iteration: the runs (from SFT and from the base, the K sweep and the reward
variants), metrics per round and against rollouts, the gain over the starting model (C1, C2), the
K sweep (C3) and the rewards (C4)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .. import ei as ei_loop
from .. import plots, stages
from ..analysis import effects
from ..analysis import results as res
from ..config import INITS
from ..evaluation import RunInfo, load_results
from ..names import (
    DISTINCT_CORRECT,
    MAJ1_FLEXIBLE,
    MAJ1_STRICT,
    MAJK_STRICT,
    PAIRED,
    PASS_CURVE,
    PASSK_FLEXIBLE,
    PASSK_STRICT,
    RERANKK_STRICT,
    SUMMARY,
    labels,
)
from ..parallel import Call, run_calls
from ..profiles import Profile
from ..training import logged_steps
from .common import Section, columns, section

REWARDS = ("sparse", "dense", "dense_any", "orm")
"""The filters of the reward runs from SFT: `dense` is the paper's reference-matching heuristic,
`dense_any` credits the intermediate results of any valid path (is `dense`'s C4 an artefact of a
world with several valid paths per problem?)."""
RESTART = "restart"
"""The variant name of EI's restart-from-SFT reading (`restart_config`)."""
LEARNING = ("train_sample_acc", "train_greedy_acc", "signatures_per_question", "data_size")
"""Per-round numbers that say whether EI optimises its own objective (its training questions)."""
ROUNDS_SHOWN = ("init", "round", "rollouts", "train_sample_acc", "train_solved", "new_unique",
                "data_size", MAJ1_STRICT, MAJK_STRICT, RERANKK_STRICT, PASSK_STRICT,
                MAJ1_FLEXIBLE, PASSK_FLEXIBLE, DISTINCT_CORRECT)
SWEEP_SHOWN = ("K", "rollouts", "train_solved", "data_size", MAJ1_STRICT, MAJK_STRICT,
               PASSK_STRICT, DISTINCT_CORRECT)
REWARDS_SHOWN = ("reward", "filter", "threshold", "rollouts", "kept", "data_size", MAJ1_STRICT,
                 MAJK_STRICT, PASSK_STRICT, MAJ1_FLEXIBLE, PASSK_FLEXIBLE, DISTINCT_CORRECT)


def settings(profile: Profile) -> str:
    cfg = profile.ei
    k = f"K={cfg.k} from SFT, {cfg.k_pretrained} from the base" if cfg.k_pretrained else f"K={cfg.k}"
    student = {"pretrained": f"the pretrained base retrained with the SFT recipe ({profile.sft.epochs} "
                             "epochs over D_i)",
               "init": f"the starting model fine-tuned {cfg.sft.epochs} epochs on D_i",
               "last": f"the last policy fine-tuned {cfg.sft.epochs} epochs on D_i"}[cfg.student]
    return (f"profile={profile.name}: {cfg.rounds} rounds, {k}, temperature {cfg.temperature}, "
            f"{cfg.n_questions or 'all'} training questions; student: {student}; evaluation "
            f"K={profile.eval.k}")


def sweep_config(profile: Profile, k: int | None = None):
    """The config of the K-sweep and reward runs: `sweep_rounds` rounds, evaluated at the end."""
    cfg = profile.ei
    return dataclasses.replace(cfg, k=k or cfg.k, rounds=cfg.sweep_rounds or cfg.rounds,
                               evaluate_every=0)


def restart_config(profile: Profile):
    """EI's other reading, the named variant `restart`: each round restarts from the SFT
    checkpoint with the short, decaying fine-tune `EIConfig.sft` on D_i (no references)."""
    return dataclasses.replace(profile.ei, student="init", include_references=False)


def runs(profile: Profile, seed: int) -> dict[str, stages.StageResult]:
    """Every EI run of the notebook, `profile.workers` at a time (each in its own process, longest
    first), reused when done: `sft` and `pretrained` (the main runs, sparse reward, reranked by the
    ORM every round), `restart` (the other reading from SFT, see `restart_config`), `K=<k>` (the K
    sweep from SFT) and `dense`, `dense_any`, `orm` (the rewards from SFT). The sweep and reward
    runs are evaluated without the reranker (rerank@K costs an ORM pass per evaluation); the
    K = `cfg.k` sweep run and the sparse reward run are the main run from SFT."""
    cfg, orm = profile.ei, stages.orm_scorer(profile, seed)
    other_ks = sorted((k for k in cfg.k_sweep if k != cfg.k), reverse=True)
    calls = {init: Call(stages.ei, profile, init, seed, "sparse", scorer=orm,
                        name=f"EI from {init}") for init in ("pretrained", "sft")}
    if cfg.student != "init":
        calls[RESTART] = Call(stages.ei, profile, "sft", seed, "sparse", restart_config(profile),
                              scorer=orm, variant=RESTART, name="EI from sft, restart variant")
    variants = {f"K={k}": Call(stages.ei, profile, "sft", seed, "sparse", sweep_config(profile, k),
                               name=f"EI K={k}") for k in other_ks}
    for reward in REWARDS[1:]:
        variants[reward] = Call(stages.ei, profile, "sft", seed, reward, sweep_config(profile),
                                orm=orm, name=f"EI {reward} reward")
    order = [*calls, *[f"K={k}" for k in other_ks[:1]], *REWARDS[1:],
             *[f"K={k}" for k in other_ks[1:]]]
    calls |= variants
    done = dict(zip(order, run_calls([calls[key] for key in order], workers=profile.workers)))
    return {key: done[key] for key in ("sft", "pretrained", *[k for k in done if k not in INITS])}


def rows_until(result: stages.StageResult, rounds: int | None = None) -> list[dict]:
    """A run's per-round rows up to round `rounds` (a shorter run reads a longer one's rounds)."""
    return [r for r in result.rows if rounds is None or r["round"] <= rounds]


def rounds_table(ei_runs: dict[str, stages.StageResult], rounds: int) -> pd.DataFrame:
    """The main runs' rows per round (round 0: the starting model), with their `init`."""
    table = pd.concat([pd.DataFrame(rows_until(ei_runs[init], rounds)).assign(init=init)
                       for init in INITS], ignore_index=True)
    return table.drop(columns=[PASS_CURVE], errors="ignore")


def rounds(profile: Profile, ei_runs: dict[str, stages.StageResult]) -> Section:
    """The main runs per round and against cumulative rollouts (C3): maj@1, maj@K, rerank@K and
    pass@K on the test set; training-side numbers (questions solved, new solutions, |D_i|)."""
    table, k = rounds_table(ei_runs, profile.ei.rounds), profile.eval.k
    kw = {"hue": "init", "labels": labels(SUMMARY, k)}
    figs = {"fig03_ei_rounds": plots.metric_sweep(
                table, "round", list(SUMMARY), xlabel="EI round",
                title="EI per round (test set, strict grading)", **kw),
            "fig03_ei_rollouts": plots.metric_sweep(table, "rollouts", list(SUMMARY),
                                                    xlabel="rollouts (sampled solutions)",
                                                    title="EI sample complexity (claim C3)", **kw)}
    return section(profile, {"ei_rounds": table}, figs, [columns(table, ROUNDS_SHOWN)])


def gains_table(results: pd.DataFrame, runs_dir, dataset: str, rng: np.random.Generator,
                n_boot: int) -> pd.DataFrame:
    """The final round of each main EI run (sparse reward) minus its starting model, paired over
    test questions, on each metric of `names.PAIRED` (from the saved per-question arrays)."""
    final, pqs = res.final_models(results, runs_dir, dataset, ("base", "sft", "ei"))
    rows = []
    for init in INITS:
        main = final[(final["algorithm"] == "ei") & (final["init"] == init)
                     & (final["reward"] == "sparse") & final["main"]]
        start = res.init_model({"init": init}, list(pqs))
        if not len(main) or start is None:
            continue
        r = main.iloc[0]
        rows += effects.gains_over_start(pqs[r["model"]], pqs[start], PAIRED, rng, n_boot,
                                         name=f"EI({init})", start_name=start, init=init,
                                         rollouts=int(r["rollouts"]))
    return effects.effects_frame(rows)


def gains(profile: Profile, seed: int) -> Section:
    """EI's final round minus its starting model per metric, with paired bootstrap 95% CIs."""
    table = gains_table(load_results(profile.results_path), profile.runs_dir,
                        f"{profile.dataset}-test", np.random.default_rng(seed), profile.eval.n_boot)
    return section(profile, {"ei_gains": table}, show=[table])


def last_row(result: stages.StageResult, rounds: int) -> dict:
    return rows_until(result, rounds)[-1]


def k_sweep(profile: Profile, ei_runs: dict[str, stages.StageResult]) -> Section:
    """EI from SFT with each K of `cfg.k_sweep` for `sweep_rounds` rounds: final metrics against
    the rollouts they consumed."""
    cfg, n = profile.ei, sweep_config(profile).rounds
    sweep = pd.DataFrame([{"K": k, **last_row(ei_runs["sft" if k == cfg.k else f"K={k}"], n)}
                          for k in cfg.k_sweep]).drop(columns=[PASS_CURVE], errors="ignore")
    shown = [m for m in SUMMARY if m != RERANKK_STRICT]
    fig = plots.metric_sweep(sweep, "rollouts", shown, labels=labels(shown, profile.eval.k),
                             xlabel="rollouts (K = " + ", ".join(map(str, cfg.k_sweep)) + ")",
                             title=f"EI from SFT: the K sweep ({n} round(s))")
    return section(profile, {"ei_k_sweep": sweep}, {"fig03_ei_k_sweep": fig},
                   [columns(sweep, SWEEP_SHOWN)])


def rewards(profile: Profile, ei_runs: dict[str, stages.StageResult]) -> Section:
    """EI from SFT with the sparse, dense and ORM rewards as filters, `sweep_rounds` rounds."""
    cfg, n = profile.ei, sweep_config(profile).rounds
    table = pd.DataFrame([{"reward": reward, "filter": str(cfg.thresholds[reward]),
                           **last_row(ei_runs["sft" if reward == "sparse" else reward], n)}
                          for reward in REWARDS]).drop(columns=[PASS_CURVE], errors="ignore")
    shown = [m for m in SUMMARY if m != RERANKK_STRICT]
    fig = plots.bar_metrics(table, "reward", shown, labels=labels(shown, profile.eval.k),
                            title=f"EI from SFT with each reward ({n} round(s), test set)")
    return section(profile, {"ei_rewards": table}, {"fig03_ei_rewards": fig},
                   [columns(table, REWARDS_SHOWN)])


def summary(profile: Profile, gain_table: pd.DataFrame) -> Section:
    """One line per main run: maj@1 and pass@K before and after EI, with the gains' CIs."""
    cfg, lines = profile.ei, []
    for init in INITS:
        g = gain_table[gain_table["init"] == init].set_index("metric")
        if not {MAJ1_STRICT, PASSK_STRICT} <= set(g.index):
            continue
        m1, pk = g.loc[MAJ1_STRICT], g.loc[PASSK_STRICT]
        k = cfg.k_pretrained if init == "pretrained" and cfg.k_pretrained else cfg.k
        lines.append(f"EI from {init} ({cfg.rounds} rounds, K={k}, {int(m1['rollouts']):,} "
                     f"rollouts): maj@1 {m1['b_mean']:.3f} -> {m1['a_mean']:.3f} (gain "
                     f"{m1['gain']:+.3f}, 95% CI [{m1['lo']:+.3f}, {m1['hi']:+.3f}]); pass@"
                     f"{profile.eval.k} {pk['b_mean']:.3f} -> {pk['a_mean']:.3f} (gain "
                     f"{pk['gain']:+.3f}, 95% CI [{pk['lo']:+.3f}, {pk['hi']:+.3f}])")
    return Section(show=lines)


def learning_table(ei_runs: dict[str, stages.StageResult], rounds: int) -> pd.DataFrame:
    """Per round of the main runs and the restart variant, what EI optimises: accuracy of its
    samples on the training questions (T=1; round i samples the policy of round i-1), greedy
    accuracy of the round's policy on training questions, distinct correct signatures per
    question in D_i, |D_i| and the student's optimizer steps."""
    parts = []
    for key in (*INITS, RESTART):
        if key in ei_runs:
            rows = rows_until(ei_runs[key], rounds)
            steps = [{"student_steps": ei_loop.train_steps(ei_runs[key].run_dir, r["round"])}
                     for r in rows]
            parts.append(pd.DataFrame(rows).join(pd.DataFrame(steps)).assign(
                run="restart (from SFT)" if key == RESTART else f"ReST-EM from {key}"))
    table = pd.concat(parts, ignore_index=True)
    return columns(table, ("run", "round", "rollouts", *LEARNING, "student_steps", "train_loss"))


def learning(profile: Profile, ei_runs: dict[str, stages.StageResult]) -> Section:
    """Whether EI learns its own objective, per round (figure `fig03_ei_learning`)."""
    table = learning_table(ei_runs, profile.ei.rounds)
    names = {"train_sample_acc": "samples correct (T=1, training questions)",
             "train_greedy_acc": "greedy, training questions",
             "signatures_per_question": "distinct correct signatures / question",
             "data_size": "|D_i|"}
    fig = plots.training_diagnostics(table, "round", [m for m in LEARNING if m in table],
                                     "EI on its training questions, per round", hue="run",
                                     labels=names, ncols=4)
    return section(profile, {"ei_learning": table}, {"fig03_ei_learning": fig}, [table])


def control(profile: Profile, seed: int, ei_runs: dict[str, stages.StageResult],
            rng: np.random.Generator) -> Section:
    """The same-steps "more SFT" control: the SFT recipe from the base on the references only, for
    as many optimizer steps as the ReST-EM student from SFT took in its last round; then EI from SFT
    (both readings, at that round), the control and SFT against each other, paired over test
    questions."""
    main = ei_runs["sft"]
    round_ = int(main.rows[-1]["round"])
    steps = ei_loop.train_steps(main.run_dir, round_)
    if steps == 0:  # D_i was empty: the student did not train, there is nothing to match
        return section(profile, {"ei_vs_control": effects.effects_frame([])}, show=[
            f"round {round_}: the ReST-EM student took no optimizer step (D_i was empty), so there "
            "is no control"])
    ctrl = stages.sft_control(profile, seed, steps)
    at_round = {"EI (ReST-EM)": main}
    if RESTART in ei_runs and ei_loop.checkpoint(ei_runs[RESTART].run_dir, round_).exists():
        at_round["EI (restart)"] = ei_runs[RESTART]
    evals = {"sft": stages.evaluate(profile, stages.sft_checkpoint(profile, seed), "test", record=False),
             "control": stages.evaluate(profile, ctrl.checkpoint, "test", info=RunInfo(
                 run=ctrl.name, algorithm="sft", init="pretrained", reward="none", seed=seed,
                 rollouts=0, variant="control"))}
    evals |= {name: stages.evaluate(profile, ei_loop.checkpoint(r.run_dir, round_), "test", record=False)
              for name, r in at_round.items()}
    pqs = {k: res.result_table(v) for k, v in evals.items()}
    pairs = [("EI (ReST-EM)", "control"), ("EI (ReST-EM)", "sft"), ("control", "sft")]
    if "EI (restart)" in evals:
        pairs += [("EI (restart)", "sft"), ("EI (ReST-EM)", "EI (restart)")]
    rows = [effects.gain(f"{a} - {b}", pqs[a], pqs[b], m, rng, profile.eval.n_boot, round=round_,
                         steps=steps) for a, b in pairs for m in (MAJ1_STRICT, MAJK_STRICT, PASSK_STRICT)]
    table = effects.effects_frame(rows)
    return section(profile, {"ei_vs_control": table}, show=[
        f"round {round_}: the ReST-EM student took {steps:,} optimizer steps; the control takes as "
        f"many on the references only (the SFT model took "
        f"{logged_steps(stages.sft(profile, seed).run_dir):,})", table])
