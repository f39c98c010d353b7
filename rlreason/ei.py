"""Expert Iteration (EI), the paper's procedure, read top to bottom in `train_ei`.

Round i = 1..N:
1. **sample** K solutions per training question from the current policy (round 1: the initial
   model; round i: the policy of round i-1) at the configured temperature;
2. **score** them with the chosen reward (sparse by default; dense or ORM selectable) and keep
   those whose reward total passes the reward's threshold (`cfg.thresholds`: a number, or the
   median of the round's rewards for the ORM) and whose final answer is correct
   (`cfg.drop_wrong_calculations`: and whose calculator annotations are right, as RFT);
3. **de-duplicate**: a solution is a duplicate when it applies the same sequence of arithmetic
   operations (`steps.operation_signature`) as another of the same question, in this round or in
   D_{i-1}; the first one is kept;
4. **accumulate** D_i = R_i ∪ D_{i-1} (optionally capped per question);
5. **fine-tune** a student on D_i (and the references, if asked) with the SFT trainer, then
   evaluate on the test set. The student (`cfg.student`): `init`, the initial model with the short
   fine-tune `cfg.sft`; `pretrained`, the pretrained base with the SFT recipe (ReST-EM, RFT), given
   by the caller as `student_init` and `student_cfg`; `last`, the last policy with `cfg.sft`.

Round 0 is the initial model's evaluation (0 rollouts), so every curve starts at the init. Each
round's row also says whether EI learns: accuracy of its samples on the training questions
(`train_sample_acc`, T=1), |D_i| (`data_size`), distinct correct operation signatures per question
in D_i (`signatures_per_question`, `share_multi_signature`: share with >= 2), and, if asked
(`cfg.train_eval_questions`), the greedy accuracy of the round's policy on training questions.

Run folder (`runs.Run.dir`, named and opened by the stage):
- `round_NN.rollouts.jsonl`: the round's samples with their reward and correctness (step 1-2);
- `round_NN.data.jsonl`: D_i, the solutions kept so far per question (steps 3-4);
- `round_NN/`: the round's policy (step 5), with its evaluation files;
- `round_NN.json`: the round's metrics row (the round is finished); `metrics.jsonl` lists them all.
Each file is written atomically and marks a finished step, so a run stopped anywhere continues from
its last finished step. Every random choice is seeded by (seed, round), so a resumed run gives the
same numbers as an uninterrupted one. Round i does not depend on the number of rounds asked for, so
asking a finished run for more rounds extends it, and a shorter run reuses the first rounds.

Under `accelerate launch` rank 0 alone samples, scores, evaluates and writes every file (the others
wait for it, `distributed.run_on_main`, and read them); every rank fine-tunes the student together
(`train_sft`, data-parallel) and runs `callback`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import EIConfig, LoraSettings, SFTConfig
from .distributed import main_process_only, run_on_main
from .grading import is_correct
from .io import atomic_write_json, read_jsonl, write_jsonl
from .models import load_policy, save_policy
from .problems import Problem, format_completion, format_prompt
from .rewards import RewardFn
from .runs import Run, round_seed, set_seed
from .sampling import Sampler, SamplingParams
from .steps import find_calculations, operation_signature
from .training import logged_steps, train_sft

if TYPE_CHECKING:
    from .evaluation import EvaluateFn


# ---- small pure functions ----------------------------------------------------------------------

@dataclass(frozen=True)
class Solution:
    """One self-generated solution kept in the EI dataset."""

    text: str
    """The completion as sampled (without the prompt)."""
    round: int
    """The round that produced it."""
    reward: float
    """Its reward total when it was kept."""

    @property
    def signature(self) -> tuple[str, ...]:
        """The de-duplication key: the sequence of arithmetic operations it applies."""
        return operation_signature(self.text)


Data = dict[str, list[Solution]]
"""D_i: the kept solutions of each training question, by problem id."""


def passes_filter(reward: float, correct: bool, threshold: float, require_correct: bool = True) -> bool:
    """Whether a sample is kept: its reward passes the threshold (and its answer is right).

    A reward within 1e-9 below the threshold passes (dense rewards are sums of fractions).
    """
    return reward >= threshold - 1e-9 and (correct or not require_correct)


def round_threshold(spec: float | str, rewards: Sequence[float]) -> float:
    """The filter threshold of one round: a number as it is, `"median"` the median of the round's
    rewards (all samples, right or wrong), so that a reward model is used as a ranker.

    >>> round_threshold(0.75, [0.1, 0.9]), round_threshold("median", [0.2, 0.4, 0.3])
    (0.75, 0.3)
    """
    if isinstance(spec, str):
        if spec != "median":
            raise ValueError(f"EI threshold {spec!r}: expected a number or 'median'")
        if len(rewards) == 0:
            raise ValueError("EI threshold 'median' of a round without samples")
        return float(np.median(np.asarray(rewards, dtype=float)))
    return float(spec)


def dedupe(texts: Sequence[str], seen: Iterable[tuple[str, ...]] = ()) -> list[int]:
    """Indices of the texts to keep: the first of each operation signature not already in `seen`.

    >>> dedupe(["<<3+4=7>>7\\n#### 7", "<<4+3=7>>7\\n#### 7", "<<2*5=10>>10"])
    [0, 2]
    """
    seen = set(seen)
    keep = []
    for i, text in enumerate(texts):
        sig = operation_signature(text)
        if sig not in seen:
            seen.add(sig)
            keep.append(i)
    return keep


_ANNOTATION = re.compile(r"<<[^<>]*>>")


def calculations_ok(text: str) -> bool:
    """Whether every calculator annotation `<<a op b=c>>` before `####` is arithmetically right:
    its expression computes (`steps.safe_eval`) and equals the claimed `c`. As RFT's check, one
    without `=c` or that does not compute is wrong; a solution without annotations passes.

    >>> calculations_ok("<<3+4=7>>7\\n#### 7"), calculations_ok("<<3+4=8>>8\\n#### 8")
    (True, False)
    """
    for annotation in _ANNOTATION.findall(text.partition("####")[0]):
        if not all(calc.is_right for calc in find_calculations(annotation)):
            return False
    return True


def select_solutions(texts: Sequence[str], rewards: Sequence[float], correct: Sequence[bool],
                     previous: Sequence[Solution], round_: int, threshold: float,
                     require_correct: bool = True, keep: Sequence[bool] | None = None
                     ) -> list[Solution]:
    """R_i for one question: samples that pass the filter (and are in `keep`, when given), minus
    duplicates (also of D_{i-1})."""
    passing = [i for i in range(len(texts))
               if passes_filter(rewards[i], correct[i], threshold, require_correct)
               and (keep is None or keep[i])]
    fresh = dedupe([texts[i] for i in passing], seen=(s.signature for s in previous))
    return [Solution(texts[passing[j]], round_, float(rewards[passing[j]])) for j in fresh]


def accumulate(previous: Data, new: Data, cap: int | None = None) -> Data:
    """D_i = D_{i-1} ∪ R_i per question (older solutions first), at most `cap` per question."""
    out: Data = {}
    for qid in list(previous) + [q for q in new if q not in previous]:
        merged = list(previous.get(qid, ())) + list(new.get(qid, ()))
        out[qid] = merged[:cap] if cap is not None else merged
    return out


def data_size(data: Data) -> int:
    """|D_i|: the number of solutions kept over all questions."""
    return sum(len(v) for v in data.values())


def signature_counts(items: Sequence[Problem], data: Data) -> list[int]:
    """Per question, the distinct operation signatures among its correct solutions in D_i."""
    return [len({s.signature for s in data.get(p.id, ()) if is_correct(s.text, p.answer, "strict")})
            for p in items]


def greedy_accuracy(sampler: Sampler, items: Sequence[Problem], params: SamplingParams,
                    seed: int) -> float:
    """Greedy strict accuracy of the sampler's policy on `items` (training questions: in-sample)."""
    out = sampler.generate([format_prompt(p.question) for p in items],
                           dataclasses.replace(params, n=1, temperature=0.0, seed=seed))
    return float(np.mean([is_correct(o[0].text, p.answer, "strict") for o, p in zip(out, items)]))


