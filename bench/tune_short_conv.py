"""Times the backward tile variants of the fused short conv on a GPU (bf16, B*T = 32768, K = 3) and checks each
against the fp64 reference once.

    python bench/tune_short_conv.py [--channels 2048 3584]

fwd+bwd is timed as bench/kernels.py times it (triton.testing.do_bench, median); floor = 8 tensors of B*T*C bf16
moved at the measured device-to-device copy bandwidth. The backward kernel's own time comes from torch.profiler.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from based_kernels.short_conv.fused import BACKWARD_TILE_VARIANTS, short_conv_gate_fused
from based_kernels.short_conv.naive import short_conv_gate_reference

TOKENS, K = 32768, 3


def copy_bandwidth() -> float:
    """Bytes per second read + written by a 1 GiB device-to-device copy."""
    src = torch.empty(2**29, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / (do_bench(lambda: dst.copy_(src)) * 1e-3)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def max_grad_error(c: int, tiles) -> float:
    """Largest relative error of y and of the four gradients against the fp64 reference (T = 2049: ragged tiles)."""
    leaves = [torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
              for shape in ((4, 2049, c), (4, 2049, c), (c, K), (c,))]
    y = short_conv_gate_fused(*leaves, backward_tiles=tiles)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    y_ref = short_conv_gate_reference(*ref)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    grads_ref = torch.autograd.grad(y_ref, ref, dy.double())
    return max([rel_err(y, y_ref)] + [rel_err(a, b) for a, b in zip(grads, grads_ref)])


def backward_kernel_ms(step) -> float:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            step()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages() if "_bwd_kernel" in e.key) / 20 / 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[2048, 3584])
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print("| C | backward tile | fwd+bwd ms | % of bandwidth | _bwd_kernel ms | max rel err vs fp64 |")
    print("|---|---|---|---|---|---|")
    for c in args.channels:
        b, t = TOKENS // 2048, 2048
        u, g = (torch.randn(b, t, c, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        w = torch.randn(c, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        bias = torch.randn(c, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(u)
        floor_ms = 8 * u.numel() * 2 / bandwidth * 1e3
        for name, tiles in BACKWARD_TILE_VARIANTS.items():
            def step(tiles=tiles):
                y = short_conv_gate_fused(u, g, w, bias, backward_tiles=tiles)
                return torch.autograd.grad(y, (u, g, w, bias), dy)
            step()
            total = do_bench(step)
            print(f"| {c} | {name} | {total:.3f} | {100 * floor_ms / total:.0f}% | {backward_kernel_ms(step):.3f} | "
                  f"{max_grad_error(c, tiles):.1e} |", flush=True)


if __name__ == "__main__":
    main()
