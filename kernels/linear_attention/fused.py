"""Autograd function and launchers of the fused chunked Taylor linear attention (kernels in triton_kernels.py)."""

import ctypes
import functools
import threading
from dataclasses import dataclass
from typing import Optional

import torch
import triton.language as tl

from .triton_kernels import (_bwd_delta_kernel, _bwd_grad_kernel, _chunk_state_kernel,
                             _fwd_output_kernel, _step_kernel)

FEATURE_DIM = 16          # q/k feature dim the kernels are built for (Based's); others use the reference
FEATURES = 1 + FEATURE_DIM + FEATURE_DIM * FEATURE_DIM             # public state rows (273)
PAIRS = FEATURE_DIM * (FEATURE_DIM - 1) // 2                       # off-diagonal pairs a != b (120)
COMPACT_FEATURES = 1 + 2 * FEATURE_DIM + PAIRS                     # state rows inside the kernels (153)
FEATURE_TABLE_ROWS = 256          # rows of the feature tables: covers the row blocks (<= 256 rows) the kernels take

try:        # Gluon (triton >= 3.5; written against 3.6, compiles with 3.9): without it every forward is two-level
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from . import gluon_kernels
except (ImportError, AttributeError):
    gluon_kernels = None


@dataclass(frozen=True)
class LaunchConfig:
    """Tiles, warps and pipeline stages of each kernel. Rows: state rows per product (the live [rows, *] tiles).
    The defaults were picked by bench/tune_linear_attention.py on the H200 (bench/notes_kernels.md, rounds 3, 5 and 6):
    small CTAs (2-4 warps) win, several per multiprocessor hide each other's latency."""
    chunk: int = 64           # tokens per chunk (quadratic inside)
    block_d: int = 64         # value columns per program of the output kernel (the gradient kernel takes all)
    state_rows: int = 64      # chunk scan: state tile of one program, rows ...
    state_d: int = 64         # ... and value columns
    state_warps: int = 4
    state_stages: int = 3
    segment_chunks: int = 0   # chunks per scan segment; 0: enough segments for SCAN_PROGRAMS_PER_SM (fixed length)
    out_rows: int = 64
    out_warps: int = 2
    out_stages: int = 4
    grad_rows: int = 16       # dq/dk/dv kernel
    grad_warps: int = 4
    grad_stages: int = 3
    state_regs: int = 168     # register cap per thread of each kernel (Triton's maxnreg); 0: the compiler's choice
                              # (the scans at 168: 3 CTAs per SM instead of 2, no spills; round 7)
    out_regs: int = 0
    grad_regs: int = 0
    hopper: bool = True           # the warp-specialised Gluon kernels (gluon_kernels: forward, reverse scan,
                                  # gradients) where they apply (_hopper_applies); False: always the two-level ones
    hopper_segment_chunks: int = 0    # chunks per program of the Hopper kernels; 0: hopper_segments' choice
    hopper_pdl: bool = True       # programmatic dependent launch of the Hopper kernels: each one's programs start
                                  # (and wait for the previous kernel) while the previous kernel drains
    hopper_totals: bool = True    # the segments' first pass of the Hopper path as gluon_kernels' first-pass kernel
                                  # (_hopper_totals) where it pays (hopper_totals_applies); False: always the
                                  # two-level scan's (_segment_totals)


SCAN_PROGRAMS_PER_SM = 6      # a scan segment per program ... until this many programs per multiprocessor

# Host side: a fused call issues 5-7 kernels, so its Python work is kept small (the launch plan of a shape is cached;
# bench/kernels.py's breakdown reports the host time per call next to the kernels' time).


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@functools.lru_cache
def _dot_types(dtype: torch.dtype) -> dict:
    """Operand dtypes and input precisions of the kernels' matrix products for inputs of ``dtype``.

    DOT_DT/PREC: products inside a chunk; STATE_DT/STATE_PREC: products with the state; SEL_DT/SEL_PREC: products
    of the feature-map gradient. fp32 inputs use exact fp32 products (tf32 would miss the 1e-4 accuracy target).
    fp16 inputs take the state and feature-gradient products in tf32: the state sums over the whole sequence and
    can leave fp16's range. bf16 inputs take every product in bf16 (the feature-gradient ones in bf16 instead of
    tf32: dq/dk 5% faster on the H200, dq's error vs fp64 3.3e-3 -> 3.5e-3; bench/notes_kernels.md, round 6).
    """
    if dtype == torch.float32:
        return dict(DOT_DT=tl.float32, STATE_DT=tl.float32, SEL_DT=tl.float32, PREC="ieee", STATE_PREC="ieee",
                    SEL_PREC="ieee")
    if dtype == torch.float16:
        return dict(DOT_DT=tl.float16, STATE_DT=tl.float32, SEL_DT=tl.float32, PREC="tf32", STATE_PREC="tf32",
                    SEL_PREC="tf32")
    if dtype == torch.bfloat16:
        return dict(DOT_DT=tl.bfloat16, STATE_DT=tl.bfloat16, SEL_DT=tl.bfloat16, PREC="tf32", STATE_PREC="tf32",
                    SEL_PREC="tf32")
    raise TypeError(f"linear_attention: fused kernels take float32, float16 or bfloat16 inputs, got {dtype}")


