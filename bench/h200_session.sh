#!/usr/bin/env bash
# One device call on the lent H200 (see bench/*.md for the committed results): installs the carried wheels,
# then runs the requested benchmark sections, each under its own time limit, logs under $OUT.
#   bash bench/h200_session.sh kernels generation train360m
# Wheels: .whl (flash-linear-attention, fla-core: the kernel comparison) and .whl_gpu (megatron-core 0.16.1 and
# DeepSpeed 0.19.8 with their missing dependencies), both `pip download`ed for cp312 on the CPU machine.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -e /tmp/site/.installed ]; then     # once per machine: sections may then run in parallel invocations
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    .whl_gpu/*.whl && touch /tmp/site/.installed || exit 1
fi
mkdir -p /tmp/pkgs && ln -sfn "$PWD/kernels" /tmp/pkgs/based_kernels
export PYTHONPATH=/tmp/site:/tmp/pkgs:$PWD PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers, deepspeed, megatron.core as m; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'megatron-core', m.__version__)" | tee -a "$OUT/gpu.txt"
# what ncu profiles: one linear-attention fwd+bwd (after a compiling forward), B*T = 32768, 16 heads, D = 64, T = $1
la_step() {
  echo "import sys; sys.path.insert(0, 'bench'); import kernels as k, torch; \
f = k.fwd_bwd(k.linear_attention_fused, k.la_inputs(32768 // $1, $1, 16, 64, torch.bfloat16)); f(); \
torch.cuda.synchronize()"
}
for section in "$@"; do
  case "$section" in
    kernels)           # correctness, while a throw-away speed run fills Triton's cache; then the timed speed run
      timeout 400 python3 bench/kernels.py --out "$OUT/correctness" --skip la,breakdown,sweep,decode,conv,swa \
        > "$OUT/kernels_correctness.log" 2>&1 &
      timeout 400 python3 bench/kernels.py --out /tmp/warmup --skip correctness,sweep > /dev/null 2>&1
      wait
      timeout 300 python3 bench/kernels.py --out "$OUT/speed" --skip correctness,sweep > "$OUT/kernels_speed.log" 2>&1 ;;
    kernels-profile)   # where the time goes: per-kernel breakdown and the tile sweep
      timeout 300 python3 bench/kernels.py --out "$OUT/profile" --skip correctness,la,decode,conv,swa 2>&1 \
        | tail -n 200 > "$OUT/kernels_profile.log" ;;
    kernels-breakdown) # per-kernel CUDA times, host issue time and CUDA-graph replay of one fused call
      timeout 200 python3 bench/kernels.py --out "$OUT/breakdown" --skip correctness,la,sweep,decode,conv,swa \
        > "$OUT/kernels_breakdown.log" 2>&1 ;;
    kernels-la)        # correctness at full shapes + linear attention speed and per-kernel breakdown
      timeout 300 python3 bench/kernels.py --out "$OUT/la" --skip sweep,decode,conv,swa 2>&1 | tail -n 200 \
        > "$OUT/kernels_la.log" ;;
    tune|tune-stages|tune-regs|tune-chunk-tiles|tune-grad-tiles)  # linear attention launch-configuration searches
      search=${section#tune-}; [ "$section" = tune ] && search=tiles
      timeout 420 python3 bench/tune_linear_attention.py --out "$OUT/$section" --jobs 12 --search "$search" \
        > "$OUT/$section.log" 2>&1 ;;
    tune-conv)         # short conv backward tile variants (fwd+bwd time, % of bandwidth, error vs fp64)
      timeout 400 python3 bench/tune_short_conv.py > "$OUT/tune_conv.log" 2>&1 ;;
    ncu)               # hardware counters of each linear-attention kernel, T = 2048 and 16384, D = 64
      for t in ${NCU_LENGTHS:-2048 16384}; do
        timeout 150 ncu --clock-control none --target-processes all -k 'regex:_chunk_state|_fwd_output|_bwd_' \
          --launch-count 6 --section SpeedOfLight --section Occupancy --section LaunchStats \
          --section MemoryWorkloadAnalysis --section WarpStateStats --section ComputeWorkloadAnalysis \
          --section SchedulerStats --section InstructionStats --section SourceCounters \
          python3 -c "$(la_step "$t")" > "$OUT/ncu_T$t.txt" 2>&1
      done ;;
    ncu-source)        # warp-stall samples per SASS instruction of the linear-attention kernels, T = 2048
      timeout 300 ncu --clock-control none --target-processes all \
        -k 'regex:_chunk_state|_fwd_output|_bwd_grad' --launch-skip 2 --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section SourceCounters \
        --import-source no -f -o "$OUT/la_source" \
        python3 -c "$(la_step 2048)" > "$OUT/ncu_source.log" 2>&1
      ncu -i "$OUT/la_source.ncu-rep" --page raw --csv > "$OUT/ncu_raw.csv" 2>&1
      ncu -i "$OUT/la_source.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_sass.csv" 2>&1
      rm -f "$OUT/la_source.ncu-rep" ;;
    generation)
      timeout "${GENERATION_TIMEOUT:-540}" python3 bench/generation.py --config based-1.3b --device cuda \
        --dtype bf16 --batch-sizes "${GENERATION_BATCHES:-1,16,128}" --prompt-len 2048 --new-tokens 1024 \
        > "$OUT/generation.log" 2>&1 ;;
    train360m)
      timeout 170 python3 -m deepspeed.launcher.runner --num_gpus 1 examples/pretrain_based.sh \
        --embedded-default --model based-360m --bf16 --seq-length 2048 --micro-batch-size 8 \
        --global-batch-size 8 --train-iters 30 --log-interval 5 --eval-interval 1000 --eval-iters 1 \
        --vocab-size 50257 --save-interval 1000 > "$OUT/train360m.log" 2>&1 ;;
    train360m-profile) # the same run, iterations 11-12 under torch.profiler (table in the log, trace gzipped)
      timeout 170 python3 -m deepspeed.launcher.runner --num_gpus 1 examples/pretrain_based.sh \
        --embedded-default --model based-360m --bf16 --seq-length 2048 --micro-batch-size 8 \
        --global-batch-size 8 --train-iters 14 --log-interval 1 --eval-interval 1000 --eval-iters 0 \
        --vocab-size 50257 --save-interval 1000 --profile --use-pytorch-profiler --profile-step-start 10 \
        --profile-step-end 12 --tensorboard-dir "$OUT/train360m_tb" > "$OUT/train360m_profile.log" 2>&1
      gzip -f "$OUT"/train360m_tb/*.pt.trace.json ;;
    multi-gpu)         # issue 7: every layout that fits the machine's GPUs vs one GPU (bench/multi_gpu.md)
      timeout 570 python3 bench/multi_gpu.py --gpus "$(nvidia-smi -L | wc -l)" --out "$OUT/multi_gpu" \
        > "$OUT/multi_gpu.log" 2>&1 ;;
    conversion)        # based-1.3b TP2 x PP2 checkpoint -> HF, on the machine's CPUs (bench/conversion.md)
      timeout 500 python3 bench/conversion.py --config based-1.3b --tp 2 --pp 2 --out "$OUT/conversion" \
        > "$OUT/conversion.log" 2>&1 ;;
    *) echo "unknown section $section" ;;
  esac
  echo "== $section: exit $?"
done
