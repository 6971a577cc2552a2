"""Hopper kernels of the chunked Taylor linear attention, warp-specialised Gluon (sm_90: TMA, mbarriers, wgmma), for
bf16, head dim 64, fixed-length batches (fused.py decides when): the forward (the chunk scan and the output in one
kernel), the backward's reverse scan (with the delta r beside it), its per-chunk gradients, and the first pass that
stores the segments' totals when sequences are cut into segments.

Same compact feature map, selection tables and state layout as triton_kernels.py (its docstring). One program per
(sequence, head, segment) walks the segment's chunks of C = 64 tokens from the segment's starting state (zero, or
the sum of the earlier segments' totals that a first pass stored in `ends`); the state never leaves the chip on the
way to the outputs:
  update partition (4 warps)  S_j += phi_k_j(k)^T v, z_j += colsum phi_k_j  for row blocks j = 0, 1, 2 of 64 rows:
                              the state lives in its registers (fp32 wgmma accumulators); after each chunk it
                              publishes the state's bf16 copy and z into shared buffer n % 2, and stores that copy
                              (TMA) and z to HBM as h[n], hz[n], the states the backward reads
  output partition (default)  num = causal(1 + s/sqrt(F) + s^2/(2F)) v + sum_j phi_q_j(q) S_j,
                              den = rowsum(a) + sum_j phi_q_j . z_j, from the published copy of the state before the
                              chunk; writes o (through shared memory, TMA) and inv_den
  loader partition (1 warp)   TMA loads of the q, k, v chunks into a 2-deep ring
mbarriers: in_ready (the ring's bytes arrived), in_free (both consumers are done with a ring slot), st_ready (state
n is published), st_free (the output partition is done with a state buffer). The two chains run side by side, each
with its own register budget (the update partition's state takes 96 of its registers). Every store leaves by TMA
from shared memory except inv_den and hz: o stored from the wgmma layout by pointers cost 15% of the kernel.
h and hz are exactly what the two-level scan stores (the backward's per-chunk kernel is shared).

Row blocks: the 153 state rows are blocks 0..63, 64..127 and 128..152 (25 rows, all quadratic features). Where the
rows are a product's N or K (the output partition's phi_q S, every product of the gradient kernel, the first pass's
transposed last block) the last block runs at half width, rows 128..159, from its own [F, 32] tables
(_stage_last_rows, _last_factors); the scans' update partitions keep it as a 64-row accumulator (wgmma's M is 64:
holding it transposed, S_2^T [D, 32], staged phi_2 through shared memory and was slower, round 14 of
bench/notes_kernels.md).

The reverse scan (_hopper_reverse_scan_kernel) is the forward's update partition run backwards in time on
(q, do, r): one program per (sequence, head, segment), the segment's chunks last to first,
  update partition (default)  dS_j += (phi_q_j(q) inv_den)^T do, dz_j += phi_q_j(q)^T r, the state in registers,
                              published before each chunk to HBM (dh, dhz: the state after the chunk, TMA) from a
                              double-buffered shared copy
  delta partition (4 warps)   r = -(do . o) inv_den of the chunk, to HBM (the per-chunk kernel reads it) and, with
                              inv_den, into shared memory for the update partition
  loader partition (1 warp)   TMA loads of the q, do and o chunks into a 2-deep ring
so the delta kernel and the two-level reverse scan become one launch. dz feeds nothing inside the scan, so with
segments it is carried afterwards: every segment's dz starts from zero, its total goes to dz_totals, and the gradient
kernel adds the later segments' totals to dhz; the segments' first pass (dS totals only) then needs no r.

The gradient kernel (_hopper_grad_kernel) is triton_kernels._bwd_grad_kernel's math on a persistent grid (one
program per multiprocessor walks the chunks pid, pid + programs, ...), every chunk from the two scans' states:
  dq partition (4 warps)      dq = ds k + the product rule of phi(q).(S g + z r) on the factors of each row block
  dk/dv partition (default)   the transposed intra-chunk matrices (key on rows): dk = ds^T q + the product rule of
                              phi(k).(dS v + dz), dv = (a^T inv_den) do + sum_j phi_k_j(k) dS_j
  loader partition (1 warp)   TMA loads of q, k, v, do and the three row blocks of h and dh into a 2-deep ring; the
                              fp32 vectors (inv_den, r, hz, dhz plus the later segments' dz totals) loaded by the
                              warp a tile ahead
dq, dk and dv leave by TMA from shared memory.

The first pass (_hopper_totals_kernel) stores each read segment's total from zero (the forward's k, v; the reverse's
q, do weighted by inv_den), one program per segment, its three row blocks in three partitions on one TMA ring whose
loads the first partition issues; a chunk's features reach the state product through shared memory (an operand in
registers makes ptxas serialise the products). The last block holds rows 128..152 only, so it runs transposed at
half width (S^T = y^T phi, 32 rows). fused.hopper_totals_applies runs the kernel where its programs fill the GPU.

Each kernel is launched as a programmatic dependent launch (fused.LaunchConfig.hopper_pdl): its programs may start
while the previous kernel drains and wait for it before their first global access (_overlap_previous_kernel).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

# Names that changed after triton 3.6 (run on the H200) by 3.9 (compile-checked in CI): gl.thread_barrier -> gl.barrier,
# tma.async_copy_global_to_shared / _shared_to_global -> tma.async_load / async_store, and
# shared_memory_descriptor._reinterpret -> reinterpret
thread_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
PUBLIC_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))

# Shapes are module constants: worker partitions take no constexpr arguments.
CHUNK = gl.constexpr(64)
FEATURE_DIM = gl.constexpr(16)
HEAD_DIM = gl.constexpr(64)
STATE_ROWS = gl.constexpr(1 + 2 * 16 + 16 * 15 // 2)        # fused.COMPACT_FEATURES (153)
ROW_BLOCK = gl.constexpr(64)                                # state rows per accumulator (3 blocks cover 153)
TABLE_ROWS = gl.constexpr(256)                              # fused.FEATURE_TABLE_ROWS
STATE_BOX = gl.constexpr(256)                               # a state row's z in shared memory (a power of 2)
LINEAR = gl.constexpr(16 ** -0.5)                           # a = 1 + s LINEAR + s^2 QUADRATIC, s = q.k
QUADRATIC = gl.constexpr(1 / (2 * 16))
PACKED = gl.constexpr((STATE_ROWS * (HEAD_DIM + 1) + 15) // 16 * 16)   # a packed fp32 state in ends (fused._pack)
_WGMMA_LAYOUT = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
MMA = gl.constexpr(_WGMMA_LAYOUT)                                           # [64, 64] fp32 accumulators
DOT_A = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_WGMMA_LAYOUT, k_width=2))   # A from registers
_WGMMA_LAYOUT_F = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16])
MMA_F = gl.constexpr(_WGMMA_LAYOUT_F)                                      # [64, 16] fp32 accumulators (dq, dk)
DOT_A_F = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_WGMMA_LAYOUT_F, k_width=2))
ROWS = gl.constexpr(gl.SliceLayout(1, _WGMMA_LAYOUT))                        # a vector along an accumulator's rows
COLS = gl.constexpr(gl.SliceLayout(0, _WGMMA_LAYOUT))                        # ... and along its columns
SL_CF = gl.constexpr(gl.NVMMASharedLayout.get_default_for([64, 16], gl.bfloat16))   # shared tiles: [C, F] chunks,
SL_RF = SL_CF                                                                   # [BR, F] transposed tables,
SL_FR = gl.constexpr(gl.NVMMASharedLayout.get_default_for([16, 64], gl.bfloat16))   # [F, BR] tables,
SL_CD = gl.constexpr(gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16))   # [C, D] chunks, [BR, D] states
SL_VEC = gl.constexpr(gl.SwizzledSharedLayout(1, 1, 1, [0]))                    # vectors
UPDATE_REGS = gl.constexpr(240)       # setmaxnreg budgets; the default partition gets the rest of the kernel's
LOADER_REGS = gl.constexpr(24)        # cap (fused.HOPPER_MAXNREG: 12 warps, one program per multiprocessor)
DELTA_REGS = gl.constexpr(96)
GRAD_DQ_REGS = gl.constexpr(192)      # the gradient kernel: dk/dv partition (default) 256, dq 192, loader 56
GRAD_LOADER_REGS = gl.constexpr(56)
LAST_ROWS = gl.constexpr(32)          # the last row block at half width: rows 128..159 (25 exist)
_WGMMA_LAYOUT_L = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 32, 16])
MMA_L = gl.constexpr(_WGMMA_LAYOUT_L)                                      # [64, 32] fp32 accumulators
ROWS_L = gl.constexpr(gl.SliceLayout(1, _WGMMA_LAYOUT_L))                    # ... their rows
COLS_L = gl.constexpr(gl.SliceLayout(0, _WGMMA_LAYOUT_L))                    # ... their columns
SL_FL = gl.constexpr(gl.NVMMASharedLayout.get_default_for([16, 32], gl.bfloat16))   # [F, 32] tables
SL_CL = gl.constexpr(gl.NVMMASharedLayout.get_default_for([64, 32], gl.bfloat16))   # [C, 32] features
TOTALS_RING = gl.constexpr(6)         # the first pass: TMA ring depth; its three row-block partitions at the kernel's
TOTALS_REGS = gl.constexpr(168)       # cap (12 warps, no loader warp)


@gluon.jit
def _as_box(buf, shape: gl.constexpr, dtype: gl.constexpr = gl.bfloat16):
    """A shared buffer viewed as a TMA box of shape (leading unit dims added; same bytes and swizzle)."""
    layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for(shape, dtype)
    if PUBLIC_REINTERPRET:
        box = buf.reinterpret(dtype, shape, layout)
    else:
        box = buf._reinterpret(dtype, shape, layout)
    return box


@gluon.jit
def _overlap_previous_kernel():
    """Programmatic dependent launch (fused.py launches these kernels with launch_pdl): the next kernel's programs
    may start now (they wait in their own call of this), and this one waits until the previous kernel has finished
    and its writes are visible; every global load and store of the kernel comes after."""
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents;\n\tgriddepcontrol.wait; // $0", "=r", [],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _program_segment(H, NT, NSEG, SEG):
    """(sequence, head, segment) of this program, the segment's first chunk and its number of chunks."""
    i_p = gl.program_id(0)
    i_s = i_p % NSEG
    first = i_s * SEG
    return i_p // NSEG // H, i_p // NSEG % H, i_s, first, gl.minimum(NT - first, SEG)


