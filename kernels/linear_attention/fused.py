"""Autograd function and launchers of the fused chunked Taylor linear attention (kernels in triton_kernels.py)."""

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_kernels import (_bwd_delta_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel, _fwd_kernel, _segment_state_kernel,
                             _step_kernel)

FEATURE_DIM = 16          # q/k feature dim the kernels are built for (Based's); others use the reference
FEATURES = 1 + FEATURE_DIM + FEATURE_DIM * FEATURE_DIM             # public state rows (273)
PAIRS = 128               # off-diagonal pairs a != b of the compact feature map (120, padded to a power of 2)
COMPACT_FEATURES = 1 + 2 * FEATURE_DIM + PAIRS                     # state rows inside the kernels (161)


@dataclass(frozen=True)
class LaunchConfig:
    chunk: int            # tokens per chunk (quadratic inside)
    block_d: int          # value columns per program
    n_blocks_d: int
    segment: int          # tokens per segment (a multiple of chunk)
    n_segments: int
    num_warps: int
    num_stages: int


def _dot_types(dtype: torch.dtype) -> dict:
    """Operand dtypes and input precisions of the kernels' matrix products for inputs of ``dtype``.

    DOT_DT/PREC: products inside a chunk; STATE_DT/STATE_PREC: products with the state; SEL_PREC: fp32 products
    of the feature-map gradient. fp32 inputs use exact fp32 products (tf32 would miss the 1e-4 accuracy target).
    fp16 inputs take the state products in tf32: the state sums over the whole sequence and can leave fp16's range.
    """
    if dtype == torch.float32:
        return dict(DOT_DT=tl.float32, STATE_DT=tl.float32, PREC="ieee", STATE_PREC="ieee", SEL_PREC="ieee")
    if dtype == torch.float16:
        return dict(DOT_DT=tl.float16, STATE_DT=tl.float32, PREC="tf32", STATE_PREC="tf32", SEL_PREC="tf32")
    if dtype == torch.bfloat16:
        return dict(DOT_DT=tl.bfloat16, STATE_DT=tl.bfloat16, PREC="tf32", STATE_PREC="tf32", SEL_PREC="tf32")
    raise TypeError(f"linear_attention: fused kernels take float32, float16 or bfloat16 inputs, got {dtype}")


def _feature_constants(f: int) -> dict:
    return dict(F=f, P=PAIRS, PHI1_SCALE=f ** -0.25, PHI2_SCALE=(2 * f) ** -0.5)


