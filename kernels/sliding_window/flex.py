"""The fused sliding-window path: torch flex_attention, compiled, with a cached sliding-window block mask.

Measured fastest on the H200 (bench/kernels.md): the block mask skips every key block outside the window, so the
cost grows with T * window instead of T^2 (SDPA with a dense mask computes all of it).
"""

import functools

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=64)
def sliding_window_block_mask(t: int, window: int, device: str):
    def in_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx >= q_idx - window)

    return create_block_mask(in_window, B=None, H=None, Q_LEN=t, KV_LEN=t, device=device)


def sliding_window_attention_flex_compiled(q, k, v, *, window: int, scale=None):
    """q, k, v [B, T, H, D] (any strides) -> [B, T, H, D]; token i attends to keys i-window .. i."""
    block_mask = sliding_window_block_mask(q.shape[1], window, str(q.device))
    o = _compiled_flex_attention()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
                                   scale=scale)
    return o.transpose(1, 2)
