"""Triton kernels of the chunked causal Taylor linear attention (feature dim F = 16).

Feature map (naive.py): phi(x) = [1, x * PHI1_SCALE, vec(x x^T) * PHI2_SCALE], PHI1_SCALE = F**-0.25,
PHI2_SCALE = (2F)**-0.5. vec(x x^T) is symmetric, so the kernels use the compact, equivalent map
    phi(x) = [1,  x * PHI1_SCALE,  x_a^2 * PHI2_SCALE (F diagonal features),
              x_a x_b * PHI2_SCALE * sqrt(2) (P = F(F-1)/2 = 120 off-diagonal pairs a != b, padded to 128)]
with the same dot products phi(q).phi(k) = 1 + s / sqrt(F) + s^2 / (2F), s = q.k, and 1 + 2F + 128 = 161 instead of
273 features: 40% fewer state FLOPs and a state that fits in registers. fused.py converts states between this
compact layout and the public 273-row one. Pair p (0 <= p < 128) is (a, b) = (p % F, (p % F + p // F + 1) % F):
each unordered pair once, p >= 120 are padding (zero features).

The state S = sum_j phi(k_j) v_j^T lives in registers as s0 [BD], s1 [F, BD] (linear), sd [F, BD] (diagonal),
so [P, BD] (pairs); the normaliser z = sum_j phi(k_j) as z0, z1, zd, zo. Per chunk of C tokens:
    a_ij  = 1 + s_ij / sqrt(F) + s_ij^2 / (2F) for j <= i, else 0
    num_i = sum_j a_ij v_j + phi(q_i) S,     den_i = sum_j a_ij + phi(q_i).z,     o_i = num_i / (den_i + eps)
Backward, with g_i = do_i / (den_i + eps) and r_i = -(do_i . o_i) / (den_i + eps):
    da_ij = g_i.v_j + r_i,   ds_ij = da_ij * (1/sqrt(F) + s_ij / F)
    dq_i = sum_j ds_ij k_j + d/dq_i [phi(q_i).(S g_i + z r_i)]      (forward in time, S of the earlier tokens)
    dk_j = sum_i ds_ij q_i + d/dk_j [phi(k_j).(dS v_j + dz)]        (backward in time, with
    dv_j = sum_i a_ij g_i + phi(k_j) dS                               dS = sum_{later i} phi(q_i) g_i^T,
                                                                      dz = sum_{later i} phi(q_i) r_i)

Programs run over (value block of BD columns, segment of the sequence, sequence x head). Long sequences are cut
into segments so that few long sequences still fill the GPU: _segment_state_kernel sums each segment's state and a
cumulative sum over segments gives every segment its starting state.

Every kernel takes element strides: [B, T, H, X] views of [T, B, H, X] tensors are read in place.
"""

import triton
import triton.language as tl

SQRT2 = tl.constexpr(1.4142135623730951)


@triton.jit
def _row_tile(ptr, row_stride, col_stride, rows, row_mask, cols, col_mask):
    """Load a [len(rows), len(cols)] tile (zeros outside the masks)."""
    ptrs = ptr + rows[:, None] * row_stride + cols[None, :] * col_stride
    return tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@triton.jit
