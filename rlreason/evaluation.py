"""The evaluation harness: maj@1, maj@K, rerank@K, pass@K (and the pass@k curve), strict and flexible.

For one policy (through any `Sampler`) and one problem set it samples one greedy solution and K
temperature samples per question, grades them in both modes, counts the distinct correct operation
signatures (the paper's diversity measure), and saves beside the checkpoint:
- `eval-<name>-rollouts.jsonl`: every rollout {id, answer, greedy, samples, mean_len};
- `eval-<name>-questions.jsonl`: the per-question arrays (`QUESTION_FIELDS`), the one source of
  per-question correctness that analysis reads (nothing is graded twice);
and appends one row to the results table (identity columns from a `RunInfo`, then the metrics) that
later notebooks aggregate. A finished evaluation is reused unless `recompute`, and only while
what decides its samples is the same (`eval-<name>.json`: eval config, questions, sampler backend,
model identity).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .config import EvalConfig
from .grading import GRADING_MODES, answers_match, extract_answer
from .io import append_jsonl, atomic_write_json, iter_jsonl, read_jsonl, write_jsonl
from .metrics import bootstrap_ci, maj_at_k, pass_at_k, rerank_at_k
from .problems import Problem, format_prompt
from .steps import operation_signature

# An algorithm's evaluation callback: `evaluate(checkpoint, info)` with `info` holding `round` /
# `update`, `rollouts`, `wall_s` and `record` (whether to write a results row); it returns the flat
# metric dict merged into the round's row.
EvaluateFn = Callable[[Path, dict], dict]

# A scorer gives each sampled completion of each problem a score (higher = more likely correct);
# the ORM's scorer is one. rerank@K takes the answer of the top-scored sample.
Scorer = Callable[[Sequence[Problem], Sequence[Sequence[str]]], list[list[float]]]

# The fixed schema of the results table: identity columns, then every metric (None when absent).
RESULT_ID_COLUMNS = ["run", "algorithm", "init", "reward", "dataset", "seed", "rollouts", "wall_s",
                     "checkpoint", "k", "temperature"]
RESULT_METRIC_COLUMNS = [f"{m}_{mode}" for m in ("maj1", "majK", "rerankK", "passK") for mode in GRADING_MODES] + [
    "maj1_strict_lo", "maj1_strict_hi", "passK_strict_lo", "passK_strict_hi",
    "distinct_correct", "frac_multi_correct", "mean_len", "n_questions"]
RESULT_COLUMNS = RESULT_ID_COLUMNS + RESULT_METRIC_COLUMNS


# The optional identity columns: written to a results row only when set, so a row holds only what
# applies to its run (an EI row has `round`, a PPO row `update`, an SFT-sweep row `epoch`).
_OPTIONAL_INFO = ("label", "labels", "round", "update", "epoch", "reranker", "variant")


@dataclass
class RunInfo:
    """The identity columns of a results row: which run, model and checkpoint a row measures."""

    run: str | None = None
    """The run folder's name (`ei-sft-sparse-k4-seed0`)."""
    algorithm: str | None = None
    """`base`, `sft`, `ei`, `ppo` or `rcrl`."""
    init: str | None = None
    """The starting point: `pretrained` or `sft`."""
    reward: str | None = None
    """`sparse`, `dense`, `orm` or `none`."""
    label: str | None = None
    """RCRL: the label the policy was prompted with (`good`, `bad`)."""
    labels: str | None = None
    """RCRL: sparse or dense labels."""
    seed: int | None = None
    rollouts: int | None = None
    """Rollouts (sampled training solutions) consumed when the checkpoint was saved."""
    round: int | None = None
    """EI / RCRL round."""
    update: int | None = None
    """PPO update."""
    epoch: int | None = None
    """SFT epoch (the SFT-epochs sweep)."""
    dataset: str | None = None
    """`<dataset>-<split>` (`tiny-test`)."""
    checkpoint: str | None = None
    """The checkpoint folder's name (`round_02`, `epoch_16`, `final`)."""
    wall_s: float | None = None
    """Wall time of the training that produced the checkpoint."""
    reranker: str | None = None
    """The reranker's run name when rerank@K was scored by a named ORM."""
    variant: str | None = None
    """A named other reading of the algorithm (EI's `restart`) or a control (SFT's `control`):
    its model gets its own label in the results, never the main one."""

    def row(self) -> dict:
        """The identity part of a results row: the fixed columns always, the optional ones
        (`label`, `labels`, `round`, `update`, `epoch`, `reranker`, `variant`) when set."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _OPTIONAL_INFO or getattr(self, f.name) is not None}


def info_row(info: RunInfo | dict | None) -> dict:
    """The identity columns of `info` (a `RunInfo`, or a dict of them) as a dict."""
    if info is None:
        return {}
    return info.row() if isinstance(info, RunInfo) else dict(info)


# The per-question arrays of an evaluation (`EvalResult.per_question`, and the rows of
# `eval-<name>-questions.jsonl`), per grading mode: greedy correct (`maj1`), majority vote of the K
# samples correct (`majK`), any sample correct (`passK`), correct samples (`n_correct`), each
# sample's correctness (`correct`, a list), the top-scored sample correct (`rerankK`, with a
# scorer); and `distinct_correct` (strict).
QUESTION_FIELDS = tuple(f"{m}_{mode}" for mode in GRADING_MODES
                        for m in ("maj1", "majK", "passK", "n_correct", "correct", "rerankK")) + (
    "distinct_correct",)


@dataclass
class EvalResult:
    """Metrics of one evaluation plus the per-question arrays needed for paired comparisons."""

    metrics: dict
    per_question: dict = field(default_factory=dict)
    """`QUESTION_FIELDS` -> one array entry per question (`correct_<mode>`: questions x K)."""
    ids: list[str] = field(default_factory=list)
    """The questions' ids, in the order of the arrays."""
    rollouts_path: Path | None = None
    """The saved rollouts (`eval-<name>-rollouts.jsonl`), when `evaluate` wrote them."""
    scores: list[list[float]] | None = None
    """The scorer's scores of the K samples of each question (None without a scorer)."""

    def questions(self) -> list[dict]:
        """One JSON-ready dict per question: `id`, `k` and the per-question arrays."""
        return question_rows(self.ids, self.per_question)


