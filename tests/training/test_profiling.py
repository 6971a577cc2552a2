"""--profile --use-pytorch-profiler on the real CLI: the chosen iteration is recorded, its trace written next to the
TensorBoard events and its top operators printed; training goes on unchanged."""

import re
import subprocess

from training_launch import SCRIPT, free_port


def test_pytorch_profiler_records_the_chosen_iteration(tmp_path):
    result = subprocess.run(["bash", SCRIPT, "--master_port", str(free_port()), "--embedded-default",
                             "--train-iters", "3", "--lr-warmup-iters", "1", "--log-interval", "1", "--eval-iters", "0",
                             "--profile", "--use-pytorch-profiler", "--profile-step-start", "1",
                             "--profile-step-end", "2", "--tensorboard-dir", "tb"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-5000:]
    assert "profile of iteration 2 (rank 0; trace in tb" in out
    table = out[out.index("profile of iteration 2"):]
    assert re.search(r"aten::mm\s", table) and "Self CPU time total" in table
    traces = list((tmp_path / "tb").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert len(re.findall(r"iteration +\d+/ +3 \| consumed tokens", out)) == 3
