from ..dispatch import kernel_mode, use_fused
from .naive import (
    linear_attention_chunked,
    linear_attention_quadratic,
    linear_attention_recurrent,
    linear_attention_reference,
    linear_attention_step as linear_attention_step_reference,
    linear_attention_varlen,
    taylor_feature_map,
)

FUSED_FEATURE_DIM = 16      # the fused kernels are built for Based's feature dim


def _fused_path(q) -> bool:
    if not use_fused(q):
        return False
    if q.shape[-1] == FUSED_FEATURE_DIM:
        return True
    if kernel_mode() == "fused":
        raise ValueError(f"BASED_KERNELS=fused: the fused linear attention needs feature dim {FUSED_FEATURE_DIM}, "
                         f"got {q.shape[-1]}")
    return False


def linear_attention(q, k, v, *, eps=1e-12, cu_seqlens=None, initial_state=None, output_final_state=False):
    """Causal Taylor linear attention; q, k [B, T, H, F], v [B, T, H, D] -> o [B, T, H, D] (see naive.py)."""
    if _fused_path(q):
        from .fused import linear_attention_fused
        return linear_attention_fused(q, k, v, eps=eps, cu_seqlens=cu_seqlens, initial_state=initial_state,
                                      output_final_state=output_final_state)
    return linear_attention_reference(q, k, v, eps=eps, cu_seqlens=cu_seqlens, initial_state=initial_state,
                                      output_final_state=output_final_state)


def linear_attention_step(q, k, v, S, z, *, eps=1e-12):
    """One decode step; S [B, H, M, D] and z [B, H, M] (fp32) updated in place."""
    if _fused_path(q):
        from .fused import linear_attention_step_fused
        return linear_attention_step_fused(q, k, v, S, z, eps=eps)
    return linear_attention_step_reference(q, k, v, S, z, eps=eps)