def question_rows(ids: Sequence[str], per_question: dict) -> list[dict]:
    """Per-question arrays as one dict per question (`id`, `k`, then `QUESTION_FIELDS`)."""
    rows = []
    for q, qid in enumerate(ids):
        row: dict = {"id": qid}
        for name in QUESTION_FIELDS:
            if name in per_question:
                value = per_question[name][q]
                row[name] = (np.asarray(value).tolist() if np.ndim(value) else np.asarray(value).item())
        row["k"] = len(row.get("correct_strict", ()))
        rows.append(row)
    return rows


def questions_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where `evaluate(..., out_dir=out_dir, name=name)` writes its per-question arrays."""
    return Path(out_dir) / f"eval-{name}-questions.jsonl"


def rollouts_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where `evaluate(..., out_dir=out_dir, name=name)` writes its rollouts."""
    return Path(out_dir) / f"eval-{name}-rollouts.jsonl"


def read_questions(out_dir: str | os.PathLike, name: str) -> list[dict] | None:
    """The per-question rows an evaluation saved (None when it never ran there). An evaluation
    saved before per-question arrays were written has only its rollouts: their per-question arrays
    are computed once from the rollouts by `grade_rollouts` (the same grading) and saved."""
    path = questions_path(out_dir, name)
    if path.exists():
        return read_jsonl(path)
    rollouts = rollouts_path(out_dir, name)
    if not rollouts.exists():
        return None
    rows = read_jsonl(rollouts)
    per_q = grade_rollouts([r["answer"] for r in rows], [r["greedy"] for r in rows],
                           [r["samples"] for r in rows])
    out = question_rows([r["id"] for r in rows], per_q)
    write_jsonl(path, out)
    return out


