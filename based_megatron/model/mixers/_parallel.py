"""What every Based mixer shares: its TP group and megatron-core's tensor-parallel linears."""

from typing import Optional

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class MixerBase(MegatronModule):
    """A ``TransformerLayer.self_attention`` module: forward(hidden_states [s, b, h], ...) -> (out, bias).

    Input projections are column-parallel (each rank owns whole heads / channels), the output projection is
    row-parallel; with sequence parallelism megatron-core's linears all-gather the sequence on the way in and
    reduce-scatter it on the way out, so the mixer core always sees the full sequence of its heads.
    """

    def __init__(self, config: TransformerConfig, layer_number: int,
                 pg_collection: Optional[ProcessGroupCollection] = None):
        super().__init__(config)
        self.layer_number = layer_number
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        self.tp_group = pg_collection.tp
        self.tp_size = self.tp_group.size()
        self.tp_rank = self.tp_group.rank()

    def column_parallel(self, input_size: int, output_size: int, bias: bool) -> ColumnParallelLinear:
        return ColumnParallelLinear(input_size, output_size, config=self.config, init_method=self.config.init_method,
                                    bias=bias, gather_output=False, skip_bias_add=False, tp_group=self.tp_group)

    def row_parallel(self, input_size: int, output_size: int, bias: bool) -> RowParallelLinear:
        # output_layer_init_method: std / sqrt(2 * num_layers), the residual-branch scaling of the paper
        return RowParallelLinear(input_size, output_size, config=self.config,
                                 init_method=self.config.output_layer_init_method, bias=bias,
                                 input_is_parallel=True, skip_bias_add=True, tp_group=self.tp_group)

    def check_inputs(self, inference_context=None, attention_bias=None, packed_seq_params=None,
                     supports_packed: bool = False):
        name = type(self).__name__
        if inference_context is not None:
            raise NotImplementedError(f"{name} (layer {self.layer_number}): megatron-core inference_context is not "
                                      "supported; generate with the HF model (based_megatron.hf), which keeps "
                                      "recurrent states")
        if attention_bias is not None:
            raise ValueError(f"{name} (layer {self.layer_number}): attention_bias is not supported")
        if packed_seq_params is not None and not supports_packed:
            raise NotImplementedError(f"{name} (layer {self.layer_number}): packed sequences (packed_seq_params / "
                                      "cu_seqlens) are not supported by this mixer (only linear attention resets "
                                      "its state at document boundaries); train on unpacked sequences")


def to_batch_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[s, b, heads * d] -> [b, s, heads, d] (a view: the kernels accept any strides)."""
    s, b, _ = x.shape
    return x.view(s, b, heads, -1).transpose(0, 1)


def to_sequence_first(o: torch.Tensor) -> torch.Tensor:
    """[b, s, heads, d] -> [s, b, heads * d]."""
    b, s = o.shape[:2]
    return o.transpose(0, 1).reshape(s, b, -1)
