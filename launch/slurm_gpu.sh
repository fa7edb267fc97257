#!/usr/bin/env bash
# Train vqd_jax on SLURM GPU nodes: submits a job that runs one process per node, each using all
# GPUS_PER_NODE GPUs of its node (JAX's multi-controller runtime; the workdir must be on a
# filesystem every node sees). Re-running the command resumes from the workdir's last checkpoint.
#
#   launch/slurm_gpu.sh [--dry-run] NODES GPUS_PER_NODE -- --config configs/diffusion.py:B \
#       --workdir /shared/runs/coco_b --config.vqvae_workdir=/shared/runs/vq
#
# In the job, srun starts the processes and JAX takes the coordinator (the first node), process
# count and id from SLURM's environment. --dry-run prints the sbatch command instead of running it.
# Environment: PYTHON (default python, from the environment sbatch passes on to the job),
# JAX_COORDINATOR_PORT (default: derived from the job id); sbatch reads its own options from
# SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
DRY_RUN=
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 3 ]] || usage "expected NODES GPUS_PER_NODE -- TRAINING_ARGS"
[[ $3 == -- ]] || usage "expected -- after NODES GPUS_PER_NODE, got '$3'"
NODES=$1; GPUS=$2; shift 3
[[ $NODES =~ ^[1-9][0-9]*$ && $GPUS =~ ^[1-9][0-9]*$ ]] ||
  usage "NODES and GPUS_PER_NODE must be positive integers"
require_workdir "$@"

# VQD_DISTRIBUTED=1: every process calls jax.distributed.initialize(), seeing all GPUs of its node.
JOB=$(show env VQD_DISTRIBUTED=1 JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((GPUS - 1)))" \
  srun --nodes="$NODES" --ntasks-per-node=1 "${PYTHON:-python}" -m vqd_jax.train "$@")
run sbatch --job-name=vqd_jax --nodes="$NODES" --ntasks-per-node=1 --gres="gpu:$GPUS" --exclusive \
  --wrap "$JOB"
