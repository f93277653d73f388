#!/usr/bin/env bash
# One command for everything that needs a GPU in issue 5 (kernels, plugins' kernels, benchmarks):
#   bash bench/run_gpu_suite.sh [OUT_DIR]          (default OUT_DIR: bench/gpu_results)
# 1. builds libsparsefuse_kernels.so for the local GPU (CUDA_ARCHS, default "native");
# 2. installs spconv-triton from $SPARSEFUSE_WHEELS (offline wheel dir, optional: parity test and
#    benchmark column are skipped without it; see bench/gpu-wheels.txt);
# 3. runs every `gpu`-marked test (junit XML + log in OUT_DIR);
# 4. runs bench/gpu_bevpool.py and bench/gpu_sparseconv.py (JSON in OUT_DIR).
# Environment: PYTHON (default: .venv/bin/python if it has CUDA torch, else python3), CUDA_ARCHS,
# SPARSEFUSE_WHEELS (e.g. build/wheels), BENCH_REPS, SPARSEFUSE_KERNELS_LIB (a prebuilt library, used
# only where nvcc or cmake is missing). Exit status: non-zero if the build, a test or a benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/gpu_results}"
mkdir -p "$OUT"
BUILD=build/gpu
status=0

pick_python() {
  for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}
PY="$(pick_python)" || { echo "run_gpu_suite: no python with a CUDA-enabled torch found (set PYTHON)" >&2; exit 2; }
echo "python: $PY" | tee "$OUT/env.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$OUT/env.txt"
nvidia-smi -L 2>/dev/null | tee -a "$OUT/env.txt" || true
nvcc --version 2>/dev/null | tail -1 | tee -a "$OUT/env.txt" || true

if ! "$PY" -c "import sparsefuse.plugins" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { echo "cannot install sparsefuse" >&2; exit 2; }
fi
if [ -n "${SPARSEFUSE_WHEELS:-}" ] && ! "$PY" -c "import spconv_triton" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-index --find-links "$SPARSEFUSE_WHEELS" spconv-triton \
    || echo "warning: spconv-triton not installed; parity test and column skipped" >&2
fi

start=$(date +%s)
if ! command -v nvcc > /dev/null || ! command -v cmake > /dev/null; then
  # No toolkit here: fall back to a library built elsewhere (e.g. carried from a build machine).
  if [ -n "${SPARSEFUSE_KERNELS_LIB:-}" ] && [ -f "$SPARSEFUSE_KERNELS_LIB" ]; then
    echo "build: skipped (no nvcc/cmake), using prebuilt $SPARSEFUSE_KERNELS_LIB" | tee -a "$OUT/env.txt"
  else
    echo "run_gpu_suite: nvcc and cmake are needed to build the kernels (or set SPARSEFUSE_KERNELS_LIB" \
         "to a prebuilt libsparsefuse_kernels.so)" >&2
    exit 2
  fi
elif cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-native}" \
     > "$OUT/cmake.log" 2>&1 \
   && cmake --build "$BUILD" -j"$(nproc)" >> "$OUT/cmake.log" 2>&1; then
  echo "build: ok in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
  export SPARSEFUSE_KERNELS_LIB="$PWD/$BUILD/lib/libsparsefuse_kernels.so"
else
  echo "build failed, see $OUT/cmake.log" >&2; tail -30 "$OUT/cmake.log" >&2; exit 1
fi

"$PY" -m pytest -m gpu tests -v -rs -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" 2>&1 \
  | tee "$OUT/gpu_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

REPS="${BENCH_REPS:-50}"
"$PY" bench/gpu_bevpool.py --reps "$REPS" --out "$OUT/gpu_bevpool.json" > "$OUT/gpu_bevpool.log" 2>&1 \
  || { echo "gpu_bevpool failed, see $OUT/gpu_bevpool.log" >&2; status=1; }
"$PY" bench/gpu_sparseconv.py --reps "$(( REPS / 2 > 5 ? REPS / 2 : 5 ))" --out "$OUT/gpu_sparseconv.json" \
  > "$OUT/gpu_sparseconv.log" 2>&1 || { echo "gpu_sparseconv failed, see $OUT/gpu_sparseconv.log" >&2; status=1; }
echo "results in $OUT (status $status)"
exit $status
