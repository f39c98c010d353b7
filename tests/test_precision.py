"""`mixed_precision="auto"`: decided by the CPU's capability and a measurement, recorded per run."""
from __future__ import annotations

import json

import pytest
import torch

from rlreason import precision
from rlreason.config import SFTConfig
from rlreason.parallel import oversubscription
from rlreason.training import collate, encode_example, train_sft


@pytest.fixture(autouse=True)
def _fresh_decisions(monkeypatch):
    monkeypatch.setattr(precision, "_DECISIONS", {})
    monkeypatch.delenv("RLREASON_PRECISION", raising=False)


def _batch(tokenizer, n=4):
    return collate([encode_example(tokenizer, "Question: a b\nAnswer:", " c d", 64)] * n,
                   tokenizer.pad_token_id)


def test_explicit_settings_are_kept_and_bad_ones_named():
    assert precision.resolve("no")["used"] == "no" and precision.resolve("bf16")["used"] == "bf16"
    with pytest.raises(ValueError, match="mixed_precision = 'bf8'"):
        precision.resolve("bf8")


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch, tiny_model, tiny_tokenizer):
    monkeypatch.setattr(precision, "cpu_capability", lambda: {"bf16_native": False, "cpu": "x"})
    monkeypatch.setattr(precision, "measure", lambda *a, **k: pytest.fail("must not measure"))
    decision = precision.resolve("auto", "cpu", tiny_model, _batch(tiny_tokenizer))
    assert decision["used"] == "no" and "without native bf16" in decision["reason"]


@pytest.mark.parametrize("fp32, bf16, used", [(1.0, 0.5, "bf16"), (1.0, 0.95, "no"), (1.0, 3.0, "no")])
def test_auto_keeps_bf16_only_when_measured_faster(monkeypatch, tiny_model, tiny_tokenizer, fp32,
                                                   bf16, used):
    monkeypatch.setattr(precision, "cpu_capability", lambda: {"bf16_native": True, "cpu": "x"})
    monkeypatch.setattr(precision, "measure", lambda *a, **k: {"no": fp32, "bf16": bf16})
    decision = precision.resolve("auto", "cpu", tiny_model, _batch(tiny_tokenizer))
    assert decision["used"] == used and decision["reason"] == "measured"
    assert precision.resolved("auto", "cpu") == used  # later forward passes follow the decision


@pytest.mark.parametrize("value, used", [("fp32", "no"), ("bf16", "bf16")])
def test_the_environment_replaces_the_measurement(monkeypatch, tiny_model, tiny_tokenizer, value, used):
    monkeypatch.setenv("RLREASON_PRECISION", value)
    monkeypatch.setattr(precision, "cpu_capability", lambda: {"bf16_native": True, "cpu": "x"})
    monkeypatch.setattr(precision, "measure", lambda *a, **k: pytest.fail("must not measure"))
    decision = precision.resolve("auto", "cpu", tiny_model, _batch(tiny_tokenizer))
    assert decision["used"] == used and "RLREASON_PRECISION" in decision["reason"]
    assert precision.resolved("auto", "cpu") == used
    assert precision.resolve("bf16")["used"] == "bf16"  # an explicit setting is not overridden


def test_a_bad_environment_precision_is_named(monkeypatch):
    monkeypatch.setenv("RLREASON_PRECISION", "fp8")
    with pytest.raises(ValueError, match="RLREASON_PRECISION = 'fp8'; expected 'fp32' or 'bf16'"):
        precision.resolve("auto", "cpu")


def test_measuring_leaves_gradients_and_rng_as_they_were(tiny_model, tiny_tokenizer):
    import copy

    model = copy.deepcopy(tiny_model).train()
    state = torch.random.get_rng_state()
    precision.measure(model, _batch(tiny_tokenizer), reps=1)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(state, torch.random.get_rng_state())


def test_training_records_the_decision(tmp_path, tiny_model, tiny_tokenizer):
    import copy

    model = copy.deepcopy(tiny_model)
    cfg = SFTConfig(max_steps=2, batch_size=2, warmup_steps=0, mixed_precision="auto")
    train_sft(model, tiny_tokenizer, [("Question: a b\nAnswer:", " c d")] * 4, cfg, out_dir=tmp_path,
              progress=False)
    saved = json.loads((tmp_path / "precision.json").read_text())
    assert saved["requested"] == "auto" and saved["used"] in ("no", "bf16")
    assert {"cpu", "bf16_native", "threads"} <= set(saved)


def test_oversubscription_is_said_before_a_run():
    assert "oversubscribed" in oversubscription(2, 2, cores=2, load=0.0)
    assert oversubscription(2, 1, cores=2, load=0.5) is None
    assert "busy" in oversubscription(1, 2, cores=2, load=4.0)


def test_a_resumed_run_reuses_its_recorded_decision(tmp_path, monkeypatch, tiny_model, tiny_tokenizer):
    (tmp_path / "precision.json").write_text(json.dumps({"requested": "auto", "used": "no"}))
    monkeypatch.setattr(precision, "resolve", lambda *a, **k: pytest.fail("must not decide again"))
    assert precision.decide("auto", tmp_path, "cpu", tiny_model, _batch(tiny_tokenizer)) == "no"
    monkeypatch.undo()
    assert precision.decide("bf16", tmp_path, "cpu") == "bf16"  # another request decides anew
    assert json.loads((tmp_path / "precision.json").read_text())["requested"] == "bf16"


def test_probe_batch_right_pads():
    batch = precision.probe_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
