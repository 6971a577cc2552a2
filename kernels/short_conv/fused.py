"""Autograd function and launchers of the fused short conv + SiLU + gate (kernels in triton_kernels.py)."""

from dataclasses import dataclass
from typing import Optional

import torch

from .naive import short_conv_gate_reference
from .triton_kernels import _bwd_kernel, _fwd_kernel, _step_kernel

BLOCK_T = 32
BLOCK_C = 128


@dataclass(frozen=True)
class BackwardLaunch:
    """Launch of the backward kernel (_bwd_kernel): each program owns `segment` time steps x block_c channels of one
    batch row on num_warps warps and walks them `rows` steps per loop iteration, the conv's shifts kept in registers;
    prefetch issues the next iteration's loads before the current one computes. Speed knobs only: results do not
    depend on them. The default was the fastest of BACKWARD_VARIANTS on the H200 (bench/tune_short_conv.py,
    bench/notes_kernels.md "Round 4"): 0.181 ms at B*T = 32768, C = 2048, bf16, against 0.40 ms for round 3's tiled
    kernel. Compiled for sm_90 (bf16, K = 3): about 160 registers, 12 warps per SM, no spills."""
    segment: int = 128
    block_c: int = 128
    num_warps: int = 1
    rows: int = 4
    prefetch: bool = True

    def __post_init__(self):
        if self.segment % self.rows:
            raise ValueError(f"BackwardLaunch: segment ({self.segment}) must be a multiple of rows ({self.rows})")


# The launches bench/tune_short_conv.py times: segment x block_c x warps, rows per iteration, prefetch (pf).
BACKWARD_VARIANTS = {
    "128x128x1 r4 pf": BackwardLaunch(),
    "64x128x1 r4 pf": BackwardLaunch(segment=64),
    "128x64x1 r4 pf": BackwardLaunch(block_c=64),
    "128x128x1 r4": BackwardLaunch(prefetch=False),
    "128x64x1 r8": BackwardLaunch(block_c=64, rows=8, prefetch=False),
}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)       # plain Python: triton.cdiv is a constexpr function, slow to call from the host


def _grid(b: int, t: int, c: int):
    return _cdiv(max(t, 1), BLOCK_T), _cdiv(c, BLOCK_C), b


def _state_args(state, like):
    """(tensor, strides) for the optional conv state [B, C, K-1]."""
    if state is None:
        return like, (0, 0, 0)
    return state, tuple(state.stride())


class ShortConvGateFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, g, weight, bias, initial_state, launch):
        b, t, c = u.shape
        k = weight.shape[1]
        y = torch.empty_like(g)
        state, state_strides = _state_args(initial_state, u)
        _fwd_kernel[_grid(b, t, c)](
            u, g, weight, bias, state, y, *u.stride(), *g.stride(), *y.stride(), *state_strides, *weight.stride(),
            t, c, K=k, HAS_STATE=initial_state is not None, BT=BLOCK_T, BC=BLOCK_C, num_warps=4)
        ctx.save_for_backward(u, g, weight, bias, initial_state)
        ctx.launch = launch
        return y

    @staticmethod
    def backward(ctx, dy):
        u, g, weight, bias, initial_state = ctx.saved_tensors
        du, dg, dw, db = _backward(u, g, weight, bias, initial_state, dy, ctx.launch)
        d_state = None
        if initial_state is not None and ctx.needs_input_grad[4]:
            d_state = _initial_state_grad(u, g, weight, bias, initial_state, dy)
        return du, dg, dw, db, d_state, None


