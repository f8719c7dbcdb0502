"""What ``train.py`` and ``evaluate.py`` do: their command lines, the run set-up they share, the
train and evaluate entry functions, and user errors reported as one line.

:func:`setup_run`: plugins named in ``$LAVIS_MMICT_EXTRA_IMPORTS``, the config checks
(:mod:`lavis_mmict.config_checks`: registry names, every key and its type, ``run.output_dir``, frame
size vs model), distributed init, seeds, LAVIS's logger. :func:`build_runner` also checks, before the model is
built, that each training split holds one batch and each validation split has answers. :func:`run_main` runs an entry function
(:func:`train`, :func:`evaluate`) and turns :data:`USER_ERRORS` into one ``<script>: error: ...``
line and exit status 1 (``--debug``: the traceback instead).
"""
import argparse
import errno
import importlib
import json
import logging
import os
import random
import sys
import time

import numpy as np
import torch
import torch.backends.cudnn as cudnn
from lavis import tasks
from lavis.common.config import Config
from lavis.common.dist_utils import get_rank, get_world_size, is_main_process
from lavis.common.logger import setup_logger
from lavis.common.registry import registry
from omegaconf import OmegaConf

from lavis_mmict.backbones import MissingWeightsError
from lavis_mmict.checkpoints import CheckpointError
from lavis_mmict.data_root import apply_config_data_root
from lavis_mmict.config_checks import (
    DEFAULT_RUNNER,
    check_config_keys,
    check_config_names,
    check_demonstrations,
    check_frame_sizes,
    check_train_batches,
)
from lavis_mmict.datasets.media import MediaError
from lavis_mmict.datasets.web_pairs import WebShardError
from lavis_mmict.dist import destroy_distributed, init_distributed, shared_job_id
from lavis_mmict.errors import ConfigError, UserError
from lavis_mmict.models.pool_store import attach_pool_store
from lavis_mmict.reports import write_sweep_report
from lavis_mmict.shared_storage import check_shared_folders
from lavis_mmict.tasks.evaluation import check_validation_labelled, format_metrics_table

EXTRA_IMPORTS_ENV = "LAVIS_MMICT_EXTRA_IMPORTS"

#: errors caused by the user's files or settings: reported as one line, without a traceback
#: (FileNotFoundError: a file the config names is missing; its message names the file)
USER_ERRORS = (UserError, CheckpointError, MissingWeightsError, MediaError, WebShardError,
               FileNotFoundError)


# --- command lines ---------------------------------------------------------------------------

def argument_parser(description, options_example):
    """LAVIS's command line: ``--cfg-path`` and ``--options k=v ...`` (evaluate.py adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument(
        "--options",
        nargs="+",
        help=f"override settings of the config file, as key=value pairs (e.g. {options_example}).",
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="show the traceback of user errors (bad config, data, checkpoint) instead of one line",
    )
    return parser


def parse_train_args(argv=None):
    return argument_parser("Training", "run.max_epoch=1 model.model_type=tiny").parse_args(argv)


def parse_evaluate_args(argv=None):
    parser = argument_parser("Evaluation", "run.eval_ckpt_path=output/x/checkpoint_best.pth")
    parser.add_argument(
        "--shots", nargs="+", type=int, metavar="K",
        help="shot sweep: evaluate with K demonstrations per query for each K given (e.g. 0 1 2 4 8)",
    )
    parser.add_argument(
        "--demo-formats", nargs="+", metavar="FORMAT",
        help="shot sweep: model.demo_format values to evaluate (default: the config's)",
    )
    parser.add_argument("--metric", default="agg_metrics", help="shot sweep: metric of the K table and plot")
    args = parser.parse_args(argv)
    if args.shots is not None and any(k < 0 for k in args.shots):
        parser.error(f"--shots must be non-negative integers, got {args.shots}")
    if args.demo_formats and args.shots is None:
        parser.error("--demo-formats needs --shots")
    return args


# --- run set-up ------------------------------------------------------------------------------

def import_extra_modules():
    """Import the modules listed in ``$LAVIS_MMICT_EXTRA_IMPORTS`` (they register things)."""
    for name in os.environ.get(EXTRA_IMPORTS_ENV, "").replace(",", " ").split():
        importlib.import_module(name)


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
    check_config_keys(args.cfg_path, args.options)
    check_demonstrations(args.cfg_path, args.options)
    check_frame_sizes(args.cfg_path, args.options)
    cfg = Config(args)
    init_distributed(cfg.run_cfg)
    job_id = shared_job_id(cfg.run_cfg)
    check_shared_folders(cfg.config)  # rank 0's checkpoints and caches must be every rank's
    setup_seeds(cfg)
    setup_logger()
    apply_config_data_root(cfg)  # env.cache_root / $LAVIS_CACHE_ROOT: where relative data paths point
    cfg.pretty_print()
    return cfg, job_id


def build_runner(args, training=True):
    """Everything before ``runner.train()``/``runner.evaluate()``: returns the runner. ``training``
    (train.py without ``run.evaluate``): first check that each training split holds one batch and
    each validation split has answers."""
    cfg, job_id = setup_run(args)

    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    if training and not cfg.run_cfg.get("evaluate", False):
        check_train_batches(cfg.run_cfg, datasets, get_world_size())
        check_validation_labelled(cfg.run_cfg, datasets)
    model = task.build_model(cfg)
    attach_pool_store(cfg, model, datasets)  # model.demo_feature_store (models/pool_store.py)

    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", DEFAULT_RUNNER))
    return runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


# --- user errors -----------------------------------------------------------------------------

def report_user_error(error, script="train.py", message=None):
    """One line on stderr (every rank: the failing one may not be rank 0), and the error file
    torchrun reads for its failure summary; then exit with status 1."""
    rank = os.environ.get("RANK")
    prefix = f"{script}: error" + (f" (rank {rank})" if rank is not None else "")
    line = f"{prefix}: {message or error}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    _record_for_torchrun(line)
    raise SystemExit(1)


def _record_for_torchrun(line):
    """Under torchrun, its failure summary prints the rank's error file (its "traceback" field):
    write the one line there, not the traceback ``record_exception`` would write."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # torchelastic's error-file format (torch.distributed.elastic.multiprocessing.errors)
    payload = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    with open(path, "w") as file:
        json.dump(payload, file)


