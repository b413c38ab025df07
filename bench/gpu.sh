#!/usr/bin/env bash
# Every GPU check and benchmark of issue 7 in one run, on random weights (no download):
#   1. 2B shape, 1024^2, bf16: sampling latency at batch 1 with CFG (+ VAE encode/decode), and batch 8
#   2. fine-tune step at 1024^2, batch 2, CA+FFN, bank prior: time, FLOPs, MFU, peak memory
#   3. the same with full-block gradient checkpointing (less memory)
#   4. the smallest-memory configuration we offer: batch 1, checkpointing
#   5. the online prior source (teacher sampling every step): its cost next to the bank
#   6. issue 12: LoRA r16 on CA+FFN + bf16 frozen blocks + checkpointing, batch 2, bank prior: the real
#      peak against the memory formula (varlit.tuning.memory; printed next to it) and the 24 GB target
# Runs are ordered by priority; each has its own time limit and the whole script stops starting new ones
# after BUDGET_S seconds (default 480), so it stays well inside a 10-minute command.
# Without a GPU the same steps run in reduced form on CPU (tiny preset, 256^2), so a GPU run needs no
# code change.
#
# Usage: bash bench/gpu.sh      results: $OUT/bench-gpu/*.json if OUT is set, else runs/bench-gpu/
# Env:   PYTHON (interpreter; default .venv/bin/python if it sees a GPU, else python3), BUDGET_S, PEAK_TFLOPS.
# Needs torch (with CUDA for the GPU form) and, for the fine-tune runs, varlit's dependencies (lightning,
# transformers, ...); varlit itself is used from this checkout (PYTHONPATH), not installed.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then PY=.venv/bin/python
elif command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null; then PY=python3
else PY=.venv/bin/python
fi
DEST="${OUT:+$OUT/bench-gpu}"
DEST="${DEST:-runs/bench-gpu}"
mkdir -p "$DEST"
BUDGET_S=${BUDGET_S:-480}
PEAK=${PEAK_TFLOPS:-798}
START=$SECONDS

if "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  MODE=gpu PRESET=infinity-2b PN=1M STEPS=8 WARMUP=2 FT_STEPS=5 LIMIT=170
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$DEST/nvidia-smi.txt"
else
  MODE=cpu PRESET=tiny PN=0.06M STEPS=2 WARMUP=1 FT_STEPS=2 LIMIT=300
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "threads", torch.get_num_threads())' \
  | tee "$DEST/env.txt"
echo "mode=$MODE preset=$PRESET pn=$PN -> $DEST" | tee -a "$DEST/env.txt"
: > "$DEST/status.txt"

run() {  # run NAME STEPS JSON-FIELDS : one run_bench process per configuration (isolates peak memory)
  local name=$1 steps=$2 fields=$3
  if (( SECONDS - START > BUDGET_S )); then
    echo "$name: skipped (time budget ${BUDGET_S}s used up)" | tee -a "$DEST/status.txt"
    return
  fi
  echo "=== $name ($(( SECONDS - START ))s elapsed)"
  # run_bench is called directly (not through the CLI) so only torch and varlit's own imports are needed.
  local settings="{\"preset\": \"$PRESET\", \"pn\": \"$PN\", \"steps\": $steps, \"warmup\": $WARMUP,
    \"peak_tflops\": $PEAK, \"out\": \"$DEST/$name.json\", $fields}"
  PYTHONUNBUFFERED=1 timeout "$LIMIT" "$PY" -c \
    'import json, sys; from varlit.bench import run_bench; run_bench(**json.loads(sys.argv[1]))' "$settings" \
    2>&1 | tee "$DEST/$name.log"
  echo "$name: exit ${PIPESTATUS[0]} after $(( SECONDS - START ))s" | tee -a "$DEST/status.txt"
}

run sample_b1 "$STEPS" '"parts": ["sampling", "vae"], "batch_sizes": [1]'
run finetune_bank_b2 "$FT_STEPS" \
  '"parts": ["finetune"], "prior_sources": ["bank"], "finetune_batch": 2, "gradient_checkpointing": false'
run finetune_bank_b2_ckpt "$FT_STEPS" \
  '"parts": ["finetune"], "prior_sources": ["bank"], "finetune_batch": 2, "gradient_checkpointing": true'
run finetune_bank_b2_ckpt_lora16 "$FT_STEPS" \
  '"parts": ["finetune"], "prior_sources": ["bank"], "finetune_batch": 2, "gradient_checkpointing": true,
   "adapter": "lora", "lora_rank": 16'
run finetune_bank_b1_ckpt "$FT_STEPS" \
  '"parts": ["finetune"], "prior_sources": ["bank"], "finetune_batch": 1, "gradient_checkpointing": true'
run finetune_online_b2 "$FT_STEPS" '"parts": ["finetune"], "prior_sources": ["online"], "finetune_batch": 2'
run sample_b8 "$STEPS" '"parts": ["sampling"], "batch_sizes": [8]'

echo "=== summary ($(( SECONDS - START ))s)"
shopt -s nullglob
jsons=("$DEST"/*.json)
if (( ${#jsons[@]} )); then
  "$PY" -c 'import sys; from varlit.bench import summarize; print(summarize(sys.argv[1:]))' "${jsons[@]}" \
    | tee "$DEST/summary.txt"
fi
cat "$DEST/status.txt"
! grep -qv ': exit 0 ' "$DEST/status.txt"
