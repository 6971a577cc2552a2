"""Registers, spills and shared memory of the linear-attention kernels, compiled offline (no GPU needed).

    python -m based_kernels.linear_attention.compile_report [--arch 90] [--dtype bf16]

Compiles each kernel with its CUDA default tiles (fused.launch_config) through triton.compile and reads
the cubin's resource usage with the cuobjdump that ships with Triton. Stack > 0 means spills. Integer arguments are
specialised as Triton does at run time for contiguous inputs of the benchmark's shapes (the innermost strides are the
constant 1, the other integers multiples of 16), so that the report sees the same vector widths: the last columns
count global-load instructions by width in the SASS (16-byte vectors against narrower ones), and the instructions
in each loop's body (the chunk loop of the scans, the row-block loop of the per-chunk kernels).
"""

import argparse
import re
from collections import Counter

import torch
import triton

from ..compile_report import compile_resources, loop_bodies
from . import triton_kernels as tk
from .fused import (COMPACT_FEATURES, FEATURE_DIM, FEATURE_TABLE_ROWS, HOPPER_HEAD_DIM, HOPPER_MAXNREG,
                    HOPPER_WEIGHTS_BOX, LaunchConfig, _dot_types, _feature_constants, gluon_kernels, hopper_box_layout,
                    hopper_boxes, hopper_weights_layout, launch_config)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INPUT_POINTERS = {"q", "k", "v", "o", "do", "dq", "dk", "dv", "x", "y"}
STATE_POINTERS = {"h", "dh"}
INDEX_POINTERS = {"cu_seqlens", "chunk_offsets", "chunk_indices"}