def training_examples(items: Sequence[Problem], data: Data, include_references: bool = False
                      ) -> list[tuple[str, str]]:
    """(prompt, completion) pairs to fine-tune on: D_i, and the references if asked."""
    examples = []
    for p in items:
        prompt = format_prompt(p.question)
        if include_references:
            examples.append((prompt, format_completion(p.solution)))
        examples += [(prompt, format_completion(s.text)) for s in data.get(p.id, ())]
    return examples


def eval_round(round_: int, rounds: int, every: int) -> bool:
    """Whether round `round_` (1-based) is evaluated: every `every` rounds and always the last."""
    return round_ == rounds or (every > 0 and round_ % every == 0)


def checkpoint(run_dir: str | Path, round_: int) -> Path:
    """The policy after round `round_` (>= 1)."""
    return Path(run_dir) / f"round_{round_:02d}"


def round_row(run_dir: str | Path, round_: int) -> Path:
    """Round `round_`'s metrics row, written once the round is finished."""
    return Path(run_dir) / f"round_{round_:02d}.json"


def load_data(path: Path) -> Data:
    return {r["id"]: [Solution(**s) for s in r["solutions"]] for r in read_jsonl(path)}


def save_data(path: Path, data: Data) -> None:
    write_jsonl(path, [{"id": qid, "solutions": [dataclasses.asdict(s) for s in sols]}
                       for qid, sols in data.items()])


