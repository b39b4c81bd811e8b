#!/usr/bin/env bash
# The tiny recipe and three variants trained side by side on one CUDA GPU, then each evaluated on the held-out photos
# through `python -m resshift_core upscale` (one step + three seeds): about 5 minutes on an H200 with 16 CPU cores.
# The tiny recipe is meant for a 2-core CPU; on a GPU it is the same recipe (its "auto" precision is fp16 there, bf16
# or fp32 on a CPU), only faster, which makes this a quick way to check its quality (results.json per model under
# $RUNS, a summary table on stdout).
#
#   bash train/tiny_gpu_sweep.sh [RUNS_DIR]          # from the repository root, with the project's Python
# A dry run elsewhere: DEVICE=cpu EXTRA="--max-steps 2" EVAL_ARGS="--images my.png --seeds 1" bash ...
set -u
cd "$(dirname "$0")/.."
RUNS=${1:-/tmp/tiny_sweep}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
EVAL_ARGS=${EVAL_ARGS:-}
RECIPE=train/configs/tiny_cpu.yaml
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cores=$(nproc)
per=$(( cores / 4 > 0 ? cores / 4 : 1 ))
index=0
train_variant() {
    local name=$1; shift
    local first=$(( (index * per) % cores )); local last=$(( first + per - 1 ))
    index=$(( index + 1 ))
    # shellcheck disable=SC2086
    (taskset -c "$first-$last" "$PY" train/train.py --config "$RECIPE" --run-dir "$RUNS/$name" --device "$DEVICE" \
        --resume none --no-progress $EXTRA "$@" > "$RUNS/$name.log" 2>&1 \
     && "$PY" train/export.py "$RUNS/$name" -o "$RUNS/$name.safetensors" >> "$RUNS/$name.log" 2>&1 \
     && "$PY" train/evaluate.py "$RUNS/$name.safetensors" --device "$DEVICE" --out "$RUNS/$name.eval" $EVAL_ARGS \
        > "$RUNS/$name.eval.txt" 2>&1) &
}
start=$(date +%s)
# What a CPU cannot afford in 20 minutes: twice the steps, a wider and a deeper network.
train_variant defaults
train_variant steps8000 train.max_steps=8000 train.max_minutes=null
train_variant wide192 model.unet.model_channels=192
train_variant deep2 "model.unet.num_res_blocks=[2,2]"
wait
echo "done in $(( $(date +%s) - start )) s"
for name in defaults steps8000 wide192 deep2; do
    echo "== $name"
    grep -A7 "^method" "$RUNS/$name.eval.txt" || tail -5 "$RUNS/$name.log"
done
