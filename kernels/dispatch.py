"""The one switch between fused Triton kernels and the plain-PyTorch references.

Fused kernels run on CUDA tensors when Triton is importable. ``BASED_KERNELS=reference`` forces the references
everywhere (debugging, bisecting a numerical difference); ``BASED_KERNELS=fused`` makes a missing fused path an
error instead of a silent fallback.
"""

import importlib.util
import os

import torch

_MODES = ("auto", "reference", "fused")


def kernel_mode() -> str:
    mode = os.environ.get("BASED_KERNELS", "auto").lower()
    if mode not in _MODES:
        raise ValueError(f"environment variable BASED_KERNELS={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_fused(x: torch.Tensor) -> bool:
    """True when the op should run its fused kernel on tensor ``x``."""
    mode = kernel_mode()
    if mode == "reference":
        return False
    runnable = x.is_cuda and triton_available()
    if mode == "fused" and not runnable:
        raise RuntimeError(
            "BASED_KERNELS=fused but the fused kernels cannot run here "
            f"(tensor on {x.device}, triton {'found' if triton_available() else 'missing'})"
        )
    return runnable
