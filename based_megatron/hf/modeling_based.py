"""Hugging Face model of the Based language model, with a recurrent generation cache.

Self-contained: this file and `configuration_based.py` are copied into every exported model
directory and loaded with `trust_remote_code=True`. It imports nothing from `based_megatron`;
when the optional `based_kernels` package is installed it uses its fused kernels on CUDA
(`BasedConfig.kernel_backend`), otherwise the plain PyTorch code below.

Parameter names follow the released HazyResearch checkpoints:
    transformer.embeddings.word_embeddings.weight
    transformer.layers.{i}.mixer.{in_proj,conv.conv,out_proj}      BaseConv (gated short conv)
    transformer.layers.{i}.mixer.{proj_q,proj_k,proj_v,out_proj}   Taylor linear attention
    transformer.layers.{i}.mixer.{Wqkv,out_proj}                   sliding-window (or full) attention
    transformer.layers.{i}.{norm1,norm2,mlp.fc1,mlp.fc2}, transformer.ln_f, lm_head (tied)

Every forward processes T new tokens on top of an optional `BasedCache`, whose size does not
depend on the number of tokens seen: per layer either the linear-attention state
(S [B, H, 273, Dh] and z [B, H, 273], fp32), the last `lookback` rotated keys and values of the
sliding window (plus which of them are real tokens), or the last K-1 inputs of the short conv.
(Optional full-attention layers, `attn_layers`, keep an ordinary growing KV cache.)
Left padding: `attention_mask` zeros never enter any state, and rotary positions count real
tokens only, so a padded row computes exactly what the prompt alone would.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_based import (
    MIXER_BASE_CONV,
    MIXER_FULL_ATTENTION,
    MIXER_LINEAR_ATTENTION,
    MIXER_SLIDING_WINDOW,
    BasedConfig,
)

try:  # fused kernels of the based_megatron project (optional)
    import based_kernels
except ImportError:
    based_kernels = None

CHUNK_SIZE = 256  # tokens per block of the plain-PyTorch prefill (bounds its T x T memory)


def use_fused_kernels(config: BasedConfig, tensor: torch.Tensor) -> bool:
    if config.kernel_backend == "torch":
        return False
    if config.kernel_backend == "based_kernels":
        if based_kernels is None:
            raise ImportError("BasedConfig.kernel_backend='based_kernels' but the based_kernels package is not installed")
        return True
    return based_kernels is not None and tensor.is_cuda


# ----------------------------------------------------------------------------------------------
# Generation cache: constant size per sequence
# ----------------------------------------------------------------------------------------------


class BasedLayerState:
    """Recurrent state of one layer: a few fixed-size tensors, batch first."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False
    is_initialized = True

    def __init__(self, **tensors: torch.Tensor):
        self.tensors = tensors

    def __getattr__(self, name):
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def reset(self):
        for t in self.tensors.values():
            t.zero_()

    def reorder_cache(self, beam_idx: torch.LongTensor):
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor):
        self.tensors = {k: t.index_select(0, indices.to(t.device)) for k, t in self.tensors.items()}

    def batch_repeat_interleave(self, repeats: int):
        self.tensors = {k: t.repeat_interleave(repeats, dim=0) for k, t in self.tensors.items()}

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("a recurrent Based state cannot be rolled back (crop)")

    def get_seq_length(self) -> int:
        raise NotImplementedError("BasedCache tracks the sequence length, not its layers")

    def get_max_length(self) -> int:
        return -1

    def offload(self):
        self.tensors = {k: t.to("cpu", non_blocking=True) for k, t in self.tensors.items()}

    def prefetch(self):
        pass


