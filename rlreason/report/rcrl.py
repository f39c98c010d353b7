"""Notebook 05, return-conditioned RL: the runs ({SFT, pretrained} x {sparse, dense} labels), the
labelled data, metrics against rollouts, the gain over the start, the good-vs-bad label checks
(teacher-forced likelihood, then sampling), and RCRL next to SFT, EI and PPO (C1, C4)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from .. import plots, stages
from ..analysis import effects
from ..analysis import results as res
from ..config import INITS
from ..evaluation import load_results
from ..io import read_jsonl
from ..metrics import paired_difference_ci
from ..names import (
    MAJ1_FLEXIBLE,
    MAJ1_STRICT,
    MAJK_STRICT,
    PASS1_STRICT,
    PASSK_STRICT,
    hi,
    labels,
    lo,
)
from ..profiles import Profile
from ..rcrl import checkpoint
from .common import Section, columns, section

LABELS = ("sparse", "dense")
N_BOOT = 2000  # the bootstrap resamples of RCRL's paired effects
ROUNDS_SHOWN = ("variant", "round", "rollouts", "k", "train_sample_acc", "good_solutions",
                "good_labels", "data_size", "train_loss", MAJ1_STRICT, MAJ1_FLEXIBLE,
                PASS1_STRICT, MAJK_STRICT, PASSK_STRICT)
GAP_METRICS = (MAJ1_STRICT, PASS1_STRICT)
LIKELIHOOD_SHOWN = ("variant", "group", "n", "n_questions", "gap_per_token", "lo", "hi", "share_good",
                    "logp_good_per_token", "logp_bad_per_token")
VS_OTHERS = ["algorithm", "init", "reward", "run", "rollouts", "k", MAJ1_STRICT, lo(MAJ1_STRICT),
             hi(MAJ1_STRICT), MAJ1_FLEXIBLE, MAJK_STRICT, PASSK_STRICT]
Runs = dict[tuple[str, str], stages.StageResult]


def settings(profile: Profile) -> str:
    cfg = profile.rcrl
    return (f"K = {cfg.k} rollouts per question on {cfg.n_questions or 'all'} training questions, "
            f"{cfg.rounds} round(s); fine-tuning from the init: {cfg.train.epochs} epoch(s) at lr "
            f"{cfg.train.lr:g}, batch {cfg.train.batch_size}; labels: sparse good when the return "
            f"> {cfg.good_threshold:g}, dense good when the step reward > "
            f"{cfg.step_threshold:g}; RCRL "
            f"policies are evaluated with K = {cfg.eval_k or profile.eval.k}")


def variant(init: str, label_mode: str) -> str:
    return f"{init} / {label_mode}"


def runs(profile: Profile, seed: int) -> Runs:
    """The four runs (reward = label mode), reused when done; round 1's rollouts are shared by
    the sparse and the dense run of the same start."""
    return {(init, mode): stages.rcrl(profile, init, seed, labels=mode, reward=mode)
            for init in INITS for mode in LABELS}


def rounds_table(rcrl_runs: Runs) -> pd.DataFrame:
    """Every run's rows per round (round 0: the start), with its `variant`."""
    return pd.DataFrame([dict(row, variant=variant(*key)) for key, run in rcrl_runs.items()
                         for row in run.rows])


def rounds(profile: Profile, rcrl_runs: Runs) -> Section:
    """The rounds of every run: training-side numbers and test metrics."""
    table = columns(rounds_table(rcrl_runs), ROUNDS_SHOWN)
    return section(profile, {"rcrl_rounds": table}, show=[table])


def labelled_examples(rcrl_runs: Runs) -> Section:
    """A correct and a wrong labelled rollout of the SFT model per label mode (labels shown)."""
    text = []
    for mode in LABELS:
        run = rcrl_runs["sft", mode]
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint(run.run_dir, 1)))
        data = read_jsonl(run.run_dir / "round_01.data.jsonl")
        shown = [d for d in data if d["correct"]][:1] + [d for d in data if not d["correct"]][:1]
        text += [f"[{mode} · {d['id']} · return {d['total']:.2f}]\n{tokenizer.decode(d['ids'])}\n"
                 for d in shown]
    return Section(show=text)


