#!/usr/bin/env bash
# One-shot check on a GPU machine: the model / decoding / step tests and both speed benchmarks.
#
#   OUT=/some/dir bash experiments/gpu_check.sh                          # GPU machine, repo root
#   GPU_CHECK_DRY=1 OUT=/tmp/gpucheck_out bash experiments/gpu_check.sh  # CPU dry run of the logic
#
# The GPU machine has no network and lacks grain, array-record, ml-collections, cloudpickle and
# portpicker (imported by codellm_jax.synthetic_data / checkpoint / config and so by the tests):
# their cp312 wheels travel in .whl/ (git-ignored through .git/info/exclude, so the run must
# carry it) and are unpacked into /tmp/site. Fetch them here (where pip reaches the registry):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 cloudpickle==3.1.3 \
#     portpicker==1.6.0
# Stages, each under `timeout` and a shared deadline
# (GPU_CHECK_BUDGET_S, default 560 s, so that a hang in one stage leaves time for the next and
# the whole run stays under the device tool's 10-minute command limit):
#   1. environment: nvidia-smi -L, jax / torch versions and devices, the imports the tests need;
#   2. pytest on the test files below, f32 matmuls at full precision
#      (JAX_DEFAULT_MATMUL_PRECISION=highest: by default XLA uses TF32 on the GPU and the 1e-5
#      parity tolerances would not hold). tests/conftest.py asks for 8 fake CPU devices and
#      sets JAX_PLATFORMS=cpu only if unset, so JAX_PLATFORMS=cuda,cpu here makes the GPU the
#      default backend (and fails loudly if CUDA does not start, instead of falling back to
#      CPU). Deselected (-k): the tests that build a 1x2x4 / 2x4x1 mesh (need 8 devices of the
#      default backend) and the one that runs `python -m codellm_jax.generate` in a subprocess
#      (it forces JAX_PLATFORMS=cpu there). A plugin records the backend each pytest process
#      used; it is printed after the run;
#   3. experiments/benchmarks/train_step.py --rounds 2, then decode.py --repeats=1, both with
#      JAX and HF torch on the GPU (`--device=auto`), f32 at full precision in both frameworks.
# Files under $OUT: gpu_check.log (everything), pytest.log, train_step.json / .log (stderr),
# decode.json / .log.
#
# Knobs: GPU_CHECK_WORKERS (pytest-xdist processes on the one GPU, default 4 with
# XLA_PYTHON_CLIENT_PREALLOCATE=false: compiling is host-bound and the machine has 16 cores;
# 0 = one process), GPU_CHECK_JAX_PLATFORMS (default cuda,cpu), GPU_CHECK_BUDGET_S,
# GPU_CHECK_STAGES (default 'tests train_step decode'; any subset, in that order).
# Measured on an H100 (2026-11-26, jax 0.11.2): the tests are compile-bound, 93 of the 124
# selected passed in 195 s with 4 workers (none failed; the rest were cut by the old 210 s
# cap); train_step needs ~200 s (XLA GPU autotunes the unrolled step: 129 s to compile);
# decode ~150 s. Each stage's cap below follows these numbers.
# Dry run (GPU_CHECK_DRY=1): the local .venv python, no wheel install, JAX on CPU; pytest
# collects the whole selection (imports every test module, checks the -k expression) and runs
# only tests/test_losses.py; the benchmarks run with --quick; everything under `nice`.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
: "${OUT:?set OUT to the directory for the results}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE_PID=$!

DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-560}
STAGES=" ${GPU_CHECK_STAGES:-tests train_step decode} "
# Per-stage caps (seconds); a stage's reserve is the caps of the selected stages after it.
CAP_TESTS=240 CAP_TRAIN=200 CAP_DECODE=170
want() { [[ $STAGES == *" $1 "* ]]; }
RESERVE_DECODE=0
want decode && RESERVE_TRAIN=$CAP_DECODE || RESERVE_TRAIN=0
want train_step && RESERVE_TESTS=$((RESERVE_TRAIN + CAP_TRAIN)) || RESERVE_TESTS=$RESERVE_TRAIN
START=$SECONDS
TESTS=(
  tests/test_decoder.py tests/test_decoding.py tests/test_generate.py
  tests/test_encoder_decoder.py tests/test_hf_generate_parity.py tests/test_steps.py
  tests/test_losses.py
)
DESELECT='not test_sharded_forward_and_cache_match_single_device'
DESELECT+=' and not test_no_recompilation_after_first_step and not test_command_on_pretrained_dir'

