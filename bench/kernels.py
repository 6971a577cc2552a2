"""Benchmark and full-shape correctness of based_kernels on one GPU (not a test: run by hand on an H200).

    python bench/kernels.py --out DIR          # DIR gets results.md (the tables) and results.json

Sections: measured ceilings (copy bandwidth, bf16 matmul); correctness of every fused op against its reference at
full shapes (fresh random inputs, fp64 references); linear attention against fla (parallel_based,
fused_chunk_based; when importable) and SDPA causal attention at B*T = 32768 tokens, 16 heads, T = 1k..16k, bf16,
fwd and fwd+bwd; decode steps; short conv; sliding window (flex_attention vs SDPA with a mask). Every time is the
median of triton.testing.do_bench; floors are bytes / measured bandwidth and FLOPs / measured matmul rate.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
try:
    import based_kernels  # noqa: F401  (installed with the package)
except ImportError:       # a bare checkout (the GPU machine): load ./kernels under its import name
    _spec = importlib.util.spec_from_file_location("based_kernels", os.path.join(ROOT, "kernels", "__init__.py"),
                                                   submodule_search_locations=[os.path.join(ROOT, "kernels")])
    sys.modules["based_kernels"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["based_kernels"])

from based_kernels.linear_attention.fused import (COMPACT_FEATURES, FEATURES, LaunchConfig,  # noqa: E402
                                                  linear_attention_fused, linear_attention_step_fused)
from based_kernels.linear_attention.naive import linear_attention_reference, linear_attention_step  # noqa: E402
from based_kernels.short_conv.fused import short_conv_gate_fused, short_conv_gate_step_fused  # noqa: E402
from based_kernels.short_conv.naive import short_conv_gate_reference, short_conv_gate_step_reference  # noqa: E402
from based_kernels.sliding_window.flex import sliding_window_attention_flex_compiled  # noqa: E402
from based_kernels.sliding_window.naive import sliding_window_attention_sdpa  # noqa: E402

DEV = "cuda"
TOKENS = 32768
HEADS = 16
FEAT = 16
LINES = []
RESULTS = {}


def emit(line=""):
    print(line, flush=True)
    LINES.append(line)


def ms(fn, rep=200):
    return do_bench(fn, warmup=50, rep=rep, return_mode="median")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def section(name):
    def wrap(fn):
        def run(*args):
            emit(f"\n## {name}\n")
            try:
                fn(*args)
            except Exception:                                                   # report and go on to the next
                emit("```\n" + traceback.format_exc() + "```")
        return run
    return wrap


# ----------------------------------------------------------------------------------------------------- ceilings
@section("Measured ceilings")
def ceilings():
    x = torch.empty(2 * 1024**3 // 4, device=DEV, dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    t = ms(lambda: y.copy_(x))
    RESULTS["bandwidth_Bps"] = 2 * x.numel() * 4 / (t * 1e-3)
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t = ms(lambda: a @ b)
    RESULTS["matmul_flops"] = 2 * 8192**3 / (t * 1e-3)
    emit(f"device-to-device copy: {RESULTS['bandwidth_Bps'] / 1e12:.2f} TB/s (bytes read + written); "
         f"bf16 matmul 8192^3: {RESULTS['matmul_flops'] / 1e12:.0f} TFLOP/s")


def floor_ms(nbytes, flops=0.0):
    return max(nbytes / RESULTS["bandwidth_Bps"], flops / RESULTS["matmul_flops"]) * 1e3


# -------------------------------------------------------------------------------------------------- correctness
def la_inputs(b, t, h, d, dtype, requires_grad=True):
    q = torch.randn(b, t, h, FEAT, device=DEV, dtype=dtype)
    k = torch.randn(b, t, h, FEAT, device=DEV, dtype=dtype)
    v = torch.randn(b, t, h, d, device=DEV, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def check_la(name, b, t, h, d, dtype, cu=None, with_state=False, tol=None, **knobs):
    q, k, v = la_inputs(b, t, h, d, dtype)
    n_seq = b if cu is None else len(cu) - 1
    cu_t = None if cu is None else torch.tensor(cu, device=DEV, dtype=torch.int32)
    state = None
    if with_state:                      # a reachable state: the one after a random 64-token prefix
        prefix = la_inputs(n_seq, 64, h, d, torch.float32, requires_grad=False)
        _, (s0, z0) = linear_attention_reference(*prefix, output_final_state=True)
        state = (s0.requires_grad_(), z0.requires_grad_())
    out = linear_attention_fused(q, k, v, cu_seqlens=cu_t, initial_state=state, output_final_state=with_state,
                                 **knobs)
    leaves = [q, k, v] + (list(state) if with_state else [])
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    ref_state = (ref_leaves[3], ref_leaves[4]) if with_state else None
    ref = linear_attention_reference(*ref_leaves[:3], cu_seqlens=cu_t, initial_state=ref_state,
                                     output_final_state=with_state)
    outs = [out[0], *out[1]] if with_state else [out]
    refs = [ref[0], *ref[1]] if with_state else [ref]
    grads_out = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, leaves, grads_out)
    ref_grads = torch.autograd.grad(refs, ref_leaves, [g.double() for g in grads_out])
    errs = [rel_err(a, r) for a, r in zip(outs, refs)] + [rel_err(a, r) for a, r in zip(grads, ref_grads)]
    tol = tol or (1e-4 if dtype == torch.float32 else 1e-2)
    ok = all(e <= tol for e in errs) and all(torch.isfinite(x).all() for x in outs + list(grads))
    names = ["o"] + (["S", "z"] if with_state else []) + ["dq", "dk", "dv"] + (["dS0", "dz0"] if with_state else [])
    emit(f"| {name} | {str(dtype).split('.')[-1]} | {'PASS' if ok else 'FAIL'} | max {max(errs):.1e} (tol {tol:.0e}) | "
         + ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errs)) + " |")
    RESULTS.setdefault("correctness", []).append(dict(name=name, dtype=str(dtype), ok=bool(ok), errors=errs))


@section("Correctness at full shapes (fused vs fp64 reference; fresh random inputs)")
def correctness():
    emit("| case | dtype | result | max rel err | per output / gradient |")
    emit("|---|---|---|---|---|")
    for d in (64, 112):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            check_la(f"linear attention B=4 T=2048 H=16 D={d}", 4, 2048, 16, d, dtype)
    check_la("linear attention B=4 T=2048 H=16 D=64 (two-level forward and reverse scan)", 4, 2048, 16, 64,
             torch.bfloat16, config=LaunchConfig(hopper=False))
    check_la("linear attention B=1 T=16384 H=16 D=64 (Hopper kernels in 8 segments, first passes Hopper)", 1, 16384,
             16, 64, torch.bfloat16)
    check_la("linear attention B=16 T=2048 H=16 D=64 (Hopper forward and reverse scan)", 16, 2048, 16, 64,
             torch.bfloat16)
    check_la("linear attention B=8 T=1000 H=16 D=64 (Hopper kernels, partial last chunk)", 8, 1000, 16, 64,
             torch.bfloat16)
    check_la("linear attention B=2 T=3001 H=16 D=64 (Hopper kernels, 5 segments of 10 chunks, partial last chunk; "
             "the reverse first pass two-level: T not a multiple of 4)", 2, 3001, 16, 64, torch.bfloat16,
             config=LaunchConfig(hopper_segment_chunks=10))
    check_la("linear attention B=2 T=3004 H=16 D=64 (Hopper kernels, 5 segments of 10 chunks, partial last chunk; "
             "both first passes Hopper)", 2, 3004, 16, 64, torch.bfloat16, config=LaunchConfig(hopper_segment_chunks=10))
    check_la("linear attention B=4 T=8192 H=16 D=64 (Hopper kernels in 2 segments, first passes two-level)", 4,
             8192, 16, 64, torch.bfloat16)
    check_la("linear attention B=2 T=16384 H=16 D=64 (Hopper kernels in 4 segments, first passes Hopper)", 2, 16384,
             16, 64, torch.bfloat16)
    check_la("linear attention B=2 T=3001 H=16 D=112, block_d=32 (4 value blocks)", 2, 3001, 16, 112, torch.float32,
             block_d=32)
    check_la("linear attention B=3 T=50 (T < chunk) H=4 D=64 state in/out", 3, 50, 4, 64, torch.float32,
             with_state=True)
    check_la("linear attention B=2 T=1000 H=16 D=64 state in/out", 2, 1000, 16, 64, torch.bfloat16,
             with_state=True)
    cu = [0, 1, 2, 700, 701, 1500, 4096]
    check_la("linear attention varlen 6 docs (lengths 1,1,698,1,799,2596) D=64", 1, 4096, 16, 64, torch.bfloat16,
             cu=cu)
    check_la("linear attention varlen + state in/out D=112", 1, 4096, 16, 112, torch.float32, cu=cu,
             with_state=True)

    # state in/out vs one long sequence
    q, k, v = la_inputs(2, 3000, 16, 64, torch.float32, requires_grad=False)
    whole = linear_attention_fused(q, k, v)
    first, state = linear_attention_fused(q[:, :1234], k[:, :1234], v[:, :1234], output_final_state=True)
    second = linear_attention_fused(q[:, 1234:], k[:, 1234:], v[:, 1234:], initial_state=state)
    err = rel_err(torch.cat([first, second], 1), whole)
    emit(f"| linear attention: prefix + state + suffix vs one sequence (T=3000) | float32 | "
         f"{'PASS' if err <= 1e-4 else 'FAIL'} | {err:.1e} | |")

    for d in (64, 112):
        b = 128
        q, k, v = (x[:, 0] for x in la_inputs(b, 1, 16, d, torch.bfloat16, requires_grad=False))
        S = torch.randn(b, 16, FEATURES, d, device=DEV)
        z = torch.rand(b, 16, FEATURES, device=DEV) * 100
        S_ref, z_ref = S.double(), z.double()
        o = linear_attention_step_fused(q, k, v, S, z)
        o_ref = linear_attention_step(q.double(), k.double(), v.double(), S_ref, z_ref)
        errs = [rel_err(o, o_ref), rel_err(S, S_ref), rel_err(z, z_ref)]
        emit(f"| linear attention decode step B=128 D={d} | bfloat16 (state fp32) | "
             f"{'PASS' if max(errs) <= 1e-2 else 'FAIL'} | {max(errs):.1e} | o, S, z: "
             + ", ".join(f"{e:.1e}" for e in errs) + " |")

    for dtype in (torch.bfloat16, torch.float32):
        for with_state in (False, True):
            b, t, c, kw = 4, 2049, 2048, 3
            u = torch.randn(b, t, c, device=DEV, dtype=dtype, requires_grad=True)
            g = torch.randn(b, t, c, device=DEV, dtype=dtype, requires_grad=True)
            w = torch.randn(c, kw, device=DEV, dtype=dtype, requires_grad=True)
            bias = torch.randn(c, device=DEV, dtype=dtype, requires_grad=True)
            st = torch.randn(b, c, kw - 1, device=DEV, dtype=dtype, requires_grad=True) if with_state else None
            leaves = [u, g, w, bias] + ([st] if with_state else [])
            y = short_conv_gate_fused(u, g, w, bias, initial_state=st)
            ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
            y_ref = short_conv_gate_reference(*ref_leaves[:4], initial_state=ref_leaves[4] if with_state else None)
            dy = torch.randn_like(y)
            errs = [rel_err(y, y_ref)] + [rel_err(a, r) for a, r in zip(
                torch.autograd.grad(y, leaves, dy), torch.autograd.grad(y_ref, ref_leaves, dy.double()))]
            tol = 1e-4 if dtype == torch.float32 else 1e-2
            emit(f"| short conv B=4 T=2049 C=2048 K=3{' state in' if with_state else ''} | "
                 f"{str(dtype).split('.')[-1]} | {'PASS' if max(errs) <= tol else 'FAIL'} | {max(errs):.1e} | "
                 "y, du, dg, dw, db" + (", dstate" if with_state else "") + ": "
                 + ", ".join(f"{e:.1e}" for e in errs) + " |")
    u, g = torch.randn(128, 2048, device=DEV), torch.randn(128, 2048, device=DEV)
    w, bias = torch.randn(2048, 3, device=DEV), torch.randn(2048, device=DEV)
    st = torch.randn(128, 2048, 2, device=DEV)
    st_ref = st.double()
    y = short_conv_gate_step_fused(u, g, st, w, bias)
    y_ref = short_conv_gate_step_reference(u.double(), g.double(), st_ref, w.double(), bias.double())
    errs = [rel_err(y, y_ref), rel_err(st, st_ref)]
    emit(f"| short conv decode step B=128 C=2048 | float32 | {'PASS' if max(errs) <= 1e-4 else 'FAIL'} | "
         f"{max(errs):.1e} | y, state: {errs[0]:.1e}, {errs[1]:.1e} |")

    for d in (64, 112):
        q, k, v = (torch.randn(2, 2048, 16, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        o = sliding_window_attention_flex_compiled(q, k, v, window=128)
        ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
        o_ref = sliding_window_attention_sdpa(*ref_in, window=128)
        do = torch.randn_like(o)
        errs = [rel_err(o, o_ref)] + [rel_err(a, r) for a, r in zip(
            torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, ref_in, do.double()))]
        emit(f"| sliding window (flex, compiled) B=2 T=2048 H=16 D={d} window 128 | bfloat16 | "
             f"{'PASS' if max(errs) <= 1e-2 else 'FAIL'} | {max(errs):.1e} | o, dq, dk, dv: "
             + ", ".join(f"{e:.1e}" for e in errs) + " |")


# ------------------------------------------------------------------------------------------ linear attention speed
def fwd_bwd(fn, inputs):
    out = fn(*inputs)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(fn(*inputs), inputs, grad)


def la_floor(t_tokens, d, backward):
    """Fewest bytes (each input read once, each output written once) and the FLOPs of the chunked algorithm."""
    per_token_fwd_bytes = (2 * FEAT + 2 * d) * 2 + 4                   # q, k, v, o in bf16 + fp32 normaliser
    per_token_bwd_bytes = (2 * FEAT + 3 * d) * 2 + 4 + (2 * FEAT + d) * 2   # q, k, v, o, do, den; dq, dk, dv
    c = 64
    fwd_flops = 2 * c * FEAT + 2 * c * d + 4 * COMPACT_FEATURES * d     # per token and head: chunk + state in/out
    n = t_tokens * HEADS
    nbytes = n * (per_token_fwd_bytes + (per_token_bwd_bytes if backward else 0))
    flops = n * fwd_flops * (3 if backward else 1)
    return nbytes, flops


@section("Linear attention: fused vs fla vs SDPA causal (B*T = 32768, 16 heads, F = 16, bf16)")
def la_speed():
    try:
        from fla.ops.based import fused_chunk_based, parallel_based
    except Exception as exc:                                                   # fla not carried: say so, go on
        emit(f"fla not importable ({exc!r}): its columns are empty")
        fused_chunk_based = parallel_based = None
    emit("times in ms, fwd+bwd (fwd); floor = max(bytes / bandwidth, FLOPs / matmul rate); ours as a CUDA graph: "
         "the same fwd+bwd call captured and replayed (kernels only, no host work between them)")
    emit("")
    emit("| T | B | ours D=64 | ours D=64 as a CUDA graph | floor D=64 | ours D=112 | fla parallel_based | "
         "fla fused_chunk_based | SDPA causal (flash, 64) | vs SDPA | vs parallel_based |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for t in (1024, 2048, 4096, 8192, 16384):
        b = TOKENS // t
        row = {"T": t, "B": b}
        q, k, v = la_inputs(b, t, HEADS, 64, torch.bfloat16)
        fused = lambda q_, k_, v_: linear_attention_fused(q_, k_, v_)          # noqa: E731
        row["ours_fwd"] = ms(lambda: fused(q, k, v))
        row["ours_fb"] = ms(fwd_bwd(fused, (q, k, v)))
        row["ours_fb_graph"] = graph_replay_ms(fwd_bwd(fused, (q, k, v)))
        nb, fl = la_floor(TOKENS, 64, False)
        row["floor_fwd"] = floor_ms(nb, fl)
        nb, fl = la_floor(TOKENS, 64, True)
        row["floor_fb"] = floor_ms(nb, fl)
        q2, k2, v2 = la_inputs(b, t, HEADS, 112, torch.bfloat16)
        row["ours112_fwd"] = ms(lambda: fused(q2, k2, v2))
        row["ours112_fb"] = ms(fwd_bwd(fused, (q2, k2, v2)))
        for name, fn in (("parallel", parallel_based), ("chunk", fused_chunk_based)):
            if fn is None:
                row[name + "_fwd"] = row[name + "_fb"] = float("nan")
                continue
            row[name + "_fwd"] = ms(lambda: fn(q, k, v))
            row[name + "_fb"] = ms(fwd_bwd(fn, (q, k, v)))
        qs, ks, vs = (torch.randn(b, HEADS, t, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
                      for _ in range(3))
        sdpa = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, is_causal=True)  # noqa: E731
        row["sdpa_fwd"] = ms(lambda: sdpa(qs, ks, vs))
        row["sdpa_fb"] = ms(fwd_bwd(sdpa, (qs, ks, vs)))
        rows.append(row)
        emit(f"| {t} | {b} | {row['ours_fb']:.3f} ({row['ours_fwd']:.3f}) | {row['ours_fb_graph']:.3f} | "
             f"{row['floor_fb']:.3f} "
             f"({row['floor_fwd']:.3f}) | {row['ours112_fb']:.3f} ({row['ours112_fwd']:.3f}) | "
             f"{row['parallel_fb']:.2f} ({row['parallel_fwd']:.2f}) | {row['chunk_fb']:.2f} ({row['chunk_fwd']:.2f}) | "
             f"{row['sdpa_fb']:.2f} ({row['sdpa_fwd']:.2f}) | {row['sdpa_fb'] / row['ours_fb']:.1f}x | "
             f"{row['parallel_fb'] / row['ours_fb']:.1f}x |")
    RESULTS["linear_attention"] = rows


@section("Linear attention launch-configuration sweep (bf16, D=64 and 112, fwd+bwd (fwd) ms)")
def la_sweep():
    variants = [("default", {}), ("block_d=32", dict(block_d=32)), ("num_warps=4 (all kernels)", dict(num_warps=4)),
                ("num_warps=8 (all kernels)", dict(num_warps=8)),
                ("scan tile 16 rows", dict(config=LaunchConfig(state_rows=16))),
                ("scan tile 64 rows", dict(config=LaunchConfig(state_rows=64))),
                ("output tile 64 rows", dict(config=LaunchConfig(out_rows=64))),
                ("dq/dk/dv tile 32 rows", dict(config=LaunchConfig(grad_rows=32))),
                ("chunk 128", dict(chunk_size=128))]
    emit("| T | D | variant | fwd+bwd | fwd |")
    emit("|---|---|---|---|---|")
    out = []
    for t in (2048, 16384):
        for d in (64, 112):
            b = TOKENS // t
            q, k, v = la_inputs(b, t, HEADS, d, torch.bfloat16)
            for name, knobs in variants:
                fn = lambda q_, k_, v_: linear_attention_fused(q_, k_, v_, **knobs)   # noqa: E731
                try:
                    f_ms, fb_ms = ms(lambda: fn(q, k, v), rep=50), ms(fwd_bwd(fn, (q, k, v)), rep=50)
                except Exception as exc:                                       # e.g. out of shared memory
                    emit(f"| {t} | {d} | {name} | failed: {type(exc).__name__} | |")
                    continue
                out.append(dict(T=t, D=d, variant=name, fb=fb_ms, fwd=f_ms))
                emit(f"| {t} | {d} | {name} | {fb_ms:.3f} | {f_ms:.3f} |")
    RESULTS["la_sweep"] = out

@section("Linear attention and short conv: time per kernel (torch.profiler, bf16, B*T = 32768, 16 heads)")
def kernel_breakdown():
    """Where the fwd+bwd time goes: CUDA time of every kernel launched by one fused call, averaged over 20 calls;
    then the host side of the same calls (measured first: a finished profiler session can leave CUPTI callbacks
    that slow every later launch)."""
    from torch.profiler import ProfilerActivity, profile

    cases = [(f"linear attention T={t} D={d}", lambda t=t, d=d: fwd_bwd(linear_attention_fused,
                                                                       la_inputs(TOKENS // t, t, HEADS, d,
                                                                                 torch.bfloat16)))
             for t in (2048, 16384) for d in (64, 112)]
    u, g = (torch.randn(TOKENS // 2048, 2048, 2048, device=DEV, dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    w = torch.randn(2048, 3, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(2048, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    cases.append(("short conv T=2048 C=2048 K=3", lambda: fwd_bwd(lambda *x: short_conv_gate_fused(*x),
                                                                         (u, g, w, bias))))
    steps = {name: make() for name, make in cases}
    host = {name: host_and_graph_times(step) for name, step in steps.items()}
    emit("| case | kernel | calls per step | ms per step |")
    emit("|---|---|---|---|")
    out = []
    for name, step in steps.items():
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = 0.0
        for e in sorted(events, key=lambda e: -e.device_time_total):
            per_step = e.device_time_total / 20 / 1e3
            total += per_step
            out.append(dict(case=name, kernel=e.key, calls=e.count / 20, ms=per_step))
            emit(f"| {name} | {e.key[:60]} | {e.count / 20:g} | {per_step:.4f} |")
        emit(f"| {name} | **sum** | | {total:.4f} |")
        out.append(dict(case=name, kernel="(sum)", ms=total, **host[name]))
    emit("")
    emit("Kernel sums against whole calls: the host's time to issue one call (CPU time of the Python side, the GPU "
         "not waited for) and the part of it spent in Triton's launcher (kernel[grid](...)), the call timed as in "
         "the tables above, and the same call replayed as a CUDA graph (no host work between kernels):")
    emit("")
    emit("| case | kernels (sum) ms | host issue ms | of which Triton launches ms | call ms | CUDA graph ms |")
    emit("|---|---|---|---|---|---|")
    for row in (r for r in out if r["kernel"] == "(sum)"):
        emit(f"| {row['case']} | {row['ms']:.4f} | {row['host_ms']:.4f} | {row['launch_ms']:.4f} | "
             f"{row['call_ms']:.4f} | {row['graph_ms']:.4f} |")
    RESULTS["kernel_breakdown"] = out


def host_and_graph_times(step, calls=20):
    """CPU time to issue one call (GPU idle at the start, not synchronised inside) and the part of it inside
    Triton's launcher, the call's time, and the time of its CUDA graph replay (nan if it cannot be captured)."""
    step()
    torch.cuda.synchronize()
    with timed_triton_launches() as launch_seconds:
        start = time.perf_counter()
        for _ in range(calls):
            step()
        host_ms = (time.perf_counter() - start) / calls * 1e3
    torch.cuda.synchronize()
    return dict(host_ms=host_ms, launch_ms=launch_seconds[0] / calls * 1e3, call_ms=ms(step),
                graph_ms=graph_replay_ms(step))


def graph_replay_ms(step):
    """Time of `step` captured once as a CUDA graph and replayed: its kernels without the host's work between them
    (nan, with a note, if it cannot be captured)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return ms(graph.replay)
    except Exception as exc:                                        # capture unsupported: say so, go on
        emit(f"(CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:100]})")
        return float("nan")


