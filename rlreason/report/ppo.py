"""Notebook 04, PPO: the six runs ({SFT, pretrained} x {sparse, dense, ORM}) and SFT/dense_any,
their training diagnostics, test metrics against rollouts next to EI's (C3), the final models'
gains over SFT and over their start (C1, C4), and the SFT-pretrained gap before and after PPO (C5)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .. import plots, stages
from ..analysis import effects
from ..analysis import results as res
from ..config import INITS
from ..evaluation import EvalResult, load_results
from ..names import (
    MAJ1_FLEXIBLE,
    MAJ1_STRICT,
    PASSK_FLEXIBLE,
    PASSK_STRICT,
    SUMMARY,
    hi,
    labels,
    lo,
)
from ..parallel import Call, run_calls
from ..profiles import Profile
from .common import Section, columns, section

REWARDS = ("sparse", "dense", "orm")
"""The rewards of the main grid, each from both starts."""
VARIANTS = (("sft", "dense_any"),)
"""Runs beside the grid: the dense reward that credits any valid path's intermediate results, from
SFT, against the paper's reference-matching `dense` (C4, or an artefact of the world's paths?)."""
DIAGNOSTICS = ("reward", "reward_gain", "train_correct", "kl", "approx_kl", "clip_frac",
               "explained_variance", "entropy", "response_len")
# Longest first: sft/sparse is evaluated every `eval_every` updates, the sparse runs' evaluations
# are reranked, runs from the base sample longer, more varied solutions.
ORDER = [("sft", "sparse"), ("pretrained", "sparse"), ("pretrained", "orm"),
         ("pretrained", "dense"), ("sft", "orm"), ("sft", "dense"), ("sft", "dense_any")]
Runs = dict[tuple[str, str], stages.StageResult]


def settings(profile: Profile) -> str:
    cfg = profile.ppo
    n = cfg.updates * cfg.questions_per_update * cfg.samples_per_question
    return (f"profile={profile.name}: {cfg.updates} updates x {cfg.questions_per_update} "
            f"questions x {cfg.samples_per_question} samples = {n:,} rollouts per run; "
            f"{cfg.ppo_epochs} PPO epochs, minibatch {cfg.minibatch_size}, lr {cfg.lr}, kl_coef "
            f"{cfg.kl_coef} ({cfg.kl_estimator}), GAE gamma {cfg.gamma} lambda {cfg.lam}, "
            f"{'LoRA r=' + str(profile.lora.r) if profile.lora else 'full fine-tuning'}; "
            f"evaluation K={profile.eval.k}")


def runs(profile: Profile, seed: int) -> Runs:
    """The six PPO runs of the grid and the `VARIANTS`, `profile.workers` at a time, reused when
    done (resumed when interrupted). The SFT-started sparse run is evaluated every `eval_every`
    updates, the others at the end; the sparse-reward runs are reranked by the ORM (rerank@K), the
    ORM-reward runs use it as reward."""
    cfg, orm = profile.ppo, stages.orm_scorer(profile, seed)
    final_only = dataclasses.replace(cfg, eval_every=cfg.updates)
    keys = [(init, reward) for init in INITS for reward in REWARDS] + list(VARIANTS)
    calls = {key: Call(stages.ppo, profile, key[0], seed, key[1],
                       cfg if key == ("sft", "sparse") else final_only,
                       orm=orm if key[1] == "orm" else None,
                       scorer=orm if key[1] == "sparse" else None, progress=False,
                       name=f"ppo {key[0]}/{key[1]}") for key in keys}
    order = [key for key in ORDER if key in calls] + [key for key in keys if key not in ORDER]
    done = dict(zip(order, run_calls([calls[key] for key in order], workers=profile.workers)))
    return {key: done[key] for key in keys}


def starts(profile: Profile, seed: int) -> dict[str, EvalResult]:
    """The starting models' test evaluations, reranked by the ORM (not recorded: notebooks 00-01
    recorded them)."""
    scorer = stages.orm_scorer(profile, seed)
    return {init: stages.evaluate(profile, stages.init_checkpoint(profile, init, seed), "test",
                                  record=False, scorer=scorer, progress=False) for init in INITS}


def final_evaluation(profile: Profile, run: stages.StageResult) -> EvalResult:
    """A run's final test evaluation (computed by the stage; read back when it was not kept)."""
    return run.final or stages.evaluate(profile, run.checkpoint, "test", record=False,
                                        progress=False)