def train_steps(run_dir: str | Path, round_: int) -> int:
    """Optimizer steps the student of round `round_` took (0 for round 0 or an empty D_i)."""
    return logged_steps(Path(run_dir) / f"train_{round_:02d}")


def load_metrics(run_dir: str | Path, rounds: int | None = None) -> list[dict]:
    """The per-round rows of a run (round 0 is the initial model), up to round `rounds` if given."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return [r for r in rows if rounds is None or r["round"] <= rounds]



# ---- the loop ----------------------------------------------------------------------------------

def train_ei(init: str | Path, items: Sequence[Problem], reward_fn: RewardFn, cfg: EIConfig,
             run: Run, *, make_sampler: Callable[[Path], Sampler], params: SamplingParams,
             threshold: float | str, evaluate: EvaluateFn | None = None, lora: LoraSettings | None = None,
             load_in_4bit: bool = False, callback: Callable | None = None,
             progress: bool = False, student_init: str | Path | None = None,
             student_cfg: SFTConfig | None = None) -> list[dict]:
    """Expert Iteration from the checkpoint `init` into `run.dir`; returns the rows of rounds
    0..`cfg.rounds` (see the module doc).

    - `items`: the training questions (the first `cfg.n_questions` are used);
    - `reward_fn` scores the samples; `threshold`: its filter threshold (`cfg.thresholds[reward]`);
    - `make_sampler(policy)` loads a sampler; `params` is the rollout config (its `n`,
      `temperature` and `seed` are set here per round);
    - `evaluate(checkpoint, info)` (None: no evaluation) returns the metrics merged into a round's
      row; `info` holds `round`, `rollouts`, `wall_s` and `record` (False for round 0);
    - `callback(event, round, **info)` is called at each step (`sampled`, `filtered`,
      `train_start` with the model about to be fine-tuned, `trained`, `evaluated`), on every
      process of a launch; an exception it raises stops the run as an interruption would;
    - `student_init`, `student_cfg`: the pretrained base and the SFT recipe (its seed replaced by
      the round's) that `cfg.student="pretrained"` retrains each round; unused otherwise.
    """
    callback = callback or (lambda event, round_, **info: None)
    round_threshold(threshold, [0.0])  # a bad spec fails here, before any sampling
    if cfg.student == "pretrained" and (student_init is None or student_cfg is None):
        raise ValueError('EIConfig.student = "pretrained" needs student_init (the pretrained base) '
                         "and student_cfg (the SFT recipe)")
    items = list(items)[: cfg.n_questions]
    greedy_items = items[: cfg.train_eval_questions] if cfg.train_eval_questions else []
    run_dir = run.dir
    prompts = [format_prompt(p.question) for p in items]
    evaluate = main_process_only(evaluate) if evaluate is not None else None

    @main_process_only
    def finish_round(row: dict) -> None:
        atomic_write_json(round_row(run_dir, row["round"]), row)
        rows = [json.loads(p.read_text()) for p in sorted(run_dir.glob("round_[0-9][0-9].json"))]
        write_jsonl(run_dir / "metrics.jsonl", rows)

    @main_process_only
    def train_greedy(policy: Path, seed_: int) -> dict:
        if not greedy_items:
            return {}
        sampler = make_sampler(policy)
        return {"train_greedy_acc": greedy_accuracy(sampler, greedy_items, params, seed_)}

    @main_process_only
    def sample(policy: Path, path: Path, seed_: int) -> float:
        """Steps 1-2: K solutions per question from `policy`, scored, into `path`; the seconds."""
        started = time.perf_counter()
        set_seed(seed_)
        sampler = make_sampler(policy)
        samples = sampler.generate(prompts, dataclasses.replace(
            params, n=cfg.k, temperature=cfg.temperature, seed=seed_))
        del sampler
        flat_items = [p for p in items for _ in range(cfg.k)]
        rewards = [r.total for r in reward_fn(flat_items, [s for row in samples for s in row])]
        write_jsonl(path, [
            {"id": p.id, "texts": [s.text for s in row],
             "rewards": rewards[i * cfg.k:(i + 1) * cfg.k],
             "correct": [is_correct(s.text, p.answer, "strict") for s in row],
             "tokens": [len(s.token_ids) for s in row]}
            for i, (p, row) in enumerate(zip(items, samples))])
        return time.perf_counter() - started

    # Round 0: the initial model (its evaluation is cached next to it and shared with other runs).
    if not run_on_main((run_dir / "round_00.json").exists):
        row = {"round": 0, "rollouts": 0, "questions": len(items), "k": cfg.k, "data_size": 0}
        row |= train_greedy(Path(init), round_seed(run.seed, 0))
        if evaluate is not None:
            row |= evaluate(Path(init), {"round": 0, "rollouts": 0, "wall_s": 0.0, "record": False})
        finish_round(row)

    data: Data = {}
    rollouts, wall = 0, 0.0  # rollouts consumed; wall seconds of sampling and fine-tuning so far
    for round_ in range(1, cfg.rounds + 1):
        row_path = round_row(run_dir, round_)
        rollouts_path = run_dir / f"round_{round_:02d}.rollouts.jsonl"
        data_path = run_dir / f"round_{round_:02d}.data.jsonl"
        policy = Path(init) if round_ == 1 else checkpoint(run_dir, round_ - 1)
        ckpt = checkpoint(run_dir, round_)
        seed_r = round_seed(run.seed, round_)
        rollouts += len(items) * cfg.k
        if run_on_main(row_path.exists):  # finished earlier: only its D_i (and last round eval)
            data = load_data(data_path)
            row = json.loads(row_path.read_text())
            wall += row.get("sample_wall_s", 0.0) + row.get("train_wall_s", 0.0)
            if round_ == cfg.rounds and evaluate is not None and "maj1_strict" not in row:
                finish_round(row | evaluate(ckpt, {"round": round_, "rollouts": rollouts,
                                                   "wall_s": wall, "record": True}))
            continue
        timings = {}

        # 1-2. Sample K solutions per question from the current policy and score them.
        if not run_on_main(rollouts_path.exists):
            timings["sample_wall_s"] = sample(policy, rollouts_path, seed_r)
        callback("sampled", round_)
        sampled = read_jsonl(rollouts_path)

        # 3-4. Filter (and drop wrong calculations, if asked), de-duplicate against this round and
        # D_{i-1}, accumulate D_i = R_i ∪ D_{i-1} (every rank: it needs D_i to train).
        cutoff = round_threshold(threshold, [w for r in sampled for w in r["rewards"]])
        new, passing, bad_calc = {}, [], 0
        for r in sampled:
            passed = [passes_filter(w, c, cutoff, cfg.require_correct)
                      for w, c in zip(r["rewards"], r["correct"])]
            bad = [ok and not calculations_ok(t) for ok, t in zip(passed, r["texts"])]
            keep = [not b for b in bad] if cfg.drop_wrong_calculations else None
            new[r["id"]] = select_solutions(r["texts"], r["rewards"], r["correct"],
                                            data.get(r["id"], ()), round_, cutoff,
                                            cfg.require_correct, keep)
            passing.append(sum(passed))
            bad_calc += sum(bad)
        data = accumulate(data, new, cfg.max_per_question)
        run_on_main(save_data, data_path, data)
        callback("filtered", round_, data=data)

        # 5. Fine-tune the student (initial model, pretrained base or last policy) on D_i.
        examples = training_examples(items, data, bool(cfg.include_references))
        train_dir = run_dir / f"train_{round_:02d}"
        if not run_on_main(ckpt.exists):
            started = time.perf_counter()
            start, recipe = (policy if cfg.student == "last" else Path(init)), cfg.sft
            if cfg.student == "pretrained":
                start, recipe = Path(student_init), student_cfg
            set_seed(seed_r)
            model, tokenizer = load_policy(str(start), lora=lora, load_in_4bit=load_in_4bit)
            callback("train_start", round_, model=model, start=start)
            run_on_main((train_dir / "metrics.jsonl").unlink, missing_ok=True)
            sft_cfg = dataclasses.replace(recipe, seed=seed_r, save_every_epoch=False)
            if examples:
                train_sft(model, tokenizer, examples, sft_cfg, out_dir=train_dir, progress=progress)
            run_on_main(save_policy, model, tokenizer, ckpt)
            del model
            timings["train_wall_s"] = time.perf_counter() - started
        callback("trained", round_, path=ckpt)
        log = train_dir / "metrics.jsonl"
        train_rows = read_jsonl(log) if log.exists() else []
        losses = [r["loss"] for r in train_rows if "loss" in r]

        # Record the round: rollouts consumed, training-set coverage, D_i, test-set metrics.
        correct = np.array([r["correct"] for r in sampled], dtype=bool)
        signatures = signature_counts(items, data)
        row = {"round": round_, "rollouts": rollouts, "questions": len(items), "k": cfg.k,
               "train_sample_acc": float(correct.mean()),
               "train_solved": float(np.mean([n > 0 for n in passing])),
               "threshold": cutoff, "kept": int(sum(passing)), "new_unique": data_size(new),
               "data_size": data_size(data),
               "train_examples": len(examples), "train_loss": losses[-1] if losses else None,
               "mean_tokens": float(np.mean([t for r in sampled for t in r["tokens"]])),
               "bad_calc": bad_calc,
               "dropped_bad_calc": bad_calc if cfg.drop_wrong_calculations else 0,
               "signatures_per_question": float(np.mean(signatures)),
               "share_multi_signature": float(np.mean([n >= 2 for n in signatures]))}
        wall += timings.get("sample_wall_s", 0.0) + timings.get("train_wall_s", 0.0)
        row |= train_greedy(ckpt, seed_r)
        if evaluate is not None and eval_round(round_, cfg.rounds, cfg.evaluate_every):
            started = time.perf_counter()
            row |= evaluate(ckpt, {"round": round_, "rollouts": rollouts, "wall_s": wall,
                                   "record": True})
            timings["round_eval_wall_s"] = time.perf_counter() - started
        finish_round(row | timings)
        callback("evaluated", round_, row=row)

    return load_metrics(run_dir, cfg.rounds)
