"""Triton kernels of the BaseConv core: y = silu(conv) * g, conv[t] = bias + sum_j w[j] u[t - (K-1) + j].

u, g, y: [B, T, C] with any strides; weight [C, K]; bias [C]; the conv state holds the K-1 inputs before t = 0,
[B, C, K-1], oldest first. All math in fp32. The forward tiles (BT time steps) x (BC channels) of one batch row.
Backward, with act = silu(conv) and dconv = dy * g * silu'(conv):
    dg = dy * act,   du[t] = sum_j w[j] dconv[t + (K-1) - j],   dw[j] = sum_t dconv[t] u[t - (K-1) + j],
    dbias = sum_t dconv[t]. _bwd_kernel computes dconv once per step and walks time one step at a time per thread,
    keeping the last K-1 steps in registers, so that the shifts by up to K-1 steps cost nothing; it sums dw and
    dbias in registers per program, and the caller adds the programs' sums.
"""

import triton
import triton.language as tl


@triton.jit
def _shifted_input(u, state, i_b, rows, chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss,
                   K: tl.constexpr, HAS_STATE: tl.constexpr):
    """u at time steps `rows` (may be negative: read from the conv state, or zero without one), fp32 [BT, BC]."""
    inside = (rows >= 0) & (rows < T)
    x = tl.load(u + i_b * sub + rows[:, None] * sut + chans[None, :] * suc,
                mask=inside[:, None] & chan_mask[None, :], other=0.0).to(tl.float32)
    if HAS_STATE:
        before = rows < 0
        hist = tl.load(state + i_b * ssb + chans[None, :] * ssc + (rows[:, None] + K - 1) * sss,
                       mask=before[:, None] & (rows[:, None] + K - 1 >= 0) & chan_mask[None, :], other=0.0)
        x += hist.to(tl.float32)
    return x


@triton.jit
def _conv_at(u, state, weight, bias_c, i_b, rows, chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss, swc, swk,
             K: tl.constexpr, HAS_STATE: tl.constexpr):
    """conv at time steps `rows`, fp32 [BT, BC]."""
    acc = tl.zeros([rows.shape[0], chans.shape[0]], dtype=tl.float32) + bias_c[None, :]
    for j in tl.static_range(K):
        w_j = tl.load(weight + chans * swc + j * swk, mask=chan_mask, other=0.0).to(tl.float32)
        x = _shifted_input(u, state, i_b, rows + (j - (K - 1)), chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss,
                           K, HAS_STATE)
        acc += x * w_j[None, :]
    return acc