StartRewards = dict[tuple[str, str], list[float]]
"""Per (init, reward) run, its starting policy's reward at each update (`start_rewards`)."""


def start_rewards(profile: Profile, ppo_runs: Runs, seed: int) -> StartRewards:
    """Per run, its starting policy's reward on each update's questions and seeds
    (`stages.start_rewards`, cached in the run folder), `profile.workers` at a time; the
    ORM-reward runs are scored by the ORM."""
    orm = stages.orm_scorer(profile, seed) if any(r == "orm" for _, r in ppo_runs) else None
    keys = list(ppo_runs)
    calls = [Call(stages.start_rewards, profile, ppo_runs[key],
                  orm=orm if key[1] == "orm" else None, name=f"start rewards {key[0]}/{key[1]}")
             for key in keys]
    return dict(zip(keys, run_calls(calls, workers=profile.workers, progress=False)))


def training_log(ppo_runs: Runs, start: StartRewards | None = None) -> pd.DataFrame:
    """Every update's logged values of every run (`reward` is the logged task reward of the
    rollouts; the reward's name is in `task`). With `start` (`start_rewards`): `start_reward`, the
    starting policy's on the same questions and seeds, and `reward_gain` = reward - start_reward,
    the learning curve without the difficulty of each update's questions."""
    frames = []
    for key, run in ppo_runs.items():
        df = pd.DataFrame(run.rows).assign(run=f"{key[0]}/{key[1]}", init=key[0], task=key[1])
        if start is not None:
            if len(start[key]) != len(df):
                raise ValueError(f"{run.name}: {len(start[key])} start rewards for {len(df)} "
                                 "updates")
            df["start_reward"] = start[key]
            df["reward_gain"] = df["reward"] - df["start_reward"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def gain_lines(log: pd.DataFrame) -> list[str]:
    """Per run: the mean reward_gain over the first and the last quarter of updates, and the last
    update's explained variance and KL (did it learn, is the value useful, how far did it move)."""
    lines = []
    for name, d in log.groupby("run", sort=False):
        d = d.sort_values("update")
        q = max(1, len(d) // 4)
        first, last, end = d.iloc[:q], d.iloc[-q:], d.iloc[-1]

        def span(part: pd.DataFrame) -> str:
            return (f"{part['reward_gain'].mean():+.3f} over updates "
                    f"{int(part['update'].iloc[0])}-{int(part['update'].iloc[-1])}")

        lines.append(f"{name}: reward_gain {span(first)}, {span(last)}; "
                     f"update {int(end['update'])}: explained_variance "
                     f"{end['explained_variance']:.2f}, kl {end['kl']:.2f} nats")
    return lines


def diagnostics(profile: Profile, ppo_runs: Runs, seed: int) -> Section:
    """Reward, its gain over the starting policy on the same questions, KL to the start,
    approx_kl, clip fraction, explained variance, entropy and length per update, one line per run;
    and per run the early and late reward_gain."""
    log = training_log(ppo_runs, start_rewards(profile, ppo_runs, seed))
    fig = plots.training_diagnostics(log, "rollouts", [d for d in DIAGNOSTICS if d in log],
                                     hue="run", ncols=3,
                                     title="PPO training diagnostics (per update)")
    return section(profile, {"ppo_training_log": log}, {"fig04_ppo_diagnostics": fig},
                   gain_lines(log))


def curve_table(results: pd.DataFrame, dataset: str, ppo_runs: Runs, start: dict[str, EvalResult],
                metrics: list[str]) -> pd.DataFrame:
    """Per run: the starting model at 0 rollouts, then each evaluation in the results table."""
    points = []
    for (init, reward), run in ppo_runs.items():
        ident = {"run": f"{init}/{reward}", "init": init, "reward": reward}
        points.append({**ident, "rollouts": 0, **{m: start[init].metrics.get(m) for m in metrics}})
        for _, row in res.run_rows(results, run.name, dataset).iterrows():
            points.append({**ident, "rollouts": row["rollouts"],
                           **{m: row.get(m) for m in metrics}})
    return pd.DataFrame(points)


def ei_curve_table(results: pd.DataFrame, dataset: str, start: dict[str, EvalResult],
                   metrics: list[str], seed: int) -> pd.DataFrame:
    """EI's main sparse-reward runs from the results table, each from its start at 0 rollouts."""
    main = res.main_runs(results, dataset, "ei", "sparse", seed)
    if not main:
        return pd.DataFrame()
    rows = pd.concat([res.run_rows(results, run, dataset) for run in main.values()])
    rows = rows.loc[:, ["run", "init", "rollouts"] + metrics]
    first = pd.DataFrame([{"init": i, "rollouts": 0,
                           **{m: start[i].metrics.get(m) for m in metrics}} for i in INITS])
    return pd.concat([first, rows]).assign(algorithm="ei")


def curves(profile: Profile, ppo_runs: Runs, start: dict[str, EvalResult], seed: int) -> Section:
    """maj@1, maj@K, rerank@K and pass@K against rollouts consumed (the start at 0), and the
    sparse runs next to EI's main runs on the same axis (C3)."""
    k, dataset = profile.eval.k, f"{profile.dataset}-test"
    metrics = [m for m in SUMMARY if start["sft"].metrics.get(m) is not None]
    results = load_results(profile.results_path)
    table = curve_table(results, dataset, ppo_runs, start, metrics)
    kw = {"labels": labels(metrics, k), "xlabel": "rollouts (sampled solutions)"}
    figs = {"fig04_ppo_rollouts": plots.metric_sweep(
        table, "rollouts", metrics, hue="run",
        title="PPO sample complexity (test set, strict grading)", **kw)}
    ei = ei_curve_table(results, dataset, start, metrics, seed)
    both = pd.concat([table[table["reward"] == "sparse"].assign(algorithm="ppo"), ei],
                     ignore_index=True)
    both["run"] = both["algorithm"] + " from " + both["init"]
    figs["fig04_ppo_vs_ei_rollouts"] = plots.metric_sweep(
        both, "rollouts", metrics, hue="run",
        title="PPO and EI (sparse reward) against rollouts consumed", **kw)
    show = ([columns(both[both["algorithm"] == "ei"], ["run", "rollouts"] + metrics)] if len(ei)
            else ["no EI rows in the results table (run notebook 03 first)"])
    return section(profile, {"ppo_curves": table}, figs, show)


def final_tables(profile: Profile, ppo_runs: Runs, start: dict[str, EvalResult],
                 rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The final models' metrics (the starting models first), and each run's maj@1 gain over
    SFT and over its own start (effect rows, paired over test questions)."""
    metrics = [m for m in SUMMARY if start["sft"].metrics.get(m) is not None]
    shown = metrics + [MAJ1_FLEXIBLE, PASSK_FLEXIBLE]
    rows = [{"model": f"{init} (start)", "init": init, "reward": "none", "rollouts": 0,
             **{m: r.metrics.get(m) for m in shown}} for init, r in start.items()]
    table = {init: res.result_table(r) for init, r in start.items()}
    gains = []
    for (init, reward), run in ppo_runs.items():
        final = final_evaluation(profile, run)
        m, name = final.metrics, f"ppo {init}/{reward}"
        rows.append({"model": name, "init": init, "reward": reward,
                     "rollouts": run.rows[-1]["rollouts"],
                     **{k: m.get(k) for k in shown}, lo(MAJ1_STRICT): m[lo(MAJ1_STRICT)],
                     hi(MAJ1_STRICT): m[hi(MAJ1_STRICT)], "final_kl": run.rows[-1]["kl"]})
        after = res.result_table(final)
        for vs, b in (("sft", table["sft"]), ("start", table[init])):
            gains.append(effects.gain(f"{name} - {vs} maj@1", after, b, MAJ1_STRICT, rng,
                                      profile.eval.n_boot, model=name, init=init, reward=reward,
                                      vs=vs))
    return pd.DataFrame(rows), effects.effects_frame(gains)


def final(profile: Profile, ppo_runs: Runs, start: dict[str, EvalResult],
          rng: np.random.Generator) -> Section:
    """The final PPO policies against the starting models, and their paired maj@1 gains."""
    table, gains = final_tables(profile, ppo_runs, start, rng)
    metrics = [m for m in SUMMARY if m in table and table[m].notna().any()]
    fig = plots.bar_metrics(table, "model", metrics, labels=labels(metrics, profile.eval.k),
                            title="PPO: final test metrics (strict grading)")
    return section(profile, {"ppo_final": table, "ppo_gains": gains}, {"fig04_ppo_final": fig},
                   [table, gains])


def gap_table(profile: Profile, ppo_runs: Runs, start: dict[str, EvalResult],
              rng: np.random.Generator) -> pd.DataFrame:
    """The SFT-started minus the pretrained-started model's maj@1: the starting models, then the
    PPO policies of each reward (paired over test questions)."""
    pairs = [("start", start["sft"], start["pretrained"])]
    pairs += [(f"after ppo ({reward})", final_evaluation(profile, ppo_runs["sft", reward]),
               final_evaluation(profile, ppo_runs["pretrained", reward])) for reward in REWARDS]
    return effects.effects_frame([
        effects.gain("sft-started - pretrained-started maj@1", res.result_table(a),
                     res.result_table(b), MAJ1_STRICT, rng, profile.eval.n_boot, stage=stage)
        for stage, a, b in pairs])


def init_gap(profile: Profile, ppo_runs: Runs, start: dict[str, EvalResult],
             rng: np.random.Generator) -> Section:
    """The gap between the SFT and the pretrained start before and after PPO (C5)."""
    gaps = gap_table(profile, ppo_runs, start, rng)
    return section(profile, {"ppo_init_gap": gaps}, show=[gaps])


def summary(profile: Profile, final_section: Section, gap_section: Section) -> Section:
    """One line per run (maj@1, gains, pass@K, final KL) and the gap before and after PPO."""
    f = final_section["ppo_final"].set_index("model")
    g = final_section["ppo_gains"].set_index(["model", "vs"])
    lines = []
    for name in [m for m in f.index if m.startswith("ppo ")]:
        r, start = f.loc[name], f.loc[f"{f.loc[name, 'init']} (start)"]
        s, i = g.loc[(name, "sft")], g.loc[(name, "start")]
        lines.append(f"{name} ({int(r['rollouts']):,} rollouts): maj@1 {start[MAJ1_STRICT]:.3f} -> "
                     f"{r[MAJ1_STRICT]:.3f}; vs SFT {s['gain']:+.3f} [{s['lo']:+.3f}, "
                     f"{s['hi']:+.3f}], vs its start {i['gain']:+.3f} [{i['lo']:+.3f}, "
                     f"{i['hi']:+.3f}]; pass@{profile.eval.k} {start[PASSK_STRICT]:.3f} -> "
                     f"{r[PASSK_STRICT]:.3f}; final KL {r['final_kl']:.2f} nats")
    gap = gap_section["ppo_init_gap"].set_index("stage")["gain"]
    lines.append(f"SFT minus pretrained maj@1 gap: {gap['start']:+.3f} at the start, "
                 f"{gap['after ppo (sparse)']:+.3f} after PPO with the sparse reward (claim C5)")
    return Section(show=lines)
