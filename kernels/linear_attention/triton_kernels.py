"""Triton kernels of the chunked causal Taylor linear attention (feature dim F = 16), two-level scheme.

Feature map (naive.py): phi(x) = [1, x * PHI1_SCALE, vec(x x^T) * PHI2_SCALE], PHI1_SCALE = F**-0.25,
PHI2_SCALE = (2F)**-0.5. vec(x x^T) is symmetric, so the kernels use a compact, equivalent map of M = 153 rows
    m = 0:              1
    m = 1 .. F:         x_{m-1} * PHI1_SCALE                               (linear)
    m = F+1 .. 2F:      x_a^2 * PHI2_SCALE * sqrt(2)  for q,               (diagonal)
                        x_a^2 * PHI2_SCALE / sqrt(2)  for k,  a = m-1-F
    m = 2F+1 .. M-1:    x_a x_b * PHI2_SCALE * sqrt(2), pair p = m-1-2F,   (the F(F-1)/2 = 120 pairs a != b)
                        a = p % F, b = (a + p // F + 1) % F
with the same dot products phi_q(q).phi_k(k) = 1 + s / sqrt(F) + s^2 / (2F), s = q.k. (The diagonal rows' scale is
split unevenly between q and k so that at F = 16 every scale is a power of 2, exact in bf16 tables: 1/2, 1/4 and
1/8. The kernels' states are sums of phi_k(k) v^T: their diagonal rows are the public ones / sqrt(2).) Every row
is phi_m(x) = A_m(x) * B_m(x) with A_m = scale_m x_{a_m} (or 1) and B_m = x_{b_m} (or 1): a block of BR rows is
two selection products x @ sel, the row's constant factor 1 their accumulator. The kernels load the selections
(scale included) from a table (fused.feature_tables) rather than derive them from m: deriving them cost a third of
every loop's instructions.
fused.py converts states between this layout and the public 273-row one.

Two levels, like flash-linear-attention's `chunk` kernels (sequences cut into chunks of C tokens):
  1. _chunk_state_kernel scans the chunks of a sequence and writes the state at every chunk boundary to HBM
     (h [chunks, H, M, D] = sum over earlier tokens of phi(k) v^T, hz [chunks, H, M] = sum phi(k)). One program per
     (row block of BR features, value block of BD columns, sequence x head x segment): the live state is one
     [BR, BD] tile, starting from the initial state when one is given. Long sequences are cut into segments of
     SEG chunks scanned in parallel, in two passes: the first stores only each segment's total (from zero; fp32
     [N, NSEG, H, _packed(M, D)]: S rows then z, each row padded to 64 bytes so that tiles load as 16-byte
     vectors), the second starts each segment from the initial state plus the totals before it and stores h.
     So h always holds the whole state and the per-chunk kernels below read it alone.
     The backward runs it in reverse time on (q, g = do / (den + eps), r) for dS, dz at each chunk's END.
     (The forward stores inv_den = 1 / (den + eps), fp32 [B, H, T], for the backward; r is stored the same way.)
  2. Fully parallel kernels per chunk, from those states (one for the output, one for all three input gradients:
     dv shares the intra-chunk matrix, phi(k) and the dS tiles with dk):
     forward   num_i = sum_{j<=i in chunk} a_ij v_j + phi(q_i) S,  den_i = sum_j a_ij + phi(q_i).z,
               o_i = num_i / (den_i + eps),  a_ij = 1 + s_ij / sqrt(F) + s_ij^2 / (2F)
     backward  with g_i = do_i / (den_i + eps), r_i = -(do_i . o_i) / (den_i + eps):
               da_ij = g_i.v_j + r_i,  ds_ij = da_ij (1/sqrt(F) + s_ij / F)
               dq_i = sum_j ds_ij k_j + d/dq_i [phi(q_i).(S g_i + z r_i)]
               dk_j = sum_i ds_ij q_i + d/dk_j [phi(k_j).(dS v_j + dz)]
               dv_j = sum_i a_ij g_i + phi(k_j) dS
Chunk c of sequence n is h row (chunk_offset[n] + c): n * NT + c for fixed-length batches, from cu_seqlens-derived
chunk_offsets / chunk_indices for packed documents. Every kernel takes element strides: [B, T, H, X] views of
[T, B, H, X] tensors are read in place.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(ptr, row_stride, col_stride, rows, row_mask, cols, col_mask):
    """Load a [len(rows), len(cols)] tile (zeros outside the masks)."""
    ptrs = ptr + rows[:, None] * row_stride + cols[None, :] * col_stride
    return tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)


SEL_A_Q = tl.constexpr(0)      # tables of fused.feature_tables: A of the q side, A of the k side, B
SEL_A_K = tl.constexpr(1)
SEL_B = tl.constexpr(2)


@triton.jit
def _selection(sel, table: tl.constexpr, m, F: tl.constexpr, MP: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The factor selections of rows m from fused.feature_tables, in the operand dtype: table SEL_A_Q / SEL_A_K
    (A[f, m] = scale_m where f = a_m) or SEL_B (B[f, m] = 1 where f = b_m), [F, BR], or [BR, F] when TRANSPOSED.
    Matrix-product operands: the pipeliner prefetches them with the state tiles."""
    f = tl.arange(0, F)
    if TRANSPOSED:
        offs = (3 + table) * F * MP + m[:, None] * F + f[None, :]
    else:
        offs = table * F * MP + f[:, None] * MP + m[None, :]
    return tl.load(sel + offs)


