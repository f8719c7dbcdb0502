"""Shot sweep over several trained runs (the command ``run_scripts/mmict/shot_sweep.py``): one
table and one plot, one line per run.

Each run (``LABEL CFG [CHECKPOINT]``) is one ``torch.distributed.run ... evaluate.py --cfg-path CFG
--shots ...`` process (the one-config sweep, :func:`lavis_mmict.cli.evaluate_shot_sweep`) writing
into ``<output-dir>/<LABEL>/<job_id>/``; the rows of every run's ``results.json`` are relabelled
and merged into ``<output-dir>/results.json``, ``results.md`` and ``results.png``
(:mod:`lavis_mmict.reports`). When a run fails, the rows computed so far (earlier runs, and what the
failed run wrote before it stopped) are still merged and written, marked incomplete.
"""
import argparse
import glob
import os
import subprocess
import sys
import time

from omegaconf import OmegaConf

from lavis_mmict import PACKAGE_ROOT
from lavis_mmict.reports import RESULTS_JSON, read_sweep_rows, write_sweep_report

DESCRIPTION = "Shot sweep over several trained runs: one table and one plot, one line per run."
EVALUATE_PY = os.path.join(os.path.dirname(PACKAGE_ROOT), "evaluate.py")


def parse_args(argv=None):
    """The command line of ``run_scripts/mmict/shot_sweep.py``."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--shots", nargs="+", type=int, required=True, metavar="K")
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar="LABEL CFG [CHECKPOINT]",
                        help="a line of the plot: label, config, optional checkpoint (or auto)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--nproc", type=int, default=1, help="processes per evaluation (torchrun)")
    parser.add_argument("--metric", default="agg_metrics")
    parser.add_argument("--title", default="Shot sweep")
    parser.add_argument("--options", nargs="+", default=[], help="key=value overrides for every run")
    args = parser.parse_args(argv)
    for run in args.run:
        if len(run) not in (2, 3):
            parser.error(f"--run takes LABEL CFG [CHECKPOINT], got {run}")
    labels = [run[0] for run in args.run]
    if len(set(labels)) != len(labels):
        parser.error(f"--run labels must be distinct, got {labels}")
    if any(k < 0 for k in args.shots):
        parser.error(f"--shots must be non-negative, got {args.shots}")
    return args


def best_checkpoint(cfg_path):
    """``checkpoint_best.pth`` of the newest job under the config's ``run.output_dir``."""
    output_dir = OmegaConf.load(cfg_path).run.output_dir
    found = glob.glob(os.path.join(output_dir, "*", "checkpoint_best.pth"))
    if not found:
        raise SystemExit(f"--run {cfg_path} auto: no */checkpoint_best.pth under {output_dir}; train it first")
    return max(found, key=os.path.getmtime)


def newest_results(output_dir, since=None):
    """The newest ``*/results.json`` under ``output_dir`` (written at or after ``since``), or None."""
    found = [path for path in glob.glob(os.path.join(output_dir, "*", RESULTS_JSON))
             if since is None or os.path.getmtime(path) >= since]
    return max(found, key=os.path.getmtime) if found else None


def evaluate_run(label, cfg_path, checkpoint, args):
    """Run evaluate.py's sweep for one run; returns (its rows labelled ``label``, exit status)."""
    output_dir = os.path.join(os.path.abspath(args.output_dir), label)
    options = list(args.options) + [f"run.output_dir={output_dir}"]
    if checkpoint:
        options.append(f"run.eval_ckpt_path={checkpoint}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               EVALUATE_PY, "--cfg-path", cfg_path,
               "--shots", *map(str, args.shots), "--metric", args.metric, "--options", *options]
    print(f"\n=== shot sweep: {label} ({cfg_path}, {checkpoint or 'config weights'}) ===", flush=True)
    started = time.time() - 1  # mtime granularity: a file written now is not older than this
    returncode = subprocess.run(command, check=False).returncode
    results = newest_results(output_dir, since=started)
    if results is None and returncode == 0:
        raise SystemExit(f"The sweep wrote no {RESULTS_JSON} under {output_dir}/*/: see its output above")
    rows = read_sweep_rows(results) if results else []
    return [dict(row, label=label) for row in rows], returncode


def main(argv=None):
    """``run_scripts/mmict/shot_sweep.py [argv]``: evaluate every ``--run``, write and print the
    merged report; returns :func:`~lavis_mmict.reports.write_sweep_report`'s paths."""
    args = parse_args(argv)
    rows, failure = [], None
    for run in args.run:
        label, cfg_path = run[0], run[1]
        checkpoint = run[2] if len(run) == 3 else None
        if checkpoint == "auto":
            checkpoint = best_checkpoint(cfg_path)
        run_rows, returncode = evaluate_run(label, cfg_path, checkpoint, args)
        rows += run_rows
        if returncode != 0:
            failure = f"--run {label} ({cfg_path}) failed with exit status {returncode}: see its output above"
            break
    if not rows:
        raise SystemExit(failure)
    paths = write_sweep_report(rows, args.output_dir, metric=args.metric, title=args.title,
                               complete=failure is None)
    print(f"\n{args.title}, {args.metric}:\n{paths['table']}\n")
    print(f"Report: {paths['markdown']}\nPlot: {paths['png']}\nResults: {paths['json']}")
    if failure:
        raise SystemExit(f"{failure}; the results so far are in {paths['json']}")
    return paths