class BasedCache(Cache):
    """Constant-size generation cache of a `BasedForCausalLM` (one `BasedLayerState` per layer).

    `seen_tokens`: tokens (padding included) processed so far, the transformers notion of cache length.
    `positions[b]`: real (unpadded) tokens of sequence b so far = the rotary position of its next token.
    """

    def __init__(self, config: BasedConfig, batch_size: int, dtype: torch.dtype, device: torch.device | str):
        layers = [self._layer_state(config, kind, batch_size, dtype, device) for kind in config.mixer_types]
        super().__init__(layers=layers)
        self.seen_tokens = 0
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=device)

    @staticmethod
    def _layer_state(config, kind, batch_size, dtype, device) -> BasedLayerState:
        d = config.n_embd
        if kind == MIXER_LINEAR_ATTENTION:
            heads, features = config.linear_attention_heads, 1 + config.feature_dim + config.feature_dim**2
            fp32 = dict(dtype=torch.float32, device=device)
            return BasedLayerState(
                S=torch.zeros(batch_size, heads, features, d // heads, **fp32),
                z=torch.zeros(batch_size, heads, features, **fp32),
            )
        if kind in (MIXER_SLIDING_WINDOW, MIXER_FULL_ATTENTION):
            if kind == MIXER_SLIDING_WINDOW:
                heads, lookback = config.sliding_window_heads, config.sliding_window_lookback
            else:  # full attention: the buffer grows with every token
                heads, lookback = config.n_head, 0
            shape = (batch_size, heads, lookback, d // heads)
            return BasedLayerState(
                keys=torch.zeros(shape, dtype=dtype, device=device),
                values=torch.zeros(shape, dtype=dtype, device=device),
                valid=torch.zeros(batch_size, lookback, dtype=torch.bool, device=device),
            )
        return BasedLayerState(conv=torch.zeros(batch_size, config.conv_channels, config.conv_kernel_size - 1, dtype=dtype, device=device))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers) + self.positions.numel() * self.positions.element_size()

    def reset(self):
        super().reset()
        self.seen_tokens = 0
        self.positions.zero_()

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self.positions = self.positions.index_select(0, indices.to(self.positions.device))

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("a recurrent Based cache cannot be rolled back (crop)")


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class BasedRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # y = x / sqrt(mean(x^2) + eps) * w, computed in fp32
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(self.weight.dtype)


class BasedMLP(nn.Module):
    """SwiGLU: fc1 = [value; gate], y = fc2(value * silu(gate))."""

    def __init__(self, config: BasedConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.n_embd, 2 * config.n_inner, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(config.n_inner, config.n_embd, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(value * F.silu(gate))


class ShortConvolution(nn.Module):
    """Holds the depthwise causal conv weight under the released name `conv.conv`."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias)


class BaseConv(nn.Module):
    """Gated short convolution: u, g = in_proj(x); y = out_proj(silu(causal_conv(u)) * g)."""

    def __init__(self, config: BasedConfig):
        super().__init__()
        self.config = config
        d, channels = config.n_embd, config.conv_channels
        self.in_proj = nn.Linear(d, 2 * channels, bias=config.base_conv_bias)
        self.conv = ShortConvolution(channels, config.conv_kernel_size, config.conv_bias)
        self.out_proj = nn.Linear(channels, d, bias=config.base_conv_bias)

    def forward(self, x, state: BasedLayerState | None, step: "StepInputs"):
        u, g = self.in_proj(x).chunk(2, dim=-1)  # [B, T, C] each
        if step.mask is not None:
            u = u * step.mask[..., None].to(u.dtype)  # padding never enters the conv window
        weight, bias = self.conv.conv.weight[:, 0, :], self.conv.conv.bias  # [C, K], [C] or None
        conv_state = state.conv if state is not None else None
        if use_fused_kernels(self.config, x):
            y = self._fused(u, g, weight, bias, conv_state)
        else:
            y = self._torch(u, g, weight, bias, conv_state)
        return self.out_proj(y)

    @staticmethod
    def _torch(u, g, weight, bias, conv_state):
        channels, kernel = weight.shape
        history = conv_state if conv_state is not None else u.new_zeros(u.shape[0], channels, kernel - 1)
        window = torch.cat([history.to(u.dtype), u.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
        conv = F.conv1d(window, weight[:, None, :], bias, groups=channels)  # [B, C, T]
        if conv_state is not None:
            conv_state.copy_(window[..., window.shape[-1] - (kernel - 1) :])
        return F.silu(conv.transpose(1, 2)) * g

    @staticmethod
    def _fused(u, g, weight, bias, conv_state):
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        if conv_state is not None and u.shape[1] == 1:
            return based_kernels.short_conv_gate_step(u[:, 0], g[:, 0], conv_state, weight, bias)[:, None]
        if conv_state is None:
            return based_kernels.short_conv_gate(u, g, weight, bias)
        y, final_state = based_kernels.short_conv_gate(u, g, weight, bias, initial_state=conv_state, output_final_state=True)
        conv_state.copy_(final_state)
        return y


def taylor_feature_map(x: torch.Tensor, input_dim: int) -> torch.Tensor:
    """phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))] so phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d)."""
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    return torch.cat([torch.ones_like(x[..., :1]), x / input_dim**0.25, outer / math.sqrt(2 * input_dim)], dim=-1)


def linear_attention_torch(q, k, v, S, z, mask, eps: float, input_dim: int):
    """Causal Taylor linear attention over T tokens on top of the state (S, z), updated in place.

    q, k: [B, H, T, F]; v: [B, H, T, D]; S: [B, H, F', D] fp32; z: [B, H, F'] fp32; mask: [B, T] or None.
    o_i = (phi(q_i) S + sum_{j<=i} (phi(q_i).phi(k_j)) v_j) / (phi(q_i).z + sum_{j<=i} phi(q_i).phi(k_j) + eps)
    """
    phi_q, phi_k, v = taylor_feature_map(q.float(), input_dim), taylor_feature_map(k.float(), input_dim), v.float()
    if mask is not None:
        keep = mask[:, None, :, None].float()
        phi_k, v = phi_k * keep, v * keep
    outputs = []
    for start in range(0, q.shape[2], CHUNK_SIZE):
        pq, pk, vc = (t[:, :, start : start + CHUNK_SIZE] for t in (phi_q, phi_k, v))
        scores = torch.tril(pq @ pk.transpose(-1, -2))  # [B, H, C, C]
        numerator = scores @ vc + pq @ S
        denominator = scores.sum(-1) + (pq @ z.unsqueeze(-1)).squeeze(-1)
        outputs.append(numerator / (denominator.unsqueeze(-1) + eps))
        S += pk.transpose(-1, -2) @ vc
        z += pk.sum(dim=2)
    return torch.cat(outputs, dim=2)


class LinearAttention(nn.Module):
    def __init__(self, config: BasedConfig):
        super().__init__()
        self.config = config
        d, heads, features = config.n_embd, config.linear_attention_heads, config.feature_dim
        self.num_heads, self.feature_dim, self.head_dim = heads, features, d // heads
        self.proj_q = nn.Linear(d, heads * features, bias=False)
        self.proj_k = nn.Linear(d, heads * features, bias=False)
        self.proj_v = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, state: BasedLayerState | None, step: "StepInputs"):
        b, t, _ = x.shape
        q = self.proj_q(x).view(b, t, self.num_heads, self.feature_dim)
        k = self.proj_k(x).view(b, t, self.num_heads, self.feature_dim)
        v = self.proj_v(x).view(b, t, self.num_heads, self.head_dim)
        if use_fused_kernels(self.config, x) and step.mask is None:
            o = self._fused(q, k, v, state)
        else:
            if state is not None:
                S, z = state.S, state.z
            else:
                S = x.new_zeros(b, self.num_heads, 1 + self.feature_dim + self.feature_dim**2, self.head_dim, dtype=torch.float32)
                z = S.new_zeros(S.shape[:-1])
            o = linear_attention_torch(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), S, z, step.mask,
                self.config.linear_attention_eps, self.config.feature_map_input_dim,
            ).transpose(1, 2)
        return self.out_proj(o.reshape(b, t, -1).to(x.dtype))

    def _fused(self, q, k, v, state):
        eps = self.config.linear_attention_eps
        if state is None:
            return based_kernels.linear_attention(q, k, v, eps=eps)
        if q.shape[1] == 1:
            return based_kernels.linear_attention_step(q[:, 0], k[:, 0], v[:, 0], state.S, state.z, eps=eps)[:, None]
        o, (S, z) = based_kernels.linear_attention(
            q, k, v, eps=eps, initial_state=(state.S, state.z), output_final_state=True
        )
        state.S.copy_(S)
        state.z.copy_(z)
        return o


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE on the full head dim; x: [B, H, T, D], positions: [B, T]."""
    dim = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = positions[:, None, :, None].float() * inv_freq  # [B, 1, T, D/2]
    angles = torch.cat([angles, angles], dim=-1)
    xf = x.float()
    return (xf * angles.cos() + rotate_half(xf) * angles.sin()).to(x.dtype)


