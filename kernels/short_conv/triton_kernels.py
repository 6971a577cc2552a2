"""Triton kernels of the BaseConv core: y = silu(conv) * g, conv[t] = bias + sum_j w[j] u[t - (K-1) + j].

u, g, y: [B, T, C] with any strides; weight [C, K]; bias [C]; the conv state holds the K-1 inputs before t = 0,
[B, C, K-1], oldest first. Programs tile (BT time steps) x (BC channels) of one batch row; all math in fp32.
Backward, with act = silu(conv) and dconv = dy * g * silu'(conv):
    dg = dy * act,   du[t] = sum_j w[j] dconv[t + (K-1) - j],   dw[j] = sum_t dconv[t] u[t - (K-1) + j],
    dbias = sum_t dconv[t]. The backward computes dconv once per step (tile + halo), shifts it through a small
    per-program scratch slot, and sums dw and dbias in registers over each program's tiles; the caller adds the
    programs' sums.
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
def _bwd_kernel(u, g, weight, bias, state, dy, du, dg, dwb_part, scratch,
                sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc, ssb, ssc, sss, swc, swk,
                T, C, n_tiles, tiles_per_row, K: tl.constexpr, HAS_STATE: tl.constexpr, BT: tl.constexpr,
                BC: tl.constexpr):
    """Program (p, i_c) takes channel block i_c and the (batch row, time tile) pairs p, p + P, ... (P programs).
    A time tile owns its first BT-(K-1) steps; the K-1 after them (the halo) are recomputed so that dconv is known at
    t + m for every owned t. dconv is computed once per step, written to this program's [BT, BC] fp32 scratch slot
    and read back shifted by m = 0..K-1 rows, which gives both
        du[t] += w[K-1-m] dconv[t + m]   and   dw[K-1-m] += u[t] dconv[t + m]   (t owned).
    dw and dbias are summed elementwise in registers over the program's tiles and reduced once, into
    dwb_part [P, K + 1, C] fp32: row j < K holds dw[j], row K dbias, of this program's tiles and channels."""
    p, n_prog, i_c = tl.program_id(0), tl.num_programs(0), tl.program_id(1)
    OWN: tl.constexpr = BT - (K - 1)
    steps = tl.arange(0, BT)
    chans = i_c * BC + tl.arange(0, BC)
    chan_mask = chans < C
    bias_c = tl.load(bias + chans, mask=chan_mask, other=0.0).to(tl.float32)
    w_cols = _weight_columns(weight, chans, chan_mask, swc, swk, K)
    slot = scratch + (i_c * n_prog + p).to(tl.int64) * BT * BC + tl.arange(0, BC)[None, :]
    db_acc = tl.zeros([BT, BC], dtype=tl.float32)
    dw_acc = _zero_tiles(K, BT, BC)                  # dw_acc[j]: elementwise partial sums of dw[j]
    for tile in range(p, n_tiles, n_prog):
        i_b = tile // tiles_per_row
        start = (tile % tiles_per_row) * OWN
        rows = start + steps
        in_seq = (rows < T)[:, None] & chan_mask[None, :]
        own_mask = (steps < OWN)[:, None] & in_seq
        u_now = tl.load(u + i_b * sub + rows[:, None] * sut + chans[None, :] * suc, mask=in_seq, other=0.0)
        u_now = u_now.to(tl.float32)
        dconv = _dconv_and_dg(u, g, state, dy, dg, u_now, w_cols, bias_c, i_b, rows, chans, chan_mask, in_seq,
                              own_mask, T, sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc, ssb, ssc, sss, K, HAS_STATE)
        tl.debug_barrier()                       # every thread is done reading the previous tile's slot
        tl.store(slot + steps[:, None] * BC, dconv)
        tl.debug_barrier()
        db_acc += tl.where(own_mask, dconv, 0.0)
        u_own = tl.where(own_mask, u_now, 0.0)
        du_acc = tl.zeros([BT, BC], dtype=tl.float32)
        updated = ()
        for m in tl.static_range(K):
            ahead = tl.load(slot + (steps[:, None] + m) * BC, mask=(steps < BT - m)[:, None], other=0.0)
            du_acc += ahead * w_cols[K - 1 - m][None, :]
            update = u_own * ahead
            if HAS_STATE:
                update += _state_dw_terms(u, state, slot, i_b, start, steps, chans, chan_mask, T, sub, sut, suc,
                                          ssb, ssc, sss, m, K, BT, BC)
            updated = (dw_acc[K - 1 - m] + update,) + updated
        dw_acc = updated
        tl.store(du + i_b * sub + rows[:, None] * sut + chans[None, :] * suc, du_acc.to(du.dtype.element_ty),
                 mask=own_mask)
    part = dwb_part + p.to(tl.int64) * (K + 1) * C + chans
    for j in tl.static_range(K):
        tl.store(part + j * C, tl.sum(dw_acc[j], 0), mask=chan_mask)
    tl.store(part + K * C, tl.sum(db_acc, 0), mask=chan_mask)


