#!/usr/bin/env bash
""":"
# Pretrain a Based (or Transformer++) model. This file is both a bash script and a Python script:
#
#   bash examples/pretrain_based.sh [LAUNCHER FLAGS] [TRAINING ARGS]
#       bash runs the part up to `exec`: it starts the ranks through the DeepSpeed launcher, which runs this
#       same file with `python -u` on every rank. DeepSpeed launcher flags (--num_gpus, --num_nodes, --hostfile,
#       --include, --exclude, --master_addr, --master_port, --launcher), wherever they appear, go to the launcher
#       (no training flag has these names); everything else goes to training.
#   deepspeed [LAUNCHER FLAGS] examples/pretrain_based.sh [TRAINING ARGS]
#       the launcher runs the Python part below directly, once per rank.
#
# With no TRAINING ARGS it runs the embedded default: based-tiny on the built-in sample corpus.
# See docs/training.md for every flag.
set -euo pipefail
script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
launcher_args=()
training_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --num_gpus|--num_nodes|--hostfile|--include|--exclude|--master_addr|--master_port|--launcher)
      [ $# -ge 2 ] || { echo "pretrain_based.sh: $1 needs a value" >&2; exit 2; }
      launcher_args+=("$1" "$2"); shift 2 ;;
    --num_gpus=*|--num_nodes=*|--hostfile=*|--include=*|--exclude=*|--master_addr=*|--master_port=*|--launcher=*)
      launcher_args+=("$1"); shift ;;
    *) training_args+=("$1"); shift ;;
  esac
done
exec "${PYTHON:-python3}" -m deepspeed.launcher.runner ${launcher_args[@]+"${launcher_args[@]}"} "$script" \
  ${training_args[@]+"${training_args[@]}"}
":"""
# Python: one rank, started by the DeepSpeed launcher as `python -u pretrain_based.sh --local_rank=N ARGS`.
# (The __main__ guard matters: "spawn" multiprocessing workers re-run this file as __mp_main__.)
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from based_megatron.training.pretrain import main

    sys.exit(main())
