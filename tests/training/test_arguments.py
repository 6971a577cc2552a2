"""Flags, derived sizes and the DeepSpeed config: clear errors for inconsistent input."""

import json

import pytest

from based_megatron.training.arguments import parse_args
from based_megatron.training.ds_config import build_deepspeed_config
from based_megatron.training.errors import TrainingError

BASE = ["--data-path", "data/x_text_document", "--micro-batch-size", "2", "--train-iters", "10", "--lr", "1e-3"]


def test_embedded_default_without_arguments():
    args = parse_args([], world_size=1)
    assert args.embedded_default and args.model == "based-tiny" and args.train_iters == 300
    assert args.save and args.tensorboard_dir and args.global_batch_size == args.micro_batch_size == 16
    assert parse_args([], world_size=2).micro_batch_size == 8


def test_given_flags_override_the_embedded_default():
    args = parse_args(["--embedded-default", "--train-iters", "7"], world_size=1)
    assert args.train_iters == 7 and args.model == "based-tiny"


def test_data_parallel_size_and_accumulation_are_derived():
    args = parse_args(BASE + ["--tensor-model-parallel-size", "2", "--global-batch-size", "16"], world_size=8)
    assert args.data_parallel_size == 4 and args.grad_accum_steps == 2


@pytest.mark.parametrize("extra, world, message", [
    (["--global-batch-size", "6"], 2, "must be a multiple of --micro-batch-size 2 x data-parallel size 2"),
    (["--tensor-model-parallel-size", "3"], 4, "not divisible by --tensor-model-parallel-size 3"),
    (["--sequence-parallel"], 1, "--sequence-parallel needs --tensor-model-parallel-size > 1"),
    (["--train-tokens", "1000"], 1, "exactly one of --train-iters and --train-tokens"),
    (["--save-interval", "5"], 1, "--save-interval needs --save"),
    (["--min-lr", "1"], 1, "--min-lr 1.0 must be in [0, --lr 0.001]"),
    (["--profile", "--profile-step-start", "5", "--profile-step-end", "5"], 1,
     "--profile-step-start 5 must be >= 0 and smaller than --profile-step-end 5"),
    (["--profile", "--use-pytorch-profiler", "--tensorboard-dir", "tb", "--profile-ranks", "0", "2"], 2,
     "--profile-ranks 0 2: ranks must be in [0, world size 2"),
    (["--profile", "--use-pytorch-profiler"], 1, "--use-pytorch-profiler writes its trace into --tensorboard-dir"),
    (["--use-pytorch-profiler", "--tensorboard-dir", "tb"], 1, "--use-pytorch-profiler only picks the profiler of --profile"),
])
def test_inconsistent_flags_are_rejected(extra, world, message):
    with pytest.raises(TrainingError, match=message.replace("[", r"\[").replace("+", r"\+")):
        parse_args(BASE + extra, world_size=world)


def test_missing_data_path_says_what_to_give():
    with pytest.raises(TrainingError, match="--data-path is required"):
        parse_args(["--micro-batch-size", "2", "--train-iters", "1", "--lr", "1e-3"], world_size=1)


def test_deepspeed_config_is_completed_from_flags():
    args = parse_args(BASE + ["--global-batch-size", "8", "--clip-grad", "0.5", "--bf16"], world_size=2)
    config = build_deepspeed_config(args)
    assert config["train_batch_size"] == 8 and config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 2 and config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] and config["zero_optimization"]["stage"] == 1


def _json(tmp_path, content):
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize("content, extra, message", [
    ({"train_batch_size": 64}, [], "'train_batch_size' is 64 but --global-batch-size gives 2"),
    ({"zero_optimization": {"stage": 2}}, ["--pipeline-model-parallel-size", "2"], "ZeRO stage 2 cannot be combined"),
    ({"zero_optimization": {"stage": 3}}, [], "stage must be 1 or 2"),
    ({"optimizer": {"type": "Adam"}}, [], "remove the 'optimizer' section"),
    ({"fp16": {"enabled": True}}, [], "fp16 is not supported"),
    ('{"bf16": {"enabled": true},\n "zero_optimization": {', [], "line 2 column"),
])
def test_bad_deepspeed_json_is_rejected(tmp_path, content, extra, message):
    world = 2 if "--pipeline-model-parallel-size" in extra else 1
    args = parse_args(BASE + extra + ["--deepspeed_config", _json(tmp_path, content)], world_size=world)
    with pytest.raises(TrainingError, match=message):
        build_deepspeed_config(args)


def test_train_tokens_become_iterations():
    from based_megatron.training.arguments import resolve_train_iters

    args = parse_args(["--data-path", "x", "--micro-batch-size", "2", "--global-batch-size", "8", "--train-tokens",
                       "10000", "--lr", "1e-3", "--lr-warmup-iters", "3"], world_size=2)
    resolve_train_iters(args, seq_length=128)
    assert args.train_iters == 10 and args.lr_decay_iters == 10  # ceil(10000 / (8 x 128))
    args.lr_warmup_iters = 10
    with pytest.raises(TrainingError, match="--lr-warmup-iters 10 must be smaller than --lr-decay-iters 10"):
        resolve_train_iters(args, seq_length=128)
