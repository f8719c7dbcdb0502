#!/usr/bin/env bash
# MMICT on flickr30k_caption: projects/mmict/flickr30k_caption.yaml on N GPUs of one or several nodes (see launch.sh).
#   run_scripts/mmict/flickr30k_caption.sh [flant5xl|opt2.7b] [key=value ...]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 run_scripts/mmict/flickr30k_caption.sh opt2.7b   # on every node, its rank
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" projects/mmict/flickr30k_caption.yaml "$@"
