from ..dispatch import use_fused
from .naive import sliding_window_attention_flex, sliding_window_attention_sdpa, sliding_window_mask


def sliding_window_attention(q, k, v, *, window, scale=None):
    """Causal softmax attention over keys i-window .. i; q, k, v [B, T, H, D]."""
    if use_fused(q):
        from .flex import sliding_window_attention_flex_compiled
        return sliding_window_attention_flex_compiled(q, k, v, window=window, scale=scale)
    return sliding_window_attention_sdpa(q, k, v, window=window, scale=scale)
