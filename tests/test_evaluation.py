"""The evaluation harness on hand-made completions and a scripted sampler (no model needed)."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from rlreason.config import EvalConfig
from rlreason.evaluation import (
    QUESTION_FIELDS,
    RESULT_COLUMNS,
    RunInfo,
    append_result,
    compute_metrics,
    evaluate,
    load_results,
    model_eval_dir,
    model_identity,
    questions_path,
    read_questions,
)
from rlreason.io import read_jsonl
from rlreason.problems import Problem
from rlreason.sampling import Sample

P1 = Problem(id="q1", question="Tom has 3 apples and buys 4. How many?", solution="<<3+4=7>>7\n#### 7", answer=7)
P2 = Problem(id="q2", question="Mia has 2 boxes of 3. How many?", solution="<<2*3=6>>6\n#### 6", answer=6)


class ScriptedSampler:
    """Returns fixed completions: greedy texts for n=1/temperature 0, else the sample lists."""

    def __init__(self, greedy, samples):
        self.greedy, self.samples, self.calls = greedy, samples, 0

    def generate(self, prompts, params):
        self.calls += 1
        table = self.greedy if params.temperature == 0 else self.samples
        return [[Sample(text=t, token_ids=list(range(5)), logprobs=[0.0] * 5, finish_reason="stop")
                 for t in table[p.split("\n")[0]][: params.n]] for p in prompts]


GREEDY = {f"Question: {P1.question}": ["<<3+4=7>>7\n#### 7"], f"Question: {P2.question}": ["<<2+3=5>>5\n#### 5"]}
SAMPLES = {
    f"Question: {P1.question}": ["<<3+4=7>>7\n#### 7", "<<4+3=7>>7\n#### 7", "#### 8", "the answer is 7"],
    f"Question: {P2.question}": ["#### 5", "#### 5", "<<3*2=6>>6\n#### 6", "<<3+3=6>>6\n#### 6"],
}
CFG = EvalConfig(k=4, pass_ks=(1, 2, 4), n_boot=200)


def test_metrics_on_hand_made_completions():
    greedy = [GREEDY[f"Question: {p.question}"][0] for p in (P1, P2)]
    samples = [SAMPLES[f"Question: {p.question}"] for p in (P1, P2)]
    m = compute_metrics([P1, P2], greedy, samples, CFG).metrics
    assert m["maj1_strict"] == 0.5 and m["maj1_flexible"] == 0.5
    # q1: 7,7,8,(none) -> 7 correct; q2: 5,5,6,6 tie -> 5 (earliest) wrong
    assert m["majK_strict"] == 0.5
    # flexible reads "the answer is 7" as 7: still correct majority for q1
    assert m["majK_flexible"] == 0.5
    assert m["passK_strict"] == 1.0
    # q1: 2 of 4 correct -> pass@1 = .5; q2: 2 of 4 -> .5
    assert m["pass_curve"][1] == pytest.approx(0.5)
    assert m["pass_curve"][2] == pytest.approx(1 - 1 / 6)
    # distinct correct signatures: q1 3+4 and 4+3 are one operation; q2 2*3 and 3+3 are two
    assert m["distinct_correct"] == pytest.approx(1.5)
    assert m["frac_multi_correct"] == pytest.approx(0.5)


def test_rerank_uses_the_scorer():
    greedy = ["#### 0", "#### 0"]
    samples = [SAMPLES[f"Question: {p.question}"] for p in (P1, P2)]
    best_wrong = [[0, 0, 1, 0], [1, 0, 0, 0]]
    best_right = [[0.1, 0.9, 0.2, 0.0], [0.0, 0.0, 0.0, 0.7]]
    assert compute_metrics([P1, P2], greedy, samples, CFG, best_wrong).metrics["rerankK_strict"] == 0.0
    assert compute_metrics([P1, P2], greedy, samples, CFG, best_right).metrics["rerankK_strict"] == 1.0


def test_evaluate_saves_rollouts_appends_results_and_reuses(tmp_path):
    sampler = ScriptedSampler(GREEDY, SAMPLES)
    results = tmp_path / "results.jsonl"
    info = {"run": "r", "algorithm": "sft", "init": "pretrained", "reward": "none", "seed": 0, "rollouts": 0}
    first = evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="test", results_path=results,
                     run_info=info, progress=False)
    assert sampler.calls == 2
    rows = read_jsonl(tmp_path / "eval-test-rollouts.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2"] and len(rows[0]["samples"]) == 4
    again = evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="test", results_path=results,
                     run_info=info, progress=False)
    assert sampler.calls == 2  # reused, not sampled again
    assert again.metrics["majK_strict"] == first.metrics["majK_strict"]
    evaluate(sampler, [P1, P2], EvalConfig(k=2, pass_ks=(1, 2)), out_dir=tmp_path, name="test",
             progress=False)
    assert sampler.calls == 4  # another config is another evaluation
    table = read_jsonl(results)
    assert len(table) == 1  # reading the evaluation back does not add the same row again
    assert list(table[0])[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    json.dumps(table)  # finite floats only
    append_result(results, {**table[0], "maj1_strict": 0.25})  # a changed result of the same run
    append_result(results, {**table[0], "run": "other"})
    assert len(read_jsonl(results)) == 3
    latest = load_results(results)  # the same run/dataset/checkpoint counts once, the last row wins
    assert len(latest) == 2 and latest.set_index("run").loc["r", "maj1_strict"] == 0.25


def test_per_question_arrays_are_saved_beside_the_rollouts(tmp_path):
    result = evaluate(ScriptedSampler(GREEDY, SAMPLES), [P1, P2], CFG, out_dir=tmp_path, name="test",
                      progress=False)
    saved = read_jsonl(questions_path(tmp_path, "test"))
    assert saved == result.questions() == read_questions(tmp_path, "test")
    q1, q2 = saved
    assert q1["id"] == "q1" and q1["k"] == 4
    assert q1["correct_strict"] == [True, True, False, False]
    assert q1["correct_flexible"] == [True, True, False, True]  # "the answer is 7"
    assert (q1["maj1_strict"], q2["maj1_strict"]) == (True, False)
    assert (q1["majK_strict"], q2["majK_strict"]) == (True, False)  # q2: 5,5,6,6 tie -> 5
    assert q2["n_correct_strict"] == 2 and q2["distinct_correct"] == 2 and q1["distinct_correct"] == 1
    assert "rerankK_strict" not in q1 and set(q1) <= {"id", "k", *QUESTION_FIELDS}
    assert result.ids == ["q1", "q2"] and result.rollouts_path == tmp_path / "eval-test-rollouts.jsonl"
    assert read_questions(tmp_path, "absent") is None


def test_run_info_rows_hold_only_what_applies():
    row = RunInfo(run="ei-x", algorithm="ei", init="sft", reward="sparse", seed=0, rollouts=8, round=2).row()
    assert list(row) == ["run", "algorithm", "init", "reward", "seed", "rollouts", "round", "dataset",
                         "checkpoint", "wall_s"]
    assert row["round"] == 2 and row["dataset"] is None
    rcrl = RunInfo(run="r", label="good", labels="dense", round=1).row()
    assert [k for k in rcrl if k in ("label", "labels", "round", "update", "epoch")] == ["label", "labels", "round"]


def test_append_result_takes_a_run_info(tmp_path):
    path = tmp_path / "results.jsonl"
    info = RunInfo(run="sft-seed0", algorithm="sft", init="pretrained", reward="none", seed=0, rollouts=0,
                   epoch=2, dataset="tiny-test", checkpoint="epoch_02")
    full = append_result(path, info, {"maj1_strict": 0.5, "k": 4, "pass_curve": {"1": 0.5}})
    assert list(full)[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    assert list(full)[len(RESULT_COLUMNS):] == ["epoch", "pass_curve"]
    assert read_jsonl(path) == [full]


def test_factory_is_not_called_when_reused(tmp_path):
    evaluate(ScriptedSampler(GREEDY, SAMPLES), [P1, P2], CFG, out_dir=tmp_path, name="t", progress=False)

    def factory():
        raise AssertionError("the policy should not be loaded for a reused evaluation")

    evaluate(factory, [P1, P2], CFG, out_dir=tmp_path, name="t", progress=False)


def test_empty_problem_set_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty problem set"):
        evaluate(ScriptedSampler({}, {}), [], CFG, out_dir=tmp_path, name="x")


class CountingScorer:
    """Scores the first sample of each question highest; counts its calls."""

    def __init__(self, cache_id):
        self.cache_id, self.calls = cache_id, 0

    def __call__(self, problems, completions):
        self.calls += 1
        return [[1.0] + [0.0] * (len(row) - 1) for row in completions]


def test_scores_of_a_reused_evaluation_are_cached_per_scorer(tmp_path):
    sampler = ScriptedSampler(GREEDY, SAMPLES)
    orm_a = CountingScorer("orm-a")
    first = evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="t", scorer=orm_a, progress=False)
    again = evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="t", scorer=orm_a, progress=False)
    assert orm_a.calls == 1 and again.metrics["rerankK_strict"] == first.metrics["rerankK_strict"]
    orm_b = CountingScorer("orm-b")  # another ORM (or the same one retrained): scored again
    evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="t", scorer=orm_b, progress=False)
    assert orm_b.calls == 1
    plain = lambda problems, completions: [[0.0] * len(r) for r in completions]  # noqa: E731
    assert evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="t", scorer=plain,
                    progress=False).metrics["rerankK_strict"] == 0.5  # no cache_id: never cached


def test_the_backend_and_the_model_are_part_of_the_cache_key(tmp_path):
    sampler = ScriptedSampler(GREEDY, SAMPLES)
    run = lambda **kw: evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="t",  # noqa: E731
                                progress=False, **kw)
    run()
    meta = json.loads((tmp_path / "eval-t.json").read_text())
    assert list(meta) == ["config", "ids", "wall_s"]  # HF, no model named: the meta as before
    run(backend="hf")
    assert sampler.calls == 2
    run(backend="vllm")
    assert sampler.calls == 4  # another backend: sampled again
    run(backend="vllm")
    assert sampler.calls == 4
    run(backend="vllm", model={"hub": "meta-llama/Llama-2-13b-hf"})
    run(backend="vllm", model={"hub": "meta-llama/Llama-2-7b-hf"})
    assert sampler.calls == 8  # another model: sampled again
    run(backend="vllm", model={"hub": "meta-llama/Llama-2-7b-hf"})
    assert sampler.calls == 8
    meta = json.loads((tmp_path / "eval-t.json").read_text())
    assert meta["sampler"] == "vllm" and meta["model"] == {"hub": "meta-llama/Llama-2-7b-hf"}


def test_a_meta_written_before_backend_and_model_were_keyed_is_reused(tmp_path):
    evaluate(ScriptedSampler(GREEDY, SAMPLES), [P1, P2], CFG, out_dir=tmp_path, name="t",
             progress=False)
    old = {"config": asdict(CFG), "ids": ["q1", "q2"], "wall_s": 1.5}  # the old code's meta
    (tmp_path / "eval-t.json").write_text(json.dumps(old))

    def factory():
        raise AssertionError("an HF evaluation of the same config and questions is reused")

    assert evaluate(factory, [P1, P2], CFG, out_dir=tmp_path, name="t",
                    progress=False).metrics["eval_wall_s"] == 1.5
    sampler = ScriptedSampler(GREEDY, SAMPLES)
    evaluate(sampler, [P1, P2], CFG, out_dir=tmp_path, name="t", backend="vllm", progress=False)
    assert sampler.calls == 2  # ... but not for vLLM


def test_model_identity_and_eval_folder_names(tmp_path):
    assert model_identity("meta-llama/Llama-2-7b-hf") == {"hub": "meta-llama/Llama-2-7b-hf"}
    assert model_eval_dir(tmp_path, "meta-llama/Llama-2-7b-hf") == tmp_path / "meta-llama--Llama-2-7b-hf"
    folder = tmp_path / "models" / "llama"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 4096}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"a" * 10)
    (folder / "notes.txt").write_text("not part of the model")
    first = model_identity(folder)
    assert first["folder"] == str(folder.resolve()) and model_identity(folder) == first
    (folder / "notes.txt").write_text("edited")
    assert model_identity(folder) == first  # only the config and the weights count
    (folder / "config.json").write_text('{"hidden_size": 5120}')
    second = model_identity(folder)
    assert second != first
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"b" * 10)
    assert model_identity(folder) != second  # a weight file more
    name = model_eval_dir(tmp_path / "eval", folder).name
    assert name.startswith("local-") and name.endswith("-llama")
    other = tmp_path / "elsewhere" / "llama"
    other.mkdir(parents=True)
    assert model_eval_dir(tmp_path / "eval", other).name != name  # same name, another path