def _pairs(F: tl.constexpr, P: tl.constexpr):
    """(a_p, b_p, valid_p) of the off-diagonal pairs, p < P."""
    p = tl.arange(0, P)
    a = p % F
    b = (a + p // F + 1) % F
    return a, b, p < F * (F - 1) // 2


@triton.jit
def _selectors(dtype: tl.constexpr, F: tl.constexpr, P: tl.constexpr, TRANSPOSED: tl.constexpr):
    """0/1 matrices picking x_a and x_b of each pair: [F, P] (x @ sel), or [P, F] when TRANSPOSED (sel @ x^T)."""
    a, b, valid = _pairs(F, P)
    f = tl.arange(0, F)
    if TRANSPOSED:
        sel_a = ((a[:, None] == f[None, :]) & valid[:, None]).to(dtype)
        sel_b = (b[:, None] == f[None, :]).to(dtype)
    else:
        sel_a = ((f[:, None] == a[None, :]) & valid[None, :]).to(dtype)
        sel_b = (f[:, None] == b[None, :]).to(dtype)
    return sel_a, sel_b


@triton.jit
def _row_features(x, F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr,
                  PREC: tl.constexpr):
    """x [C, F] -> phi1 [C, F], phid [C, F], phio [C, P] (fp32), and x_a, x_b [C, P] of each pair."""
    sel_a, sel_b = _selectors(x.dtype, F, P, False)
    xa = tl.dot(x, sel_a, input_precision=PREC)
    xb = tl.dot(x, sel_b, input_precision=PREC)
    xf = x.to(tl.float32)
    return xf * PHI1_SCALE, xf * xf * PHI2_SCALE, xa * xb * (PHI2_SCALE * SQRT2), xa, xb


@triton.jit
def _col_features(x, F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr,
                  PREC: tl.constexpr):
    """x [C, F] -> the transposed features phi1 [F, C], phid [F, C], phio [P, C] (fp32), x_a, x_b [P, C]."""
    sel_a, sel_b = _selectors(x.dtype, F, P, True)
    xt = tl.trans(x)
    xa = tl.dot(sel_a, xt, input_precision=PREC)
    xb = tl.dot(sel_b, xt, input_precision=PREC)
    xf = xt.to(tl.float32)
    return xf * PHI1_SCALE, xf * xf * PHI2_SCALE, xa * xb * (PHI2_SCALE * SQRT2), xa, xb


@triton.jit
def _features_grad_t(w1, wd, wo, xt, xa, xb, F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr,
                     PHI2_SCALE: tl.constexpr, SEL_PREC: tl.constexpr):
    """Transposed d/dx of phi(x).w per token: w split as w1, wd [F, C], wo [P, C]; xt [F, C]; x_a, x_b [P, C].

    Works on transposed tiles so that the state enters every product as a left operand, untransposed.
    """
    sel_a, sel_b = _selectors(tl.float32, F, P, False)
    pairs = tl.dot(sel_a, wo * xb, input_precision=SEL_PREC) + tl.dot(sel_b, wo * xa, input_precision=SEL_PREC)
    return w1 * PHI1_SCALE + wd * xt.to(tl.float32) * (2.0 * PHI2_SCALE) + pairs * (PHI2_SCALE * SQRT2)


@triton.jit
def _load_state(s_ptr, z_ptr, HAS_STATE: tl.constexpr, F: tl.constexpr, P: tl.constexpr, BD: tl.constexpr, D,
                cols, col_mask):
    """One compact state: (s0 [BD], s1 [F, BD], sd [F, BD], so [P, BD]) and (z0 [1], z1 [F], zd [F], zo [P])."""
    if HAS_STATE:
        f = tl.arange(0, F)
        p = tl.arange(0, P)
        s0 = tl.load(s_ptr + cols, mask=col_mask, other=0.0)
        s1 = _row_tile(s_ptr + D, D, 1, f, f < F, cols, col_mask)
        sd = _row_tile(s_ptr + (1 + F) * D, D, 1, f, f < F, cols, col_mask)
        so = _row_tile(s_ptr + (1 + 2 * F) * D, D, 1, p, p < P, cols, col_mask)
        z0 = tl.load(z_ptr + tl.arange(0, 1))
        z1 = tl.load(z_ptr + 1 + f)
        zd = tl.load(z_ptr + 1 + F + f)
        zo = tl.load(z_ptr + 1 + 2 * F + p)
    else:
        s0 = tl.zeros([BD], dtype=tl.float32)
        s1 = tl.zeros([F, BD], dtype=tl.float32)
        sd = tl.zeros([F, BD], dtype=tl.float32)
        so = tl.zeros([P, BD], dtype=tl.float32)
        z0 = tl.zeros([1], dtype=tl.float32)
        z1 = tl.zeros([F], dtype=tl.float32)
        zd = tl.zeros([F], dtype=tl.float32)
        zo = tl.zeros([P], dtype=tl.float32)
    return s0, s1, sd, so, z0, z1, zd, zo


@triton.jit
def _store_state(s_ptr, z_ptr, s0, s1, sd, so, z0, z1, zd, zo, F: tl.constexpr, P: tl.constexpr, D, cols,
                 col_mask, STORE_Z):
    f = tl.arange(0, F)
    p = tl.arange(0, P)
    tl.store(s_ptr + cols, s0, mask=col_mask)
    tl.store(s_ptr + (1 + f[:, None]) * D + cols[None, :], s1, mask=col_mask[None, :])
    tl.store(s_ptr + (1 + F + f[:, None]) * D + cols[None, :], sd, mask=col_mask[None, :])
    tl.store(s_ptr + (1 + 2 * F + p[:, None]) * D + cols[None, :], so, mask=col_mask[None, :])
    if STORE_Z:
        tl.store(z_ptr + tl.arange(0, 1), z0)
        tl.store(z_ptr + 1 + f, z1)
        tl.store(z_ptr + 1 + F + f, zd)
        tl.store(z_ptr + 1 + 2 * F + p, zo)


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
def _fwd_kernel(q, k, v, o, den, s_in, z_in, s_out, z_out, cu_seqlens,
                sqb, sqt, sqh, sqf, skb, skt, skh, skf, svb, svt, svh, svd, sob, sot, soh, sod,
                T, H, D, eps,
                F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr,
                C: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr, SEG: tl.constexpr,
                IS_VARLEN: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_FINAL: tl.constexpr,
                DOT_DT: tl.constexpr, STATE_DT: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr):
    i_d, i_s, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_b, bos, seq_len = _sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    seg_start = i_s * SEG
    seg_end = tl.minimum(seg_start + SEG, seq_len)
    M: tl.constexpr = 1 + 2 * F + P
    f = tl.arange(0, F)
    cols = i_d * BD + tl.arange(0, BD)
    col_mask = cols < D

    state = (i_nh * NS + i_s).to(tl.int64)
    s0, s1, sd, so, z0, z1, zd, zo = _load_state(s_in + state * M * D, z_in + state * M, HAS_STATE_IN, F, P, BD,
                                                 D, cols, col_mask)
    q_base = q + i_b * sqb + bos * sqt + i_h * sqh
    k_base = k + i_b * skb + bos * skt + i_h * skh
    v_base = v + i_b * svb + bos * svt + i_h * svh
    o_base = o + i_b * sob + bos * sot + i_h * soh
    den_base = den + (i_b * T + bos) * H + i_h
    for t0 in range(seg_start, seg_end, C):
        rows = t0 + tl.arange(0, C)
        row_mask = rows < seg_end
        qc = _row_tile(q_base, sqt, sqf, rows, row_mask, f, f < F)
        kc = _row_tile(k_base, skt, skf, rows, row_mask, f, f < F)
        vc = _row_tile(v_base, svt, svd, rows, row_mask, cols, col_mask)

        s = tl.dot(qc, tl.trans(kc), input_precision=PREC)
        a = 1.0 + s * (PHI1_SCALE * PHI1_SCALE) + s * s * (PHI2_SCALE * PHI2_SCALE)
        a = tl.where(rows[:, None] >= rows[None, :], a, 0.0)
        phi1q, phidq, phioq, _, _ = _row_features(qc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        num = tl.dot(a.to(DOT_DT), vc, input_precision=PREC)
        num += s0[None, :]
        num = tl.dot(phi1q.to(STATE_DT), s1.to(STATE_DT), num, input_precision=STATE_PREC)
        num = tl.dot(phidq.to(STATE_DT), sd.to(STATE_DT), num, input_precision=STATE_PREC)
        num = tl.dot(phioq.to(STATE_DT), so.to(STATE_DT), num, input_precision=STATE_PREC)
        den_c = tl.sum(a, 1) + z0 + tl.sum(phi1q * z1[None, :], 1) + tl.sum(phidq * zd[None, :], 1)
        den_c += tl.sum(phioq * zo[None, :], 1)
        out = num / (den_c + eps)[:, None]
        o_ptrs = o_base + rows[:, None] * sot + cols[None, :] * sod
        tl.store(o_ptrs, out.to(o.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])
        if i_d == 0:
            tl.store(den_base + rows * H, den_c, mask=row_mask)

        phi1k, phidk, phiok, _, _ = _col_features(kc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        vs = vc.to(STATE_DT)
        s0 += tl.sum(vc.to(tl.float32), 0)
        s1 = tl.dot(phi1k.to(STATE_DT), vs, s1, input_precision=STATE_PREC)
        sd = tl.dot(phidk.to(STATE_DT), vs, sd, input_precision=STATE_PREC)
        so = tl.dot(phiok.to(STATE_DT), vs, so, input_precision=STATE_PREC)
        z0 += tl.sum(row_mask.to(tl.float32), 0)
        z1 += tl.sum(phi1k, 1)
        zd += tl.sum(phidk, 1)
        zo += tl.sum(phiok, 1)

    if STORE_FINAL:
        if i_s == NS - 1:
            _store_state(s_out + i_nh.to(tl.int64) * M * D, z_out + i_nh.to(tl.int64) * M,
                         s0, s1, sd, so, z0, z1, zd, zo, F, P, D, cols, col_mask, i_d == 0)


@triton.jit
def _segment_state_kernel(x, y, den, r, s_out, z_out,
                          sxb, sxt, sxh, sxf, syb, syt, syh, syd,
                          T, H, D, eps,
                          F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr,
                          C: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr, SEG: tl.constexpr,
                          IS_BWD: tl.constexpr, PREC: tl.constexpr, STATE_DT: tl.constexpr,
                          STATE_PREC: tl.constexpr):
    """Per segment: sum_t phi(x_t) y_t^T -> s_out [N, H, NS, M, D] and sum_t phi(x_t) w_t -> z_out [N, H, NS, M].

    Forward: x = k, y = v, w = 1 (the segment's share of the state). Backward: x = q, y = do / (den + eps), w = r
    (the segment's share of the reverse-time state gradient dS). Fixed-length batches only (no cu_seqlens).
    """
    i_d, i_s, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_nh // H, i_nh % H
    seg_start = i_s * SEG
    seg_end = tl.minimum(seg_start + SEG, T)
    M: tl.constexpr = 1 + 2 * F + P
    f = tl.arange(0, F)
    cols = i_d * BD + tl.arange(0, BD)
    col_mask = cols < D

    s0, s1, sd, so, z0, z1, zd, zo = _load_state(s_out, z_out, False, F, P, BD, D, cols, col_mask)
    x_base = x + i_b * sxb + i_h * sxh
    y_base = y + i_b * syb + i_h * syh
    for t0 in range(seg_start, seg_end, C):
        rows = t0 + tl.arange(0, C)
        row_mask = rows < seg_end
        xc = _row_tile(x_base, sxt, sxf, rows, row_mask, f, f < F)
        yc = _row_tile(y_base, syt, syd, rows, row_mask, cols, col_mask).to(tl.float32)
        if IS_BWD:
            inv_den = 1.0 / (tl.load(den + (i_b * T + rows) * H + i_h, mask=row_mask, other=1.0) + eps)
            yc = yc * inv_den[:, None]
            w = tl.load(r + (i_b * T + rows) * H + i_h, mask=row_mask, other=0.0)
        else:
            w = row_mask.to(tl.float32)
        phi1, phid, phio, _, _ = _col_features(xc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        ys = yc.to(STATE_DT)
        s0 += tl.sum(yc, 0)
        s1 = tl.dot(phi1.to(STATE_DT), ys, s1, input_precision=STATE_PREC)
        sd = tl.dot(phid.to(STATE_DT), ys, sd, input_precision=STATE_PREC)
        so = tl.dot(phio.to(STATE_DT), ys, so, input_precision=STATE_PREC)
        z0 += tl.sum(w, 0)
        z1 += tl.sum(phi1 * w[None, :], 1)
        zd += tl.sum(phid * w[None, :], 1)
        zo += tl.sum(phio * w[None, :], 1)

    state = (i_nh * NS + i_s).to(tl.int64)
    _store_state(s_out + state * M * D, z_out + state * M, s0, s1, sd, so, z0, z1, zd, zo, F, P, D, cols, col_mask,
                 i_d == 0)


@triton.jit
def _bwd_delta_kernel(o, do, den, r, sob, sot, soh, sod, sdb, sdt, sdh, sdd, T, H, D, eps,
                      BT: tl.constexpr, DP: tl.constexpr):
    """r = -(do . o) / (den + eps) per token and head, fp32 [B, T, H]."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows = i_t * BT + tl.arange(0, BT)
    row_mask = rows < T
    cols = tl.arange(0, DP)
    col_mask = cols < D
    oc = _row_tile(o + i_b * sob + i_h * soh, sot, sod, rows, row_mask, cols, col_mask).to(tl.float32)
    doc = _row_tile(do + i_b * sdb + i_h * sdh, sdt, sdd, rows, row_mask, cols, col_mask).to(tl.float32)
    idx = (i_b * T + rows) * H + i_h
    den_c = tl.load(den + idx, mask=row_mask, other=1.0)
    tl.store(r + idx, -tl.sum(oc * doc, 1) / (den_c + eps), mask=row_mask)


@triton.jit
def _bwd_dq_kernel(q, k, v, do, den, r, s_in, z_in, dq, cu_seqlens,
                   sqb, sqt, sqh, sqf, skb, skt, skh, skf, svb, svt, svh, svd, sdb, sdt, sdh, sdd,
                   sgp, sgb, sgt, sgh, sgf,
                   T, H, D, eps,
                   F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr,
                   C: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr, SEG: tl.constexpr,
                   IS_VARLEN: tl.constexpr, HAS_STATE_IN: tl.constexpr,
                   DOT_DT: tl.constexpr, STATE_DT: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr,
                   SEL_PREC: tl.constexpr):
    """dq, forward in time with the state S of the earlier tokens. Value block i_d writes dq partial i_d (sgp)."""
    i_d, i_s, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_b, bos, seq_len = _sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    seg_start = i_s * SEG
    seg_end = tl.minimum(seg_start + SEG, seq_len)
    M: tl.constexpr = 1 + 2 * F + P
    f = tl.arange(0, F)
    cols = i_d * BD + tl.arange(0, BD)
    col_mask = cols < D
    first_block = (i_d == 0).to(tl.float32)       # the normaliser terms belong to one value block only

    state = (i_nh * NS + i_s).to(tl.int64)
    _s0, s1, sd, so, _z0, z1, zd, zo = _load_state(s_in + state * M * D, z_in + state * M, HAS_STATE_IN, F, P, BD, D,
                                               cols, col_mask)
    z1 *= first_block
    zd *= first_block
    zo *= first_block
    q_base = q + i_b * sqb + bos * sqt + i_h * sqh
    k_base = k + i_b * skb + bos * skt + i_h * skh
    v_base = v + i_b * svb + bos * svt + i_h * svh
    do_base = do + i_b * sdb + bos * sdt + i_h * sdh
    dq_base = dq + i_d * sgp + i_b * sgb + bos * sgt + i_h * sgh
    tok_base = (i_b * T + bos) * H + i_h
    for t0 in range(seg_start, seg_end, C):
        rows = t0 + tl.arange(0, C)
        row_mask = rows < seg_end
        qc = _row_tile(q_base, sqt, sqf, rows, row_mask, f, f < F)
        kc = _row_tile(k_base, skt, skf, rows, row_mask, f, f < F)
        vc = _row_tile(v_base, svt, svd, rows, row_mask, cols, col_mask)
        doc = _row_tile(do_base, sdt, sdd, rows, row_mask, cols, col_mask)
        den_c = tl.load(den + tok_base + rows * H, mask=row_mask, other=1.0)
        r_c = tl.load(r + tok_base + rows * H, mask=row_mask, other=0.0) * first_block
        g = doc.to(tl.float32) / (den_c + eps)[:, None]

        s = tl.dot(qc, tl.trans(kc), input_precision=PREC)
        da = tl.dot(g.to(DOT_DT), tl.trans(vc), input_precision=PREC) + r_c[:, None]
        da_ds = PHI1_SCALE * PHI1_SCALE + 2.0 * PHI2_SCALE * PHI2_SCALE * s
        ds = tl.where(rows[:, None] >= rows[None, :], da * da_ds, 0.0)
        dq_c = tl.dot(ds.to(DOT_DT), kc, input_precision=PREC)

        gt = tl.trans(g.to(STATE_DT))                                   # [BD, C]
        w1 = tl.dot(s1.to(STATE_DT), gt, input_precision=STATE_PREC) + z1[:, None] * r_c[None, :]
        wd = tl.dot(sd.to(STATE_DT), gt, input_precision=STATE_PREC) + zd[:, None] * r_c[None, :]
        wo = tl.dot(so.to(STATE_DT), gt, input_precision=STATE_PREC) + zo[:, None] * r_c[None, :]
        _, _, _, qa, qb = _col_features(qc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        dq_t = _features_grad_t(w1, wd, wo, tl.trans(qc), qa, qb, F, P, PHI1_SCALE, PHI2_SCALE, SEL_PREC)
        dq_c += tl.trans(dq_t)
        dq_ptrs = dq_base + rows[:, None] * sgt + f[None, :] * sgf
        tl.store(dq_ptrs, dq_c.to(dq.dtype.element_ty), mask=row_mask[:, None])

        phi1k, phidk, phiok, _, _ = _col_features(kc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        vs = vc.to(STATE_DT)
        s1 = tl.dot(phi1k.to(STATE_DT), vs, s1, input_precision=STATE_PREC)
        sd = tl.dot(phidk.to(STATE_DT), vs, sd, input_precision=STATE_PREC)
        so = tl.dot(phiok.to(STATE_DT), vs, so, input_precision=STATE_PREC)
        z1 += tl.sum(phi1k, 1) * first_block
        zd += tl.sum(phidk, 1) * first_block
        zo += tl.sum(phiok, 1) * first_block


@triton.jit
def _bwd_dkdv_kernel(q, k, v, do, den, r, ds_in, dz_in, dk, dv, ds_out, dz_out, cu_seqlens,
                     sqb, sqt, sqh, sqf, skb, skt, skh, skf, svb, svt, svh, svd, sdb, sdt, sdh, sdd,
                     sgp, sgb, sgt, sgh, sgf, swb, swt, swh, swd,
                     T, H, D, eps,
                     F: tl.constexpr, P: tl.constexpr, PHI1_SCALE: tl.constexpr, PHI2_SCALE: tl.constexpr,
                     C: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr, SEG: tl.constexpr,
                     IS_VARLEN: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_INITIAL_GRAD: tl.constexpr,
                     DOT_DT: tl.constexpr, STATE_DT: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr,
                     SEL_PREC: tl.constexpr):
    """dk, dv, backward in time with dS = sum over later tokens of phi(q_i) g_i^T (and dz = sum phi(q_i) r_i).

    ds_in/dz_in hold dS, dz at the END of each segment; segment 0 ends at the sequence start with the gradient of
    the initial state, stored in ds_out/dz_out when STORE_INITIAL_GRAD.
    """
    i_d, i_s, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_b, bos, seq_len = _sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    seg_start = i_s * SEG
    seg_end = tl.minimum(seg_start + SEG, seq_len)
    M: tl.constexpr = 1 + 2 * F + P
    f = tl.arange(0, F)
    cols = i_d * BD + tl.arange(0, BD)
    col_mask = cols < D
    first_block = (i_d == 0).to(tl.float32)

    state = (i_nh * NS + i_s).to(tl.int64)
    ds0, ds1, dsd, dso, dz0, dz1, dzd, dzo = _load_state(ds_in + state * M * D, dz_in + state * M, HAS_STATE_IN,
                                                         F, P, BD, D, cols, col_mask)
    q_base = q + i_b * sqb + bos * sqt + i_h * sqh
    k_base = k + i_b * skb + bos * skt + i_h * skh
    v_base = v + i_b * svb + bos * svt + i_h * svh
    do_base = do + i_b * sdb + bos * sdt + i_h * sdh
    dk_base = dk + i_d * sgp + i_b * sgb + bos * sgt + i_h * sgh
    dv_base = dv + i_b * swb + bos * swt + i_h * swh
    tok_base = (i_b * T + bos) * H + i_h
    n_chunks = tl.cdiv(seg_end - seg_start, C)
    for i_c in range(n_chunks):
        t0 = seg_start + (n_chunks - 1 - i_c) * C
        rows = t0 + tl.arange(0, C)
        row_mask = rows < seg_end
        qc = _row_tile(q_base, sqt, sqf, rows, row_mask, f, f < F)
        kc = _row_tile(k_base, skt, skf, rows, row_mask, f, f < F)
        vc = _row_tile(v_base, svt, svd, rows, row_mask, cols, col_mask)
        doc = _row_tile(do_base, sdt, sdd, rows, row_mask, cols, col_mask)
        den_c = tl.load(den + tok_base + rows * H, mask=row_mask, other=1.0)
        r_c = tl.load(r + tok_base + rows * H, mask=row_mask, other=0.0) * first_block
        g = doc.to(tl.float32) / (den_c + eps)[:, None]

        causal = rows[:, None] >= rows[None, :]
        s = tl.dot(qc, tl.trans(kc), input_precision=PREC)
        a = tl.where(causal, 1.0 + s * (PHI1_SCALE * PHI1_SCALE) + s * s * (PHI2_SCALE * PHI2_SCALE), 0.0)
        da = tl.dot(g.to(DOT_DT), tl.trans(vc), input_precision=PREC) + r_c[:, None]
        ds = tl.where(causal, da * (PHI1_SCALE * PHI1_SCALE + 2.0 * PHI2_SCALE * PHI2_SCALE * s), 0.0)
        dk_c = tl.dot(tl.trans(ds).to(DOT_DT), qc, input_precision=PREC)
        dv_c = tl.dot(tl.trans(a).to(DOT_DT), g.to(DOT_DT), input_precision=PREC)

        phi1k, phidk, phiok, _, _ = _row_features(kc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        dv_c += ds0[None, :]
        dv_c = tl.dot(phi1k.to(STATE_DT), ds1.to(STATE_DT), dv_c, input_precision=STATE_PREC)
        dv_c = tl.dot(phidk.to(STATE_DT), dsd.to(STATE_DT), dv_c, input_precision=STATE_PREC)
        dv_c = tl.dot(phiok.to(STATE_DT), dso.to(STATE_DT), dv_c, input_precision=STATE_PREC)
        vt = tl.trans(vc.to(STATE_DT))                                  # [BD, C]
        u1 = tl.dot(ds1.to(STATE_DT), vt, input_precision=STATE_PREC) + dz1[:, None] * first_block
        ud = tl.dot(dsd.to(STATE_DT), vt, input_precision=STATE_PREC) + dzd[:, None] * first_block
        uo = tl.dot(dso.to(STATE_DT), vt, input_precision=STATE_PREC) + dzo[:, None] * first_block
        _, _, _, ka, kb = _col_features(kc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        dk_t = _features_grad_t(u1, ud, uo, tl.trans(kc), ka, kb, F, P, PHI1_SCALE, PHI2_SCALE, SEL_PREC)
        dk_c += tl.trans(dk_t)
        tl.store(dk_base + rows[:, None] * sgt + f[None, :] * sgf, dk_c.to(dk.dtype.element_ty),
                 mask=row_mask[:, None])
        tl.store(dv_base + rows[:, None] * swt + cols[None, :] * swd, dv_c.to(dv.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])

        phi1q, phidq, phioq, _, _ = _col_features(qc, F, P, PHI1_SCALE, PHI2_SCALE, PREC)
        gs = g.to(STATE_DT)
        ds0 += tl.sum(g, 0)
        ds1 = tl.dot(phi1q.to(STATE_DT), gs, ds1, input_precision=STATE_PREC)
        dsd = tl.dot(phidq.to(STATE_DT), gs, dsd, input_precision=STATE_PREC)
        dso = tl.dot(phioq.to(STATE_DT), gs, dso, input_precision=STATE_PREC)
        dz0 += tl.sum(r_c, 0)
        dz1 += tl.sum(phi1q * r_c[None, :], 1)
        dzd += tl.sum(phidq * r_c[None, :], 1)
        dzo += tl.sum(phioq * r_c[None, :], 1)

    if STORE_INITIAL_GRAD:
        if i_s == 0:
            _store_state(ds_out + i_nh.to(tl.int64) * M * D, dz_out + i_nh.to(tl.int64) * M,
                         ds0, ds1, dsd, dso, dz0, dz1, dzd, dzo, F, P, D, cols, col_mask, i_d == 0)


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