def distinct_correct_signatures(texts: Sequence[str], correct: Sequence[bool],
                                memo: dict | None = None) -> int:
    """How many different operation signatures the correct samples of one question use
    (`memo`: a dict that caches signatures by text across calls)."""
    memo = {} if memo is None else memo
    for t, ok in zip(texts, correct):
        if ok and t not in memo:
            memo[t] = operation_signature(t)
    return len({memo[t] for t, ok in zip(texts, correct) if ok})


def grade_rollouts(references: Sequence[float], greedy: Sequence[str],
                   samples: Sequence[Sequence[str]],
                   scores: Sequence[Sequence[float]] | None = None) -> dict:
    """The per-question arrays (`QUESTION_FIELDS`) of one greedy solution and K samples per
    question: the one grading of an evaluation."""
    k = len(samples[0]) if samples else 0
    per_q: dict = {}
    # Samples repeat (a confident policy's 32 samples hold a few distinct texts): each distinct
    # text is parsed once, in both modes.
    parsed: dict[str, dict[str, object]] = {}

    def answer(text: str, mode: str):
        if text not in parsed:
            parsed[text] = {m: extract_answer(text, m) for m in GRADING_MODES}
        return parsed[text][mode]

    for mode in GRADING_MODES:
        g = np.array([answers_match(answer(t, mode), r) for t, r in zip(greedy, references)])
        answers = [[answer(t, mode) for t in row] for row in samples]
        correct = np.array([[answers_match(a, r) for a in row] for row, r in zip(answers, references)],
                           dtype=bool).reshape(len(references), k)
        c = correct.sum(1)
        per_q[f"maj1_{mode}"] = g
        per_q[f"majK_{mode}"] = maj_at_k(answers, references)
        per_q[f"passK_{mode}"] = c > 0
        per_q[f"n_correct_{mode}"] = c
        per_q[f"correct_{mode}"] = correct
        if scores is not None:
            per_q[f"rerankK_{mode}"] = rerank_at_k(answers, scores, references)
        if mode == "strict":
            signatures: dict[str, object] = {}
            per_q["distinct_correct"] = np.array([distinct_correct_signatures(s, row, signatures)
                                                  for s, row in zip(samples, correct)], dtype=int)
    return per_q


def compute_metrics(problems: Sequence[Problem], greedy: Sequence[str], samples: Sequence[Sequence[str]],
                    cfg: EvalConfig, scores: Sequence[Sequence[float]] | None = None) -> EvalResult:
    """All metrics from completions (pure function of the texts: reused evaluations recompute it)."""
    rng = np.random.default_rng(cfg.seed)
    metrics: dict = {"n_questions": len(problems)}
    per_q = grade_rollouts([p.answer for p in problems], greedy, samples, scores)
    k = len(samples[0]) if samples else 0
    for mode in GRADING_MODES:
        c = per_q[f"n_correct_{mode}"]
        metrics[f"maj1_{mode}"] = float(per_q[f"maj1_{mode}"].mean())
        metrics[f"majK_{mode}"] = float(per_q[f"majK_{mode}"].mean())
        metrics[f"passK_{mode}"] = float((c > 0).mean())
        if scores is not None:
            metrics[f"rerankK_{mode}"] = float(per_q[f"rerankK_{mode}"].mean())
        if mode == "strict":
            metrics["pass_curve"] = {kk: float(np.mean(pass_at_k(np.full(len(c), k), c, kk)))
                                     for kk in cfg.pass_ks if kk <= k}
            distinct = per_q["distinct_correct"]
            solved = distinct > 0
            metrics["distinct_correct"] = float(distinct[solved].mean()) if solved.any() else 0.0
            metrics["frac_multi_correct"] = float((distinct[solved] >= 2).mean()) if solved.any() else 0.0
    for name in ("maj1_strict", "passK_strict"):
        _, lo, hi = bootstrap_ci(per_q[name].astype(float), rng, n_boot=cfg.n_boot)
        metrics[f"{name}_lo"], metrics[f"{name}_hi"] = float(lo), float(hi)
    metrics["k"], metrics["temperature"] = k, cfg.temperature
    return EvalResult(metrics, per_q, [p.id for p in problems],
                      scores=[list(map(float, row)) for row in scores] if scores is not None else None)


