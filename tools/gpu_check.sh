#!/usr/bin/env bash
# Issue 21's GPU figures in one bounded run: by default under 8 minutes of device time (tools/gpu_bench.py gets
# TOTAL_SECONDS=450 for everything, every stage in a child process with a hard limit of its budget + 25 s; this
# script adds a few seconds). Stages, in this order:
#   speed    whole pipeline per image with the default settings (tiles "auto"), fp16 (+ bf16 where the card has it),
#            LR 64/256/512/1024 px: median seconds after a warm-up, peak memory (max_memory_allocated) against the
#            core's estimate (pipe.estimate_memory), FLOPs of one run and the % of the card's dense fp16 peak;
#   side     the official sampler beside ours (tools/official_side_by_side.py, same random weights and noise) at 64
#            and 256 px: ratio official / ours and PSNR between the outputs (needs RESSHIFT_OFFICIAL);
#   cap      512 and 1024 px under an 8 GiB cap (torch.cuda.set_per_process_memory_fraction): they must finish;
#            time, peak, plan, out-of-memory retries;
#   guard    the fp16 overflow guard on the device (UNet and decoder weights scaled until fp16 overflows): finite
#            output, a warning, the rerun's precision;
#   tests    tests/test_cuda.py, the float16 tests of tests/test_output_features.py, the WebUI's CUDA test;
#   compile  pipe.compile(mode="reduce-overhead", then "max-autotune" while time is left): first call against steady
#            time per size, and whether an image of ANOTHER size compiles again (counters; reasons in
#            $OUT/stage_compile.log);
# then $OUT/gpu_table.md, the README's GPU table (GPU, driver, torch, date; one row per size), and
# $OUT/gpu_bench.json with every figure ($OUT/stage_<name>.json / .log per stage, written as it goes).
#
# Usage, from the repository root on the GPU machine:
#   OUT=gpu_results RESSHIFT_OFFICIAL=/path/to/ResShift tools/gpu_check.sh
# On a CPU, to test the script itself (the tests' reduced networks, 16/32 px, one timed run; the CUDA-only stages
# are recorded as "skipped: no CUDA"):
#   DRY_RUN=1 OUT=/tmp/gpu_dry tools/gpu_check.sh
#
# Environment (stage seconds are soft budgets: no run starts that is predicted not to fit):
#   OUT (gpu_results)  PYTHON (python3)  WEIGHTS (/tmp/resshift_gpu_weights: seeded random full-size weights, built
#   once and reused)  RESSHIFT_OFFICIAL (a checkout of https://github.com/zsyOAOA/ResShift, for the side stage)
#   TOTAL_SECONDS (450)  SPEED_SECONDS (100)  SIDE_SECONDS (50)  CAP_SECONDS (40)  GUARD_SECONDS (15)
#   TEST_SECONDS (60)  COMPILE_SECONDS (240; it runs last and gets at most what is left of the total)
#   STAGES (speed,side,cap,guard,tests,compile)  SIZES (64,256,512,1024)  REPEAT (3)  DTYPES (auto: fp16 + bf16)
#   COMPILE_MODES (reduce-overhead,max-autotune)  COMPILE_SIZES (64,256,512)  CAP_GIB (8)
#   PEAK_TFLOPS (the card's dense fp16 TFLOP/s; default: looked up from its name)
#   CUDA_TESTS_ALL=1 (include the torch.compile test)  TRAIN_SECONDS (0 = skip; 100: training images/s after the
#   rest, train/gpu_check.py, beyond the 8 minutes)  BENCH_EXTRA (more tools/gpu_bench.py options)
set -u
OUT=${OUT:-gpu_results}
PY=${PYTHON:-python3}
TOTAL=${TOTAL_SECONDS:-450}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

args=(--out "$OUT" --total-seconds "$TOTAL" --weights "${WEIGHTS:-/tmp/resshift_gpu_weights}"
      --budget "speed=${SPEED_SECONDS:-100}" --budget "side=${SIDE_SECONDS:-50}" --budget "cap=${CAP_SECONDS:-40}"
      --budget "guard=${GUARD_SECONDS:-15}" --budget "tests=${TEST_SECONDS:-60}"
      --budget "compile=${COMPILE_SECONDS:-240}")
[ -n "${DRY_RUN:-}" ] && args+=(--device cpu --dry-run)
[ -n "${STAGES:-}" ] && args+=(--stages "$STAGES")
[ -n "${SIZES:-}" ] && args+=(--sizes "$SIZES")
[ -n "${REPEAT:-}" ] && args+=(--repeat "$REPEAT")
[ -n "${DTYPES:-}" ] && args+=(--dtypes "$DTYPES")
[ -n "${COMPILE_MODES:-}" ] && args+=(--compile-modes "$COMPILE_MODES")
[ -n "${COMPILE_SIZES:-}" ] && args+=(--compile-sizes "$COMPILE_SIZES")
[ -n "${CAP_GIB:-}" ] && args+=(--cap-gib "$CAP_GIB")
[ -n "${PEAK_TFLOPS:-}" ] && args+=(--peak-tflops "$PEAK_TFLOPS")
[ -n "${RESSHIFT_OFFICIAL:-}" ] && args+=(--official "$RESSHIFT_OFFICIAL")
[ -n "${CUDA_TESTS_ALL:-}" ] && args+=(--tests-all)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"; } \
  2>&1 | tee "$OUT/env.txt"

# shellcheck disable=SC2086  # BENCH_EXTRA is a list of options
timeout -k 10 "$((TOTAL + 60))" "$PY" tools/gpu_bench.py "${args[@]}" ${BENCH_EXTRA:-} 2>&1 | tee "$OUT/gpu_bench.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then  # cut short: the table of what was measured
  echo "== tools/gpu_bench.py exited with $status; the table of what was measured:"
  "$PY" tools/gpu_readme_table.py "$OUT"
fi

if [ "${TRAIN_SECONDS:-0}" -gt 0 ]; then
  echo "== training images/s"
  timeout "$TRAIN_SECONDS" "$PY" train/gpu_check.py --json "$OUT/train.json" ${TRAIN_ARGS:-} 2>&1 \
    | tee "$OUT/train.log" | tail -15
fi
echo "== done: $OUT/gpu_table.md, $OUT/gpu_bench.json"
