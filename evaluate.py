"""Evaluate with LAVIS's config system and runners (``run.test_splits``), no training.

    python evaluate.py --cfg-path projects/mmict/<x>.yaml [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path ... [--options ...]

    # shot sweep: the same weights at several K, for one or more demo formats
    python -m torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path ... \
        --shots 0 1 2 4 8 [--demo-formats mmict none] [--options run.eval_ckpt_path=...]

Same set-up as ``train.py`` (and the same ``LAVIS_MMICT_EXTRA_IMPORTS``), then
``runner.evaluate(skip_reload=True)``: the model is evaluated with the weights its config gives it,
or, when ``run.eval_ckpt_path`` is set, with the trainable parameters of that runner checkpoint
(a path, a URL, or ``auto``: the newest ``checkpoint_*.pth`` under ``<run.output_dir>/*/``).
Metrics go to ``<output_dir>/<job_id>/log.txt`` (``<split>_agg_metrics``...) and ``evaluate.txt``
and are printed as a table.

``--shots``: for each demo format (``--demo-formats``, default the config's ``model.demo_format``)
the model is built once and the checkpoint loaded once; for each K every dataset's
``demonstrations.num`` is set to K and the test splits are evaluated. Besides the usual log lines
(plus one ``{"demo_format", "shots", "<split>_<metric>"...}`` line per K in log.txt), the job
directory gets ``results.json``, ``results.md`` (K table) and ``results.png`` (metric vs K, one
line per format); ``--metric`` picks the reported metric (default ``agg_metrics``).
"""
import json
import logging
import os

from lavis import tasks
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from omegaconf import OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

from lavis_mmict.reports import write_sweep_report
from lavis_mmict.tasks.evaluation import format_metrics_table
from train import DEFAULT_RUNNER, argument_parser, build_runner, run_main, setup_run, setup_seeds


def parse_args():
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
    args = parser.parse_args()
    if args.shots is not None and any(k < 0 for k in args.shots):
        parser.error(f"--shots must be non-negative integers, got {args.shots}")
    if args.demo_formats and args.shots is None:
        parser.error("--demo-formats needs --shots")
    return args


def print_metrics(test_logs):
    for split_name, metrics in (test_logs or {}).items():
        if metrics:
            print(format_metrics_table(f"\n{split_name} metrics", metrics), flush=True)


def _forget_runner_paths():
    """Let a new runner register its output/result dirs (LAVIS's registry refuses re-registration)."""
    for name in ("output_dir", "result_dir"):
        registry.mapping["paths"].pop(name, None)


def _append_log(output_dir, record):
    with open(os.path.join(output_dir, "log.txt"), "a") as f:
        f.write(json.dumps(record) + "\n")


def run_shot_sweep(args):
    """Evaluate ``run.test_splits`` for every (demo format, K); write the sweep report (rank 0)."""
    cfg, job_id = setup_run(args)

    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", DEFAULT_RUNNER))
    checkpoint = cfg.run_cfg.get("eval_ckpt_path", None)
    test_splits = list(cfg.run_cfg.get("test_splits", []))
    if not test_splits:
        raise ValueError("The shot sweep evaluates run.test_splits, which is empty")
    formats = args.demo_formats or [str(cfg.model_cfg.get("demo_format", "mmict"))]
    rows, output_dir = [], None

    for demo_format in formats:
        OmegaConf.update(cfg.config, "model.demo_format", demo_format)
        task = tasks.setup_task(cfg)
        model = task.build_model(cfg)
        loaded = False
        for shots in args.shots:
            for name in cfg.datasets_cfg:
                demo_key = f"datasets.{name}.demonstrations"
                OmegaConf.update(cfg.config, f"{demo_key}.num", int(shots), merge=True)
                if OmegaConf.select(cfg.config, f"{demo_key}.num_min") is not None:
                    # training's varying K; evaluation always uses K = num (and num_min <= num)
                    OmegaConf.update(cfg.config, f"{demo_key}.num_min", None)
            datasets = task.build_datasets(cfg)
            missing = [s for s in test_splits if not any(s in splits for splits in datasets.values())]
            if missing:
                raise ValueError(f"run.test_splits {missing} not built by any dataset of the config")
            datasets = {name: {s: d for s, d in splits.items() if s in test_splits}
                        for name, splits in datasets.items()}
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
                rows.append({"label": demo_format, "demo_format": demo_format, "shots": int(shots),
                             "split": split_name, "metrics": metrics, "checkpoint": checkpoint,
                             "cfg_path": args.cfg_path})
                record.update({f"{split_name}_{key}": value for key, value in metrics.items()})
            _append_log(output_dir, record)

    if is_main_process():
        paths = write_sweep_report(rows, str(output_dir), metric=args.metric,
                                   title=f"Shot sweep ({os.path.basename(args.cfg_path)})")
        print(f"\nShot sweep, {args.metric}:\n{paths['table']}\n", flush=True)
        print(f"Report: {paths['markdown']}\nPlot: {paths['png']}\nResults: {paths['json']}", flush=True)
    return rows


def evaluate(args):
    if args.shots is not None:
        run_shot_sweep(args)
        return
    runner = build_runner(args)
    checkpoint = runner.config.run_cfg.get("eval_ckpt_path", None)
    if checkpoint:
        runner.load_model_weights(checkpoint)
    test_logs = runner.evaluate(skip_reload=True)
    if is_main_process():
        logging.info("Evaluation results: %s", json.dumps(test_logs))
        print_metrics(test_logs)


@record  # under torchrun: the failing rank's exception appears in torchrun's summary
def main():
    args = parse_args()
    run_main("evaluate.py", lambda: evaluate(args))  # user errors: one line, status 1


if __name__ == "__main__":
    main()
