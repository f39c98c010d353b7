"""Bad input gets one clear line naming the value and what was expected; nothing written is lost.

Each case is what a user can get wrong: a profile name, a seed, K or a temperature, a checkpoint
folder, a damaged rollouts or results file, a dataset name or split, an output folder that cannot
be written. Not tested here: a read-only folder when the tests run as root (root ignores
permissions; the test is skipped then), and a really full disk (it needs a small mounted
filesystem; a failing `fsync` with ENOSPC stands in for it).
"""

import errno
import json
import os
import shutil

import pytest

from rlreason.config import EIConfig, EvalConfig, ORMConfig, PPOConfig, RCRLConfig
from rlreason.data import DataNotFoundError, load_dataset_by_name, load_gsm8k
from rlreason.io import atomic_write_json, read_jsonl
from rlreason.profiles import get_profile


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def test_unknown_profile_names_it_and_the_valid_ones():
    with pytest.raises(ValueError) as e:
        get_profile("smal")
    message = one_line(e)
    assert "'smal'" in message and "tiny" in message


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True], ids=["negative", "float", "text", "bool"])
def test_a_seed_that_is_not_a_non_negative_int(seed):
    from rlreason.stages import setup

    with pytest.raises(ValueError) as e:
        setup("tiny", seed=seed)
    message = one_line(e)
    assert repr(seed) in message and "non-negative integer" in message


# (config class, field, bad value): K < 1 and temperature < 0 wherever a profile sets them.
BAD_CONFIGS = [
    (EvalConfig, "k", 0),
    (EIConfig, "k", 0),
    (RCRLConfig, "k", -1),
    (ORMConfig, "samples_per_question", 0),
    (PPOConfig, "samples_per_question", 0),
    (EvalConfig, "temperature", -0.5),
    (EIConfig, "temperature", -0.5),
    (RCRLConfig, "temperature", -1.0),
    (ORMConfig, "temperature", -0.5),
]


@pytest.mark.parametrize("cls, name, value", BAD_CONFIGS,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in BAD_CONFIGS])
def test_config_rejects_k_below_1_and_negative_temperature(cls, name, value):
    with pytest.raises(ValueError) as e:
        cls(**{name: value})
    message = one_line(e)
    assert f"{cls.__name__}.{name} = {value!r}" in message and "expected" in message


@pytest.mark.parametrize("name, value, expected", [("n", 0, ">= 1"), ("temperature", -0.5, ">= 0")],
                         ids=["K-below-1", "negative-temperature"])
def test_sampling_params_reject_k_below_1_and_negative_temperature(name, value, expected):
    from rlreason.sampling import SamplingParams

    with pytest.raises(ValueError) as e:
        SamplingParams(**{name: value})
    message = one_line(e)
    assert name in message and str(value) in message and expected in message


def test_a_missing_checkpoint_folder_names_it_and_what_was_expected(tmp_path):
    from rlreason.models import load_policy

    missing = tmp_path / "sft-seed0" / "final"
    with pytest.raises(FileNotFoundError) as e:
        load_policy(missing)
    message = one_line(e)
    assert str(missing) in message and "save_policy" in message


def test_a_checkpoint_folder_without_weights_names_it_and_the_weights_file(policy_dir, tmp_path):
    from rlreason.models import load_policy

    broken = tmp_path / "no-weights"
    shutil.copytree(policy_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(OSError) as e:
        load_policy(broken)
    message = one_line(e)
    assert str(broken) in message and "model.safetensors" in message


ROWS = [{"id": "q0", "samples": ["#### 1"]}, {"id": "q1", "samples": ["#### 2"]}]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_a_malformed_results_line_is_named_by_file_and_line_and_nothing_is_lost(tmp_path):
    path = tmp_path / "results.jsonl"
    text = _jsonl(ROWS[:1]) + '{"id": "q1", "maj1": }\n' + _jsonl(ROWS[1:])
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        read_jsonl(path)
    assert f"{path}:2: malformed JSON line" in one_line(e)
    assert path.read_text() == text


def test_a_torn_last_rollouts_line_never_yields_a_partial_row(tmp_path):
    # What a process killed during an append leaves: the last line cut, without its newline.
    path = tmp_path / "rollouts.jsonl"
    text = _jsonl(ROWS) + '{"id": "q2", "samples": ["#### '
    path.write_text(text)
    try:
        rows = read_jsonl(path)
    except ValueError as e:
        assert f"{path}:3:" in str(e) and "\n" not in str(e)
    else:
        assert rows == ROWS  # skipped whole, never half-read
    assert path.read_text() == text


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"round": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(path, {"round": 2})
    assert json.loads(path.read_text()) == {"round": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_a_read_only_output_folder_is_named_and_its_files_kept(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    atomic_write_json(folder / "config.json", {"seed": 0})
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as e:
            atomic_write_json(folder / "config.json", {"seed": 1})
        assert str(folder) in str(e.value)
        assert json.loads((folder / "config.json").read_text()) == {"seed": 0}
    finally:
        folder.chmod(0o755)


def test_unknown_dataset_and_split_are_named_with_the_valid_ones(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset_by_name("gsm9k", "test")
    assert "'gsm9k'" in one_line(e) and "gsm8k" in one_line(e)
    with pytest.raises(ValueError) as e:
        load_gsm8k("dev", path=tmp_path)
    assert "'dev'" in one_line(e) and "train, test" in one_line(e)
    with pytest.raises(DataNotFoundError) as e:
        load_gsm8k("test", path=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in one_line(e)


def test_a_gsm8k_record_without_its_answer_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    good = {"question": "1+1?", "answer": "1+1=2\n#### 2"}
    path.write_text(_jsonl([good, {"question": "2+2?", "answer": "it is 4"}]))
    with pytest.raises(ValueError) as e:
        load_gsm8k("test", path=path)
    assert f"{path}:2:" in one_line(e) and "####" in one_line(e)
