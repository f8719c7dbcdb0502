#!/usr/bin/env bash
# Launch train.py (or evaluate.py) with torch.distributed.run on N GPUs of one or several nodes,
# for any experiment config (projects/mmict/*.yaml, projects/aim/*.yaml, your own).
#
#   run_scripts/mmict/launch.sh <config.yaml> [LLM] [key=value ...]
#
# LLM (optional: flant5xl, flant5xxl, opt2.7b, opt6.7b) sets model.model_type=pretrain_<LLM> and
# the output folder output/<config folder>/<config name>_<LLM>; without it the config's own
# model_type and run.output_dir are used. key=value pairs override any config key.
# The config path may be relative to the current directory or to the repository root.
# Environment (torchrun's usual names):
#   NPROC_PER_NODE  processes (GPUs) per node      default: the GPUs nvidia-smi lists (1 if none)
#   NNODES          number of nodes                default: 1
#   NODE_RANK       this node's rank (0..NNODES-1) default: 0
#   MASTER_ADDR     address of node 0              default: 127.0.0.1
#   MASTER_PORT     free port on node 0            default: 29500
#   SCRIPT          train.py | evaluate.py         default: train.py
#   PYTHON          interpreter                    default: python
#   DRY_RUN=1       print the command instead of running it
# Multi-node: run the same command on every node with NNODES, NODE_RANK and MASTER_ADDR set
# (run_scripts/mmict/slurm.sh does that under SLURM). run.output_dir and the cache folders must be
# on a file system every node shares: train.py checks this at start-up (docs/running.md).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 <config.yaml> [flant5xl|flant5xxl|opt2.7b|opt6.7b] [key=value ...]" >&2
    exit 2
fi
config=$1; shift
llm=
if [[ $# -gt 0 && $1 != *=* ]]; then
    llm=$1; shift
    case $llm in
        flant5xl|flant5xxl|opt2.7b|opt6.7b) ;;
        *) echo "unknown LLM '$llm': use flant5xl, flant5xxl, opt2.7b or opt6.7b (or none: the config's model_type)" >&2
           exit 2 ;;
    esac
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)   # train.py and projects/ are here
if [[ $config != /* && -f $config && $PWD != "$repo" ]]; then
    config=$PWD/$config                                   # relative to the caller's directory
fi
cd "$repo"
if [[ ! -f $config ]]; then
    echo "config not found: $config" >&2
    exit 2
fi

nproc=${NPROC_PER_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}
[[ ${nproc:-0} -ge 1 ]] || nproc=1
name=$(basename "$config" .yaml)
group=$(basename "$(dirname "$config")")

options=()
if [[ -n $llm ]]; then
    options=("model.model_type=pretrain_$llm" "run.output_dir=output/$group/${name}_$llm")
fi
options+=("$@")

cmd=("${PYTHON:-python}" -m torch.distributed.run
     --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$nproc"
     --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}"
     "${SCRIPT:-train.py}" --cfg-path "$config")
if [[ ${#options[@]} -gt 0 ]]; then
    cmd+=(--options "${options[@]}")
fi

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
else
    exec "${cmd[@]}"
fi
