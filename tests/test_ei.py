"""Expert Iteration: filtering, de-duplication, D_i, the student of each round, the calculation
check, the per-round diagnostics, improvement, resume.

The end-to-end tests run on an *easy world* built here: one-step additions `a + b` (a, b in 1..9)
and a 2-layer Llama SFT-ed from scratch on the references of 40 of the 81 questions, so that it
solves some training questions and misses others. EI on such a world must raise training-set
accuracy within two rounds, in seconds.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from rlreason import ei, runs
from rlreason.config import EIConfig, EvalConfig, SFTConfig
from rlreason.ei import Solution
from rlreason.evaluation import evaluate
from rlreason.grading import is_correct
from rlreason.io import read_jsonl
from rlreason.models import load_policy
from rlreason.problems import Problem, format_completion, format_prompt
from rlreason.profiles import get_profile
from rlreason.rewards import make_reward
from rlreason.sampling import HFSampler, Sample, SamplingParams
from rlreason.stages.ei import ei_config, ei_identity, ei_run_name

SPARSE = make_reward("sparse")


def sol(*steps: str, answer: int) -> str:
    return "\n".join(f"<<{s}>>{s.split('=')[1]}" for s in steps) + f"\n#### {answer}"


# ---- pure functions on hand-made samples ----------------------------------------------------------

def test_filter_keeps_passing_correct_samples():
    assert ei.passes_filter(1.0, True, threshold=0.5)
    assert not ei.passes_filter(0.0, False, threshold=0.5)
    assert not ei.passes_filter(0.4, True, threshold=0.5)          # reward below the threshold
    assert not ei.passes_filter(0.9, False, threshold=0.5)         # an ORM/dense score, wrong answer
    assert ei.passes_filter(0.9, False, threshold=0.5, require_correct=False)


def test_round_threshold_number_or_median_of_the_round():
    assert ei.round_threshold(0.75, [0.1, 0.2]) == 0.75
    assert ei.round_threshold("median", [0.43, 0.41, 0.45, 0.44]) == pytest.approx(0.435)
    # An ORM whose scores all lie below 0.5 still keeps the correct samples it ranks highest.
    scores, correct = [0.41, 0.42, 0.45, 0.46], [True, False, True, True]
    t = ei.round_threshold("median", scores)
    assert [ei.passes_filter(s, c, t) for s, c in zip(scores, correct)] == [False, False, True, True]
    with pytest.raises(ValueError, match="'mean'.*expected a number or 'median'"):
        ei.round_threshold("mean", scores)


def test_dedupe_by_operation_signature_not_text():
    texts = [sol("3+4=7", "7*2=14", answer=14),
             sol("4+3=7", "7*2=14", answer=14),           # same operations, other text
             "We add: <<3+4=7>>7\nthen double <<2*7=14>>14\n#### 14",  # same again, in words
             sol("3*2=6", "4*2=8", "6+8=14", answer=14),  # another path
             sol("3*2=6", "4*2=8", "6+8=14", answer=14)]  # identical text
    assert ei.dedupe(texts) == [0, 3]
    assert ei.dedupe(texts, seen=[ei.operation_signature(texts[3])]) == [0]


def test_select_solutions_filters_then_dedupes_against_previous_rounds():
    a, a2, b, wrong = (sol("3+4=7", answer=7), sol("4+3=7", answer=7), sol("10-3=7", answer=7),
                       sol("3+5=8", answer=8))
    previous = [Solution(a, round=1, reward=1.0)]
    kept = ei.select_solutions([wrong, a2, b, b], [0.0, 1.0, 1.0, 1.0], [False, True, True, True],
                               previous, round_=2, threshold=0.5)
    assert kept == [Solution(b, round=2, reward=1.0)]  # a2 duplicates D_{i-1}, b's copy this round


def test_data_accumulates_across_rounds_with_cap():
    s = {i: Solution(f"<<{i}+1={i + 1}>>{i + 1}", round=i, reward=1.0) for i in range(5)}
    d1 = ei.accumulate({}, {"q1": [s[0], s[1]], "q2": []})
    d2 = ei.accumulate(d1, {"q1": [s[2]], "q3": [s[3]]})
    assert d2 == {"q1": [s[0], s[1], s[2]], "q2": [], "q3": [s[3]]}
    assert ei.data_size(d2) == 4 and ei.data_size(d1) == 2
    assert ei.accumulate(d2, {"q1": [s[4]]}, cap=2)["q1"] == [s[0], s[1]]  # the oldest are kept


def test_training_examples_and_references():
    p = Problem("q1", "Tom has 3 apples and finds 4 more.", sol("3+4=7", answer=7), 7.0)
    data = {"q1": [Solution(" <<4+3=7>>7\n#### 7", 1, 1.0)]}
    assert ei.training_examples([p], data) == [(format_prompt(p.question), " <<4+3=7>>7\n#### 7")]
    with_refs = ei.training_examples([p], data, include_references=True)
    assert with_refs[0] == (format_prompt(p.question), format_completion(p.solution)) and len(with_refs) == 2


def test_calculations_ok_checks_every_annotation_before_the_answer():
    assert ei.calculations_ok(sol("3+4=7", "7*2=14", answer=14))
    assert ei.calculations_ok("no annotations at all\n#### 5")
    assert ei.calculations_ok("<<10/4=2.5>>2.5\n#### 2.5")
    assert not ei.calculations_ok(sol("3+4=8", "8*2=16", answer=14))      # right answer, wrong step
    assert not ei.calculations_ok(sol("3+4=7", "7*2=15", answer=14))      # a later step wrong
    assert not ei.calculations_ok("<<3+4>>7\n#### 7")                     # nothing claimed
    assert not ei.calculations_ok("<<apples+4=7>>7\n#### 7")              # does not compute
    assert not ei.calculations_ok("<<1/3=0.33>>0.33\n#### 0.33")          # off by more than 1e-3
    assert ei.calculations_ok("<<3+4=7>>7\n#### 7 <<1+1=3>>")             # after the answer


def test_select_solutions_drops_wrong_calculations_before_dedupe():
    bad, good = sol("3+4=8", answer=7), sol("4+3=7", answer=7)             # the same signature
    args = ([bad, good], [1.0, 1.0], [True, True], [], 1, 0.5)
    assert ei.select_solutions(*args) == [Solution(bad, 1, 1.0)]          # the first is kept
    keep = [ei.calculations_ok(t) for t in (bad, good)]
    assert ei.select_solutions(*args, keep=keep) == [Solution(good, 1, 1.0)]


def test_signature_counts_count_distinct_correct_paths():
    p = Problem("q1", "?", sol("3+4=7", answer=7), 7.0)
    data = {"q1": [Solution(sol("3+4=7", answer=7), 1, 1.0), Solution(sol("10-3=7", answer=7), 1, 1.0),
                   Solution(sol("3+5=8", answer=8), 1, 0.5)]}                # a wrong one (dense)
    assert ei.signature_counts([p, Problem("q2", "?", "", 1.0)], data) == [2, 0]


def test_stage_defaults_keep_todays_names_and_identity():
    profile, cfg = get_profile("smoke"), EIConfig()
    items = [Problem("q1", "?", "", 1.0)]
    assert ei_config(cfg, "sft") is cfg and ei_run_name("sft", "sparse", cfg, 0) == "ei-sft-sparse-k4-seed0"
    last = dataclasses.replace(cfg, student="last")
    assert ei_run_name("pretrained", "dense", last, 1) == "ei-pretrained-dense-k4-continue-seed1"
    # Today's identity: `restart_from_init`, no field for the (off) calculation check.
    for c, restart in ((cfg, True), (last, False)):
        fields = ei_identity(profile, "init", "sft", "sparse", c, items, "test")["ei"]
        assert fields["restart_from_init"] is restart and fields["include_references"] is False
        assert not {"student", "drop_wrong_calculations", "train_eval_questions"} & set(fields)


def test_stage_retrains_from_the_base_with_references_for_the_sft_start():
    auto = EIConfig(student="pretrained", include_references=None, drop_wrong_calculations=True)
    sft_start, base_start = ei_config(auto, "sft"), ei_config(auto, "pretrained")
    assert sft_start.include_references is True and base_start.include_references is False
    assert ei_run_name("sft", "sparse", sft_start, 0) == "ei-sft-sparse-k4-frombase-refs-calccheck-seed0"
    assert ei_run_name("pretrained", "sparse", base_start, 0) == "ei-pretrained-sparse-k4-frombase-calccheck-seed0"
    assert ei_config(dataclasses.replace(auto, include_references=False), "sft").include_references is False
    assert ei_config(EIConfig(include_references=None), "sft").include_references is False
    recipe = SFTConfig(epochs=7)
    identity = ei_identity(get_profile("smoke"), "sft-ckpt", "sft", "sparse", sft_start,
                           [Problem("q1", "?", "", 1.0)], "test", ("base-ckpt", recipe))
    assert identity["student"] == {"init": "base-ckpt", "sft": dataclasses.asdict(recipe)}
    assert identity["ei"]["student"] == "pretrained" and identity["ei"]["drop_wrong_calculations"]
    with pytest.raises(ValueError, match="EIConfig.student = 'best'"):
        EIConfig(student="best")


def test_round_seeds_and_evaluation_schedule():
    seeds = {runs.round_seed(s, r) for s in range(3) for r in range(1, 6)}
    assert len(seeds) == 15 and runs.round_seed(0, 1) == runs.round_seed(0, 1)
    assert [r for r in range(1, 6) if ei.eval_round(r, 5, 2)] == [2, 4, 5]
    assert [r for r in range(1, 6) if ei.eval_round(r, 5, 0)] == [5]


# ---- end to end on an easy world -------------------------------------------------------------------

def easy_problems() -> list[Problem]:
    out = []
    for a in range(1, 10):
        for b in range(1, 10):
            solution = sol(f"{a}+{b}={a + b}", answer=a + b)
            out.append(Problem(f"easy-{a}-{b}", f"Tom has {a} apples and finds {b} more. How many apples "
                               "does Tom have?", solution, float(a + b), (solution.split("\n")[0],)))
    random.Random(0).shuffle(out)
    return out


EI_CFG = EIConfig(rounds=2, k=8, sft=SFTConfig(epochs=30, lr=3e-3, batch_size=16, warmup_steps=1,
                                                 save_every_epoch=False, log_every=5))
FAST_CFG = dataclasses.replace(EI_CFG, sft=dataclasses.replace(EI_CFG.sft, epochs=3))
"""For the tests that check mechanics, not learning."""


EVAL = EvalConfig(k=4, max_new_tokens=24, n_boot=50)
PARAMS = SamplingParams(max_new_tokens=EVAL.max_new_tokens, stop=list(EVAL.stop))
"""The rollout settings (the loop sets n, temperature and seed)."""


def make_sampler(path):
    return HFSampler(*load_policy(str(path), trainable=False), progress=False)


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """(init checkpoint, problems): a weak SFT model of the easy world."""
    from rlreason.models import TinyModelConfig, build_tiny_llama, save_policy
    from rlreason.tokenizer import build_word_tokenizer
    from rlreason.training import train_sft

    torch.set_num_threads(1)
    items = easy_problems()
    root = tmp_path_factory.mktemp("ei")
    tokenizer = build_word_tokenizer([format_prompt(p.question) + format_completion(p.solution) for p in items])
    torch.manual_seed(0)
    model = build_tiny_llama(tokenizer, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2,
                                                        intermediate_size=128))
    train_sft(model, tokenizer, [(format_prompt(p.question), format_completion(p.solution)) for p in items[:40]],
              SFTConfig(epochs=40, lr=3e-3, batch_size=16, warmup_steps=1, save_every_epoch=False),
              progress=False)
    return save_policy(model, tokenizer, root / "init"), items


def evaluate_on(items):
    """The loop's `evaluate(checkpoint, info)`: the test metrics of a checkpoint (pass_curve's keys
    as strings, as a round row holds them)."""
    def evaluate_checkpoint(path, info):
        m = evaluate(lambda: make_sampler(path), items, EVAL, out_dir=path, name="test", progress=False).metrics
        return {k: v for k, v in m.items() if k != "pass_curve"} | {
            "pass_curve": {str(k): v for k, v in m["pass_curve"].items()}}

    return evaluate_checkpoint


def open_run(root, name, cfg: EIConfig, seed: int = 0) -> runs.Run:
    """The run folder of `cfg`, whose identity leaves out the rounds (as the stage's does)."""
    identity = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("rounds", "evaluate_every")}
    return runs.open_run(root, name, identity, seed)


