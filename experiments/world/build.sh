#!/usr/bin/env bash
# `make world`: rebuild the world from scratch on a CPU -- T5 + tokenizer, VAE, judge, transformer --
# then export it as the `world` preset (varlit/world/weights/) and measure it (report.json / report.md).
#
# Stages and cores (world v2, sized for a 2-core machine):
#   1. T5 + tokenizer (seconds)
#   2. VAE (1 thread)  |  beside it, the judge on sharp renders (1 thread, bf16)
#   3. the judge continued on a half-and-half mix with the new VAE's reconstructions (2 threads)
#   4. the transformer (2 threads, bf16-mixed)
#   5. export (the transformer stored in bf16) and report
# Two jobs never share a core: a 2-thread kernel stalls when the other core is taken.
# Wall times of every stage go to $ROOT/timings.json.
set -euo pipefail
VARLIT=${VARLIT:-.venv/bin/varlit}
ROOT=${ROOT:-runs/world}
ARGS=${ARGS:-}
mkdir -p "$ROOT"
declare -A T
RESUME=${RESUME:-0}  # 1: keep the stages whose output is already there (continue a killed build)
stage() {  # stage NAME THREADS OUTPUT COMMAND...: run, time, stop the build on failure
  local name=$1 threads=$2 output=$3; shift 3
  if [ "$RESUME" = 1 ] && [ -e "$output" ]; then echo "== world: $name (kept: $output exists)"; return; fi
  local t0=$(date +%s)
  echo "== world: $name"
  OMP_NUM_THREADS=$threads "$@"
  T[$name]=$(( $(date +%s) - t0 ))
}
start=$(date +%s)
stage text_encoder 1 "$ROOT/text_encoder/config.json" "$VARLIT" world text-encoder --out "$ROOT/text_encoder"

t0=$(date +%s)
judge_pid=
if [ "$RESUME" != 1 ] || [ ! -e "$ROOT/judge/judge.safetensors" ]; then
  OMP_NUM_THREADS=1 "$VARLIT" world judge --bf16 true --out "$ROOT/judge" > "$ROOT/judge.log" 2>&1 &
  judge_pid=$!
fi
stage vae 1 "$ROOT/vae/vae.safetensors" "$VARLIT" pretrain vae --config experiments/world/vae.yaml \
  --run.root "$ROOT" --run.name vae $ARGS
if [ -n "$judge_pid" ]; then
  wait "$judge_pid" || { echo "judge training failed, see $ROOT/judge.log"; exit 1; }
  tail -n 1 "$ROOT/judge.log"
fi
T[vae_and_judge]=$(( $(date +%s) - t0 ))

stage judge_vae 2 "$ROOT/judge_vae/judge.safetensors" "$VARLIT" world judge --init "$ROOT/judge/judge.safetensors" \
  --vae_weights "$ROOT/vae/vae.safetensors" --num_images 4096 --subject_share 0.5 --steps 500 --lr 1e-3 \
  --seed 1 --bf16 true --out "$ROOT/judge_vae"
stage infinity 2 "$ROOT/infinity/infinity.safetensors" "$VARLIT" pretrain infinity \
  --config experiments/world/infinity.yaml --run.root "$ROOT" --run.name infinity \
  --model.vae_weights "$ROOT/vae/vae.safetensors" --model.text_encoder "$ROOT/text_encoder" $ARGS
stage export 2 /nonexistent "$VARLIT" world export --infinity "$ROOT/infinity/infinity.safetensors" \
  --vae "$ROOT/vae/vae.safetensors" --judge "$ROOT/judge_vae/judge.safetensors" --text_encoder "$ROOT/text_encoder"
stage report 2 /nonexistent "$VARLIT" world report
total=$(( $(date +%s) - start ))
{
  echo "{"
  for k in "${!T[@]}"; do echo "  \"$k\": ${T[$k]},"; done
  echo "  \"total\": $total"
  echo "}"
} > "$ROOT/timings.json"
echo "world rebuilt in $((total / 60)) min $((total % 60)) s (stages: $ROOT/timings.json)"
