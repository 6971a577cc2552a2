#!/usr/bin/env bash
# Evaluate a Hugging Face export with EleutherAI's lm-evaluation-harness.
#
#   examples/eval_harness.sh HF_DIR [TASKS] [extra lm_eval flags...]
#
# TASKS is a comma-separated list; the default is the paper's: lambada_openai, piqa, hellaswag,
# arc_easy, arc_challenge, winogrande, swde, fda, squad_completion (their data comes from the
# Hugging Face hub). The offline tasks in examples/tasks (based_local_lambada: loglikelihood,
# based_local_recall: generate_until) need no network.
# Environment: BATCH_SIZE (default 8), DEVICE (default cuda if available, else cpu),
# DTYPE (default float32), OUTPUT (results directory, default HF_DIR/eval_results).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 HF_DIR [TASKS] [extra lm_eval flags...]" >&2
  exit 2
fi
model_dir="$(cd "$1" 2>/dev/null && pwd)" || { echo "eval_harness.sh: model directory $1 does not exist" >&2; exit 2; }
[ -f "$model_dir/config.json" ] || { echo "eval_harness.sh: $model_dir has no config.json" >&2; exit 2; }
tasks="${2:-lambada_openai,piqa,hellaswag,arc_easy,arc_challenge,winogrande,swde,fda,squad_completion}"
shift $(( $# >= 2 ? 2 : 1 ))

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output="${OUTPUT:-$model_dir/eval_results}"
mkdir -p "$output"
output="$(cd "$output" && pwd)"
device="${DEVICE:-$("${PYTHON:-python3}" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"

cd "$repo"  # the local task YAMLs name their data files relative to the repository root
exec "${PYTHON:-python3}" -m lm_eval run \
  --model hf \
  --model_args "pretrained=$model_dir,trust_remote_code=True,dtype=${DTYPE:-float32}" \
  --tasks "$tasks" \
  --include_path "$repo/examples/tasks" \
  --device "$device" \
  --batch_size "${BATCH_SIZE:-8}" \
  --output_path "$output" \
  "$@"