@triton.jit
def _weight_columns(weight, chans, chan_mask, swc, swk, K: tl.constexpr):
    """The K taps of the channels `chans`: a tuple of K fp32 [BC] vectors."""
    taps = ()
    for j in tl.static_range(K):
        taps = taps + (tl.load(weight + chans * swc + j * swk, mask=chan_mask, other=0.0).to(tl.float32),)
    return taps


@triton.jit
def _zero_tiles(K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """A tuple of K fp32 [BT, BC] zero tiles."""
    return (tl.zeros([BT, BC], dtype=tl.float32),) * K


@triton.jit
def _state_dw_terms(u, state, slot, i_b, start, steps, chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss,
                    m: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """The terms of dw[K-1-m] whose input comes from the initial state: x[s] dconv[s + m] for s = -(K-1)..-1,
    laid on tile rows r = s + K-1 (nonzero only in the first tile of a sequence, whose dconv is in `slot`)."""
    n_hist = tl.where(start == 0, K - 1, 0)
    hist = _shifted_input(u, state, i_b, tl.where(steps < n_hist, steps - (K - 1), -K), chans, chan_mask, T,
                          sub, sut, suc, ssb, ssc, sss, K, True)
    pair = (steps < n_hist) & (steps >= K - 1 - m)
    return hist * tl.load(slot + (steps[:, None] + (m - (K - 1))) * BC, mask=pair[:, None], other=0.0)


@triton.jit
def _dconv_and_dg(u, g, state, dy, dg, u_now, w_cols, bias_c, i_b, rows, chans, chan_mask, in_seq, own_mask, T,
                  sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc, ssb, ssc, sss, K: tl.constexpr, HAS_STATE: tl.constexpr):
    """dconv = dy * g * silu'(conv) at time steps `rows` (0 past the end), fp32; stores dg = dy * silu(conv) on the
    owned steps. u_now: u at `rows`, fp32; w_cols: the K taps, fp32 [BC] each."""
    conv = bias_c[None, :] + u_now * w_cols[K - 1][None, :]
    for j in tl.static_range(K - 1):
        x = _shifted_input(u, state, i_b, rows + (j - (K - 1)), chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss,
                           K, HAS_STATE)
        conv += x * w_cols[j][None, :]
    sig = tl.sigmoid(conv)
    grad = tl.load(dy + i_b * sdb + rows[:, None] * sdt + chans[None, :] * sdc, mask=in_seq, other=0.0)
    grad = grad.to(tl.float32)
    tl.store(dg + i_b * sgb + rows[:, None] * sgt + chans[None, :] * sgc,
             (grad * conv * sig).to(dg.dtype.element_ty), mask=own_mask)
    gate = tl.load(g + i_b * sgb + rows[:, None] * sgt + chans[None, :] * sgc, mask=in_seq, other=0.0)
    return grad * gate.to(tl.float32) * sig * (1.0 + conv * (1.0 - sig))


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
