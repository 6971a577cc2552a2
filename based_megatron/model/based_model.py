"""BasedModel: megatron-core GPTModel wired with the Based block spec.

embedding -> this stage's layers (pattern) -> final RMSNorm -> tied output layer; the first pipeline stage owns the
embedding, the last the output layer (megatron-core keeps tied copies in sync through the embedding group). Given
labels, forward returns the per-token loss from megatron-core's vocab-parallel cross entropy.
"""

from typing import Optional

import torch

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from .. import megatron_cpu_compat
from ..config import BasedConfig
from .layer_specs import block_spec


class BasedModel(GPTModel):
    def __init__(self, config: BasedConfig, pre_process: bool = True, post_process: bool = True,
                 vp_stage: Optional[int] = None):
        uses_rotary = any(symbol in config.layer_symbols for symbol in "SA")
        super().__init__(
            config=config,
            transformer_layer_spec=block_spec(config, vp_stage=vp_stage),
            vocab_size=config.padded_vocab_size,
            max_sequence_length=config.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=config.share_embeddings_and_output_weights,
            position_embedding_type="rope" if uses_rotary else "none",
            rotary_base=config.rotary_base,
            vp_stage=vp_stage,
        )


def build_model(config: BasedConfig, pre_process: Optional[bool] = None,
                post_process: Optional[bool] = None) -> BasedModel:
    """This process's stage of the model (megatron-core parallel_state must be initialised).

    pre_process / post_process default to whether this rank is the first / last pipeline stage."""
    megatron_cpu_compat.apply()
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    return BasedModel(config, pre_process=pre_process, post_process=post_process)


def count_parameters(config: BasedConfig) -> int:
    """Parameters of the whole model (tied embedding counted once), built on the meta device: no memory used.

    Needs a TP = PP = 1 config; runs inside a one-process parallel state if none is set up."""
    from .parallel import single_process_model_parallel

    if config.tensor_model_parallel_size != 1 or config.pipeline_model_parallel_size != 1:
        raise ValueError("count_parameters needs tensor_model_parallel_size = pipeline_model_parallel_size = 1")
    with single_process_model_parallel(), torch.device("meta"):
        model = BasedModel(config)
    return sum(p.numel() for p in model.parameters())
