"""Helpers for the HF tests: the tools as importable modules, a released-layout (HazyResearch) directory."""

import importlib.util
import json
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool(name: str):
    """tools/<name>.py as a module (its main(argv) runs the tool in this process)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def released_config(**overrides) -> dict:
    """A small config.json in the released GPT2Config style (hazyresearch/based-360m, scaled down)."""
    config = {
        "model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_inner": 64, "n_layer": 4, "n_positions": 0,
        "vocab_size": 257, "pad_vocab_size_multiple": 8, "activation_function": "swiglu", "layer_norm_epsilon": 1e-5,
        "rms_norm": True, "residual_in_fp32": True, "rotary_emb_fraction": 1, "mlp_fc1_bias": False,
        "mlp_fc2_bias": False, "qkv_proj_bias": False, "out_proj_bias": False, "special_initializer": True,
        "fused_bias_fc": True, "alt_mixer_layers": [1], "alt_mixer_2_layers": [2],
        "mixer": {"_target_": "based.models.mixers.convolution.BaseConv", "expand_proj": 4, "kernel_sizes": 3,
                  "l_max": 64, "use_bias": True},
        "alt_mixer": {"_target_": "based.models.mixers.linear_attention.LinearAttention", "feature_dim": 4,
                      "num_heads": 4, "num_key_value_heads": 4, "l_max": 64, "train_view": "linear",
                      "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp", "input_dim": 4}},
        "alt_mixer_2": {"_target_": "based.models.mixers.slide_attention.SlidingAttention", "causal": True,
                        "num_heads": 4, "window_size": 16, "do_update": True},
    }
    config.update(overrides)
    return config


def write_released_directory(path: str, seed: int = 0, **overrides) -> str:
    """config.json + pytorch_model.bin with released key names (padded vocab, no conv bias, an inv_freq buffer),
    plus byte-level tokenizer files. Random weights."""
    from based_megatron.data.tokenizers import ByteTokenizer
    from based_megatron.hf.configuration_based import BasedConfig
    from based_megatron.hf.modeling_based import BasedForCausalLM

    config = released_config(**overrides)
    torch.manual_seed(seed)
    model = BasedForCausalLM(BasedConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in config["alt_mixer_2_layers"]:
        state[f"transformer.layers.{i}.mixer.rotary_emb.inv_freq"] = torch.ones(4)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    ByteTokenizer().save_pretrained(path)
    return path


def logits_of(model_dir: str, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(tokens, use_cache=False).logits