def _backward(u, g, weight, bias, initial_state, dy, launch: BackwardLaunch):
    """du, dg, dw, dbias from _bwd_kernel; dw and dbias add up the segments' sums [B * segments, K + 1, C]."""
    b, t, c = u.shape
    k = weight.shape[1]
    segments = _cdiv(max(t, 1), launch.segment)
    du, dg = torch.empty_like(u), torch.empty_like(g)
    dwb_part = u.new_empty(b * segments, k + 1, c, dtype=torch.float32)
    state, state_strides = _state_args(initial_state, u)
    _bwd_kernel[(segments, _cdiv(c, launch.block_c), b)](
        u, g, weight, bias, state, dy, du, dg, dwb_part,
        *u.stride(), *g.stride(), *dy.stride(), *state_strides, *weight.stride(),
        t, c, segments, K=k, HAS_STATE=initial_state is not None, SEG=launch.segment, ROWS=launch.rows,
        BC=launch.block_c, PREFETCH=launch.prefetch, num_warps=launch.num_warps, num_stages=1)
    dwb = dwb_part.sum(0)
    return du, dg, dwb[:k].t().contiguous().to(weight.dtype), dwb[k].to(bias.dtype)


def _initial_state_grad(u, g, weight, bias, initial_state, dy):
    """The state only reaches the first K-1 outputs: differentiate the reference on those few steps."""
    head = weight.shape[1] - 1
    with torch.enable_grad():
        state = initial_state.detach().requires_grad_()
        y_head = short_conv_gate_reference(u[:, :head].detach(), g[:, :head].detach(), weight.detach(),
                                           bias.detach(), initial_state=state)
        (d_state,) = torch.autograd.grad(y_head, state, dy[:, :head])
    return d_state


def final_conv_state(u, initial_state, k: int):
    """The last K-1 inputs [B, C, K-1] after the sequence (reaching into the initial state when T < K-1)."""
    b, t, c = u.shape
    history = u.new_zeros(b, c, k - 1) if initial_state is None else initial_state.to(u.dtype)
    recent = u[:, max(0, t - (k - 1)):].transpose(1, 2)
    return torch.cat([history[:, :, history.shape[2] - (k - 1 - recent.shape[2]):], recent], dim=2)


def short_conv_gate_fused(u, g, weight, bias, *, initial_state=None, output_final_state=False,
                          backward_launch: Optional[BackwardLaunch] = None):
    """based_kernels.short_conv_gate on the Triton kernels (same contract; see naive.py). backward_launch: the
    backward kernel's launch (a speed knob, see BACKWARD_VARIANTS); default BackwardLaunch()."""
    _check_inputs(u, g, weight, bias, initial_state)
    y = ShortConvGateFunction.apply(u, g, weight, bias, initial_state, backward_launch or BackwardLaunch())
    if output_final_state:
        return y, final_conv_state(u, initial_state, weight.shape[1])
    return y


def short_conv_gate_step_fused(u, g, conv_state, weight, bias):
    """based_kernels.short_conv_gate_step on the Triton kernel: conv_state [B, C, K-1] updated in place."""
    b, c = u.shape
    k = weight.shape[1]
    if g.shape != u.shape or tuple(conv_state.shape) != (b, c, k - 1) or k < 2:
        raise ValueError(f"short_conv_gate_step: u, g [B, C] and conv_state [B, C, K-1] with K >= 2 expected, got "
                         f"u {tuple(u.shape)}, g {tuple(g.shape)}, conv_state {tuple(conv_state.shape)}, "
                         f"weight {tuple(weight.shape)}")
    y = torch.empty_like(g)
    _step_kernel[(b, _cdiv(c, BLOCK_C))](
        u, g, conv_state, weight, bias, y, *u.stride(), *g.stride(), *conv_state.stride(), *weight.stride(),
        *y.stride(), c, K=k, BC=BLOCK_C, num_warps=4)
    return y


def _check_inputs(u, g, weight, bias, initial_state):
    where = "based_kernels.short_conv_gate"
    if u.dim() != 3 or g.shape != u.shape:
        raise ValueError(f"{where}: u and g must both be [B, T, C], got {tuple(u.shape)} and {tuple(g.shape)}")
    c, k = u.shape[2], weight.shape[-1]
    if weight.shape != (c, k) or bias.shape != (c,) or k < 2:
        raise ValueError(f"{where}: weight [C, K] (K >= 2) and bias [C] with C = {c} expected, got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (u.shape[0], c, k - 1):
        raise ValueError(f"{where}: initial_state must be [B, C, K-1] = {[u.shape[0], c, k - 1]}, got "
                         f"{tuple(initial_state.shape)}")