def _tokens(sample) -> int:
    return len(getattr(sample, "token_ids", ()) or ())


# ---- what decides the samples: the cache key of an evaluation -----------------------------------
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_KEY_FIELDS = ("config", "ids", "sampler", "model")


def model_identity(model: str | os.PathLike) -> dict:
    """A model's identity in the evaluation cache: a hub id as itself; a local folder by its path
    and a hash of its config files and its weight files' names, sizes and modification times."""
    path = Path(model)
    if not path.is_dir():
        return {"hub": str(model)}
    digest = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name in ("config.json", "adapter_config.json"):
            digest.update(f.name.encode() + f.read_bytes())
        elif f.suffix in _WEIGHT_SUFFIXES:
            digest.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    return {"folder": str(path.resolve()), "files": digest.hexdigest()[:16]}


def model_eval_dir(root: str | os.PathLike, model: str | os.PathLike) -> Path:
    """`root/<safe name>`: the evaluation folder of a model rlreason did not write, named after a
    hub id (`meta-llama--Llama-2-7b-hf`) or a local folder's name and a hash of its path."""
    path = Path(model).resolve() if Path(model).is_dir() else None
    name = (f"local-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}-{path.name}" if path
            else str(model).replace("/", "--"))
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("-.")


def evaluate(sampler, problems: Sequence[Problem], cfg: EvalConfig, *, out_dir: str | os.PathLike,
             name: str, scorer: Scorer | None = None, recompute: bool = False,
             results_path: str | os.PathLike | None = None, run_info: RunInfo | dict | None = None,
             progress: bool = True, backend: str = "hf", model: dict | None = None) -> EvalResult:
    """Evaluate a policy on `problems`, saving rollouts to `out_dir/eval-<name>-rollouts.jsonl` and
    the per-question arrays to `out_dir/eval-<name>-questions.jsonl`.

    `sampler` is a `Sampler` or a zero-argument factory of one (called only when sampling is
    needed, so a reused evaluation never loads the model).
    `run_info` fills the identity columns of the results row (run, algorithm, init, reward, dataset,
    seed, rollouts consumed, checkpoint); the row is appended to `results_path` if given. If the
    rollouts of the same configuration already exist, they are reused instead of sampled again
    (scores are recomputed, since the scorer may differ). The configuration is the eval config,
    the questions, the sampler `backend` (`hf`, `vllm`) and `model` (`model_identity`; None when
    `out_dir` is the model's own folder).
    """
    from .sampling import SamplingParams

    if not problems:
        raise ValueError(f"evaluate({name!r}) got an empty problem set")
    out = Path(out_dir)
    rollouts_file = rollouts_path(out, name)
    meta_path = out / f"eval-{name}.json"
    ids = [p.id for p in problems]
    # The HF backend and an unnamed model (files in the model's own folder, which a save replaces
    # whole) add nothing to the key: such evaluations keep the meta they had before these fields.
    key = {"config": asdict(cfg), "ids": ids, **({"sampler": backend} if backend != "hf" else {}),
           **({"model": model} if model is not None else {})}
    started = time.perf_counter()
    cached = None
    if not recompute and meta_path.exists() and rollouts_file.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta[k] for k in _KEY_FIELDS if k in meta} == json.loads(json.dumps(key)):
            cached = read_jsonl(rollouts_file)
    if cached is not None:
        greedy = [r["greedy"] for r in cached]
        samples = [r["samples"] for r in cached]
        lengths = [r["mean_len"] for r in cached]
        wall = json.loads(meta_path.read_text()).get("wall_s")
    else:
        if not hasattr(sampler, "generate"):  # a factory: only load the policy when sampling
            sampler = sampler()
        prompts = [format_prompt(p.question) for p in problems]
        greedy_out = sampler.generate(prompts, SamplingParams(
            n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop), seed=cfg.seed))
        sample_out = sampler.generate(prompts, SamplingParams(
            n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            stop=list(cfg.stop), seed=cfg.seed))
        greedy = [g[0].text for g in greedy_out]
        samples = [[s.text for s in row] for row in sample_out]
        lengths = [float(np.mean([_tokens(s) for s in row])) for row in sample_out]
        wall = time.perf_counter() - started
        write_jsonl(rollouts_file, [
            {"id": p.id, "answer": p.answer, "greedy": g, "samples": s, "mean_len": n}
            for p, g, s, n in zip(problems, greedy, samples, lengths)])
        atomic_write_json(meta_path, {**key, "wall_s": wall})
    scores = _scores(scorer, problems, samples, out / f"eval-{name}-scores.json",
                     reuse=cached is not None) if scorer is not None else None
    result = compute_metrics(problems, greedy, samples, cfg, scores)
    result.metrics["mean_len"] = float(np.mean(lengths))
    result.metrics["eval_wall_s"] = wall
    result.rollouts_path = rollouts_file
    write_jsonl(questions_path(out, name), result.questions())
    if results_path is not None:
        append_result(results_path, run_info, result.metrics)
    return result


