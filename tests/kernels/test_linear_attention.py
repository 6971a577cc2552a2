"""Fused Taylor linear attention (Triton, interpreted on CPU) against the fp64 reference: outputs, all input
gradients, state in/out, varlen, strided views; fresh random inputs per test."""

import os
import subprocess
import sys

import pytest
import torch
import triton

from based_kernels.linear_attention.fused import (COMPACT_FEATURES, FEATURE_TABLE_ROWS, FEATURES, LaunchConfig,
                                                  feature_tables, linear_attention_fused, linear_attention_step_fused,
                                                  to_compact, to_public)
from based_kernels.linear_attention.naive import linear_attention_reference, linear_attention_step

TOL = {torch.float32: 1e-4, torch.float16: 1e-2}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def random_qkv(b, t, h, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h, x, generator=gen).to(dtype).requires_grad_() for x in (16, 16, d)]


def reachable_state(n, h, d, seed):
    """A state some prefix can produce (the normaliser of an arbitrary random state can vanish)."""
    prefix = [x.detach().double() for x in random_qkv(n, 20, h, d, torch.float32, seed + 1000)]
    _, (s, z) = linear_attention_reference(*prefix, output_final_state=True)
    return s.float().requires_grad_(), z.float().requires_grad_()


def compare(dtype, b, t, h, d, seed, cu=None, with_state=False, views=False, **knobs):
    q, k, v = random_qkv(b, t, h, d, dtype, seed)
    leaves = [q, k, v]
    if views:    # [B, T, H, X] views of [T, B, H, X] tensors, as the megatron mixers pass them
        leaves = [x.detach().transpose(0, 1).contiguous().requires_grad_() for x in (q, k, v)]
        q, k, v = (x.transpose(0, 1) for x in leaves)
    n_seq = b if cu is None else len(cu) - 1
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    state = reachable_state(n_seq, h, d, seed) if with_state else None
    if with_state:
        leaves += list(state)
    out = linear_attention_fused(q, k, v, cu_seqlens=cu_t, initial_state=state, output_final_state=with_state,
                                 **knobs)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    rq, rk, rv = ref_leaves[:3]
    if views:
        rq, rk, rv = (x.transpose(0, 1) for x in (rq, rk, rv))
    ref = linear_attention_reference(rq, rk, rv, cu_seqlens=cu_t, output_final_state=with_state,
                                     initial_state=(ref_leaves[3], ref_leaves[4]) if with_state else None)
    outs = [out[0], *out[1]] if with_state else [out]
    refs = [ref[0], *ref[1]] if with_state else [ref]
    gen = torch.Generator().manual_seed(seed + 7)
    grads_out = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, grads_out)
    ref_grads = torch.autograd.grad(refs, ref_leaves, [g.double() for g in grads_out])
    assert outs[0].dtype == dtype and outs[0].shape == (b, t, h, d)
    for name, got, want in zip(["o", "S", "z"], outs, refs):
        assert rel_err(got, want) <= TOL[dtype], name
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert torch.isfinite(got).all()
        assert rel_err(got, want) <= TOL[dtype], f"gradient of input {i}"


@pytest.mark.parametrize("dtype, b, t, h, d, knobs", [
    (torch.float32, 2, 37, 2, 24, dict(chunk_size=16)),                      # T not a multiple of the chunk
    (torch.float32, 1, 5, 2, 16, dict(chunk_size=16)),                       # T < chunk, batch 1
    (torch.float32, 1, 70, 1, 40, dict(block_d=16)),                         # 3 value blocks, last one masked
    (torch.float32, 2, 50, 2, 32, dict(chunk_size=16, block_d=16)),                     # 2 value blocks
    (torch.float16, 2, 40, 2, 32, dict(chunk_size=16)),
])
def test_matches_reference(dtype, b, t, h, d, knobs):
    compare(dtype, b, t, h, d, seed=t * 31 + d, **knobs)


def test_strided_views_of_sequence_first_tensors():
    compare(torch.float32, 2, 33, 2, 16, seed=3, views=True, chunk_size=16)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_state_in_and_out(chunk_size):
    compare(torch.float32, 2, 45, 2, 24, seed=5, with_state=True, chunk_size=chunk_size)


