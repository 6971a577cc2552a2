"""--verify from a real TP2 x PP2 training checkpoint (4 gloo ranks, DeepSpeed pipeline engine, one iteration)."""

import os
import socket
import subprocess
import sys

import pytest

from tests.hf.helpers import REPO, load_tool


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tp2_pp2_checkpoint(tmp_path_factory):
    from based_megatron.data.sample_corpus import ensure_sample_dataset

    root = tmp_path_factory.mktemp("tp2pp2")
    data = ensure_sample_dataset(str(root / "data"))
    args = ["--model", "based-tiny", "--seq-length", "64", "--data-path", data, "--split", "98,2,0",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "2", "--lr", "3e-3",
            "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--eval-iters", "0",
            "--save", str(root / "ckpt"), "--data-cache-path", str(root / "cache")]
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "4", "--master_port", str(free_port()),
           os.path.join(REPO, "examples", "pretrain_based.sh"), *args]
    result = subprocess.run(cmd, cwd=str(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-6000:]
    return str(root / "ckpt")


def test_verify_export_of_a_tp2_pp2_checkpoint(tp2_pp2_checkpoint, tmp_path, capsys):
    load_tool("convert_to_hf").main(["--load", tp2_pp2_checkpoint, "--output", str(tmp_path / "hf"), "--verify",
                                     "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert "verify: converted weights vs training model" in out and ": OK" in out
    assert os.path.isfile(tmp_path / "hf" / "tokenizer.json")  # the run's tokenizer ships with the export


def test_missing_shard_is_named(tp2_pp2_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tp2_pp2_checkpoint, broken)
    tag = (broken / "latest").read_text().strip()
    victim = "layer_02-model_01-model_states.pt"  # TP rank 1 of a mixer layer
    os.remove(broken / tag / victim)
    with pytest.raises(SystemExit) as error:
        load_tool("convert_to_hf").main(["--load", str(broken), "--output", str(tmp_path / "hf")])
    assert "missing tensor-parallel shard" in str(error.value) or victim in str(error.value), str(error.value)
