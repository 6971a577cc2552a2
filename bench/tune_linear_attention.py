"""Pick the linear-attention launch configuration from measurement (one H200; not a test).

    python bench/tune_linear_attention.py --out DIR [--jobs 12]

For every candidate LaunchConfig (--search tiles: chunk 64 / 128 x warps 2 / 4 / 8 x state-row tiles 16 / 32 / 64,
the same choice given to every kernel; --search stages: pipeline stages 1-4 around the defaults and, at T = 16384,
the scan's segment length; --search regs: register caps; --search chunk-tiles: the per-chunk kernels' tiles;
--search grad-tiles: the dq/dk/dv kernel's tiles, stages and register cap) and
shape (T = 2048 at D = 64 and 112, T = 16384 at D = 64; B*T = 32768, 16 heads, bf16), one fwd+bwd step runs under
torch.profiler and the CUDA time of each kernel is recorded, and the step's gradients are compared with those of the
shape's first candidate. The kernels do not share tiles, so the best configuration of each kernel can be combined:
the script prints, per chunk size and shape, every kernel's fastest tile choice and the sum of those minima.
Compilation of all candidates first runs in --jobs parallel processes (Triton's on-disk cache), then one process
measures. Writes DIR/tune.md and DIR/tune.json.
"""

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import LaunchConfig, fwd_bwd, la_inputs, linear_attention_fused  # noqa: E402  (bench/kernels.py)
from based_kernels.linear_attention.fused import launch_config  # noqa: E402  (set up by bench/kernels.py)

TOKENS, HEADS = 32768, 16
SHAPES = [(2048, 64), (2048, 112), (16384, 64)]
KERNELS = {"_chunk_state_kernel": "scan (fwd + bwd)", "_fwd_output_kernel": "output", "_bwd_grad_kernel": "dq/dk/dv",
           "_bwd_delta_kernel": "delta", "_hopper_forward_kernel": "hopper forward (scan + output)"}
TILE_FIELDS = {"scan (fwd + bwd)": ("state_rows", "state_warps"), "output": ("out_rows", "out_warps"),
               "dq/dk/dv": ("grad_rows", "grad_warps"), "delta": (), "hopper forward (scan + output)": ()}


def default_config(d):
    """The launch configuration the fused call takes on CUDA at head dim d."""
    return launch_config(d, torch.device("cuda"))


def tile_candidates(t, d):
    for chunk, warps, rows in itertools.product((64, 128), (2, 4, 8), (16, 32, 64)):
        yield LaunchConfig(chunk=chunk, state_rows=rows, state_warps=warps, out_rows=rows, out_warps=warps,
                           grad_rows=rows, grad_warps=warps)


def stage_and_segment_candidates(t, d):
    """Around the defaults: pipeline stages of every kernel, and (T = 16384) the scan's segment length."""
    base = default_config(d)
    for stages in (1, 2, 3, 4):
        yield dataclasses.replace(base, state_stages=stages, out_stages=stages, grad_stages=stages)
    if t > 2048:
        for seg in (4, 8, 16, 32, 256):
            yield dataclasses.replace(base, segment_chunks=seg)


def register_cap_candidates(t, d):
    """Register caps (Triton's maxnreg) on every kernel at the default tiles: 2-warp CTAs fit 8 / 6 / 5 per
    multiprocessor at 128 / 168 / 200 registers (4-warp scans: 4 / 3 / 2)."""
    base = default_config(d)
    for regs in (0, 128, 168, 200):
        yield dataclasses.replace(base, state_regs=regs, out_regs=regs, grad_regs=regs)


def per_chunk_tile_candidates(t, d):
    """Row tiles x warps of the per-chunk kernels (output, dq/dk/dv) around the defaults; scans unchanged."""
    base = default_config(d)
    for rows, warps in itertools.product((16, 32, 64), (2, 4)):
        yield dataclasses.replace(base, out_rows=rows, out_warps=warps, grad_rows=rows, grad_warps=warps)


def grad_tile_candidates(t, d):
    """The dq/dk/dv kernel: row tiles x warps x pipeline stages, and a register cap, around the defaults."""
    base = default_config(d)
    for rows, warps, stages, regs in ((16, 4, 3, 0), (16, 4, 2, 0), (16, 4, 4, 0), (32, 4, 3, 0), (16, 8, 3, 0),
                                      (32, 8, 3, 0), (16, 4, 3, 128)):
        yield dataclasses.replace(base, grad_rows=rows, grad_warps=warps, grad_stages=stages, grad_regs=regs)


SEARCHES = {"tiles": tile_candidates, "stages": stage_and_segment_candidates, "regs": register_cap_candidates,
            "chunk-tiles": per_chunk_tile_candidates, "grad-tiles": grad_tile_candidates}


def changed_fields(cfg):
    """The fields of cfg that differ from the default launch configuration, as 'name=value, ...'."""
    base = LaunchConfig()
    return ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
                     if getattr(cfg, f.name) != getattr(base, f.name)) or "default"


