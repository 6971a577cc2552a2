"""Plain-PyTorch sliding-window causal softmax attention: token i attends to keys i-window ... i.

q, k, v: [B, T, H, D] (rotary already applied); scale defaults to 1/sqrt(D).
"""

import torch
import torch.nn.functional as F


def sliding_window_mask(t: int, window: int, device=None) -> torch.Tensor:
    """[T, T] bool, True where query i may attend key j: i - window <= j <= i."""
    i = torch.arange(t, device=device).unsqueeze(1)
    j = torch.arange(t, device=device).unsqueeze(0)
    return (j <= i) & (j >= i - window)


def sliding_window_attention_sdpa(q, k, v, *, window: int, scale=None):
    mask = sliding_window_mask(q.shape[1], window, q.device)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


def sliding_window_attention_flex(q, k, v, *, window: int, scale=None):
    """torch flex_attention with a sliding-window block mask (fast when compiled on CUDA)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def in_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx >= q_idx - window)

    t = q.shape[1]
    block_mask = create_block_mask(in_window, B=None, H=None, Q_LEN=t, KV_LEN=t, device=q.device)
    o = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask, scale=scale)
    return o.transpose(1, 2)
