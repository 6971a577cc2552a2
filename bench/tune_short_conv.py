"""Times every backward launch variant of the fused short conv (BACKWARD_VARIANTS) on a GPU (bf16, B*T = 32768,
K = 3) and checks each against the fp64 reference once.

    python bench/tune_short_conv.py [--channels 2048 3584]

fwd+bwd is timed as bench/kernels.py times it (triton.testing.do_bench, median), as a call and as a CUDA graph
replay (its kernels without the host's work between them); floor = 8 tensors of B*T*C bf16
moved at the measured device-to-device copy bandwidth. The backward kernel's own time (_bwd_kernel) and that of the
torch sum of its dw/dbias partials come from torch.profiler.
"""

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from based_kernels.short_conv.fused import BACKWARD_VARIANTS, short_conv_gate_fused
from based_kernels.short_conv.naive import short_conv_gate_reference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import graph_replay_ms  # noqa: E402  (bench/kernels.py)

TOKENS, K = 32768, 3


def copy_bandwidth() -> float:
    """Bytes per second read + written by a 1 GiB device-to-device copy."""
    src = torch.empty(2**29, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / (do_bench(lambda: dst.copy_(src)) * 1e-3)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def max_grad_error(c: int, launch, dtype) -> float:
    """Largest relative error of y and of the five gradients (initial state in) against the fp64 reference
    (T = 2049: ragged tiles and segments)."""
    leaves = [torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)
              for shape in ((4, 2049, c), (4, 2049, c), (c, K), (c,), (4, c, K - 1))]
    y = short_conv_gate_fused(*leaves[:4], initial_state=leaves[4], backward_launch=launch)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    y_ref = short_conv_gate_reference(*ref[:4], initial_state=ref[4])
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    grads_ref = torch.autograd.grad(y_ref, ref, dy.double())
    return max([rel_err(y, y_ref)] + [rel_err(a, b) for a, b in zip(grads, grads_ref)])


def backward_kernel_ms(step) -> tuple:
    """ms per step of the backward kernel and of the reduction kernels (the dw/dbias partial sum)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel = sum(e.device_time_total for e in events if "_bwd" in e.key)
    reduce = sum(e.device_time_total for e in events if "reduce" in e.key.lower())
    return kernel / 20 / 1e3, reduce / 20 / 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[2048, 3584])
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print("| C | backward variant | fwd+bwd ms (call / CUDA graph) | % of bandwidth (call / graph) | "
          "backward kernel ms | dw/dbias sum ms | max rel err vs fp64, bf16 (<= 1e-2) | fp32 (<= 1e-4) |")
    print("|---|---|---|---|---|---|---|---|")
    for c in args.channels:
        b, t = TOKENS // 2048, 2048
        u, g = (torch.randn(b, t, c, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        w = torch.randn(c, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        bias = torch.randn(c, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(u)
        floor_ms = 8 * u.numel() * 2 / bandwidth * 1e3
        for name, launch in BACKWARD_VARIANTS.items():
            def step(launch=launch):
                y = short_conv_gate_fused(u, g, w, bias, backward_launch=launch)
                return torch.autograd.grad(y, (u, g, w, bias), dy)
            step()
            total, graph = do_bench(step), graph_replay_ms(step)
            kernel_ms, reduce_ms = backward_kernel_ms(step)
            print(f"| {c} | {name} | {total:.3f} / {graph:.3f} | {100 * floor_ms / total:.0f}% / "
                  f"{100 * floor_ms / graph:.0f}% | {kernel_ms:.3f} | {reduce_ms:.3f} | "
                  f"{max_grad_error(c, launch, torch.bfloat16):.1e} | {max_grad_error(c, launch, torch.float32):.1e} |",
                  flush=True)


if __name__ == "__main__":
    main()
