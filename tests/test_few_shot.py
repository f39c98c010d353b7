"""Prompting the pretrained base few-shot (`Profile.base_shots`) and training on the first
`Profile.n_train` problems: the smollm profiles' two knobs, on the smoke world."""
from __future__ import annotations

import dataclasses
import shutil

import pytest

from rlreason import stages
from rlreason.config import EvalConfig
from rlreason.problems import format_completion, format_prompt
from rlreason.profiles import get_profile
from rlreason.sampling import HFSampler, PrefixedSampler, Sample, SamplingParams


class EchoSampler:
    """Answers each prompt with the prompt itself (so a test sees what the model was given)."""

    tokenizer = "the wrapped sampler's tokenizer"

    def generate(self, prompts, params):
        return [[Sample(text=p, token_ids=[1], logprobs=[0.0], finish_reason="stop")] * params.n
                for p in prompts]


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path / "out"))
    return get_profile("smoke", n_test=3, eval=EvalConfig(k=2, pass_ks=(1, 2), n_boot=10,
                                                           max_new_tokens=8))


def test_prefixed_sampler_prepends_the_prefix_and_delegates_the_rest():
    sampler = PrefixedSampler(EchoSampler(), "EXAMPLES\n")
    out = sampler.generate(["Question: a\nAnswer:", "Question: b\nAnswer:"], SamplingParams(n=2))
    assert [[s.text for s in row] for row in out] == [["EXAMPLES\nQuestion: a\nAnswer:"] * 2,
                                                       ["EXAMPLES\nQuestion: b\nAnswer:"] * 2]
    assert sampler.tokenizer == "the wrapped sampler's tokenizer"


def test_n_train_keeps_the_first_training_problems_only(smoke):
    everything = stages.problems(smoke, "train")
    cut = dataclasses.replace(smoke, n_train=10)
    assert stages.problems(cut, "train") == everything[:10]
    assert stages.problems(cut, "test") == stages.problems(smoke, "test")  # other splits untouched
    with pytest.raises(ValueError, match="n_train"):
        get_profile("smoke", n_train=0)


def test_few_shot_prefix_shows_solved_problems_from_the_tail_of_the_training_split(smoke):
    assert stages.few_shot_prefix(smoke) == ""  # base_shots = 0
    shots = dataclasses.replace(smoke, base_shots=2, n_train=40)
    prefix = stages.few_shot_prefix(shots)
    train = stages.problems(smoke, "train")
    shown = [p for p in train if format_prompt(p.question) + format_completion(p.solution) in prefix]
    assert len(shown) == 2 and prefix.count("Question:") == 2 and prefix.endswith("\n\n")
    assert all(p in train[-50:] for p in shown)
    assert not set(p.id for p in shown) & {p.id for p in stages.problems(shots, "train")}
    # The shortest references of that tail, in the GSM8K format the base is to continue.
    assert all("####" in p.solution for p in shown)
    assert max(len(p.solution) for p in shown) <= min(
        len(p.solution) for p in train[-50:] if p not in shown)


def test_only_the_pretrained_base_is_sampled_few_shot(smoke, policy_dir, tmp_path):
    base = tmp_path / "models" / "base"
    shutil.copytree(policy_dir, base)
    tuned = tmp_path / "models" / "tuned"
    shutil.copytree(policy_dir, tuned)
    profile = dataclasses.replace(smoke, base_model=str(base), base_shots=1)
    assert stages.base(profile) == base and stages.is_base(profile, base)
    make = stages.make_sampler(profile, progress=False)
    prefixed, plain = make(base), make(tuned)
    assert isinstance(prefixed, PrefixedSampler) and prefixed.prefix == stages.few_shot_prefix(profile)
    assert isinstance(plain, HFSampler)
    assert not isinstance(stages.make_sampler(smoke, progress=False)(base), PrefixedSampler)

    # The base's greedy completions are those of the prompt with the examples before it.
    prompts = [format_prompt(p.question) for p in stages.problems(profile, "test")]
    params = SamplingParams(temperature=0, max_new_tokens=8)
    direct = plain.generate([prefixed.prefix + p for p in prompts], params)
    assert ([[s.token_ids for s in row] for row in prefixed.generate(prompts, params)]
            == [[s.token_ids for s in row] for row in direct])

    # Its evaluation files say how it was prompted, apart from a bare-prompt evaluation of it.
    few = stages.evaluate(profile, base, "test", record=False, progress=False)
    bare = stages.evaluate(dataclasses.replace(profile, base_shots=0), base, "test", record=False,
                           progress=False)
    assert few.rollouts_path.name == "eval-test.1shot-rollouts.jsonl"
    assert bare.rollouts_path.name == "eval-test-rollouts.jsonl"
    assert few.rollouts_path.parent == bare.rollouts_path.parent
