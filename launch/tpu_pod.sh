#!/usr/bin/env bash
# Train vqd_jax on a Cloud TPU VM slice: create the slice (or reuse it), copy this checkout to every
# worker and install it there, then run the same training command on all workers (JAX's
# multi-controller runtime: one process per host; the workdir must be a gs:// bucket every worker
# can write). Re-running the command resumes from the workdir's last checkpoint.
#
#   launch/tpu_pod.sh [--dry-run] NAME ZONE ACCELERATOR_TYPE -- --config configs/diffusion.py:B \
#       --workdir gs://BUCKET/runs/coco_b --config.vqvae_workdir=gs://BUCKET/runs/vq
#
# ACCELERATOR_TYPE: v2-8, v3-32, v4-64, v5litepod-16, v5p-8, v6e-8, tpu7x-8, ...
# --dry-run prints the commands instead of running them. Environment: PROJECT (gcloud project,
# optional), RUNTIME (TPU software version, default tpu-ubuntu2204-base), REPO (the directory to
# copy, default this checkout).
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
DRY_RUN=
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 4 ]] || usage "expected NAME ZONE ACCELERATOR_TYPE -- TRAINING_ARGS"
[[ $4 == -- ]] || usage "expected -- after NAME ZONE ACCELERATOR_TYPE, got '$4'"
NAME=$1; ZONE=$2; TYPE=$3; shift 4
[[ $TYPE =~ ^(v2|v3|v4|v5p|v5litepod|v6e|tpu7x)-[1-9][0-9]*$ ]] ||
  usage "unknown accelerator type '$TYPE'"
require_workdir "$@"

SRC=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
TGZ=${TMPDIR:-/tmp}/vqd_jax_$NAME.tgz
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
if [[ -n ${PROJECT:-} ]]; then WHERE+=(--project "$PROJECT"); fi
describe=("${TPU[@]}" describe "$NAME" "${WHERE[@]}")
create=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$TYPE" --version
        "${RUNTIME:-tpu-ubuntu2204-base}")
if [[ -n $DRY_RUN ]]; then
  echo "$(show "${describe[@]}") >/dev/null 2>&1 || $(show "${create[@]}")"
elif ! "${describe[@]}" >/dev/null 2>&1; then
  echo "Creating TPU slice $NAME ($TYPE) in $ZONE" >&2
  "${create[@]}"
fi

# Worker set-up (the tildes expand there); a venv that exists already (the slice is reused) is kept.
# Ubuntu images may lack python3-venv.
MKVENV="python3 -m venv ~/vqd_venv || { sudo apt-get -qq update \
&& sudo apt-get -qq install -y python3-venv && python3 -m venv ~/vqd_venv; }"
SETUP="set -e; rm -rf ~/vqd_jax; mkdir ~/vqd_jax; tar -xzf ~/vqd_jax.tgz -C ~/vqd_jax; cd ~/vqd_jax"
SETUP+="; if [ ! -x ~/vqd_venv/bin/pip ]; then $MKVENV; ~/vqd_venv/bin/pip install -q -U pip; fi"
SETUP+="; ~/vqd_venv/bin/pip install -q 'jax[tpu]' -e ."
# VQD_DISTRIBUTED=1: every worker calls jax.distributed.initialize() (the TPU is auto-detected).
TRAIN="cd ~/vqd_jax && VQD_DISTRIBUTED=1 ~/vqd_venv/bin/python -m vqd_jax.train$(printf ' %q' "$@")"

echo "Copying $SRC to every worker" >&2
run tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ \
  --exclude=.pytest_cache -czf "$TGZ" .
run "${TPU[@]}" scp "$TGZ" "$NAME:~/vqd_jax.tgz" "${WHERE[@]}" --worker=all
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$SETUP"
echo "Training on all workers: $*" >&2
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$TRAIN"
