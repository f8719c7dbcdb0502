#!/usr/bin/env bash
# Launch train.py (or evaluate.py) with torch.distributed.run on N GPUs of one or several nodes.
#
#   run_scripts/mmict/launch.sh <config.yaml> [flant5xl|opt2.7b] [key=value ...]
#
# The LLM picks model.model_type (pretrain_flant5xl, the default, or pretrain_opt2.7b) and the
# output folder (output/mmict/<config name>_<llm>); key=value pairs override any config key.
# Environment (torchrun's usual names):
#   NPROC_PER_NODE  processes (GPUs) per node      default: the GPUs nvidia-smi lists (1 if none)
#   NNODES          number of nodes                default: 1
#   NODE_RANK       this node's rank (0..NNODES-1) default: 0
#   MASTER_ADDR     address of node 0              default: 127.0.0.1
#   MASTER_PORT     free port on node 0            default: 29500
#   SCRIPT          train.py | evaluate.py         default: train.py
#   PYTHON          interpreter                    default: python
#   DRY_RUN=1       print the command instead of running it
# Multi-node: run the same command on every node with NNODES, NODE_RANK and MASTER_ADDR set.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 <config.yaml> [flant5xl|opt2.7b] [key=value ...]" >&2
    exit 2
fi
config=$1; shift
llm=flant5xl
if [[ $# -gt 0 && $1 != *=* ]]; then
    llm=$1; shift
fi
case $llm in
    flant5xl|opt2.7b) ;;
    *) echo "unknown LLM '$llm': use flant5xl or opt2.7b" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # repository root: configs and train.py are relative to it
if [[ ! -f $config ]]; then
    echo "config not found: $config" >&2
    exit 2
fi

nproc=${NPROC_PER_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}
[[ ${nproc:-0} -ge 1 ]] || nproc=1
name=$(basename "$config" .yaml)

cmd=("${PYTHON:-python}" -m torch.distributed.run
     --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$nproc"
     --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}"
     "${SCRIPT:-train.py}" --cfg-path "$config"
     --options "model.model_type=pretrain_$llm" "run.output_dir=output/mmict/${name}_$llm" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
else
    exec "${cmd[@]}"
fi
