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
import math
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
from rlreason.rcrl_likelihood import label_likelihoods, labelled_layout, target_logprob_sums
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


# ---- teacher-forced likelihood under each label ------------------------------------------------

WRONG = "3+4 = <<3+4=7>>7\n7*3 = <<7*3=21>>21\n#### 21"
SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def labelled_model(seed: int = 0):
    """A fresh tiny model and tokenizer with the label tokens, float64 (exact comparisons)."""
    tok = build_word_tokenizer([format_prompt(PROBLEM.question) + format_completion(REFERENCE), WRONG,
                                "Ana has 5 pears and eats 2 of them on a long walk home. How many?"])
    torch.manual_seed(seed)
    model = build_tiny_llama(tok, SMALL)
    return model, tok, rcrl.add_label_tokens(model, tok, seed=seed)


def manual_logp(model, prompt_ids: list[int], pieces: list[tuple[bool, list[int]]]) -> tuple[float, int]:
    """log p of the solution tokens of one unpadded sequence: `pieces` are (is a label, ids)."""
    seq = list(prompt_ids)
    targets = []
    for is_label, ids in pieces:
        targets += [] if is_label else list(range(len(seq), len(seq) + len(ids)))
        seq += ids
    with torch.no_grad():
        logp = model(torch.tensor([seq])).logits[0].double().log_softmax(-1)
    return sum(logp[t - 1, seq[t]].item() for t in targets), len(targets)


def test_label_likelihoods_equal_a_manual_forward_pass_in_both_modes():
    model, tok, (good, bad) = labelled_model()
    model = model.double().eval()
    other = Problem("p1", "Ana has 5 pears and eats 2 of them on a long walk home. How many?", "5-2 = 3\n#### 3", 3.0)
    lines = [" 3+4 = <<3+4=7>>7\n", "7*3 = <<7*3=21>>21\n", "#### 21"]
    parts = [encode(tok, t) for t in lines[:2]] + [encode(tok, lines[2], eos=True)]
    wrong_ids = [t for part in parts for t in part]
    reference_ids = encode(tok, format_completion(REFERENCE), eos=True)  # text is encoded as SFT data
    pairs = [(other, format_completion(other.solution)), (PROBLEM, wrong_ids), (PROBLEM, format_completion(REFERENCE))]
    prompt = tok(format_prompt(PROBLEM.question))["input_ids"]
    for mode in ("sparse", "dense"):
        # 6 rows in batches of 4: rows of different lengths padded together, and a pair split.
        out = label_likelihoods(model, tok, pairs, mode, batch_size=4)
        assert len(out) == 3 and all(o.n_tokens == n for o, n in zip(out[1:], (len(wrong_ids), len(reference_ids))))
        for label, got in ((good, out[1].logp_good), (bad, out[1].logp_bad)):
            pieces = ([(True, [label]), (False, wrong_ids)] if mode == "sparse" else
                      [piece for part in parts for piece in ((True, [label]), (False, part))])
            want, n = manual_logp(model, prompt, pieces)
            assert n == len(wrong_ids) and got == pytest.approx(want, abs=1e-9)
        want, _ = manual_logp(model, prompt, [(True, [good]), (False, reference_ids)])
        if mode == "sparse":
            assert out[2].logp_good == pytest.approx(want, abs=1e-9)
        assert out[1].gap == pytest.approx(out[1].logp_good - out[1].logp_bad)
        assert out[1].gap_per_token == pytest.approx(out[1].gap / len(wrong_ids))
        assert out[0].logp_good != out[0].logp_bad  # the label is in the context
    # Cut as fine-tuning cuts (`max_length`): only the tokens that fit are scored.
    cut = label_likelihoods(model, tok, pairs[1:2], "sparse", max_length=len(prompt) + 1 + 5)[0]
    want, n = manual_logp(model, prompt, [(True, [good]), (False, wrong_ids[:5])])
    assert cut.n_tokens == n == 5 and cut.logp_good == pytest.approx(want, abs=1e-9)