@gluon.jit
def _handshake(consumers: gl.constexpr):
    """mbarriers of a 2-slot buffer: ready[i] (one arrival: the producer's, or the TMA's bytes) and free[i]
    (`consumers` arrivals)."""
    ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(free.index(i), count=consumers)
    return ready, free


@gluon.jit
def _stage_table(sel, table: gl.constexpr, dst, transposed: gl.constexpr):
    """Selection table `table` of fused.feature_tables (A_q, A_k, B, then the three transposed) into dst, its first
    row blocks of [F, BR] ([BR, F] when transposed), as many as dst holds (three, or two where the last block runs
    at half width from _stage_last_rows' copy)."""
    F: gl.constexpr = FEATURE_DIM
    BR: gl.constexpr = ROW_BLOCK
    MP: gl.constexpr = TABLE_ROWS
    NBLOCKS: gl.constexpr = dst.shape[0]
    if transposed:
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
        m = gl.arange(0, BR, layout=gl.SliceLayout(1, ld))
        f = gl.arange(0, F, layout=gl.SliceLayout(0, ld))
        for j in gl.static_range(NBLOCKS):
            dst.index(j).store(gl.load(sel + table * F * MP + (j * BR + gl.expand_dims(m, 1)) * F
                                       + gl.expand_dims(f, 0)))
    else:
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        f = gl.arange(0, F, layout=gl.SliceLayout(1, ld))
        m = gl.arange(0, BR, layout=gl.SliceLayout(0, ld))
        for j in gl.static_range(NBLOCKS):
            dst.index(j).store(gl.load(sel + table * F * MP + gl.expand_dims(f, 1) * MP + j * BR
                                       + gl.expand_dims(m, 0)))


@gluon.jit
def _features_t(at_s, bt_s, xt, j: gl.constexpr, like):
    """phi_j(x)^T [rows, tokens] of row block j: (A_j^T x^T + ca) * (B_j^T x^T + cb), two selection products from
    the transposed tables at_s, bt_s and x^T [F, C] in shared memory (like: a [64, 64] zero accumulator)."""
    ca, cb = _row_constants(j * ROW_BLOCK + gl.arange(0, ROW_BLOCK, layout=ROWS), 1, like)
    xa = warpgroup_mma(at_s.index(j), xt, ca, is_async=True)
    xb = warpgroup_mma(bt_s.index(j), xt, cb, is_async=True)
    xa, xb = warpgroup_mma_wait(0, deps=[xa, xb])
    return xa * xb


@gluon.jit
def _factors(x_s, a_s, b_s, j: gl.constexpr, like):
    """(x A_j + ca, x B_j + cb) [tokens, rows] of row block j, from x [C, F] in shared memory: phi_j(x) is their
    product."""
    ca, cb = _row_constants(j * ROW_BLOCK + gl.arange(0, ROW_BLOCK, layout=COLS), 0, like)
    xa = warpgroup_mma(x_s, a_s.index(j), ca, is_async=True)
    xb = warpgroup_mma(x_s, b_s.index(j), cb, is_async=True)
    return warpgroup_mma_wait(0, deps=[xa, xb])


@gluon.jit
def _features(x_s, a_s, b_s, j: gl.constexpr, like):
    """phi_j(x) [tokens, rows] of row block j: (x A_j + ca) * (x B_j + cb), from x [C, F] in shared memory."""
    xa, xb = _factors(x_s, a_s, b_s, j, like)
    return xa * xb


@gluon.jit
def _row_constants(m, dim: gl.constexpr, like):
    """The constant factors of feature rows m (triton_kernels._row_constants) as [64, 64] accumulators, broadcast
    along dim: the selection products start from them."""
    ca = gl.expand_dims((m == 0).to(gl.float32), dim) + like
    cb = gl.expand_dims((m <= FEATURE_DIM).to(gl.float32), dim) + like
    return ca, cb