def run_main(script, work, debug=False):
    """Run ``work()`` (build a runner, train or evaluate), turning user errors into one line
    (``debug``: raised as they are, with their traceback)."""
    finished = False
    try:
        work()
        finished = True
    except USER_ERRORS as error:
        if debug:
            raise
        report_user_error(error, script)
    except OSError as error:
        if debug or error.errno != errno.ENOSPC:
            raise
        # a full disk met outside our atomic writes (LAVIS's log.txt, result files)
        report_user_error(error, script, f"{error.filename or 'a file'}: No space left on device")
    finally:
        destroy_distributed(finished)


# --- entry functions -------------------------------------------------------------------------

def train(args):
    """train.py: build the runner from ``args.cfg_path``/``args.options`` and train."""
    build_runner(args).train()


def evaluate(args):
    """evaluate.py: evaluate ``run.test_splits`` (with ``run.eval_ckpt_path``'s weights when set);
    with ``args.shots``, the shot sweep instead."""
    if args.shots is not None:
        evaluate_shot_sweep(args)
        return
    runner = build_runner(args, training=False)
    checkpoint = runner.config.run_cfg.get("eval_ckpt_path", None)
    if checkpoint:
        runner.load_model_weights(checkpoint)
    test_logs = runner.evaluate(skip_reload=True)
    if is_main_process():
        logging.info("Evaluation results: %s", json.dumps(test_logs))
        print_metrics(test_logs)


def print_metrics(test_logs):
    for split_name, metrics in (test_logs or {}).items():
        if metrics:
            print(format_metrics_table(f"\n{split_name} metrics", metrics), flush=True)


# --- evaluate.py --shots: one config, one job, every (demo format, K) ----------------------------

def _forget_runner_paths():
    """Let a new runner register its output/result dirs (LAVIS's registry refuses re-registration)."""
    for name in ("output_dir", "result_dir"):
        registry.mapping["paths"].pop(name, None)


def _append_log(output_dir, record):
    with open(os.path.join(output_dir, "log.txt"), "a") as f:
        f.write(json.dumps(record) + "\n")


def sweep_demo_formats(requested, model_cfg):
    """The demo formats a sweep evaluates: ``--demo-formats``, else the config's
    ``model.demo_format``, else the model's default (the first of its class's ``DEMO_FORMATS``:
    ``mmict`` for mmict_blip2, ``fused`` for aim_opt)."""
    if requested:
        return list(requested)
    default = next(iter(getattr(registry.get_model_class(model_cfg.arch), "DEMO_FORMATS", ())), None)
    demo_format = model_cfg.get("demo_format") or default
    if not demo_format:
        raise ConfigError(f"The shot sweep needs model.demo_format: {model_cfg.arch} lists no DEMO_FORMATS")
    return [str(demo_format)]