def test_target_logprob_sums_skip_ignored_targets():
    logits = torch.zeros((1, 4, 3))
    logits[0, 1, 2] = math.log(2.0)  # position 1 predicts token 2 with probability 2/4
    labels = torch.tensor([[IGNORE_INDEX, 0, 2, IGNORE_INDEX]])
    assert target_logprob_sums(logits, labels).item() == pytest.approx(math.log(1 / 3) + math.log(1 / 2))


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_a_model_trained_to_read_its_label_prefers_the_matching_label(mode):
    """Fine-tuned as RCRL fine-tunes (labels masked) on the right solution after the good label
    and a wrong one after the bad label: the right solution is likelier under good, the wrong one
    under bad. Before training neither preference holds reliably."""
    model, tok, ids = labelled_model()
    prompt = format_prompt(PROBLEM.question)
    right, wrong = (encode(tok, format_completion(t), eos=True) for t in (REFERENCE, WRONG))
    examples = [rcrl.encode_labelled(tok, prompt, labelled_layout(tok, sol, mode, label), 512, ids)
                for sol, label in ((right, ids[0]), (wrong, ids[1]))]
    pairs = [(PROBLEM, right), (PROBLEM, wrong)]
    before = [o.gap for o in label_likelihoods(model, tok, pairs, mode)]
    assert not (before[0] > 1 and before[1] < -1), before  # nothing to read yet
    train_sft(model, tok, None, SFTConfig(epochs=40, lr=1e-2, batch_size=4, warmup_steps=1, save_every_epoch=False),
              encoded=examples * 4, progress=False)
    right_score, wrong_score = label_likelihoods(model.eval(), tok, pairs, mode)
    assert right_score.gap > 1 and wrong_score.gap < -1, (right_score, wrong_score)


def test_label_likelihoods_reject_bad_input():
    model, tok, _ = labelled_model()
    with pytest.raises(ValueError, match="pairs is empty"):
        label_likelihoods(model, tok, [], "sparse")
    with pytest.raises(ValueError, match="unknown label mode 'both'"):
        label_likelihoods(model, tok, [(PROBLEM, REFERENCE)], "both")
    with pytest.raises(ValueError, match=r"completion 1 \(p0\) has no tokens"):
        label_likelihoods(model, tok, [(PROBLEM, REFERENCE), (PROBLEM, [])], "dense")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        label_likelihoods(model, tok, [(PROBLEM, REFERENCE)], "sparse", batch_size=0)
    with pytest.raises(ValueError, match="no RCRL labels"):
        label_likelihoods(model, build_word_tokenizer([REFERENCE]), [(PROBLEM, REFERENCE)], "sparse")


def test_stage_scores_the_last_rounds_rollouts_and_the_references(tmp_path, monkeypatch):
    """`stages.rcrl_label_likelihood` on a run folder built by hand: rollouts graded strictly,
    references scored as SFT data, numbers those of `label_likelihoods`, a cache, clear errors."""
    from rlreason import stages
    from rlreason.profiles import get_profile
    from rlreason.stages.rcrl import rcrl_identity, rcrl_shared_rollouts

    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    profile = get_profile("smoke")
    model, tok, _ = labelled_model()
    ckpt = save_policy(model, tok, tmp_path / "run" / "round_01")
    cfg = RCRLConfig(k=3)
    other = Problem("p1", "Ana has 5 pears and eats 2 of them on a long walk home. How many?", "5-2 = 3\n#### 3", 3.0)
    identity = rcrl_identity(profile, tmp_path / "init", "sft", "dense", "dense", cfg, [PROBLEM], None)
    result = stages.StageResult("rcrl-test", "rcrl", "sft", "dense", 0, tmp_path / "run", ckpt, identity=identity)
    texts = [" " + REFERENCE, " " + WRONG, ""]  # right, wrong, empty (not labelled in training either)
    samples = [Sample(t, encode(tok, t, eos=True) if t else [], [], "stop") for t in texts]
    path = rcrl.rollouts_file(result.run_dir, 1, identity["init"], identity["questions"], cfg, 0,
                              stages.rollout_params(profile), rcrl_shared_rollouts(profile, "sft"))
    with pytest.raises(FileNotFoundError, match="no rollouts of round 1"):
        stages.rcrl_label_likelihood(profile, result, [PROBLEM], [other])
    path.parent.mkdir(parents=True)
    rcrl._save_rollouts(path, [PROBLEM], [samples])

    rows = stages.rcrl_label_likelihood(profile, result, [PROBLEM], [other])
    assert [(r["id"], r["sample"], r["source"], r["correct"]) for r in rows] == [
        ("p0", 0, "rollout", True), ("p0", 1, "rollout", False), ("p1", 0, "reference", True)]
    model, tok = load_policy(ckpt, trainable=False)
    want = label_likelihoods(model, tok, [(PROBLEM, samples[0].token_ids), (PROBLEM, samples[1].token_ids),
                                          (other, format_completion(other.solution))], "dense")
    for row, w in zip(rows, want):
        assert (row["logp_good"], row["logp_bad"], row["n_tokens"]) == pytest.approx((w.logp_good, w.logp_bad,
                                                                                       w.n_tokens), abs=1e-5)
        assert row["gap_per_token"] == pytest.approx(w.gap_per_token, abs=1e-5)
    assert stages.rcrl_label_likelihood(profile, result, [PROBLEM], [other]) == rows  # cached
    assert len(stages.rcrl_label_likelihood(profile, result, [PROBLEM], [other, PROBLEM])) == 4  # new key
    assert len(stages.rcrl_label_likelihood(profile, result, [PROBLEM], [other], max_per_group=0)) == 0
    with pytest.raises(ValueError, match="rollout question 'p0' is not among the 1 training items"):
        stages.rcrl_label_likelihood(profile, result, [other], [other], recompute=True)


