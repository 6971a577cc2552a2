"""Based mixers for megatron-core TransformerLayer's ``self_attention`` slot: [s, b, h] -> (out, bias)."""

from .base_conv import BaseConv
from .linear_attention import LinearAttention
from .sliding_window import SlidingWindowAttention

__all__ = ["BaseConv", "LinearAttention", "SlidingWindowAttention"]
