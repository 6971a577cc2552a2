"""Sliding-window softmax attention with rotary embeddings (pattern symbol S).

    q, k, v = linear_qkv(x)                 # rows ordered per head [h: q, k, v], head dim d/H
    q, k = rope(q), rope(k)                 # rotate-half, GPTModel's rotary_pos_emb (base config.rotary_base)
    o_i = softmax_{i - window <= j <= i}(q_i . k_j / sqrt(d/H)) v_j
    out = linear_proj(o)

TP splits heads: the per-head row order makes each contiguous TP chunk of linear_qkv a set of whole heads.
"""

from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

import based_kernels

from ._parallel import MixerBase, to_sequence_first


class SlidingWindowAttention(MixerBase):
    def __init__(self, config, layer_number, pg_collection=None):
        super().__init__(config, layer_number, pg_collection)
        d = config.hidden_size
        self.local_heads = config.swa_num_heads // self.tp_size
        self.linear_qkv = self.column_parallel(d, 3 * d, bias=False)
        self.linear_proj = self.row_parallel(d, d, bias=False)

    def forward(self, hidden_states, attention_mask=None, inference_context=None, rotary_pos_emb=None,
                packed_seq_params=None, attention_bias=None, **unused_rotary_and_inference_kwargs):
        self.check_inputs(inference_context, attention_bias, packed_seq_params)
        if rotary_pos_emb is None:
            raise ValueError(f"SlidingWindowAttention (layer {self.layer_number}) needs rotary_pos_emb: build the "
                             "model with position_embedding_type='rope'")
        qkv, _ = self.linear_qkv(hidden_states)                      # [s, b, H/tp * 3 * hd]
        s, b, _ = qkv.shape
        q, k, v = qkv.view(s, b, self.local_heads, 3, -1).unbind(dim=3)   # [s, b, H/tp, hd] each
        q = apply_rotary_pos_emb(q, rotary_pos_emb, config=self.config)
        k = apply_rotary_pos_emb(k, rotary_pos_emb, config=self.config)
        o = based_kernels.sliding_window_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                                   window=self.config.swa_window)   # [b, s, H/tp, hd]
        return self.linear_proj(to_sequence_first(o))
