"""BaseConv, the gated short convolution (pattern symbol C).

    u = in_proj_u(x), g = in_proj_g(x)                 # [s, b, E*d] each, E = conv_expansion
    y = silu(causal_depthwise_conv1d(u) + conv_bias) * g
    out = out_proj(y)                                   # [s, b, d]

TP splits the E*d channels: in_proj_u / in_proj_g are separate column-parallel linears and conv_weight /
conv_bias are sharded on the same channel axis, so a checkpoint reshards by plain slicing on every tensor.
"""

import math

import torch
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)

import based_kernels

from ._parallel import MixerBase


class BaseConv(MixerBase):
    def __init__(self, config, layer_number, pg_collection=None):
        super().__init__(config, layer_number, pg_collection)
        d, channels, kernel = config.hidden_size, config.conv_channels, config.conv_kernel_size
        self.in_proj_u = self.column_parallel(d, channels, bias=True)
        self.in_proj_g = self.column_parallel(d, channels, bias=True)
        local_channels = channels // self.tp_size
        self.conv_weight = torch.nn.Parameter(torch.empty(local_channels, kernel, dtype=config.params_dtype))
        self.conv_bias = torch.nn.Parameter(torch.empty(local_channels, dtype=config.params_dtype))
        for param in (self.conv_weight, self.conv_bias):
            setattr(param, "tensor_model_parallel", True)
            setattr(param, "partition_dim", 0)
            setattr(param, "partition_stride", 1)
        self.out_proj = self.row_parallel(channels, d, bias=True)
        if config.perform_initialization:
            self._init_conv()

    @torch.no_grad()
    def _init_conv(self):
        """torch.nn.Conv1d's default for a depthwise conv: U(-1/sqrt(K), 1/sqrt(K)) for weight and bias.

        The full [channels, K] tensors are drawn and sliced, so every TP layout gets the same numbers."""
        channels, kernel = self.config.conv_channels, self.config.conv_kernel_size
        bound = 1.0 / math.sqrt(kernel)
        full_weight = torch.empty(channels, kernel).uniform_(-bound, bound)
        full_bias = torch.empty(channels).uniform_(-bound, bound)
        self.conv_weight.copy_(full_weight.chunk(self.tp_size, dim=0)[self.tp_rank])
        self.conv_bias.copy_(full_bias.chunk(self.tp_size, dim=0)[self.tp_rank])

    def forward(self, hidden_states, attention_mask=None, inference_context=None, rotary_pos_emb=None,
                packed_seq_params=None, attention_bias=None, **unused_rotary_and_inference_kwargs):
        self.check_inputs(inference_context, attention_bias, packed_seq_params)
        u, _ = self.in_proj_u(hidden_states)                      # [s, b, C/tp], full sequence under SP
        g, _ = self.in_proj_g(hidden_states)
        y = based_kernels.short_conv_gate(u.transpose(0, 1), g.transpose(0, 1),
                                          self.conv_weight, self.conv_bias)    # [b, s, C/tp]
        return self.out_proj(y.transpose(0, 1))

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """conv_weight / conv_bias sharded on channels (axis 0); the linears shard themselves."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        own = {}
        self._save_to_state_dict(own, "", keep_vars=True)
        sharded = make_sharded_tensors_for_checkpoint(
            own, prefix, tensor_parallel_layers_axis_map={"conv_weight": 0, "conv_bias": 0},
            sharded_offsets=sharded_offsets, tp_group=self.tp_group,
            dp_cp_group=metadata["dp_cp_group"],
        )
        for name, module in self.named_children():
            sharded.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                      tp_group=self.tp_group))
        return sharded
