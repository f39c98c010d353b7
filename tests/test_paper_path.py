"""The paper profile's path without a GPU or vLLM: where evaluations of models rlreason did not
write go and what their cache is keyed by, the paper's fine-tuning and stop settings, and the HF
sampler stopping the base model before it writes the next question."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from rlreason import stages
from rlreason.analysis.results import eval_dir
from rlreason.config import EvalConfig, TinyModelConfig
from rlreason.evaluation import RunInfo, evaluate, model_eval_dir, model_identity
from rlreason.io import read_jsonl
from rlreason.models import build_tiny_llama
from rlreason.problems import Problem, format_prompt
from rlreason.profiles import get_profile
from rlreason.sampling import HFSampler, Sample, SamplingParams
from rlreason.training import train_sft

QUESTION_STOP = "\nQuestion:"


class FixedSampler:
    """Answers every prompt with `#### 0`; counts its calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        return [[Sample(text="#### 0", token_ids=[1, 2], logprobs=[0.0, 0.0], finish_reason="stop")
                 for _ in range(params.n)] for _ in prompts]


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    """The smoke profile writing under tmp_path, evaluating 4 test questions with K = 2."""
    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path / "out"))
    return get_profile("smoke", n_test=4, eval=EvalConfig(k=2, pass_ks=(1, 2), n_boot=10))


def fake_model_folder(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"0" * 64)
    return path


def test_models_rlreason_did_not_write_are_evaluated_under_runs_dir(smoke, tmp_path):
    external = fake_model_folder(tmp_path / "readonly" / "llama-13b")
    before = sorted(os.listdir(external))
    sampler = FixedSampler()
    res = stages.evaluate(smoke, external, "test", sampler=sampler, progress=False,
                          info=RunInfo(run="base-seed0", algorithm="base"))
    assert sorted(os.listdir(external)) == before  # nothing written into the model folder
    folder = model_eval_dir(smoke.runs_dir / "eval", external)
    assert folder.parent == smoke.runs_dir / "eval" and folder.name.endswith("-llama-13b")
    assert res.rollouts_path == folder / "eval-test-rollouts.jsonl" and res.rollouts_path.exists()
    meta = json.loads((folder / "eval-test.json").read_text())
    assert meta["model"] == model_identity(external) and "sampler" not in meta  # hf: the default
    row = read_jsonl(smoke.results_path)[-1]
    assert row["checkpoint"] == f"eval/{folder.name}"
    assert eval_dir(smoke.runs_dir, row) == folder  # analysis finds the per-question arrays

    stages.evaluate(smoke, external, "test", sampler=sampler, progress=False, record=False)
    assert sampler.calls == 2  # reused (greedy + samples were one evaluation)
    (external / "model.safetensors").write_bytes(b"1" * 80)  # other weights in the same folder
    stages.evaluate(smoke, external, "test", sampler=sampler, progress=False, record=False)
    assert sampler.calls == 4
    vllm = dataclasses.replace(smoke, sampler="vllm")  # another backend samples again
    stages.evaluate(vllm, external, "test", sampler=sampler, progress=False, record=False)
    assert sampler.calls == 6
    assert json.loads((folder / "eval-test.json").read_text())["sampler"] == "vllm"


def test_hub_ids_get_their_own_eval_folder_and_identity(smoke):
    sampler = FixedSampler()
    for hub_id in ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf"):
        res = stages.evaluate(smoke, hub_id, "test", sampler=sampler, progress=False, record=False)
        folder = smoke.runs_dir / "eval" / hub_id.replace("/", "--")
        assert res.rollouts_path.parent == folder
        assert json.loads((folder / "eval-test.json").read_text())["model"] == {"hub": hub_id}
    assert sampler.calls == 4  # the 13B never reuses the 7B's samples


def test_checkpoints_inside_runs_dir_keep_their_files_and_old_meta(smoke):
    ckpt = fake_model_folder(smoke.runs_dir / "sft-seed0" / "final")
    sampler = FixedSampler()
    res = stages.evaluate(smoke, ckpt, "test", sampler=sampler, progress=False,
                          info=RunInfo(run="sft-seed0"))
    assert res.rollouts_path == ckpt / "eval-test-rollouts.jsonl"
    meta = json.loads((ckpt / "eval-test.json").read_text())
    assert list(meta) == ["config", "ids", "wall_s"]  # the meta the tiny cache was written with
    assert read_jsonl(smoke.results_path)[-1]["checkpoint"] == "final"
    stages.evaluate(dataclasses.replace(smoke, sampler="vllm"), ckpt, "test", sampler=sampler,
                    progress=False, record=False)
    assert sampler.calls == 4  # the backend is part of the key here too


def test_paper_profile_keeps_whole_examples_checkpoints_and_stops_the_base():
    paper = get_profile("paper")
    for cfg in (paper.sft, paper.ei.sft, paper.rcrl.train):
        assert cfg.max_length is None and cfg.gradient_checkpointing
    assert paper.eval.stop == (QUESTION_STOP,)
    assert stages.rollout_params(paper).stop == [QUESTION_STOP]
    for name in ("tiny", "smoke"):  # their numbers do not move
        p = get_profile(name)
        for cfg in (p.sft, p.ei.sft, p.rcrl.train, p.pretrain):
            assert cfg.max_length == 256 and not cfg.gradient_checkpointing
        assert p.eval.stop == ()


def test_hf_sampler_stops_before_the_next_question(tiny_tokenizer, tmp_path):
    """A model that, like a base model, goes on to the next question after its answer: the paper's
    stop string ends greedy and sampled solutions before it, also through `evaluate`."""
    problem = Problem(id="q", question="Tom has 3 apples and buys 4. How many?",
                      solution="#### 7", answer=7.0)
    prompt = format_prompt(problem.question)
    completion = " #### 7\nQuestion: Mia has 2 boxes."
    torch.manual_seed(0)
    model = build_tiny_llama(tiny_tokenizer, TinyModelConfig(hidden_size=32, num_layers=1,
                                                             num_heads=2, intermediate_size=64))
    train_sft(model, tiny_tokenizer, [(prompt, completion)] * 8,
              dataclasses.replace(get_profile("smoke").sft, epochs=60, lr=1e-2, batch_size=8,
                                  save_every_epoch=False), progress=False)
    sampler = HFSampler(model, tiny_tokenizer, progress=False)
    free = sampler.generate([prompt], SamplingParams(temperature=0, max_new_tokens=16))[0][0]
    assert free.text.startswith(completion)  # memorised: it writes the next question
    stopped = sampler.generate([prompt], SamplingParams(temperature=0, max_new_tokens=16,
                                                        stop=[QUESTION_STOP]))[0][0]
    assert stopped.text == " #### 7" and stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < len(free.token_ids)

    cfg = dataclasses.replace(get_profile("paper").eval, k=4, max_new_tokens=16, n_boot=10,
                              pass_ks=(1,))
    res = evaluate(sampler, [problem], cfg, out_dir=tmp_path, name="test", progress=False)
    rows = read_jsonl(res.rollouts_path)
    assert rows[0]["greedy"] == " #### 7"
    assert all(QUESTION_STOP not in s for s in rows[0]["samples"])
    assert res.metrics["maj1_strict"] == 1.0
