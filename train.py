"""Train with LAVIS's config system and runners, on MMICT's registered models, data and tasks.

    python train.py --cfg-path projects/mmict/<x>.yaml [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N train.py --cfg-path ... [--options ...]

The flow is LAVIS's ``train.py``: config -> distributed init -> seeds -> logger -> task -> datasets
-> model -> runner (``run.runner``, default ``icl_runner_base``) -> ``runner.train()``. Differences:
distributed init works on CPU (gloo) as well as CUDA (nccl), and all ranks share rank 0's job id
(one output directory).

Before anything is built, the names in the config (``model.arch``, ``model.model_type``, the
keys under ``datasets:`` and their ``type``, ``run.task``, ``run.runner``) are checked against
LAVIS's registry: a wrong one is a :class:`ConfigError` that names the key and lists the valid
values. User errors (bad config, checkpoint, weights or media files) end the process with exit
status 1 and one ``train.py: error: ...`` line per rank instead of a traceback; under torchrun the
message is also in torchrun's failure summary. Any other exception keeps its traceback.

Environment:
    LAVIS_MMICT_EXTRA_IMPORTS  comma- or space-separated Python modules to import after
                               ``lavis_mmict``, e.g. your own plugin that registers models or
                               dataset builders named in the config.
"""
import argparse
import importlib
import os
import random
import sys

import numpy as np
import torch
import torch.backends.cudnn as cudnn
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record

import lavis_mmict  # noqa: F401  (registers models, builders, tasks, runners)
from lavis import tasks
from lavis.common.config import Config
from lavis.common.dist_utils import get_rank
from lavis.common.logger import setup_logger
from lavis.common.registry import registry
from lavis_mmict.backbones import MissingWeightsError
from lavis_mmict.checkpoints import CheckpointError
from lavis_mmict.datasets.media import MediaError
from lavis_mmict.errors import ConfigError
from lavis_mmict.dist import destroy_distributed, init_distributed, shared_job_id

EXTRA_IMPORTS_ENV = "LAVIS_MMICT_EXTRA_IMPORTS"
DEFAULT_RUNNER = "icl_runner_base"


#: errors caused by the user's files or settings: reported as one line, without a traceback
USER_ERRORS = (ConfigError, CheckpointError, MissingWeightsError, MediaError)


def import_extra_modules():
    """Import the modules listed in ``$LAVIS_MMICT_EXTRA_IMPORTS`` (they register things)."""
    for name in os.environ.get(EXTRA_IMPORTS_ENV, "").replace(",", " ").split():
        importlib.import_module(name)


