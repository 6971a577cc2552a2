"""The real CLI with 2 ranks (DP=2 under ZeRO-1 and ZeRO-2, TP=2 with sequence parallelism, PP=2) gives the losses
of a 1-rank run with the same global batch (fp32, rel 1e-5); their checkpoints merge (load_full_state_dict) to the
1-rank weights, a TP change is refused with a clear message, and --load-weights-only / imported weights reshard."""

import os

import pytest
import torch

from training_launch import run_deepspeed, scalars, tags

ITERS = 6
LAYOUTS = {
    "1rank": (1, []),
    "dp2-zero1": (2, ["--zero-stage", 1]),
    "dp2-zero2": (2, ["--zero-stage", 2]),
    "tp2-sp": (2, ["--tensor-model-parallel-size", 2, "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", 2]),
}
TB_TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/tflops_per_gpu", "train/mfu",
           "val/loss", "val/ppl"}


def train_args(sample_dataset, out_dir, *extra):
    return ["--model", "based-tiny", "--seq-length", 64, "--data-path", sample_dataset, "--split", "98,2,0",
            "--micro-batch-size", 2, "--global-batch-size", 4, "--train-iters", ITERS, "--lr", 3e-3,
            "--lr-warmup-iters", 2, "--min-lr", 3e-4, "--log-interval", 1, "--eval-interval", 3, "--eval-iters", 1,
            "--tensorboard-dir", os.path.join(out_dir, "tb"), "--data-cache-path", os.path.join(out_dir, "cache"),
            "--save", os.path.join(out_dir, "ckpt"), "--seed", 1234, *extra]


@pytest.fixture(scope="module")
def runs(sample_dataset, tmp_path_factory):
    """layout -> output directory of its run (each layout launched once, on first use)."""
    done = {}

    def run(layout):
        if layout not in done:
            out = str(tmp_path_factory.mktemp(layout))
            ranks, extra = LAYOUTS[layout]
            run_deepspeed(train_args(sample_dataset, out, *extra), num_ranks=ranks, cwd=out)
            done[layout] = out
        return done[layout]

    return run


def test_one_rank_logs_every_tag_and_learns(runs):
    tb = os.path.join(runs("1rank"), "tb")
    assert TB_TAGS <= tags(tb)
    losses = scalars(tb, "train/loss")
    assert sorted(losses) == list(range(1, ITERS + 1))
    assert losses[ITERS] < losses[1] - 0.5


@pytest.mark.parametrize("layout", ["dp2-zero1", "dp2-zero2", "tp2-sp", "pp2"])
def test_two_ranks_match_one(runs, layout):
    reference, out = runs("1rank"), runs(layout)
    for tag in ("train/loss", "val/loss"):
        ours, theirs = scalars(os.path.join(out, "tb"), tag), scalars(os.path.join(reference, "tb"), tag)
        assert sorted(ours) == sorted(theirs)
        assert ours == pytest.approx(theirs, rel=1e-5), tag


@pytest.mark.parametrize("layout", ["tp2-sp", "pp2"])
def test_checkpoints_merge_to_the_one_rank_weights(runs, layout):
    from based_megatron.training.checkpointing import load_full_state_dict

    config, reference = load_full_state_dict(os.path.join(runs("1rank"), "ckpt"))
    merged_config, merged = load_full_state_dict(os.path.join(runs(layout), "ckpt"))
    assert merged_config.layer_pattern == config.layer_pattern
    assert merged.keys() == reference.keys()
    assert "embedding.word_embeddings.weight" in merged and "decoder.layers.0.self_attention.conv_weight" in merged
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def _trainer(sample_dataset, out, *extra):
    from based_megatron.training.arguments import parse_args
    from based_megatron.training.ds_config import build_deepspeed_config
    from based_megatron.training.pretrain import Trainer

    args = parse_args([str(a) for a in train_args(sample_dataset, out, *extra)], world_size=1)
    return Trainer(args, build_deepspeed_config(args))


def _assert_weights_equal(trainer, full):
    from based_megatron.training.model import local_layers, pipe_key_to_gpt_name

    for idx, layer in local_layers(trainer.module).items():
        for key, tensor in layer.state_dict().items():
            name = pipe_key_to_gpt_name(idx, key, trainer.config.num_layers)
            if name is not None:
                torch.testing.assert_close(tensor, full[name], rtol=0, atol=0, msg=name)


def test_tp_change_is_refused_and_weights_only_reshards(runs, sample_dataset, tmp_path, single_process_world,
                                                        restore_signals):
    from based_megatron.training.checkpointing import load_full_state_dict
    from based_megatron.training.errors import TrainingError

    tp2 = os.path.join(runs("tp2-sp"), "ckpt")
    with pytest.raises(TrainingError, match="saved with tensor-parallel size 2 .* add --load-weights-only"):
        _trainer(sample_dataset, str(tmp_path), "--load", tp2)
    trainer = _trainer(sample_dataset, str(tmp_path), "--load", tp2, "--load-weights-only")
    assert trainer.iteration == 0
    _assert_weights_equal(trainer, load_full_state_dict(tp2)[1])


def test_imported_weights_start_a_run(runs, sample_dataset, tmp_path, single_process_world, restore_signals):
    from based_megatron.data.tokenizers import load_tokenizer
    from based_megatron.training.checkpointing import (checkpoint_tokenizer_dir, load_full_state_dict,
                                                       save_checkpoint_from_full_state_dict)

    source = os.path.join(runs("pp2"), "ckpt")
    config, full = load_full_state_dict(source)
    assert load_tokenizer(checkpoint_tokenizer_dir(source)).vocab_size == 257
    imported = str(tmp_path / "imported")
    save_checkpoint_from_full_state_dict(config, full, imported, tokenizer_dir=checkpoint_tokenizer_dir(source))
    assert load_full_state_dict(imported)[1].keys() == full.keys()
    trainer = _trainer(sample_dataset, str(tmp_path), "--load", imported)
    assert trainer.iteration == 0
    _assert_weights_equal(trainer, full)


@pytest.mark.parametrize("layout", ["tp2-sp", "pp2"])
def test_weights_only_load_reshards_across_ranks(runs, layout, sample_dataset, tmp_path_factory,
                                                 single_process_world, restore_signals):
    """2 ranks start from a 1-rank checkpoint's weights (TP shards cut per rank, the tied embedding on both pipeline
    stages): the first loss equals the 1-rank loss on the same weights and batch."""
    source = os.path.join(runs("1rank"), "ckpt")
    out = str(tmp_path_factory.mktemp(f"reshard-{layout}"))
    ranks, extra = LAYOUTS[layout]
    run_deepspeed(train_args(sample_dataset, out, *extra, "--load", source, "--load-weights-only",
                             "--exit-interval", 1, "--eval-iters", 0), num_ranks=ranks, cwd=out)
    one_rank = _trainer(sample_dataset, str(tmp_path_factory.mktemp("reshard-1rank")), "--load", source,
                        "--load-weights-only")
    assert scalars(os.path.join(out, "tb"), "train/loss")[1] == pytest.approx(one_rank._train_step(), rel=1e-5)