@triton.jit
def _fwd_kernel(u, g, weight, bias, state, y,
                sub, sut, suc, sgb, sgt, sgc, syb, syt, syc, ssb, ssc, sss, swc, swk,
                T, C, K: tl.constexpr, HAS_STATE: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = i_t * BT + tl.arange(0, BT)
    chans = i_c * BC + tl.arange(0, BC)
    row_mask = rows < T
    chan_mask = chans < C
    mask = row_mask[:, None] & chan_mask[None, :]
    bias_c = tl.load(bias + chans, mask=chan_mask, other=0.0).to(tl.float32)
    conv = _conv_at(u, state, weight, bias_c, i_b, rows, chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss, swc, swk,
                    K, HAS_STATE)
    gate = tl.load(g + i_b * sgb + rows[:, None] * sgt + chans[None, :] * sgc, mask=mask, other=0.0)
    out = conv * tl.sigmoid(conv) * gate.to(tl.float32)
    tl.store(y + i_b * syb + rows[:, None] * syt + chans[None, :] * syc, out.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _weight_columns(weight, chans, chan_mask, swc, swk, K: tl.constexpr):
    """The K taps of the channels `chans`: a tuple of K fp32 [BC] vectors."""
    taps = ()
    for j in tl.static_range(K):
        taps = taps + (tl.load(weight + chans * swc + j * swk, mask=chan_mask, other=0.0).to(tl.float32),)
    return taps


@triton.jit
def _bwd_kernel(u, g, weight, bias, state, dy, du, dg, dwb_part,
                sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc, ssb, ssc, sss, swc, swk,
                T, C, n_segments, K: tl.constexpr, HAS_STATE: tl.constexpr, SEG: tl.constexpr,
                ROWS: tl.constexpr, BC: tl.constexpr, PREFETCH: tl.constexpr):
    """Row-streaming backward: program (i_s, i_c, i_b) owns time steps [i_s SEG, (i_s + 1) SEG) x channel block i_c
    of batch row i_b and walks them one time step at a time, ROWS steps per loop iteration, each step a [BC] vector.
    The last K-1 inputs u and the last K-1 dconv stay in registers as tuples, so shifting by a time step is a
    renaming at compile time (no scratch, no barrier, no shuffle):
        conv[t] = bias + sum_j w[j] u[t-(K-1)+j],   dw[j] += dconv[t] u[t-(K-1)+j],
        du[t-(K-1)] = sum_m w[K-1-m] dconv[t-(K-1)+m]   (stored K-1 steps behind).
    The K-1 steps after the segment (the halo) are recomputed for du only; the K-1 inputs before it come from u (or
    the initial state, which also gives its dw terms). A segment reaching past T stops at the first multiple of ROWS
    steps at or after T (its halo is then past T: zero). dw and dbias of the segment go to
    dwb_part [B * n_segments, K + 1, C] fp32 (row j < K: dw[j], row K: dbias).
    PREFETCH: the loads of the next ROWS steps are issued before the current ones are used (a hand-made double
    buffer; the last one fetches the halo)."""
    i_s, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = i_s * SEG
    stop = start + tl.minimum(SEG, tl.cdiv(T - start, ROWS) * ROWS)     # steps walked: [start, stop), then the halo
    end = tl.minimum(T, start + SEG + K - 1)            # steps read: [start - (K-1), end)
    chans = i_c * BC + tl.arange(0, BC)
    chan_mask = chans < C
    w_cols = _weight_columns(weight, chans, chan_mask, swc, swk, K)
    bias_c = tl.load(bias + chans, mask=chan_mask, other=0.0).to(tl.float32)
    u_hist = ()                                         # u at t-(K-1) .. t-1
    d_hist = ()                                         # dconv at t-(K-1) .. t-1 (du of steps before start: unused)
    for j in tl.static_range(K - 1):
        u_hist = u_hist + (_input_row(u, state, i_b, start - (K - 1) + j, chans, T, C, sub, sut, suc,
                                      ssb, ssc, sss, K, HAS_STATE),)
        d_hist = d_hist + (tl.zeros([BC], dtype=tl.float32),)
    dw_acc = (tl.zeros([BC], dtype=tl.float32),) * K
    db_acc = tl.zeros([BC], dtype=tl.float32)
    if PREFETCH:
        rows_next = _load_rows(u, g, dy, i_b, start, end, chans, C, sub, sut, suc, sgb, sgt, sgc,
                               sdb, sdt, sdc, ROWS)
    for row0 in range(start, stop, ROWS):
        if PREFETCH:
            rows_now = rows_next
            rows_next = _load_rows(u, g, dy, i_b, row0 + ROWS, end, chans, C, sub, sut, suc, sgb, sgt, sgc,
                                   sdb, sdt, sdc, ROWS)
        else:
            rows_now = _load_rows(u, g, dy, i_b, row0, end, chans, C, sub, sut, suc, sgb, sgt, sgc,
                                  sdb, sdt, sdc, ROWS)
        for r in tl.static_range(ROWS):
            t = row0 + r
            window = u_hist + (rows_now[0][r].to(tl.float32),)
            dconv, d_gate = _dconv_row(window, rows_now[1][r], rows_now[2][r], w_cols, bias_c, K)
            tl.store(dg + i_b * sgb + t * sgt + chans * sgc, d_gate.to(dg.dtype.element_ty),
                     mask=_row_mask(chans, C, t < T))
            dw_new = ()
            for j in tl.static_range(K):
                dw_new = dw_new + (dw_acc[j] + dconv * window[j],)
            dw_acc = dw_new
            db_acc += dconv
            d_hist = _store_du_row(du, d_hist + (dconv,), w_cols, i_b, t - (K - 1), start, T, C, chans,
                                   sub, sut, suc, K)
            u_hist = window[1:]
    if PREFETCH and ROWS >= K - 1:
        halo = rows_next
    else:
        halo = _load_rows(u, g, dy, i_b, stop, end, chans, C, sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc, K - 1)
    for r in tl.static_range(K - 1):
        t = stop + r
        window = u_hist + (halo[0][r].to(tl.float32),)
        dconv, _ = _dconv_row(window, halo[1][r], halo[2][r], w_cols, bias_c, K)
        d_hist = _store_du_row(du, d_hist + (dconv,), w_cols, i_b, t - (K - 1), start, T, C, chans,
                               sub, sut, suc, K)
        u_hist = window[1:]
    part = dwb_part + (i_b * n_segments + i_s).to(tl.int64) * (K + 1) * C + chans
    for j in tl.static_range(K):
        tl.store(part + j * C, dw_acc[j], mask=chan_mask)
    tl.store(part + K * C, db_acc, mask=chan_mask)


@triton.jit
def _row_mask(chans, C, row_ok):
    """chans < C where the time step is valid (row_ok, a scalar), else nothing; one compare per element."""
    return chans < tl.where(row_ok, C, 0)


@triton.jit
def _input_row(u, state, i_b, row, chans, T, C, sub, sut, suc, ssb, ssc, sss, K: tl.constexpr,
               HAS_STATE: tl.constexpr):
    """u at time step `row` (may be negative: read from the conv state, or zero without one), fp32 [BC]."""
    x = tl.load(u + i_b * sub + row * sut + chans * suc, mask=_row_mask(chans, C, (row >= 0) & (row < T)),
                other=0.0)
    x = x.to(tl.float32)
    if HAS_STATE:
        hist = tl.load(state + i_b * ssb + chans * ssc + (row + K - 1) * sss,
                       mask=_row_mask(chans, C, (row < 0) & (row + K - 1 >= 0)), other=0.0)
        x += hist.to(tl.float32)
    return x


@triton.jit
def _load_rows(u, g, dy, i_b, row0, end, chans, C, sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc,
               ROWS: tl.constexpr):
    """u, g, dy at time steps row0 .. row0+ROWS-1 as stored (zero from `end` on): three tuples of ROWS [BC]."""
    u_rows, g_rows, dy_rows = (), (), ()
    for r in tl.static_range(ROWS):
        mask = _row_mask(chans, C, row0 + r < end)
        u_rows = u_rows + (tl.load(u + i_b * sub + (row0 + r) * sut + chans * suc, mask=mask, other=0.0),)
        g_rows = g_rows + (tl.load(g + i_b * sgb + (row0 + r) * sgt + chans * sgc, mask=mask, other=0.0),)
        dy_rows = dy_rows + (tl.load(dy + i_b * sdb + (row0 + r) * sdt + chans * sdc, mask=mask, other=0.0),)
    return u_rows, g_rows, dy_rows


@triton.jit
def _dconv_row(window, gate, grad, w_cols, bias_c, K: tl.constexpr):
    """(dconv, dg) of one time step, fp32 [BC]: window = the K inputs u[t-(K-1)..t] (fp32), gate and grad as stored."""
    conv = bias_c
    for j in tl.static_range(K):
        conv += window[j] * w_cols[j]
    sig = tl.sigmoid(conv)
    grad = grad.to(tl.float32)
    dconv = grad * gate.to(tl.float32) * sig * (1.0 + conv * (1.0 - sig))
    return dconv, grad * conv * sig


@triton.jit
def _store_du_row(du, d_window, w_cols, i_b, row, start, T, C, chans, sub, sut, suc, K: tl.constexpr):
    """Stores du[row] = sum_m w[K-1-m] dconv[row + m] if start <= row < T (d_window: dconv at row .. row + K-1);
    returns the last K-1 dconv (the window of the next step)."""
    du_row = d_window[0] * w_cols[K - 1]
    for m in tl.static_range(1, K):
        du_row += d_window[m] * w_cols[K - 1 - m]
    tl.store(du + i_b * sub + row * sut + chans * suc, du_row.to(du.dtype.element_ty),
             mask=_row_mask(chans, C, (row >= start) & (row < T)))
    return d_window[1:]


@triton.jit
def _step_kernel(u, g, state, weight, bias, y, sub, suc, sgb, sgc, ssb, ssc, sss, swc, swk, syb, syc,
                 C, K: tl.constexpr, BC: tl.constexpr):
    """One token per batch row: y = silu(w . [state, u] + bias) * g; the state shifts left by one, u enters last."""
    i_b, i_c = tl.program_id(0), tl.program_id(1)
    chans = i_c * BC + tl.arange(0, BC)
    chan_mask = chans < C
    x_new = tl.load(u + i_b * sub + chans * suc, mask=chan_mask, other=0.0)
    acc = tl.load(bias + chans, mask=chan_mask, other=0.0).to(tl.float32)
    acc += x_new.to(tl.float32) * tl.load(weight + chans * swc + (K - 1) * swk, mask=chan_mask).to(tl.float32)
    state_row = state + i_b * ssb + chans * ssc
    for j in tl.static_range(K - 1):
        x_j = tl.load(state_row + j * sss, mask=chan_mask, other=0.0)
        acc += x_j.to(tl.float32) * tl.load(weight + chans * swc + j * swk, mask=chan_mask).to(tl.float32)
        if j > 0:
            tl.store(state_row + (j - 1) * sss, x_j, mask=chan_mask)
    tl.store(state_row + (K - 2) * sss, x_new.to(state.dtype.element_ty), mask=chan_mask)
    gate = tl.load(g + i_b * sgb + chans * sgc, mask=chan_mask, other=0.0).to(tl.float32)
    tl.store(y + i_b * syb + chans * syc, (acc * tl.sigmoid(acc) * gate).to(y.dtype.element_ty), mask=chan_mask)