@triton.jit
def _row_constants(m, F: tl.constexpr):
    """For rows m [BR]: the factor 1 of the rows without a (ca: the constant row) and without b (cb: the constant
    and linear rows)."""
    return (m == 0).to(tl.float32), (m <= F).to(tl.float32)


@triton.jit
def _features(x, sa, sb, ca, cb, PREC: tl.constexpr):
    """x [C, F] -> (A, B [C, BR] fp32) of rows m: phi_m(x_t) = A[t, m] B[t, m] (_selection, _row_constants)."""
    ones = tl.zeros([x.shape[0], sa.shape[1]], dtype=tl.float32)
    xa = tl.dot(x, sa, ones + ca[None, :], input_precision=PREC)
    xb = tl.dot(x, sb, ones + cb[None, :], input_precision=PREC)
    return xa, xb


@triton.jit
def _features_t(xt, sa_t, sb_t, ca, cb, PREC: tl.constexpr):
    """Transposed features: xt [F, C] -> phi [BR, C] fp32 of rows m (transposed _selection)."""
    ones = tl.zeros([sa_t.shape[0], xt.shape[1]], dtype=tl.float32)
    xa = tl.dot(sa_t, xt, ones + ca[:, None], input_precision=PREC)
    xb = tl.dot(sb_t, xt, ones + cb[:, None], input_precision=PREC)
    return xa * xb


@triton.jit
def _features_grad(w, xa, xb, sa_t, sb_t, SEL_DT: tl.constexpr, SEL_PREC: tl.constexpr):
    """d/dx_t of sum_m w[t, m] phi_m(x_t) for rows m, [C, F]: the product rule on A_m B_m."""
    grad = tl.dot((w * xb).to(SEL_DT), sa_t.to(SEL_DT), input_precision=SEL_PREC)
    return tl.dot((w * xa).to(SEL_DT), sb_t.to(SEL_DT), grad, input_precision=SEL_PREC)


@triton.jit
def _sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    """(batch index, first token, length) of sequence i_n: a batch row, or a packed document of batch 0."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        seq_len = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
        i_b = 0
    else:
        bos = 0
        seq_len = T
        i_b = i_n
    return i_b, bos, seq_len


@triton.jit
def _chunk_of_program(chunk_indices, i_c, i_bh, H, T, NT, cu_seqlens, IS_VARLEN: tl.constexpr):
    """(batch, head, first token of the sequence, its length, chunk within it, global chunk row)."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_c)
        i_t = tl.load(chunk_indices + 2 * i_c + 1)
        row = i_c
        i_h = i_bh
    else:
        i_n = i_bh // H
        i_t = i_c
        row = i_n * NT + i_c
        i_h = i_bh % H
    i_b, bos, seq_len = _sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    return i_b, i_h, bos, seq_len, i_t, row.to(tl.int64)