def _pair_indices(device) -> tuple:
    """(a_p, b_p) of the 120 off-diagonal pairs in the kernels' order (triton_kernels._pairs)."""
    p = torch.arange(FEATURE_DIM * (FEATURE_DIM - 1) // 2, device=device)
    a = p % FEATURE_DIM
    return a, (a + p // FEATURE_DIM + 1) % FEATURE_DIM


def to_compact(x: torch.Tensor) -> torch.Tensor:
    """Public state rows (273, dim -2 of S or -1 of z) -> kernel rows (161): phi(q).x is unchanged for every q.

    The quadratic rows X[a*F+b] become diagonal X[a*F+a] and pairs (X[a*F+b] + X[b*F+a]) / sqrt(2). Also maps a
    gradient of the public final state to the gradient of the kernels' final state (the same linear map).
    """
    z_like = x.dim() == 3
    rows = x if z_like else x.transpose(-1, -2)                 # [..., D, 273] or [N, H, 273]
    f = FEATURE_DIM
    a, b = _pair_indices(x.device)
    quad = rows[..., 1 + f:]
    diag = quad[..., torch.arange(f, device=x.device) * (f + 1)]
    pairs = (quad[..., a * f + b] + quad[..., b * f + a]) * 0.5 ** 0.5
    pad = pairs.new_zeros(*pairs.shape[:-1], PAIRS - pairs.shape[-1])
    out = torch.cat([rows[..., :1 + f], diag, pairs, pad], dim=-1)
    return (out if z_like else out.transpose(-1, -2)).float().contiguous()


def to_public(x: torch.Tensor) -> torch.Tensor:
    """Kernel rows (161) -> public rows (273), the transpose of to_compact's map (states out, initial-state grads)."""
    z_like = x.dim() == 3
    rows = x if z_like else x.transpose(-1, -2)
    f = FEATURE_DIM
    a, b = _pair_indices(x.device)
    n_pairs = a.shape[0]
    quad = rows.new_zeros(*rows.shape[:-1], f * f)
    quad[..., torch.arange(f, device=x.device) * (f + 1)] = rows[..., 1 + f:1 + 2 * f]
    pairs = rows[..., 1 + 2 * f:1 + 2 * f + n_pairs] * 0.5 ** 0.5
    quad[..., a * f + b] = pairs
    quad[..., b * f + a] = pairs
    out = torch.cat([rows[..., :1 + f], quad], dim=-1)
    return (out if z_like else out.transpose(-1, -2)).contiguous()


def invisible_part(x: torch.Tensor) -> torch.Tensor:
    """The part of a public state (or of its gradient) that no phi(q) sees: x - to_public(to_compact(x)).

    It is the antisymmetric half of the quadratic rows; the kernels never carry it, so it passes straight from
    the initial to the final state (and from the final state's gradient to the initial state's).
    """
    return x.float() - to_public(to_compact(x))


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def launch_config(n_seq: int, seq_len: int, heads: int, head_dim: int, device: torch.device, varlen: bool,
                  chunk: int = 64, segment_chunks: Optional[int] = None, block_d: Optional[int] = None,
                  num_warps: Optional[int] = None) -> LaunchConfig:
    """Pick the value block and the segment length so that about two programs per multiprocessor run."""
    block_d = block_d or min(64, max(16, triton.next_power_of_2(head_dim)))
    n_blocks_d = triton.cdiv(head_dim, block_d)
    n_chunks = max(1, triton.cdiv(seq_len, chunk))
    if varlen:
        n_segments = 1
    elif segment_chunks is not None:
        n_segments = triton.cdiv(n_chunks, segment_chunks)
    else:
        programs = n_blocks_d * n_seq * heads
        wanted = triton.cdiv(2 * _multiprocessors(device), programs)
        n_segments = max(1, min(wanted, n_chunks // 4))
    segment = triton.cdiv(n_chunks, n_segments) * chunk
    n_segments = max(1, triton.cdiv(seq_len, segment))
    num_warps = num_warps or (4 if block_d <= 32 else 8)
    return LaunchConfig(chunk, block_d, n_blocks_d, segment, n_segments, num_warps=num_warps, num_stages=1)


def _strides4(x: torch.Tensor):
    return tuple(x.stride())


def _exclusive_cumsum(delta: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Per segment (dim 2) the sum of the segments before it (after it when reverse)."""
    out = torch.zeros_like(delta)
    if reverse:
        out[:, :, :-1] = delta[:, :, 1:].flip(2).cumsum(2).flip(2)
    else:
        out[:, :, 1:] = delta[:, :, :-1].cumsum(2)
    return out


def _segment_states(x, y, den, r, cfg: LaunchConfig, n_seq: int, eps: float, reverse: bool, state_in=None):
    """Starting state of every segment ([N, H, NS, M, D], [N, H, NS, M] fp32) from a per-segment sum pass.

    Forward (reverse=False): x = k, y = v; segment s starts from initial + sum of segments < s.
    Backward (reverse=True): x = q, y = do; segment s ends with dS_final + sum of segments > s.
    """
    B, T, H, F = x.shape
    D = y.shape[-1]
    delta_s = torch.empty(n_seq, H, cfg.n_segments, COMPACT_FEATURES, D, device=x.device, dtype=torch.float32)
    delta_z = torch.empty(n_seq, H, cfg.n_segments, COMPACT_FEATURES, device=x.device, dtype=torch.float32)
    types = _dot_types(x.dtype)
    grid = (cfg.n_blocks_d, cfg.n_segments, n_seq * H)
    _segment_state_kernel[grid](
        x, y, den, r, delta_s, delta_z, *_strides4(x), *_strides4(y), T, H, D, eps,
        **_feature_constants(F), C=cfg.chunk, BD=cfg.block_d, NS=cfg.n_segments, SEG=cfg.segment, IS_BWD=reverse,
        PREC=types["PREC"], STATE_DT=types["STATE_DT"], STATE_PREC=types["STATE_PREC"],
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    s_seg = _exclusive_cumsum(delta_s, reverse)
    z_seg = _exclusive_cumsum(delta_z, reverse)
    if state_in is not None:
        s_seg += state_in[0].unsqueeze(2)
        z_seg += state_in[1].unsqueeze(2)
    return s_seg, z_seg


def _state_per_segment(state):
    """A compact state ([N, H, M, D], [N, H, M]) as the one-segment layout the kernels read."""
    if state is None:
        return None
    return state[0].unsqueeze(2), state[1].unsqueeze(2)


class LinearAttentionFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, s_init, z_init, cu_seqlens, eps, output_final_state, tuning):
        B, T, H, F = q.shape
        D = v.shape[-1]
        varlen = cu_seqlens is not None
        n_seq = cu_seqlens.shape[0] - 1 if varlen else B
        cfg = launch_config(n_seq, T, H, D, q.device, varlen, **tuning)
        initial = None if s_init is None else (to_compact(s_init), to_compact(z_init))
        if cfg.n_segments > 1:
            state_in = _segment_states(k, v, None, None, cfg, n_seq, eps, reverse=False, state_in=initial)
        else:
            state_in = _state_per_segment(initial)

        o = torch.empty_like(v)
        den = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
        s_out = z_out = None
        if output_final_state:
            s_out = q.new_empty(n_seq, H, COMPACT_FEATURES, D, dtype=torch.float32)
            z_out = q.new_empty(n_seq, H, COMPACT_FEATURES, dtype=torch.float32)
        types = _dot_types(q.dtype)
        grid = (cfg.n_blocks_d, cfg.n_segments, n_seq * H)
        _fwd_kernel[grid](
            q, k, v, o, den, *_or_dummy(state_in, q), *_or_dummy((s_out, z_out) if output_final_state else None, q),
            cu_seqlens, *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(o), T, H, D, eps,
            **_feature_constants(F), C=cfg.chunk, BD=cfg.block_d, NS=cfg.n_segments, SEG=cfg.segment,
            IS_VARLEN=varlen, HAS_STATE_IN=state_in is not None, STORE_FINAL=output_final_state,
            DOT_DT=types["DOT_DT"], STATE_DT=types["STATE_DT"], PREC=types["PREC"], STATE_PREC=types["STATE_PREC"],
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)

        ctx.save_for_backward(q, k, v, o, den, cu_seqlens, *(state_in if state_in is not None else ()))
        ctx.cfg, ctx.eps, ctx.n_seq, ctx.has_initial = cfg, eps, n_seq, s_init is not None
        if output_final_state:
            s_out, z_out = to_public(s_out), to_public(z_out)
            if s_init is not None:
                s_out, z_out = s_out + invisible_part(s_init), z_out + invisible_part(z_init)
        return o, s_out, z_out

    @staticmethod
    def backward(ctx, do, ds_final, dz_final):
        q, k, v, o, den, cu_seqlens, *state_in = ctx.saved_tensors
        state_in = tuple(state_in) if state_in else None
        cfg, eps, n_seq = ctx.cfg, ctx.eps, ctx.n_seq
        B, T, H, F = q.shape
        D = v.shape[-1]
        varlen = cu_seqlens is not None
        constants = dict(**_feature_constants(F), C=cfg.chunk, BD=cfg.block_d, NS=cfg.n_segments, SEG=cfg.segment,
                         IS_VARLEN=varlen, **_dot_types(q.dtype), num_warps=cfg.num_warps,
                         num_stages=cfg.num_stages)

        r = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
        block_t = 32
        _bwd_delta_kernel[(triton.cdiv(T, block_t), B * H)](
            o, do, den, r, *_strides4(o), *_strides4(do), T, H, D, eps,
            BT=block_t, DP=triton.next_power_of_2(D), num_warps=4)

        final_grad = None
        if ds_final is not None or dz_final is not None:
            final_grad = (to_compact(_zeros_if_none(ds_final, (n_seq, H, FEATURES, D), q)),
                          to_compact(_zeros_if_none(dz_final, (n_seq, H, FEATURES), q)))
        if cfg.n_segments > 1:
            grad_in = _segment_states(q, do, den, r, cfg, n_seq, eps, reverse=True, state_in=final_grad)
        else:
            grad_in = _state_per_segment(final_grad)

        dq, dq_strides = _partial_buffer(q, cfg.n_blocks_d)
        dk, dk_strides = _partial_buffer(k, cfg.n_blocks_d)
        dv = torch.empty_like(v)
        grid = (cfg.n_blocks_d, cfg.n_segments, n_seq * H)
        _bwd_dq_kernel[grid](
            q, k, v, do, den, r, *_or_dummy(state_in, q), dq, cu_seqlens,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do), *dq_strides, T, H, D, eps,
            HAS_STATE_IN=state_in is not None, **constants)

        ds_init = dz_init = None
        if ctx.has_initial:
            ds_init = q.new_empty(n_seq, H, COMPACT_FEATURES, D, dtype=torch.float32)
            dz_init = q.new_empty(n_seq, H, COMPACT_FEATURES, dtype=torch.float32)
        _bwd_dkdv_kernel[grid](
            q, k, v, do, den, r, *_or_dummy(grad_in, q), dk, dv,
            *_or_dummy((ds_init, dz_init) if ctx.has_initial else None, q), cu_seqlens,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do), *dk_strides, *_strides4(dv),
            T, H, D, eps, HAS_STATE_IN=grad_in is not None, STORE_INITIAL_GRAD=ctx.has_initial, **constants)

        if cfg.n_blocks_d > 1:
            dq, dk = dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype)
        if ctx.has_initial:
            ds_init, dz_init = to_public(ds_init), to_public(dz_init)
            if final_grad is not None:
                ds_init = ds_init + invisible_part(_zeros_if_none(ds_final, ds_init.shape, q))
                dz_init = dz_init + invisible_part(_zeros_if_none(dz_final, dz_init.shape, q))
        return dq, dk, dv, ds_init, dz_init, None, None, None, None


def _or_dummy(pair, like: torch.Tensor):
    """Kernel pointer arguments for an optional (S, z) pair (an unused 1-element tensor when absent)."""
    if pair is None:
        dummy = like.new_empty(1, dtype=torch.float32)
        return dummy, dummy
    return pair


def _zeros_if_none(x, shape, like):
    return like.new_zeros(shape, dtype=torch.float32) if x is None else x.float()


def _partial_buffer(x: torch.Tensor, n_blocks_d: int):
    """Gradient buffer for q or k and its (block, b, t, h, f) strides: one fp32 partial per value block if > 1."""
    if n_blocks_d == 1:
        grad = torch.empty_like(x)
        return grad, (0, *grad.stride())
    grad = x.new_empty(n_blocks_d, *x.shape, dtype=torch.float32)
    return grad, tuple(grad.stride())


def linear_attention_fused(q, k, v, *, eps: float = 1e-12, cu_seqlens=None, initial_state=None,
                           output_final_state: bool = False, chunk_size: int = 64,
                           segment_chunks: Optional[int] = None, block_d: Optional[int] = None,
                           num_warps: Optional[int] = None):
    """based_kernels.linear_attention on the Triton kernels (same contract; see naive.py).

    Tuning knobs: chunk_size (tokens per chunk), segment_chunks (chunks per segment; default sized to fill the GPU),
    block_d (value columns per program), num_warps.
    """
    _check_inputs(q, k, v, cu_seqlens, initial_state)
    s_init, z_init = initial_state if initial_state is not None else (None, None)
    tuning = dict(chunk=chunk_size, segment_chunks=segment_chunks, block_d=block_d, num_warps=num_warps)
    o, s_out, z_out = LinearAttentionFunction.apply(q, k, v, s_init, z_init, cu_seqlens, eps, output_final_state,
                                                    tuning)
    return (o, (s_out, z_out)) if output_final_state else o


def fused_supported(q: torch.Tensor) -> bool:
    return q.shape[-1] == FEATURE_DIM and q.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(q, k, v, cu_seqlens, initial_state):
    where = "based_kernels.linear_attention"
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{where}: expected q, k [B, T, H, F] and v [B, T, H, D] with equal B, T, H; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != FEATURE_DIM:
        raise ValueError(f"{where}: the fused kernels need feature dim {FEATURE_DIM}, got {q.shape[-1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{where}: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    _dot_types(q.dtype)
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            raise ValueError(f"{where}: cu_seqlens needs packed inputs with batch 1, got batch {q.shape[0]}")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.device != q.device:
            raise ValueError(f"{where}: cu_seqlens must be a 1-D int32 tensor on {q.device}, got "
                             f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)} on {cu_seqlens.device}")
    if initial_state is not None:
        n_seq = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
        h, d = q.shape[2], v.shape[3]
        s, z = initial_state
        if tuple(s.shape) != (n_seq, h, FEATURES, d) or tuple(z.shape) != (n_seq, h, FEATURES):
            raise ValueError(f"{where}: initial_state shapes {tuple(s.shape)}, {tuple(z.shape)}: expected "
                             f"[{n_seq}, {h}, {FEATURES}, {d}] and [{n_seq}, {h}, {FEATURES}]")




def linear_attention_step_fused(q, k, v, S, z, *, eps: float = 1e-12):
    """based_kernels.linear_attention_step on one Triton kernel: S, z (fp32) updated in place; returns o [B, H, D]."""
    b, h, f = q.shape
    d = v.shape[-1]
    if (k.shape != q.shape or v.shape[:2] != (b, h) or f != FEATURE_DIM or tuple(S.shape) != (b, h, FEATURES, d)
            or tuple(z.shape) != (b, h, FEATURES)):
        raise ValueError(f"linear_attention_step: expected q, k [B, H, {FEATURE_DIM}], v [B, H, D], "
                         f"S [B, H, {FEATURES}, D], z [B, H, {FEATURES}]; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, S {tuple(S.shape)}, z {tuple(z.shape)}")
    if S.dtype != torch.float32 or z.dtype != torch.float32:
        raise TypeError(f"linear_attention_step: the state must be float32, got S {S.dtype}, z {z.dtype}")
    o = torch.empty_like(v)
    _step_kernel[(b * h,)](
        q, k, v, S, z, o, *q.stride(), *k.stride(), *v.stride(), *S.stride(), *z.stride(), *o.stride(), h, d, eps,
        F=f, PHI1_SCALE=f ** -0.25, PHI2_SCALE=(2 * f) ** -0.5, BD=triton.next_power_of_2(d), num_warps=4)
    return o
