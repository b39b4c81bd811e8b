#!/usr/bin/env bash
# Every figure a short GPU loan should give, in one run (each stage bounded so that one cannot eat the others' time):
#   1. the benchmark's CUDA cases (fp16; random full-size weights, kept for stage 2), memory estimate beside each;
#   2. the official sampler (fp16 autocast, as it runs on CUDA) beside ours on the same weights and noise, if a
#      checkout of the official code is given (RESSHIFT_OFFICIAL=DIR);
#   3. the CUDA tests (precisions, tile batches, folded upsampling, out-of-memory retry, memory estimate vs the
#      allocator; set CUDA_TESTS_ALL=1 to include torch.compile);
#   4. training images/s (train/gpu_check.py).
# Usage, from the repository root on the GPU machine:  OUT=results RESSHIFT_OFFICIAL=/path/ResShift tools/gpu_check.sh
set -u
OUT=${OUT:-gpu_results}
PY=${PYTHON:-python3}
WEIGHTS=${WEIGHTS:-/tmp/resshift_gpu_weights}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c \
  "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"; } \
  2>&1 | tee "$OUT/env.txt"

echo "== 1. benchmark"
timeout "${BENCH_SECONDS:-150}" "$PY" -m resshift_core.bench --device "${BENCH_DEVICE:-cuda}" --dtype "${BENCH_DTYPES:-fp16}" \
  --cases "${BENCH_CASES:-v3-64,v3-256,v3-512,v3-1024-tiled}" --repeat "${BENCH_REPEAT:-2}" --warmup 1 \
  --peak-seconds 0.5 --save-weights "$WEIGHTS" --json "$OUT/bench.json" ${BENCH_EXTRA:-} 2>&1 | tee "$OUT/bench.log" \
  | grep -v "^  warnings.warn\|UserWarning"

echo "== 2. official side by side"
if [ -n "${RESSHIFT_OFFICIAL:-}" ]; then
  timeout "${SIDE_SECONDS:-90}" "$PY" tools/official_side_by_side.py --official "$RESSHIFT_OFFICIAL" \
    --unet "$WEIGHTS/bench_unet_realsr-v3.safetensors" --autoencoder "$WEIGHTS/bench_autoencoder_vq-f4.safetensors" \
    --sizes "${SIDE_SIZES:-64,256}" --repeat 2 --ours-dtype fp16 2>&1 | tee "$OUT/side_by_side.log" | grep "^{"
else
  echo "skipped: set RESSHIFT_OFFICIAL to a checkout of the official code"
fi

echo "== 3. CUDA tests"
selection="not compiled"
[ -n "${CUDA_TESTS_ALL:-}" ] && selection="cuda"
timeout "${TEST_SECONDS:-150}" "$PY" -m pytest -q -m cuda -rA -s -p no:cacheprovider tests/test_cuda.py \
  tests/test_webui_extension.py -k "$selection" 2>&1 \
  | tee "$OUT/cuda_tests.log" | grep -E "memory |passed|failed|FAILED|Error" | tail -30

echo "== 4. training images/s"
timeout "${TRAIN_SECONDS:-100}" "$PY" train/gpu_check.py --json "$OUT/train.json" ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log" | tail -15
echo "== done"
