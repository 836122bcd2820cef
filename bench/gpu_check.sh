#!/usr/bin/env bash
# GPU check of the Triton runtime, for a CUDA machine without a package registry (torch and triton preinstalled;
# written for Python 3.12, torch 2.11, triton 3.6).
#
#   bench/gpu_check.sh OUTDIR
#
# Steps, each with its own timeout, none aborting the others (the exit status of each is recorded):
#   env      versions, nvidia-smi
#   install  make `snnconvert` importable: nothing if it already is; else `pip install --no-deps
#            --no-build-isolation -e .`; if that fails too, a PYTHONPATH folder of symlinks
#            (snnconvert/convert -> convert/, ...), which is what the package-dir mapping does
#   tests    pytest tests/test_kernels.py tests/test_neurons.py on CUDA (one kernel config, no autotuning, so that
#            each specialisation compiles once; the CPU/interpreter cases skip)
#   wheels   install SpikingJelly from .whl (staged by `make gpu-wheels`, carried along) when present
#   bench    bench/bench_kernels.py (autotuned) -> OUTDIR/bench/ (with SpikingJelly's Triton IF neuron when installed)
#   e2e_tv   bench/bench_e2e.py: torchvision resnet18/34 at 224x224, torch vs triton, B = 32, T = 8
#   e2e_zoo  bench/bench_e2e.py: the three zoo CNNs, torch vs triton, B = 32 and 128, T = 8, fused ReLU6 pairs vs
#            unfused (fmnist-mobilenet), when Fashion-MNIST is found
#   acc      bench/bf16_accuracy.py: bf16 vs fp32 accuracy of the three zoo CNNs on the Triton backend (full test
#            split), when Fashion-MNIST is found
#   inductor pytest of the inductor backend's CUDA cases (torch.compile generating Triton code; tests/test_kernels.py,
#            tests/test_fuse.py -k "inductor and cuda"), only if the steps above left time: it starts when elapsed
#            time + its limit (GPU_CHECK_INDUCTOR_TIMEOUT, 90 s) fit in GPU_CHECK_BUDGET (540 s), else it is skipped
# Logs go to OUTDIR/<step>.log and a table to OUTDIR/summary.md. Worst case (every step hitting its timeout) is
# about 9.5 minutes with the default limits (typical runs: 3-5); override them with GPU_CHECK_<STEP>_TIMEOUT (seconds).
# Exit status: 0 if every step that ran returned 0, else 1.
set -u
START=$(date +%s)

OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
ROWS=()
FAILED=0

run_step() {  # run_step NAME TIMEOUT_S COMMAND...: log to $OUT/NAME.log, record rc and wall time
  local name=$1 limit=$2 start end rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  end=$(date +%s)
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "TIMEOUT after ${limit}s" >>"$OUT/$name.log"
  [ "$rc" -ne 0 ] && FAILED=1
  ROWS+=("| $name | $rc | $((end - start)) s (limit ${limit} s) | $name.log |")
  echo "gpu_check: $name rc=$rc ($((end - start)) s)"
}

skip_step() {  # skip_step NAME REASON
  ROWS+=("| $1 | skipped | — | $2 |")
  echo "gpu_check: $1 skipped ($2)"
}

env_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "python: $(command -v "$PY")"
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton import failed:", exc)
EOF
  nvidia-smi || true
}

make_importable() {
  if "$PY" -c "import snnconvert.runtime" 2>/dev/null; then
    echo "snnconvert already importable"; return 0
  fi
  "$PY" -m pip install --no-deps --no-build-isolation -e "$REPO" && "$PY" -c "import snnconvert.runtime" && return 0
  echo "pip install failed; falling back to a PYTHONPATH of symlinks"
  local root="$OUT/.pkgroot/snnconvert"
  mkdir -p "$root"
  for sub in convert runtime cli models_zoo; do ln -sfn "$REPO/$sub" "$root/$sub"; done
  PYTHONPATH="$OUT/.pkgroot" "$PY" -c "import snnconvert.runtime"
}

export PY OUT REPO
export -f env_info make_importable
run_step env "${GPU_CHECK_ENV_TIMEOUT:-15}" bash -c env_info
run_step install "${GPU_CHECK_INSTALL_TIMEOUT:-45}" bash -c make_importable
if ! "$PY" -c "import snnconvert.runtime" 2>/dev/null && [ -d "$OUT/.pkgroot" ]; then
  export PYTHONPATH="$OUT/.pkgroot${PYTHONPATH:+:$PYTHONPATH}"
fi

# the native (C, CPU) backend's cases are deselected: they are CPU tests, run in CI, and would spend this step's
# budget building the C library; so are the inductor backend's (torch.compile would spend it generating code for
# every neuron configuration; they run on the CPU in CI). Whole-network paths first (fused pairs, evaluation
# counters, triton vs torch on CUDA), then the kernel unit tests, which compile many specialisations: if the step
# hits its limit, the log still shows which files passed.
run_step tests "${GPU_CHECK_TESTS_TIMEOUT:-140}" env SNNCONVERT_TRITON_AUTOTUNE=0 "$PY" -m pytest \
  tests/test_gpu_paths.py tests/test_kernels.py tests/test_neurons.py -k "not native and not inductor" \
  -p no:cacheprovider --durations=15 --junitxml="$OUT/tests.xml"

