"""Linear attention with the 2nd-order Taylor feature map (pattern symbol L).

    q = proj_q(x), k = proj_k(x)            # [s, b, H*F]: H heads of feature dim F
    v = proj_v(x)                           # [s, b, d]:   H heads of d/H
    phi(x) = [1, x / F^(1/4), vec(x x^T) / (sqrt(2) sqrt(F))]      ->  phi(q).phi(k) = 1 + q.k/sqrt(F) + (q.k)^2/(2F)
    o_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / (sum_{j<=i} phi(q_i).phi(k_j) + eps)
    out = out_proj(o)

TP splits heads. Packed sequences (packed_seq_params.cu_seqlens_q, batch 1) reset the state at each document.
"""

import based_kernels

from ._parallel import MixerBase, to_batch_first, to_sequence_first


class LinearAttention(MixerBase):
    def __init__(self, config, layer_number, pg_collection=None):
        super().__init__(config, layer_number, pg_collection)
        d, heads, features = config.hidden_size, config.la_num_heads, config.la_feature_dim
        self.local_heads = heads // self.tp_size
        self.proj_q = self.column_parallel(d, heads * features, bias=False)
        self.proj_k = self.column_parallel(d, heads * features, bias=False)
        self.proj_v = self.column_parallel(d, d, bias=False)
        self.out_proj = self.row_parallel(d, d, bias=False)

    def forward(self, hidden_states, attention_mask=None, inference_context=None, rotary_pos_emb=None,
                packed_seq_params=None, attention_bias=None, **unused_rotary_and_inference_kwargs):
        self.check_inputs(inference_context, attention_bias, packed_seq_params, supports_packed=True)
        q = to_batch_first(self.proj_q(hidden_states)[0], self.local_heads)     # [b, s, H/tp, F]
        k = to_batch_first(self.proj_k(hidden_states)[0], self.local_heads)
        v = to_batch_first(self.proj_v(hidden_states)[0], self.local_heads)     # [b, s, H/tp, d/H]
        cu_seqlens = None if packed_seq_params is None else packed_seq_params.cu_seqlens_q
        o = based_kernels.linear_attention(q, k, v, eps=self.config.la_eps, cu_seqlens=cu_seqlens)
        return self.out_proj(to_sequence_first(o))
