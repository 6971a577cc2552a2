"""Autograd function and launchers of the fused short conv + SiLU + gate (kernels in triton_kernels.py)."""

from dataclasses import dataclass
from typing import Optional

import torch
import triton

from .naive import short_conv_gate_reference
from .triton_kernels import _bwd_kernel, _fwd_kernel, _step_kernel

BLOCK_T = 32
BLOCK_C = 128


@dataclass(frozen=True)
class BackwardTiles:
    """Launch of the backward kernel: tiles of block_t time steps (of which block_t - (K-1) are owned, the rest is the
    halo) x block_c channels on num_warps warps; each program loops over up to tiles_per_program tiles (the scratch
    slot and the dw/dbias sums are per program). Speed knobs only: results do not depend on them. Compiled for
    sm_90 (bf16, K = 3; `python -m based_kernels.short_conv.compile_report`), each variant takes 128 registers:
    32 x 64 x 8 warps: 2 CTAs (16 warps) per SM; 32 x 32 x 4: 4 CTAs (16 warps); 16 x 64 x 4: 4 CTAs, twice the
    halo share. The default, 32 x 32 x 4, was the fastest at C = 2048 on the H200 (bench/tune_short_conv.py)."""
    block_t: int = 32
    block_c: int = 32
    num_warps: int = 4
    tiles_per_program: int = 8


BACKWARD_TILE_VARIANTS = {
    "32x64x8": BackwardTiles(block_c=64, num_warps=8),
    "32x32x4": BackwardTiles(),
    "16x64x4": BackwardTiles(block_t=16, block_c=64, num_warps=4),
}


def _grid(b: int, t: int, c: int):
    return triton.cdiv(max(t, 1), BLOCK_T), triton.cdiv(c, BLOCK_C), b


def _state_args(state, like):
    """(tensor, strides) for the optional conv state [B, C, K-1]."""
    if state is None:
        return like, (0, 0, 0)
    return state, tuple(state.stride())


class ShortConvGateFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, g, weight, bias, initial_state, tiles):
        b, t, c = u.shape
        k = weight.shape[1]
        y = torch.empty_like(g)
        state, state_strides = _state_args(initial_state, u)
        _fwd_kernel[_grid(b, t, c)](
            u, g, weight, bias, state, y, *u.stride(), *g.stride(), *y.stride(), *state_strides, *weight.stride(),
            t, c, K=k, HAS_STATE=initial_state is not None, BT=BLOCK_T, BC=BLOCK_C, num_warps=4)
        ctx.save_for_backward(u, g, weight, bias, initial_state)
        ctx.tiles = tiles
        return y

    @staticmethod
    def backward(ctx, dy):
        u, g, weight, bias, initial_state = ctx.saved_tensors
        du, dg, dw, db = _backward(u, g, weight, bias, initial_state, dy, ctx.tiles)
        d_state = None
        if initial_state is not None and ctx.needs_input_grad[4]:
            d_state = _initial_state_grad(u, g, weight, bias, initial_state, dy)
        return du, dg, dw, db, d_state, None


def _backward(u, g, weight, bias, initial_state, dy, tiles: BackwardTiles):
    """du, dg, dw, dbias from the backward kernel (see _bwd_kernel); dw and dbias add up the programs' sums."""
    b, t, c = u.shape
    k = weight.shape[1]
    block_t = max(tiles.block_t, triton.next_power_of_2(2 * k))      # at least as many owned steps as halo steps
    tiles_per_row = triton.cdiv(max(t, 1), block_t - (k - 1))
    channel_blocks = triton.cdiv(c, tiles.block_c)
    programs = triton.cdiv(b * tiles_per_row, tiles.tiles_per_program)
    du, dg = torch.empty_like(u), torch.empty_like(g)
    dwb_part = u.new_empty(programs, k + 1, c, dtype=torch.float32)
    scratch = u.new_empty(channel_blocks * programs, block_t, tiles.block_c, dtype=torch.float32)
    state, state_strides = _state_args(initial_state, u)
    _bwd_kernel[(programs, channel_blocks)](
        u, g, weight, bias, state, dy, du, dg, dwb_part, scratch,
        *u.stride(), *g.stride(), *dy.stride(), *state_strides, *weight.stride(),
        t, c, b * tiles_per_row, tiles_per_row, K=k, HAS_STATE=initial_state is not None, BT=block_t,
        BC=tiles.block_c, num_warps=tiles.num_warps, num_stages=1)
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
                          backward_tiles: Optional[BackwardTiles] = None):
    """based_kernels.short_conv_gate on the Triton kernels (same contract; see naive.py). backward_tiles: the
    backward kernel's tile (a speed knob, see BACKWARD_TILE_VARIANTS); default BackwardTiles()."""
    _check_inputs(u, g, weight, bias, initial_state)
    y = ShortConvGateFunction.apply(u, g, weight, bias, initial_state, backward_tiles or BackwardTiles())
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
    _step_kernel[(b, triton.cdiv(c, BLOCK_C))](
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