def test_label_likelihood_groups_and_verdict():
    import numpy as np

    from rlreason.report.rcrl import likelihood_groups, likelihood_verdict

    def rows(source, correct, gaps, n=4):
        return [{"id": f"{source}-{correct}-{i}", "source": source, "correct": correct,
                 "logp_good": -10.0 + g * n, "logp_bad": -10.0, "n_tokens": n} for i, g in enumerate(gaps)]

    data = (rows("rollout", True, [0.5, 0.4, 0.6, 0.5]) + rows("rollout", False, [-0.3, -0.2, -0.4, -0.5, 0.1])
            + rows("reference", True, [0.2, 0.3]) + rows("rollout", True, [9.0], n=0))  # no tokens: left out
    groups = likelihood_groups(data, np.random.default_rng(0), n_boot=200)
    by = {g["group"]: g for g in groups}
    assert [g["n"] for g in groups] == [4, 5, 2]
    assert by["correct rollouts"]["gap_per_token"] == pytest.approx(0.5)
    assert by["correct rollouts"]["lo"] > 0 and by["wrong rollouts"]["share_good"] == pytest.approx(0.2)
    assert by["wrong rollouts"]["hi"] < 0 and by["test references"]["logp_bad_per_token"] == pytest.approx(-2.5)
    assert likelihood_verdict(groups) == "the label is read"
    both = likelihood_groups(rows("rollout", True, [0.5, 0.6]) + rows("rollout", False, [0.5, 0.4]),
                             np.random.default_rng(0), n_boot=200)
    assert likelihood_verdict(both) == "not read: the good label makes wrong solutions likelier too"
    none = likelihood_groups(rows("rollout", True, [-0.5, 0.4]) + rows("rollout", False, [-0.5]),
                             np.random.default_rng(0), n_boot=200)
    assert likelihood_verdict(none) == "not read: correct solutions are not likelier under the good label"
    assert likelihood_verdict(likelihood_groups(rows("rollout", True, [0.5]), np.random.default_rng(0), 50)) \
        == "cannot tell (no wrong rollouts)"
    # the CI is over questions: two solutions of one question are averaged into one
    same = [dict(r, id="q") for r in rows("rollout", True, [0.2, 0.6])] + rows("rollout", True, [0.4])
    one = likelihood_groups(same, np.random.default_rng(0), n_boot=50)[0]
    assert (one["n"], one["n_questions"]) == (3, 2) and one["gap_per_token"] == pytest.approx(0.4)


def test_label_likelihood_section_has_a_row_per_run_and_group(tmp_path, monkeypatch):
    from rlreason import report, stages
    from rlreason.profiles import get_profile

    monkeypatch.setenv("RLREASON_OUTPUT_DIR", str(tmp_path))
    profile = get_profile("smoke")

    def fake(profile, run):  # the sparse run reads its label, the dense one does not
        sign = 1.0 if run.name.endswith("sparse") else 0.0
        return [{"id": f"q{i}", "source": source, "correct": ok,
                 "logp_good": -5.0 + sign * (0.5 if ok else -0.5) + 0.01 * i,
                 "logp_bad": -5.0, "n_tokens": 5}
                for source, ok in (("rollout", True), ("rollout", False), ("reference", True)) for i in range(6)]

    monkeypatch.setattr(stages, "rcrl_label_likelihood", fake)
    runs = {("sft", mode): stages.StageResult(f"rcrl-{mode}", "rcrl", "sft", mode, 0, tmp_path, tmp_path)
            for mode in ("sparse", "dense")}
    out = report.rcrl.label_likelihood(profile, runs, 0)
    table = out["rcrl_label_likelihood"]
    assert list(zip(table["variant"], table["group"])) == [
        (f"sft / {m}", g) for m in ("sparse", "dense") for g in report.rcrl.LIKELIHOOD_GROUPS]
    assert list(table["n"]) == [6] * 6 and "fig05_rcrl_label_likelihood" in out.figures
    verdicts = dict(zip(table["variant"], table["verdict"]))
    assert verdicts == {"sft / sparse": "the label is read",
                        "sft / dense": "not read: the good label makes wrong solutions likelier too"}
    assert (tmp_path / "smoke" / "tables" / "rcrl_label_likelihood.csv").exists()
    assert out.show[-1].startswith("sft / dense: not read")