if [[ $DRY == 1 ]]; then
  PY=.venv/bin/python
  PLATFORMS=${GPU_CHECK_JAX_PLATFORMS:-cpu}
  WORKERS=${GPU_CHECK_WORKERS:-0}
  QUICK=(--quick)
  NICE=(nice -n 19)
else
  PY=python3
  PLATFORMS=${GPU_CHECK_JAX_PLATFORMS:-cuda,cpu}
  WORKERS=${GPU_CHECK_WORKERS:-4}
  QUICK=()
  NICE=()
fi

declare -a SUMMARY=()
FAILED=0
# record NAME RC T0: one summary line per stage.
record() {
  SUMMARY+=("$(printf '%-12s rc=%-4s %4ss' "$1" "$2" "$((SECONDS - $3))")")
  [[ $2 == 0 ]] || FAILED=1
}
# stage_s CAP RESERVE: seconds for the next stage, at most CAP, leaving RESERVE for later ones.
stage_s() {
  local s=$((BUDGET - (SECONDS - START) - $2))
  ((s > $1)) && s=$1
  ((s < 20)) && s=20
  echo "$s"
}

echo "== gpu_check $(date -u +%FT%TZ) dry=$DRY commit=$(git rev-parse --short HEAD 2>/dev/null)"

# --- 1. environment ------------------------------------------------------------------------
t0=$SECONDS
if [[ $DRY == 1 ]]; then
  echo "dry run: no wheel install, python $PY"
  export PYTHONPATH=$PWD
  rc=0
else
  if ! compgen -G '.whl/*.whl' >/dev/null; then
    echo 'WARNING: no .whl/*.whl here (was .whl carried?); imports of grain / ml_collections will fail'
  fi
  timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  rc=$?
  if [[ $rc != 0 ]]; then # a wheel is a zip: unpacking it is all --target does for these
    echo "pip install failed (rc=$rc); unzipping the wheels into /tmp/site instead"
    rc=0
    for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site || rc=1; done
  fi
  export PYTHONPATH=/tmp/site:$PWD
fi
record install $rc $t0

t0=$SECONDS
if [[ $DRY == 1 ]]; then echo 'nvidia-smi: skipped (dry run)'; else timeout 20 nvidia-smi -L; fi
timeout 90 "$PY" -c 'import jax; print(jax.__version__, jax.devices())'
rc=$?
timeout 90 "$PY" - <<'EOF' || rc=1
import importlib.metadata as md

import torch

print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
import array_record.python.array_record_module, grain, ml_collections, scipy, transformers  # noqa
for dist in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'transformers', 'numpy',
             'grain', 'array-record', 'ml-collections', 'cloudpickle', 'portpicker', 'scipy',
             'pytest', 'pytest-xdist'):
    try:
        print(f'  {dist} {md.version(dist)}')
    except md.PackageNotFoundError:
        print(f'  {dist} MISSING')
EOF
record environment $rc $t0

# --- 2. tests ------------------------------------------------------------------------------
t0=$SECONDS
PLUGIN_DIR=$(mktemp -d)
BACKENDS=$PLUGIN_DIR/backends.txt
cat >"$PLUGIN_DIR/gpu_check_backend.py" <<'EOF'
"""Appends the JAX backend this pytest process ran its tests on to $GPU_CHECK_BACKENDS."""
import os
import sys


def pytest_sessionfinish(session):
    jax = sys.modules.get('jax')
    if jax is None:
        return
    worker = os.environ.get('PYTEST_XDIST_WORKER', 'main')
    with open(os.environ['GPU_CHECK_BACKENDS'], 'a') as f:
        f.write(f'{worker}: jax {jax.__version__} backend={jax.default_backend()} '
                f'devices={jax.devices()}\n')
