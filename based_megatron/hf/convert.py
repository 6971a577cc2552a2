"""Weights and configs between the training model (megatron-core GPTModel names, full tensors) and Hugging Face.

Training side (docs/architecture.md), per layer `decoder.layers.{i}.`:
    input_layernorm.weight, pre_mlp_layernorm.weight, mlp.linear_fc1.weight ([gate; value]), mlp.linear_fc2.weight
    C  self_attention.{in_proj_u,in_proj_g,out_proj}.{weight,bias}, self_attention.conv_weight [C, K], conv_bias [C]
    L  self_attention.{proj_q,proj_k,proj_v,out_proj}.weight
    S, A  self_attention.linear_qkv.weight (rows per head [h: q, k, v]), self_attention.linear_proj.weight
plus embedding.word_embeddings.weight (padded vocabulary), decoder.final_layernorm.weight, output_layer.weight (untied).

HF side (released HazyResearch names, see modeling_based.py), per layer `transformer.layers.{i}.`:
    norm1, norm2, mlp.fc1 ([value; gate]), mlp.fc2,
    C  mixer.in_proj = [u; g], mixer.conv.conv.weight [C, 1, K], mixer.out_proj
    L  mixer.{proj_q,proj_k,proj_v,out_proj}
    S, A  mixer.Wqkv (rows [q all heads; k all heads; v all heads]), mixer.out_proj
Transformer++ models (every layer A) map to a standard LlamaForCausalLM instead.
"""

import json
import os
import shutil

import torch

from .configuration_based import (
    MIXER_BASE_CONV,
    MIXER_FULL_ATTENTION,
    MIXER_LINEAR_ATTENTION,
    MIXER_SLIDING_WINDOW,
    BasedConfig,
)

HF_DIR_FILES = ("configuration_based.py", "modeling_based.py")
SYMBOL_OF_KIND = {MIXER_BASE_CONV: "C", MIXER_LINEAR_ATTENTION: "L", MIXER_SLIDING_WINDOW: "S", MIXER_FULL_ATTENTION: "A"}
KIND_OF_SYMBOL = {symbol: kind for kind, symbol in SYMBOL_OF_KIND.items()}
MAX_SHARD_SIZE = "2GB"


class ConversionError(ValueError):
    """A checkpoint or directory cannot be converted; the message names the file, key or field."""