def run_ei(init, items, cfg, run, *, evaluate=None, callback=None, sampler=make_sampler,
           **students) -> list[dict]:
    return ei.train_ei(init, items, SPARSE, cfg, run, make_sampler=sampler, params=PARAMS,
                       threshold=cfg.thresholds["sparse"], evaluate=evaluate, callback=callback,
                       **students)


def strip_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_wall_s")} for r in rows]


def test_ei_improves_training_accuracy_on_an_easy_world(easy, tmp_path):
    init, items = easy
    run = open_run(tmp_path, "ei", EI_CFG)
    rows = run_ei(init, items, EI_CFG, run)
    assert rows == ei.load_metrics(run.dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    r1, r2 = rows[1], rows[2]
    assert r1["rollouts"] == 81 * 8 and r2["rollouts"] == 2 * 81 * 8
    # Round 2 samples from the policy of round 1: its accuracy is the EI policy's. 648 samples per
    # round: a rise of 0.05 is over two standard errors of the difference (measured: 0.18 -> 0.25).
    assert r2["train_sample_acc"] > r1["train_sample_acc"] + 0.05, (r1, r2)
    assert r2["train_solved"] >= r1["train_solved"]
    # D_i accumulates: D_2 = R_2 ∪ D_1, and every kept solution is correct and unique.
    d1, d2 = (ei.load_data(run.dir / f"round_{i:02d}.data.jsonl") for i in (1, 2))
    assert r1["data_size"] == ei.data_size(d1) == r1["new_unique"] > 0
    assert r2["data_size"] == ei.data_size(d1) + r2["new_unique"] == ei.data_size(d2)
    answers = {p.id: p.answer for p in easy_problems()}
    for qid, sols in d2.items():
        assert sols[: len(d1.get(qid, []))] == d1.get(qid, [])
        assert all(is_correct(s.text, answers[qid]) for s in sols)
        assert len({s.signature for s in sols}) == len(sols)


def state_dict(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def easy_base(easy, tmp_path_factory):
    """A 'pretrained base' of the easy world: an untrained model with the init's tokenizer."""
    from rlreason.models import TinyModelConfig, build_tiny_llama, save_policy

    tokenizer = load_policy(str(easy[0]))[1]
    torch.manual_seed(1)
    model = build_tiny_llama(tokenizer, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2,
                                                        intermediate_size=128))
    return save_policy(model, tokenizer, tmp_path_factory.mktemp("ei-base") / "base")


STUDENT_SFT = SFTConfig(epochs=3, lr=3e-3, batch_size=16, warmup_steps=1, log_every=1)
"""The 'SFT recipe' the pretrained student is retrained with."""


@pytest.mark.parametrize("student", ["init", "last", "pretrained"])
def test_each_round_trains_the_configured_student(easy, easy_base, tmp_path, student):
    init, items = easy
    starts, begins = {}, {}

    class Seen(Exception):
        pass

    def record(event, round_, **info):
        if event == "train_start":
            starts[round_], begins[round_] = state_dict(info["model"]), info["start"]
            if round_ == 2:
                raise Seen  # the rest of round 2 is not needed

    pretrained = student == "pretrained"
    cfg = dataclasses.replace(FAST_CFG, student=student, include_references=pretrained)
    run = open_run(tmp_path, "student", cfg)
    with pytest.raises(Seen):
        run_ei(init, items, cfg, run, callback=record,
               **({"student_init": easy_base, "student_cfg": STUDENT_SFT} if pretrained else {}))
    init_weights = state_dict(load_policy(str(init))[0])
    base_weights = state_dict(load_policy(str(easy_base))[0])
    origin = base_weights if pretrained else init_weights
    round1 = state_dict(load_policy(str(ei.checkpoint(run.dir, 1)))[0])
    assert all(torch.equal(starts[1][k], origin[k]) for k in origin)
    assert any(not torch.equal(round1[k], origin[k]) for k in origin)  # round 1 trained
    expected = {"init": init_weights, "last": round1, "pretrained": base_weights}[student]
    assert all(torch.equal(starts[2][k], expected[k]) for k in expected)
    expected_start = {"init": init, "last": ei.checkpoint(run.dir, 1), "pretrained": easy_base}[student]
    assert Path(begins[2]) == Path(expected_start)
    row = json.loads((run.dir / "round_01.json").read_text())
    assert row["train_examples"] == row["data_size"] + (len(items) if pretrained else 0)
    losses = [r["loss"] for r in read_jsonl(run.dir / "train_01" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0] - (1.0 if pretrained else 0.0), losses  # the base learns a lot
    if pretrained:  # trained with the recipe given: 3 epochs of batches of 16, a row per step
        assert len(losses) == 3 * -(-row["train_examples"] // 16)
    else:
        with pytest.raises(ValueError, match="needs student_init"):
            run_ei(init, items, dataclasses.replace(cfg, student="pretrained"), run)


class ScriptedSampler:
    """Three samples per question: a right solution, a right answer through a wrong annotation,
    a wrong answer; greedy (temperature 0) gives the right one."""

    def __init__(self, items):
        self.by_prompt = {format_prompt(p.question): p for p in items}

    def generate(self, prompts, params):
        def texts(p):
            a, b = (int(x) for x in p.id.split("-")[1:])
            c = a + b
            right, bad_calc, wrong = (f" <<{a}+{b}={c}>>{c}\n#### {c}", f" <<{a}+{b}+0={c + 1}>>{c}\n#### {c}",
                                      f" <<{a}+{b}={c}>>{c}\n#### {c + 1}")
            return [right] if params.temperature == 0 else [right, bad_calc, wrong]

        return [[Sample(t, [1, 2, 3], [0.0] * 3, "stop") for t in texts(self.by_prompt[q])][: params.n]
                for q in prompts]


@pytest.mark.parametrize("drop", [False, True])
def test_drop_wrong_calculations_and_round_diagnostics(easy, tmp_path, drop):
    init, items = easy
    items = items[:6]
    cfg = dataclasses.replace(FAST_CFG, rounds=1, k=3, drop_wrong_calculations=drop, train_eval_questions=4)
    run = open_run(tmp_path, "calc", cfg)
    rows = run_ei(init, items, cfg, run, sampler=lambda path: ScriptedSampler(items))
    r0, r1 = rows
    assert r0["train_greedy_acc"] == r1["train_greedy_acc"] == 1.0
    assert r1["train_sample_acc"] == pytest.approx(2 / 3) and r1["kept"] == 12 and r1["bad_calc"] == 6
    assert r1["dropped_bad_calc"] == (6 if drop else 0)
    data = ei.load_data(run.dir / "round_01.data.jsonl")
    assert r1["data_size"] == ei.data_size(data) == (6 if drop else 12)
    assert all(ei.calculations_ok(s.text) for sols in data.values() for s in sols) == drop
    assert r1["signatures_per_question"] == (1.0 if drop else 2.0)
    assert r1["share_multi_signature"] == (0.0 if drop else 1.0)


def test_resume_after_interruption_gives_identical_metrics(easy, tmp_path):
    init, items = easy
    cfg, evaluate_test = FAST_CFG, evaluate_on(items[:24])
    reference = run_ei(init, items, cfg, open_run(tmp_path, "uninterrupted", cfg), evaluate=evaluate_test)
    expected = strip_timings(reference)

    class Stop(Exception):
        pass

    for stop_at in [("trained", 1), ("sampled", 2)]:  # between rounds' steps and inside a round
        def interrupt(event, round_, stop_at=stop_at, **info):
            if (event, round_) == stop_at:
                raise Stop

        with pytest.raises(Stop):
            run_ei(init, items, cfg, open_run(tmp_path, "resumed", cfg), evaluate=evaluate_test,
                   callback=interrupt)
    run = open_run(tmp_path, "resumed", cfg)
    got = strip_timings(run_ei(init, items, cfg, run, evaluate=evaluate_test))
    assert [r["round"] for r in got] == [0, 1, 2]
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert "maj1_strict" in got[2] and "passK_strict" in got[2]
    # A finished run is reused as it is, and a shorter run reads its first rounds.
    shorter = dataclasses.replace(cfg, rounds=1)
    again = open_run(tmp_path, "resumed", shorter)
    assert again.dir == run.dir
    assert strip_timings(run_ei(init, items, shorter, again, evaluate=evaluate_test)) == got[:2]
    assert strip_timings(ei.load_metrics(run.dir)) == got
    assert ei.load_metrics(run.dir, rounds=1) == ei.load_metrics(run.dir)[:2]
    # Another configuration under the same name starts over instead of mixing two runs.
    other = dataclasses.replace(cfg, rounds=1, temperature=0.7)
    run_ei(init, items, other, open_run(tmp_path, "resumed", other))
    assert [r["round"] for r in ei.load_metrics(run.dir)] == [0, 1] and not ei.checkpoint(run.dir, 2).exists()
