"""Triton kernels of the BaseConv core: y = silu(conv) * g, conv[t] = bias + sum_j w[j] u[t - (K-1) + j].

u, g, y: [B, T, C] with any strides; weight [C, K]; bias [C]; the conv state holds the K-1 inputs before t = 0,
[B, C, K-1], oldest first. Programs tile (BT time steps) x (BC channels) of one batch row; all math in fp32.
Backward, with act = silu(conv) and dconv = dy * g * silu'(conv):
    dg = dy * act,   du[t] = sum_j w[j] dconv[t + (K-1) - j],   dw[j] = sum_t dconv[t] u[t - (K-1) + j],
    dbias = sum_t dconv[t]; dw and dbias are written per program and summed by the caller.
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
def _bwd_kernel(u, g, weight, bias, state, dy, du, dg, dw_part, db_part,
                sub, sut, suc, sgb, sgt, sgc, sdb, sdt, sdc, ssb, ssc, sss, swc, swk,
                T, C, K: tl.constexpr, HAS_STATE: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """du, dg (same layouts as u, g: strides su*, sg*; dy strides sd*), dw_part [n_programs_bt, C, K] and
    db_part [n_programs_bt, C] fp32 partial sums."""
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = i_t * BT + tl.arange(0, BT)
    chans = i_c * BC + tl.arange(0, BC)
    chan_mask = chans < C
    bias_c = tl.load(bias + chans, mask=chan_mask, other=0.0).to(tl.float32)
    du_acc = tl.zeros([BT, BC], dtype=tl.float32)
    for m in tl.static_range(K):
        # dconv at t + m feeds du[t] through w[K-1-m]
        rows_m = rows + m
        mask_m = (rows_m < T)[:, None] & chan_mask[None, :]
        conv = _conv_at(u, state, weight, bias_c, i_b, rows_m, chans, chan_mask, T, sub, sut, suc, ssb, ssc, sss,
                        swc, swk, K, HAS_STATE)
        gate = tl.load(g + i_b * sgb + rows_m[:, None] * sgt + chans[None, :] * sgc, mask=mask_m, other=0.0)
        grad = tl.load(dy + i_b * sdb + rows_m[:, None] * sdt + chans[None, :] * sdc, mask=mask_m, other=0.0)
        grad = grad.to(tl.float32)
        sig = tl.sigmoid(conv)
        dconv = grad * gate.to(tl.float32) * sig * (1.0 + conv * (1.0 - sig))
        w_m = tl.load(weight + chans * swc + (K - 1 - m) * swk, mask=chan_mask, other=0.0).to(tl.float32)
        du_acc += dconv * w_m[None, :]
        if m == 0:
            mask = mask_m
            tl.store(dg + i_b * sgb + rows[:, None] * sgt + chans[None, :] * sgc,
                     (grad * conv * sig).to(dg.dtype.element_ty), mask=mask)
            part = (i_b * tl.num_programs(0) + i_t).to(tl.int64)
            tl.store(db_part + part * C + chans, tl.sum(dconv, 0), mask=chan_mask)
            for j in tl.static_range(K):
                x = _shifted_input(u, state, i_b, rows + (j - (K - 1)), chans, chan_mask, T, sub, sut, suc,
                                   ssb, ssc, sss, K, HAS_STATE)
                tl.store(dw_part + (part * C + chans) * K + j, tl.sum(dconv * x, 0), mask=chan_mask)
    tl.store(du + i_b * sub + rows[:, None] * sut + chans[None, :] * suc, du_acc.to(du.dtype.element_ty),
             mask=(rows < T)[:, None] & chan_mask[None, :])


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
