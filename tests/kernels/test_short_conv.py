"""Fused short conv + SiLU + gate (Triton, interpreted on CPU) against the fp64 reference."""

import pytest
import torch

from based_kernels.short_conv.fused import (BACKWARD_VARIANTS, BackwardLaunch, short_conv_gate_fused,
                                           short_conv_gate_step_fused)
from based_kernels.short_conv.naive import short_conv_gate_reference, short_conv_gate_step_reference

# Backward launches with segments, channel blocks and row blocks small enough that the shapes below span several of
# each: prefetch (whose last load is the halo), no prefetch, and one row per iteration (< K-1: the halo is loaded on
# its own).
SMALL_LAUNCHES = [BackwardLaunch(segment=8, block_c=32, rows=4),
                  BackwardLaunch(segment=8, block_c=32, rows=2, prefetch=False),
                  BackwardLaunch(segment=4, block_c=32, rows=1)]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_against_reference(dtype, b, t, c, k, with_state, **knobs):
    gen = torch.Generator().manual_seed(t * 7 + c + k)
    leaves = [torch.randn(*shape, generator=gen).to(dtype).requires_grad_()
              for shape in ((b, t, c), (b, t, c), (c, k), (c,)) + (((b, c, k - 1),) if with_state else ())]
    u, g, w, bias = leaves[:4]
    state = leaves[4] if with_state else None
    y, final = short_conv_gate_fused(u, g, w, bias, initial_state=state, output_final_state=True, **knobs)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    y_ref, final_ref = short_conv_gate_reference(*ref_leaves[:4], initial_state=ref_leaves[4] if with_state else None,
                                                 output_final_state=True)
    dy = torch.randn(y.shape, generator=gen).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and rel_err(y, y_ref) <= tol
    assert torch.equal(final.double(), final_ref)
    names = ["du", "dg", "dw", "dbias", "dstate"]
    for name, got, want in zip(names, torch.autograd.grad(y, leaves, dy),
                               torch.autograd.grad(y_ref, ref_leaves, dy.double())):
        assert got.dtype == dtype and rel_err(got, want) <= tol, f"{name}: rel err {rel_err(got, want):.2e}"
        if name in ("dw", "dbias"):         # parameter gradients: optimizers flatten them with .view
            assert got.is_contiguous(), f"{name} is not contiguous"


SHAPES = [
    (torch.float32, 2, 37, 40, 3, False),       # T and C not multiples of the tiles, several tiles per program
    (torch.float32, 1, 5, 130, 3, True),        # batch 1, short sequence, state in
    (torch.float32, 2, 1, 16, 4, True),         # T < K-1: the final state reaches into the initial one
    (torch.float32, 3, 2, 8, 3, False),         # T < K, no state
    (torch.float32, 2, 45, 24, 4, True),        # state in with several tiles: dw terms from the state
    (torch.float16, 3, 70, 20, 2, True),
    (torch.float16, 2, 33, 136, 3, False),
]


@pytest.mark.parametrize("dtype, b, t, c, k, with_state", SHAPES)
def test_matches_reference(dtype, b, t, c, k, with_state):
    check_against_reference(dtype, b, t, c, k, with_state, backward_launch=SMALL_LAUNCHES[0])


@pytest.mark.parametrize("launch", list(BACKWARD_VARIANTS.values()), ids=list(BACKWARD_VARIANTS))
def test_backward_variants(launch):
    """Every offered launch (T = 75: two segments of the 64-step variants), batch 1 with state in; T < K in fp16."""
    check_against_reference(torch.float32, 1, 75, 72, 3, True, backward_launch=launch)
    check_against_reference(torch.float16, 2, 2, 72, 3, False, backward_launch=launch)


@pytest.mark.parametrize("dtype, b, t, c, k, with_state", [SHAPES[i] for i in (0, 2, 3, 4, 5)])
@pytest.mark.parametrize("launch", SMALL_LAUNCHES[1:], ids=["no prefetch", "one row per iteration"])
def test_backward_code_paths(dtype, b, t, c, k, with_state, launch):
    """The backward kernel's other code paths on the shapes that reach them (segment ends, halos, T < K)."""
    check_against_reference(dtype, b, t, c, k, with_state, backward_launch=launch)


def test_strided_views():
    """The model passes [T, B, C] activations transposed to [B, T, C]; gradients come back in the same layout."""
    gen = torch.Generator().manual_seed(0)
    u_tb, g_tb, dy_tb = (torch.randn(19, 2, 24, generator=gen) for _ in range(3))
    w, bias = torch.randn(24, 3, generator=gen), torch.randn(24, generator=gen)
    leaves = [u_tb.requires_grad_(), g_tb.requires_grad_(), w.requires_grad_(), bias.requires_grad_()]
    y = short_conv_gate_fused(u_tb.transpose(0, 1), g_tb.transpose(0, 1), w, bias, backward_launch=SMALL_LAUNCHES[0])
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    y_ref = short_conv_gate_reference(ref_leaves[0].transpose(0, 1), ref_leaves[1].transpose(0, 1), *ref_leaves[2:])
    assert rel_err(y, y_ref) <= 1e-6
    for got, want in zip(torch.autograd.grad(y, leaves, dy_tb.transpose(0, 1)),
                         torch.autograd.grad(y_ref, ref_leaves, dy_tb.transpose(0, 1).double())):
        assert rel_err(got, want) <= 1e-6


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
