from ..dispatch import use_fused
from .naive import short_conv_gate_reference, short_conv_gate_step_reference


def short_conv_gate(u, g, weight, bias, *, initial_state=None, output_final_state=False):
    """silu(causal_depthwise_conv1d(u) + bias) * g; u, g [B, T, C], weight [C, K], bias [C]."""
    if use_fused(u):
        from .fused import short_conv_gate_fused
        return short_conv_gate_fused(u, g, weight, bias, initial_state=initial_state,
                                     output_final_state=output_final_state)
    return short_conv_gate_reference(u, g, weight, bias, initial_state=initial_state,
                                     output_final_state=output_final_state)


def short_conv_gate_step(u, g, conv_state, weight, bias):
    """One decode step; conv_state [B, C, K-1] updated in place."""
    if use_fused(u):
        from .fused import short_conv_gate_step_fused
        return short_conv_gate_step_fused(u, g, conv_state, weight, bias)
    return short_conv_gate_step_reference(u, g, conv_state, weight, bias)