def _signature(kernel, constexprs: dict, dtype: str, state_dtype: str) -> tuple:
    """Triton signature and 16-byte pointer alignment of every argument (ints as i32, eps as fp32)."""
    signature, attrs = {}, {}
    constexprs.update({name: 1 for name in kernel.arg_names if _innermost_stride(name)})
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name == "eps":
            signature[name] = "fp32"
        elif name in INPUT_POINTERS or name == "sel":
            signature[name] = "*" + dtype
        elif name in STATE_POINTERS:
            signature[name] = "*" + state_dtype
        elif name in INDEX_POINTERS:
            signature[name] = "*i32"
        elif name in ("inv_den", "r", "hz", "dhz", "init", "ends"):
            signature[name] = "*fp32"
        else:
            signature[name] = "i32"
        if signature[name] != "fp32" and name not in ("NSEG", "SEG"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _innermost_stride(name: str) -> bool:
    """Stride arguments of the contiguous dimension: s<tensor><dim> ending in d (value) or f (feature)."""
    return re.fullmatch(r"s[a-z]{1,3}[df]", name) is not None


def resources(kernel, constexprs: dict, num_warps: int, num_stages: int, arch: int, dtype: str,
              state_dtype: str, maxnreg: int = 0) -> dict:
    """compile_resources plus the kernel's global loads by width: vector (16 bytes) and narrower instructions."""
    constexprs = dict(constexprs)
    signature, attrs = _signature(kernel, constexprs, dtype, state_dtype)
    res = compile_resources(kernel, signature, constexprs, attrs, num_warps, num_stages, arch, with_sass=True,
                            maxnreg=maxnreg)
    sass = res.pop("sass")
    loads = Counter("vector" if op.endswith(".128") else "narrow"
                    for op in re.findall(r"\b(?:LDG|LDGSTS)\.E[A-Z0-9.]*", sass))
    return dict(res, vector_loads=loads["vector"], narrow_loads=loads["narrow"], loops=loop_bodies(sass))


def kernel_variants(head_dim: int, torch_dtype: torch.dtype, cfg: LaunchConfig):
    """(name, kernel, constexprs, warps, stages, register cap) of every launch of one forward + backward with the
    default tiles (the scans' second pass of segmented sequences: from an initial state plus the earlier segments'
    totals, storing h)."""
    types = _dot_types(torch_dtype)
    no_sel = {k: v for k, v in types.items() if not k.startswith("SEL_")}
    common = dict(F=FEATURE_DIM, M=COMPACT_FEATURES, MP=FEATURE_TABLE_ROWS, D=head_dim, C=cfg.chunk, IS_VARLEN=False)
    per_chunk = dict(common, **_feature_constants(FEATURE_DIM))
    scan = dict(common, BD=cfg.state_d, HAS_INIT=True, SUM_TOTALS=True, STORE_H=True, STORE_END=False, SUM_Z=True,
                SKIP_UNREAD=False, PREC=types["PREC"], STATE_DT=types["STATE_DT"], STATE_PREC=types["STATE_PREC"])
    for direction in ("fwd", "bwd"):
        yield (f"chunk scan {direction}", tk._chunk_state_kernel,
               dict(scan, BR=cfg.state_rows, REVERSE=direction == "bwd"), cfg.state_warps, cfg.state_stages,
               cfg.state_regs)
    yield ("output", tk._fwd_output_kernel, dict(per_chunk, BR=cfg.out_rows, BD=cfg.block_d, **no_sel),
           cfg.out_warps, cfg.out_stages, cfg.out_regs)
    grad = dict(per_chunk, BR=cfg.grad_rows, DP=triton.next_power_of_2(head_dim), **types)
    yield "dq/dk/dv", tk._bwd_grad_kernel, grad, cfg.grad_warps, cfg.grad_stages, cfg.grad_regs


HOPPER_KERNELS = {          # name: (gluon_kernels' kernel, its constexprs, warps per partition)
    "forward": ("_hopper_forward_kernel", {}, "4 + 4 + 1"),
    "reverse scan": ("_hopper_reverse_scan_kernel", {}, "4 + 4 + 1"),
    "gradients": ("_hopper_grad_kernel", {}, "4 + 4 + 1"),
    "first pass": ("_hopper_totals_kernel", {"REVERSE": False}, "4 + 4 + 4"),
    "reverse first pass": ("_hopper_totals_kernel", {"REVERSE": True}, "4 + 4 + 4"),
}


def hopper_resources(arch: int, name: str, with_sass: bool = False) -> dict:
    """compile_resources of a gluon_kernels kernel (HOPPER_KERNELS: its name and constexprs; bf16, D = 64) with the
    descriptors fused passes."""
    kernel_name, constexprs, _ = HOPPER_KERNELS[name]
    kernel = getattr(gluon_kernels, kernel_name)
    boxes = hopper_boxes(FEATURE_DIM, HOPPER_HEAD_DIM)
    pointers = {"inv_den": "*fp32", "r": "*fp32", "hz": "*fp32", "dhz": "*fp32", "ends": "*fp32", "dz_totals": "*fp32",
                "sel": "*bf16"}
    signature, attrs = {}, {}
    for i, arg in enumerate(kernel.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in boxes:
            signature[arg] = f"tensordesc<bf16[{', '.join(map(str, boxes[arg]))}],{hopper_box_layout(boxes[arg])!r}>"
        elif arg == "w_desc":
            signature[arg] = f"tensordesc<fp32[{', '.join(map(str, HOPPER_WEIGHTS_BOX))}],{hopper_weights_layout()!r}>"
        elif arg in pointers:
            signature[arg] = pointers[arg]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "fp32" if arg == "eps" else "i32"
    return compile_resources(kernel, signature, constexprs, attrs, 4, 1, arch, with_sass=with_sass,
                             maxnreg=HOPPER_MAXNREG, gluon=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args()
    state_dtype = "bf16" if args.dtype == "bf16" else "fp32"
    print(f"| kernel | D | warps | registers | stack (spills) | shared memory | 16-B loads | narrower loads | "
          f"loop body (SASS) |  (sm_{args.arch}, {args.dtype}, {COMPACT_FEATURES} state rows)")
    print("|---|---|---|---|---|---|---|---|---|")
    for head_dim in (64, 112):
        cfg = launch_config(head_dim, torch.device("cuda"))
        for name, kernel, constexprs, warps, stages, regs in kernel_variants(head_dim, DTYPES[args.dtype], cfg):
            res = resources(kernel, constexprs, warps, stages, args.arch, args.dtype, state_dtype, regs)
            print(f"| {name} | {head_dim} | {warps} | {res['regs']} | {res['stack']} B | {res['shared']} B | "
                  f"{res['vector_loads']} | {res['narrow_loads']} | {', '.join(map(str, res['loops']))} |")
    if args.arch == 90 and args.dtype == "bf16" and gluon_kernels is not None:
        for name in HOPPER_KERNELS:
            res = hopper_resources(args.arch, name)
            print(f"| Hopper {name} (Gluon, 3 partitions; registers: the kernel's cap, setmaxnreg moves them) | 64 "
                  f"| {HOPPER_KERNELS[name][2]} | {res['regs']} | {res['stack']} B | {res['shared']} B | TMA | TMA | |")


if __name__ == "__main__":
    main()