@triton.jit
def _packed(M: tl.constexpr, D: tl.constexpr):
    """Row length of a packed fp32 state (M*D S entries, then M z entries), rounded up to 16 elements."""
    return (M * D + M + 15) // 16 * 16


@triton.jit
def _state_tile(h, state_row, rows, row_mask, cols, col_mask, M, D, TRANSPOSED: tl.constexpr):
    """Rows x cols of a chunk's state h[state_row]: [rows, cols], or [cols, rows] when TRANSPOSED."""
    if TRANSPOSED:
        tile = _tile(h + state_row * M * D, 1, D, cols, col_mask, rows, row_mask)
    else:
        tile = _tile(h + state_row * M * D, D, 1, rows, row_mask, cols, col_mask)
    return tile


@triton.jit
def _state_norm(hz, state_row, rows, M):
    """Rows of a chunk's normaliser state hz[state_row] (zeros past M)."""
    return tl.load(hz + state_row * M + rows, mask=rows < M, other=0.0)


@triton.jit
def _chunk_state_kernel(x, y, inv_den, r, h, hz, init, ends, sel, cu_seqlens, chunk_offsets,
                        sxb, sxt, sxh, sxf, syb, syt, syh, syd,
                        T, H, NT, NSEG, SEG, D: tl.constexpr, F: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                        C: tl.constexpr, BR: tl.constexpr,
                        BD: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr,
                        SUM_TOTALS: tl.constexpr, STORE_H: tl.constexpr, STORE_END: tl.constexpr,
                        SUM_Z: tl.constexpr, SKIP_UNREAD: tl.constexpr, PREC: tl.constexpr, STATE_DT: tl.constexpr,
                        STATE_PREC: tl.constexpr):
    """Scan over the chunks of one segment from its starting state: the boundary state init[sequence] (HAS_INIT:
    the initial state, or in reverse the final state's gradient) plus, with SUM_TOTALS, the totals of the earlier
    segments (REVERSE: the later ones) in ends, stored by a first pass. STORE_H: h[chunk] = the state before the
    chunk (REVERSE: the reverse-time state after it). STORE_END: ends[segment] = the state at the segment's end.
    init and ends are packed fp32 [N, H, _packed(M, D)] and [N, NSEG, H, _packed(M, D)].

    Forward: x = k, y = v, weight 1 (S = sum phi(k) v^T, z = sum phi(k)). Backward (REVERSE): x = q,
    y = do * inv_den, weight r (dS = sum phi(q) g^T, dz = sum phi(q) r). The value block 0 programs own the
    normaliser rows. Without SUM_Z (a reverse first pass without r) z stays zero: the Hopper reverse scan carries dz
    across segments itself. SKIP_UNREAD (a first pass whose end state nobody asks for): no program for the segment
    whose total the second pass never reads (forward: the last, reverse: the first).
    """
    i_r, i_v, i_nhs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_run = NSEG - SKIP_UNREAD          # segments with a program
    i_nh, i_s = i_nhs // n_run, i_nhs % n_run
    if REVERSE:
        i_s += SKIP_UNREAD
    i_n, i_h = i_nh // H, i_nh % H
    i_b, bos, seq_len = _sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    if IS_VARLEN:
        first_row = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        first_row = i_n.to(tl.int64) * NT
    first_chunk = i_s * SEG
    n_chunks = tl.minimum(tl.cdiv(seq_len, C) - first_chunk, SEG)
    f = tl.arange(0, F)
    m = i_r * BR + tl.arange(0, BR)
    m_mask = m < M
    cols = i_v * BD + tl.arange(0, BD)
    col_mask = cols < D
    tile_mask = m_mask[:, None] & col_mask[None, :]
    tile_offs = m[:, None] * D + cols[None, :]
    owns_z = i_v == 0
    sa_t = _selection(sel, SEL_A_Q if REVERSE else SEL_A_K, m, F, MP, True)
    sb_t = _selection(sel, SEL_B, m, F, MP, True)
    ca, cb = _row_constants(m, F)

    b_h = tl.zeros([BR, BD], dtype=tl.float32)
    b_z = tl.zeros([BR], dtype=tl.float32)
    if HAS_INIT:
        init_row = (i_n.to(tl.int64) * H + i_h) * _packed(M, D)
        b_h += tl.load(init + init_row + tile_offs, mask=tile_mask, other=0.0)
        b_z += tl.load(init + init_row + M * D + m, mask=m_mask, other=0.0)
    if SUM_TOTALS:
        if REVERSE:
            before, after = i_s + 1, NSEG
        else:
            before, after = 0, i_s
        for i_p in range(before, after):
            total_row = ((i_n.to(tl.int64) * NSEG + i_p) * H + i_h) * _packed(M, D)
            b_h += tl.load(ends + total_row + tile_offs, mask=tile_mask, other=0.0)
            b_z += tl.load(ends + total_row + M * D + m, mask=m_mask, other=0.0)
    segment_row = ((i_n.to(tl.int64) * NSEG + i_s) * H + i_h) * _packed(M, D)
    x_base = x + i_b * sxb + bos * sxt + i_h * sxh
    y_base = y + i_b * syb + bos * syt + i_h * syh
    tok_base = (i_b * H + i_h) * T + bos
    for i in range(n_chunks):
        if REVERSE:
            i_t = first_chunk + n_chunks - 1 - i
        else:
            i_t = first_chunk + i
        if STORE_H:
            row = (first_row + i_t) * H + i_h
            tl.store(h + row * M * D + tile_offs, b_h.to(h.dtype.element_ty), mask=tile_mask)
            if owns_z:
                tl.store(hz + row * M + m, b_z, mask=m_mask)

        t = i_t * C + tl.arange(0, C)
        t_mask = t < seq_len
        xt = _tile(x_base, sxf, sxt, f, f < F, t, t_mask)                          # [F, C]
        yc = _tile(y_base, syt, syd, t, t_mask, cols, col_mask)                   # [C, BD]
        phi = _features_t(xt, sa_t, sb_t, ca, cb, PREC)                          # [BR, C]
        if REVERSE:     # g = do * inv_den: the scale goes on phi, the operand already in registers
            w_den = tl.load(inv_den + tok_base + t, mask=t_mask, other=0.0)
            b_h = tl.dot((phi * w_den[None, :]).to(STATE_DT), yc.to(STATE_DT), b_h, input_precision=STATE_PREC)
            if SUM_Z:
                b_z += tl.sum(phi * tl.load(r + tok_base + t, mask=t_mask, other=0.0)[None, :], 1)
        else:
            b_h = tl.dot(phi.to(STATE_DT), yc.to(STATE_DT), b_h, input_precision=STATE_PREC)
            b_z += tl.sum(phi * t_mask.to(tl.float32)[None, :], 1)

    if STORE_END:
        tl.store(ends + segment_row + tile_offs, b_h, mask=tile_mask)
        if owns_z:
            tl.store(ends + segment_row + M * D + m, b_z, mask=m_mask)