@functools.lru_cache
def _feature_constants(f: int) -> dict:
    return dict(F=f, M=COMPACT_FEATURES, PHI1_SCALE=f ** -0.25, PHI2_SCALE=(2 * f) ** -0.5)


def _pair_indices(device) -> tuple:
    """(a_p, b_p) of the 120 off-diagonal pairs in the kernels' row order (triton_kernels' docstring)."""
    p = torch.arange(PAIRS, device=device)
    a = p % FEATURE_DIM
    return a, (a + p // FEATURE_DIM + 1) % FEATURE_DIM


@functools.lru_cache
def feature_tables(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The factors of the kernels' compact feature rows, phi_m(x) = A_m(x) B_m(x) with A_m = scale_m x_{a_m} and
    B_m = x_{b_m} (triton_kernels' docstring), as the selections they load: [6, F * MP] in the input dtype, A of the
    q side, A of the k side and B ([F, MP]: A[f, m] = scale_m where f = a_m, B[f, m] = 1 where f = b_m; all zero
    for a row without that factor), then the three transposed ([MP, F])."""
    f, mp = FEATURE_DIM, FEATURE_TABLE_ROWS
    a = torch.full((mp,), -1)
    b = torch.full((mp,), -1)
    lin, diag, pair = slice(1, 1 + f), slice(1 + f, 1 + 2 * f), slice(1 + 2 * f, COMPACT_FEATURES)
    a[lin] = torch.arange(f)
    a[diag] = b[diag] = torch.arange(f)
    a[pair], b[pair] = _pair_indices("cpu")
    consts = _feature_constants(f)
    scale_q = torch.zeros(mp, dtype=torch.float64)
    scale_q[lin] = consts["PHI1_SCALE"]
    scale_q[diag] = scale_q[pair] = consts["PHI2_SCALE"] * 2 ** 0.5
    scale_k = scale_q.clone()
    scale_k[diag] = consts["PHI2_SCALE"] * 0.5 ** 0.5
    selects_a = (torch.arange(f)[:, None] == a[None, :]).double()
    a_q, a_k = selects_a * scale_q, selects_a * scale_k
    b_sel = (torch.arange(f)[:, None] == b[None, :]).double()
    tables = [a_q, a_k, b_sel]
    return torch.stack([t.flatten() for t in tables + [t.T for t in tables]]).to(device=device, dtype=dtype)


# The kernels' states are sums of phi_k(k) v^T (triton_kernels' docstring): their diagonal quadratic rows are the
# public ones times DIAGONAL_STATE_SCALE, and the gradients of those rows the public ones divided by it.
DIAGONAL_STATE_SCALE = 0.5 ** 0.5


def to_compact(x: torch.Tensor, gradient: bool = False) -> torch.Tensor:
    """Public state rows (273, dim -2 of S or -1 of z) -> kernel rows (153), phi_q(q).x unchanged for every q:
    the quadratic rows X[a*F+b] become diagonal X[a*F+a] * DIAGONAL_STATE_SCALE and pairs
    (X[a*F+b] + X[b*F+a]) / sqrt(2). With ``gradient``: the gradient of a public state (the final state's) ->
    the gradient of the kernels' state, the diagonal divided by DIAGONAL_STATE_SCALE instead.
    """
    z_like = x.dim() == 3
    rows = x if z_like else x.transpose(-1, -2)                 # [..., D, 273] or [N, H, 273]
    f = FEATURE_DIM
    a, b = _pair_indices(x.device)
    quad = rows[..., 1 + f:]
    diag = quad[..., torch.arange(f, device=x.device) * (f + 1)]
    diag = diag / DIAGONAL_STATE_SCALE if gradient else diag * DIAGONAL_STATE_SCALE
    pairs = (quad[..., a * f + b] + quad[..., b * f + a]) * 0.5 ** 0.5
    out = torch.cat([rows[..., :1 + f], diag, pairs], dim=-1)
    return (out if z_like else out.transpose(-1, -2)).float().contiguous()


def to_public(x: torch.Tensor, gradient: bool = False) -> torch.Tensor:
    """Kernel rows (153) -> public rows (273), the inverse of to_compact on the symmetric part (states out);
    with ``gradient``, of to_compact(gradient=True) (the initial state's gradient)."""
    z_like = x.dim() == 3
    rows = x if z_like else x.transpose(-1, -2)
    f = FEATURE_DIM
    a, b = _pair_indices(x.device)
    n_pairs = a.shape[0]
    quad = rows.new_zeros(*rows.shape[:-1], f * f)
    diag = rows[..., 1 + f:1 + 2 * f]
    diag = diag * DIAGONAL_STATE_SCALE if gradient else diag / DIAGONAL_STATE_SCALE
    quad[..., torch.arange(f, device=x.device) * (f + 1)] = diag
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


@functools.lru_cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


@functools.lru_cache
def launch_config(head_dim: int, device: torch.device, chunk: int = 64, block_d: Optional[int] = None,
                  num_warps: Optional[int] = None) -> LaunchConfig:
    """Default tiles. Off CUDA (Triton's interpreter) every kernel takes 64-row tiles: registers do not matter
    there, and fewer, larger tiles interpret faster."""
    block_d = block_d or min(64, max(16, _next_power_of_2(head_dim)))
    if device.type != "cuda":
        return LaunchConfig(chunk=chunk, block_d=block_d, state_d=block_d, grad_rows=64)
    tuned = dict(state_warps=2, state_stages=2, state_regs=0, grad_rows=32) if head_dim > 64 else {}  # at D = 112
    if num_warps is not None:
        tuned.update(state_warps=num_warps, out_warps=num_warps, grad_warps=num_warps)
    return LaunchConfig(chunk=chunk, block_d=block_d, state_d=block_d, **tuned)


@dataclass(frozen=True)
class ChunkLayout:
    """Where each sequence's chunks live in the per-chunk state tensors ([n_rows, H, M, D]), and the scan segments:
    chunk c of a sequence belongs to segment c // segment_chunks (packed documents: one segment each)."""
    n_rows: int                             # chunks of all sequences
    grid_chunks: int                        # grid axis 0 of the per-chunk kernels
    chunks_per_seq: int                     # NT (fixed-length batches; 0 when varlen)
    offsets: Optional[torch.Tensor]         # varlen: int32 [N + 1], first chunk row of each sequence
    indices: Optional[torch.Tensor]         # varlen: int32 [n_rows, 2], (sequence, chunk in sequence) per row
    segments: int = 1                       # scan segments per sequence
    segment_chunks: int = 2 ** 30


def chunk_layout(batch: int, seq_len: int, cu_seqlens: Optional[torch.Tensor], cfg: LaunchConfig, heads: int,
                 head_dim: int, device: torch.device) -> ChunkLayout:
    """Fixed-length batches: sequence n's chunk c is row n * NT + c; the scan is cut into segments until it has
    SCAN_PROGRAMS_PER_SM programs per multiprocessor (or into cfg.segment_chunks-chunk segments). Packed documents:
    rows follow the documents (one host sync to count them), one segment per document."""
    if cu_seqlens is None:
        return _fixed_length_layout(batch, seq_len, cfg, heads, head_dim, device)
    chunk = cfg.chunk
    n_chunks = (cu_seqlens[1:] - cu_seqlens[:-1] + chunk - 1) // chunk
    offsets = torch.cat([n_chunks.new_zeros(1), n_chunks.cumsum(0)]).to(torch.int32)
    n_rows = int(offsets[-1].item())
    seq = torch.repeat_interleave(torch.arange(n_chunks.shape[0], device=cu_seqlens.device), n_chunks)
    within = torch.arange(n_rows, device=cu_seqlens.device) - offsets[seq]
    indices = torch.stack([seq, within], 1).to(torch.int32).contiguous()
    return ChunkLayout(n_rows, n_rows, 0, offsets, indices)


@functools.lru_cache(maxsize=256)
def _fixed_length_layout(batch: int, seq_len: int, cfg: LaunchConfig, heads: int, head_dim: int,
                         device: torch.device) -> ChunkLayout:
    nt = _cdiv(seq_len, cfg.chunk)
    seg = cfg.segment_chunks
    if seg == 0:
        programs = _cdiv(COMPACT_FEATURES, cfg.state_rows) * _cdiv(head_dim, cfg.state_d) * batch * heads
        seg = _cdiv(nt, max(1, min(nt, SCAN_PROGRAMS_PER_SM * _multiprocessors(device) // programs)))
    seg = max(1, min(seg, nt))
    return ChunkLayout(batch * nt, nt, nt, None, None, _cdiv(nt, seg), seg)


def _packed_size(head_dim: int) -> int:
    """Row length of a packed fp32 state, S rows then z, padded to 16 elements (triton_kernels._packed)."""
    return _cdiv(COMPACT_FEATURES * (head_dim + 1), 16) * 16


def _pack(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """([..., M, D], [..., M]) -> [..., _packed_size(D)] fp32."""
    flat = torch.cat([s.flatten(-2), z], -1)
    return torch.nn.functional.pad(flat, (0, _packed_size(s.shape[-1]) - flat.shape[-1]))


def _unpack(x: torch.Tensor, head_dim: int) -> tuple:
    m = COMPACT_FEATURES
    return x[..., :m * head_dim].unflatten(-1, (m, head_dim)), x[..., m * head_dim:m * (head_dim + 1)]


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage of the per-chunk states: the operand dtype of the state products (see _dot_types)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


@dataclass
class ScanResult:
    """Per-chunk states from the scan (h [rows, H, M, D], hz [rows, H, M]: the whole state, initial state
    included) and the state at the scan's end (end: ([N, H, M, D], [N, H, M]) fp32, only when asked for)."""
    h: torch.Tensor
    hz: torch.Tensor
    end: Optional[tuple]


def _scan(x, y, inv_den, r, cfg: LaunchConfig, layout: ChunkLayout, cu_seqlens, n_seq: int, reverse: bool,
          boundary=None, want_end: bool = False) -> ScanResult:
    """Run the chunk scan, segments in parallel. One segment: one pass from the boundary. Several: a first pass
    stores each segment's total (from zero), and a second pass starts each segment from
    forward  P_s = S_0 + sum_{s' < s} total_s'    (boundary S_0: the initial state)
    reverse  P_s = dS_T + sum_{s' > s} total_s'   (boundary: the final state's gradient)
    (summed in the kernel) and stores h.

    Forward (reverse=False): x = k, y = v, h = state before each chunk. Backward: x = q, y = do (scaled by
    inv_den = 1 / (den + eps) in the kernel), weight r, h = gradient state after each chunk. S and z travel packed
    in one fp32 tensor (_pack).
    """
    B, T, H, F = x.shape
    D = y.shape[-1]
    nseg = layout.segments
    h = x.new_empty(layout.n_rows, H, COMPACT_FEATURES, D, dtype=_state_dtype(x.dtype))
    hz = x.new_empty(layout.n_rows, H, COMPACT_FEATURES, dtype=torch.float32)
    init = None if boundary is None else _pack(*boundary)
    if nseg == 1:
        ends = _new_totals(n_seq, layout, H, D, x.device) if want_end else None
        _scan_pass(x, y, inv_den, r, h, hz, init, ends, cfg, layout, cu_seqlens, n_seq, reverse, sum_totals=False,
                   store_h=True, store_end=want_end)
        return ScanResult(h, hz, _unpack(ends[:, 0], D) if want_end else None)
    ends = _segment_totals(x, y, inv_den, r, cfg, layout, cu_seqlens, n_seq, reverse, all_segments=want_end)
    _scan_pass(x, y, inv_den, r, h, hz, init, ends, cfg, layout, cu_seqlens, n_seq, reverse, sum_totals=True,
               store_h=True, store_end=False)
    end = None
    if want_end:
        total = ends.sum(1)
        end = _unpack(total if init is None else total + init, D)
    return ScanResult(h, hz, end)


def _new_totals(n_seq: int, layout: ChunkLayout, heads: int, head_dim: int, device: torch.device) -> torch.Tensor:
    """Packed fp32 states, one per (sequence, segment, head): [N, NSEG, H, _packed_size(D)]."""
    return torch.empty(n_seq, layout.segments, heads, _packed_size(head_dim), device=device, dtype=torch.float32)


def _segment_totals(x, y, inv_den, r, cfg: LaunchConfig, layout: ChunkLayout, cu_seqlens, n_seq: int,
                    reverse: bool, all_segments: bool = False) -> torch.Tensor:
    """The first pass of a segmented scan: each segment's total state from zero (_new_totals), except the one no
    second pass reads (forward: the last, reverse: the first; left unwritten) unless all_segments (the end state is
    their sum). Reverse without r, the totals' dz are zero (the Hopper reverse scan carries dz itself)."""
    ends = _new_totals(n_seq, layout, x.shape[2], y.shape[-1], x.device)
    _scan_pass(x, y, inv_den, r, None, None, None, ends, cfg, layout, cu_seqlens, n_seq, reverse, sum_totals=False,
               store_h=False, store_end=True, skip_unread=not all_segments)
    return ends


def _scan_pass(x, y, inv_den, r, h, hz, boundary, ends, cfg: LaunchConfig, layout: ChunkLayout, cu_seqlens,
               n_seq: int, reverse: bool, sum_totals: bool, store_h: bool, store_end: bool, skip_unread: bool = False):
    """One pass of _chunk_state_kernel over every segment (see _scan; skip_unread: _segment_totals')."""
    B, T, H, F = x.shape
    D = y.shape[-1]
    types = _dot_types(x.dtype)
    grid = (_cdiv(COMPACT_FEATURES, cfg.state_rows), _cdiv(D, cfg.state_d),
            n_seq * H * (layout.segments - skip_unread))
    _chunk_state_kernel[grid](
        x, y, _or_dummy(inv_den, x), _or_dummy(r, x), _or_dummy(h, x), _or_dummy(hz, x), _or_dummy(boundary, x),
        _or_dummy(ends, x), feature_tables(x.dtype, x.device), cu_seqlens, layout.offsets, *x.stride(), *y.stride(),
        T, H, layout.chunks_per_seq, layout.segments, layout.segment_chunks, D=D, F=F, M=COMPACT_FEATURES,
        MP=FEATURE_TABLE_ROWS, C=cfg.chunk, BR=cfg.state_rows, BD=cfg.state_d, IS_VARLEN=cu_seqlens is not None,
        REVERSE=reverse, HAS_INIT=boundary is not None, SUM_TOTALS=sum_totals, STORE_H=store_h, STORE_END=store_end,
        SUM_Z=not reverse or r is not None, SKIP_UNREAD=skip_unread, PREC=types["PREC"], STATE_DT=types["STATE_DT"],
        STATE_PREC=types["STATE_PREC"], num_warps=cfg.state_warps, num_stages=cfg.state_stages,
        maxnreg=cfg.state_regs or None)


def _output(q, k, v, scan: ScanResult, cfg: LaunchConfig, layout: ChunkLayout, cu_seqlens, eps):
    """o and inv_den = 1 / (den + eps) from the per-chunk states (the second level of the forward)."""
    B, T, H, F = q.shape
    D = v.shape[-1]
    o = torch.empty_like(v)
    inv_den = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    types = _dot_types(q.dtype)
    grid = (layout.grid_chunks, _cdiv(D, cfg.block_d), B * H)
    _fwd_output_kernel[grid](
        q, k, v, o, inv_den, scan.h, scan.hz, feature_tables(q.dtype, q.device), cu_seqlens, layout.indices,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), T, H, layout.chunks_per_seq, eps, D=D,
        **_feature_constants(F), MP=FEATURE_TABLE_ROWS, C=cfg.chunk, BR=cfg.out_rows, BD=cfg.block_d,
        IS_VARLEN=cu_seqlens is not None, DOT_DT=types["DOT_DT"],
        STATE_DT=types["STATE_DT"], PREC=types["PREC"], STATE_PREC=types["STATE_PREC"],
        num_warps=cfg.out_warps, num_stages=cfg.out_stages, maxnreg=cfg.out_regs or None)
    return o, inv_den


def _gradients(q, k, v, do, inv_den, r, h, hz, grad_scan: ScanResult, cfg: LaunchConfig, layout: ChunkLayout,
               cu_seqlens):
    """dq, dk, dv from the forward's and the reverse scan's per-chunk states (the second level of the backward)."""
    B, T, H, F = q.shape
    D = v.shape[-1]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _bwd_grad_kernel[(layout.grid_chunks, 1, B * H)](
        q, k, v, do, inv_den, r, h, hz, grad_scan.h, grad_scan.hz, dq, dk, dv, feature_tables(q.dtype, q.device),
        cu_seqlens, layout.indices, *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        *dk.stride(), *dv.stride(), T, H, layout.chunks_per_seq, D=D, **_feature_constants(F),
        MP=FEATURE_TABLE_ROWS, C=cfg.chunk, BR=cfg.grad_rows, DP=_next_power_of_2(D),
        IS_VARLEN=cu_seqlens is not None, **_dot_types(q.dtype), num_warps=cfg.grad_warps,
        num_stages=cfg.grad_stages, maxnreg=cfg.grad_regs or None)
    return dq, dk, dv


HOPPER_MAXNREG = 168                        # 12 warps (three partitions) at one program per multiprocessor
HOPPER_CHUNK = HOPPER_HEAD_DIM = HOPPER_ROW_BLOCK = 64    # gluon_kernels' CHUNK, HEAD_DIM and ROW_BLOCK
HOPPER_STATE_BOX = 256      # gluon_kernels.STATE_BOX: the row stride of the dz totals (aligned: vector loads)


def _hopper_applies(q, k, v, cu_seqlens, has_initial: bool, output_final_state: bool, cfg: LaunchConfig) -> bool:
    """The Gluon kernels cover bf16, head dim 64, 64-token chunks, fixed-length batches without a state in or
    out, on Hopper (sm_90: wgmma and TMA), for inputs the TMA can address (innermost stride 1, the others and the
    base 16-byte aligned): the forward, and the reverse scan and gradient kernels of its backward when do is
    addressable too; everything else takes the two-level kernels. (With their segments they were faster than the
    two-level ones at every batch shape measured: bench/notes_kernels.md, rounds 9 and 10.)"""
    return (gluon_kernels is not None and cfg.hopper and q.is_cuda and q.dtype == torch.bfloat16
            and q.shape[-1] == FEATURE_DIM and v.shape[-1] == HOPPER_HEAD_DIM and cfg.chunk == HOPPER_CHUNK
            and cu_seqlens is None and not has_initial and not output_final_state and _is_hopper(q.device)
            and all(_tma_addressable(x) for x in (q, k, v)))


@functools.lru_cache
def _is_hopper(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] == 9


def _tma_addressable(x: torch.Tensor) -> bool:
    return (x.stride(-1) == 1 and x.data_ptr() % 16 == 0
            and all(stride * x.element_size() % 16 == 0 for stride in x.stride()[:-1]))


class _BoundContexts(threading.local):
    devices: frozenset = frozenset()


_BOUND_CONTEXTS = _BoundContexts()


def _bind_primary_context(device: torch.device):
    """Make the device's primary CUDA context current on this thread, once per thread. Triton fills a launch's TMA
    descriptors before its launcher binds that context, so the first Gluon launch on a thread where no CUDA call has
    bound it yet (autograd's backward thread, when the backward starts with these kernels) fails with 'invalid
    device context'. (Driver API calls only: no stream work, safe during CUDA-graph capture.)"""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _BOUND_CONTEXTS.devices:
        return
    driver = _libcuda()
    context = ctypes.c_void_p()
    _check_cuda(driver.cuCtxGetCurrent(ctypes.byref(context)), "cuCtxGetCurrent")
    if not context.value:
        handle = ctypes.c_int()
        _check_cuda(driver.cuDeviceGet(ctypes.byref(handle), index), "cuDeviceGet")
        _check_cuda(driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle), "cuDevicePrimaryCtxRetain")
        _check_cuda(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    _BOUND_CONTEXTS.devices = _BOUND_CONTEXTS.devices | {index}


@functools.lru_cache
def _libcuda():
    return ctypes.CDLL("libcuda.so.1")


def _check_cuda(result: int, call: str):
    if result != 0:
        raise RuntimeError(f"linear_attention: {call} failed with CUDA driver error {result}")


def hopper_boxes(feature_dim: int, head_dim: int) -> dict:
    """The TMA boxes of gluon_kernels' descriptor arguments, by name: q, k, v, o, do, dq, dk, dv chunks of
    [B, T, H, X] and state row blocks of [chunks * H, 153, D]; with hopper_box_layout, what the Hopper launchers
    pass (and compile_report compiles)."""
    chunk = dict(q_desc=feature_dim, k_desc=feature_dim, v_desc=head_dim, o_desc=head_dim, do_desc=head_dim,
                 dq_desc=feature_dim, dk_desc=feature_dim, dv_desc=head_dim, x_desc=feature_dim, y_desc=head_dim)
    boxes = {name: [1, HOPPER_CHUNK, 1, width] for name, width in chunk.items()}
    return boxes | {"h_desc": [1, HOPPER_ROW_BLOCK, head_dim], "dh_desc": [1, HOPPER_ROW_BLOCK, head_dim]}


def hopper_box_layout(box: list):
    return gl.NVMMASharedLayout.get_default_for(box, gl.bfloat16)


def _hopper_descriptors(**tensors) -> list:
    """TMA descriptors of the named tensors (hopper_boxes' names), in the order given."""
    _bind_primary_context(next(iter(tensors.values())).device)
    boxes = hopper_boxes(FEATURE_DIM, HOPPER_HEAD_DIM)
    return [TensorDescriptor(x, list(x.shape), list(x.stride()), boxes[name], hopper_box_layout(boxes[name]))
            for name, x in tensors.items()]


def _hopper_layout(B: int, T: int, H: int, device: torch.device, cfg: LaunchConfig) -> ChunkLayout:
    """The Hopper kernels' chunk rows (as _fixed_length_layout's) and segments (hopper_segments)."""
    n_chunks = _cdiv(T, HOPPER_CHUNK)
    seg = hopper_segments(B * H, n_chunks, _multiprocessors(device), cfg.hopper_segment_chunks)
    return ChunkLayout(B * n_chunks, n_chunks, n_chunks, None, None, _cdiv(n_chunks, seg), seg)


@functools.lru_cache(maxsize=256)
def hopper_segments(programs: int, n_chunks: int, sms: int, segment_chunks: int = 0) -> int:
    """Chunks per program of the Hopper kernels for `programs` sequences x heads of n_chunks chunks (or
    segment_chunks when given): the segment length of the least time in chunk steps (~2.1 us each on the H200) at one
    program per multiprocessor, waves x segment length, plus with several segments the first pass that stores their
    totals (~5 steps + one per 3 x sms chunk rows) and the totals each program sums ((segments - 1) / 2 steps);
    fitted to the round 9 sweep (bench/notes_kernels.md). The longest segment on a tie."""
    if segment_chunks:
        return min(segment_chunks, n_chunks)

    def steps(seg):
        n_seg = _cdiv(n_chunks, seg)
        extra = 5 + programs * n_chunks / (3 * sms) + (n_seg - 1) / 2 if n_seg > 1 else 0
        return _cdiv(programs * n_seg, sms) * seg + extra

    candidates = {_cdiv(n_chunks, n_seg) for n_seg in range(1, min(n_chunks, 4 * _cdiv(sms, programs)) + 1)}
    return min(candidates, key=lambda seg: (steps(seg), -seg))


def _hopper_totals(x, y, inv_den, cfg: LaunchConfig, layout: ChunkLayout, reverse: bool) -> torch.Tensor:
    """_segment_totals' contract (without r) on gluon_kernels' first-pass kernel: each read segment's total
    (forward: x = k, y = v, all but the last; reverse: x = q, y = do weighted by inv_den, all but the first), packed
    fp32 [B, NSEG, H, _packed_size(D)], one program per read segment."""
    B, T, H, _ = x.shape
    D = y.shape[-1]
    ends = _new_totals(B, layout, H, D, x.device)
    w_desc = _weights_descriptor(inv_den.view(B * H, T) if reverse else _dummy_weights(x.device))
    gluon_kernels._hopper_totals_kernel[(B * H * (layout.segments - 1),)](
        *_hopper_descriptors(x_desc=x, y_desc=y), w_desc, ends, feature_tables(x.dtype, x.device), T, H,
        layout.chunks_per_seq, layout.segments, layout.segment_chunks, REVERSE=reverse, num_warps=4,
        maxnreg=HOPPER_MAXNREG, launch_pdl=cfg.hopper_pdl)
    return ends


HOPPER_WEIGHTS_BOX = [1, HOPPER_CHUNK]


def hopper_weights_layout():
    return gl.NVMMASharedLayout.get_default_for(HOPPER_WEIGHTS_BOX, gl.float32)


def _weights_descriptor(w: torch.Tensor):
    """TMA descriptor of fp32 [rows, T] weights (inv_den as [B * H, T]) with [1, chunk] boxes."""
    return TensorDescriptor(w, list(w.shape), list(w.stride()), HOPPER_WEIGHTS_BOX, hopper_weights_layout())


@functools.lru_cache
def _dummy_weights(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, HOPPER_CHUNK, device=device, dtype=torch.float32)


HOPPER_TOTALS_FILL = 2 / 3     # see hopper_totals_applies


def hopper_totals_applies(cfg: LaunchConfig, programs: int, sms: int, seq_len: int, reverse: bool) -> bool:
    """Whether the segments' first pass runs as _hopper_totals (one program per read segment, `programs` of them)
    rather than the two-level scan's (three row-block programs per segment): where cfg allows it, its programs fill
    at least HOPPER_TOTALS_FILL of the multiprocessors (with fewer the two-level pass is faster: fwd+bwd 0.595 against
    0.604 ms at T = 8192, B = 4, 64 programs on 132; 0.623 against 0.608 at T = 16384, B = 2, 96 programs;
    bench/notes_kernels.md round 13) and, in reverse, inv_den's [B * H, T] rows are TMA-addressable (T % 4 == 0)."""
    return cfg.hopper_totals and programs >= HOPPER_TOTALS_FILL * sms and (not reverse or seq_len % 4 == 0)


def _first_pass(x, y, inv_den, cfg: LaunchConfig, layout: ChunkLayout, reverse: bool) -> torch.Tensor:
    """The segments' totals for the Hopper forward (x = k, y = v) or reverse scan (x = q, y = do, inv_den), from
    _hopper_totals or the two-level scan's first pass (hopper_totals_applies)."""
    B, T, H, _ = x.shape
    if hopper_totals_applies(cfg, B * H * (layout.segments - 1), _multiprocessors(x.device), T, reverse):
        return _hopper_totals(x, y, inv_den, cfg, layout, reverse)
    return _segment_totals(x, y, inv_den, None, cfg, layout, None, B, reverse=reverse)


def _hopper_forward(q, k, v, eps, cfg: LaunchConfig):
    """o, inv_den and the per-chunk states (as _scan stores them) from gluon_kernels' fused forward; sequences cut
    into segments (hopper_segments) start from the sum of the earlier segments' totals (_first_pass)."""
    B, T, H, F = q.shape
    D = v.shape[-1]
    layout = _hopper_layout(B, T, H, q.device, cfg)
    ends = _first_pass(k, v, None, cfg, layout, reverse=False) if layout.segments > 1 else None
    o = torch.empty_like(v)                     # v's strides: TMA-addressable as v is
    inv_den = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    h = q.new_empty(layout.n_rows, H, COMPACT_FEATURES, D)
    hz = q.new_empty(layout.n_rows, H, COMPACT_FEATURES, dtype=torch.float32)
    descriptors = _hopper_descriptors(q_desc=q, k_desc=k, v_desc=v, h_desc=h.view(-1, COMPACT_FEATURES, D),
                                      o_desc=o)
    gluon_kernels._hopper_forward_kernel[(B * H * layout.segments,)](
        *descriptors, inv_den, hz, _or_dummy(ends, hz), feature_tables(q.dtype, q.device), T, H,
        layout.chunks_per_seq, layout.segments, layout.segment_chunks, eps, num_warps=4, maxnreg=HOPPER_MAXNREG,
        launch_pdl=cfg.hopper_pdl)
    return o, inv_den, ScanResult(h, hz, None)


def _hopper_reverse_scan(q, do, o, inv_den, cfg: LaunchConfig):
    """r and the backward's per-chunk states (as _scan stores them in reverse) from gluon_kernels' reverse scan,
    which computes r beside the scan. With several segments a first pass (_first_pass) stores the segments' dS
    totals (without r: dz feeds nothing in the scan), and dz is carried across segments afterwards: the scan stores
    each segment's dz total, the gradient kernel adds the later ones to dhz. Returns r, the states, the dz totals
    (or None)."""
    B, T, H, _ = q.shape
    D = do.shape[-1]
    layout = _hopper_layout(B, T, H, q.device, cfg)
    ends = dz_totals = None
    if layout.segments > 1:
        ends = _first_pass(q, do, inv_den, cfg, layout, reverse=True)
        dz_totals = torch.empty(B, layout.segments, H, HOPPER_STATE_BOX, device=q.device, dtype=torch.float32)
    r = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    dh = q.new_empty(layout.n_rows, H, COMPACT_FEATURES, D)
    dhz = q.new_empty(layout.n_rows, H, COMPACT_FEATURES, dtype=torch.float32)
    descriptors = _hopper_descriptors(q_desc=q, do_desc=do, o_desc=o, dh_desc=dh.view(-1, COMPACT_FEATURES, D))
    gluon_kernels._hopper_reverse_scan_kernel[(B * H * layout.segments,)](
        *descriptors, inv_den, r, dhz, _or_dummy(ends, dhz), _or_dummy(dz_totals, dhz),
        feature_tables(q.dtype, q.device), T, H, layout.chunks_per_seq, layout.segments, layout.segment_chunks,
        num_warps=4, maxnreg=HOPPER_MAXNREG, launch_pdl=cfg.hopper_pdl)
    return r, ScanResult(dh, dhz, None), dz_totals


def _hopper_gradients(q, k, v, do, inv_den, r, scan: ScanResult, grad_scan: ScanResult, dz_totals,
                      cfg: LaunchConfig):
    """dq, dk, dv from gluon_kernels' per-chunk gradient kernel (a persistent grid, one program per multiprocessor,
    over the B * H * NT chunks) and the two scans' states (_hopper_reverse_scan's, with its dz totals)."""
    B, T, H, _ = q.shape
    D = v.shape[-1]
    layout = _hopper_layout(B, T, H, q.device, cfg)
    n_tiles = B * H * layout.chunks_per_seq
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    descriptors = _hopper_descriptors(q_desc=q, k_desc=k, v_desc=v, do_desc=do,
                                      h_desc=scan.h.view(-1, COMPACT_FEATURES, D),
                                      dh_desc=grad_scan.h.view(-1, COMPACT_FEATURES, D), dq_desc=dq, dk_desc=dk,
                                      dv_desc=dv)
    gluon_kernels._hopper_grad_kernel[(min(n_tiles, _multiprocessors(q.device)),)](
        *descriptors, inv_den, r, scan.hz, grad_scan.hz, _or_dummy(dz_totals, r), feature_tables(q.dtype, q.device), T,
        H, layout.chunks_per_seq, layout.segments, layout.segment_chunks, n_tiles, num_warps=4, maxnreg=HOPPER_MAXNREG,
        launch_pdl=cfg.hopper_pdl)
    return dq, dk, dv


def _delta(o, do, inv_den):
    """r = -(do . o) * inv_den, fp32 [B, H, T]."""
    B, T, H, D = o.shape
    r = torch.empty(B, H, T, device=o.device, dtype=torch.float32)
    block_t = 32
    _bwd_delta_kernel[(_cdiv(T, block_t), B * H)](
        o, do, inv_den, r, *o.stride(), *do.stride(), T, H, D, BT=block_t, DP=_next_power_of_2(D), num_warps=4)
    return r


class LinearAttentionFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, s_init, z_init, cu_seqlens, eps, output_final_state, tuning):
        B, T, H, F = q.shape
        D = v.shape[-1]
        n_seq = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else B
        cfg = tuning if isinstance(tuning, LaunchConfig) else launch_config(D, q.device, **tuning)
        layout = chunk_layout(B, T, cu_seqlens, cfg, H, D, q.device)
        ctx.hopper = _hopper_applies(q, k, v, cu_seqlens, s_init is not None, output_final_state, cfg)
        if ctx.hopper:
            o, inv_den, scan = _hopper_forward(q, k, v, eps, cfg)
        else:
            initial = None if s_init is None else (to_compact(s_init), to_compact(z_init))
            scan = _scan(k, v, None, None, cfg, layout, cu_seqlens, n_seq, reverse=False, boundary=initial,
                         want_end=output_final_state)
            o, inv_den = _output(q, k, v, scan, cfg, layout, cu_seqlens, eps)

        ctx.save_for_backward(q, k, v, o, inv_den, scan.h, scan.hz, cu_seqlens)
        ctx.cfg, ctx.layout, ctx.n_seq, ctx.has_initial = cfg, layout, n_seq, s_init is not None
        s_out = z_out = None
        if output_final_state:
            s_out, z_out = to_public(scan.end[0]), to_public(scan.end[1])
            if s_init is not None:
                s_out, z_out = s_out + invisible_part(s_init), z_out + invisible_part(z_init)
        return o, s_out, z_out

    @staticmethod
    def backward(ctx, do, ds_final, dz_final):
        q, k, v, o, inv_den, h, hz, cu_seqlens = ctx.saved_tensors
        cfg, layout, n_seq = ctx.cfg, ctx.layout, ctx.n_seq
        B, T, H, F = q.shape
        D = v.shape[-1]

        final_grad = None
        if ds_final is not None or dz_final is not None:
            final_grad = (to_compact(_zeros_if_none(ds_final, (n_seq, H, FEATURES, D), q), gradient=True),
                          to_compact(_zeros_if_none(dz_final, (n_seq, H, FEATURES), q), gradient=True))
        if ctx.hopper and _tma_addressable(do):         # (a Hopper forward has no final state: final_grad is None)
            r, grad_scan, dz_totals = _hopper_reverse_scan(q, do, o, inv_den, cfg)
            dq, dk, dv = _hopper_gradients(q, k, v, do, inv_den, r, ScanResult(h, hz, None), grad_scan, dz_totals,
                                           cfg)
        else:
            r = _delta(o, do, inv_den)
            grad_scan = _scan(q, do, inv_den, r, cfg, layout, cu_seqlens, n_seq, reverse=True, boundary=final_grad,
                              want_end=ctx.has_initial)
            dq, dk, dv = _gradients(q, k, v, do, inv_den, r, h, hz, grad_scan, cfg, layout, cu_seqlens)

        ds_init = dz_init = None
        if ctx.has_initial:
            ds_init, dz_init = (to_public(x, gradient=True) for x in grad_scan.end)
            if final_grad is not None:
                ds_init = ds_init + invisible_part(_zeros_if_none(ds_final, ds_init.shape, q))
                dz_init = dz_init + invisible_part(_zeros_if_none(dz_final, dz_init.shape, q))
        return dq, dk, dv, ds_init, dz_init, None, None, None, None


def _or_dummy(x: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Kernel pointer argument for an optional tensor (an unused 1-element tensor when absent)."""
    return _dummy(like.device) if x is None else x


@functools.lru_cache
def _dummy(device: torch.device) -> torch.Tensor:
    return torch.empty(1, dtype=torch.float32, device=device)


def _zeros_if_none(x, shape, like):
    return like.new_zeros(shape, dtype=torch.float32) if x is None else x.float()


def linear_attention_fused(q, k, v, *, eps: float = 1e-12, cu_seqlens=None, initial_state=None,
                           output_final_state: bool = False, chunk_size: int = 64, block_d: Optional[int] = None,
                           num_warps: Optional[int] = None, config: Optional[LaunchConfig] = None):
    """based_kernels.linear_attention on the Triton kernels (same contract; see naive.py).

    Tuning knobs: chunk_size (tokens per chunk), block_d (value columns per program of the per-chunk kernels),
    num_warps; or a complete LaunchConfig (config) that replaces them.
    """
    _check_inputs(q, k, v, cu_seqlens, initial_state)
    s_init, z_init = initial_state if initial_state is not None else (None, None)
    tuning = config or dict(chunk=chunk_size, block_d=block_d, num_warps=num_warps)
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
        F=f, PHI1_SCALE=f ** -0.25, PHI2_SCALE=(2 * f) ** -0.5, BD=_next_power_of_2(d), num_warps=4)
    return o
