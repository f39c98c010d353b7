"""Shared test settings, and the tiny objects that several test files need.

The tiny tokenizer, model and policy folder are session-scoped: built once, shared by every test
that asks for them. Treat them as read-only: restore what a test changes (`model.train()` ->
`model.eval()`), or work on `copy.deepcopy(tiny_model)` / a copy of `policy_dir`.
"""
from __future__ import annotations

import pytest

from rlreason.world import WorldConfig

TINY_WORLD = WorldConfig(seed=5, n_sft=60, n_dev=5, n_test=20, n_variations=5, n_pretrain=50)
"""A small synthetic world: enough problems for mixed prompt lengths, quick to build."""


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one thread is faster than two, and immune to a busy machine."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_world():
    """The `TINY_WORLD` problems (sft, dev, test splits)."""
    from rlreason.world import build_world

    return build_world(TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    """A word tokenizer built from the tiny world's SFT and test prompts and solutions."""
    from rlreason.problems import format_completion, format_prompt
    from rlreason.tokenizer import build_word_tokenizer

    return build_word_tokenizer(format_prompt(p.question) + format_completion(p.solution)
                                for p in tiny_world.sft + tiny_world.test)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """A randomly initialised tiny Llama (default `TinyModelConfig`, seed 0), in eval mode."""
    import torch

    from rlreason.models import build_tiny_llama

    torch.manual_seed(0)
    return build_tiny_llama(tiny_tokenizer).eval()


@pytest.fixture(scope="session")
def policy_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    """`tiny_model` and `tiny_tokenizer` saved as a policy folder (`save_policy`)."""
    from rlreason.models import save_policy

    path = tmp_path_factory.mktemp("policy") / "tiny"
    save_policy(tiny_model, tiny_tokenizer, path)
    return path