def curves(profile: Profile, rcrl_runs: Runs) -> Section:
    """maj@1 and pass@1 (both independent of K) against rollouts, round 0 at the start."""
    table = rounds_table(rcrl_runs)
    fig = plots.metric_sweep(table, "rollouts", list(GAP_METRICS), hue="variant",
                             labels=labels(GAP_METRICS), xlabel="rollouts",
                             title="RCRL (good label) on the test set, against rollouts")
    return section(profile, figures={"fig05_rcrl_rollouts": fig})


def _identity(run: stages.StageResult, key: tuple[str, str]) -> dict:
    return {"run": run.name, "init": key[0], "labels": key[1], "reward": run.reward,
            "split": run.identity.get("eval_split", "test"), "variant": variant(*key)}


def gain_table(profile: Profile, rcrl_runs: Runs, seed: int) -> pd.DataFrame:
    """Each run's final policy (good label) minus its start, maj@1 and pass@1, paired over the
    test questions (one bootstrap generator per run, from `seed`)."""
    rows = []
    for key, run in rcrl_runs.items():
        init = stages.evaluate(profile, stages.init_checkpoint(profile, key[0], seed),
                               run.identity.get("eval_split", "test"), record=False, progress=False)
        rows += effects.gains_over_start(res.result_table(run.final), res.result_table(init),
                                         GAP_METRICS, np.random.default_rng(seed), N_BOOT,
                                         name=f"rcrl {variant(*key)}", start_name=key[0],
                                         **_identity(run, key))
    return effects.effects_frame(rows)


def gains(profile: Profile, rcrl_runs: Runs, seed: int) -> Section:
    """RCRL's final policy minus its starting point (95% bootstrap CIs)."""
    table = gain_table(profile, rcrl_runs, seed)
    return section(profile, {"rcrl_gain_over_init": table}, show=[table])


LIKELIHOOD_GROUPS = ("correct rollouts", "wrong rollouts", "test references")


def likelihood_group(row: dict) -> str:
    """The group of a `stages.rcrl_label_likelihood` row (`LIKELIHOOD_GROUPS`)."""
    if row["source"] == "reference":
        return LIKELIHOOD_GROUPS[2]
    return LIKELIHOOD_GROUPS[0] if row["correct"] else LIKELIHOOD_GROUPS[1]


def likelihood_groups(rows: list[dict], rng: np.random.Generator, n_boot: int = N_BOOT) -> list[dict]:
    """Per group of solutions: n, the mean per-token log-likelihood gap good - bad with its paired
    bootstrap 95% CI over questions (a question's solutions are averaged first: the K rollouts of
    one question are not independent), and the share of solutions likelier under good. Solutions
    with no scored token are left out; a group without solutions has n = 0 and NaN statistics."""
    out = []
    for group in LIKELIHOOD_GROUPS:
        kept = [r for r in rows if likelihood_group(r) == group and r["n_tokens"] > 0]
        good = np.array([r["logp_good"] / r["n_tokens"] for r in kept])
        bad = np.array([r["logp_bad"] / r["n_tokens"] for r in kept])
        per_q = pd.DataFrame({"id": [r["id"] for r in kept], "good": good, "bad": bad}).groupby("id").mean()
        ci = (paired_difference_ci(per_q["good"].to_numpy(), per_q["bad"].to_numpy(), rng, n_boot)
              if kept else (np.nan, np.nan, np.nan))
        out.append({"group": group, "n": len(kept), "n_questions": len(per_q),
                    "gap_per_token": ci[0], "lo": ci[1], "hi": ci[2],
                    "share_good": float(np.mean(good > bad)) if kept else np.nan,
                    "logp_good_per_token": float(good.mean()) if kept else np.nan,
                    "logp_bad_per_token": float(bad.mean()) if kept else np.nan})
    return out


def likelihood_verdict(groups: list[dict]) -> str:
    """Is the label read? Yes when correct rollouts are likelier under good than under bad (CI
    above 0) and wrong ones are not (CI not above 0); `groups` are `likelihood_groups` rows."""
    by = {g["group"]: g for g in groups}
    correct, wrong = by[LIKELIHOOD_GROUPS[0]], by[LIKELIHOOD_GROUPS[1]]
    missing = [g["group"] for g in (correct, wrong) if g["n"] == 0]
    if missing:
        return f"cannot tell (no {' and no '.join(missing)})"
    if correct["lo"] > 0 and not wrong["lo"] > 0:
        return "the label is read"
    if correct["lo"] > 0:
        return "not read: the good label makes wrong solutions likelier too"
    return "not read: correct solutions are not likelier under the good label"


