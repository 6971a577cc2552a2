"""FLOP formulas (checked against torch's FLOP counter where the op is a plain matmul) and the checkpoint directory
rules (atomic `latest`, keep-last pruning, clear errors)."""

import os

import pytest
import torch

from based_megatron.config import build_config
from based_megatron.training import checkpointing
from based_megatron.training.errors import TrainingError
from based_megatron.training.flops import attended_keys, forward_flops_per_token, mixer_flops_per_token


def test_attended_keys_counts_the_causal_window():
    for seq, window in [(10, 3), (7, 100), (64, 16), (1, 5)]:
        brute = sum(min(i, window) + 1 for i in range(seq)) / seq
        assert attended_keys(seq, window) == pytest.approx(brute)


def test_mixer_formulas():
    d, s = 1024, 2048
    assert mixer_flops_per_token("C", d, s, heads=16, feature_dim=16, conv_kernel=3, window=128) == 12 * d * d + 12 * d
    la = mixer_flops_per_token("L", d, s, heads=16, feature_dim=16, conv_kernel=3, window=128)
    assert la == 4 * d * 256 + 4 * d * d + 4 * 273 * d
    with pytest.raises(ValueError, match="unknown layer kind"):
        mixer_flops_per_token("X", d, s, heads=16, feature_dim=16, conv_kernel=3, window=128)


def test_dense_flops_match_torch_flop_counter(single_process_world):
    """BaseConv layers + SwiGLU + LM head are matmuls: the formula (minus the depthwise conv term) equals what
    torch's FlopCounterMode counts for a forward of the pipeline layers."""
    from torch.utils.flop_counter import FlopCounterMode

    from based_megatron.training.model import SequentialLM, layer_config

    config = build_config("based-tiny", layer_pattern="CC", vocab_size=257, seq_length=32)
    model = SequentialLM(layer_config(config), seed=1)
    tokens = torch.randint(0, 257, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(tokens, tokens, torch.ones(2, 32))
    counted = counter.get_total_flops() / tokens.numel()
    formula = forward_flops_per_token("CC", hidden_size=config.hidden_size, ffn_hidden_size=config.ffn_hidden_size,
                                      vocab_size=config.padded_vocab_size, seq_length=32, heads=4, feature_dim=16,
                                      conv_kernel=3, window=16)
    conv = 2 * 4 * config.conv_kernel_size * config.hidden_size  # 2 layers x 2 FLOPs x K x 2d channels
    assert counted == pytest.approx(formula - conv, rel=0.02)


def _fake_checkpoint(save_dir, iteration, complete=True):
    tag_dir = os.path.join(save_dir, checkpointing.tag_for_iteration(iteration))
    os.makedirs(tag_dir)
    if complete:
        with open(os.path.join(tag_dir, checkpointing.META_FILE), "w") as f:
            f.write("{}")


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    save = str(tmp_path)
    for it in (2, 4, 6):
        _fake_checkpoint(save, it)
    _fake_checkpoint(save, 8, complete=False)   # a crashed save, never visible
    _fake_checkpoint(save, 10)                  # newer than `latest` (left by an older run): not kept
    checkpointing._atomic_write_text(os.path.join(save, checkpointing.LATEST), "iter_0000006")
    checkpointing.prune_checkpoints(save, keep_last=2)
    assert sorted(n for n in os.listdir(save) if n.startswith("iter_")) == ["iter_0000004", "iter_0000006"]
    assert checkpointing.read_latest_tag(save) == "iter_0000006"
    assert not [n for n in os.listdir(save) if ".tmp" in n]


def test_resolve_tag_errors_name_the_directory(tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        checkpointing.resolve_tag(str(tmp_path / "missing"))
    with pytest.raises(TrainingError, match="no 'latest' file"):
        checkpointing.resolve_tag(str(tmp_path))
    _fake_checkpoint(str(tmp_path), 3, complete=False)
    with pytest.raises(TrainingError, match="not a complete checkpoint"):
        checkpointing.resolve_tag(str(tmp_path), iteration=3)


def test_resume_needs_the_same_model_and_layout():
    model = checkpointing.config_to_json(build_config("based-tiny"))
    meta = dict(format=checkpointing.FORMAT_DEEPSPEED, tensor_model_parallel_size=2, pipeline_model_parallel_size=1,
                model=model)
    with pytest.raises(TrainingError, match="--load-weights-only"):
        checkpointing.check_resume_compatible("ckpt", "iter_0000004", meta, 1, 1, model)
    with pytest.raises(TrainingError, match="another model .*hidden_size: 64 -> 128"):
        checkpointing.check_resume_compatible("ckpt", "iter_0000004", meta, 2, 1, dict(model, hidden_size=128))
    checkpointing.check_resume_compatible("ckpt", "iter_0000004", meta, 2, 1, model)


def test_tensor_parallel_split_and_merge_are_inverse():
    from based_megatron.training.model import merge_tensor_parallel, split_tensor_parallel

    full = torch.arange(48.0).reshape(8, 6)
    for name in ("decoder.layers.0.mlp.linear_fc1.weight", "decoder.layers.0.self_attention.proj_q.weight"):
        shards = [split_tensor_parallel(name, full, 0, 2, rank) for rank in range(2)]
        torch.testing.assert_close(merge_tensor_parallel(name, shards, 0), full)
    gate_value = [split_tensor_parallel("decoder.layers.1.mlp.linear_fc1.weight", full, 0, 2, r) for r in range(2)]
    assert gate_value[0][:2].equal(full[:2]) and gate_value[0][2:].equal(full[4:6])  # [gate shard; value shard]
