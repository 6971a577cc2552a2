"""Shared tiny Based configurations for the HF tests (CPU, fp32, a few thousand parameters)."""

import pytest
import torch

from based_megatron.hf.configuration_based import BasedConfig


def tiny_hf_config(**overrides) -> BasedConfig:
    """Every mixer kind: C L S A C, look-back 4, a padded vocabulary."""
    values = dict(
        vocab_size=61, pad_vocab_size_multiple=8, n_embd=32, n_layer=5, n_head=4, n_inner=64,
        alt_mixer_layers=[1], alt_mixer_2_layers=[2], attn_layers=[3],
        mixer={"conv_bias": True},
        alt_mixer={"num_heads": 4, "feature_dim": 4, "feature_map": {"input_dim": 4}},
        alt_mixer_2={"num_heads": 4, "window_size": 8},
        bos_token_id=60, eos_token_id=60, pad_token_id=60,
    )
    values.update(overrides)
    return BasedConfig(**values)


@pytest.fixture
def tiny_model():
    from based_megatron.hf.modeling_based import BasedForCausalLM

    torch.manual_seed(0)
    return BasedForCausalLM(tiny_hf_config()).eval()


@pytest.fixture
def small_chunks(monkeypatch):
    """Make the plain-PyTorch prefill split short prompts into several blocks."""
    from based_megatron.hf import modeling_based

    monkeypatch.setattr(modeling_based, "CHUNK_SIZE", 5)