@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_with_length_one_documents(with_state):
    compare(torch.float32, 1, 50, 2, 24, seed=11, cu=[0, 1, 2, 20, 21, 21, 50], with_state=with_state,
            chunk_size=16)


def test_gpu_tiles_varlen_with_state():
    """The CUDA default row tiles (16/32/64-row state blocks, masked at 153 rows); the interpreter default is 64."""
    compare(torch.float32, 1, 45, 2, 40, seed=17, cu=[0, 3, 3, 30, 45], with_state=True,
            config=LaunchConfig(chunk=16, block_d=16))


def test_prefix_state_then_suffix_equals_one_sequence():
    q, k, v = (x.detach() for x in random_qkv(2, 60, 2, 16, torch.float32, seed=13))
    whole = linear_attention_fused(q, k, v, chunk_size=16)
    first, state = linear_attention_fused(q[:, :23], k[:, :23], v[:, :23], output_final_state=True, chunk_size=16)
    second = linear_attention_fused(q[:, 23:], k[:, 23:], v[:, 23:], initial_state=state, chunk_size=16)
    assert rel_err(torch.cat([first, second], 1), whole) <= 1e-5


def test_compact_state_layout_round_trip():
    s = torch.randn(2, 3, FEATURES, 8, dtype=torch.float64)
    sym = to_public(to_compact(s)).double()
    phi = torch.randn(5, FEATURES, dtype=torch.float64)
    phi[:, 17:] = (phi[:, 1:17, None] * phi[:, None, 1:17]).flatten(1)       # a symmetric quadratic part
    assert rel_err(torch.einsum("pm,bhmd->pbhd", phi, sym), torch.einsum("pm,bhmd->pbhd", phi, s)) <= 1e-6
    assert rel_err(to_public(to_compact(sym)), sym) <= 1e-6


def test_feature_tables_select_each_rows_factors():
    """Row 0 has no factor, rows 1-16 one (x_a), 17-32 the square x_a x_a, then each pair a != b once; the scales,
    split between the q and k sides, give phi_q(q).phi_k(k) = 1 + s/4 + s^2/32 and are exact in bf16."""
    f, mp, m = 16, FEATURE_TABLE_ROWS, COMPACT_FEATURES
    sel = feature_tables(torch.float32, torch.device("cpu"))
    a_q, a_k, b = (sel[i].view(f, mp) for i in range(3))
    for i, table in enumerate((a_q, a_k, b)):
        assert torch.equal(sel[3 + i].view(mp, f), table.T)
    assert torch.equal(a_q != 0, a_k != 0)
    assert (a_q != 0).sum(0).tolist() == [0] + [1] * (m - 1) + [0] * (mp - m)
    assert (b != 0).sum(0).tolist() == [0] * (1 + f) + [1] * (m - 1 - f) + [0] * (mp - m)
    factor_a, factor_b = (a_q != 0).double().argmax(0), b.argmax(0)
    diagonal, pair_rows = slice(1 + f, 1 + 2 * f), slice(1 + 2 * f, m)
    assert factor_a[1:1 + f].tolist() == list(range(f)) and torch.equal(factor_a[diagonal], factor_b[diagonal])
    pairs = {frozenset((int(x), int(y))) for x, y in zip(factor_a[pair_rows], factor_b[pair_rows])}
    assert len(pairs) == f * (f - 1) // 2 and all(len(p) == 2 for p in pairs)

    rows = torch.arange(mp)
    ca, cb = (rows == 0).double(), (rows <= f).double()

    def phi(x, a):
        return (x @ a.double() + ca) * (x @ b.double() + cb)

    q, k = torch.randn(2, 7, f, dtype=torch.float64)
    s = q @ k.T
    assert rel_err(phi(q, a_q) @ phi(k, a_k).T, 1 + s / 4 + s ** 2 / 32) <= 1e-12
    assert torch.equal(feature_tables(torch.bfloat16, torch.device("cpu")).float(), sel)


