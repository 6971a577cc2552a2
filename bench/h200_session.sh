#!/usr/bin/env bash
# One device call on the lent H200 (see bench/*.md for the committed results): installs the carried wheels,
# then runs the requested benchmark sections, each under its own time limit, logs under $OUT.
#   bash bench/h200_session.sh kernels generation train360m
# Wheels: .whl (flash-linear-attention, fla-core: the kernel comparison) and .whl_gpu (megatron-core 0.16.1 and
# DeepSpeed 0.19.8 with their missing dependencies), both `pip download`ed for cp312 on the CPU machine.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl_gpu/*.whl \
  || exit 1
mkdir -p /tmp/pkgs && ln -sfn "$PWD/kernels" /tmp/pkgs/based_kernels
export PYTHONPATH=/tmp/site:/tmp/pkgs:$PWD PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers, deepspeed, megatron.core as m; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'megatron-core', m.__version__)" | tee -a "$OUT/gpu.txt"
for section in "$@"; do
  case "$section" in
    kernels)
      timeout 210 python3 bench/kernels.py --out "$OUT" --skip sweep 2>&1 | tail -n 200 > "$OUT/kernels.log" ;;
    generation)
      timeout 250 python3 bench/generation.py --config based-1.3b --device cuda --dtype bf16 \
        --batch-sizes 1,16,128 --prompt-len 2048 --new-tokens 1024 > "$OUT/generation.log" 2>&1 ;;
    train360m)
      timeout 170 python3 -m deepspeed.launcher.runner --num_gpus 1 examples/pretrain_based.sh \
        --embedded-default --model based-360m --bf16 --seq-length 2048 --micro-batch-size 8 \
        --global-batch-size 8 --train-iters 30 --log-interval 5 --eval-interval 1000 --eval-iters 1 \
        --vocab-size 50257 --save-interval 1000 > "$OUT/train360m.log" 2>&1 ;;
    *) echo "unknown section $section" ;;
  esac
  echo "== $section: exit $?"
done
