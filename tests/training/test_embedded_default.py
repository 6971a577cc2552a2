"""The README's first command, `bash examples/pretrain_based.sh`, end to end in a fresh directory (shortened with
--train-iters; the full default is the same code path with 300 iterations)."""

import os
import re
import subprocess

from training_launch import SCRIPT, free_port, scalars, tags


def test_embedded_default_end_to_end(tmp_path):
    result = subprocess.run(["bash", SCRIPT, "--master_port", str(free_port()), "--embedded-default",
                             "--train-iters", "40", "--log-interval", "10", "--eval-interval", "20",
                             "--save-interval", "20"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-5000:]
    assert "embedded default: preparing the sample corpus" in out
    losses = [float(x) for x in re.findall(r"iteration +\d+/ +40 \| consumed tokens +\d+ \| loss ([\d.]+)", out)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0
    assert len(re.findall(r"validation loss at iteration (20|40) \| loss [\d.]+ \| perplexity", out)) == 2
    run_dir = tmp_path / "runs" / "embedded_default"
    assert f"checkpoint: {run_dir / 'checkpoints' / 'iter_0000040'}" in out
    assert f"TensorBoard logs: {run_dir / 'tensorboard'}" in out
    assert "train/mfu" in tags(str(run_dir / "tensorboard"))
    assert sorted(scalars(str(run_dir / "tensorboard"), "val/ppl")) == [20, 40]
    assert os.path.isfile(run_dir / "checkpoints" / "iter_0000040" / "tokenizer" / "tokenizer.json")