def label_likelihood_table(profile: Profile, rcrl_runs: Runs, seed: int) -> pd.DataFrame:
    """Per run and group, the teacher-forced gap good - bad of `stages.rcrl_label_likelihood`
    (one bootstrap generator per run, from `seed`), and the run's verdict."""
    rows = []
    for key, run in rcrl_runs.items():
        groups = likelihood_groups(stages.rcrl_label_likelihood(profile, run), np.random.default_rng(seed))
        verdict = likelihood_verdict(groups)
        rows += [{**_identity(run, key), **g, "verdict": verdict} for g in groups]
    return pd.DataFrame(rows)


def label_likelihood(profile: Profile, rcrl_runs: Runs, seed: int) -> Section:
    """Does the final policy read its label? Known solutions' teacher-forced log-likelihood under
    the good minus the bad label, per token, for correct and wrong rollouts and test references."""
    table = label_likelihood_table(profile, rcrl_runs, seed)
    shown = table[table["n"] > 0]
    fig = plots.interval_points(
        shown, "variant", "group", y="gap_per_token", ylabel="nats / token",
        title="log p(solution | good) - log p(solution | bad), per token") if len(shown) else None
    lines = []
    for variant_name, rows in table.groupby("variant", sort=False):
        stats = "; ".join(f"{r['group']} {r['gap_per_token']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"
                          f" (n={r['n']})" for _, r in rows.iterrows() if r["n"] > 0)
        lines.append(f"{variant_name}: {rows['verdict'].iloc[0]}: {stats}")
    return section(profile, {"rcrl_label_likelihood": table}, {"fig05_rcrl_label_likelihood": fig},
                   [columns(table, LIKELIHOOD_SHOWN), *lines])


def label_gap_table(profile: Profile, rcrl_runs: Runs, seed: int) -> pd.DataFrame:
    """Each run's final policy prompted with the good minus the bad label, maj@1 (greedy) and
    pass@1 (share of correct samples; the bad side samples `rcrl.bad_eval_k` per question)."""
    rows = []
    for key, run in rcrl_runs.items():
        good, bad = run.final, stages.rcrl_bad_label(profile, run)
        rows += effects.gains_over_start(res.result_table(good), res.result_table(bad), GAP_METRICS,
                                         np.random.default_rng(seed), N_BOOT, name="good",
                                         start_name="bad", k_good=good.metrics["k"],
                                         k_bad=bad.metrics["k"], **_identity(run, key))
    return effects.effects_frame(rows)


def label_gap(profile: Profile, rcrl_runs: Runs, seed: int) -> Section:
    """Do the labels carry meaning? The good and the bad label's scores and their paired gap."""
    table = label_gap_table(profile, rcrl_runs, seed)
    fig = plots.conditioning_gap(table, GAP_METRICS, labels={
        MAJ1_STRICT: "maj@1 (greedy)", PASS1_STRICT: "pass@1 (temperature samples)"})
    return section(profile, {"rcrl_label_gap": table}, {"fig05_rcrl_label_gap": fig}, [table])


def vs_others_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The last row (most rollouts) of every SFT, EI, PPO and RCRL run on `dataset`."""
    rows = res.rows_of(results, dataset, algorithm=["sft", "ei", "ppo", "rcrl"])
    if not len(rows):
        return pd.DataFrame(columns=VS_OTHERS)
    final = (rows.sort_values("rollouts").groupby("run", as_index=False).tail(1)
             .sort_values(["init", "algorithm", "reward"]))
    return final.reindex(columns=VS_OTHERS)


def vs_others(profile: Profile) -> Section:
    """RCRL next to SFT, EI and PPO in the shared results table (test set)."""
    table = vs_others_table(load_results(profile.results_path), f"{profile.dataset}-test")
    lines = [f"{r['run']}: maj@1 {r[MAJ1_STRICT]:.3f} [{r[lo(MAJ1_STRICT)]:.3f}, "
             f"{r[hi(MAJ1_STRICT)]:.3f}], pass@{int(r['k'])} {r[PASSK_STRICT]:.3f} after "
             f"{int(r['rollouts'])} rollouts"
             for _, r in table[table["algorithm"] == "rcrl"].iterrows()]
    return section(profile, {"rcrl_vs_others": table}, show=[table, *lines])