def jobs(search):
    return [(t, d, cfg) for t, d in SHAPES for cfg in SEARCHES[search](t, d)]


def step_of(t, d, cfg):
    """One fwd+bwd call returning (dq, dk, dv); the same inputs and output gradient for every configuration."""
    torch.manual_seed(0)
    fn = lambda q, k, v: linear_attention_fused(q, k, v, config=cfg)     # noqa: E731
    return fwd_bwd(fn, la_inputs(TOKENS // t, t, HEADS, d, torch.bfloat16))


def relative_difference(grads, reference):
    """max over dq, dk, dv of |a - b| / |b| (Frobenius norms), against the shape's first configuration."""
    return max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(grads, reference))


def compile_some(part):
    """Worker: run each job once (compiles it into Triton's cache); returns the jobs that failed, with why."""
    failed = []
    for t, d, cfg in part:
        try:
            step_of(t, d, cfg)()
            torch.cuda.synchronize()
        except Exception as exc:                                    # out of resources, compile errors
            failed.append(((t, d, cfg), f"{type(exc).__name__}: {str(exc)[:120]}"))
    return failed


def kernel_times(step, iters=10):
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    return {KERNELS[e.key]: e.device_time_total / iters / 1e3 for e in prof.key_averages() if e.key in KERNELS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--search", choices=sorted(SEARCHES), default="tiles")
    args = parser.parse_args()
    all_jobs = jobs(args.search)
    parts = [all_jobs[i::args.jobs] for i in range(args.jobs)]
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        failed = dict(kv for part in pool.map(compile_some, parts) for kv in part)
    rows, reference_grads = [], {}
    for t, d, cfg in all_jobs:
        if (t, d, cfg) in failed:
            rows.append(dict(T=t, D=d, chunk=cfg.chunk, warps=cfg.state_warps, rows=cfg.state_rows,
                             config=changed_fields(cfg), error=failed[(t, d, cfg)]))
            continue
        step = step_of(t, d, cfg)
        times = kernel_times(step)
        grads = step()
        first = reference_grads.setdefault((t, d), grads)
        rows.append(dict(T=t, D=d, chunk=cfg.chunk, warps=cfg.state_warps, rows=cfg.state_rows,
                         config=changed_fields(cfg), times=times, total=sum(times.values()),
                         diff_vs_first=relative_difference(grads, first)))
        print(rows[-1], flush=True)
    if args.search != "tiles":
        lines = ["| T | D | launch configuration (vs LaunchConfig()) | " + " | ".join(TILE_FIELDS)
                 + " | total | grads vs first row |", "|---|---|---|" + "---|" * (len(TILE_FIELDS) + 2)]
        for r in rows:
            cells = " | ".join(f"{r['times'].get(k, float('nan')):.4f}" for k in TILE_FIELDS) if "times" in r \
                else "failed |" * len(TILE_FIELDS)
            lines.append(f"| {r['T']} | {r['D']} | {r['config']} | {cells} | {r.get('total', float('nan')):.4f} | "
                         f"{r.get('diff_vs_first', float('nan')):.1e} |")
        return write(args, "\n".join(lines), rows, [], failed)
    lines = ["| T | D | chunk | kernel | best (rows, warps) | ms | rows 32, warps 8 ms |",
             "|---|---|---|---|---|---|---|"]
    best_out = []
    for (t, d), chunk in itertools.product(SHAPES, (64, 128)):
        ok = [r for r in rows if r["T"] == t and r["D"] == d and r["chunk"] == chunk and "times" in r]
        if not ok:
            continue
        total = 0.0
        for kernel in TILE_FIELDS:
            have = [r for r in ok if kernel in r["times"]]
            best = min(have, key=lambda r: r["times"][kernel])
            ref = [r for r in have if r["rows"] == 32 and r["warps"] == 8]
            total += best["times"][kernel]
            best_out.append(dict(T=t, D=d, chunk=chunk, kernel=kernel, rows=best["rows"], warps=best["warps"],
                                 ms=best["times"][kernel]))
            lines.append(f"| {t} | {d} | {chunk} | {kernel} | {best['rows']}, {best['warps']} | "
                         f"{best['times'][kernel]:.4f} | {ref[0]['times'][kernel] if ref else float('nan'):.4f} |")
        lines.append(f"| {t} | {d} | {chunk} | **sum of minima** | | {total:.4f} | |")
    return write(args, "\n".join(lines), rows, best_out, failed)


def write(args, text, rows, best_out, failed):
    print(text)
    if failed:
        print("\nfailed:\n" + "\n".join(f"- T={t} D={d} {cfg}: {why}" for (t, d, cfg), why in failed.items()))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tune.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "tune.json"), "w") as f:
        json.dump(dict(rows=rows, best=best_out, failed=[str(k) + " " + v for k, v in failed.items()]), f, indent=1)


if __name__ == "__main__":
    main()
