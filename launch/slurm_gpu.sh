#!/usr/bin/env bash
# Multi-node GPU training with SLURM: one process per node, all GPUs of a node per process.
#
#   sbatch --nodes=4 --gres=gpu:8 launch/slurm_gpu.sh --config configs/diffusion.py:B \
#       --workdir /shared/runs/coco_b --config.vqvae_workdir=/shared/runs/vq
#
# The workdir must be on a filesystem every node sees. Node 0 is the coordinator; JAX reads the rest
# (process count and id) from SLURM's environment.
#SBATCH --job-name=vqd_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

COORD_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export JAX_COORDINATOR_ADDRESS="${COORD_HOST}:${COORD_PORT:-12355}"
export JAX_NUM_PROCESSES=$SLURM_NNODES
# One task per node: srun sets SLURM_PROCID per task, read inside the task.
srun bash -c 'JAX_PROCESS_ID=$SLURM_PROCID python -m vqd_jax.train "$@"' _ "$@"