# ----------------------------------------------------------------------------------------------------------
# Tensor layouts
# ----------------------------------------------------------------------------------------------------------


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """[a; b] -> [b; a] along dim 0 (megatron GLU fc1 is [gate; value], HF Based fc1 is [value; gate])."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def qkv_per_head_to_grouped(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows [h: q, k, v] (megatron linear_qkv) -> [q all heads; k all heads; v all heads] (Wqkv)."""
    rows, cols = weight.shape
    return weight.view(heads, 3, rows // (3 * heads), cols).transpose(0, 1).reshape(rows, cols)


def qkv_grouped_to_per_head(weight: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = weight.shape
    return weight.view(3, heads, rows // (3 * heads), cols).transpose(0, 1).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------


def layer_symbols(config) -> str:
    """Pattern symbols (C/L/S/A) of a megatron BasedConfig."""
    return config.layer_symbols


def is_transformer_pp(config) -> bool:
    return set(layer_symbols(config)) == {"A"}


def megatron_to_hf_config(config, eos_token_id=None) -> BasedConfig:
    """HF BasedConfig of a megatron BasedConfig; the vocabulary is the unpadded one."""
    symbols = layer_symbols(config)
    layers_of = {s: [i for i, c in enumerate(symbols) if c == s] for s in "LSA"}
    return BasedConfig(
        vocab_size=config.vocab_size,
        pad_vocab_size_multiple=1,
        n_embd=config.hidden_size,
        n_layer=config.num_layers,
        n_head=config.num_attention_heads,
        n_inner=config.ffn_hidden_size,
        n_positions=config.seq_length,
        layer_norm_epsilon=config.layernorm_epsilon,
        residual_in_fp32=config.fp32_residual_connection,
        rotary_emb_base=float(config.rotary_base),
        alt_mixer_layers=layers_of["L"],
        alt_mixer_2_layers=layers_of["S"],
        attn_layers=layers_of["A"],
        mixer={"expand_proj": 2 * config.conv_expansion, "kernel_sizes": config.conv_kernel_size,
               "use_bias": True, "conv_bias": True, "l_max": config.seq_length},
        alt_mixer={"num_heads": config.la_num_heads, "feature_dim": config.la_feature_dim,
                   "feature_map": {"input_dim": config.la_feature_dim}, "eps": config.la_eps,
                   "l_max": config.seq_length},
        alt_mixer_2={"num_heads": config.swa_num_heads, "window_size": 2 * config.swa_window},
        tie_word_embeddings=config.share_embeddings_and_output_weights,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


def hf_to_megatron_fields(hf_config: BasedConfig, seq_length: int | None = None) -> dict:
    """Architecture fields (config.MODEL_FLAGS names) of the megatron BasedConfig equal to an HF Based model."""
    if hf_config.feature_map_input_dim != hf_config.feature_dim:
        raise ConversionError(
            f"alt_mixer.feature_map.input_dim={hf_config.feature_map_input_dim} differs from alt_mixer.feature_dim="
            f"{hf_config.feature_dim}; the training model scales the Taylor map by its feature dim"
        )
    return dict(
        layer_pattern="".join(SYMBOL_OF_KIND[kind] for kind in hf_config.mixer_types),
        num_layers=hf_config.n_layer,
        hidden_size=hf_config.n_embd,
        ffn_hidden_size=hf_config.n_inner,
        num_attention_heads=hf_config.n_head,
        vocab_size=hf_config.vocab_size,
        seq_length=seq_length or int(hf_config.mixer.get("l_max") or 2048),
        la_num_heads=hf_config.linear_attention_heads,
        la_feature_dim=hf_config.feature_dim,
        la_eps=hf_config.linear_attention_eps,
        swa_num_heads=hf_config.sliding_window_heads,
        swa_window=hf_config.sliding_window_lookback,
        conv_kernel_size=hf_config.conv_kernel_size,
        conv_expansion=hf_config.mixer["expand_proj"] // 2,
        rotary_base=int(hf_config.rotary_emb_base),
        layernorm_epsilon=hf_config.layer_norm_epsilon,
        fp32_residual_connection=hf_config.residual_in_fp32,
        share_embeddings_and_output_weights=hf_config.tie_word_embeddings,
    )


# ----------------------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------------------


def expected_megatron_shapes(config) -> dict:
    """{weight name: full shape} that a training state dict of `config` must hold."""
    d, ffn, vocab = config.hidden_size, config.ffn_hidden_size, config.padded_vocab_size
    shapes = {"embedding.word_embeddings.weight": (vocab, d), "decoder.final_layernorm.weight": (d,)}
    if not config.share_embeddings_and_output_weights:
        shapes["output_layer.weight"] = (vocab, d)
    channels, la_qk = config.conv_channels, config.la_num_heads * config.la_feature_dim
    mixer_shapes = {
        "C": {"in_proj_u.weight": (channels, d), "in_proj_u.bias": (channels,), "in_proj_g.weight": (channels, d),
              "in_proj_g.bias": (channels,), "conv_weight": (channels, config.conv_kernel_size),
              "conv_bias": (channels,), "out_proj.weight": (d, channels), "out_proj.bias": (d,)},
        "L": {"proj_q.weight": (la_qk, d), "proj_k.weight": (la_qk, d), "proj_v.weight": (d, d),
              "out_proj.weight": (d, d)},
        "S": {"linear_qkv.weight": (3 * d, d), "linear_proj.weight": (d, d)},
        "A": {"linear_qkv.weight": (3 * d, d), "linear_proj.weight": (d, d)},
    }
    for i, symbol in enumerate(layer_symbols(config)):
        prefix = f"decoder.layers.{i}."
        shapes.update({prefix + "input_layernorm.weight": (d,), prefix + "pre_mlp_layernorm.weight": (d,),
                       prefix + "mlp.linear_fc1.weight": (2 * ffn, d), prefix + "mlp.linear_fc2.weight": (d, ffn)})
        shapes.update({f"{prefix}self_attention.{k}": shape for k, shape in mixer_shapes[symbol].items()})
    return shapes


def check_training_state(config, state: dict, source: str = "training checkpoint"):
    """Every weight present with its full shape (a missing TP shard shows up as a wrong shape)."""
    shapes = expected_megatron_shapes(config)
    check_complete(state, list(shapes), source)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {shape})" for k, shape in shapes.items()
             if tuple(state[k].shape) != shape]
    if wrong:
        raise ConversionError(f"{source}: weights with the wrong shape (a missing tensor-parallel shard?): "
                              + "; ".join(wrong[:4]))


def check_complete(state: dict, expected: list[str], source: str):
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ConversionError(f"{source}: missing weights {shown}")


def megatron_to_hf_state_dict(config, state: dict) -> dict:
    """Full training state dict -> HF Based state dict (vocabulary padding removed, tied head written once)."""
    check_training_state(config, state)
    vocab = config.vocab_size
    out = {
        "transformer.embeddings.word_embeddings.weight": state["embedding.word_embeddings.weight"][:vocab],
        "transformer.ln_f.weight": state["decoder.final_layernorm.weight"],
    }
    out["lm_head.weight"] = (state["output_layer.weight"][:vocab] if not config.share_embeddings_and_output_weights
                             else out["transformer.embeddings.word_embeddings.weight"])
    for i, symbol in enumerate(layer_symbols(config)):
        src, dst = f"decoder.layers.{i}.", f"transformer.layers.{i}."
        mixer = f"{src}self_attention."
        out[dst + "norm1.weight"] = state[src + "input_layernorm.weight"]
        out[dst + "norm2.weight"] = state[src + "pre_mlp_layernorm.weight"]
        out[dst + "mlp.fc1.weight"] = swap_halves(state[src + "mlp.linear_fc1.weight"])
        out[dst + "mlp.fc2.weight"] = state[src + "mlp.linear_fc2.weight"]
        if symbol == "C":
            for part in ("weight", "bias"):
                out[f"{dst}mixer.in_proj.{part}"] = torch.cat([state[f"{mixer}in_proj_u.{part}"],
                                                               state[f"{mixer}in_proj_g.{part}"]])
                out[f"{dst}mixer.out_proj.{part}"] = state[f"{mixer}out_proj.{part}"]
            out[dst + "mixer.conv.conv.weight"] = state[mixer + "conv_weight"][:, None, :]
            out[dst + "mixer.conv.conv.bias"] = state[mixer + "conv_bias"]
        elif symbol == "L":
            for name in ("proj_q", "proj_k", "proj_v", "out_proj"):
                out[f"{dst}mixer.{name}.weight"] = state[f"{mixer}{name}.weight"]
        else:
            heads = config.swa_num_heads if symbol == "S" else config.num_attention_heads
            out[dst + "mixer.Wqkv.weight"] = qkv_per_head_to_grouped(state[mixer + "linear_qkv.weight"], heads)
            out[dst + "mixer.out_proj.weight"] = state[mixer + "linear_proj.weight"]
    return out


def hf_to_megatron_state_dict(hf_config: BasedConfig, state: dict, megatron_config) -> dict:
    """HF Based state dict (ours or a released one) -> full training state dict of `megatron_config`.

    Absent biases (released checkpoints have no conv bias) become zeros; a weight the training model has no
    place for is an error.
    """
    check_complete(state, expected_hf_keys(hf_config), "Hugging Face checkpoint")
    used = {"lm_head.weight"} if hf_config.tie_word_embeddings else set()

    def take(key, zeros_like_rows_of=None):
        if key not in state and zeros_like_rows_of is not None:
            return zeros_like_rows_of.new_zeros(zeros_like_rows_of.shape[0])
        used.add(key)
        return state[key]

    def pad_vocab(weight):
        weight = weight[: hf_config.vocab_size]
        return torch.cat([weight, weight.new_zeros(megatron_config.padded_vocab_size - weight.shape[0], weight.shape[1])])

    out = {
        "embedding.word_embeddings.weight": pad_vocab(take("transformer.embeddings.word_embeddings.weight")),
        "decoder.final_layernorm.weight": take("transformer.ln_f.weight"),
    }
    if not hf_config.tie_word_embeddings:
        out["output_layer.weight"] = pad_vocab(take("lm_head.weight"))
    for i, kind in enumerate(hf_config.mixer_types):
        src, dst = f"transformer.layers.{i}.", f"decoder.layers.{i}."
        hf_mixer, mixer = f"{src}mixer.", f"{dst}self_attention."
        out[dst + "input_layernorm.weight"] = take(src + "norm1.weight")
        out[dst + "pre_mlp_layernorm.weight"] = take(src + "norm2.weight")
        out[dst + "mlp.linear_fc1.weight"] = swap_halves(take(src + "mlp.fc1.weight"))
        out[dst + "mlp.linear_fc2.weight"] = take(src + "mlp.fc2.weight")
        if kind == MIXER_BASE_CONV:
            in_proj = take(hf_mixer + "in_proj.weight")
            out[mixer + "in_proj_u.weight"], out[mixer + "in_proj_g.weight"] = in_proj.chunk(2)
            out[mixer + "in_proj_u.bias"], out[mixer + "in_proj_g.bias"] = take(hf_mixer + "in_proj.bias", in_proj).chunk(2)
            out[mixer + "out_proj.weight"] = out_proj = take(hf_mixer + "out_proj.weight")
            out[mixer + "out_proj.bias"] = take(hf_mixer + "out_proj.bias", out_proj)
            conv = take(hf_mixer + "conv.conv.weight")
            out[mixer + "conv_weight"] = conv[:, 0, :]
            out[mixer + "conv_bias"] = take(hf_mixer + "conv.conv.bias", conv)
        elif kind == MIXER_LINEAR_ATTENTION:
            for name in ("proj_q", "proj_k", "proj_v", "out_proj"):
                out[f"{mixer}{name}.weight"] = take(f"{hf_mixer}{name}.weight")
        else:
            heads = hf_config.sliding_window_heads if kind == MIXER_SLIDING_WINDOW else hf_config.n_head
            out[mixer + "linear_qkv.weight"] = qkv_grouped_to_per_head(take(hf_mixer + "Wqkv.weight"), heads)
            out[mixer + "linear_proj.weight"] = take(hf_mixer + "out_proj.weight")
    unused = sorted(set(state) - used)
    if unused:
        raise ConversionError(f"Hugging Face checkpoint: weights {unused[:6]} have no place in the training model")
    return out


def expected_hf_keys(hf_config: BasedConfig) -> list[str]:
    keys = ["transformer.embeddings.word_embeddings.weight", "transformer.ln_f.weight"]
    if not hf_config.tie_word_embeddings:
        keys.append("lm_head.weight")
    mixer_keys = {
        MIXER_BASE_CONV: ["in_proj.weight", "out_proj.weight", "conv.conv.weight"],
        MIXER_LINEAR_ATTENTION: ["proj_q.weight", "proj_k.weight", "proj_v.weight", "out_proj.weight"],
        MIXER_SLIDING_WINDOW: ["Wqkv.weight", "out_proj.weight"],
        MIXER_FULL_ATTENTION: ["Wqkv.weight", "out_proj.weight"],
    }
    for i, kind in enumerate(hf_config.mixer_types):
        prefix = f"transformer.layers.{i}."
        keys += [prefix + k for k in ("norm1.weight", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight")]
        keys += [f"{prefix}mixer.{k}" for k in mixer_keys[kind]]
    return keys


# ----------------------------------------------------------------------------------------------------------
# Transformer++ as LlamaForCausalLM
# ----------------------------------------------------------------------------------------------------------


def megatron_to_llama_config(config, eos_token_id=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.ffn_hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        max_position_embeddings=config.seq_length,
        rms_norm_eps=config.layernorm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rotary_base)},
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.share_embeddings_and_output_weights,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


def megatron_to_llama_state_dict(config, state: dict) -> dict:
    check_training_state(config, state)
    vocab, heads, d = config.vocab_size, config.num_attention_heads, config.hidden_size
    out = {
        "model.embed_tokens.weight": state["embedding.word_embeddings.weight"][:vocab],
        "model.norm.weight": state["decoder.final_layernorm.weight"],
    }
    out["lm_head.weight"] = (state["output_layer.weight"][:vocab] if not config.share_embeddings_and_output_weights
                             else out["model.embed_tokens.weight"])
    for i in range(config.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = qkv_per_head_to_grouped(state[src + "self_attention.linear_qkv.weight"], heads).split(d)
        out.update({
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": state[src + "self_attention.linear_proj.weight"],
            dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
            dst + "post_attention_layernorm.weight": state[src + "pre_mlp_layernorm.weight"],
            dst + "mlp.down_proj.weight": state[src + "mlp.linear_fc2.weight"],
        })
        gate, up = state[src + "mlp.linear_fc1.weight"].chunk(2)  # megatron GLU: [gate (silu); value]
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
    return out


# ----------------------------------------------------------------------------------------------------------
# Hugging Face directories
# ----------------------------------------------------------------------------------------------------------


def prepare_output_dir(path: str, overwrite: bool):
    """Refuse a non-empty directory unless overwrite; never leave a half-written one that looks valid."""
    if os.path.isfile(path):
        raise ConversionError(f"--output {path} is a file, expected a directory")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise ConversionError(f"--output {path} is not empty; pass --overwrite to replace its contents")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


def write_hf_directory(out_dir: str, hf_config, state: dict, tokenizer_dir: str | None, dtype: torch.dtype,
                       max_shard_size: str = MAX_SHARD_SIZE):
    """Build the HF model from `state`, save it (safetensors, sharded above max_shard_size) with its tokenizer.

    Based models get the modeling code and `auto_map` (trust_remote_code); Llama configs need none.
    Files are written into a temporary sibling directory that is renamed into place at the end.
    """
    from transformers import GenerationConfig

    model = build_hf_model(hf_config, state, dtype)
    staging = out_dir.rstrip("/") + ".partial"
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    try:
        if isinstance(hf_config, BasedConfig):
            model.config.auto_map = {
                "AutoConfig": "configuration_based.BasedConfig",
                "AutoModelForCausalLM": "modeling_based.BasedForCausalLM",
            }
            model.config.architectures = ["BasedForCausalLM"]
        model.generation_config = GenerationConfig(
            bos_token_id=hf_config.bos_token_id, eos_token_id=hf_config.eos_token_id,
            pad_token_id=hf_config.eos_token_id, use_cache=True,
        )
        model.save_pretrained(staging, max_shard_size=max_shard_size, safe_serialization=True)
        if isinstance(hf_config, BasedConfig):
            here = os.path.dirname(os.path.abspath(__file__))
            for name in HF_DIR_FILES:
                shutil.copy(os.path.join(here, name), os.path.join(staging, name))
        if tokenizer_dir is not None:
            write_tokenizer(tokenizer_dir, staging)
        for name in os.listdir(staging):
            shutil.move(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_hf_model(hf_config, state: dict, dtype: torch.dtype):
    if isinstance(hf_config, BasedConfig):
        from .modeling_based import BasedForCausalLM as model_class
    else:
        from transformers import LlamaForCausalLM as model_class
    from transformers.initialization import no_init_weights

    with no_init_weights():  # weights come from `state`; buffers (rotary inv_freq) are built normally
        model = model_class(hf_config)
    missing, unexpected = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not hf_config.tie_word_embeddings]
    if missing or unexpected:
        raise ConversionError(f"HF state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype).eval()


def write_tokenizer(tokenizer_dir: str, out_dir: str):
    """Write the training run's tokenizer (a based_megatron tokenizer directory or an HF one) into out_dir."""
    from based_megatron.data.tokenizers import MANIFEST_NAME, load_tokenizer

    if os.path.isfile(os.path.join(tokenizer_dir, MANIFEST_NAME)):
        load_tokenizer(tokenizer_dir).save_pretrained(out_dir)
        return
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)


def load_hf_directory(path: str) -> tuple[BasedConfig, dict]:
    """(BasedConfig, state dict) of one of our exports or a released HazyResearch Based directory.

    Accepted weights: model.safetensors, sharded safetensors (model.safetensors.index.json) or pytorch_model.bin
    (keys may carry the released training wrapper's `model.` prefix; metric counters are dropped).
    """
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ConversionError(f"{path}: no config.json")
    with open(config_file) as f:
        fields = json.load(f)
    if fields.get("model_type") not in ("based", "gpt2", None):
        raise ConversionError(f"{config_file}: model_type {fields.get('model_type')!r} is not a Based model "
                              "(expected 'based', or 'gpt2' for a released HazyResearch config)")
    if "alt_mixer_layers" not in fields and fields.get("model_type") != "based":
        raise ConversionError(f"{config_file}: no alt_mixer_layers; this is not a Based config")
    for key in ("model_type", "auto_map", "architectures", "transformers_version"):
        fields.pop(key, None)
    hf_config = BasedConfig(**fields)
    state = {k.removeprefix("model."): v for k, v in read_weights(path).items() if "metrics" not in k}
    state = {k: v for k, v in state.items() if not k.endswith("inv_freq")}
    if "lm_head.weight" not in state and hf_config.tie_word_embeddings:
        state["lm_head.weight"] = state.get("transformer.embeddings.word_embeddings.weight")
    return hf_config, state


def read_weights(path: str) -> dict:
    from safetensors.torch import load_file

    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            shard_names = sorted(set(json.load(f)["weight_map"].values()))
        missing = [n for n in shard_names if not os.path.isfile(os.path.join(path, n))]
        if missing:
            raise ConversionError(f"{path}: missing weight shards {missing} listed in model.safetensors.index.json")
        state = {}
        for name in shard_names:
            state.update(load_file(os.path.join(path, name)))
        return state
    bin_file = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(bin_file):
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    raise ConversionError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