# SpikingJelly for the kernel benchmark's comparison row: wheels staged by `make gpu-wheels` (carry .whl), installed
# outside OUT (so they do not travel back) with no index and no dependencies
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
  run_step wheels "${GPU_CHECK_WHEELS_TIMEOUT:-30}" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/gpu_check_site "$REPO"/.whl/*.whl
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
else
  skip_step wheels "no .whl folder (make gpu-wheels here, then carry .whl): no SpikingJelly comparison"
fi

run_step bench "${GPU_CHECK_BENCH_TIMEOUT:-80}" "$PY" bench/bench_kernels.py --out "$OUT/bench"

# (b)+(c): SNN vs ANN(T·B) for torchvision resnet18/34 at 224x224 (random weights and calibration images: no data
# set needed), torch vs triton backend, fp32 (bf16 kernels: the kernels step; bf16 accuracy: the acc step), batch 32,
# T = 8
run_step e2e_tv "${GPU_CHECK_E2E_TIMEOUT:-100}" "$PY" bench/bench_e2e.py --device cuda --out "$OUT/e2e" \
  --name e2e_cuda_torchvision --models torchvision:resnet18,torchvision:resnet34 --backends torch,triton \
  --batch 32 --timesteps 8 --reps 5 --no-breakdown

# zoo models and the bf16-vs-fp32 accuracy check need Fashion-MNIST (SNNCONVERT_DATA_DIR, the Debian path, or
# data/fashion-mnist staged by `make gpu-data` and carried to the machine)
if [ -z "${SNNCONVERT_DATA_DIR:-}" ] && [ -d "$REPO/data/fashion-mnist" ]; then
  export SNNCONVERT_DATA_DIR="$REPO/data/fashion-mnist"
fi
if "$PY" -c "from snnconvert.runtime.data import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null; then
  # fmnist-mobilenet's ReLU6 pairs also run unfused (--unfused: speed-up of the pair kernel, outputs compared)
  run_step e2e_zoo "${GPU_CHECK_ZOO_TIMEOUT:-90}" "$PY" bench/bench_e2e.py --device cuda --out "$OUT/e2e" \
    --name e2e_cuda_zoo --models fmnist-vgg,fmnist-resnet,fmnist-mobilenet --backends torch,triton --batch 32,128 \
    --timesteps 8 --no-breakdown --unfused
  # bf16 vs fp32 accuracy of the three zoo CNNs (one calibration each, full test split; kernel configuration fixed:
  # accuracy does not depend on it, and tuning would spend this step's budget)
  run_step acc "${GPU_CHECK_ACC_TIMEOUT:-100}" env SNNCONVERT_TRITON_AUTOTUNE=0 "$PY" bench/bf16_accuracy.py \
    --backend triton --device cuda --batch-size 512 --out "$OUT/acc"
else
  skip_step e2e_zoo "Fashion-MNIST not found (set SNNCONVERT_DATA_DIR)"
fi

# the inductor backend on CUDA (not covered by the steps above), with whatever time is left
INDUCTOR_LIMIT=${GPU_CHECK_INDUCTOR_TIMEOUT:-90}
ELAPSED=$(( $(date +%s) - START ))
if [ $(( ELAPSED + INDUCTOR_LIMIT )) -le "${GPU_CHECK_BUDGET:-540}" ]; then
  run_step inductor "$INDUCTOR_LIMIT" "$PY" -m pytest tests/test_kernels.py tests/test_fuse.py -k "inductor and cuda" \
    --maxfail=3 -p no:cacheprovider --durations=10
else
  skip_step inductor "no time left (${ELAPSED} s elapsed; raise GPU_CHECK_BUDGET to run it)"
fi

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  grep -E "^(python|device|triton) " "$OUT/env.log" 2>/dev/null | sed 's/^/    /'
  echo
  echo "| step | rc | wall time | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Tests: $(grep -E '(passed|failed|error)' "$OUT/tests.log" 2>/dev/null | tail -1)"
  [ -f "$OUT/inductor.log" ] && echo "Inductor CUDA tests: $(grep -E '(passed|failed|error|skipped)' "$OUT/inductor.log" | tail -1)"
  echo
  if [ -f "$OUT/bench/bench_kernels.md" ]; then
    cat "$OUT/bench/bench_kernels.md"
  fi
  for f in "$OUT"/e2e/*.md; do [ -f "$f" ] && { echo; cat "$f"; }; done
  [ -f "$OUT/acc/bf16_accuracy.md" ] && { echo; cat "$OUT/acc/bf16_accuracy.md"; }
} >"$OUT/summary.md"
echo "gpu_check: summary in $OUT/summary.md"
exit "$FAILED"
