from ..dispatch import use_fused
from .naive import (
    linear_attention_chunked,
    linear_attention_quadratic,
    linear_attention_recurrent,
    linear_attention_reference,
    linear_attention_step as linear_attention_step_reference,
    linear_attention_varlen,
    taylor_feature_map,
)


def linear_attention(q, k, v, *, eps=1e-12, cu_seqlens=None, initial_state=None, output_final_state=False):
    """Causal Taylor linear attention; q, k [B, T, H, F], v [B, T, H, D] -> o [B, T, H, D] (see naive.py)."""
    return linear_attention_reference(q, k, v, eps=eps, cu_seqlens=cu_seqlens, initial_state=initial_state,
                                      output_final_state=output_final_state)


def linear_attention_step(q, k, v, S, z, *, eps=1e-12):
    """One decode step; S [B, H, M, D] and z [B, H, M] (fp32) updated in place."""
    return linear_attention_step_reference(q, k, v, S, z, eps=eps)
