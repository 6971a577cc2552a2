"""Checkpoints through the real CLI: SIGTERM saves and exits 0, a resume reproduces the uninterrupted run bitwise
(1 rank, CPU fp32), a resume may change the data-parallel size, and a kill -9 in the middle of a save leaves the
previous checkpoint loadable."""

import json
import os
import re

import pytest

from training_launch import run_deepspeed, scalars

HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_hooks")
ITERS = 8


def train_args(sample_dataset, out_dir, *extra):
    return ["--model", "based-tiny", "--seq-length", 64, "--data-path", sample_dataset, "--split", "98,2,0",
            "--micro-batch-size", 2, "--global-batch-size", 4, "--train-iters", ITERS, "--lr", 3e-3,
            "--lr-warmup-iters", 2, "--min-lr", 3e-4, "--log-interval", 1, "--eval-interval", 4, "--eval-iters", 1,
            "--tensorboard-dir", os.path.join(out_dir, "tb"), "--data-cache-path", os.path.join(out_dir, "cache"),
            "--save", os.path.join(out_dir, "ckpt"), *extra]


def hook_env(**values):
    path = os.pathsep.join(p for p in (HOOKS, os.environ.get("PYTHONPATH")) if p)
    return dict(PYTHONPATH=path, **values)


def latest(out_dir):
    with open(os.path.join(out_dir, "ckpt", "latest")) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def uninterrupted(sample_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    run_deepspeed(train_args(sample_dataset, out), num_ranks=1, cwd=out)
    return scalars(os.path.join(out, "tb"), "train/loss")


def test_sigterm_saves_and_resume_is_bitwise(uninterrupted, sample_dataset, tmp_path):
    out = str(tmp_path)
    result = run_deepspeed(train_args(sample_dataset, out), num_ranks=1, cwd=out,
                           extra_env=hook_env(BASED_TEST_SIGTERM_AT_STEP="4"))
    stopped = re.search(r"received SIGTERM at iteration (\d+)", result.stdout)
    assert stopped, result.stdout[-3000:]
    iteration = int(stopped.group(1))
    assert 1 <= iteration < ITERS
    assert latest(out) == f"iter_{iteration:07d}"
    run_deepspeed(train_args(sample_dataset, out, "--load", os.path.join(out, "ckpt")), num_ranks=1, cwd=out)
    resumed = scalars(os.path.join(out, "tb"), "train/loss")
    assert resumed == uninterrupted  # bitwise (TensorBoard stores the fp32 loss exactly)
    assert latest(out) == "iter_0000008"


def test_resume_with_another_data_parallel_size(uninterrupted, sample_dataset, tmp_path):
    out = str(tmp_path)
    run_deepspeed(train_args(sample_dataset, out, "--exit-interval", 4, "--zero-stage", 2), num_ranks=2, cwd=out)
    assert latest(out) == "iter_0000004"
    run_deepspeed(train_args(sample_dataset, out, "--load", os.path.join(out, "ckpt"), "--zero-stage", 2),
                  num_ranks=1, cwd=out)
    resumed = scalars(os.path.join(out, "tb"), "train/loss")
    assert resumed == pytest.approx(uninterrupted, rel=1e-5)


def test_kill_during_save_resumes_from_previous_checkpoint(uninterrupted, sample_dataset, tmp_path):
    out = str(tmp_path)
    result = run_deepspeed(train_args(sample_dataset, out, "--save-interval", 2, "--keep-last", 1), num_ranks=1,
                           cwd=out, extra_env=hook_env(BASED_TEST_KILL_DURING_SAVE="iter_0000004"), check=False)
    assert result.returncode != 0
    assert latest(out) == "iter_0000002"
    assert os.path.isdir(os.path.join(out, "ckpt", "iter_0000004"))  # the partial save, never made visible
    assert not os.path.exists(os.path.join(out, "ckpt", "iter_0000004", "based_checkpoint.json"))

    run_deepspeed(train_args(sample_dataset, out, "--save-interval", 2, "--keep-last", 1, "--load",
                             os.path.join(out, "ckpt")), num_ranks=1, cwd=out)
    assert scalars(os.path.join(out, "tb"), "train/loss") == uninterrupted
    assert latest(out) == "iter_0000008"
    assert sorted(n for n in os.listdir(os.path.join(out, "ckpt")) if n.startswith("iter_")) == ["iter_0000008"]
    with open(os.path.join(out, "ckpt", "iter_0000008", "based_checkpoint.json")) as f:
        assert json.load(f)["iteration"] == 8
