"""Shot sweep over several trained runs: one table and one plot, one line per run.

    python run_scripts/mmict/shot_sweep.py --shots 0 1 2 4 8 --output-dir output/sweep \
        --run mmict projects/mmict/demo.yaml output/mmict_demo/<job>/checkpoint_best.pth \
        --run none  projects/mmict/demo_none.yaml auto \
        [--nproc 2] [--metric agg_metrics] [--options key=value ...]

Each ``--run LABEL CFG [CHECKPOINT]`` is evaluated by
``torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path CFG --shots ...`` (its own model
and demo format, the checkpoint's trainable weights; ``auto`` = ``checkpoint_best.pth`` of the newest
job under the config's ``run.output_dir``; none = the config's weights), with
``run.output_dir=<output-dir>/<LABEL>``. The rows of every run's ``results.json`` are merged into
``<output-dir>/results.json``, ``results.md`` and ``results.png``, and the K table is printed.
``--options`` apply to every run.
"""
import argparse
import glob
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from lavis_mmict.reports import RESULTS_JSON, read_sweep_rows, write_sweep_report  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    from omegaconf import OmegaConf

    output_dir = OmegaConf.load(cfg_path).run.output_dir
    found = glob.glob(os.path.join(output_dir, "*", "checkpoint_best.pth"))
    if not found:
        raise SystemExit(f"--run {cfg_path} auto: no */checkpoint_best.pth under {output_dir}; train it first")
    return max(found, key=os.path.getmtime)


def newest_results(output_dir):
    found = glob.glob(os.path.join(output_dir, "*", RESULTS_JSON))
    if not found:
        raise SystemExit(f"The sweep wrote no {RESULTS_JSON} under {output_dir}/*/: see its output above")
    return max(found, key=os.path.getmtime)


def evaluate_run(label, cfg_path, checkpoint, args):
    """Run evaluate.py's sweep for one run; returns its rows labelled ``label``."""
    output_dir = os.path.join(os.path.abspath(args.output_dir), label)
    options = list(args.options) + [f"run.output_dir={output_dir}"]
    if checkpoint:
        options.append(f"run.eval_ckpt_path={checkpoint}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               os.path.join(REPO_ROOT, "evaluate.py"), "--cfg-path", cfg_path,
               "--shots", *map(str, args.shots), "--metric", args.metric, "--options", *options]
    print(f"\n=== shot sweep: {label} ({cfg_path}, {checkpoint or 'config weights'}) ===", flush=True)
    subprocess.run(command, check=True)
    rows = read_sweep_rows(newest_results(output_dir))
    return [dict(row, label=label) for row in rows]


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for run in args.run:
        label, cfg_path = run[0], run[1]
        checkpoint = run[2] if len(run) == 3 else None
        if checkpoint == "auto":
            checkpoint = best_checkpoint(cfg_path)
        rows += evaluate_run(label, cfg_path, checkpoint, args)
    paths = write_sweep_report(rows, args.output_dir, metric=args.metric, title=args.title)
    print(f"\n{args.title}, {args.metric}:\n{paths['table']}\n")
    print(f"Report: {paths['markdown']}\nPlot: {paths['png']}\nResults: {paths['json']}")
    return paths


if __name__ == "__main__":
    main()