def _sweep_datasets(task, cfg, shots, test_splits):
    """The config's ``run.test_splits`` built with K = ``shots`` demonstrations per query."""
    for name in cfg.datasets_cfg:
        demo_key = f"datasets.{name}.demonstrations"
        OmegaConf.update(cfg.config, f"{demo_key}.num", int(shots), merge=True)
        if OmegaConf.select(cfg.config, f"{demo_key}.num_min") is not None:
            # training's varying K; evaluation always uses K = num (and num_min <= num)
            OmegaConf.update(cfg.config, f"{demo_key}.num_min", None)
    try:
        datasets = task.build_datasets(cfg)
    except ConfigError as error:
        raise ConfigError(f"--shots {shots}: {error}") from None
    missing = [s for s in test_splits if not any(s in splits for splits in datasets.values())]
    if missing:
        raise ConfigError(f"run.test_splits {missing} not built by any dataset of the config")
    return {name: {s: d for s, d in splits.items() if s in test_splits} for name, splits in datasets.items()}


def _sweep_rows(test_logs, demo_format, shots, checkpoint, cfg_path, query_text_in_qformer=None):
    """Report rows of one (demo format, K) evaluation; the transductive label leaves the metrics."""
    rows = []
    for split_name, metrics in test_logs.items():
        metrics = dict(metrics)
        transductive = bool(metrics.pop("transductive", False))
        rows.append({"label": demo_format, "demo_format": demo_format, "shots": int(shots),
                     "split": split_name, "metrics": metrics, "checkpoint": checkpoint,
                     "cfg_path": cfg_path, "transductive": transductive,
                     "query_text_in_qformer": query_text_in_qformer})
    return rows


def evaluate_shot_sweep(args):
    """Evaluate ``run.test_splits`` for every (demo format, K); write the sweep report (rank 0).

    Every K is checked first (the datasets are built for each K, so a K larger than a demo pool is
    one error before any evaluation). Per demo format the model is built once and
    ``run.eval_ckpt_path`` loaded once; per K every dataset's ``demonstrations.num`` is K. The
    report is rewritten after every evaluation, so a sweep that stops keeps what it computed
    (``"complete": false`` in results.json). Returns the report rows (:mod:`lavis_mmict.reports`).
    """
    cfg, job_id = setup_run(args)

    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", DEFAULT_RUNNER))
    checkpoint = cfg.run_cfg.get("eval_ckpt_path", None)
    test_splits = list(cfg.run_cfg.get("test_splits", []))
    if not test_splits:
        raise ConfigError("The shot sweep evaluates run.test_splits, which is empty")
    formats = sweep_demo_formats(args.demo_formats, cfg.model_cfg)
    task = tasks.setup_task(cfg)
    for shots in args.shots:
        _sweep_datasets(task, cfg, shots, test_splits)
    rows, output_dir = [], None
    title = f"Shot sweep ({os.path.basename(args.cfg_path)})"

    for demo_format in formats:
        OmegaConf.update(cfg.config, "model.demo_format", demo_format)
        task = tasks.setup_task(cfg)
        model = task.build_model(cfg)
        loaded = False
        for shots in args.shots:
            datasets = _sweep_datasets(task, cfg, shots, test_splits)
            setup_seeds(cfg)
            _forget_runner_paths()
            runner = runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)
            output_dir = runner.output_dir
            if checkpoint and not loaded:
                runner.load_model_weights(checkpoint)
                loaded = True
            logging.info("Shot sweep: demo_format=%s, K=%d", demo_format, shots)
            test_logs = runner.evaluate(cur_epoch=f"{demo_format}_{shots}shot", skip_reload=True)
            if not is_main_process():
                continue
            record = {"demo_format": demo_format, "shots": int(shots)}
            for split_name, metrics in test_logs.items():
                record.update({f"{split_name}_{key}": value for key, value in metrics.items()})
            _append_log(output_dir, record)
            rows += _sweep_rows(test_logs, demo_format, shots, checkpoint, args.cfg_path,
                                getattr(model, "query_text_in_qformer", None))
            write_sweep_report(rows, str(output_dir), metric=args.metric, title=title, complete=False)

    if is_main_process():
        paths = write_sweep_report(rows, str(output_dir), metric=args.metric, title=title)
        print(f"\nShot sweep, {args.metric}:\n{paths['table']}\n", flush=True)
        print(f"Report: {paths['markdown']}\nPlot: {paths['png']}\nResults: {paths['json']}", flush=True)
    return rows
