#!/usr/bin/env bash
# Train vqd_jax on a Cloud TPU VM slice: create (or reuse) the slice, install vqd_jax on every worker,
# then run the same training command on all workers (JAX's multi-controller runtime; one process per
# host; the workdir must be a gs:// bucket every worker can write).
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE -- --config configs/diffusion.py:B \
#       --workdir gs://BUCKET/runs/coco_b --config.vqvae_workdir=gs://BUCKET/runs/vq
#
# Example: launch/tpu_pod.sh vqd-v4-32 us-central2-b v4-32 -- --config configs/diffusion.py:B ...
# Environment: PROJECT (gcloud project, optional), RUNTIME (TPU software version, default
# tpu-ubuntu2204-base), REPO (git URL or a local path to copy, default: this checkout).
set -euo pipefail

if [[ $# -lt 4 || "$4" != "--" ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
NAME=$1; ZONE=$2; TYPE=$3; shift 4
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
HERE=$(cd "$(dirname "$0")/.." && pwd)

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" $PROJECT_FLAG >/dev/null 2>&1; then
  echo "Creating TPU slice $NAME ($TYPE) in $ZONE"
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$RUNTIME" $PROJECT_FLAG
fi

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" $PROJECT_FLAG --worker=all --command "$1"
}

echo "Copying vqd_jax to every worker"
tar -C "$HERE" --exclude=.git --exclude=.venv --exclude=runs -czf /tmp/vqd_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/vqd_jax.tgz "$NAME":~/vqd_jax.tgz --zone "$ZONE" \
  $PROJECT_FLAG --worker=all
ssh_all "mkdir -p ~/vqd_jax && tar -xzf ~/vqd_jax.tgz -C ~/vqd_jax && cd ~/vqd_jax && \
  python3 -m venv ~/vqd_venv && ~/vqd_venv/bin/pip install -q -U pip && \
  ~/vqd_venv/bin/pip install -q 'jax[tpu]' -e ."

# VQD_DISTRIBUTED=1 makes every worker call jax.distributed.initialize() (TPU: auto-detected).
ARGS=$(printf '%q ' "$@")
echo "Training on all workers: $ARGS"
ssh_all "cd ~/vqd_jax && VQD_DISTRIBUTED=1 ~/vqd_venv/bin/python -m vqd_jax.train $ARGS"
