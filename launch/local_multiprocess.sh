#!/usr/bin/env bash
# Run N CPU processes of one job on this machine (multi-host code path without a cluster).
#
# Usage:
#   launch/local_multiprocess.sh N CONFIG WORKDIR [extra main.py flags...]
# Example:
#   launch/local_multiprocess.sh 2 configs/llama3.py:size=tiny workdirs/mp --config.train.num_steps=10
set -euo pipefail
N=${1:?number of processes}; CONFIG=${2:?config}; WORKDIR=${3:?workdir}; shift 3
PORT=${PORT:-12355}
PY=${PY:-.venv/bin/python}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu "$PY" -m codellm_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" \
    > "$WORKDIR.proc$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
