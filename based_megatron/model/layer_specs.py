"""megatron-core ModuleSpecs for the Based layer pattern: one TransformerLayer spec per symbol, one block spec per
pipeline stage. Every layer is pre-norm RMSNorm -> mixer (self_attention slot) -> RMSNorm -> SwiGLU MLP."""

from typing import Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)

from ..config import BasedConfig
from .mixers import BaseConv, LinearAttention, SlidingWindowAttention
from .norms import RMSNorm

FULL_ATTENTION_SPEC = ModuleSpec(
    module=SelfAttention,
    params={"attn_mask_type": AttnMaskType.causal},
    submodules=SelfAttentionSubmodules(
        linear_qkv=ColumnParallelLinear,
        core_attention=DotProductAttention,
        linear_proj=RowParallelLinear,
        q_layernorm=IdentityOp,
        k_layernorm=IdentityOp,
    ),
)

MIXER_SPECS = {
    "C": ModuleSpec(module=BaseConv),
    "L": ModuleSpec(module=LinearAttention),
    "S": ModuleSpec(module=SlidingWindowAttention),
    "A": FULL_ATTENTION_SPEC,
}

# SwiGLU with config.gated_linear_unit=True and activation_func=silu: fc2(silu(gate) * value)
SWIGLU_SPEC = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                              linear_fc2=RowParallelLinear))


def layer_spec(symbol: str) -> ModuleSpec:
    """TransformerLayer spec for one pattern symbol."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=MIXER_SPECS[symbol],
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=SWIGLU_SPEC,
            mlp_bda=get_bias_dropout_add,
        ),
    )


def stage_layer_ids(config: BasedConfig, pp_rank: Optional[int] = None, vp_stage: Optional[int] = None) -> range:
    """Global (0-based) ids of the layers a pipeline stage builds, as megatron-core computes them."""
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return range(offset, offset + get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank))


def block_spec(config: BasedConfig, pp_rank: Optional[int] = None,
               vp_stage: Optional[int] = None) -> TransformerBlockSubmodules:
    """The decoder block of one pipeline stage (pp_rank None: this process's stage) with a final RMSNorm."""
    symbols = config.layer_symbols
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec(symbols[i]) for i in stage_layer_ids(config, pp_rank, vp_stage)],
        layer_norm=RMSNorm,
    )
