"""Conversion: released HazyResearch layout -> training checkpoint -> HF export (verified against the training model)
-> training checkpoint again; Transformer++ as Llama; bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from based_megatron.hf import convert
from tests.hf.helpers import load_tool, write_released_directory

TOKENS = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(3))


def hf_logits(hf_config, state):
    model = convert.build_hf_model(hf_config, state, torch.float32)
    with torch.no_grad():
        return model(TOKENS, use_cache=False).logits


def full_weights(ckpt_dir):
    from based_megatron.training.checkpointing import load_full_state_dict

    return load_full_state_dict(ckpt_dir)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """released dir -> ckpt (checked for TP2 x PP2) -> export (--verify) -> ckpt again."""
    root = tmp_path_factory.mktemp("convert")
    paths = {name: str(root / name) for name in ("released", "ckpt", "hf", "ckpt2")}
    write_released_directory(paths["released"])
    from_hf, to_hf = load_tool("convert_from_hf"), load_tool("convert_to_hf")
    from_hf.main(["--load", paths["released"], "--output", paths["ckpt"], "--tensor-model-parallel-size", "2",
                  "--pipeline-model-parallel-size", "2"])
    to_hf.main(["--load", paths["ckpt"], "--output", paths["hf"], "--verify", "--max-shard-size", "20KB"])
    from_hf.main(["--load", paths["hf"], "--output", paths["ckpt2"]])
    return paths


def test_export_computes_what_the_released_model_computes(chain):
    released = hf_logits(*convert.load_hf_directory(chain["released"]))
    exported = hf_logits(*convert.load_hf_directory(chain["hf"]))
    assert exported.shape == released.shape == (2, 40, 257)
    torch.testing.assert_close(exported, released, rtol=1e-5, atol=1e-5)


def test_round_trip_ours_hf_ours_is_identical(chain):
    config, first = full_weights(chain["ckpt"])
    config2, second = full_weights(chain["ckpt2"])
    assert config2.layer_pattern == config.layer_pattern == "CLSC"
    assert config.swa_window == 8 and config.padded_vocab_size == 264
    assert sorted(first) == sorted(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not first["decoder.layers.0.self_attention.conv_bias"].any()  # released checkpoints have none


def test_export_directory_layout_and_auto_classes(chain):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from based_megatron.hf.modeling_based import BasedForCausalLM

    files = set(os.listdir(chain["hf"]))
    assert {"config.json", "generation_config.json", "configuration_based.py", "modeling_based.py",
            "model.safetensors.index.json", "tokenizer.json"} <= files
    with open(os.path.join(chain["hf"], "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "based" and config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_based")
    assert config["vocab_size"] == 257 and config["eos_token_id"] == 256
    with open(os.path.join(chain["hf"], "model.safetensors.index.json")) as f:
        names = set(json.load(f)["weight_map"])
    assert "transformer.layers.1.mixer.proj_q.weight" in names and "transformer.layers.2.mixer.Wqkv.weight" in names
    assert "transformer.layers.0.mixer.conv.conv.weight" in names and "transformer.ln_f.weight" in names

    # Without based_megatron (a user who only has transformers): the copied modeling code, offline.
    remote = subprocess.run(
        [sys.executable, "-c", "import sys; from transformers import AutoModelForCausalLM; "
         "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True); "
         "assert 'based_megatron' not in sys.modules; print(type(m).__module__, type(m).__name__)", chain["hf"]],
        capture_output=True, text=True, cwd=chain["hf"], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert remote.returncode == 0, remote.stderr
    module, name = remote.stdout.split()[-2:]
    assert name == "BasedForCausalLM" and module.startswith("transformers_modules")
    # With based_megatron imported, the Auto classes know the model without trust_remote_code.
    local = AutoModelForCausalLM.from_pretrained(chain["hf"])
    assert type(local) is BasedForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(chain["hf"])
    assert tokenizer("hi")["input_ids"] == [104, 105]


def test_transformer_pp_exports_as_llama(tmp_path):
    """Every layer full attention: a plain LlamaForCausalLM, verified against the training model."""
    released = write_released_directory(str(tmp_path / "released"), alt_mixer_layers=[], alt_mixer_2_layers=[],
                                        attn_layers=[0, 1, 2, 3])
    load_tool("convert_from_hf").main(["--load", released, "--output", str(tmp_path / "ckpt")])
    load_tool("convert_to_hf").main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "hf"), "--verify"])
    with open(tmp_path / "hf" / "config.json") as f:
        config = json.load(f)
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert not any(name.endswith(".py") for name in os.listdir(tmp_path / "hf"))


def test_bad_input_messages(chain, tmp_path, capsys):
    to_hf = load_tool("convert_to_hf")

    def fails(argv, message):
        with pytest.raises(SystemExit) as error:
            to_hf.main(argv)
        assert message in str(error.value), str(error.value)

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    fails(["--load", chain["ckpt"], "--output", str(occupied)], "not empty; pass --overwrite")
    assert (occupied / "keep.txt").exists()
    fails(["--load", chain["ckpt"], "--iteration", "7", "--output", str(tmp_path / "a")], "iter_0000007")
    fails(["--load", str(tmp_path / "nowhere"), "--output", str(tmp_path / "b")], "does not exist")

    config, state = full_weights(chain["ckpt"])
    del state["decoder.layers.1.self_attention.proj_k.weight"]
    from based_megatron.training.checkpointing import save_checkpoint_from_full_state_dict

    save_checkpoint_from_full_state_dict(config, state, str(tmp_path / "incomplete"))
    fails(["--load", str(tmp_path / "incomplete"), "--output", str(tmp_path / "c")],
          "missing weights decoder.layers.1.self_attention.proj_k.weight")
    os.remove(tmp_path / "incomplete" / "release" / "model_full.pt")
    fails(["--load", str(tmp_path / "incomplete"), "--output", str(tmp_path / "d")], "model_full.pt")


def test_import_refuses_a_layout_that_does_not_split(chain, tmp_path):
    with pytest.raises(SystemExit) as error:
        load_tool("convert_from_hf").main(["--load", chain["released"], "--output", str(tmp_path / "x"),
                                           "--tensor-model-parallel-size", "3"])
    assert "tensor_model_parallel_size" in str(error.value)


def test_qkv_layouts_are_inverse():
    weight = torch.arange(4 * 3 * 2 * 5, dtype=torch.float32).view(24, 5)
    grouped = convert.qkv_per_head_to_grouped(weight, heads=4)
    assert torch.equal(grouped[:2], weight[:2]) and torch.equal(grouped[2:4], weight[6:8])  # q of heads 0, 1
    assert torch.equal(convert.qkv_grouped_to_per_head(grouped, heads=4), weight)
