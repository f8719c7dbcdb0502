"""The console scripts ``lavis-mmict-train`` and ``lavis-mmict-evaluate`` (setup.py), which are
``train.py`` and ``evaluate.py`` of the checkout: the same arguments, set-up and one-line errors.

    lavis-mmict-train --cfg-path my.yaml [--options key=value ...]
    torchrun --nproc_per_node=8 --no-python lavis-mmict-train --cfg-path my.yaml
"""
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from lavis_mmict.cli import evaluate, parse_evaluate_args, parse_train_args, run_main, train


def _script_name(default):
    """How the user called us (``train.py``, ``lavis-mmict-train``), for error lines."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name != "-c" else default


@record  # under torchrun: the failing rank's exception appears in torchrun's summary
def train_main():
    args = parse_train_args()
    run_main(_script_name("train.py"), lambda: train(args), debug=args.debug)  # user errors: one line, status 1


@record
def evaluate_main():
    args = parse_evaluate_args()
    run_main(_script_name("evaluate.py"), lambda: evaluate(args), debug=args.debug)
