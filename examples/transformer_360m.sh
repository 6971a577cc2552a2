#!/usr/bin/env bash
# The Transformer++ 360M baseline (RoPE softmax attention in every mixer slot, SwiGLU, RMSNorm) with the paper's recipe (Based, arXiv 2402.18668; REFERENCE.md section 2):
# the Pile tokenized with GPT-2 BPE, sequence 2048, global batch 256 sequences (524,288 tokens), AdamW lr 8e-4,
# betas (0.9, 0.95), weight decay 0.1, 200 warmup steps, cosine to 8e-5, 20,000 steps (~10B tokens),
# bf16, gradient clipping 1.0; DeepSpeed config examples/ds_configs/transformer_360m.json.
#
#   DATA=/data/pile_text_document bash examples/transformer_360m.sh [LAUNCHER FLAGS] [TRAINING FLAGS]
#
# DATA is the indexed-dataset prefix written by tools/preprocess_data.py --tokenizer-type gpt2bpe (the tokenizer is
# recorded next to it), or a blend "W1 PREFIX1 W2 PREFIX2 ...". Launcher flags (--num_gpus 8, --hostfile FILE,
# --num_nodes N, ...) go to DeepSpeed; training flags given here override the recipe's (e.g. --micro-batch-size 4,
# --tensor-model-parallel-size 2). RUN (default runs/transformer-360m) holds checkpoints and TensorBoard logs; rerunning the same
# command resumes from the latest checkpoint.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${DATA:?set DATA to the dataset prefix (without .bin/.idx), see the comment at the top of this script}"
RUN="${RUN:-runs/transformer-360m}"
read -r -a data_path <<< "$DATA"
exec bash "$here/pretrain_based.sh" \
  --model transformer-360m --seq-length 2048 \
  --data-path "${data_path[@]}" --split 969,30,1 \
  --micro-batch-size 8 --global-batch-size 256 --train-iters 20000 \
  --lr 8e-4 --min-lr 8e-5 --lr-warmup-iters 200 --lr-decay-style cosine \
  --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0 --bf16 \
  --deepspeed_config "$here/ds_configs/transformer_360m.json" \
  --save "$RUN/checkpoints" --load "$RUN/checkpoints" --save-interval 1000 --keep-last 3 \
  --tensorboard-dir "$RUN/tensorboard" --log-interval 10 --eval-interval 1000 --eval-iters 10 \
  "$@"
