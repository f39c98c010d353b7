"""HFSampler against the trusted references: `model.generate` and a plain forward pass.

Exact comparisons (token ids) run the model in float64: a random tiny model has nearly flat
logits, and float32 rounding differences between batch shapes could flip a greedy argmax.
"""
from __future__ import annotations

import pytest
import torch

from rlreason.problems import format_prompt
from rlreason.sampling import HFSampler, Sample, SamplingParams, VLLMSampler


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def prompts(tiny_world):
    # Mixed lengths on purpose: left padding and per-row positions are under test.
    return [format_prompt(p.question) for p in tiny_world.test[:6]]


@pytest.fixture(scope="module")
def model64(model):
    import copy

    # SDPA: transformers' eager attention masks with the wrong dtype's minimum in float64 (its
    # greedy output is all zeros); the float32 models use eager attention (models.default_attention).
    m = copy.deepcopy(model).double()
    m.set_attn_implementation("sdpa")
    return m


def sampler(model, tokenizer, **kw):
    return HFSampler(model, tokenizer, progress=False, **kw)


def ids(samples: list[list[Sample]]) -> list[list[list[int]]]:
    return [[s.token_ids for s in row] for row in samples]


def test_prompts_have_mixed_lengths(prompts, tokenizer):
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1


def test_greedy_equals_model_generate(model64, tokenizer, prompts):
    out = sampler(model64, tokenizer).generate(prompts, SamplingParams(n=2, temperature=0,
                                                                       max_new_tokens=24))
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model64.generate(**enc, do_sample=False, max_new_tokens=24,
                               pad_token_id=tokenizer.pad_token_id)[:, enc["input_ids"].shape[1]:]
    for row, expected in zip(out, ref.tolist()):
        assert len(row) == 2 and row[0] == row[1]  # greedy: the n samples are one sample
        got = row[0].token_ids
        assert got == expected[: len(got)]
        if row[0].finish_reason == "stop":  # ended on EOS: generate pads after it
            assert got[-1] == tokenizer.eos_token_id
        else:
            assert len(got) == 24


def test_greedy_is_deterministic_and_batch_independent(model64, tokenizer, prompts):
    params = SamplingParams(n=1, temperature=0, max_new_tokens=20)
    together = sampler(model64, tokenizer).generate(prompts, params)
    again = sampler(model64, tokenizer).generate(prompts, params)
    one_by_one = [sampler(model64, tokenizer).generate([p], params)[0] for p in prompts]
    tiny_batches = sampler(model64, tokenizer, token_budget=1).generate(prompts, params)
    assert ids(together) == ids(again) == ids(one_by_one) == ids(tiny_batches)


def test_seed_reproduces_and_other_seed_differs(model, tokenizer, prompts):
    s = sampler(model, tokenizer)
    a = s.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=1))
    b = s.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=1))
    c = s.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=2))
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert [s.text for row in a for s in row] == [s.text for row in b for s in row]
    assert len({tuple(s.token_ids) for s in a[0]}) > 1  # samples of one prompt differ


def test_n_order_and_max_new_tokens(model, tokenizer, prompts):
    out = sampler(model, tokenizer).generate(prompts, SamplingParams(n=3, max_new_tokens=7, seed=0))
    assert len(out) == len(prompts) and all(len(row) == 3 for row in out)
    for row in out:
        for s in row:
            assert 1 <= len(s.token_ids) <= 7 and len(s.logprobs) == len(s.token_ids)
            assert s.finish_reason == ("length" if len(s.token_ids) == 7 and
                                       s.token_ids[-1] != tokenizer.eos_token_id else "stop")
    # Order: a prompt's samples do not depend on where it stands (greedy, so no randomness).
    params = SamplingParams(n=1, temperature=0, max_new_tokens=7)
    forward = sampler(model, tokenizer).generate(prompts, params)
    backward = sampler(model, tokenizer).generate(prompts[::-1], params)
    assert ids(forward) == ids(backward[::-1])


def test_stop_strings_cut_the_text(model, tokenizer, prompts):
    stop = [".", "\n"]
    out = sampler(model, tokenizer).generate(
        prompts, SamplingParams(n=8, max_new_tokens=30, stop=stop, seed=0))
    stopped = 0
    for row in out:
        for s in row:
            full = tokenizer.decode(s.token_ids, skip_special_tokens=True)
            assert full.startswith(s.text)
            assert not any(x in s.text for x in stop)
            if s.finish_reason == "stop" and s.token_ids[-1] != tokenizer.eos_token_id:
                stopped += 1
                # Generation ended at the first token that completed a stop string.
                assert any(x in full for x in stop)
                before = tokenizer.decode(s.token_ids[:-1], skip_special_tokens=True)
                assert not any(x in before for x in stop)
            elif s.finish_reason == "length":
                assert len(s.token_ids) == 30 and s.text == full
    assert stopped > 0  # random models hit "." and newlines often


def test_logprobs_match_a_full_forward_pass(model, tokenizer, prompts):
    # Stop strings make rows finish at different steps, so batch compaction happens too.
    for shared in (True, False):
        out = sampler(model, tokenizer, shared_prefix=shared).generate(
            prompts, SamplingParams(n=3, temperature=1.3, top_p=0.9, max_new_tokens=20, seed=3,
                                    stop=["."]))
        for prompt, row in zip(prompts, out):
            prompt_ids = tokenizer(prompt)["input_ids"]
            for s in row:
                with torch.no_grad():
                    logits = model(torch.tensor([prompt_ids + s.token_ids])).logits[0].float()
                ref = logits[len(prompt_ids) - 1 : -1].log_softmax(-1)
                ref = ref.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
                assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-4), (shared, s)


