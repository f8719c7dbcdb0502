#!/usr/bin/env bash
# SLURM: launch.sh on every node of the allocation, one torchrun per node (any experiment config).
#
#   sbatch --nodes=2 --gpus-per-node=8 run_scripts/mmict/slurm.sh <config.yaml> [LLM] [key=value ...]
#
# Submit from the repository root (sbatch runs a copy of this file; $SLURM_SUBMIT_DIR, or
# $LAVIS_MMICT_ROOT if set, must be the checkout). Node 0 of the allocation is the rendezvous host;
# each node's rank is its $SLURM_NODEID. NPROC_PER_NODE defaults to the GPUs SLURM gives each node
# ($SLURM_GPUS_ON_NODE), MASTER_PORT to 29500; SCRIPT=evaluate.py and DRY_RUN=1 as for launch.sh.
# run.output_dir and the cache folders must be on a file system all nodes share (train.py checks).
#SBATCH --job-name=lavis-mmict
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: sbatch [--nodes=N ...] $0 <config.yaml> [LLM] [key=value ...]" >&2
    exit 2
fi
: "${SLURM_JOB_NODELIST:?not inside a SLURM allocation (submit with sbatch)}"
root=${LAVIS_MMICT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -x $root/run_scripts/mmict/launch.sh ]]; then
    echo "no run_scripts/mmict/launch.sh under $root: submit from the repository root or set LAVIS_MMICT_ROOT" >&2
    exit 2
fi

hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")   # (not `| head`: SIGPIPE under pipefail)
MASTER_ADDR=${hosts%%$'\n'*}
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500} NNODES=${SLURM_NNODES:-1}
if [[ -z ${NPROC_PER_NODE:-} && -n ${SLURM_GPUS_ON_NODE:-} ]]; then
    export NPROC_PER_NODE=$SLURM_GPUS_ON_NODE
fi
cd "$root"
# one task per node; each gets its node rank from SLURM
srun --ntasks="$NNODES" --ntasks-per-node=1 \
    bash -c 'NODE_RANK=$SLURM_NODEID exec run_scripts/mmict/launch.sh "$@"' launch "$@"