def _scores(scorer: Scorer, problems, samples, path: Path, reuse: bool) -> list[list[float]]:
    """The scorer's scores of the samples, cached in `path` when the scorer has a `cache_id`
    (the ORM's scorer does): reused rollouts scored again by the same ORM are read back."""
    cache_id = getattr(scorer, "cache_id", None)
    if reuse and cache_id is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("scorer") == cache_id:
            return saved["scores"]
    scores = scorer(problems, samples)
    if cache_id is not None:
        atomic_write_json(path, {"scorer": cache_id, "scores": [[float(x) for x in row] for row in scores]})
    return scores


_RESULT_KEY = ("run", "dataset", "checkpoint")


def append_result(path: str | os.PathLike, info: RunInfo | dict | None, metrics: dict | None = None) -> dict:
    """Append one row with the fixed schema: the identity columns of `info` (a `RunInfo`; a dict
    is taken as a whole row), then `metrics`; unknown keys are kept after the fixed columns.

    A row equal to the latest one of its run/dataset/checkpoint is not written again: reading a
    finished evaluation back (every notebook re-run does) leaves the table as it was.
    """
    row = {**info_row(info), **(metrics or {})}
    fixed = {c: row.get(c) for c in RESULT_COLUMNS}
    extra = {k: v for k, v in row.items() if k not in fixed}
    full = {**fixed, **extra}
    for key, value in full.items():
        if isinstance(value, float) and not math.isfinite(value):
            full[key] = None
    if Path(path).exists():
        key = tuple(full.get(k) for k in _RESULT_KEY)
        latest = None
        for old in iter_jsonl(path):
            if tuple(old.get(k) for k in _RESULT_KEY) == key:
                latest = old
        if latest == json.loads(json.dumps(full, default=str)):
            return full
    append_jsonl(path, full)
    return full


def load_results(path: str | os.PathLike):
    """The results table as a pandas DataFrame (the last row wins for a repeated run/dataset/checkpoint)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=RESULT_COLUMNS)
    df = pd.DataFrame(read_jsonl(path))
    keys = [c for c in _RESULT_KEY if c in df]
    return df.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
