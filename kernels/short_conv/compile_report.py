"""Registers, spills and instructions of the short-conv kernels, compiled offline (no GPU needed).

    python -m based_kernels.short_conv.compile_report [--arch 90] [--dtype bf16] [--k 3]

Compiles each kernel through triton.compile for a CUDA target as the JIT would specialise it for contiguous
[B, T, C] inputs (unit channel strides as constants, other strides and sizes divisible by 16), then reads the cubin
with the cuobjdump that ships with Triton: registers and stack (stack > 0 means spills) from -res-usage, and the
SASS instructions of one loop iteration per thread (the backward: `rows` time steps), divided by the time steps x
channels each thread owns, and the warps per SM that the registers and shared memory leave resident.
"""

import argparse
import collections
import re

from ..compile_report import compile_resources
from . import triton_kernels as tk
from .fused import BACKWARD_VARIANTS, BLOCK_C, BLOCK_T

DTYPES = ("bf16", "fp16", "fp32")
UNIT_STRIDES = {"suc", "sgc", "sdc", "syc", "swk"}     # channel strides of contiguous tensors and of weight [C, K]
FP32_POINTERS = {"dwb_part"}


def _signature(kernel, constexprs: dict, dtype: str):
    """Triton signature, constants and divisibility attributes, as the JIT specialises contiguous inputs."""
    signature, attrs, constants = {}, {}, dict(constexprs)
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in UNIT_STRIDES:
            signature[name], constants[name] = "constexpr", 1
        elif name in FP32_POINTERS:
            signature[name], attrs[(i,)] = "*fp32", [["tt.divisibility", 16]]
        elif name in ("u", "g", "weight", "bias", "state", "dy", "du", "dg", "y"):
            signature[name], attrs[(i,)] = "*" + dtype, [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name not in ("ssb", "ssc", "sss", "swc", "n_segments"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


def resources(kernel, constexprs: dict, num_warps: int, arch: int, dtype: str, num_stages: int) -> dict:
    signature, constants, attrs = _signature(kernel, constexprs, dtype)
    res = compile_resources(kernel, signature, constants, attrs, num_warps, num_stages, arch, with_sass=True)
    opcodes = collections.Counter(op for op in _loop_body(res["sass"]) if op != "NOP")
    return dict(regs=res["regs"], stack=res["stack"], shared=res["shared"], instructions=sum(opcodes.values()),
                opcodes=opcodes)


def _loop_body(sass: str) -> list:
    """Opcodes of the longest loop (a branch back to an earlier address), else of the whole kernel."""
    code = [(int(m[1], 16), m[2], m[3]) for m in re.finditer(
        r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)([^;]*);", sass)]
    loops = [(int(target[0], 16), address) for address, op, args in code if op == "BRA"
             for target in [re.findall(r"0x([0-9a-f]+)", args)] if target and int(target[0], 16) < address]
    if not loops:
        return [op for _, op, _ in code]
    first, last = max(loops, key=lambda loop: loop[1] - loop[0])
    return [op for address, op, _ in code if first <= address <= last]


def kernel_variants(k: int):
    """(name, kernel, constexprs, warps, stages, owned time steps x channels per loop iteration) of each launch."""
    yield (f"forward {BLOCK_T}x{BLOCK_C}", tk._fwd_kernel, dict(K=k, HAS_STATE=False, BT=BLOCK_T, BC=BLOCK_C), 4, 3,
           BLOCK_T * BLOCK_C)
    for name, launch in BACKWARD_VARIANTS.items():
        constexprs = dict(K=k, HAS_STATE=False, SEG=launch.segment, ROWS=launch.rows, BC=launch.block_c,
                          PREFETCH=launch.prefetch)
        yield f"backward {name}", tk._bwd_kernel, constexprs, launch.num_warps, 1, launch.rows * launch.block_c


def resident_warps(regs: int, shared: int, warps: int) -> int:
    """Warps per SM of sm_90 (64 K registers allocated per warp in units of 256, at most 32 CTAs and 64 warps,
    228 KB shared memory with 1 KB reserved per CTA)."""
    warp_regs = -(-regs * 32 // 256) * 256
    ctas = min(32, 65536 // (warp_regs * warps), 64 // warps, 233472 // (shared + 1024))
    return ctas * warps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--k", type=int, default=3, help="conv width")
    args = parser.parse_args()
    print(f"| kernel | warps | registers | stack (spills) | shared memory | resident warps per SM | "
          f"SASS per owned element (MUFU) |  (sm_{args.arch}, {args.dtype}, K = {args.k}; the backward's loop body: "
          f"one iteration of `rows` time steps)")
    print("|---|---|---|---|---|---|---|")
    for name, kernel, constexprs, warps, stages, owned in kernel_variants(args.k):
        res = resources(kernel, constexprs, warps, args.arch, args.dtype, stages)
        per_thread = owned / (32 * warps)
        print(f"| {name} | {warps} | {res['regs']} | {res['stack']} B | {res['shared']} B | "
              f"{resident_warps(res['regs'], res['shared'], warps)} | "
              f"{res['instructions'] / per_thread:.0f} ({res['opcodes']['MUFU'] / per_thread:.1f}) |")


if __name__ == "__main__":
    main()
