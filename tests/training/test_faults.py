"""Faults, in one process: non-finite steps are skipped and counted, N in a row save and stop, and bad data
inputs give clear messages."""

import os

import pytest
import torch

from based_megatron.training import model as training_model
from based_megatron.training.arguments import parse_args
from based_megatron.training.ds_config import build_deepspeed_config
from based_megatron.training.errors import TrainingError
from based_megatron.training.pretrain import EXIT_NONFINITE, EXIT_OK, Trainer


def make_trainer(sample_dataset, tmp_path, *extra):
    argv = ["--model", "based-tiny", "--seq-length", "32", "--data-path", sample_dataset, "--split", "98,2,0",
            "--micro-batch-size", "2", "--train-iters", "6", "--lr", "1e-3", "--eval-iters", "0",
            "--log-interval", "1", "--data-cache-path", str(tmp_path / "cache"), *extra]
    args = parse_args(argv, world_size=1)
    return Trainer(args, build_deepspeed_config(args))


def poison_losses(monkeypatch, bad_calls):
    """Make the loss (and so every gradient) NaN on the given 1-based forward calls."""
    original = training_model.language_model_loss
    calls = [0]

    def loss(logits, labels_and_mask):
        calls[0] += 1
        value = original(logits, labels_and_mask)
        return value * float("nan") if calls[0] in bad_calls else value

    monkeypatch.setattr(training_model, "language_model_loss", loss)


@pytest.mark.parametrize("precision", [[], ["--bf16"]], ids=["fp32", "bf16"])
def test_nonfinite_steps_are_skipped_and_counted(single_process_world, sample_dataset, tmp_path, monkeypatch,
                                                 restore_signals, capsys, precision):
    """bf16 takes DeepSpeed's gradient-overflow check (fused by deepspeed_compat), fp32 its gradient-norm check."""
    poison_losses(monkeypatch, bad_calls={2, 3})
    trainer = make_trainer(sample_dataset, tmp_path, *precision)
    zero = trainer.engine.optimizer
    if precision:
        assert zero.check_grad_overflow and zero.has_overflow_partitioned_grads_serial.__module__.endswith(
            "training.deepspeed_compat")
    before = [p.detach().clone() for p in trainer.module.parameters()]
    assert trainer.run() == EXIT_OK
    assert trainer.total_skipped == 2
    assert trainer.scheduler.num_steps == 4  # the LR schedule advances only on applied steps
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.module.parameters()))
    out = capsys.readouterr().out
    assert "iteration 2: non-finite loss or gradient" in out and "skipped 1" in out


def test_consecutive_nonfinite_steps_save_and_stop(single_process_world, sample_dataset, tmp_path, monkeypatch,
                                                   restore_signals, capsys):
    poison_losses(monkeypatch, bad_calls=set(range(3, 100)))
    save = str(tmp_path / "ckpt")
    trainer = make_trainer(sample_dataset, tmp_path, "--max-consecutive-skipped-steps", "3", "--save", save)
    assert trainer.run() == EXIT_NONFINITE
    assert open(os.path.join(save, "latest")).read() == "iter_0000005"
    assert "3 consecutive steps had a non-finite loss or gradient" in capsys.readouterr().out


def test_missing_dataset_files_are_named(single_process_world, tmp_path, restore_signals):
    with pytest.raises(TrainingError, match=r"no .*nowhere_text_document.bin / .*\.idx"):
        make_trainer(str(tmp_path / "nowhere_text_document"), tmp_path)


def test_training_past_the_data_is_a_clear_error(single_process_world, sample_dataset, tmp_path, restore_signals):
    from based_megatron.training.data import MicroBatches, build_datasets

    trainer = make_trainer(sample_dataset, tmp_path)
    train, _ = build_datasets(trainer.args, trainer.tokenizer, train_samples=8, valid_samples=0)
    near_the_end = MicroBatches(train, len(train) - 2, trainer.args, 0, "train")  # one micro-batch left
    near_the_end.take(1)
    with pytest.raises(TrainingError, match="the train data is exhausted"):
        near_the_end.take(1)
    with pytest.raises(TrainingError, match="the train data is exhausted"):
        MicroBatches(train, len(train), trainer.args, 0, "train")