class timed_triton_launches:
    """Context manager: every `kernel[grid](...)` of a triton.JITFunction adds its wall time to the yielded
    one-element list (Triton's Python dispatcher, argument binding and the driver launch call)."""

    def __enter__(self):
        self.seconds = [0.0]
        self.original = triton.runtime.jit.JITFunction.__getitem__
        seconds, original = self.seconds, self.original

        def timed_getitem(kernel, grid):
            launch = original(kernel, grid)

            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return launch(*args, **kwargs)
                finally:
                    seconds[0] += time.perf_counter() - start
            return timed

        triton.runtime.jit.JITFunction.__getitem__ = timed_getitem
        return self.seconds

    def __exit__(self, *exc):
        del triton.runtime.jit.JITFunction.__getitem__          # back to the inherited KernelInterface.__getitem__


# --------------------------------------------------------------------------------------------------- decode step
@section("Decode steps (one token, in-place fp32 state)")
def decode_speed():
    emit("| op | batch | ours ms | eager reference ms | bytes moved | achieved bandwidth | % of measured |")
    emit("|---|---|---|---|---|---|---|")
    out = []
    for b in (1, 16, 128, 512):
        for d in (64, 112):
            q, k, v = (x[:, 0] for x in la_inputs(b, 1, HEADS, d, torch.bfloat16, requires_grad=False))
            S = torch.randn(b, HEADS, FEATURES, d, device=DEV)
            z = torch.rand(b, HEADS, FEATURES, device=DEV)
            t_ours = ms(lambda: linear_attention_step_fused(q, k, v, S, z))
            t_ref = ms(lambda: linear_attention_step(q, k, v, S, z))
            nbytes = b * HEADS * (2 * FEATURES * d * 4 + 2 * FEATURES * 4 + (2 * FEAT + 2 * d) * 2)
            bw = nbytes / (t_ours * 1e-3)
            out.append(dict(op="linear_attention_step", batch=b, d=d, ms=t_ours, ref_ms=t_ref, bytes=nbytes))
            emit(f"| linear attention D={d} | {b} | {t_ours:.4f} | {t_ref:.3f} | {nbytes / 1e6:.1f} MB | "
                 f"{bw / 1e12:.2f} TB/s | {100 * bw / RESULTS['bandwidth_Bps']:.0f}% |")
    for b in (1, 128, 512):
        c = 2048
        u, g = torch.randn(b, c, device=DEV, dtype=torch.bfloat16), torch.randn(b, c, device=DEV, dtype=torch.bfloat16)
        w, bias = torch.randn(c, 3, device=DEV, dtype=torch.bfloat16), torch.randn(c, device=DEV, dtype=torch.bfloat16)
        st = torch.randn(b, c, 2, device=DEV, dtype=torch.bfloat16)
        t_ours = ms(lambda: short_conv_gate_step_fused(u, g, st, w, bias))
        t_ref = ms(lambda: short_conv_gate_step_reference(u, g, st, w, bias))
        nbytes = b * c * 2 * (2 + 2 * 2 + 1)
        out.append(dict(op="short_conv_step", batch=b, ms=t_ours, ref_ms=t_ref, bytes=nbytes))
        bw = nbytes / (t_ours * 1e-3)
        emit(f"| short conv C=2048 | {b} | {t_ours:.4f} | {t_ref:.3f} | {nbytes / 1e6:.2f} MB | "
             f"{bw / 1e12:.2f} TB/s | {100 * bw / RESULTS['bandwidth_Bps']:.0f}% |")
    RESULTS["decode"] = out


