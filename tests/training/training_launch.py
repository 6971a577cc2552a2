"""Helpers to run the real CLI (`deepspeed ... examples/pretrain_based.sh`) and read back its TensorBoard scalars."""

import os
import shutil
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "examples", "pretrain_based.sh")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_deepspeed(args, num_ranks, cwd, extra_env=None, timeout=600, check=True):
    """`deepspeed --num_gpus N examples/pretrain_based.sh ARGS`; returns the CompletedProcess (stdout+stderr)."""
    launcher = [shutil.which("deepspeed")] if shutil.which("deepspeed") else [sys.executable, "-m",
                                                                               "deepspeed.launcher.runner"]
    cmd = launcher + ["--num_gpus", str(num_ranks), "--master_port", str(free_port()), SCRIPT] + [str(a) for a in args]
    env = dict(os.environ, **(extra_env or {}))
    result = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if "warn" not in line.lower()]
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n" + "\n".join(lines[-60:]))
    return result


def scalars(tensorboard_dir, tag):
    """{step: value} of one TensorBoard tag (all event files in the directory)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for name in sorted(os.listdir(tensorboard_dir)):
        if name.startswith("events."):
            accumulator = EventAccumulator(os.path.join(tensorboard_dir, name))
            accumulator.Reload()
            if tag in accumulator.Tags()["scalars"]:
                values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return values


def tags(tensorboard_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = set()
    for name in os.listdir(tensorboard_dir):
        if name.startswith("events."):
            accumulator = EventAccumulator(os.path.join(tensorboard_dir, name))
            accumulator.Reload()
            found.update(accumulator.Tags()["scalars"])
    return found
