#!/usr/bin/env bash
# `make world`: rebuild the world from scratch on a CPU -- T5 + tokenizer, VAE, transformer (two stages), judge --
# then export it as the `world` preset (varlit/world/weights/) and measure it (report.json / report.md).
# The judge trains beside the transformer (one thread each: the two cores are both busy, and a 2-thread
# kernel stalls when the other core is taken): first on sharp renders, then continued on a half-and-half mix
# with the VAE's reconstructions (what the generator can draw; `varlit world judge --init`).
# Wall times of every stage go to $ROOT/timings.json.
set -euo pipefail
VARLIT=${VARLIT:-.venv/bin/varlit}
ROOT=${ROOT:-runs/world}
ARGS=${ARGS:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$ROOT"
declare -A T
RESUME=${RESUME:-0}  # 1: keep the stages whose output is already there (continue a killed build)
stage() {  # stage NAME OUTPUT COMMAND...: run, time, stop the build on failure
  local name=$1 output=$2; shift 2
  if [ "$RESUME" = 1 ] && [ -e "$output" ]; then echo "== world: $name (kept: $output exists)"; return; fi
  local t0=$(date +%s)
  echo "== world: $name"
  "$@"
  T[$name]=$(( $(date +%s) - t0 ))
}
start=$(date +%s)
stage text_encoder "$ROOT/text_encoder/config.json" "$VARLIT" world text-encoder --out "$ROOT/text_encoder"
stage vae "$ROOT/vae/vae.safetensors" "$VARLIT" pretrain vae --config experiments/world/vae.yaml --run.root "$ROOT" --run.name vae $ARGS
t0=$(date +%s)
judge_pid=
if [ "$RESUME" != 1 ] || [ ! -e "$ROOT/judge_vae/judge.safetensors" ]; then
  {
    if [ "$RESUME" != 1 ] || [ ! -e "$ROOT/judge/judge.safetensors" ]; then
      "$VARLIT" world judge --out "$ROOT/judge"
    fi
    "$VARLIT" world judge --init "$ROOT/judge/judge.safetensors" --vae_weights "$ROOT/vae/vae.safetensors" \
      --num_images 4096 --subject_share 0.5 --steps 500 --lr 1e-3 --seed 1 --out "$ROOT/judge_vae"
  } > "$ROOT/judge.log" 2>&1 &
  judge_pid=$!
fi
stage infinity "$ROOT/infinity/infinity.safetensors" "$VARLIT" pretrain infinity --config experiments/world/infinity.yaml --run.root "$ROOT" \
  --run.name infinity --model.vae_weights "$ROOT/vae/vae.safetensors" --model.text_encoder "$ROOT/text_encoder" $ARGS
if [ -n "$judge_pid" ]; then
  wait "$judge_pid" || { echo "judge training failed, see $ROOT/judge.log"; exit 1; }
  tail -n 2 "$ROOT/judge.log"
fi
T[judge_and_infinity]=$(( $(date +%s) - t0 ))
stage infinity2 "$ROOT/infinity2/infinity.safetensors" "$VARLIT" pretrain infinity \
  --config experiments/world/infinity2.yaml --run.root "$ROOT" --run.name infinity2 \
  --model.weights "$ROOT/infinity/infinity.safetensors" --model.vae_weights "$ROOT/vae/vae.safetensors" \
  --model.text_encoder "$ROOT/text_encoder" $ARGS
stage export /nonexistent "$VARLIT" world export --infinity "$ROOT/infinity2/infinity.safetensors" \
  --vae "$ROOT/vae/vae.safetensors" --judge "$ROOT/judge_vae/judge.safetensors" --text_encoder "$ROOT/text_encoder"
stage report /nonexistent "$VARLIT" world report
total=$(( $(date +%s) - start ))
{
  echo "{"
  for k in "${!T[@]}"; do echo "  \"$k\": ${T[$k]},"; done
  echo "  \"total\": $total"
  echo "}"
} > "$ROOT/timings.json"
echo "world rebuilt in $((total / 60)) min $((total % 60)) s (stages: $ROOT/timings.json)"
