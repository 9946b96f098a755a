#!/usr/bin/env bash
# Launch a codellm_jax job on every worker of a Cloud TPU VM slice.
#
# Usage:
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [extra main.py flags...]
# Example:
#   launch/tpu_pod.sh codellm-v5p us-east5-a v5p-64 configs/llama3.py:size=8b gs://bucket/runs/8b \
#     --config.train.steps=100000
# Requires: gcloud authenticated for the project; WORKDIR on GCS (every host writes there).
set -euo pipefail
if [[ $# -lt 5 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
NAME=$1 ZONE=$2 ACCEL=$3 CONFIG=$4 WORKDIR=$5; shift 5
REPO_URL=${REPO_URL:?set REPO_URL to a git URL of this repository reachable from the TPU VMs}
REF=${REF:-main}
VERSION=${TPU_SOFTWARE_VERSION:-v2-alpha-tpuv5}

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$ACCEL" \
    --version "$VERSION"
fi

SETUP="set -e; if [ ! -d codellm_jax ]; then git clone $REPO_URL codellm_jax; fi; cd codellm_jax; \
git fetch -q origin && git checkout -q $REF && git pull -q --ff-only || true; \
python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$SETUP"

RUN="cd codellm_jax && nohup .venv/bin/python -m codellm_jax.main --config=$CONFIG \
--workdir=$WORKDIR $* > run.log 2>&1 &"
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$RUN"
echo "Started on all workers of $NAME; logs: run.log on each worker, metrics in $WORKDIR."