def sliding_window_torch(q, k, v, key_valid, lookback: int | None, scale: float):
    """Softmax attention of the last T of N keys: query i (key index N-T+i) sees keys i-lookback..i.

    q: [B, H, T, D]; k, v: [B, H, N, D]; key_valid: [B, N] bool; lookback None = full causal attention.
    A query always sees its own key, so padded rows never produce NaN.
    """
    lookback = k.shape[2] if lookback is None else lookback
    t, n = q.shape[2], k.shape[2]
    outputs = []
    for start in range(0, t, CHUNK_SIZE):
        stop = min(start + CHUNK_SIZE, t)
        first_key = max(0, n - t + start - lookback)
        query_index = torch.arange(n - t + start, n - t + stop, device=q.device)[:, None]
        key_index = torch.arange(first_key, n - t + stop, device=q.device)[None, :]
        in_window = (key_index <= query_index) & (key_index >= query_index - lookback)
        allowed = in_window & key_valid[:, None, None, first_key : n - t + stop]
        allowed = allowed | (key_index == query_index)
        outputs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:stop], k[:, :, first_key : n - t + stop], v[:, :, first_key : n - t + stop],
                attn_mask=allowed, scale=scale,
            )
        )
    return torch.cat(outputs, dim=2)


class SlidingWindowAttention(nn.Module):
    """Rotary softmax attention over the last `lookback` tokens and itself (full causal when lookback is None)."""

    def __init__(self, config: BasedConfig, full_attention: bool = False):
        super().__init__()
        self.config = config
        d = config.n_embd
        heads = config.n_head if full_attention else config.sliding_window_heads
        self.num_heads, self.head_dim = heads, d // heads
        self.lookback = None if full_attention else config.sliding_window_lookback
        self.Wqkv = nn.Linear(d, 3 * d, bias=config.qkv_proj_bias)  # rows: [q all heads; k all heads; v all heads]
        self.out_proj = nn.Linear(d, d, bias=config.out_proj_bias)

    def forward(self, x, state: BasedLayerState | None, step: "StepInputs"):
        b, t, _ = x.shape
        q, k, v = self.Wqkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        q = apply_rotary(q, step.positions, self.config.rotary_emb_base)
        k = apply_rotary(k, step.positions, self.config.rotary_emb_base)
        scale = self.head_dim**-0.5
        new_valid = step.mask if step.mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        if step.mask is None and not step.has_past and (self.lookback is None or use_fused_kernels(self.config, x)):
            if self.lookback is None:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            else:
                o = based_kernels.sliding_window_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window=self.lookback, scale=scale
                ).transpose(1, 2)
            if state is not None:
                self._remember(state, k, v, new_valid)
        elif state is not None:
            keys, values = torch.cat([state.keys, k], dim=2), torch.cat([state.values, v], dim=2)
            valid = torch.cat([state.valid, new_valid], dim=1)
            o = sliding_window_torch(q, keys, values, valid, self.lookback, scale)
            self._remember(state, keys, values, valid)
        else:  # no cache
            o = sliding_window_torch(q, k, v, new_valid, self.lookback, scale)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, -1))

    def _remember(self, state, keys, values, valid):
        """Keep the last `lookback` keys/values (rotated) in the fixed-size buffer (all of them for full attention)."""
        if self.lookback is None:
            state.tensors.update(keys=keys, values=values, valid=valid)
            return
        if keys.shape[2] < self.lookback:  # fewer new tokens than the window: shift the old buffer
            keys = torch.cat([state.keys, keys], dim=2)
            values = torch.cat([state.values, values], dim=2)
            valid = torch.cat([state.valid, valid], dim=1)
        state.keys.copy_(keys[:, :, -self.lookback :])
        state.values.copy_(values[:, :, -self.lookback :])
        state.valid.copy_(valid[:, -self.lookback :])


