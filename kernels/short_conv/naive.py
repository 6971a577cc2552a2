"""Plain-PyTorch BaseConv core: y = silu(causal_depthwise_conv1d(u) + bias) * g.

u, g: [B, T, C]; weight [C, K]; bias [C]. The conv state is the last K-1 inputs u, [B, C, K-1] (zeros at the start).
"""

from typing import Optional

import torch
import torch.nn.functional as F


def short_conv_gate_reference(u, g, weight, bias, *, initial_state: Optional[torch.Tensor] = None,
                              output_final_state: bool = False):
    b, t, c = u.shape
    k = weight.shape[1]
    x = u.transpose(1, 2)                                                     # [B, C, T]
    history = x.new_zeros(b, c, k - 1) if initial_state is None else initial_state.to(x.dtype)
    x = torch.cat([history, x], dim=2)                                       # [B, C, K-1+T]
    conv = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), bias.to(x.dtype), groups=c)   # [B, C, T]
    y = F.silu(conv).transpose(1, 2) * g
    if output_final_state:
        return y, x[:, :, x.shape[2] - (k - 1):].clone()
    return y


def short_conv_gate_step_reference(u, g, conv_state: torch.Tensor, weight, bias):
    """One token: u, g [B, C]; conv_state [B, C, K-1] (oldest first) is shifted in place."""
    window = torch.cat([conv_state, u.unsqueeze(-1).to(conv_state.dtype)], dim=-1)   # [B, C, K]
    conv = (window * weight.to(window.dtype)).sum(-1) + bias.to(window.dtype)
    conv_state.copy_(window[:, :, 1:])
    return (F.silu(conv) * g.to(window.dtype)).to(g.dtype)
