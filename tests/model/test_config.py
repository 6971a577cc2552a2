"""BasedConfig: presets, derived values, CLI overrides and every validation error."""

import argparse
import math

import pytest

from based_megatron.config import (
    PRESETS,
    BasedConfig,
    ConfigError,
    add_model_args,
    build_config,
    config_from_args,
)


def test_based_360m_matches_the_paper():
    config = build_config("based-360m")
    symbols = config.layer_symbols
    assert config.num_layers == 27 and config.hidden_size == 1024
    assert [i for i, s in enumerate(symbols) if s == "L"] == [1, 6, 11, 16, 21]
    assert [i for i, s in enumerate(symbols) if s == "S"] == [2, 7, 12, 17, 22]
    assert symbols.count("C") == 17
    assert config.ffn_hidden_size == 2048 and config.padded_vocab_size == 50264
    assert config.la_head_dim == 64 and config.swa_head_dim == 64 and config.swa_window == 128
    assert config.init_method_std == pytest.approx(math.sqrt(2 / (5 * 1024)))
    assert config.layernorm_epsilon == 1e-5 and config.fp32_residual_connection
    assert config.share_embeddings_and_output_weights and not config.add_bias_linear


def test_based_1b_matches_the_paper():
    config = build_config("based-1.3b")
    symbols = config.layer_symbols
    assert config.num_layers == 36 and config.hidden_size == 1792 and config.ffn_hidden_size == 3584
    assert [i for i, s in enumerate(symbols) if s == "L"] == [1, 6, 11, 16, 21, 27, 33]
    assert [i for i, s in enumerate(symbols) if s == "S"] == [2, 7, 12, 17, 22, 28, 34]
    assert config.la_head_dim == 112


@pytest.mark.parametrize("name", ["transformer-360m", "transformer-1.3b"])
def test_transformer_baselines_are_all_attention(name):
    based = build_config(name.replace("transformer", "based"))
    config = build_config(name)
    assert set(config.layer_symbols) == {"A"}
    assert (config.num_layers, config.hidden_size, config.ffn_hidden_size) == \
        (based.num_layers, based.hidden_size, based.ffn_hidden_size)


def test_tiny_has_every_mixer():
    assert set(build_config("based-tiny").layer_symbols) == set("CLSA")


def test_based_360m_parameter_count(megatron_single_process):
    from based_megatron.model.based_model import count_parameters

    count = count_parameters(build_config("based-360m"))
    assert count == 362_655_744 and 362e6 <= count < 363e6


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_gpt2_vocab_padding_is_the_same_for_every_tp(tp):
    config = build_config("based-360m", tensor_model_parallel_size=tp)
    assert config.padded_vocab_size == 50264


def test_stage_separator_sets_megatron_pipeline_layout():
    config = build_config("based-tiny", layer_pattern="C|LSA", pipeline_model_parallel_size=2)
    assert config.num_layers == 4 and config.pipeline_stages == ["C", "LSA"]
    layout = config.pipeline_model_parallel_layout.layout
    assert [len(stage[0]) for stage in layout] == [2, 4]  # embedding + 1 decoder | 3 decoders + loss


def test_command_line_overrides():
    parser = add_model_args(argparse.ArgumentParser())
    args = parser.parse_args(["--model", "based-tiny", "--hidden-size", "128", "--swa-window", "8",
                              "--num-attention-heads", "8", "--swa-num-heads", "8", "--la-num-heads", "8",
                              "--norm-epsilon", "1e-6", "--no-share-embeddings-and-output-weights"])
    config = config_from_args(args, tensor_model_parallel_size=2)
    assert (config.hidden_size, config.swa_window, config.num_attention_heads) == (128, 8, 8)
    assert config.layernorm_epsilon == 1e-6 and not config.share_embeddings_and_output_weights
    assert config.tensor_model_parallel_size == 2
    assert config.la_feature_dim == PRESETS["based-tiny"]["la_feature_dim"]


# (overrides, field named in the error, fragment of the rule)
INVALID = [
    (dict(layer_pattern="CLXS"), "layer_pattern", "unknown symbol 'X' at position 2"),
    (dict(layer_pattern="  "), "layer_pattern", "non-empty string"),
    (dict(layer_pattern="CL||SA"), "layer_pattern", "every pipeline stage"),
    (dict(layer_pattern="CLSA", num_layers=5), "num_layers", "must equal the number of symbols"),
    (dict(num_attention_heads=3), "num_attention_heads", "divisor of hidden_size (64)"),
    (dict(la_num_heads=2, tensor_model_parallel_size=4), "la_num_heads", "divisible by tensor_model_parallel_size"),
    (dict(swa_num_heads=2, tensor_model_parallel_size=4), "swa_num_heads", "TP splits heads"),
    (dict(num_attention_heads=4, tensor_model_parallel_size=8), "num_attention_heads", "divisible by tensor"),
    (dict(ffn_hidden_size=130, tensor_model_parallel_size=4), "ffn_hidden_size", "divisible by tensor"),
    (dict(la_feature_dim=32), "la_feature_dim", "kernels support feature dims up to 16"),
    (dict(la_eps=-1.0), "la_eps", ">= 0"),
    (dict(swa_window=128, seq_length=128), "swa_window", "smaller than seq_length (128)"),
    (dict(swa_window=0), "swa_window", ">= 1"),
    (dict(swa_num_heads=8), "swa_num_heads", "must equal the rotary dim"),
    (dict(hidden_size=36, ffn_hidden_size=64), "kv_channels", "even head dim"),
    (dict(conv_kernel_size=0), "conv_kernel_size", "positive integer"),
    (dict(vocab_size=0), "vocab_size", "positive integer"),
    (dict(layernorm_epsilon=0.0), "layernorm_epsilon", "> 0"),
    (dict(pipeline_model_parallel_size=3), "num_layers", "cannot be split evenly"),
    (dict(layer_pattern="CL|SA", pipeline_model_parallel_size=4), "layer_pattern", "2 pipeline stages"),
    (dict(sequence_parallel=True), "sequence_parallel", "tensor_model_parallel_size > 1"),
    (dict(sequence_parallel=True, tensor_model_parallel_size=2, seq_length=127), "seq_length",
     "divisible by tensor_model_parallel_size (2) with sequence_parallel"),
]


@pytest.mark.parametrize("overrides,field,rule", INVALID, ids=[f"{case[1]}-{i}" for i, case in enumerate(INVALID)])
def test_validation_error_names_field_value_and_rule(overrides, field, rule):
    with pytest.raises(ConfigError) as error:
        build_config("based-tiny", **overrides)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}=")
    assert rule in str(error.value)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="preset='nope': unknown preset; choose one of based-360m"):
        build_config("nope")
    with pytest.raises(ConfigError, match="hiden_size=1: is not a BasedConfig field"):
        build_config("based-tiny", hiden_size=1)
    with pytest.raises(ConfigError, match="num_layers=8: preset 'based-tiny' fixes the layer pattern"):
        build_config("based-tiny", num_layers=8)


def test_validation_runs_on_direct_construction():
    with pytest.raises(ConfigError, match="layer_pattern=''"):
        BasedConfig(hidden_size=64)