@triton.jit
def _fwd_output_kernel(q, k, v, o, inv_den, h, hz, sel, cu_seqlens, chunk_indices,
                       sqb, sqt, sqh, sqf, skb, skt, skh, skf, svb, svt, svh, svd, sob, sot, soh, sod,
                       T, H, NT, eps, D: tl.constexpr,
                       F: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, PHI1_SCALE: tl.constexpr,
                       PHI2_SCALE: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
                       IS_VARLEN: tl.constexpr, DOT_DT: tl.constexpr, STATE_DT: tl.constexpr,
                       PREC: tl.constexpr, STATE_PREC: tl.constexpr):
    """o and inv_den = 1 / (den + eps) of one chunk and value block: intra-chunk quadratic term plus phi(q) against
    the chunk's state."""
    i_c, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, bos, seq_len, i_t, row = _chunk_of_program(chunk_indices, i_c, i_bh, H, T, NT, cu_seqlens, IS_VARLEN)
    f = tl.arange(0, F)
    t = i_t * C + tl.arange(0, C)
    t_mask = t < seq_len
    cols = i_v * BD + tl.arange(0, BD)
    col_mask = cols < D

    qc = _tile(q + i_b * sqb + bos * sqt + i_h * sqh, sqt, sqf, t, t_mask, f, f < F)
    kt = _tile(k + i_b * skb + bos * skt + i_h * skh, skf, skt, f, f < F, t, t_mask)       # [F, C]
    vc = _tile(v + i_b * svb + bos * svt + i_h * svh, svt, svd, t, t_mask, cols, col_mask)
    s = tl.dot(qc, kt, input_precision=PREC)
    causal = t[:, None] >= t[None, :]
    a = tl.where(causal, 1.0 + s * (PHI1_SCALE * PHI1_SCALE) + s * s * (PHI2_SCALE * PHI2_SCALE), 0.0)
    num = tl.dot(a.to(DOT_DT), vc.to(DOT_DT), input_precision=PREC)
    den_c = tl.sum(a, 1)

    state_row = row * H + i_h
    z_next = _state_norm(hz, state_row, tl.arange(0, BR), M)                          # a row block ahead
    for i_r in range(tl.cdiv(M, BR)):
        m = i_r * BR + tl.arange(0, BR)
        m_mask = m < M
        b_z = z_next
        z_next = _state_norm(hz, state_row, m + BR, M)
        sa = _selection(sel, SEL_A_Q, m, F, MP, False)
        sb = _selection(sel, SEL_B, m, F, MP, False)
        ca, cb = _row_constants(m, F)
        qa, qb = _features(qc, sa, sb, ca, cb, PREC)
        phi = qa * qb                                                                       # [C, BR]
        b_h = _state_tile(h, state_row, m, m_mask, cols, col_mask, M, D, False)
        num = tl.dot(phi.to(STATE_DT), b_h.to(STATE_DT), num, input_precision=STATE_PREC)
        den_c += tl.sum(phi * b_z[None, :], 1)

    w_den = 1.0 / (den_c + eps)
    out = num * w_den[:, None]
    o_ptrs = o + i_b * sob + bos * sot + i_h * soh + t[:, None] * sot + cols[None, :] * sod
    tl.store(o_ptrs, out.to(o.dtype.element_ty), mask=t_mask[:, None] & col_mask[None, :])
    if i_v == 0:
        tl.store(inv_den + (i_b * H + i_h) * T + bos + t, w_den, mask=t_mask)


