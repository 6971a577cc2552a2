"""Offline compilation of a Triton kernel for a CUDA target (no GPU needed): registers, spills, shared memory and
SASS, read from the cubin with the cuobjdump that ships with Triton. The per-op reports
(`python -m based_kernels.linear_attention.compile_report`, `... .short_conv.compile_report`) build the signatures.
"""

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_resources(kernel, signature: dict, constexprs: dict, attrs: dict, num_warps: int, num_stages: int,
                      arch: int, with_sass: bool = False, maxnreg: int = 0, gluon: bool = False) -> dict:
    """regs, stack (bytes; > 0 means spills), shared (bytes) and, with_sass, the SASS text of one compilation
    (maxnreg: Triton's register cap, 0 for none; gluon: a Gluon kernel)."""
    if gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as source
    else:
        source = ASTSource
    compiled = triton.compile(source(kernel, signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg or None))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = _cuobjdump("-res-usage", cubin.name)
        sass = _cuobjdump("-sass", cubin.name) if with_sass else None
    match = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return dict(regs=int(match[1]), stack=int(match[2]), shared=compiled.metadata.shared, sass=sass)


def _cuobjdump(flag: str, path: str) -> str:
    return subprocess.run([CUOBJDUMP, flag, path], capture_output=True, text=True, check=True).stdout


def loop_bodies(sass: str) -> list:
    """Instructions in each loop of the SASS (one per backward branch: from its target to the branch), in address
    order: the per-iteration instruction count that the issue rate divides."""
    sizes = []
    for addr, target in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+0x([0-9a-f]+)", sass):
        if int(target, 16) < int(addr, 16):
            sizes.append((int(addr, 16) - int(target, 16)) // 16 + 1)
    return sizes

