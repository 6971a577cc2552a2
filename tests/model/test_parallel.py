"""based-tiny under TP=2, TP=2+SP, PP=2 (1F1B), TP=2 x PP=2 equals one process; dist_checkpointing reshards
TP2xPP2 -> TP1xPP1 and PP2. One torchrun launch (4 gloo ranks) runs every case (parallel_worker.py); each case
is reported as its own test."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("parallel_worker.py")
CASES = ["reference", "tp2", "tp2_sp", "pp2", "pp2_uneven_stages", "tp2_pp2", "checkpoint_save_tp2_pp2",
         "checkpoint_load_tp1_pp1", "checkpoint_load_pp2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory):
    checkpoint_dir = tmp_path_factory.mktemp("dist_checkpoint")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), str(checkpoint_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_parallel_layout_matches_single_process(worker_output, case):
    returncode, output = worker_output
    if f"CASE {case} OK" not in output:
        errors = [line for line in output.splitlines() if "Error" in line or "Mismatch" in line or "error" in line]
        pytest.fail(f"case {case} did not pass (torchrun exit {returncode}):\n" + "\n".join(errors[-20:])
                    + "\n--- output tail ---\n" + output[-4000:])


def test_worker_exits_cleanly(worker_output):
    returncode, output = worker_output
    assert returncode == 0 and "ALL CASES PASSED" in output, output[-4000:]