def build_mixer(config: BasedConfig, kind: str) -> nn.Module:
    if kind == MIXER_BASE_CONV:
        return BaseConv(config)
    if kind == MIXER_LINEAR_ATTENTION:
        return LinearAttention(config)
    return SlidingWindowAttention(config, full_attention=kind == MIXER_FULL_ATTENTION)


class StepInputs:
    """What every layer needs to know about the T new tokens.

    mask: [B, T] bool, None when every token is real; positions: [B, T] rotary positions;
    has_past: whether the cache already holds tokens.
    """

    def __init__(self, mask, positions, has_past):
        self.mask, self.positions, self.has_past = mask, positions, has_past


class BasedBlock(nn.Module):
    """Pre-norm block: h = h + mixer(norm1(h)); h = h + mlp(norm2(h)), residual kept in fp32."""

    def __init__(self, config: BasedConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer = build_mixer(config, config.mixer_types[layer_idx])
        self.norm1 = BasedRMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = BasedMLP(config)
        self.norm2 = BasedRMSNorm(config.n_embd, config.layer_norm_epsilon)

    def forward(self, residual, state, step: StepInputs):
        residual = residual + self.mixer(self.norm1(residual), state, step).to(residual.dtype)
        return residual + self.mlp(self.norm2(residual)).to(residual.dtype)


class BasedEmbeddings(nn.Module):
    def __init__(self, config: BasedConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.n_embd)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class BasedPreTrainedModel(PreTrainedModel):
    config_class = BasedConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["BasedBlock"]
    _is_stateful = True
    _skip_keys_device_placement = ["cache"]

    @torch.no_grad()
    def _init_weights(self, module):
        # Based init: N(0, sqrt(2 / (5 d))); block output projections scaled by 1 / sqrt(2 n_layer).
        std = math.sqrt(2.0 / (5 * self.config.n_embd))
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BasedRMSNorm):
            init.ones_(module.weight)
        if isinstance(module, (BaseConv, LinearAttention, SlidingWindowAttention)):
            init.normal_(module.out_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        if isinstance(module, BasedMLP):
            init.normal_(module.fc2.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))