@triton.jit
def _bwd_delta_kernel(o, do, inv_den, r, sob, sot, soh, sod, sdb, sdt, sdh, sdd, T, H, D,
                      BT: tl.constexpr, DP: tl.constexpr):
    """r = -(do . o) * inv_den per token and head, fp32 [B, H, T]."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows = i_t * BT + tl.arange(0, BT)
    row_mask = rows < T
    cols = tl.arange(0, DP)
    col_mask = cols < D
    oc = _tile(o + i_b * sob + i_h * soh, sot, sod, rows, row_mask, cols, col_mask).to(tl.float32)
    doc = _tile(do + i_b * sdb + i_h * sdh, sdt, sdd, rows, row_mask, cols, col_mask).to(tl.float32)
    idx = (i_b * H + i_h) * T + rows
    tl.store(r + idx, -tl.sum(oc * doc, 1) * tl.load(inv_den + idx, mask=row_mask, other=0.0), mask=row_mask)


@triton.jit
def _bwd_grad_kernel(q, k, v, do, inv_den, r, h, hz, dh, dhz, dq, dk, dv, sel, cu_seqlens, chunk_indices,
                     sqb, sqt, sqh, sqf, skb, skt, skh, skf, svb, svt, svh, svd, sdb, sdt, sdh, sdd,
                     sgb, sgt, sgh, sgf, skgb, skgt, skgh, skgf, svgb, svgt, svgh, svgd,
                     T, H, NT, D: tl.constexpr,
                     F: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, PHI1_SCALE: tl.constexpr,
                     PHI2_SCALE: tl.constexpr,
                     C: tl.constexpr, BR: tl.constexpr, DP: tl.constexpr, IS_VARLEN: tl.constexpr,
                     DOT_DT: tl.constexpr, STATE_DT: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr,
                     SEL_DT: tl.constexpr, SEL_PREC: tl.constexpr):
    """dq, dk and dv of one chunk, all value columns at once (DP = D padded to a power of 2): intra-chunk terms
    plus d/dq [phi(q).(S g + z r)] with the chunk's starting state, d/dk [phi(k).(dS v + dz)] and phi(k) dS with its
    ending one."""
    i_c, i_bh = tl.program_id(0), tl.program_id(2)
    i_b, i_h, bos, seq_len, i_t, row = _chunk_of_program(chunk_indices, i_c, i_bh, H, T, NT, cu_seqlens, IS_VARLEN)
    f = tl.arange(0, F)
    t = i_t * C + tl.arange(0, C)
    t_mask = t < seq_len
    q_base = q + i_b * sqb + bos * sqt + i_h * sqh
    k_base = k + i_b * skb + bos * skt + i_h * skh
    v_base = v + i_b * svb + bos * svt + i_h * svh
    do_base = do + i_b * sdb + bos * sdt + i_h * sdh
    tok = (i_b * H + i_h) * T + bos + t
    qc = _tile(q_base, sqt, sqf, t, t_mask, f, f < F)
    kc = _tile(k_base, skt, skf, t, t_mask, f, f < F)
    kt = _tile(k_base, skf, skt, f, f < F, t, t_mask)
    w_den = tl.load(inv_den + tok, mask=t_mask, other=0.0)
    r_c = tl.load(r + tok, mask=t_mask, other=0.0)

    cols = tl.arange(0, DP)
    col_mask = cols < D
    g = _tile(do_base, sdt, sdd, t, t_mask, cols, col_mask).to(tl.float32) * w_den[:, None]
    vc = _tile(v_base, svt, svd, t, t_mask, cols, col_mask)
    vt = _tile(v_base, svd, svt, cols, col_mask, t, t_mask)                                  # [DP, C]
    da = tl.dot(g.to(DOT_DT), vt.to(DOT_DT), input_precision=PREC) + r_c[:, None]
    s = tl.dot(qc, kt, input_precision=PREC)
    causal = t[:, None] >= t[None, :]
    ds = tl.where(causal, da * (PHI1_SCALE * PHI1_SCALE + 2.0 * PHI2_SCALE * PHI2_SCALE * s), 0.0)
    dq_c = tl.dot(ds.to(DOT_DT), kc, input_precision=PREC)
    dk_c = tl.dot(tl.trans(ds).to(DOT_DT), qc, input_precision=PREC)
    a = tl.where(causal, 1.0 + s * (PHI1_SCALE * PHI1_SCALE) + s * s * (PHI2_SCALE * PHI2_SCALE), 0.0)
    dv_c = tl.dot(tl.trans(a).to(DOT_DT), g.to(DOT_DT), input_precision=PREC)                # a^T g

    state_row = row * H + i_h
    z_next = _state_norm(hz, state_row, tl.arange(0, BR), M)                                # a row block ahead
    dz_next = _state_norm(dhz, state_row, tl.arange(0, BR), M)
    for i_r in range(tl.cdiv(M, BR)):
        m = i_r * BR + tl.arange(0, BR)
        m_mask = m < M
        b_z, b_dz = z_next, dz_next
        z_next = _state_norm(hz, state_row, m + BR, M)
        dz_next = _state_norm(dhz, state_row, m + BR, M)
        h_t = _state_tile(h, state_row, m, m_mask, cols, col_mask, M, D, True)                  # S^T [DP, BR]
        dh_t = _state_tile(dh, state_row, m, m_mask, cols, col_mask, M, D, True)
        wq = tl.dot(g.to(STATE_DT), h_t.to(STATE_DT), r_c[:, None] * b_z[None, :], input_precision=STATE_PREC)
        wk = tl.dot(vc.to(STATE_DT), dh_t.to(STATE_DT), b_dz[None, :] + tl.zeros([C, BR], dtype=tl.float32),
                    input_precision=STATE_PREC)                                                  # [C, BR]
        sb = _selection(sel, SEL_B, m, F, MP, False)
        sb_t = _selection(sel, SEL_B, m, F, MP, True)
        ca, cb = _row_constants(m, F)
        qa, qb = _features(qc, _selection(sel, SEL_A_Q, m, F, MP, False), sb, ca, cb, PREC)
        dq_c += _features_grad(wq, qa, qb, _selection(sel, SEL_A_Q, m, F, MP, True), sb_t, SEL_DT, SEL_PREC)
        ka, kb = _features(kc, _selection(sel, SEL_A_K, m, F, MP, False), sb, ca, cb, PREC)
        dk_c += _features_grad(wk, ka, kb, _selection(sel, SEL_A_K, m, F, MP, True), sb_t, SEL_DT, SEL_PREC)
        dv_c = tl.dot((ka * kb).to(STATE_DT), tl.trans(dh_t).to(STATE_DT), dv_c, input_precision=STATE_PREC)

    out_mask = t_mask[:, None] & (f < F)[None, :]
    tl.store(dq + i_b * sgb + (bos + t[:, None]) * sgt + i_h * sgh + f[None, :] * sgf, dq_c.to(dq.dtype.element_ty),
             mask=out_mask)
    tl.store(dk + i_b * skgb + (bos + t[:, None]) * skgt + i_h * skgh + f[None, :] * skgf,
             dk_c.to(dk.dtype.element_ty), mask=out_mask)
    tl.store(dv + i_b * svgb + (bos + t[:, None]) * svgt + i_h * svgh + cols[None, :] * svgd,
             dv_c.to(dv.dtype.element_ty), mask=t_mask[:, None] & col_mask[None, :])


@triton.jit
def _step_kernel(q, k, v, S, z, o, sqb, sqh, sqf, skb, skh, skf, svb, svh, svd, ssb, ssh, ssm, ssd, szb, szh, szm,
                 sob, soh, sod, H, D, eps,
                 F: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr, BD: tl.constexpr):
    """One decode step on the public fp32 state S [B, H, 1+F+F*F, D], z [B, H, 1+F+F*F], updated in place:
    S += phi(k) v^T, z += phi(k), o = phi(q) S / (phi(q).z + eps). One program per (batch, head); the state is
    streamed in [F, BD] row blocks (read once, written once)."""
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    f = tl.arange(0, F)
    cols = tl.arange(0, BD)
    col_mask = cols < D
    qv = tl.load(q + i_b * sqb + i_h * sqh + f * sqf).to(tl.float32)
    kv = tl.load(k + i_b * skb + i_h * skh + f * skf).to(tl.float32)
    vv = tl.load(v + i_b * svb + i_h * svh + cols * svd, mask=col_mask, other=0.0).to(tl.float32)
    s_base = S + i_b * ssb + i_h * ssh
    z_base = z + i_b * szb + i_h * szh

    s0 = tl.load(s_base + cols * ssd, mask=col_mask, other=0.0) + vv
    tl.store(s_base + cols * ssd, s0, mask=col_mask)
    z0 = tl.load(z_base) + 1.0
    tl.store(z_base, z0)
    num = s0
    den = z0
    for a in tl.static_range(1 + F):
        # row block a: the linear features (a = 0), else the quadratic features x_{a-1} x_b, b < F
        if a == 0:
            phi_k = kv * PHI1_SCALE
            phi_q = qv * PHI1_SCALE
        else:
            phi_k = kv * tl.load(k + i_b * skb + i_h * skh + (a - 1) * skf).to(tl.float32) * PHI2_SCALE
            phi_q = qv * tl.load(q + i_b * sqb + i_h * sqh + (a - 1) * sqf).to(tl.float32) * PHI2_SCALE
        rows = 1 + a * F + f
        s_ptrs = s_base + rows[:, None] * ssm + cols[None, :] * ssd
        s_block = tl.load(s_ptrs, mask=col_mask[None, :], other=0.0) + phi_k[:, None] * vv[None, :]
        tl.store(s_ptrs, s_block, mask=col_mask[None, :])
        num += tl.sum(phi_q[:, None] * s_block, 0)
        z_block = tl.load(z_base + rows * szm) + phi_k
        tl.store(z_base + rows * szm, z_block)
        den += tl.sum(phi_q * z_block, 0)
    tl.store(o + i_b * sob + i_h * soh + cols * sod, (num / (den + eps)).to(o.dtype.element_ty), mask=col_mask)