def test_shared_prefix_and_compaction_do_not_change_samples(model64, tokenizer, prompts):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=20, seed=7, stop=["."])
    reference = sampler(model64, tokenizer, shared_prefix=False, compact_fraction=2.0)
    variants = [sampler(model64, tokenizer),
                sampler(model64, tokenizer, compact_fraction=0.0),  # compact at every finish
                sampler(model64, tokenizer, shared_prefix=False)]
    expected = ids(reference.generate(prompts, params))
    for s in variants:
        assert ids(s.generate(prompts, params)) == expected


def test_dedup_shares_histories_without_changing_samples(model64, tokenizer, prompts):
    # At a low temperature most samples of a prompt repeat each other's tokens: dedup then runs
    # far fewer rows through the model, and must give the same samples as one row per sample.
    rows_seen = []
    hook = model64.register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    # (A random model's logits are nearly flat: their spread is ~0.01, hence the temperature.)
    params = SamplingParams(n=8, temperature=0.008, max_new_tokens=20, seed=11, stop=["."])
    try:
        results, rows = {}, {}
        for dedup, shared in ((True, True), (False, True), (True, False), (False, False)):
            rows_seen.clear()
            results[dedup, shared] = ids(sampler(model64, tokenizer, dedup=dedup, shared_prefix=shared)
                                         .generate(prompts, params))
            rows[dedup, shared] = sum(rows_seen[1:])  # the decoding steps (not the prefill)
    finally:
        hook.remove()
    expected = results[False, False]
    assert all(r == expected for r in results.values())
    assert sum(len(set(map(tuple, row))) for row in expected) > len(prompts)  # samples do differ
    for shared in (True, False):
        assert rows[True, shared] < 0.7 * rows[False, shared], rows


def test_tiny_top_p_is_greedy(model64, tokenizer, prompts):
    greedy = sampler(model64, tokenizer).generate(
        prompts, SamplingParams(temperature=0, max_new_tokens=12))
    nucleus = sampler(model64, tokenizer).generate(
        prompts, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12, seed=0))
    assert ids(greedy) == ids(nucleus)


def test_eos_ends_samples_and_is_kept_in_token_ids(model64, tokenizer, prompts):
    # A random model seldom says EOS: declare as EOS the token it says first after a prompt.
    import copy

    first = sampler(model64, tokenizer).generate(
        prompts[:1], SamplingParams(temperature=0, max_new_tokens=1))[0][0].token_ids[0]
    model = copy.deepcopy(model64)
    model.generation_config.eos_token_id = first
    greedy = sampler(model, tokenizer).generate(
        prompts[:1], SamplingParams(temperature=0, max_new_tokens=5))
    assert greedy[0][0].token_ids == [first] and greedy[0][0].finish_reason == "stop"
    assert greedy[0][0].text == ""
    out = sampler(model, tokenizer).generate(
        prompts, SamplingParams(n=8, max_new_tokens=12, seed=0))
    samples = [s for row in out for s in row]
    assert any(s.finish_reason == "stop" for s in samples)
    for s in samples:
        assert first not in s.token_ids[:-1]  # generation ends at the first EOS
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == first
            assert s.text == tokenizer.decode(s.token_ids[:-1], skip_special_tokens=True)
    ignore = sampler(model, tokenizer).generate(
        prompts[:1], SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    assert len(ignore[0][0].token_ids) == 5 and ignore[0][0].finish_reason == "length"


def test_model_state_is_restored(model, tokenizer, prompts):
    model.train()
    attn = model.config._attn_implementation
    sampler(model, tokenizer).generate(prompts[:2], SamplingParams(n=2, max_new_tokens=4, seed=0))
    assert model.training and model.config._attn_implementation == attn
    model.eval()
    assert sampler(model, tokenizer).generate([], SamplingParams()) == []


def test_works_on_a_peft_model(model, tokenizer, prompts):
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(copy.deepcopy(model), config)
    peft_model.eval()
    params = SamplingParams(n=2, max_new_tokens=10, seed=0)
    # Fresh LoRA adapters are a no-op (B = 0): same samples as the base model.
    assert ids(sampler(peft_model, tokenizer).generate(prompts, params)) == ids(
        sampler(model, tokenizer).generate(prompts, params))


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    assert SamplingParams(stop=".").stop == ["."]


def test_vllm_sampler_explains_a_missing_vllm(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(ImportError, match=r"rlreason\[gpu\]"):
        VLLMSampler("some/model")


def test_the_kv_budget_counts_bytes_not_slots(model, tokenizer):
    from types import SimpleNamespace

    from rlreason.sampling.hf import kv_bytes_per_slot

    # The tiny model keeps its slot budget (4 KB per slot, 2 GiB for both buffers).
    assert sampler(model, tokenizer).token_budget == 262144
    # Llama-2-7B in fp32: 512 KiB per cached token, so 2 GiB holds 2,048 slots (two buffers).
    llama7b = SimpleNamespace(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                              hidden_size=4096, head_dim=None)
    assert kv_bytes_per_slot(llama7b, torch.float32) == 2 * 32 * 32 * 128 * 4
    small = sampler(model, tokenizer, kv_memory_bytes=1 << 20)
    assert small.token_budget == (1 << 20) // (2 * small.bytes_per_slot) == 128
    out = small.generate(["a b"], SamplingParams(n=2, max_new_tokens=4, seed=0))
    assert len(out[0]) == 2