def argument_parser(description, options_example):
    """LAVIS's command line: ``--cfg-path`` and ``--options k=v ...`` (evaluate.py adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument(
        "--options",
        nargs="+",
        help=f"override settings of the config file, as key=value pairs (e.g. {options_example}).",
    )
    return parser


def parse_args():
    return argument_parser("Training", "run.max_epoch=1 model.model_type=tiny").parse_args()


def _dot_list(options):
    """``--options`` as LAVIS takes them: ``k=v ...`` or ``k v ...`` pairs."""
    options = list(options or [])
    if options and "=" not in options[0]:
        options = [f"{k}={v}" for k, v in zip(options[0::2], options[1::2])]
    return options


def _registered(kind):
    return sorted(registry.mapping[kind])


def check_config_names(cfg_path, options=None):
    """Check the registry names a config uses before LAVIS builds anything (LAVIS itself fails on
    them with ``'NoneType' object has no attribute ...`` or a bare assertion).

    Raises :class:`ConfigError` naming the config file, the key and the valid values.
    """
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"Config file not found: {cfg_path}")
    try:
        file_config = OmegaConf.load(cfg_path)
        config = OmegaConf.merge(file_config, OmegaConf.from_dotlist(_dot_list(options)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"Cannot read config {cfg_path} with --options {options}: {err}") from err
    where = f"Config {cfg_path}"

    for section in ("model", "datasets", "run"):
        if not OmegaConf.is_dict(config.get(section, None)) or len(config[section]) == 0:
            raise ConfigError(f"{where}: the '{section}:' section is missing or empty.")

    model_classes = registry.mapping["model_name_mapping"]
    arch = config.model.get("arch", None)
    if arch not in model_classes:
        raise ConfigError(
            f"{where}: unknown model.arch {arch!r}; registered models: {_registered('model_name_mapping')}"
        )
    if file_config.model.get("arch", None) != arch:
        raise ConfigError(
            f"{where}: model.arch cannot be changed with --options (LAVIS reads the model's default "
            f"config from the file's model.arch {file_config.model.get('arch', None)!r}); edit the file."
        )
    model_type = config.model.get("model_type", None)
    model_types = sorted(getattr(model_classes[arch], "PRETRAINED_MODEL_CONFIG_DICT", {}))
    if model_type not in model_types:
        raise ConfigError(
            f"{where}: unknown model.model_type {model_type!r} for model {arch!r}; valid: {model_types}"
        )

    builders = registry.mapping["builder_name_mapping"]
    for name in config.datasets:
        if name not in builders:
            icl_builders = [b for b in _registered("builder_name_mapping") if b.endswith("_icl")]
            raise ConfigError(
                f"{where}: unknown dataset builder datasets.{name}; registered in-context builders "
                f"(*_icl): {icl_builders}. LAVIS's own builders are accepted too; builders of your "
                f"own plugin need LAVIS_MMICT_EXTRA_IMPORTS=<module>."
            )
        dataset_cfg = config.datasets[name]
        config_type = dataset_cfg.get("type", "default") if dataset_cfg is not None else "default"
        config_types = sorted(getattr(builders[name], "DATASET_CONFIG_DICT", {}))
        if config_type not in config_types:
            raise ConfigError(
                f"{where}: unknown datasets.{name}.type {config_type!r}; valid: {config_types}"
            )

    task = config.run.get("task", None)
    if task not in registry.mapping["task_name_mapping"]:
        raise ConfigError(
            f"{where}: unknown run.task {task!r}; registered tasks: {_registered('task_name_mapping')}"
        )
    runner = config.run.get("runner", DEFAULT_RUNNER)
    if runner not in registry.mapping["runner_name_mapping"]:
        raise ConfigError(
            f"{where}: unknown run.runner {runner!r}; registered runners: {_registered('runner_name_mapping')}"
        )


def setup_seeds(cfg):
    """Seed Python, NumPy and torch with ``run.seed + rank`` (as LAVIS's train.py)."""
    seed = int(cfg.run_cfg.get("seed", 42)) + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cudnn.benchmark = False
    cudnn.deterministic = True


def setup_run(args):
    """The set-up train.py and evaluate.py share: plugins, config name checks, distributed, seeds,
    logging. Returns the LAVIS ``Config`` and the job id (the same on every rank)."""
    import_extra_modules()
    check_config_names(args.cfg_path, args.options)
    cfg = Config(args)
    init_distributed(cfg.run_cfg)
    job_id = shared_job_id(cfg.run_cfg)
    setup_seeds(cfg)
    setup_logger()
    cfg.pretty_print()
    return cfg, job_id


def build_runner(args):
    """Everything before ``runner.train()``/``runner.evaluate()``: returns the runner."""
    cfg, job_id = setup_run(args)

    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)

    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", DEFAULT_RUNNER))
    return runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


def report_user_error(error, script="train.py"):
    """One line on stderr (every rank: the failing one may not be rank 0), and the error file
    torchrun reads for its failure summary; then exit with status 1."""
    rank = os.environ.get("RANK")
    prefix = f"{script}: error" + (f" (rank {rank})" if rank is not None else "")
    sys.stderr.write(f"{prefix}: {error}\n")
    sys.stderr.flush()
    get_error_handler().record_exception(error)  # only writes when torchrun asked for it
    raise SystemExit(1)


def run_main(script, work):
    """Run ``work()`` (build a runner, train or evaluate), turning user errors into one line."""
    finished = False
    try:
        work()
        finished = True
    except USER_ERRORS as error:
        report_user_error(error, script)
    finally:
        destroy_distributed(finished)


@record  # under torchrun: the failing rank's exception appears in torchrun's summary
def main():
    args = parse_args()
    run_main("train.py", lambda: build_runner(args).train())


if __name__ == "__main__":
    main()
