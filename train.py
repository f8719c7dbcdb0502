"""Train with LAVIS's config system and runners, on MMICT's registered models, data and tasks.

    python train.py --cfg-path projects/mmict/<x>.yaml [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N train.py --cfg-path ... [--options ...]

The flow is LAVIS's ``train.py``: config -> distributed init -> seeds -> logger -> task -> datasets
-> model -> runner (``run.runner``, default ``icl_runner_base``) -> ``runner.train()``. Differences:
distributed init works on CPU (gloo) as well as CUDA (nccl), and all ranks share rank 0's job id
(one output directory).

Environment:
    LAVIS_MMICT_EXTRA_IMPORTS  comma- or space-separated Python modules to import after
                               ``lavis_mmict``, e.g. your own plugin that registers models or
                               dataset builders named in the config.
"""
import argparse
import importlib
import os
import random

import numpy as np
import torch
import torch.backends.cudnn as cudnn

import lavis_mmict  # noqa: F401  (registers models, builders, tasks, runners)
from lavis import tasks
from lavis.common.config import Config
from lavis.common.dist_utils import get_rank
from lavis.common.logger import setup_logger
from lavis.common.registry import registry
from lavis_mmict.dist import destroy_distributed, init_distributed, shared_job_id

EXTRA_IMPORTS_ENV = "LAVIS_MMICT_EXTRA_IMPORTS"
DEFAULT_RUNNER = "icl_runner_base"


def import_extra_modules():
    """Import the modules listed in ``$LAVIS_MMICT_EXTRA_IMPORTS`` (they register things)."""
    for name in os.environ.get(EXTRA_IMPORTS_ENV, "").replace(",", " ").split():
        importlib.import_module(name)


def parse_args(description="Training"):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument(
        "--options",
        nargs="+",
        help="override settings of the config file, as key=value pairs "
        "(e.g. run.max_epoch=1 model.model_type=tiny).",
    )
    return parser.parse_args()


def setup_seeds(cfg):
    """Seed Python, NumPy and torch with ``run.seed + rank`` (as LAVIS's train.py)."""
    seed = int(cfg.run_cfg.get("seed", 42)) + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cudnn.benchmark = False
    cudnn.deterministic = True


def build_runner(args):
    """Everything before ``runner.train()``/``runner.evaluate()``: returns the runner."""
    import_extra_modules()
    cfg = Config(args)
    init_distributed(cfg.run_cfg)
    job_id = shared_job_id(cfg.run_cfg)
    setup_seeds(cfg)
    setup_logger()
    cfg.pretty_print()

    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)

    runner_name = cfg.run_cfg.get("runner", DEFAULT_RUNNER)
    runner_cls = registry.get_runner_class(runner_name)
    if runner_cls is None:
        known = sorted(registry.mapping["runner_name_mapping"])
        raise ValueError(f"Unknown run.runner {runner_name!r}; registered runners: {known}")
    return runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


def main():
    args = parse_args("Training")
    try:
        runner = build_runner(args)
        runner.train()
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
