"""RCRL: labels from rewards, the label tokens, the loss mask, conditioned decoding (against a
`model.generate` reference), and an end-to-end run in which prompting with the good label beats
prompting with the bad one.

The end-to-end test runs on an *easy world* ("How many legs does the bee have?", 9 animals x 8
names) with a 2-layer Llama SFT-ed from scratch on a right and a wrong (one leg too many) solution
of every question, so that about half of its own samples are right: the labels must tell them
apart. Small models learn to read a label late and abruptly: at this budget the good - bad gap was
0.26, 0.05, 0.00 and 0.01 for seeds 0 to 3 (K = 8 rollouts: 0.06, 0.03, 0.02, 0.51). The test is
deterministic and uses seed 0; a change that weakens label learning shows up as a failure here.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from transformers import AutoTokenizer

from rlreason import rcrl, rcrl_decoding, runs
from rlreason.config import RCRLConfig, SFTConfig
from rlreason.grading import is_correct
from rlreason.models import TinyModelConfig, build_tiny_llama, load_policy, save_policy
from rlreason.problems import Problem, format_completion, format_prompt
from rlreason.rcrl_decoding import BAD, GOOD, ConditionedSampler
from rlreason.rewards import Reward, dense_reward, make_reward, sparse_reward
from rlreason.sampling import HFSampler, Sample, SamplingParams
from rlreason.tokenizer import build_word_tokenizer
from rlreason.training import IGNORE_INDEX, train_sft

REFERENCE = "3+4 = <<3+4=7>>7\n7*2 = <<7*2=14>>14\n#### 14"
PROBLEM = Problem("p0", "Tom has 3 apples and finds 4. Then the apples double. How many apples?",
                  REFERENCE, 14.0, tuple(REFERENCE.split("\n")[:2]))


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([format_prompt(PROBLEM.question) + format_completion(REFERENCE),
                                 "7*3 = <<7*3=21>>21\n#### 21"])


def encode(tok, text: str, eos: bool = False) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])


# ---- labelling on hand-made samples ------------------------------------------------------------


def test_sparse_label_is_the_return_against_the_threshold():
    right, wrong = Reward(1.0, [0.0, 1.0], [0.0, 1.0], [0, 1]), Reward(0.0, [0.0, 0.0], [0.0, 0.0], [0, 1])
    assert rcrl.sparse_label(right) and not rcrl.sparse_label(wrong)
    assert not rcrl.sparse_label(Reward(0.5, [0.5], [0.5], [0]))  # strictly above the threshold
    assert rcrl.sparse_label(Reward(0.3, [0.3], [0.3], [0]), threshold=0.2)


def test_dense_labels_per_step_and_cumulative():
    assert rcrl.dense_labels([0.25, 0.0, 0.75]) == [True, False, True]
    assert rcrl.dense_labels([0.25, 0.0, 0.75], threshold=0.5) == [False, False, True]
    # ORM per-step rewards are increments p_i - p_{i-1}: the label reads p_i itself.
    assert rcrl.dense_labels([0.6, -0.2, 0.3], threshold=0.5, cumulative=True) == [True, False, True]
    assert rcrl.dense_labels([]) == []


def test_labels_go_in_front_of_the_solution_or_of_each_step(tokenizer):
    good, bad = rcrl.add_label_tokens(None, tokenizer)
    lines = [" 3+4 = <<3+4=7>>7\n", "7*3 = <<7*3=21>>21\n", "#### 21"]  # step 1 right, step 2 and answer wrong
    parts = [encode(tokenizer, t) for t in lines[:2]] + [encode(tokenizer, lines[2], eos=True)]
    ids = [t for part in parts for t in part]
    sample = Sample("".join(lines), ids, [0.0] * len(ids), "stop")
    cfg = RCRLConfig()

    reward = dense_reward(tokenizer)([PROBLEM], [sample])[0]
    assert reward.per_step == [0.25, 0.0, 0.0]
    labelled, oks = rcrl.label_sample(ids, reward, "dense", (good, bad), cfg)
    assert oks == [True, False, False]
    assert labelled == [good, *parts[0], bad, *parts[1], bad, *parts[2]]
    assert tokenizer.decode(labelled) == "<|good|> 3+4 = <<3+4=7>>7\n<|bad|>7*3 = <<7*3=21>>21\n<|bad|>#### 21</s>"

    labelled, oks = rcrl.label_sample(ids, reward, "sparse", (good, bad), cfg)  # 0.25: not good
    assert (labelled, oks) == ([bad, *ids], [False])
    right = " " + REFERENCE
    ids = encode(tokenizer, right, eos=True)
    reward = sparse_reward(tokenizer=tokenizer)([PROBLEM], [Sample(right, ids, [], "stop")])[0]
    assert rcrl.label_sample(ids, reward, "sparse", (good, bad), cfg) == ([good, *ids], [True])
    # Dense labels with the sparse reward: only the answer line of a correct solution is good.
    assert rcrl.label_sample(ids, reward, "dense", (good, bad), cfg)[1] == [False, False, True]
    with pytest.raises(ValueError):
        rcrl.label_sample(ids, reward, "both", (good, bad), cfg)


def test_insert_labels_checks_the_step_count():
    assert rcrl.insert_labels([5, 6, 7], [0, 2], [1, 2]) == [1, 5, 2, 6, 7]
    with pytest.raises(ValueError):
        rcrl.insert_labels([5, 6, 7], [0, 2], [1])


# ---- label tokens ------------------------------------------------------------------------------


def test_label_tokens_survive_save_and_load(tokenizer, tmp_path):
    tok = build_word_tokenizer([REFERENCE])
    torch.manual_seed(0)
    model = build_tiny_llama(tok, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    before = model.get_input_embeddings().weight.detach().clone()
    good, bad = rcrl.add_label_tokens(model, tok, seed=0)
    assert (good, bad) == (len(before), len(before) + 1) and len(tok) == len(before) + 2
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb[: len(before)], before)  # old rows untouched
    assert not torch.equal(emb[good], emb[bad])  # two distinct labels ...
    assert (emb[good] - before.mean(0)).norm() < 3 * (before - before.mean(0)).norm(dim=1).max()  # ... typical ones
    text = format_prompt(PROBLEM.question) + GOOD + " 3+4 = <<3+4=7>>7\n" + BAD + "#### 7"
    ids = tok(text)["input_ids"]
    assert ids.count(good) == 1 and ids.count(bad) == 1
    assert tok.decode(ids, skip_special_tokens=True) == format_prompt(PROBLEM.question) + " 3+4 = <<3+4=7>>7\n#### 7"

    save_policy(model, tok, tmp_path / "policy")
    model2, tok2 = load_policy(tmp_path / "policy", trainable=False)
    assert rcrl_decoding.label_ids(tok2) == (good, bad) and tok2(text)["input_ids"] == ids
    assert tok2.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    assert torch.equal(model2.get_input_embeddings().weight, emb)
    assert rcrl.add_label_tokens(model2, tok2) == (good, bad) and len(tok2) == len(tok)  # idempotent
    with pytest.raises(ValueError):
        rcrl_decoding.label_ids(build_word_tokenizer([REFERENCE]))


# ---- the loss mask -----------------------------------------------------------------------------


def test_loss_mask_excludes_the_prompt_and_the_labels(tokenizer):
    good, bad = rcrl.add_label_tokens(None, tokenizer)
    prompt = format_prompt(PROBLEM.question)
    step1, step2 = encode(tokenizer, " 3+4 = <<3+4=7>>7\n"), encode(tokenizer, "#### 7", eos=True)
    completion = [good, *step1, bad, *step2]
    ids, labels = rcrl.encode_labelled(tokenizer, prompt, completion, 512, (good, bad))
    n = len(tokenizer(prompt)["input_ids"])
    assert ids == tokenizer(prompt)["input_ids"] + completion
    assert labels[:n] == [IGNORE_INDEX] * n
    assert labels[n:] == [IGNORE_INDEX, *step1, IGNORE_INDEX, *step2]
    ids, labels = rcrl.encode_labelled(tokenizer, prompt, completion, n + 3, (good, bad))
    assert len(ids) == len(labels) == n + 3


def test_fine_tuning_never_trains_the_model_to_emit_a_label():
    """Every example puts the good label right after the prompt. With the labels as targets the
    model learns to emit it there; masked (as RCRL trains) it does not."""
    tok = build_word_tokenizer([format_prompt(PROBLEM.question) + format_completion(REFERENCE)])
    prompt = format_prompt(PROBLEM.question)
    n = len(tok(prompt)["input_ids"])

    def p_label_after_training(masked: bool) -> float:
        torch.manual_seed(0)
        model = build_tiny_llama(tok, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
        good, bad = rcrl.add_label_tokens(model, tok)
        completion = [good, *encode(tok, " " + REFERENCE, eos=True)]
        example = rcrl.encode_labelled(tok, prompt, completion, 512, (good, bad) if masked else ())
        rows = train_sft(model, tok, None, SFTConfig(epochs=8, lr=1e-2, batch_size=4, warmup_steps=1, log_every=1,
                                                     save_every_epoch=False), encoded=[example] * 8, progress=False)
        losses = [r["loss"] for r in rows if "loss" in r]
        assert losses[-1] < losses[0]
        with torch.no_grad():
            return model(torch.tensor([example[0]])).logits[0, n - 1].softmax(-1)[good].item()

    masked, unmasked = p_label_after_training(masked=True), p_label_after_training(masked=False)
    assert masked < 0.01 and unmasked > 0.1, (masked, unmasked)


# ---- conditioned decoding ----------------------------------------------------------------------


class ScriptedSampler:
    """Answers each prompt with the next line of a script (the line count says which), recording
    the prompts it is asked to continue."""

    def __init__(self, tokenizer, lines):
        self.tokenizer, self.lines, self.calls = tokenizer, lines, []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        out = []
        for prompt in prompts:
            i = prompt.partition("Answer:")[2].count("\n")
            text = self.lines[i]
            last = i == len(self.lines) - 1
            ids = encode(self.tokenizer, text, eos=last) + ([] if last else encode(self.tokenizer, "\n"))
            out.append([Sample(text, ids, [-1.0] * len(ids), "stop")] * params.n)
        return out


def test_dense_decoding_inserts_the_label_before_each_step(tokenizer):
    rcrl.add_label_tokens(None, tokenizer)
    lines = [" 3+4 = <<3+4=7>>7", "", "7*2 = <<7*2=14>>14", "#### 14"]  # with a blank line
    inner = ScriptedSampler(tokenizer, lines)
    prompt = format_prompt(PROBLEM.question)
    out = ConditionedSampler(inner, tokenizer, GOOD, dense=True).generate(
        [prompt], SamplingParams(n=3, temperature=1.0, max_new_tokens=64, seed=0))
    asked = [p for prompts, _ in inner.calls for p in prompts]
    assert asked == [prompt + GOOD,
                     prompt + GOOD + lines[0] + "\n" + GOOD,
                     prompt + GOOD + lines[0] + "\n" + GOOD + "\n",  # a blank line gets no label
                     prompt + GOOD + lines[0] + "\n" + GOOD + "\n" + lines[2] + "\n" + GOOD]
    assert all(p.n == 3 and "\n" in p.stop for _, p in inner.calls)  # identical rows continue together
    assert len(out) == 1 and len(out[0]) == 3
    sample = out[0][0]
    assert sample.text == "\n".join(lines) and GOOD not in sample.text
    assert sample.token_ids == encode(tokenizer, "\n".join(lines), eos=True)
    assert sample.finish_reason == "stop" and len(sample.logprobs) == len(sample.token_ids)


def test_dense_decoding_stops_at_the_token_budget(tokenizer):
    rcrl.add_label_tokens(None, tokenizer)
    lines = [" 3+4 = <<3+4=7>>7", "7*2 = <<7*2=14>>14", "#### 14"]
    budget = len(encode(tokenizer, lines[0] + "\n")) + 3
    out = ConditionedSampler(ScriptedSampler(tokenizer, lines), tokenizer, BAD, dense=True).generate(
        [format_prompt(PROBLEM.question)], SamplingParams(n=1, temperature=0.0, max_new_tokens=budget))
    sample = out[0][0]
    assert sample.finish_reason == "length" and len(sample.token_ids) == budget
    assert sample.token_ids == encode(tokenizer, "\n".join(lines))[:budget]
    assert sample.text == tokenizer.decode(sample.token_ids)


def test_sparse_decoding_puts_the_label_after_the_prompt(tokenizer):
    rcrl.add_label_tokens(None, tokenizer)
    inner = ScriptedSampler(tokenizer, [" #### 14"])
    ConditionedSampler(inner, tokenizer, BAD).generate(["Question: q\nAnswer:"], SamplingParams(n=2))
    assert inner.calls[0][0] == ["Question: q\nAnswer:" + BAD] and inner.calls[0][1].stop == []


# ---- end to end on an easy world ---------------------------------------------------------------

LEGS = {"bird": 2, "dog": 4, "ant": 6, "spider": 8, "cat": 4, "duck": 2, "bee": 6, "horse": 4, "crab": 10}
NAMES = ["Tom", "Mia", "Sam", "Ana", "Leo", "Zoe", "Max", "Ivy"]


def legs(animal: str, n: int) -> str:
    return f"The {animal} has {n} legs.\n#### {n}"


def easy_problems() -> list[Problem]:
    out = [Problem(f"legs-{name}-{animal}", f"{name} sees a {animal}. How many legs does the {animal} have?",
                   legs(animal, n), float(n)) for name in NAMES for animal, n in LEGS.items()]
    random.Random(0).shuffle(out)
    return out


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """(init, problems): a model SFT-ed on a right and a wrong (one leg too many) solution of every
    question, so that about half its samples are right: the labels must pick the right mode."""
    items = easy_problems()
    examples = [(format_prompt(p.question), format_completion(legs(p.id.split("-")[2], int(p.answer) + wrong)))
                for p in items for wrong in (0, 1)]
    tok = build_word_tokenizer([prompt + completion for prompt, completion in examples])
    torch.manual_seed(0)
    model = build_tiny_llama(tok, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    train_sft(model, tok, examples, SFTConfig(epochs=15, lr=3e-3, batch_size=16, warmup_steps=1,
                                              save_every_epoch=False), progress=False)
    return save_policy(model, tok, tmp_path_factory.mktemp("rcrl") / "init"), items


def make_sampler(path):
    return HFSampler(*load_policy(str(path), trainable=False), progress=False)


def test_good_label_beats_bad_label_on_the_training_set(easy, tmp_path):
    init, items = easy
    # lr 3e-3: at 1e-2 the fine-tune ignored its label (0.37 with either), at 3e-3 it reads it.
    cfg = RCRLConfig(k=4, train=SFTConfig(epochs=15, lr=3e-3, batch_size=16, warmup_steps=1,
                                          save_every_epoch=False, log_every=5))
    labelled = AutoTokenizer.from_pretrained(str(init))
    rcrl.add_label_tokens(None, labelled)  # the reward splits steps with the labels' vocabulary
    run = runs.open_run(tmp_path, "rcrl", dataclasses.asdict(cfg), seed=0)
    rows = rcrl.train_rcrl(init, items, make_reward("sparse", tokenizer=labelled), cfg, run, labels="sparse",
                           make_sampler=make_sampler, params=SamplingParams(max_new_tokens=24))
    assert rows == rcrl.load_metrics(run.dir) and run.done
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["rollouts"] == len(items) * 4
    assert 0.2 < rows[1]["good_solutions"] < 0.8  # both labels are in the data
    model, tok = load_policy(rcrl.checkpoint(run.dir, 1), trainable=False)
    prompts = [format_prompt(p.question) for p in items]
    accuracy = {}
    for label in (GOOD, BAD):
        out = ConditionedSampler(HFSampler(model, tok, progress=False), tok, label).generate(
            prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=24, seed=0))
        accuracy[label] = sum(is_correct(s.text, p.answer) for row, p in zip(out, items) for s in row) / (8 * len(items))
    # Measured 0.57 vs 0.17 (one thread); the standard error of that difference is about 0.025.
    assert accuracy[GOOD] > accuracy[BAD] + 0.2, accuracy


def test_dense_decoding_equals_generate_with_a_label_forcing_logits_processor(easy):
    """Both dense decoders (the sampler inserting labels, and the stop-on-newline loop) against a
    trusted plain loop: `model.generate` with a logits processor that forces the label after
    every newline ending a non-blank line (greedy, float64)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    init, items = easy
    model, tok = load_policy(init, trainable=False, dtype=torch.float64)
    good, _ = rcrl.add_label_tokens(model, tok, seed=0)
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # an untrained label derails this model; a null one lets it write its lines
        model.get_input_embeddings().weight[good] = 0.0

    class ForceLabel(LogitsProcessor):
        def __call__(self, input_ids, scores):
            force = (input_ids[:, -1] == newline) & (input_ids[:, -2] != newline)
            scores[force] = -torch.inf
            scores[force, good] = 0.0
            return scores

    class LinesOnly:  # a sampler that cannot insert tokens (as vLLM): the stop-on-newline loop
        def __init__(self, sampler):
            self.generate = sampler.generate

    prompts = [format_prompt(p.question) for p in items[:12]]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
    ours = ConditionedSampler(HFSampler(model, tok, progress=False), tok, GOOD, dense=True).generate(prompts, params)
    loop = ConditionedSampler(LinesOnly(HFSampler(model, tok, progress=False)), tok, GOOD, dense=True).generate(
        prompts, params)
    assert [[(s.text, s.token_ids, s.finish_reason) for s in row] for row in loop] == \
        [[(s.text, s.token_ids, s.finish_reason) for s in row] for row in ours]
    for prompt, row in zip(prompts, ours):
        ids = tok(prompt + GOOD, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24 + 4, do_sample=False,
                             logits_processor=LogitsProcessorList([ForceLabel()]), pad_token_id=tok.pad_token_id)
        generated = [t for t in out[0, ids.shape[1]:].tolist() if t != good]
        eos = generated.index(tok.eos_token_id) + 1 if tok.eos_token_id in generated else len(generated)
        assert row[0].token_ids == generated[:eos][:24]
        assert row[0].text == tok.decode(generated[:eos], skip_special_tokens=True)
    assert sum("\n" in row[0].text for row in ours) >= len(prompts) // 4  # labels went in mid-solution
