"""based_kernels: the Based mixer cores. Each op picks its fused Triton kernel on CUDA and its plain-PyTorch
reference otherwise (see dispatch.py; BASED_KERNELS=reference forces the references)."""

from .dispatch import kernel_mode, use_fused
from .linear_attention import linear_attention, linear_attention_step
from .short_conv import short_conv_gate, short_conv_gate_step
from .sliding_window import sliding_window_attention

__all__ = [
    "kernel_mode",
    "linear_attention",
    "linear_attention_step",
    "short_conv_gate",
    "short_conv_gate_step",
    "sliding_window_attention",
    "use_fused",
]
