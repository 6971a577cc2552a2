"""The op entry points: references on CPU, BASED_KERNELS forces either path (fused on CPU is an error)."""

import pytest
import torch

import based_kernels
from based_kernels.linear_attention.naive import linear_attention_reference


def test_cpu_uses_reference_and_env_var_is_checked(monkeypatch):
    q, k, v = torch.randn(1, 9, 2, 16), torch.randn(1, 9, 2, 16), torch.randn(1, 9, 2, 8)
    monkeypatch.setenv("BASED_KERNELS", "auto")
    assert torch.equal(based_kernels.linear_attention(q, k, v), linear_attention_reference(q, k, v))
    monkeypatch.setenv("BASED_KERNELS", "fused")
    with pytest.raises(RuntimeError, match="BASED_KERNELS=fused"):
        based_kernels.linear_attention(q, k, v)
    monkeypatch.setenv("BASED_KERNELS", "fast")
    with pytest.raises(ValueError, match="BASED_KERNELS='fast'"):
        based_kernels.short_conv_gate(q[..., 0], q[..., 0], torch.randn(2, 3), torch.randn(2))