@pytest.mark.parametrize("d", [24, 112])
def test_decode_step_updates_state_in_place(d):
    gen = torch.Generator().manual_seed(d)
    q, k = torch.randn(3, 2, 16, generator=gen), torch.randn(3, 2, 16, generator=gen)
    v = torch.randn(3, 2, d, generator=gen)
    s, z = reachable_state(3, 2, d, seed=d)
    s, z = s.detach(), z.detach()
    s_ref, z_ref = s.double(), z.double()
    o = linear_attention_step_fused(q, k, v, s, z)
    o_ref = linear_attention_step(q.double(), k.double(), v.double(), s_ref, z_ref)
    assert rel_err(o, o_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-6 and rel_err(z, z_ref) <= 1e-6


def test_bad_inputs_name_the_problem():
    q, k, v = (x.detach() for x in random_qkv(2, 8, 2, 16, torch.float32, seed=1))
    with pytest.raises(ValueError, match="feature dim 16"):
        linear_attention_fused(q[..., :8], k[..., :8], v)
    with pytest.raises(ValueError, match="batch 1"):
        linear_attention_fused(q, k, v, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="initial_state shapes"):
        linear_attention_fused(q, k, v, initial_state=(torch.zeros(2, 2, 10, 16), torch.zeros(2, 2, 10)))
    with pytest.raises(TypeError, match="dtypes differ"):
        linear_attention_fused(q, k, v.half())


@pytest.mark.parametrize("segment_chunks", [3, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_scan_segments_match_one_segment(with_state, segment_chunks):
    """Long sequences scan in parallel segments (the last one short, or not)."""
    compare(torch.float32, 2, 120, 2, 24, seed=19, with_state=with_state,
            config=LaunchConfig(chunk=16, block_d=16, segment_chunks=segment_chunks))


def test_first_pass_totals_skip_the_unread_segment_and_dz_without_r():
    """The segmented scan's first pass (as the Hopper kernels use it): the total no second pass reads (forward: the
    last segment's, reverse: the first's) is not computed, the others equal those of a pass over every segment;
    reverse without r, dS is the same and dz zero (the Hopper reverse scan carries dz across segments itself)."""
    from based_kernels.linear_attention.fused import ChunkLayout, _delta, _segment_totals

    torch.manual_seed(23)
    b, t, h, d = 2, 150, 2, 24                      # 10 chunks of 16 in 3 segments of 4 (the last one short)
    cfg = LaunchConfig(chunk=16, state_d=16)
    layout = ChunkLayout(b * 10, 10, 10, None, None, 3, 4)
    q, k = (torch.randn(b, t, h, 16) for _ in range(2))
    v, o, do = (torch.randn(b, t, h, d) for _ in range(3))
    inv_den = torch.rand(b, h, t) + 0.5
    s_rows, z_rows = slice(0, COMPACT_FEATURES * d), slice(COMPACT_FEATURES * d, COMPACT_FEATURES * (d + 1))
    for reverse, x, y, w_den in [(False, k, v, None), (True, q, do, inv_den)]:
        r = _delta(o, do, inv_den) if reverse else None
        every = _segment_totals(x, y, w_den, r, cfg, layout, None, b, reverse, all_segments=True)
        read = slice(1, 3) if reverse else slice(0, 2)
        skipped = _segment_totals(x, y, w_den, r, cfg, layout, None, b, reverse)
        assert torch.equal(skipped[:, read, :, :z_rows.stop], every[:, read, :, :z_rows.stop])
        if reverse:
            without_r = _segment_totals(x, y, w_den, None, cfg, layout, None, b, reverse)
            assert torch.equal(without_r[:, read, :, s_rows], every[:, read, :, s_rows])
            assert without_r[:, read, :, z_rows].abs().max() == 0 < every[:, read, :, z_rows].abs().max()


def test_hopper_dispatch_rules():
    """Where the Gluon kernels (sm_90 only, so measured on the H200: bench/kernels.md) may run: CPU tensors, other
    dtypes, head dims, varlen and states take the two-level kernels; the TMA needs 16-byte strides."""
    from based_kernels.linear_attention.fused import (HOPPER_CHUNK, HOPPER_HEAD_DIM, HOPPER_ROW_BLOCK,
                                                      _hopper_applies, _tma_addressable, gluon_kernels)

    assert (gluon_kernels.CHUNK.value, gluon_kernels.HEAD_DIM.value, gluon_kernels.ROW_BLOCK.value) == \
        (HOPPER_CHUNK, HOPPER_HEAD_DIM, HOPPER_ROW_BLOCK)

    q, k, v = random_qkv(16, 64, 16, 64, torch.float32, seed=1)
    cfg = LaunchConfig()
    assert not _hopper_applies(q, k, v, None, False, False, cfg)                  # not on CUDA
    assert _tma_addressable(torch.empty(2, 64, 16, 16, dtype=torch.bfloat16))
    assert _tma_addressable(torch.empty(64, 2, 16, 64, dtype=torch.bfloat16).transpose(0, 1))
    assert not _tma_addressable(torch.empty(2, 64, 16, 20, dtype=torch.bfloat16)[..., :16])   # 40-byte rows
    assert not _tma_addressable(torch.empty(2, 64, 16, 16, dtype=torch.bfloat16).transpose(2, 3))


def test_hopper_segments():
    """The Hopper kernels' segment length (pure host logic; the kernels run only on the H200): one segment when
    the sequences x heads fill their waves, segments that fill one wave or two for few long sequences (the best
    measured lengths, bench/notes_kernels.md round 9), a forced length clipped to the sequence."""
    from based_kernels.linear_attention.fused import hopper_segments

    sms = 132
    for batch, seq_len, best in [(16, 2048, 32), (32, 1024, 16), (12, 2048, 32), (8, 4096, 64), (2, 16384, 64),
                                 (4, 8192, 64), (4, 4096, 32), (1, 2048, 4)]:
        assert hopper_segments(batch * 16, seq_len // 64, sms) == best, (batch, seq_len)
    for programs in (1, 7, 100, 1000):
        for n_chunks in (1, 2, 63, 300):
            assert 1 <= hopper_segments(programs, n_chunks, sms) <= n_chunks
    assert hopper_segments(16, 32, sms, segment_chunks=10) == 10
    assert hopper_segments(16, 8, sms, segment_chunks=10) == 8


def test_hopper_first_pass_dispatch():
    """The Gluon first pass (one program per read segment) where its programs fill two thirds of the machine
    (T = 16384: B = 2 in 4 segments, 96 programs; B = 1 in 8, 112), the two-level one below that (T = 8192, B = 4 in
    2 segments: 64 programs), in reverse only where inv_den's rows are TMA-addressable, never when cfg says no."""
    from based_kernels.linear_attention.fused import hopper_totals_applies

    cfg, sms = LaunchConfig(), 132
    assert hopper_totals_applies(cfg, 2 * 16 * 3, sms, 16384, reverse=False)
    assert hopper_totals_applies(cfg, 1 * 16 * 7, sms, 16384, reverse=True)
    assert not hopper_totals_applies(cfg, 4 * 16 * 1, sms, 8192, reverse=False)
    assert not hopper_totals_applies(cfg, 2 * 16 * 4, sms, 3001, reverse=True)
    assert hopper_totals_applies(cfg, 2 * 16 * 4, sms, 3001, reverse=False)
    assert not hopper_totals_applies(LaunchConfig(hopper_totals=False), 2 * 16 * 3, sms, 16384, reverse=False)


@pytest.mark.parametrize("kernel", ["forward", "reverse scan", "gradients", "first pass", "reverse first pass"])
def test_hopper_kernels_compile_for_sm90(kernel):
    """The Gluon kernels are only run on the H200; CPU CI at least compiles them for sm_90 with its own Triton (the
    Gluon API moves between releases) and checks that each fits one program per multiprocessor and that ptxas kept
    its warpgroup MMAs asynchronous (when it cannot, it waits after every one: as many WARPGROUP.DEPBAR as HGMMA in
    the SASS; bench/notes_kernels.md round 13). In a subprocess: this folder's kernels are decorated for Triton's
    interpreter, which Gluon kernels do not run under."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from based_kernels.linear_attention.compile_report import hopper_resources as r; "
            f"res = r(90, {kernel!r}, with_sass=True); "
            "print(res['regs'], res['shared'], res['sass'].count('HGMMA'), res['sass'].count('WARPGROUP.DEPBAR'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    regs, shared, products, waits = map(int, out.stdout.split()[-4:])
    assert regs <= 168 and shared <= 227 * 1024
    if kernel == "gradients" and tuple(map(int, triton.__version__.split(".")[:2])) > (3, 6):
        # the ptxas that triton 3.9 ships serialises the gradient kernel's products (108 waits for 108); the H200
        # runs triton 3.6, whose ptxas keeps them asynchronous (32 waits)
        return
    assert 0 < waits < products, (products, waits)