@gluon.jit
def _loader_partition(q_desc, k_desc, v_desc, h_desc, q_ring, k_ring, v_ring, s_buf, z_buf, akt_s, bt_s, in_ready,
                      in_free, st_ready, st_free, hz, ends, i_b, i_h, i_s, H, T, NT, NSEG, first, n):
    """TMA loads of the segment's chunk c (chunk first + c of the sequence) into ring slot c % 2 once both
    consumers are done with it. (Worker partitions share one signature, hence the update partition's arguments.)"""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    for c in range(n):
        b = c % 2
        mbarrier.wait(in_free.index(b), ((c // 2) & 1) ^ 1)
        bar = in_ready.index(b)
        mbarrier.expect(bar, C * (2 * F + D) * 2)
        t0 = (first + c) * C
        tma_load(q_desc, [i_b, t0, i_h, 0], bar, _as_box(q_ring.index(b), [1, C, 1, F]))
        tma_load(k_desc, [i_b, t0, i_h, 0], bar, _as_box(k_ring.index(b), [1, C, 1, F]))
        tma_load(v_desc, [i_b, t0, i_h, 0], bar, _as_box(v_ring.index(b), [1, C, 1, D]))


@gluon.jit
def _publish(n, s0, s1, s2, z0, z1, z2, s_buf, z_buf, st_ready, st_free, h_desc, hz, i_b, i_h, H, NT, first):
    """State n of the segment (before its chunk n): bf16 copy into s_buf[n % 2], z into z_buf[n % 2]; that copy to
    h (TMA) and z to hz, at the row of chunk first + n."""
    b = n % 2
    mbarrier.wait(st_free.index(b), ((n // 2) & 1) ^ 1)
    _stage_state(b, s0, s1, s2, s_buf)
    z_buf.index(b * 3 + 0).store(z0)
    z_buf.index(b * 3 + 1).store(z1)
    z_buf.index(b * 3 + 2).store(z2)
    fence_async_shared()
    mbarrier.arrive(st_ready.index(b), count=1)
    _store_state(b, z0, z1, z2, s_buf, h_desc, hz, (i_b * NT + first + n) * H + i_h)


@gluon.jit
def _stage_state(b, s0, s1, s2, s_buf):
    """The state's bf16 copy into shared buffer b (3 row blocks), once the TMA has read what was there."""
    tma.store_wait(3)                       # the stores from this buffer, two states ago, have read it
    s_buf.index(b * 3 + 0).store(s0.to(gl.bfloat16))
    s_buf.index(b * 3 + 1).store(s1.to(gl.bfloat16))
    s_buf.index(b * 3 + 2).store(s2.to(gl.bfloat16))


@gluon.jit
def _store_state(b, z0, z1, z2, s_buf, h_desc, hz, row):
    """Shared buffer b (fenced) to state row `row` of h by TMA, z to hz."""
    for j in gl.static_range(3):
        tma_store(h_desc, [row, j * ROW_BLOCK, 0], _as_box(s_buf.index(b * 3 + j), [1, ROW_BLOCK, HEAD_DIM]))
    _store_rows(hz + row * STATE_ROWS, z0, z1, z2, STATE_ROWS)


@gluon.jit
def _store_rows(ptr, z0, z1, z2, n: gl.constexpr):
    """The three row blocks of a z-like vector to its first n fp32 elements at ptr (n: 153, or all 192 rows, the
    padding rows' zeros included)."""
    m = gl.arange(0, ROW_BLOCK, layout=ROWS)
    gl.store(ptr + m, z0)
    gl.store(ptr + ROW_BLOCK + m, z1)
    gl.store(ptr + 2 * ROW_BLOCK + m, z2, mask=2 * ROW_BLOCK + m < n)


@gluon.jit
def _total_rows(total, j: gl.constexpr):
    """Row block j of one packed fp32 total (S rows, then z; zeros past row 153)."""
    m = j * ROW_BLOCK + gl.arange(0, ROW_BLOCK, layout=ROWS)
    s_offs = gl.expand_dims(m, 1) * HEAD_DIM + gl.expand_dims(gl.arange(0, HEAD_DIM, layout=COLS), 0)
    return (gl.load(total + s_offs, mask=gl.expand_dims(m < STATE_ROWS, 1), other=0.0),
            gl.load(total + STATE_ROWS * HEAD_DIM + m, mask=m < STATE_ROWS, other=0.0))


@gluon.jit
def _segment_start(ends, i_b, i_h, lo, hi, H, NSEG):
    """A segment's starting state, its three row blocks (S_j, z_j): the sum of the totals of segments lo .. hi - 1
    (packed fp32 rows of ends [B, NSEG, H, PACKED]): the earlier ones forward, the later ones in reverse. A total's
    six loads are issued together (one memory round trip per total on the last segment's critical path)."""
    s0 = gl.zeros([ROW_BLOCK, HEAD_DIM], gl.float32, MMA)
    s1 = gl.zeros([ROW_BLOCK, HEAD_DIM], gl.float32, MMA)
    s2 = gl.zeros([ROW_BLOCK, HEAD_DIM], gl.float32, MMA)
    z0 = gl.zeros([ROW_BLOCK], gl.float32, ROWS)
    z1 = gl.zeros([ROW_BLOCK], gl.float32, ROWS)
    z2 = gl.zeros([ROW_BLOCK], gl.float32, ROWS)
    for p in range(lo, hi):
        total = ends + ((i_b * NSEG + p) * H + i_h).to(gl.int64) * PACKED
        t0, u0 = _total_rows(total, 0)
        t1, u1 = _total_rows(total, 1)
        t2, u2 = _total_rows(total, 2)
        s0 += t0
        s1 += t1
        s2 += t2
        z0 += u0
        z1 += u1
        z2 += u2
    return s0, s1, s2, z0, z1, z2


@gluon.jit
def _update_partition(q_desc, k_desc, v_desc, h_desc, q_ring, k_ring, v_ring, s_buf, z_buf, akt_s, bt_s, in_ready,
                      in_free, st_ready, st_free, hz, ends, i_b, i_h, i_s, H, T, NT, NSEG, first, n):
    """The state in registers, from the segment's start, S_j += phi_k_j^T v per chunk, published before the first
    chunk and after each but the last (_publish)."""
    C: gl.constexpr = CHUNK
    zero_cc = gl.zeros([C, C], gl.float32, MMA)
    s0, s1, s2, z0, z1, z2 = _segment_start(ends, i_b, i_h, 0, i_s, H, NSEG)
    t_cols = gl.arange(0, C, layout=COLS)
    _publish(0, s0, s1, s2, z0, z1, z2, s_buf, z_buf, st_ready, st_free, h_desc, hz, i_b, i_h, H, NT, first)
    for c in range(n):
        b = c % 2
        mbarrier.wait(in_ready.index(b), (c // 2) & 1)
        kt = k_ring.index(b).permute((1, 0))                                          # k^T [F, C]
        v_s = v_ring.index(b)
        valid = gl.expand_dims((first + c) * C + t_cols < T, 0)
        for j in gl.static_range(3):
            phi_t = gl.where(valid, _features_t(akt_s, bt_s, kt, j, zero_cc), 0.0)      # phi_k_j^T
            phi_op = gl.convert_layout(phi_t.to(gl.bfloat16), DOT_A)
            if j == 0:
                z0 += gl.sum(phi_t, 1)
                s0 = warpgroup_mma(phi_op, v_s, s0)
            elif j == 1:
                z1 += gl.sum(phi_t, 1)
                s1 = warpgroup_mma(phi_op, v_s, s1)
            else:
                z2 += gl.sum(phi_t, 1)
                s2 = warpgroup_mma(phi_op, v_s, s2)
        mbarrier.arrive(in_free.index(b), count=1)
        if c + 1 < n:
            _publish(c + 1, s0, s1, s2, z0, z1, z2, s_buf, z_buf, st_ready, st_free, h_desc, hz, i_b, i_h, H, NT,
                     first)
    tma.store_wait(0)


@gluon.jit
def _output_partition(q_ring, k_ring, v_ring, s_buf, z_buf, o_buf, aq_s, b_s, aq2_s, b2_s, in_ready, in_free,
                      st_ready, st_free, o_desc, inv_den, i_b, i_h, H, T, first, n, eps):
    """o and inv_den of each chunk from the published state before it."""
    C: gl.constexpr = CHUNK
    D: gl.constexpr = HEAD_DIM
    zero_cc = gl.zeros([C, C], gl.float32, MMA)
    zero_cd = gl.zeros([C, D], gl.float32, MMA)
    t_rows = gl.arange(0, C, layout=ROWS)
    t_cols = gl.arange(0, C, layout=COLS)
    causal = gl.expand_dims(t_rows, 1) >= gl.expand_dims(t_cols, 0)
    for c in range(n):
        b = c % 2
        mbarrier.wait(in_ready.index(b), (c // 2) & 1)
        mbarrier.wait(st_ready.index(b), (c // 2) & 1)
        q_s = q_ring.index(b)
        v_s = v_ring.index(b)
        s = warpgroup_mma(q_s, k_ring.index(b).permute((1, 0)), zero_cc)
        a = gl.where(causal, 1.0 + s * LINEAR + s * s * QUADRATIC, 0.0)
        den = gl.sum(a, 1)
        num = warpgroup_mma(gl.convert_layout(a.to(gl.bfloat16), DOT_A), v_s, zero_cd)
        for j in gl.static_range(2):
            phi = _features(q_s, aq_s, b_s, j, zero_cc)
            den += gl.sum(phi * gl.expand_dims(z_buf.index(b * 3 + j).load(COLS), 0), 1)
            num = warpgroup_mma(gl.convert_layout(phi.to(gl.bfloat16), DOT_A), s_buf.index(b * 3 + j), num)
        qa, qb = _last_factors(q_s, aq2_s, b2_s)                          # the last block at half width
        phi = qa * qb
        z2 = z_buf.index(b * 3 + 2).slice(0, LAST_ROWS).load(COLS_L)
        den += gl.convert_layout(gl.sum(phi * gl.expand_dims(z2, 0), 1), ROWS)
        num = warpgroup_mma(gl.convert_layout(phi.to(gl.bfloat16), DOT_A), s_buf.index(b * 3 + 2).slice(0, LAST_ROWS),
                            num)
        mbarrier.arrive(in_free.index(b), count=1)
        mbarrier.arrive(st_free.index(b), count=1)
        w = 1.0 / (den + eps)
        t0 = (first + c) * C
        t = t0 + t_rows
        tma.store_wait(0)                          # the previous chunk's o store has read o_buf
        o_buf.store((num * gl.expand_dims(w, 1)).to(gl.bfloat16))
        fence_async_shared()
        tma_store(o_desc, [i_b, t0, i_h, 0], _as_box(o_buf, [1, C, 1, D]))          # rows past T are clipped
        gl.store(inv_den + (i_b * H + i_h) * T + t, w, mask=t < T)
    tma.store_wait(0)


@gluon.jit
def _hopper_forward_kernel(q_desc, k_desc, v_desc, h_desc, o_desc, inv_den, hz, ends, sel, T, H, NT, NSEG, SEG, eps):
    """o, inv_den, h and hz of one (sequence, head, segment of SEG chunks). q, k, v, o: TMA descriptors of
    [B, T, H, X] with [1, C, 1, X] boxes (loads read zeros past T, stores are clipped there); h: of
    [B * NT * H, 153, 64] with [1, 64, 64] boxes (clipped at row 153); ends: the segments' totals (NSEG > 1)."""
    i_b, i_h, i_s, first, n = _program_segment(H, NT, NSEG, SEG)
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    BR: gl.constexpr = ROW_BLOCK
    q_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, F], SL_CF)
    k_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, F], SL_CF)
    v_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, D], SL_CD)
    s_buf = gl.allocate_shared_memory(gl.bfloat16, [6, BR, D], SL_CD)                 # 2 states x 3 row blocks
    o_buf = gl.allocate_shared_memory(gl.bfloat16, [C, D], SL_CD)
    z_buf = gl.allocate_shared_memory(gl.float32, [6, BR], SL_VEC)
    aq_s = gl.allocate_shared_memory(gl.bfloat16, [2, F, BR], SL_FR)                   # selections, q side
    b_s = gl.allocate_shared_memory(gl.bfloat16, [2, F, BR], SL_FR)
    akt_s = gl.allocate_shared_memory(gl.bfloat16, [3, BR, F], SL_RF)                  # transposed, k side
    bt_s = gl.allocate_shared_memory(gl.bfloat16, [3, BR, F], SL_RF)
    aq2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)             # rows 128..159 of them
    b2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)
    in_ready, in_free = _handshake(2)                 # the TMA ring: the update and output partitions consume
    st_ready, st_free = _handshake(1)                 # the published states: the output partition consumes
    _stage_table(sel, 0, aq_s, False)
    _stage_table(sel, 2, b_s, False)
    _stage_table(sel, 4, akt_s, True)
    _stage_table(sel, 5, bt_s, True)
    _stage_last_rows(sel, 0, aq2_s)
    _stage_last_rows(sel, 2, b2_s)
    fence_async_shared()
    thread_barrier()
    _overlap_previous_kernel()
    worker_args = (q_desc, k_desc, v_desc, h_desc, q_ring, k_ring, v_ring, s_buf, z_buf, akt_s, bt_s, in_ready, in_free,
                   st_ready, st_free, hz, ends, i_b, i_h, i_s, H, T, NT, NSEG, first, n)
    gl.warp_specialize([
        (_output_partition, (q_ring, k_ring, v_ring, s_buf, z_buf, o_buf, aq_s, b_s, aq2_s, b2_s, in_ready, in_free,
                             st_ready, st_free, o_desc, inv_den, i_b, i_h, H, T, first, n, eps)),
        (_update_partition, worker_args),
        (_loader_partition, worker_args),
    ], [4, 1], [UPDATE_REGS, LOADER_REGS])


@gluon.jit
def _rev_loader_partition(q_desc, do_desc, o_desc, q_ring, do_ring, o_ring, r_buf, w_buf, in_ready, in_free,
                          r_ready, r_free, inv_den, r, i_b, i_h, H, T, first, n):
    """TMA loads of the segment's chunk first + n - 1 - c (last to first) into ring slot c % 2: q, do and o.
    (Worker partitions share one signature.)"""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    for c in range(n):
        b = c % 2
        mbarrier.wait(in_free.index(b), ((c // 2) & 1) ^ 1)
        bar = in_ready.index(b)
        t0 = (first + n - 1 - c) * C
        mbarrier.expect(bar, C * (F + 2 * D) * 2)
        tma_load(o_desc, [i_b, t0, i_h, 0], bar, _as_box(o_ring.index(b), [1, C, 1, D]))
        tma_load(q_desc, [i_b, t0, i_h, 0], bar, _as_box(q_ring.index(b), [1, C, 1, F]))
        tma_load(do_desc, [i_b, t0, i_h, 0], bar, _as_box(do_ring.index(b), [1, C, 1, D]))


@gluon.jit
def _delta_partition(q_desc, do_desc, o_desc, q_ring, do_ring, o_ring, r_buf, w_buf, in_ready, in_free, r_ready,
                     r_free, inv_den, r, i_b, i_h, H, T, first, n):
    """r = -(do . o) * inv_den of each chunk (to HBM); r and inv_den into r_buf / w_buf[c % 2]."""
    C: gl.constexpr = CHUNK
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])              # [C, D] tiles
    t_rows = gl.arange(0, C, layout=gl.SliceLayout(1, ld))
    for c in range(n):
        b = c % 2
        t = (first + n - 1 - c) * C + t_rows
        idx = (i_b * H + i_h) * T + t
        w = gl.load(inv_den + idx, mask=t < T, other=0.0)
        mbarrier.wait(in_ready.index(b), (c // 2) & 1)
        dov = do_ring.index(b).load(ld).to(gl.float32)
        ov = o_ring.index(b).load(ld).to(gl.float32)
        rv = -gl.sum(dov * ov, 1) * w
        gl.store(r + idx, rv, mask=t < T)
        mbarrier.arrive(in_free.index(b), count=1)
        mbarrier.wait(r_free.index(b), ((c // 2) & 1) ^ 1)
        r_buf.index(b).store(rv)
        w_buf.index(b).store(w)
        mbarrier.arrive(r_ready.index(b), count=1)


@gluon.jit
def _rev_update_partition(q_ring, do_ring, s_buf, r_buf, w_buf, aqt_s, bt_s, in_ready, in_free, r_ready, r_free,
                          dh_desc, dhz, ends, dz_totals, i_b, i_h, i_s, H, NT, NSEG, first, n):
    """dS in registers from the later segments' totals, dz from zero; before each chunk (last to first) published
    as the state after it, then dS_j += (phi_q_j^T * inv_den) do, dz_j += phi_q_j^T r. With segments, the
    segment's dz total goes to dz_totals: the gradient kernel adds the later segments' to dhz (dz feeds nothing
    here, so the first pass needs no r)."""
    C: gl.constexpr = CHUNK
    zero_cc = gl.zeros([C, C], gl.float32, MMA)
    s0, s1, s2, z0, z1, z2 = _segment_start(ends, i_b, i_h, i_s + 1, NSEG, H, NSEG)
    z0 = gl.zeros([ROW_BLOCK], gl.float32, ROWS)          # dz from zero (the docstring)
    z1 = gl.zeros([ROW_BLOCK], gl.float32, ROWS)
    z2 = gl.zeros([ROW_BLOCK], gl.float32, ROWS)
    for c in range(n):
        b = c % 2
        g = first + n - 1 - c
        _stage_state(b, s0, s1, s2, s_buf)
        fence_async_shared()
        _store_state(b, z0, z1, z2, s_buf, dh_desc, dhz, (i_b * NT + g) * H + i_h)
        mbarrier.wait(in_ready.index(b), (c // 2) & 1)
        mbarrier.wait(r_ready.index(b), (c // 2) & 1)
        qt = q_ring.index(b).permute((1, 0))                                          # q^T [F, C]
        do_s = do_ring.index(b)
        w = gl.expand_dims(w_buf.index(b).load(COLS), 0)                              # 0 past T
        rr = gl.expand_dims(r_buf.index(b).load(COLS), 0)
        for j in gl.static_range(3):
            phi_t = _features_t(aqt_s, bt_s, qt, j, zero_cc)                             # phi_q_j^T
            phi_op = gl.convert_layout((phi_t * w).to(gl.bfloat16), DOT_A)
            if j == 0:
                z0 += gl.sum(phi_t * rr, 1)
                s0 = warpgroup_mma(phi_op, do_s, s0)
            elif j == 1:
                z1 += gl.sum(phi_t * rr, 1)
                s1 = warpgroup_mma(phi_op, do_s, s1)
            else:
                z2 += gl.sum(phi_t * rr, 1)
                s2 = warpgroup_mma(phi_op, do_s, s2)
        mbarrier.arrive(in_free.index(b), count=1)
        mbarrier.arrive(r_free.index(b), count=1)
    if NSEG > 1:
        _store_rows(dz_totals + ((i_b * NSEG + i_s) * H + i_h) * STATE_BOX, z0, z1, z2, 3 * ROW_BLOCK)
    tma.store_wait(0)


@gluon.jit
def _hopper_reverse_scan_kernel(q_desc, do_desc, o_desc, dh_desc, inv_den, r, dhz, ends, dz_totals, sel, T, H, NT,
                                NSEG, SEG):
    """dh, dhz (the reverse-time state after each chunk, as the two-level reverse scan stores them, except that
    with segments dhz leaves out the later segments' dz) and r of one (sequence, head, segment of SEG chunks). q,
    do, o: TMA descriptors of [B, T, H, X] with [1, C, 1, X] boxes; dh: of [B * NT * H, 153, 64] with [1, 64, 64]
    boxes; ends: the segments' dS totals (NSEG > 1, stored by a first pass); dz_totals: fp32
    [B, NSEG, H, 153], each segment's dz total (NSEG > 1)."""
    i_b, i_h, i_s, first, n = _program_segment(H, NT, NSEG, SEG)
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    BR: gl.constexpr = ROW_BLOCK
    q_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, F], SL_CF)
    do_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, D], SL_CD)
    o_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, D], SL_CD)
    s_buf = gl.allocate_shared_memory(gl.bfloat16, [6, BR, D], SL_CD)                 # 2 states x 3 row blocks
    r_buf = gl.allocate_shared_memory(gl.float32, [2, C], SL_VEC)
    w_buf = gl.allocate_shared_memory(gl.float32, [2, C], SL_VEC)
    aqt_s = gl.allocate_shared_memory(gl.bfloat16, [3, BR, F], SL_RF)                 # transposed, q side
    bt_s = gl.allocate_shared_memory(gl.bfloat16, [3, BR, F], SL_RF)
    in_ready, in_free = _handshake(2)                 # the TMA ring: the update and delta partitions consume
    r_ready, r_free = _handshake(1)                   # r and inv_den of a chunk: the update partition consumes
    _stage_table(sel, 3, aqt_s, True)
    _stage_table(sel, 5, bt_s, True)
    fence_async_shared()
    thread_barrier()
    _overlap_previous_kernel()
    worker_args = (q_desc, do_desc, o_desc, q_ring, do_ring, o_ring, r_buf, w_buf, in_ready, in_free, r_ready, r_free,
                   inv_den, r, i_b, i_h, H, T, first, n)
    gl.warp_specialize([
        (_rev_update_partition, (q_ring, do_ring, s_buf, r_buf, w_buf, aqt_s, bt_s, in_ready, in_free, r_ready,
                                 r_free, dh_desc, dhz, ends, dz_totals, i_b, i_h, i_s, H, NT, NSEG, first, n)),
        (_delta_partition, worker_args),
        (_rev_loader_partition, worker_args),
    ], [4, 1], [DELTA_REGS, LOADER_REGS])


@gluon.jit
def _read_segment(H, NT, NSEG, SEG, REVERSE: gl.constexpr):
    """(sequence, head, segment, first chunk, chunks) of this program of _hopper_totals_kernel: the segments whose
    total is read (forward: all but the last, reverse: all but the first)."""
    i_p = gl.program_id(0)
    i_s = i_p % (NSEG - 1) + REVERSE
    first = i_s * SEG
    return i_p // (NSEG - 1) // H, i_p // (NSEG - 1) % H, i_s, first, gl.minimum(NT - first, SEG)


@gluon.jit
def _load_totals_chunk(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, in_ready, i_b, i_h, H, first, c,
                       REVERSE: gl.constexpr):
    """TMA loads of the segment's chunk c (x, y and, in reverse, the weights inv_den) into ring slot c % NB."""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    b = c % TOTALS_RING
    bar = in_ready.index(b)
    t0 = (first + c) * C
    if REVERSE:
        mbarrier.expect(bar, C * (F + D) * 2 + C * 4)
        tma_load(w_desc, [i_b * H + i_h, t0], bar, _as_box(w_ring.index(b), [1, C], gl.float32))
    else:
        mbarrier.expect(bar, C * (F + D) * 2)
    tma_load(x_desc, [i_b, t0, i_h, 0], bar, _as_box(x_ring.index(b), [1, C, 1, F]))
    tma_load(y_desc, [i_b, t0, i_h, 0], bar, _as_box(y_ring.index(b), [1, C, 1, D]))


@gluon.jit
def _issue_factors_t(at_s, bt_s, x_s, j: gl.constexpr, like):
    """_features_t's two selection products for the chunk x_s [C, F], issued and not waited for."""
    ca, cb = _row_constants(j * ROW_BLOCK + gl.arange(0, ROW_BLOCK, layout=ROWS), 1, like)
    xt = x_s.permute((1, 0))
    return (warpgroup_mma(at_s.index(j), xt, ca, is_async=True),
            warpgroup_mma(bt_s.index(j), xt, cb, is_async=True))


@gluon.jit
def _totals_sweep(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, in_ready, in_free, i_b, i_h, H,
                  first, n, j: gl.constexpr, REVERSE: gl.constexpr, LOADS: gl.constexpr):
    """Row block j of the segment's total (n >= 1 chunks): S_j = sum_c (phi_j(x_c)^T w_c) y_c, z_j = colsum phi_j
    (forward: w = 1, z wanted; reverse: w = inv_den, z not). Pipelined: chunk c's state product is issued after
    chunk c + 1's selection products and runs while their feature products are formed; a slot is released once the
    product that read it is done. LOADS: this partition also issues the TMA loads, NB - 1 chunks ahead."""
    C: gl.constexpr = CHUNK
    NB: gl.constexpr = TOTALS_RING
    zero_cc = gl.zeros([C, C], gl.float32, MMA)
    s = gl.zeros([ROW_BLOCK, HEAD_DIM], gl.float32, MMA)
    z = gl.zeros([ROW_BLOCK], gl.float32, ROWS)
    if LOADS:
        for c in gl.static_range(NB):
            if c < n:
                _load_totals_chunk(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, in_ready, i_b, i_h, H, first, c,
                                   REVERSE)
    mbarrier.wait(in_ready.index(0), 0)
    xa, xb = _issue_factors_t(at_s, bt_s, x_ring.index(0), j, zero_cc)
    xa, xb = warpgroup_mma_wait(0, deps=[xa, xb])
    phi = xa * xb
    if REVERSE:
        phi = phi * gl.expand_dims(w_ring.index(0).load(COLS), 0)
    for c in range(n):
        if not REVERSE:
            z += gl.sum(phi, 1)
        phi_s = p_buf.index(j * 2 + c % 2)            # read by chunk c - 2's product, done at the last step's wait
        phi_s.store(phi.to(gl.bfloat16))
        fence_async_shared()
        cn = gl.minimum(c + 1, n - 1)        # (on the last step the last chunk's factors again: its slot is held)
        mbarrier.wait(in_ready.index(cn % NB), (cn // NB) & 1)
        xa, xb = _issue_factors_t(at_s, bt_s, x_ring.index(cn % NB), j, zero_cc)
        s = warpgroup_mma(phi_s, y_ring.index(c % NB), s, is_async=True)
        xa, xb, s = warpgroup_mma_wait(1, deps=[xa, xb, s])           # chunk c - 1's state product is done
        if c > 0:
            bp = (c - 1) % NB
            mbarrier.arrive(in_free.index(bp), count=1)
            if LOADS:
                if c - 1 + NB < n:
                    mbarrier.wait(in_free.index(bp), ((c - 1) // NB) & 1)
                    _load_totals_chunk(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, in_ready, i_b, i_h, H, first, c -
                                       1 + NB, REVERSE)
        phi = xa * xb
        if REVERSE:
            phi = phi * gl.expand_dims(w_ring.index(cn % NB).load(COLS), 0)
    s = warpgroup_mma_wait(0, deps=[s])
    return s, z


@gluon.jit
def _totals_rows(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, in_ready, in_free, ends, i_b, i_h,
                 i_s, H, T, NSEG, first, n, j: gl.constexpr, REVERSE: gl.constexpr, LOADS: gl.constexpr):
    """Row block j of the segment's total into its packed fp32 slot of ends."""
    s, z = _totals_sweep(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, in_ready, in_free, i_b, i_h,
                         H, first, n, j, REVERSE, LOADS)
    m = j * ROW_BLOCK + gl.arange(0, ROW_BLOCK, layout=ROWS)
    if not REVERSE:             # tokens past T (zeros from the TMA) add phi_0 = 1 to z_0, and nothing else
        z -= gl.where(m == 0, gl.maximum((first + n) * CHUNK - T, 0).to(gl.float32), 0.0)
    d = gl.arange(0, HEAD_DIM, layout=COLS)
    total = ends + ((i_b * NSEG + i_s) * H + i_h).to(gl.int64) * PACKED
    gl.store(total + gl.expand_dims(m, 1) * HEAD_DIM + gl.expand_dims(d, 0), s, mask=gl.expand_dims(m < STATE_ROWS, 1))
    gl.store(total + STATE_ROWS * HEAD_DIM + m, z, mask=m < STATE_ROWS)


@gluon.jit
def _stage_last_rows(sel, table: gl.constexpr, dst):
    """Rows 128..159 of selection table `table` (not transposed), [F, 32], into dst."""
    ld: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
    f = gl.arange(0, FEATURE_DIM, layout=gl.SliceLayout(1, ld))
    m = gl.arange(0, LAST_ROWS, layout=gl.SliceLayout(0, ld))
    dst.store(gl.load(sel + table * FEATURE_DIM * TABLE_ROWS + gl.expand_dims(f, 1) * TABLE_ROWS + 2 * ROW_BLOCK
                      + gl.expand_dims(m, 0)))


@gluon.jit
def _totals_sweep_last(x_ring, y_ring, w_ring, p2_buf, a2_s, b2_s, in_ready, in_free, n, REVERSE: gl.constexpr):
    """The last row block (rows 128..159, of which 128..152 exist) transposed at half width: phi_2 [C, 32] =
    (x A_2) * (x B_2) (every row here is quadratic: no constant factors), S_2^T += y^T phi_2 [D, 32], z_2 summed over
    the tokens once at the end. Half the products of a 64-row block; synchronous (asynchronous products here made
    ptxas serialise every product of the kernel for want of registers)."""
    C: gl.constexpr = CHUNK
    NB: gl.constexpr = TOTALS_RING
    zero = gl.zeros([C, LAST_ROWS], gl.float32, MMA_L)                    # (the layout of use_acc=False products)
    st = gl.zeros([HEAD_DIM, LAST_ROWS], gl.float32, MMA_L)
    zacc = gl.zeros([C, LAST_ROWS], gl.float32, MMA_L)
    mbarrier.wait(in_ready.index(0), 0)
    xa = warpgroup_mma(x_ring.index(0), a2_s, zero, use_acc=False)
    xb = warpgroup_mma(x_ring.index(0), b2_s, zero, use_acc=False)
    phi = xa * xb
    if REVERSE:
        phi = phi * gl.expand_dims(w_ring.index(0).load(ROWS_L), 1)
    for c in range(n):
        if not REVERSE:
            zacc += phi
        phi_s = p2_buf.index(c % 2)
        phi_s.store(phi.to(gl.bfloat16))
        fence_async_shared()
        cn = gl.minimum(c + 1, n - 1)
        mbarrier.wait(in_ready.index(cn % NB), (cn // NB) & 1)
        xa = warpgroup_mma(x_ring.index(cn % NB), a2_s, zero, use_acc=False)
        xb = warpgroup_mma(x_ring.index(cn % NB), b2_s, zero, use_acc=False)
        st = warpgroup_mma(y_ring.index(c % NB).permute((1, 0)), phi_s, st)
        if c > 0:
            mbarrier.arrive(in_free.index((c - 1) % NB), count=1)
        phi = xa * xb
        if REVERSE:
            phi = phi * gl.expand_dims(w_ring.index(cn % NB).load(ROWS_L), 1)
    return st, gl.sum(zacc, 0)


@gluon.jit
def _totals_rows_last(x_ring, y_ring, w_ring, p2_buf, a2_s, b2_s, in_ready, in_free, ends, i_b, i_h, i_s, H, NSEG, n,
                      REVERSE: gl.constexpr):
    """Rows 128..152 of the segment's total into its packed fp32 slot of ends (S^T stored transposed)."""
    st, z = _totals_sweep_last(x_ring, y_ring, w_ring, p2_buf, a2_s, b2_s, in_ready, in_free, n, REVERSE)
    m = 2 * ROW_BLOCK + gl.arange(0, LAST_ROWS, layout=COLS_L)
    d = gl.arange(0, HEAD_DIM, layout=ROWS_L)
    total = ends + ((i_b * NSEG + i_s) * H + i_h).to(gl.int64) * PACKED
    gl.store(total + gl.expand_dims(m, 0) * HEAD_DIM + gl.expand_dims(d, 1), st,
             mask=gl.expand_dims(m < STATE_ROWS, 0))
    gl.store(total + STATE_ROWS * HEAD_DIM + m, z, mask=m < STATE_ROWS)


# Worker partitions take no constexpr arguments (Gluon rejects ints and gl.constexpr in a worker's argument tuple):
# one entry function per row block and direction, each with the kernel's whole argument tuple.


@gluon.jit
def _fwd_totals_rows_1(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, p2_buf, a2_s, b2_s, in_ready,
                       in_free, ends, i_b, i_h, i_s, H, T, NSEG, first, n):
    _totals_rows(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, in_ready, in_free, ends, i_b, i_h,
                 i_s, H, T, NSEG, first, n, 1, False, False)


@gluon.jit
def _fwd_totals_rows_2(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, p2_buf, a2_s, b2_s, in_ready,
                       in_free, ends, i_b, i_h, i_s, H, T, NSEG, first, n):
    _totals_rows_last(x_ring, y_ring, w_ring, p2_buf, a2_s, b2_s, in_ready, in_free, ends, i_b, i_h, i_s, H, NSEG, n,
                      False)


@gluon.jit
def _rev_totals_rows_1(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, p2_buf, a2_s, b2_s, in_ready,
                       in_free, ends, i_b, i_h, i_s, H, T, NSEG, first, n):
    _totals_rows(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, in_ready, in_free, ends, i_b, i_h,
                 i_s, H, T, NSEG, first, n, 1, True, False)


@gluon.jit
def _rev_totals_rows_2(x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, p2_buf, a2_s, b2_s, in_ready,
                       in_free, ends, i_b, i_h, i_s, H, T, NSEG, first, n):
    _totals_rows_last(x_ring, y_ring, w_ring, p2_buf, a2_s, b2_s, in_ready, in_free, ends, i_b, i_h, i_s, H, NSEG, n,
                      True)


@gluon.jit
def _hopper_totals_kernel(x_desc, y_desc, w_desc, ends, sel, T, H, NT, NSEG, SEG, REVERSE: gl.constexpr):
    """The segments' first pass for the Hopper forward (x = k, y = v) and reverse scan (REVERSE: x = q, y = do,
    weights w = inv_den): one read segment's total from zero, packed fp32 into ends [B, NSEG, H, PACKED] (the
    unread segment's slots left alone). x, y: TMA descriptors of [B, T, H, X] with [1, C, 1, X] boxes; w: of inv_den
    as [B * H, T] with [1, C] boxes (reverse). The three row blocks in three partitions side by side on one NB-deep
    TMA ring, whose loads the default partition issues (the third at half width: _totals_rows_last)."""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    BR: gl.constexpr = ROW_BLOCK
    NB: gl.constexpr = TOTALS_RING
    i_b, i_h, i_s, first, n = _read_segment(H, NT, NSEG, SEG, REVERSE)
    x_ring = gl.allocate_shared_memory(gl.bfloat16, [NB, C, F], SL_CF)
    y_ring = gl.allocate_shared_memory(gl.bfloat16, [NB, C, D], SL_CD)
    w_ring = gl.allocate_shared_memory(gl.float32, [NB, C], SL_VEC)
    p_buf = gl.allocate_shared_memory(gl.bfloat16, [4, BR, C], SL_CD)                # phi_j^T: 2 per partition
    p2_buf = gl.allocate_shared_memory(gl.bfloat16, [2, C, LAST_ROWS], SL_CL)        # phi_2, the last partition's
    at_s = gl.allocate_shared_memory(gl.bfloat16, [2, BR, F], SL_RF)                 # transposed selections
    bt_s = gl.allocate_shared_memory(gl.bfloat16, [2, BR, F], SL_RF)
    a2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)             # rows 128..159 of A, B
    b2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)
    in_ready = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())
    in_free = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NB):
        mbarrier.init(in_ready.index(i), count=1)
        mbarrier.init(in_free.index(i), count=3)
    if REVERSE:
        _stage_table(sel, 3, at_s, True)
        _stage_last_rows(sel, 0, a2_s)
    else:
        _stage_table(sel, 4, at_s, True)
        _stage_last_rows(sel, 1, a2_s)
    _stage_table(sel, 5, bt_s, True)
    _stage_last_rows(sel, 2, b2_s)
    fence_async_shared()
    thread_barrier()
    _overlap_previous_kernel()
    rows0 = (x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, in_ready, in_free, ends, i_b, i_h,
             i_s, H, T, NSEG, first, n)
    args = (x_desc, y_desc, w_desc, x_ring, y_ring, w_ring, p_buf, at_s, bt_s, p2_buf, a2_s, b2_s, in_ready, in_free,
            ends, i_b, i_h, i_s, H, T, NSEG, first, n)
    if REVERSE:
        gl.warp_specialize([(_totals_rows, rows0 + (0, True, True)), (_rev_totals_rows_1, args),
                            (_rev_totals_rows_2, args)], [4, 4], [TOTALS_REGS, TOTALS_REGS])
    else:
        gl.warp_specialize([(_totals_rows, rows0 + (0, False, True)), (_fwd_totals_rows_1, args),
                            (_fwd_totals_rows_2, args)], [4, 4], [TOTALS_REGS, TOTALS_REGS])


@gluon.jit
def _grad_tile(c, H, NT):
    """(sequence, head, chunk, state row) of this program's tile c: tiles pid, pid + programs, ... in (sequence,
    chunk, head) order, the state rows' own (row = tile): tiles that run together are all heads of a few chunks, so
    their q, k, v, do token rows and their h, dh rows are read whole."""
    tile = gl.program_id(0) + c * gl.num_programs(0)
    return tile // H // NT, tile % H, tile // H % NT, tile


@gluon.jit
def _program_tiles(n_tiles):
    """Tiles of this program in the persistent grid."""
    return (n_tiles - gl.program_id(0) + gl.num_programs(0) - 1) // gl.num_programs(0)


@gluon.jit
def _grad_loader_partition(q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, dq_desc, q_ring, k_ring, v_ring,
                           do_ring, h_ring, dh_ring, w_ring, r_ring, z_ring, dz_ring, aq_s, b_s, aq2_s, b2_s, dq_buf,
                           in_ready, in_free, inv_den, r, hz, dhz, dz_totals, H, T, NT, NSEG, SEG, n_tiles):
    """Into ring slot c % 2, once both consumers are done with it: TMA loads of tile c's q, k, v, do chunks and the
    three row blocks of h and dh; then the fp32 vectors, inv_den and r of the chunk's tokens, hz and dhz of its state
    row (zero past T and past the 153 rows; dhz plus the dz totals of the later segments), loaded and stored by this
    warp, which arrives on in_ready a second time. It runs a tile ahead of the consumers, so their latency is off
    the critical path (loaded by the consumers in the row-block loop, they cost 4% of the kernel's time). (Worker
    partitions share one signature, hence the dq partition's arguments.)"""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    BR: gl.constexpr = ROW_BLOCK
    tokens = gl.arange(0, C, layout=gl.BlockedLayout([2], [32], [1], [0]))
    rows = gl.arange(0, STATE_BOX, layout=gl.BlockedLayout([8], [32], [1], [0]))
    for c in range(_program_tiles(n_tiles)):
        i_b, i_h, i_t, row = _grad_tile(c, H, NT)
        b = c % 2
        mbarrier.wait(in_free.index(b), ((c // 2) & 1) ^ 1)
        bar = in_ready.index(b)
        mbarrier.expect(bar, (C * (2 * F + 2 * D) + 6 * BR * D) * 2)
        t0 = i_t * C
        tma_load(q_desc, [i_b, t0, i_h, 0], bar, _as_box(q_ring.index(b), [1, C, 1, F]))
        tma_load(k_desc, [i_b, t0, i_h, 0], bar, _as_box(k_ring.index(b), [1, C, 1, F]))
        tma_load(v_desc, [i_b, t0, i_h, 0], bar, _as_box(v_ring.index(b), [1, C, 1, D]))
        tma_load(do_desc, [i_b, t0, i_h, 0], bar, _as_box(do_ring.index(b), [1, C, 1, D]))
        for j in gl.static_range(3):
            tma_load(h_desc, [row, j * BR, 0], bar, _as_box(h_ring.index(b * 3 + j), [1, BR, D]))
            tma_load(dh_desc, [row, j * BR, 0], bar, _as_box(dh_ring.index(b * 3 + j), [1, BR, D]))
        t = t0 + tokens
        token_row = (i_b * H + i_h) * T
        wv = gl.load(inv_den + token_row + t, mask=t < T, other=0.0)         # two loads in flight at a time
        rv = gl.load(r + token_row + t, mask=t < T, other=0.0)
        w_ring.index(b).store(wv)
        r_ring.index(b).store(rv)
        zv = gl.load(hz + row * STATE_ROWS + rows, mask=rows < STATE_ROWS, other=0.0)
        dz = gl.load(dhz + row * STATE_ROWS + rows, mask=rows < STATE_ROWS, other=0.0)
        if NSEG > 1:            # (the branch, not just an empty loop, keeps one segment as fast as before)
            for p in range(i_t // SEG + 1, NSEG):
                dz += gl.load(dz_totals + ((i_b * NSEG + p) * H + i_h) * STATE_BOX + rows, mask=rows < 3 * ROW_BLOCK,
                              other=0.0)
        z_ring.index(b).store(zv)
        dz_ring.index(b).store(dz)
        mbarrier.arrive(bar, count=1)


@gluon.jit
def _wait_tile(c, in_ready, w_ring, r_ring, layout: gl.constexpr, dim: gl.constexpr):
    """Ring slot of tile c once it is loaded, and the tile's inv_den and r in layout (ROWS or COLS), broadcast
    along dim."""
    b = c % 2
    mbarrier.wait(in_ready.index(b), (c // 2) & 1)
    return b, gl.expand_dims(w_ring.index(b).load(layout), dim), gl.expand_dims(r_ring.index(b).load(layout), dim)


@gluon.jit
def _state_vector(ring, b, j: gl.constexpr):
    """Row block j of z or dz from ring slot b, along the columns of a [C, BR] product."""
    return ring.index(b).slice(j * ROW_BLOCK, ROW_BLOCK).load(COLS)


@gluon.jit
def _last_state_vector(ring, b):
    """Rows 128..159 of z or dz from ring slot b, along the columns of a [C, 32] product."""
    return ring.index(b).slice(2 * ROW_BLOCK, LAST_ROWS).load(COLS_L)


@gluon.jit
def _last_factors(x_s, a2_s, b2_s):
    """(x A_2, x B_2) [tokens, 32] of the last row block, rows 128..159 (25 exist): every row there is quadratic,
    so the selection products start from zero; phi_2(x) is their product."""
    zero = gl.zeros([CHUNK, LAST_ROWS], gl.float32, MMA_L)
    xa = warpgroup_mma(x_s, a2_s, zero, use_acc=False, is_async=True)
    xb = warpgroup_mma(x_s, b2_s, zero, use_acc=False, is_async=True)
    return warpgroup_mma_wait(0, deps=[xa, xb])


@gluon.jit
def _product_rule(acc, wgt, xa, xb, a_s, b_s, dot_a: gl.constexpr):
    """acc + d/dx_t [sum_m wgt[t, m] phi_m(x_t)] over the rows m of the tables a_s, b_s [F, rows], [C, F]: with the
    factors xa, xb of phi(x) = xa * xb (_factors), (wgt * xb) A^T + (wgt * xa) B^T, the tables transposed by the
    shared-memory view."""
    acc = warpgroup_mma(gl.convert_layout((wgt * xb).to(gl.bfloat16), dot_a), a_s.permute((1, 0)), acc)
    acc = warpgroup_mma(gl.convert_layout((wgt * xa).to(gl.bfloat16), dot_a), b_s.permute((1, 0)), acc)
    return acc


@gluon.jit
def _store_chunk(acc, buf, desc, i_b, i_h, t0, width: gl.constexpr, later: gl.constexpr):
    """A [C, width] gradient chunk to HBM through its shared buffer (TMA; rows past T are clipped), once the
    previous store from that buffer has read it (`later`: stores the partition issued after that one)."""
    tma.store_wait(later)
    buf.store(acc.to(gl.bfloat16))
    fence_async_shared()
    tma_store(desc, [i_b, t0, i_h, 0], _as_box(buf, [1, CHUNK, 1, width]))


@gluon.jit
def _dq_partition(q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, dq_desc, q_ring, k_ring, v_ring, do_ring,
                  h_ring, dh_ring, w_ring, r_ring, z_ring, dz_ring, aq_s, b_s, aq2_s, b2_s, dq_buf, in_ready, in_free,
                  inv_den, r, hz, dhz, dz_totals, H, T, NT, NSEG, SEG, n_tiles):
    """dq of each tile: ds k, ds = causal (g v^T + r) (1/sqrt(F) + s/F), plus d/dq [phi(q).(S g + z r)] with the
    state before the chunk (S_j, z_j: h, hz): _product_rule with the weights g S_j^T + r z_j^T."""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    zero_cc = gl.zeros([C, C], gl.float32, MMA)
    zero_cf = gl.zeros([C, F], gl.float32, MMA_F)
    zero_cl = gl.zeros([C, LAST_ROWS], gl.float32, MMA_L)
    t_rows = gl.arange(0, C, layout=ROWS)
    causal = gl.expand_dims(t_rows, 1) >= gl.expand_dims(gl.arange(0, C, layout=COLS), 0)
    for c in range(_program_tiles(n_tiles)):
        i_b, i_h, i_t, row = _grad_tile(c, H, NT)
        b, w, rr = _wait_tile(c, in_ready, w_ring, r_ring, ROWS, 1)
        q_s = q_ring.index(b)
        k_s = k_ring.index(b)
        do_s = do_ring.index(b)
        s = warpgroup_mma(q_s, k_s.permute((1, 0)), zero_cc, is_async=True)
        da = warpgroup_mma(do_s, v_ring.index(b).permute((1, 0)), zero_cc, is_async=True)
        s, da = warpgroup_mma_wait(0, deps=[s, da])
        ds = gl.where(causal, (da * w + rr) * (LINEAR + 2.0 * QUADRATIC * s), 0.0)
        dq = warpgroup_mma(gl.convert_layout(ds.to(gl.bfloat16), DOT_A_F), k_s, zero_cf)
        for j in gl.static_range(2):
            wq = warpgroup_mma(do_s, h_ring.index(b * 3 + j).permute((1, 0)), zero_cc)
            wq = wq * w + rr * gl.expand_dims(_state_vector(z_ring, b, j), 0)
            qa, qb = _factors(q_s, aq_s, b_s, j, zero_cc)
            dq = _product_rule(dq, wq, qa, qb, aq_s.index(j), b_s.index(j), DOT_A_F)
        h2 = h_ring.index(b * 3 + 2).slice(0, LAST_ROWS)                  # the last block at half width
        wq = warpgroup_mma(do_s, h2.permute((1, 0)), zero_cl)
        wq = wq * gl.convert_layout(w, MMA_L) + gl.convert_layout(rr, MMA_L) * gl.expand_dims(
            _last_state_vector(z_ring, b), 0)
        qa, qb = _last_factors(q_s, aq2_s, b2_s)
        dq = _product_rule(dq, wq, qa, qb, aq2_s, b2_s, DOT_A_F)
        mbarrier.arrive(in_free.index(b), count=1)
        _store_chunk(dq, dq_buf, dq_desc, i_b, i_h, i_t * C, F, 0)
    tma.store_wait(0)


@gluon.jit
def _dkdv_partition(q_ring, k_ring, v_ring, do_ring, dh_ring, w_ring, r_ring, dz_ring, ak_s, b_s, ak2_s, b2_s, dk_buf,
                    dv_buf, in_ready, in_free, dk_desc, dv_desc, H, T, NT, n_tiles):
    """dk and dv of each tile, transposed intra-chunk matrices (key j on rows, query i on columns):
    dk = ds^T q + d/dk [phi(k).(dS v + dz)],  dv = (a^T * inv_den) do + sum_j phi_k_j(k) dS_j
    with the reverse-time state after the chunk (dS_j, dz_j: dh, dhz): _product_rule with the weights
    v dS_j^T + dz_j."""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    zero_cc = gl.zeros([C, C], gl.float32, MMA)
    zero_cf = gl.zeros([C, F], gl.float32, MMA_F)
    zero_cd = gl.zeros([C, D], gl.float32, MMA)
    zero_cl = gl.zeros([C, LAST_ROWS], gl.float32, MMA_L)
    t_cols = gl.arange(0, C, layout=COLS)
    causal_t = gl.expand_dims(gl.arange(0, C, layout=ROWS), 1) <= gl.expand_dims(t_cols, 0)
    for c in range(_program_tiles(n_tiles)):
        i_b, i_h, i_t, row = _grad_tile(c, H, NT)
        b, w, rr = _wait_tile(c, in_ready, w_ring, r_ring, COLS, 0)
        q_s = q_ring.index(b)
        k_s = k_ring.index(b)
        do_s = do_ring.index(b)
        v_s = v_ring.index(b)
        st = warpgroup_mma(k_s, q_s.permute((1, 0)), zero_cc, is_async=True)                      # s^T
        dat = warpgroup_mma(v_s, do_s.permute((1, 0)), zero_cc, is_async=True)                    # (v do^T)^T
        st, dat = warpgroup_mma_wait(0, deps=[st, dat])
        dst = gl.where(causal_t, (dat * w + rr) * (LINEAR + 2.0 * QUADRATIC * st), 0.0)
        dk = warpgroup_mma(gl.convert_layout(dst.to(gl.bfloat16), DOT_A_F), q_s, zero_cf)
        at = gl.where(causal_t, (1.0 + st * LINEAR + st * st * QUADRATIC) * w, 0.0)
        dv = warpgroup_mma(gl.convert_layout(at.to(gl.bfloat16), DOT_A), do_s, zero_cd)
        for j in gl.static_range(2):
            dh_s = dh_ring.index(b * 3 + j)
            wk = warpgroup_mma(v_s, dh_s.permute((1, 0)), zero_cc) + gl.expand_dims(_state_vector(dz_ring, b, j), 0)
            ka, kb = _factors(k_s, ak_s, b_s, j, zero_cc)
            dk = _product_rule(dk, wk, ka, kb, ak_s.index(j), b_s.index(j), DOT_A_F)
            dv = warpgroup_mma(gl.convert_layout((ka * kb).to(gl.bfloat16), DOT_A), dh_s, dv)
        dh2 = dh_ring.index(b * 3 + 2).slice(0, LAST_ROWS)                 # the last block at half width
        wk = warpgroup_mma(v_s, dh2.permute((1, 0)), zero_cl) + gl.expand_dims(_last_state_vector(dz_ring, b), 0)
        ka, kb = _last_factors(k_s, ak2_s, b2_s)
        dk = _product_rule(dk, wk, ka, kb, ak2_s, b2_s, DOT_A_F)
        dv = warpgroup_mma(gl.convert_layout((ka * kb).to(gl.bfloat16), DOT_A), dh2, dv)
        mbarrier.arrive(in_free.index(b), count=1)
        _store_chunk(dk, dk_buf, dk_desc, i_b, i_h, i_t * C, F, 1)
        _store_chunk(dv, dv_buf, dv_desc, i_b, i_h, i_t * C, D, 1)
    tma.store_wait(0)


@gluon.jit
def _hopper_grad_kernel(q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, dq_desc, dk_desc, dv_desc, inv_den, r, hz,
                        dhz, dz_totals, sel, T, H, NT, NSEG, SEG, n_tiles):
    """dq, dk, dv of every chunk (the two-level _bwd_grad_kernel's math), a persistent grid over the n_tiles =
    B * H * NT chunks. TMA descriptors: q, k, v, do, dq, dk, dv of [B, T, H, X] with [1, C, 1, X] boxes; h, dh of
    [B * NT * H, 153, 64] with [1, 64, 64] boxes (the forward's states before each chunk, the reverse scan's after
    it); inv_den, r fp32 [B, H, T], hz, dhz fp32 [B * NT, H, 153]; dz_totals: the reverse scan's per-segment dz
    totals (NSEG segments of SEG chunks; dhz lacks the later segments' ones)."""
    C: gl.constexpr = CHUNK
    F: gl.constexpr = FEATURE_DIM
    D: gl.constexpr = HEAD_DIM
    BR: gl.constexpr = ROW_BLOCK
    q_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, F], SL_CF)
    k_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, F], SL_CF)
    v_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, D], SL_CD)
    do_ring = gl.allocate_shared_memory(gl.bfloat16, [2, C, D], SL_CD)
    h_ring = gl.allocate_shared_memory(gl.bfloat16, [6, BR, D], SL_CD)                # 2 slots x 3 row blocks
    dh_ring = gl.allocate_shared_memory(gl.bfloat16, [6, BR, D], SL_CD)
    w_ring = gl.allocate_shared_memory(gl.float32, [2, C], SL_VEC)                   # inv_den
    r_ring = gl.allocate_shared_memory(gl.float32, [2, C], SL_VEC)
    z_ring = gl.allocate_shared_memory(gl.float32, [2, STATE_BOX], SL_VEC)             # hz
    dz_ring = gl.allocate_shared_memory(gl.float32, [2, STATE_BOX], SL_VEC)
    dq_buf = gl.allocate_shared_memory(gl.bfloat16, [C, F], SL_CF)
    dk_buf = gl.allocate_shared_memory(gl.bfloat16, [C, F], SL_CF)
    dv_buf = gl.allocate_shared_memory(gl.bfloat16, [C, D], SL_CD)
    aq_s = gl.allocate_shared_memory(gl.bfloat16, [2, F, BR], SL_FR)                   # selections
    ak_s = gl.allocate_shared_memory(gl.bfloat16, [2, F, BR], SL_FR)
    b_s = gl.allocate_shared_memory(gl.bfloat16, [2, F, BR], SL_FR)
    aq2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)             # rows 128..159 of them
    ak2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)
    b2_s = gl.allocate_shared_memory(gl.bfloat16, [F, LAST_ROWS], SL_FL)
    in_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    in_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):      # the ring: the TMA's bytes and the loader's vectors; the two consumers
        mbarrier.init(in_ready.index(i), count=2)
        mbarrier.init(in_free.index(i), count=2)
    _stage_table(sel, 0, aq_s, False)
    _stage_table(sel, 1, ak_s, False)
    _stage_table(sel, 2, b_s, False)
    _stage_last_rows(sel, 0, aq2_s)
    _stage_last_rows(sel, 1, ak2_s)
    _stage_last_rows(sel, 2, b2_s)
    fence_async_shared()
    thread_barrier()
    _overlap_previous_kernel()
    worker_args = (q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, dq_desc, q_ring, k_ring, v_ring, do_ring, h_ring,
                   dh_ring, w_ring, r_ring, z_ring, dz_ring, aq_s, b_s, aq2_s, b2_s, dq_buf, in_ready, in_free, inv_den,
                   r, hz, dhz, dz_totals, H, T, NT, NSEG, SEG, n_tiles)
    gl.warp_specialize([
        (_dkdv_partition, (q_ring, k_ring, v_ring, do_ring, dh_ring, w_ring, r_ring, dz_ring, ak_s, b_s, ak2_s, b2_s,
                           dk_buf, dv_buf, in_ready, in_free, dk_desc, dv_desc, H, T, NT, n_tiles)),
        (_dq_partition, worker_args),
        (_grad_loader_partition, worker_args),
    ], [4, 1], [GRAD_DQ_REGS, GRAD_LOADER_REGS])
