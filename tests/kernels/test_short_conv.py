"""Fused short conv + SiLU + gate (Triton, interpreted on CPU) against the fp64 reference."""

import pytest
import torch

from based_kernels.short_conv.fused import short_conv_gate_fused, short_conv_gate_step_fused
from based_kernels.short_conv.naive import short_conv_gate_reference, short_conv_gate_step_reference


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype, b, t, c, k, with_state", [
    (torch.float32, 2, 37, 40, 3, False),       # T and C not multiples of the tiles
    (torch.float32, 1, 5, 130, 3, True),        # batch 1, short sequence, state in
    (torch.float32, 2, 1, 16, 4, True),         # T < K-1: the final state reaches into the initial one
    (torch.float16, 3, 70, 20, 2, True),
])
def test_matches_reference(dtype, b, t, c, k, with_state):
    gen = torch.Generator().manual_seed(t * 7 + c)
    leaves = [torch.randn(*shape, generator=gen).to(dtype).requires_grad_()
              for shape in ((b, t, c), (b, t, c), (c, k), (c,)) + (((b, c, k - 1),) if with_state else ())]
    u, g, w, bias = leaves[:4]
    state = leaves[4] if with_state else None
    y, final = short_conv_gate_fused(u, g, w, bias, initial_state=state, output_final_state=True)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    y_ref, final_ref = short_conv_gate_reference(*ref_leaves[:4], initial_state=ref_leaves[4] if with_state else None,
                                                 output_final_state=True)
    dy = torch.randn(y.shape, generator=gen).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and rel_err(y, y_ref) <= tol
    assert torch.equal(final.double(), final_ref)
    for i, (got, want) in enumerate(zip(torch.autograd.grad(y, leaves, dy),
                                        torch.autograd.grad(y_ref, ref_leaves, dy.double()))):
        assert rel_err(got, want) <= tol, f"gradient of input {i}"


def test_strided_views():
    gen = torch.Generator().manual_seed(0)
    u_tb, g_tb = torch.randn(9, 2, 24, generator=gen), torch.randn(9, 2, 24, generator=gen)
    w, bias = torch.randn(24, 3, generator=gen), torch.randn(24, generator=gen)
    y = short_conv_gate_fused(u_tb.transpose(0, 1), g_tb.transpose(0, 1), w, bias)
    assert rel_err(y, short_conv_gate_reference(u_tb.transpose(0, 1).double(), g_tb.transpose(0, 1).double(),
                                                w.double(), bias.double())) <= 1e-6


def test_decode_step_matches_reference_and_shifts_state():
    gen = torch.Generator().manual_seed(1)
    u, g = torch.randn(3, 50, generator=gen), torch.randn(3, 50, generator=gen)
    w, bias = torch.randn(50, 3, generator=gen), torch.randn(50, generator=gen)
    state = torch.randn(3, 50, 2, generator=gen)
    state_ref = state.double()
    y = short_conv_gate_step_fused(u, g, state, w, bias)
    y_ref = short_conv_gate_step_reference(u.double(), g.double(), state_ref, w.double(), bias.double())
    assert rel_err(y, y_ref) <= 1e-6 and torch.equal(state.double(), state_ref)


def test_bad_shapes_name_the_problem():
    u = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"weight \[C, K\]"):
        short_conv_gate_fused(u, u, torch.randn(8, 1), torch.randn(8))
    with pytest.raises(ValueError, match="initial_state"):
        short_conv_gate_fused(u, u, torch.randn(8, 3), torch.randn(8), initial_state=torch.zeros(2, 8, 5))