class BasedModel(BasedPreTrainedModel):
    def __init__(self, config: BasedConfig):
        super().__init__(config)
        self.embeddings = BasedEmbeddings(config)
        self.layers = nn.ModuleList(BasedBlock(config, i) for i in range(config.n_layer))
        self.ln_f = BasedRMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: BasedCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("BasedModel.forward: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        batch, new_tokens = inputs_embeds.shape[:2]
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = BasedCache(self.config, batch, inputs_embeds.dtype, inputs_embeds.device)
        if cache is not None and not isinstance(cache, BasedCache):
            raise TypeError(f"BasedModel.forward: cache must be a BasedCache, got {type(cache).__name__}")

        step = self._step_inputs(attention_mask, position_ids, cache, batch, new_tokens, inputs_embeds.device)
        residual = inputs_embeds.float() if self.config.residual_in_fp32 else inputs_embeds
        all_hidden_states = (residual,) if output_hidden_states else None
        for layer in self.layers:
            state = cache.layers[layer.layer_idx] if cache is not None else None
            residual = layer(residual, state, step)
            if output_hidden_states:
                all_hidden_states += (residual,)
        hidden_states = self.ln_f(residual)
        if cache is not None:
            cache.seen_tokens += new_tokens
            cache.positions += step.mask.sum(1) if step.mask is not None else new_tokens
        return hidden_states, cache, all_hidden_states

    @staticmethod
    def _step_inputs(attention_mask, position_ids, cache, batch, new_tokens, device) -> StepInputs:
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"BasedModel.forward: attention_mask must be 2D [batch, length], got {tuple(attention_mask.shape)}")
            mask = attention_mask[:, -new_tokens:].to(device=device, dtype=torch.bool)
            if bool(mask.all()):  # one host sync per forward; lets every layer take the unmasked fast path
                mask = None
        if position_ids is None:
            start = cache.positions[:, None] if cache is not None else torch.zeros(batch, 1, dtype=torch.long, device=device)
            if mask is None:
                position_ids = start + torch.arange(new_tokens, device=device)
            else:  # real tokens count from 0; padding gets position 0 (it is masked everywhere)
                position_ids = (start + mask.long().cumsum(1) - 1).clamp(min=0)
        has_past = cache is not None and cache.seen_tokens > 0
        return StepInputs(mask, position_ids.to(device), has_past)


# transformers 5.x renamed the outputs' `past_key_values` to `cache` (5.17 still has the old name).
_OUTPUT_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class BasedForCausalLM(BasedPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.embeddings.word_embeddings.weight"}

    def __init__(self, config: BasedConfig):
        super().__init__(config)
        self.transformer = BasedModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward() allocates its own BasedCache

    def get_input_embeddings(self):
        return self.transformer.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: BasedCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: BasedCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values  # transformers before the 5.x rename
        hidden_states, cache, all_hidden_states = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        kept = hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        logits = self.lm_head(kept)[..., : self.config.vocab_size]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        output = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=all_hidden_states,
                                        **{_OUTPUT_CACHE_FIELD: cache})
        return output if return_dict is not False else output.to_tuple()


__all__ = ["BasedCache", "BasedForCausalLM", "BasedModel", "BasedPreTrainedModel"]