EOF
XDIST=()
if ((WORKERS > 0)); then
  if "$PY" -c 'import xdist' 2>/dev/null; then
    XDIST=(-n "$WORKERS" --dist loadfile)
  else
    echo 'pytest-xdist missing: tests in one process'
    WORKERS=0
  fi
fi
# run_pytest TIMEOUT ARGS...: the tests' environment; the output goes to pytest.log too.
run_pytest() {
  local t=$1
  shift
  JAX_PLATFORMS=$PLATFORMS JAX_DEFAULT_MATMUL_PRECISION=highest \
    XLA_PYTHON_CLIENT_PREALLOCATE=false GPU_CHECK_BACKENDS=$BACKENDS \
    PYTHONPATH=$PLUGIN_DIR:$PYTHONPATH \
    timeout -s INT -k 10 "$t" "${NICE[@]}" "$PY" -m pytest -q -p no:cacheprovider \
    -p gpu_check_backend -rfE "$@" 2>&1 | tee -a "$OUT/pytest.log"
  return "${PIPESTATUS[0]}"
}
: >"$OUT/pytest.log"
echo "== pytest (JAX_PLATFORMS=$PLATFORMS, workers=$WORKERS, -k '$DESELECT')"
if ! want tests; then
  echo 'tests: not selected (GPU_CHECK_STAGES)'
  rc=0
elif [[ $DRY == 1 ]]; then
  run_pytest "$(stage_s 120 120)" --co "${TESTS[@]}" -k "$DESELECT" | tail -n 3
  rc=${PIPESTATUS[0]}
  run_pytest "$(stage_s 120 120)" "${XDIST[@]}" tests/test_losses.py -k "$DESELECT" || rc=1
else
  run_pytest "$(stage_s $CAP_TESTS $RESERVE_TESTS)" "${XDIST[@]}" --durations=15 "${TESTS[@]}" -k "$DESELECT"
  rc=$?
fi
((rc == 124 || rc == 137)) && echo "pytest TIMED OUT (rc=$rc)"
{
  echo '== JAX backend the tests ran on (per pytest process):'
  if [[ -s $BACKENDS ]]; then cat "$BACKENDS"; else echo '  (none recorded)'; fi
  expected=gpu
  [[ $DRY == 1 ]] && expected=cpu
  if [[ -s $BACKENDS ]] && grep -qv "backend=$expected " "$BACKENDS"; then
    echo "WARNING: some tests ran on a backend other than $expected"
  fi
} | tee -a "$OUT/pytest.log"
record pytest $rc $t0

# --- 3. benchmarks -------------------------------------------------------------------------
# bench NAME TIMEOUT ARGS...: one JSON line to $OUT/NAME.json, stderr to $OUT/NAME.log.
bench() {
  local name=$1 t=$2 rc t0=$SECONDS
  shift 2
  echo "== benchmark $name (timeout ${t}s): $*"
  JAX_PLATFORMS=$PLATFORMS JAX_DEFAULT_MATMUL_PRECISION=highest \
    timeout -k 10 "$t" "${NICE[@]}" "$PY" -m "experiments.benchmarks.$name" "$@" \
    >"$OUT/$name.json" 2>"$OUT/$name.log"
  rc=$?
  ((rc == 124 || rc == 137)) && echo "$name TIMED OUT (rc=$rc)"
  tail -n 15 "$OUT/$name.log"
  cat "$OUT/$name.json"
  record "$name" $rc $t0
}
if want train_step; then
  bench train_step "$(stage_s $CAP_TRAIN $RESERVE_TRAIN)" --rounds 2 --device=auto "${QUICK[@]}"
fi
if want decode; then
  bench decode "$(stage_s $CAP_DECODE $RESERVE_DECODE)" --repeats=1 --device=auto "${QUICK[@]}"
fi

echo "== summary (budget ${BUDGET}s, used $((SECONDS - START))s)"
printf '%s\n' "${SUMMARY[@]}"
rm -rf "$PLUGIN_DIR"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null # gpu_check.log complete before the caller collects $OUT
exit $FAILED