# ---------------------------------------------------------------------------------------------------- short conv
@section("Short conv + SiLU + gate (B*T = 32768, C = 2048 and 3584, K = 3, bf16)")
def conv_speed():
    emit("ours as a CUDA graph: the same call captured and replayed (kernels only, no host work between them)")
    emit("")
    emit("| C | pass | ours ms | ours as a CUDA graph ms | eager reference ms | floor ms | % of measured bandwidth "
         "(call / graph) |")
    emit("|---|---|---|---|---|---|---|")
    out = []
    for c in (2048, 3584):
        b, t = 16, 2048
        u, g = (torch.randn(b, t, c, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        w = torch.randn(c, 3, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        bias = torch.randn(c, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        elem = b * t * c * 2
        for name, nbytes, ours, ref in (
                ("fwd", 3 * elem, lambda: short_conv_gate_fused(u, g, w, bias),
                 lambda: short_conv_gate_reference(u, g, w, bias)),
                ("fwd+bwd", 8 * elem, fwd_bwd(lambda *x: short_conv_gate_fused(*x), (u, g, w, bias)),
                 fwd_bwd(lambda *x: short_conv_gate_reference(*x), (u, g, w, bias)))):
            t_ours, t_graph, t_ref = ms(ours), graph_replay_ms(ours), ms(ref)
            fl = floor_ms(nbytes)
            out.append(dict(C=c, pass_=name, ms=t_ours, graph_ms=t_graph, ref_ms=t_ref, floor_ms=fl))
            emit(f"| {c} | {name} | {t_ours:.3f} | {t_graph:.3f} | {t_ref:.3f} | {fl:.3f} | "
                 f"{100 * fl / t_ours:.0f}% / {100 * fl / t_graph:.0f}% |")
    RESULTS["short_conv"] = out


# ------------------------------------------------------------------------------------------------ sliding window
@section("Sliding window attention, window 128 (B*T = 32768, 16 heads x 64, bf16, fwd+bwd (fwd) ms)")
def swa_speed():
    emit("| T | flex_attention compiled | SDPA + dense mask | SDPA causal full (reference point) |")
    emit("|---|---|---|---|")
    out = []
    for t in (2048, 16384):
        b = TOKENS // t
        q, k, v = (torch.randn(b, t, HEADS, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        flex = lambda *x: sliding_window_attention_flex_compiled(*x, window=128)     # noqa: E731
        sdpa = lambda *x: sliding_window_attention_sdpa(*x, window=128)               # noqa: E731
        row = dict(T=t, flex_fwd=ms(lambda: flex(q, k, v)), flex_fb=ms(fwd_bwd(flex, (q, k, v))))
        try:
            row["sdpa_fwd"], row["sdpa_fb"] = ms(lambda: sdpa(q, k, v), rep=50), ms(fwd_bwd(sdpa, (q, k, v)), rep=50)
        except torch.OutOfMemoryError:
            row["sdpa_fwd"] = row["sdpa_fb"] = float("nan")
        causal = lambda *x: F.scaled_dot_product_attention(*(y.transpose(1, 2) for y in x), is_causal=True)  # noqa
        row["causal_fwd"], row["causal_fb"] = ms(lambda: causal(q, k, v)), ms(fwd_bwd(causal, (q, k, v)))
        out.append(row)
        emit(f"| {t} | {row['flex_fb']:.3f} ({row['flex_fwd']:.3f}) | {row['sdpa_fb']:.3f} ({row['sdpa_fwd']:.3f}) | "
             f"{row['causal_fb']:.3f} ({row['causal_fwd']:.3f}) |")
    RESULTS["sliding_window"] = out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for results.md and results.json")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                        "correctness,la,breakdown,sweep,decode,conv,swa")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    emit(f"# based_kernels benchmark\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
         f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, triton {triton.__version__}, "
         f"python {platform.python_version()}; command: `python bench/kernels.py --out DIR`")
    ceilings()
    for key, fn in (("correctness", correctness), ("la", la_speed), ("breakdown", kernel_breakdown),
                    ("sweep", la_sweep), ("decode", decode_speed),
                    ("conv", conv_speed), ("swa", swa_speed)):
        if key not in skip:
            fn()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(LINES) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
