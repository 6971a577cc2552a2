"""RMSNorm for the Based blocks: y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (torch's rms_norm: one
fused kernel each way on CUDA instead of ~10 elementwise ones; on CPU the same numbers as the unfused formula).

megatron-core's torch norm fallback refuses sequence parallelism; this one marks its weight ``sequence_parallel``
(under SP each rank sees a slice of the sequence, so the weight's gradient is summed over the TP group).
"""

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.rms_norm(x.to(self.weight.dtype), self.weight.shape, self.weight, self.eps)
